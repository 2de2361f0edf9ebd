"""Benchmark: rendering /metrics from the state, for fleets of 1k, 10k and 100k projects.

For each size, builds a SQLite state the way the daemon leaves it after a sweep: S servers, every
project mastered on one and replicated to another, per-host rows with their replication lag
histograms (recorded with ``watchdog.sweep.record``), open findings on a share of the projects, and
a deep-check row for every repository. Then renders the scrape as the daemon does
(``generate_latest`` over a ``StateCollector`` in a fresh registry) N times and prints the median
and p95 time, the body size and the number of series.

Run from the repository:  .venv/bin/python bench/metrics.py [--projects 1000 10000] [--runs 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from checks import registry as check_registry
from watchdog.metrics import StateCollector
from watchdog.model import (
    DeepResult,
    Finding,
    HostFacts,
    Inventory,
    Project,
    RepoFacts,
    Server,
    Severity,
    TcpProbe,
)
from watchdog.state import State
from watchdog.sweep import LAG_BUCKETS, CheckRun, SweepResult, record

SHA_A, SHA_B = "a" * 40, "b" * 40


def project_id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def build_state(path: Path, projects: int, servers: int, failing: float, seed: int) -> State:
    """A state holding one recorded sweep of the synthetic fleet, plus its deep-check book."""
    rnd = random.Random(seed)
    now = time.time()
    sids = [str(uuid.UUID(int=0x5E7 << 64 | n, version=4)) for n in range(servers)]
    inv_servers = {
        sid: Server(sid, f"10.0.{n // 250}.{n % 250}", 6000, dc=n % 3, name=f"bup{n:03d}")
        for n, sid in enumerate(sids)
    }
    inv_projects: dict[str, Project] = {}
    repos: dict[str, dict[str, RepoFacts]] = {sid: {} for sid in sids}
    findings: list[Finding] = [
        Finding("mount_sanity", sids[1], Severity.CRITICAL, "not mounted", code="not_mounted")
    ]
    checks = sorted(check_registry())
    for n in range(projects):
        pid = project_id(n)
        master = sids[n % servers]
        replica = sids[(n + 1 + n // servers) % servers]
        if replica == master:
            replica = sids[(n + 1) % servers]
        inv_projects[pid] = Project(pid, master=master, replicas=(replica,))
        saved = int(now - rnd.uniform(0, 86400))
        lag = rnd.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 600, 4 * 3600, 3 * 86400))
        size = rnd.randint(10**5, 10**9)
        for sid, sha, when in (
            (master, SHA_A, saved),
            (replica, SHA_A if not lag else SHA_B, saved - lag),
        ):
            repos[sid][pid] = RepoFacts(
                project_id=pid,
                path=f"/bup/bups/{pid}",
                master_sha=sha,
                reflog_last_time=when,
                pack_count=rnd.randint(1, 40),
                repo_bytes=size,
                save_log_bytes=rnd.randint(10**3, 10**7),
            )
        if rnd.random() < failing:
            check, sev, code, where = rnd.choice(
                (
                    ("save_log_size", Severity.WARNING, "too_large", master),
                    ("replication_lag", Severity.WARNING, "behind", replica),
                    ("repo_garbage", Severity.WARNING, "tmp_files", master),
                    ("repo_integrity", Severity.CRITICAL, "master_not_in_pack", master),
                )
            )
            findings.append(Finding(check, where, sev, "synthetic", project_id=pid, code=code))
            if rnd.random() < 0.2:  # some projects are failing more than one way
                findings.append(
                    Finding("ownership", master, Severity.WARNING, "synthetic", pid, code="foreign")
                )
    facts = {
        sid: HostFacts(
            server_id=sid,
            gathered_at=now - 5,
            duration_seconds=rnd.uniform(1, 20),
            complete=True,
            repos=repos[sid],
            bup_server_tcp=TcpProbe(inv_servers[sid].host, 6000, sid != sids[2], 0.002),
            ssh_sessions=1,
        )
        for sid in sids
    }
    result = SweepResult(
        inventory=Inventory(servers=inv_servers, projects=inv_projects),
        facts=facts,
        findings=findings,
        checks={c: CheckRun(c, 0.05, sum(1 for f in findings if f.check == c)) for c in checks},
        started=now - 30,
        seconds=25.0,
        ssh_sessions=servers,
    )
    state = State(path)
    record(state, result)
    for sid in sids:
        state.record_deep(
            sid,
            [
                DeepResult(pid, now - rnd.uniform(0, 6 * 86400), True, r.master_sha)
                for pid, r in repos[sid].items()
            ],
        )
    state.save_inventory("file", {"servers": [], "projects": []})
    state.set_meta(inventory_stale=False, inventory_loaded_at=now)
    return state


def measure(state: State, servers: dict[str, Server], runs: int, top: int) -> dict[str, float]:
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
    body = generate_latest(reg)  # warm the page cache and SQLite's statement cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        body = generate_latest(reg)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {
        "median": statistics.median(times),
        "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
        "bytes": len(body),
        "series": series,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--projects",
        type=int,
        nargs="+",
        default=[1000, 10_000, 100_000],
        help="fleet sizes to measure, in projects (default: 1000 10000 100000)",
    )
    ap.add_argument("--servers", type=int, default=20, help="storage servers (default: 20)")
    ap.add_argument(
        "--failing",
        type=float,
        default=0.05,
        help="share of projects with an open finding (default: 0.05)",
    )
    ap.add_argument("--runs", type=int, default=30, help="renderings timed per size (default: 30)")
    ap.add_argument("--top", type=int, default=10, help="metrics.top_projects (default: 10)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.servers < 2:
        ap.error("--servers must be at least 2 (every project has a replica elsewhere)")

    print(
        f"{args.servers} servers, 1 replica per project, {args.failing:.0%} of projects failing, "
        f"top_projects={args.top}, {args.runs} runs per size"
    )
    header = (
        f"{'projects':>9} {'repos':>8} {'findings':>8} {'build s':>8} {'db MB':>7} "
        f"{'median ms':>10} {'p95 ms':>8} {'body bytes':>11} {'series':>7}"
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
                f"{m['median']:>10.1f} {m['p95']:>8.1f} {m['bytes']:>11} {m['series']:>7}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
