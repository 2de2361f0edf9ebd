"""A project's repair probes only its project (``--only``) on hosts that hold others: real sandbox
hosts, real bup repositories, the real probe; its findings are the whole-host probe's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog import repair_context
from bup_watchdog.model import HostFacts
from bup_watchdog.repair_context import Context
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from support.fleet import git_out, make_guard
from support.fleet_template import CopiedReposFleet, RepoTemplates

P = "5c7a2f1e-2222-4c1d-9a0b-000000000001"
CORRUPT = "5c7a2f1e-2222-4c1d-9a0b-0000000000b1"  # master pack lost on s1
STALE = "5c7a2f1e-2222-4c1d-9a0b-0000000000b2"  # replica behind on s2
HEALTHY = "5c7a2f1e-2222-4c1d-9a0b-0000000000b3"
BYSTANDERS = {CORRUPT, STALE, HEALTHY}
CONFIG = """
[repairs.resync_replica]
mode = "auto"
[checks.replication_lag]
warn_seconds = 60
"""


@pytest.fixture()
def fleet(tmp_path: Path, repo_templates: RepoTemplates) -> Iterator[SandboxFleet]:
    """s1 masters P and three bystanders, s2 holds their replicas; P's replica is behind."""
    spec = FleetSpec(
        hosts=(HostSpec("s1", dc=0), HostSpec("s2", dc=1)),
        projects=(
            ProjectSpec(P, master="s1", replicas=("s2",), stale_on=("s2",)),
            ProjectSpec(CORRUPT, master="s1", replicas=("s2",), corrupt_on=("s1",)),
            ProjectSpec(STALE, master="s1", replicas=("s2",), stale_on=("s2",)),
            ProjectSpec(HEALTHY, master="s1", replicas=("s2",)),
        ),
    )
    with CopiedReposFleet(tmp_path / "fleet", spec, repo_templates) as built:
        yield built


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[HostFacts]:
    """Every HostFacts the repair context's real gathers return, in order."""
    seen: list[HostFacts] = []
    real_host, real_gather = repair_context.gather_host, repair_context.gather

    def gather_host(*args: Any, **kwargs: Any) -> HostFacts:
        facts = real_host(*args, **kwargs)
        seen.append(facts)
        return facts

    def gather(*args: Any, **kwargs: Any) -> Iterator[HostFacts]:
        for facts in real_gather(*args, **kwargs):
            seen.append(facts)
            yield facts

    monkeypatch.setattr(repair_context, "gather_host", gather_host)
    monkeypatch.setattr(repair_context, "gather", gather)
    return seen


def test_a_resync_on_hosts_with_bystander_repositories_walks_only_its_project(
    fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = make_guard(fleet, CONFIG)
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")
    whole = Context(guard.config, guard.inventory, guard.journal, "test")
    try:
        assert set(whole.facts(s2).repos) == {P, *BYSTANDERS}  # the hosts hold all four
    finally:
        whole.close()
    seen = recorded(monkeypatch)

    decision = guard.submit(RepairRequest("resync_replica", s2, P))

    assert decision.status == "succeeded", decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "master") == git_out(
        fleet, "s1", P, "rev-parse", "master"
    )
    assert len(seen) >= 6  # preconditions and verify, both hosts
    assert {f.server_id for f in seen} == {s1, s2}
    for facts in seen:
        assert facts.probed, facts.failure_message
        assert facts.scope == {P}
        assert set(facts.repos) == {P} and set(facts.project_dirs) == {P}
        assert facts.mounts and facts.process is not None  # host-level facts stay whole
    # the bystanders were never touched: the stale one is still behind
    assert git_out(fleet, "s2", STALE, "rev-parse", "master") != git_out(
        fleet, "s1", STALE, "rev-parse", "master"
    )


@pytest.mark.parametrize("check", ["replication_lag", "repo_integrity", "mount_sanity"])
def test_a_scoped_evaluation_finds_exactly_what_a_whole_host_probe_finds_for_its_project(
    fleet: SandboxFleet, check: str
) -> None:
    guard = make_guard(fleet, CONFIG)
    hosts = (fleet.server_id("s1"), fleet.server_id("s2"))
    whole = Context(guard.config, guard.inventory, guard.journal, "test")
    scoped = Context(guard.config, guard.inventory, guard.journal, "test", P)
    try:
        full = whole.evaluate(check, hosts)
        mine = scoped.evaluate(check, hosts)
    finally:
        whole.close()
        scoped.close()

    def key(found: list[Any]) -> list[tuple[Any, ...]]:
        return [(f.check, f.server_id, f.project_id, f.code, f.severity) for f in found]

    assert key(mine) == key([f for f in full if f.project_id in (P, None)])
    if check == "replication_lag":
        assert {(f.project_id, f.code) for f in full} == {(P, "behind"), (STALE, "behind")}
    if check == "repo_integrity":
        assert {f.project_id for f in full} == {CORRUPT}  # a bystander's, not in the scope
        assert mine == []  # and no "master missing" for the bystanders the probe never walked
