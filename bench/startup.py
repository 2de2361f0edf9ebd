"""How long ``bup-watchdog --help`` and ``bup-watchdog check --help`` take, and what they import.

Runs the installed console script (next to this interpreter, or ``--script``) in a subprocess N
times per command line and prints the median, the fastest and the slowest wall time, then the
imports that cost most in one run (``python -X importtime``, read from the script's stderr).
Goal (issue 15): each median at most 0.3 s on the 2-core test machine.

With ``--config`` it also times ``check --config PATH --format json`` end to end, as a scheduler
runs it (issue 20: start-up, config, inventory, the sweep, the state), on a running fleet (e.g.
a sandbox fleet's config.toml), and lists that command's costliest imports. CPU is the figure to
compare on a busy machine; wall time follows the load.

    .venv/bin/python bench/startup.py              # 15 runs each
    .venv/bin/python bench/startup.py --runs 31 --top 20
    .venv/bin/python bench/startup.py --runs 10 --config /tmp/fleet/config.toml
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 0.3
COMMANDS = (("--help",), ("check", "--help"))


def timed(argv: list[str], env: dict[str, str], *, check: bool = True) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run, which must succeed (``check``: a Nagios code
    below 3). CPU (user + system) hardly depends on what else the machine runs; wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        argv, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    if proc.returncode >= 3:  # check: UNKNOWN, it could not sweep
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_times(argv: list[str], env: dict[str, str]) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module with its nesting indent) for each import of one run."""
    proc = subprocess.run(
        argv,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((int(own), int(cumulative), name.rstrip()))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command line (default 15)")
    parser.add_argument("--top", type=int, default=15, help="imports to list (default 15)")
    parser.add_argument(
        "--script",
        type=Path,
        default=Path(sys.executable).with_name("bup-watchdog"),
        help="the console script (default: bup-watchdog next to this python)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="also time `check --config CONFIG --format json` end to end on this fleet",
    )
    args = parser.parse_args()
    if not args.script.exists():
        parser.error(f"{args.script} does not exist: install the package (pip install -e .)")
    env = dict(os.environ)
    if env.get("PYTHONDONTWRITEBYTECODE") and not env.get("PYTHONPYCACHEPREFIX"):
        # An editable checkout has no .pyc files then: every run compiles the package's modules
        # from source (about 0.2 s of CPU for `check`), which an installed package never does.
        cache = Path(tempfile.gettempdir()) / "bup-watchdog-startup-pyc"
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = str(cache)
        print(f"PYTHONDONTWRITEBYTECODE is set: .pyc files go to {cache} for these runs")
    commands: list[tuple[str, ...]] = list(COMMANDS)
    check = ("check", "--config", str(args.config), "--format", "json") if args.config else None
    if check:
        commands.append(check)
    for command in commands:
        # Warm the page cache and write the .pyc files (pip writes them at install time).
        timed([str(args.script), *command], env, check=command is not check)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bup-watchdog start-up, {args.runs} runs each, {os.cpu_count()} CPUs, load {load}")
    over = False
    lines = [(f"bup-watchdog {' '.join(c)}", [str(args.script), *c]) for c in COMMANDS]
    if check:
        lines.append(("bup-watchdog check (a sweep)", [str(args.script), *check]))
    lines.append(("python -I -c pass (floor)", [sys.executable, "-I", "-c", "pass"]))
    for label, argv in lines:
        runs = [timed(argv, env, check="sweep" not in label) for _ in range(args.runs)]
        wall = sorted(w for w, _ in runs)
        median = statistics.median(wall)
        cpu = statistics.median(c for _, c in runs)
        verdict = ""
        if label.startswith("bup-watchdog") and "sweep" not in label:
            over |= median > GOAL_SECONDS
            verdict = " ok" if median <= GOAL_SECONDS else f" OVER the {GOAL_SECONDS} s goal"
        print(
            f"  {label:<28} wall median {median:.3f} s (min {wall[0]:.3f}, max {wall[-1]:.3f}), "
            f"CPU median {cpu:.3f} s{verdict}"
        )

    shown = ("check", "--help") if check is None else check
    rows = import_times([str(args.script), *shown], env)
    total = sum(own for own, _, _ in rows)
    print(
        f"\nimports of `bup-watchdog {' '.join(shown)}`: {len(rows)} modules, "
        f"{total / 1e6:.3f} s in all; the {args.top} costliest by cumulative time (µs):"
    )
    print(f"  {'self':>8} {'cumulative':>10}  module")
    for own, cumulative, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
        print(f"  {own:>8} {cumulative:>10}  {name}")
    heavy = sorted(
        {name.strip().split(".")[0] for _, _, name in rows}
        & {"fastapi", "uvicorn", "paramiko", "cassandra", "jinja2", "rich", "pydantic"}.union(
            {"invoke", "apscheduler", "prometheus_client"}
        )
    )
    print(f"\nheavy libraries imported: {', '.join(heavy) if heavy else 'none'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
