"""Benchmark: the audit report of a fleet of 1k, 10k and 100k projects, in HTML, Markdown and JSON.

For each size, builds the synthetic state of ``bench/synthetic_state.py`` (S servers in 3 data
centres, every project mastered on one and replicated to another, one recorded sweep with open
findings on a share of the projects, several checks per failing project, a deep-check row for every
repository, some failed, the cached inventory with every project) and adds a repair journal of J
rows over the last two weeks (every status, refusals with reasons). Then times ``build_report``
and ``render`` as ``bup-watchdog audit`` runs them, and prints the time and the size of each
format.

Run from the repository:  .venv/bin/python bench/report.py [--projects 1000 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic_state import build_synthetic_state, parse_arguments
from bup_watchdog.journal import Journal
from bup_watchdog.model import Finding
from bup_watchdog.report import ReportSettings, build_report, render
from bup_watchdog.state import State

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
    ap.add_argument("--journal", type=int, default=5000, help="journal rows (default: 5000)")
    ap.add_argument(
        "--max-projects", type=int, default=200, help="projects listed in full (default: 200)"
    )
    ap.add_argument("--runs", type=int, default=3, help="reports timed per size (default: 3)")
    args = parse_arguments(ap)
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
            fleet = build_synthetic_state(
                Path(tmp) / f"state-{projects}.db", projects, args.servers, args.failing, args.seed
            )
            state = fleet.state
            write_journal(state, fleet.findings, args.journal, fleet.now, fleet.rnd)
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
