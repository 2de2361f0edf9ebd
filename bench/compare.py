"""Issue 20's evidence in one command: the watchdog side by side with Ansible and parallel-ssh on
sandbox fleets of 20 real ``sshd`` hosts, its own figures, the daemon's RSS, and ``bench/README.md``
regenerated from the raw figures.

For each fleet size (``--sizes``, in repositories = project copies, spread over ``--hosts``) one
fleet is built (``bench.fleet.bench_spec``: a mix of save counts and save-log sizes and a share of
planted faults), and on it:

1. ``--rounds`` rounds, the order rotated each round, of: the watchdog end to end
   (``bup-watchdog check`` as a user runs it), the watchdog's sweep alone (a fresh process),
   Ansible ad-hoc and parallel-ssh on every host (``bench/rounds.py``); the 1-minute load average
   is read before and after every figure; nothing is extrapolated;
2. the watchdog's details in a process of its own (``bench/watchdog_run.py``): a full sweep,
   ``/metrics`` from its state, incremental sweeps with 1 % of the repositories changed (facts
   checked against a full sweep), the peak RSS with cache and inventory, the probe's output bytes;
3. at ``--daemon-size``: ``bup-watchdog run`` for ``--daemon-sweeps`` sweeps, its RSS after
   sweep 1, 10, 50 and the last (``bench/daemon_rss.py``).

Then ``/metrics`` from a synthetic state of ``--metrics-projects`` projects, every raw figure to
``--json`` and the generated part of ``--readme`` (``bench/render.py``). Progress lines go to
stderr with the time left. Run as root from the repository, on a quiet machine:

    .venv/bin/python bench/compare.py

Small trial: ``--hosts 4 --sizes 1000 --rounds 2 --daemon-size 1000 --daemon-sweeps 12
--metrics-projects 1000 --json /tmp/c.json --readme /tmp/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.daemon_rss import run_daemon  # noqa: E402
from bench.extra_figures import metrics_at, probe_unit_costs, run_deep_sample  # noqa: E402
from bench.fleet import bench_spec, describe  # noqa: E402
from bench.peers import run_naive  # noqa: E402
from bench.render import render, write_readme  # noqa: E402
from bench.rounds import CONTENDERS, load1, run_rounds, run_watchdog_child  # noqa: E402
from bench.settle import settle  # noqa: E402
from bup_watchdog.sandbox.fleet import SandboxFleet  # noqa: E402

# Seconds per repository of each piece on this 2-core machine (the 10k and 100k runs of
# 2026-11-28 and 2026-12-05), for the time estimate only: build, one round of the four
# contenders, the warm-up and details run; the daemon's sweep at its size; fixed s per fleet;
# bench/settle.py's walk before each figure (15-38 s at 200k, 2026-12-06).
EST_BUILD, EST_ROUND, EST_DETAIL, EST_DAEMON_SWEEP, EST_FIXED = 1.3e-3, 3.9e-3, 2e-3, 4e-5, 40
EST_SETTLE = 1.4e-4


def estimate_seconds(sizes: list[int], rounds: int, daemon_size: int, daemon_sweeps: int) -> float:
    """A rough time for a run (fleet builds and teardowns included), from past runs' costs."""
    per_repo = EST_BUILD * 1.5 + (EST_ROUND + 4 * EST_SETTLE) * rounds + EST_DETAIL + EST_SETTLE
    total = sum(EST_FIXED + n * per_repo for n in sizes)
    if daemon_size in sizes and daemon_sweeps:
        total += daemon_sweeps * max(5.0, EST_DAEMON_SWEEP * daemon_size + 1) + 30
    return total


