"""How long ``bup-watchdog --help`` and ``bup-watchdog check --help`` take, and what they import.

Runs the installed console script (next to this interpreter, or ``--script``) in a subprocess N
times per command line and prints the median, the fastest and the slowest wall time, then the
imports that cost most in one run (``python -X importtime``, read from the script's stderr).
Goal (issue 15): each median at most 0.3 s on the 2-core test machine.

    .venv/bin/python bench/startup.py              # 15 runs each
    .venv/bin/python bench/startup.py --runs 31 --top 20
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_SECONDS = 0.3
COMMANDS = (("--help",), ("check", "--help"))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run, which must succeed. CPU (user + system) hardly
    depends on what else the machine runs; wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_times(argv: list[str], env: dict[str, str]) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module with its nesting indent) for each import of one run."""
    proc = subprocess.run(
        argv,
        check=True,
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
    args = parser.parse_args()
    if not args.script.exists():
        parser.error(f"{args.script} does not exist: install the package (pip install -e .)")
    env = dict(os.environ)
    for command in COMMANDS:
        # Warm the page cache and write the .pyc files (pip writes them at install time).
        timed([str(args.script), *command], env)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bup-watchdog start-up, {args.runs} runs each, {os.cpu_count()} CPUs, load {load}")
    over = False
    lines = [(f"bup-watchdog {' '.join(c)}", [str(args.script), *c]) for c in COMMANDS]
    lines.append(("python -I -c pass (floor)", [sys.executable, "-I", "-c", "pass"]))
    for label, argv in lines:
        runs = [timed(argv, env) for _ in range(args.runs)]
        wall = sorted(w for w, _ in runs)
        median = statistics.median(wall)
        cpu = statistics.median(c for _, c in runs)
        verdict = ""
        if label.startswith("bup-watchdog"):
            over |= median > GOAL_SECONDS
            verdict = " ok" if median <= GOAL_SECONDS else f" OVER the {GOAL_SECONDS} s goal"
        print(
            f"  {label:<26} wall median {median:.3f} s (min {wall[0]:.3f}, max {wall[-1]:.3f}), "
            f"CPU median {cpu:.3f} s{verdict}"
        )

    rows = import_times([str(args.script), "check", "--help"], env)
    total = sum(own for own, _, _ in rows)
    print(
        f"\nimports of `bup-watchdog check --help`: {len(rows)} modules, {total / 1e6:.3f} s "
        f"in all; the {args.top} costliest by cumulative time (µs):"
    )
    print(f"  {'self':>8} {'cumulative':>10}  module")
    for own, cumulative, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
        print(f"  {own:>8} {cumulative:>10}  {name}")
    heavy = sorted(
        {name.strip().split(".")[0] for _, _, name in rows}
        & {"fastapi", "uvicorn", "paramiko", "cassandra", "jinja2", "rich", "pydantic"}
    )
    print(f"\nheavy libraries imported: {', '.join(heavy) if heavy else 'none'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
