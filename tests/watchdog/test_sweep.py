"""A whole sweep of the demo fleet: real sshd hosts, real bup repositories, planted faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bup_watchdog.config import Config
from bup_watchdog.model import Inventory, Server
from bup_watchdog.sandbox.expected import compare, expected_findings, observed
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from bup_watchdog.sweep import record, select_servers, sweep


def names(inventory: Inventory) -> dict[str, str]:
    return {s.server_id: s.label for s in inventory.servers.values()}


def test_a_sweep_of_the_demo_fleet_finds_every_planted_fault_and_nothing_else(
    demo_fleet: SandboxFleet, demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory)
    warn = demo_config.check("save_log_size").warn_bytes
    cmp = compare(
        expected_findings(demo_fleet.spec, warn), observed(result.findings, names(demo_inventory))
    )
    assert cmp.missed == set()
    assert cmp.unexpected == set(), "false positives on healthy hosts or projects"
    assert len(cmp.found) >= 6


def test_a_sweep_opens_one_ssh_session_per_host_however_many_projects(
    demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory)
    assert {sid: f.ssh_sessions for sid, f in result.facts.items()} == {
        sid: 1 for sid in demo_inventory.servers
    }
    assert all(f.probed for f in result.facts.values())


def test_the_probe_sees_every_repository_the_inventory_places_on_a_host(
    demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory)
    for sid, facts in result.facts.items():
        expected = {p.project_id for p in demo_inventory.projects_on(sid)}
        assert set(facts.repos) == expected


def test_only_and_server_restrict_the_sweep_to_what_was_asked(
    demo_fleet: SandboxFleet, demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory, only=["mount_sanity"], servers=["h3"])
    assert set(result.facts) == {demo_fleet.server_id("h3")}
    assert {(f.check, f.code) for f in result.findings} == {("mount_sanity", "not_mounted")}


def test_a_lagging_replica_stays_reported_while_its_master_cannot_be_read(
    demo_fleet: SandboxFleet, demo_config: Config, demo_inventory: Inventory, tmp_path: Path
) -> None:
    state = State(tmp_path / "state.db")
    full = sweep(demo_config, demo_inventory)
    record(state, full)
    [lag] = [f for f in full.findings if f.check == "replication_lag"]  # P3: h4 one save behind
    master = demo_inventory.projects[lag.project_id or ""].master

    only_replica = sweep(demo_config, demo_inventory, servers=[lag.server_id])
    assert master not in only_replica.facts  # not swept (down, or another watchdog's host)
    assert only_replica.checks["replication_lag"].unjudged >= {(lag.server_id, lag.project_id)}
    record(state, only_replica)
    still = state.open_findings(server_id=lag.server_id, check="replication_lag")
    assert [(f.code, f.project_id) for f in still] == [(lag.code, lag.project_id)]

    record(state, sweep(demo_config, demo_inventory))  # master read again: judged, still behind
    assert len(state.open_findings(server_id=lag.server_id, check="replication_lag")) == 1


def test_a_server_name_two_servers_share_is_refused_not_resolved_to_one() -> None:
    a = Server("11111111-1111-4111-8111-111111111111", "127.0.0.1", 1, name="h1")
    b = Server("22222222-2222-4222-8222-222222222222", "127.0.0.2", 1, name="h1")
    inventory = Inventory(servers={a.server_id: a, b.server_id: b}, projects={})

    with pytest.raises(ValueError, match="server name 'h1' is ambiguous"):
        select_servers(inventory, ["h1"])
    assert select_servers(inventory, [b.server_id]) == [b]
