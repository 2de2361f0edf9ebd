"""Benchmark: rendering /metrics from the state, for fleets of 1k, 10k and 100k projects.

For each size, builds the synthetic state of ``bench/synthetic_state.py``, the way the daemon
leaves it after a sweep: S servers, every project mastered on one and replicated to another,
per-host rows with their replication lag histograms (recorded with ``watchdog.sweep.record``), open
findings on a share of the projects, and a deep-check row for every repository. Then renders the
scrape as the daemon's /metrics does (``metrics.exposition`` over a ``StateCollector`` in a fresh
registry) N times and prints the median and p95 time, the body size and the number of series;
and the median of the first scrape after a sweep wrote to the state (the families are read from
the state and rendered again: what a scrape costs once a sweep), without and with a deep pass in
that sweep (the deep-check counts are read again only after one).

Run from the repository:  .venv/bin/python bench/metrics.py [--projects 1000 10000] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic_state import build_synthetic_state, parse_arguments
from bup_watchdog.checks import registry as check_registry
from bup_watchdog.metrics import StateCollector, exposition
from bup_watchdog.model import DeepResult, Server
from bup_watchdog.state import State
from bup_watchdog.sweep import LAG_BUCKETS


def build_state(path: Path, projects: int, servers: int, failing: float, seed: int) -> State:
    """The synthetic state of ``projects`` projects (``bench/compare.py`` measures it too)."""
    return build_synthetic_state(path, projects, servers, failing, seed).state


def _registry(state: State, servers: dict[str, Server], top: int) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(
        StateCollector(
            state,
            lambda: servers,
            sorted(check_registry()),
            top_projects=top,
            lag_buckets=LAG_BUCKETS,
        )
    )
    return reg


def measure(state: State, servers: dict[str, Server], runs: int, top: int) -> dict[str, float]:
    """Scrapes of one collector, as the daemon's: the first after a sweep's write without a
    deep pass (findings, hosts: ``first``), the first after one with a deep pass (one deep-check
    row written: ``first_deep``), and ``runs`` between sweeps (``median``, ``p95``)."""
    reg = _registry(state, servers, top)
    body = exposition(reg)  # warms the page cache and SQLite's statements
    sid = min(servers)
    pid = state.query("SELECT project_id FROM deep_checks WHERE server_id = ? LIMIT 1", (sid,))[0][
        0
    ]
    firsts, firsts_deep = [], []
    for n in range(max(3, runs // 5)):
        state.set_meta(bench_sweep=n)  # any write a sweep makes: the state's key moves on
        t0 = time.perf_counter()
        body = exposition(reg)
        firsts.append((time.perf_counter() - t0) * 1000)
        state.record_deep(sid, [DeepResult(pid, time.time(), True, None)])
        t0 = time.perf_counter()
        body = exposition(reg)
        firsts_deep.append((time.perf_counter() - t0) * 1000)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        body = exposition(reg)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {
        "median": statistics.median(times),
        "first": statistics.median(firsts),
        "first_deep": statistics.median(firsts_deep),
        "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
        "bytes": len(body),
        "series": series,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="renderings timed per size (default: 30)")
    ap.add_argument("--top", type=int, default=10, help="metrics.top_projects (default: 10)")
    args = parse_arguments(ap)

    print(
        f"{args.servers} servers, 1 replica per project, {args.failing:.0%} of projects failing, "
        f"top_projects={args.top}, {args.runs} runs per size"
    )
    header = (
        f"{'projects':>9} {'repos':>8} {'findings':>8} {'build s':>8} {'db MB':>7} "
        f"{'median ms':>10} {'p95 ms':>8} {'first ms':>9} {'+deep ms':>9} "
        f"{'body bytes':>11} {'series':>7} {'load avg':>8}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-metrics-") as tmp:
        for projects in args.projects:
            path = Path(tmp) / f"state-{projects}.db"
            t0 = time.perf_counter()
            state = build_state(path, projects, args.servers, args.failing, args.seed)
            built = time.perf_counter() - t0
            findings = state.query("SELECT COUNT(*) FROM findings")[0][0]
            repos = state.query("SELECT SUM(repos) FROM hosts")[0][0]
            servers = {
                sid: Server(sid, "x", 6000, name=f"bup{n:03d}")
                for n, (sid,) in enumerate(state.query("SELECT server_id FROM hosts"))
            }
            m = measure(state, servers, args.runs, args.top)
            state.close()
            size_mb = sum(p.stat().st_size for p in Path(tmp).glob(f"{path.name}*")) / 1e6
            print(
                f"{projects:>9} {repos:>8} {findings:>8} {built:>8.2f} {size_mb:>7.1f} "
                f"{m['median']:>10.1f} {m['p95']:>8.1f} {m['first']:>9.1f} {m['first_deep']:>9.1f} "
                f"{m['bytes']:>11} {m['series']:>7} {os.getloadavg()[0]:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