def log(msg: str) -> None:
    """A progress line on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def versions() -> str:
    """The versions of the tools the figures depend on."""

    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]

    return ", ".join(
        [
            first_line(["ssh", "-V"]),
            "bup " + first_line(["bup", "--version"]),
            first_line(["git", "--version"]),
            first_line(["ansible", "--version"]),
            "parallel-ssh " + first_line(["dpkg-query", "-W", "-f=${Version}", "pssh"]),
            f"Python {platform.python_version()}",
        ]
    )


def commit() -> str:
    """The checkout's commit, ``+dirty`` when files differ from it."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def measure_size(
    total_repos: int, args: argparse.Namespace, work: Path, *, last: bool, deadline: float
) -> dict[str, Any]:
    """Build one fleet and measure everything on it."""
    per_host = max(1, total_repos // args.hosts)
    spec = bench_spec(args.hosts, per_host, seed=args.seed, fault_share=args.fault_share)
    shape = describe(spec)
    log(
        f"size {total_repos:,}: {shape['hosts']} hosts x {per_host:,} repos = {shape['repos']:,} "
        f"repos, {shape['projects']:,} projects; faults: {shape['corrupt']} corrupt, "
        f"{shape['stale']} stale, {shape['big_save_logs']} save logs > 50 MB"
    )
    root = work / f"fleet-{total_repos}"
    out: dict[str, Any] = {"size": total_repos, "repos_per_host": per_host, **shape}
    t0 = time.monotonic()
    with SandboxFleet(root, spec) as fleet:
        out["build_seconds"] = time.monotonic() - t0
        log(f"built in {out['build_seconds']:.0f} s; {remaining(deadline)}")
        pids = [h.sshd_pid for h in fleet.hosts.values()]
        names = tuple(n for n in CONTENDERS if n not in args.skip)
        out["rounds"] = run_rounds(fleet, pids, root, args.rounds, names, progress=log)
        log(f"watchdog details: full sweep, /metrics, incremental sweeps; {remaining(deadline)}")
        out["detail_settle"] = settle([h.bups_dir for h in fleet.hosts.values()], pids)
        out["detail"] = run_watchdog_child(
            fleet,
            pids,
            *("--sweeps", "1", "--incremental", str(args.incremental)),
            *("--changed", str(args.changed), "--metrics-runs", str(args.metrics_runs), "--wire"),
        )
        if total_repos == args.daemon_size and args.daemon_sweeps:
            log(f"daemon: bup-watchdog run for {args.daemon_sweeps} sweeps; {remaining(deadline)}")
            try:
                out["daemon"] = run_daemon(
                    fleet.config_path,
                    args.daemon_sweeps,
                    interval=args.daemon_interval,
                    progress=log,
                )
            except RuntimeError as exc:  # the other figures of this size still count
                log(f"daemon: {exc}")
                out["daemon_error"] = str(exc)
        if args.naive_sample:
            log(f"naive: 2 ssh per repository on {args.naive_sample} repositories")
            out["naive"] = run_naive(fleet, args.naive_sample, args.seed, pids)
        if args.deep_sample:
            log(f"deep checks on {args.deep_sample} repositories")
            out["deep"] = run_deep_sample(fleet, args.deep_sample, pids)
    if last and not args.wait_teardown:
        # Deleting 100,000s of hard-linked repositories takes minutes of disk work and measures
        # nothing: the last fleet is deleted by a detached process after the table is written.
        log(f"size {total_repos:,} done; its fleet is deleted in the background")
        return out
    t1 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    log(f"size {total_repos:,} done; teardown {time.monotonic() - t1:.0f} s")
    return out


def remaining(deadline: float) -> str:
    """The estimated time left, for progress lines."""
    left = deadline - time.monotonic()
    return f"about {left / 60:.0f} min left (estimate)" if left > 0 else "past the estimate"


def parse_args() -> argparse.Namespace:
    """The command line; the defaults are issue 20's evidence."""
    sizes, rounds, daemon_size, daemon_sweeps = [10_000, 100_000, 200_000], 3, 100_000, 100
    est = estimate_seconds(sizes, rounds, daemon_size, daemon_sweeps)
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"With the defaults the run takes about {est / 60:.0f} minutes on a quiet 2-core "
        "machine (estimated from earlier runs' costs per repository; the 200k fleet alone about "
        f"{estimate_seconds([200_000], rounds, 0, 0) / 60:.0f} min, 100k with the daemon "
        f"{estimate_seconds([100_000], rounds, daemon_size, daemon_sweeps) / 60:.0f} min, 10k "
        f"{estimate_seconds([10_000], rounds, 0, 0) / 60:.0f} min) and needs about 25 GB of "
        "disk for the 200k fleet (117 MB per 1,000 repositories).",
    )
    ap.add_argument("--hosts", type=int, default=20, help="storage hosts (default 20)")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=sizes,
        help="fleet sizes in repositories (project copies) over the hosts (10000 100000 200000)",
    )
    ap.add_argument("--rounds", type=int, default=rounds, help="side-by-side rounds (default 3)")
    ap.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=CONTENDERS,
        help="leave contenders out of the rounds (e.g. ansible when it is not installed)",
    )
    ap.add_argument("--incremental", type=int, default=3, help="incremental sweeps (default 3)")
    ap.add_argument("--changed", type=float, default=0.01, help="share changed before each (0.01)")
    ap.add_argument(
        "--daemon-size",
        type=int,
        default=daemon_size,
        help="the fleet size (one of --sizes) the daemon runs on (100000; 0: no daemon)",
    )
    ap.add_argument(
        "--daemon-sweeps", type=int, default=daemon_sweeps, help="daemon sweeps (default 100)"
    )
    ap.add_argument(
        "--daemon-interval",
        type=float,
        default=5.0,
        help="the daemon's sweep_interval_seconds (default 5, the config's minimum)",
    )
    ap.add_argument(
        "--metrics-projects",
        type=int,
        default=100_000,
        help="also render /metrics from a synthetic state of this many projects (100000; 0: skip)",
    )
    ap.add_argument("--metrics-runs", type=int, default=20, help="/metrics renders timed (20)")
    ap.add_argument("--naive-sample", type=int, default=0, help="naive ssh loop sample (0: skip)")
    ap.add_argument("--deep-sample", type=int, default=0, help="deep-checked repos (0: skip)")
    ap.add_argument(
        "--real-repo-saves",
        type=int,
        default=0,
        help="time the probe on real bup repositories with this many saves (0: skip)",
    )
    ap.add_argument("--fault-share", type=float, default=0.002, help="projects with a fault")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir", type=Path, help="where fleets are built; made if missing (default: a temp dir)"
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench" / "last-run.json",
        help="every raw figure (default bench/last-run.json)",
    )
    ap.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "bench" / "README.md",
        help="the README whose generated part is rewritten (default bench/README.md)",
    )
    ap.add_argument(
        "--wait-teardown",
        action="store_true",
        help="delete the last fleet before exiting (default: a detached rm -rf does it)",
    )
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox fleet needs sshd and mount namespaces")
    # An installed package has its bytecode; with this set (some shells do) every timed
    # `bup-watchdog check` would compile ~40 modules again (~0.2 s of CPU): the untimed warm-up
    # writes the bytecode, as a user's first run would.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sizes = sorted(args.sizes)
    est = estimate_seconds(sizes, args.rounds, args.daemon_size, args.daemon_sweeps)
    started = time.monotonic()
    deadline = started + est
    load_start = load1()
    log(f"sizes {sizes}, {args.hosts} hosts, {args.rounds} rounds; about {est / 60:.0f} min")
    if args.daemon_size and args.daemon_sweeps and args.daemon_size not in sizes:
        log(f"no daemon run: --daemon-size {args.daemon_size} is not one of --sizes")
    results: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "versions": versions(),
        "command": shlex.join(["bench/compare.py", *sys.argv[1:]]),
        "argv": sys.argv,
        "rounds": args.rounds,
        "estimated_seconds": est,
        "load_avg": {"start": load_start},
        "results": results,
        "metrics_synthetic": None,
        "complete": False,
    }

    def save() -> None:
        # After every size: a run that fails later keeps what it measured (bench/render.py
        # renders a partial JSON too).
        data["elapsed_seconds"] = time.monotonic() - started
        data["load_avg"]["end"] = load1()
        args.json.write_text(json.dumps(data, indent=1, default=str))

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)  # a new --workdir is made, not a traceback
    tmp = Path(tempfile.mkdtemp(prefix="bupwatch-compare-", dir=args.workdir))
    try:
        if args.real_repo_saves:
            log(f"probe costs on real bup repositories ({args.real_repo_saves} saves)")
            data["probe_unit_costs"] = probe_unit_costs(tmp, args.real_repo_saves)
        for size in sizes:
            results.append(measure_size(size, args, tmp, last=size == sizes[-1], deadline=deadline))
            save()
        if args.metrics_projects:
            log(f"/metrics with {args.metrics_projects:,} projects in a synthetic state")
            data["metrics_synthetic"] = metrics_at(args.metrics_projects, args.metrics_runs)
    finally:
        if args.wait_teardown:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            subprocess.Popen(
                ["rm", "-rf", "--one-file-system", str(tmp)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        save()
    data["complete"] = True
    save()
    write_readme(args.readme, render(data))
    log(f"done in {data['elapsed_seconds'] / 60:.1f} min; wrote {args.json} and {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
