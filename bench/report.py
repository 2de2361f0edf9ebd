"""Benchmark: the audit report of a fleet of 1k, 10k and 100k projects, in HTML, Markdown and JSON.

For each size, builds a SQLite state the way the daemon leaves it: S servers (3 data centres),
every project mastered on one and replicated to another, one recorded sweep (per-host rows with
their replication lag histograms, open findings on a share of the projects, several checks per
failing project), a deep-check row for every repository (some failed), the cached inventory with
every project, and a repair journal of J rows over the last two weeks (every status, refusals with
reasons). Then times ``build_report`` and ``render`` as ``bup-watchdog audit`` runs them, and prints
the time and the size of each format.

Run from the repository:  .venv/bin/python bench/report.py [--projects 1000 100000] [--runs 3]
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

from checks import registry as check_registry
from watchdog.inventory.file import dump_inventory
from watchdog.journal import Journal
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
from watchdog.report import ReportSettings, build_report, render
from watchdog.state import State
from watchdog.sweep import CheckRun, SweepResult, record

SHA_A, SHA_B = "a" * 40, "b" * 40
STATUSES = (
    ("succeeded", 50),
    ("refused", 20),
    ("dry_run", 10),
    ("pending", 5),
    ("failed", 8),
    ("denied", 3),
    ("conflict", 2),
    ("interrupted", 1),
)
REFUSALS = (
    "circuit_breaker: 9 of 20 hosts were unreachable",
    "rate_limited: rotate_save_log already ran 10 times this hour",
    "precondition: mount_sanity: /projects is not mounted on the target",
    "lease: held by another repair",
)


def project_id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def build_state(
    path: Path, projects: int, servers: int, failing: float, journal: int, seed: int
) -> State:
    rnd = random.Random(seed)
    now = time.time()
    sids = [str(uuid.UUID(int=0x5E7 << 64 | n, version=4)) for n in range(servers)]
    inv_servers = {
        sid: Server(
            sid,
            f"10.0.{n // 250}.{n % 250}",
            6000,
            dc=n % 3,
            name=f"bup{n:03d}",
            ssh_host=f"10.0.{n // 250}.{n % 250}",
        )
        for n, sid in enumerate(sids)
    }
    inv_projects: dict[str, Project] = {}
    repos: dict[str, dict[str, RepoFacts]] = {sid: {} for sid in sids}
    findings: list[Finding] = [
        Finding(
            "mount_sanity",
            sids[1],
            Severity.CRITICAL,
            "/projects is not mounted",
            code="not_mounted",
        ),
        Finding(
            "reachability",
            sids[2],
            Severity.CRITICAL,
            "bup_server does not accept connections",
            code="bup_server_unreachable",
        ),
    ]
    for n in range(projects):
        pid = project_id(n)
        master = sids[n % servers]
        replica = sids[(n + 1 + n // servers) % servers]
        if replica == master:
            replica = sids[(n + 1) % servers]
        inv_projects[pid] = Project(pid, master=master, replicas=(replica,))
        saved = int(now - rnd.uniform(0, 86400))
        lag = rnd.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 600, 4 * 3600, 3 * 86400))
        size = rnd.randint(10**5, 10**9)
        save_log = rnd.randint(10**3, 10**7)
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
                save_log_bytes=save_log,
            )
        if rnd.random() < failing:
            check, sev, code, where, value = rnd.choice(
                (
                    ("save_log_size", Severity.WARNING, "too_large", master, 6e7),
                    ("save_log_size", Severity.CRITICAL, "too_large", master, 3e8),
                    ("replication_lag", Severity.WARNING, "behind", replica, 14400.0),
                    ("repo_garbage", Severity.WARNING, "tmp_objects", master, 3.0),
                    ("repo_integrity", Severity.CRITICAL, "master_not_in_pack", master, None),
                )
            )
            findings.append(
                Finding(
                    check,
                    where,
                    sev,
                    f"synthetic {check} finding on project {n}",
                    project_id=pid,
                    code=code,
                    value=value,
                )
            )
            if rnd.random() < 0.2:  # some projects fail more than one way
                findings.append(
                    Finding(
                        "ownership",
                        master,
                        Severity.WARNING,
                        "3 of 40 sampled files are owned by uid 0",
                        pid,
                        code="wrong_owner",
                    )
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
    inventory = Inventory(servers=inv_servers, projects=inv_projects)
    result = SweepResult(
        inventory=inventory,
        facts=facts,
        findings=findings,
        checks={
            c: CheckRun(c, 0.05, sum(1 for f in findings if f.check == c))
            for c in sorted(check_registry())
        },
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
                DeepResult(
                    pid,
                    now - rnd.uniform(0, 9 * 86400),
                    rnd.random() > 0.001,
                    r.master_sha,
                    None,
                )
                for pid, r in repos[sid].items()
            ],
        )
    state.save_inventory("file", dump_inventory(inventory))
    state.set_meta(inventory_stale=False, inventory_loaded_at=now)
    write_journal(state, findings, journal, now, rnd)
    return state


def write_journal(
    state: State, findings: list[Finding], rows: int, now: float, rnd: random.Random
) -> None:
    repair_of = {
        "save_log_size": "rotate_save_log",
        "replication_lag": "resync_replica",
        "repo_garbage": "clean_repo",
        "ownership": "chown_project",
    }
    candidates = [f for f in findings if f.check in repair_of]
    statuses = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    journal = Journal(state)
    with state.transaction() as db:
        for _ in range(rows):
            f = rnd.choice(candidates)
            status = rnd.choices(statuses, weights)[0]
            created = now - rnd.uniform(0, 14 * 86400)
            db.execute(
                "INSERT INTO journal(repair, target, server_id, project_id, requested_by, reason, "
                "mode, status, refusal, plan, created_at, started_at, finished_at, verification) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    repair_of[f.check],
                    f.target,
                    f.server_id,
                    f.project_id or "",
                    rnd.choice(("schedule", "alertmanager", "cli:ops")),
                    f"{f.check}/{f.code}: {f.message}",
                    "auto",
                    status,
                    rnd.choice(REFUSALS) if status == "refused" else None,
                    "[]",
                    created,
                    created + 1 if status not in ("refused", "pending", "dry_run") else None,
                    created + 30 if status != "pending" else None,
                    "the check passes again" if status == "succeeded" else None,
                ),
            )
    assert journal.counts_by()


def measure(state: State, runs: int, max_projects: int) -> dict[str, float]:
    settings = ReportSettings(max_projects=max_projects)
    out: dict[str, list[float]] = {"build": [], "html": [], "md": [], "json": []}
    sizes: dict[str, int] = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        report = build_report(state, settings=settings)
        out["build"].append(time.perf_counter() - t0)
        for fmt in ("html", "md", "json"):
            t0 = time.perf_counter()
            text = render(report, fmt)
            out[fmt].append(time.perf_counter() - t0)
            sizes[fmt] = len(text.encode())
    result = {k: statistics.median(v) for k, v in out.items()}
    result.update({f"{k}_bytes": float(v) for k, v in sizes.items()})
    result["failing"] = float(report["projects"]["failing"])
    result["listed"] = float(report["projects"]["listed"])
    return result


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
        "--failing", type=float, default=0.05, help="share of projects failing (default: 0.05)"
    )
    ap.add_argument("--journal", type=int, default=5000, help="journal rows (default: 5000)")
    ap.add_argument(
        "--max-projects", type=int, default=200, help="projects listed in full (default: 200)"
    )
    ap.add_argument("--runs", type=int, default=3, help="reports timed per size (default: 3)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.servers < 2:
        ap.error("--servers must be at least 2 (every project has a replica elsewhere)")
    print(
        f"{args.servers} servers, {args.failing:.0%} of projects failing, {args.journal} journal "
        f"rows, worst {args.max_projects} projects listed, median of {args.runs} runs"
    )
    header = (
        f"{'projects':>9} {'failing':>8} {'build s':>8} {'data s':>7} {'html s':>7} "
        f"{'html kB':>8} {'md s':>6} {'md kB':>7} {'json s':>7} {'json kB':>8} {'total s':>8}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-report-") as tmp:
        for projects in args.projects:
            t0 = time.perf_counter()
            state = build_state(
                Path(tmp) / f"state-{projects}.db",
                projects,
                args.servers,
                args.failing,
                args.journal,
                args.seed,
            )
            built = time.perf_counter() - t0
            m = measure(state, args.runs, args.max_projects)
            state.close()
            print(
                f"{projects:>9} {m['failing']:>8.0f} {built:>8.1f} {m['build']:>7.2f} "
                f"{m['html']:>7.2f} {m['html_bytes'] / 1000:>8.0f} {m['md']:>6.2f} "
                f"{m['md_bytes'] / 1000:>7.0f} {m['json']:>7.2f} {m['json_bytes'] / 1000:>8.0f} "
                f"{m['build'] + m['html']:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
