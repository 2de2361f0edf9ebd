"""A benchmark fleet: H hosts x P repositories with a realistic mix and a small share of faults.

``scaled_spec`` gives a uniform, healthy fleet (every project 2 saves, a 2 KB save log). A real
fleet is not uniform, and a sweep that only ever meets healthy repositories is not the sweep an
operator runs, so ``bench_spec`` re-draws, per project and reproducibly from ``seed``:

- the number of saves (1-6, most projects 2-3): each save is a bup commit and its own pack, so
  repositories differ in pack count, index count, size and reflog length;
- the save log's size, long-tailed: most a few KB, some tens of KB, a few MB, and about one
  project in 20,000 past the 50 MB warning (``save_log_size``);
- faults on a small share (``fault_share``, default 0.2 %) of projects: the pack holding the newest
  commit deleted on the master's copy (``repo_integrity``), or the replica one save behind
  (``replication_lag``).

Hosts stay healthy (their faults are host-level and would only add a handful of findings); every
planted fault is in ``watchdog.sandbox.expected.expected_findings(spec)``, so a benchmark can prove
its sweep found exactly what was planted before it quotes the sweep's time.

Repositories are materialised from template repositories made with real bup (hard links for the
immutable pack files, see ``watchdog.sandbox.repos``): 4 templates per distinct save count.
"""

from __future__ import annotations

import dataclasses
import random

from bup_watchdog.sandbox.spec import FleetSpec, ProjectSpec, scaled_spec

# (weight, saves): most projects have been saved a few times since their last repack.
SAVES_MIX = ((10, 1), (35, 2), (30, 3), (15, 4), (7, 5), (3, 6))
# (weight, low, high) bytes of conf/save_log.json.
SAVE_LOG_MIX = (
    (80.0, 500, 8_000),
    (16.0, 8_000, 80_000),
    (3.95, 80_000, 2_000_000),
    (0.05, 2_000_000, 20_000_000),
)
BIG_SAVE_LOG_EVERY = 20_000  # about one project in this many has a save log past 50 MB
BIG_SAVE_LOG_BYTES = 55_000_000


def _pick(rng: random.Random, table: tuple[tuple[float, int], ...]) -> int:
    return rng.choices([v for _, v in table], weights=[w for w, _ in table])[0]


def bench_spec(
    hosts: int,
    repos_per_host: int,
    *,
    seed: int = 0,
    fault_share: float = 0.002,
    big_save_logs: bool = True,
) -> FleetSpec:
    """``scaled_spec(hosts, repos_per_host, seed)`` with a realistic mix and planted faults.

    ``fault_share`` of the projects get one fault each (half repo_integrity, half
    replication_lag); with ``big_save_logs`` about one project in 20,000 (at least one when the
    fleet has 2,000 projects or more) gets a save log over the 50 MB warning.
    """
    if not 0 <= fault_share <= 1:
        raise ValueError("fault_share must be between 0 and 1")
    base = scaled_spec(hosts, repos_per_host, seed)
    rng = random.Random(seed + 1)
    projects: list[ProjectSpec] = []
    big_every = BIG_SAVE_LOG_EVERY if len(base.projects) >= 2 * BIG_SAVE_LOG_EVERY else 2000
    for n, p in enumerate(base.projects):
        saves = _pick(rng, SAVES_MIX)
        weights = [w for w, _, _ in SAVE_LOG_MIX]
        _, low, high = rng.choices(SAVE_LOG_MIX, weights=weights)[0]
        log_bytes = int(low * (high / low) ** rng.random())  # log-uniform within the band
        if big_save_logs and n % big_every == big_every // 2:
            log_bytes = BIG_SAVE_LOG_BYTES
        corrupt: tuple[str, ...] = ()
        stale: tuple[str, ...] = ()
        if rng.random() < fault_share:
            if p.replicas and rng.random() < 0.5:
                stale = (p.replicas[0],)
                saves = max(saves, 2)  # a stale copy still holds one save
            else:
                corrupt = (p.master,)
        projects.append(
            dataclasses.replace(
                p, saves=saves, save_log_bytes=log_bytes, corrupt_on=corrupt, stale_on=stale
            )
        )
    return FleetSpec(hosts=base.hosts, projects=tuple(projects))


def describe(spec: FleetSpec) -> dict[str, int]:
    """Counts that say what a fleet is made of (for the benchmark's header)."""
    repos = sum(len(p.locations) for p in spec.projects)
    return {
        "hosts": len(spec.hosts),
        "projects": len(spec.projects),
        "repos": repos,
        "corrupt": sum(len(p.corrupt_on) for p in spec.projects),
        "stale": sum(len(p.stale_on) for p in spec.projects),
        "big_save_logs": sum(1 for p in spec.projects if p.save_log_bytes >= 50_000_000),
        "save_log_bytes": sum(p.save_log_bytes * len(p.locations) for p in spec.projects),
    }
