"""The synthetic fleet state the /metrics and audit-report benchmarks measure.

A SQLite state the way the daemon leaves it after a sweep, without any host: S servers (3 data
centres), every project mastered on one and replicated to another, one recorded sweep (per-host
rows with their replication lag histograms, recorded with ``watchdog.sweep.record``; a host not
mounted, one whose bup_server is down; open findings on a share of the projects, several checks
on some), a deep-check row for every repository (some failed, some older than the 7-day window)
and the cached inventory with every project.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.inventory.file import dump_inventory
from bup_watchdog.model import (
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
from bup_watchdog.state import State
from bup_watchdog.sweep import CheckRun, SweepResult, record

SHA_A, SHA_B = "a" * 40, "b" * 40


@dataclass
class SyntheticState:
    """A built state, the findings its sweep recorded, and the clock and random generator used
    (for a benchmark that adds to the state, such as a repair journal)."""

    state: State
    findings: list[Finding]
    now: float
    rnd: random.Random


def parse_arguments(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Adds the options that shape the state (``--projects``, ``--servers``, ``--failing``,
    ``--seed``) to a benchmark's own, and parses the command line."""
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
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.servers < 2:
        ap.error("--servers must be at least 2 (every project has a replica elsewhere)")
    return args


def project_id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def build_synthetic_state(
    path: Path, projects: int, servers: int, failing: float, seed: int
) -> SyntheticState:
    """A state at ``path`` holding one recorded sweep of ``projects`` projects on ``servers``
    servers, ``failing`` of them with an open finding, plus its deep-check book."""
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
            repos[sid][pid] = RepoFacts.of(
                pid,
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
    return SyntheticState(state, findings, now, rnd)
