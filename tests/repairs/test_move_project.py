"""move_project on a real scratch fleet (s1 master, s2 replica): real bup saves, real rsync
between the hosts, the file inventory switched by compare-and-swap, the old copy kept."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import tomllib
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.cli import main
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.inventory.cassandra import CassandraInventory
from bup_watchdog.inventory.file import FileInventory, dump_toml
from bup_watchdog.model import Project
from bup_watchdog.repair_context import Context
from bup_watchdog.repairs import move_project
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory, open_state
from bup_watchdog.sandbox import repos
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.cassandra.node import CassandraNode
from support.cassandra_fixture import cassandra_toml, cql
from support.fleet import (
    bup_save_on,
    file_digests,
    fleet_digest,
    git_out,
    make_guard,
    pid_in_host,
    tree_digest,
)

P = SCRATCH_P1
AUTO = '[repairs.move_project]\nmode = "auto"\n'


def request(fleet: SandboxFleet, **params: object) -> RepairRequest:
    return RepairRequest(
        "move_project", fleet.server_id("s1"), P, params={"target": "s2", **params}
    )


def project(fleet: SandboxFleet) -> Project:
    return FileInventory(fleet.inventory_path).load().projects[P]


def edit_inventory(fleet: SandboxFleet, kind: str, name: str, **changes: Any) -> None:
    """Change one server ('servers', host name) or the project ('projects', P) in the file."""
    data = tomllib.loads(fleet.inventory_path.read_text())
    key = fleet.server_id(name) if kind == "servers" else name
    [entry] = [e for e in data[kind] if key in (e.get("server_id"), e.get("project_id"))]
    entry.update(changes)
    fleet.inventory_path.write_text(dump_toml(data))


def digests(fleet: SandboxFleet, name: str) -> dict[str, str]:
    return {k: v for k, v in fleet_digest(fleet).items() if k.startswith(f"{name}:")}


def refused_with(guard: Guard, fleet: SandboxFleet, code: str, **params: object) -> None:
    """Refused with that reason, journaled, and neither the inventory nor a copy changed."""
    before, inventory = fleet_digest(fleet), fleet.inventory_path.read_bytes()
    decision = guard.submit(request(fleet, **params))
    assert decision.status == "refused", decision.message
    [entry] = guard.journal.entries(status="refused")
    assert entry.refusal is not None and f"{code}:" in entry.refusal, entry.refusal
    assert fleet.inventory_path.read_bytes() == inventory
    assert fleet_digest(fleet) == before


def test_a_move_copies_proves_and_switches_the_master_and_the_old_copy_stays_a_replica(
    scratch_fleet: SandboxFleet,
) -> None:
    fleet = scratch_fleet
    new = bup_save_on(fleet, "s1", P, int(time.time()), {"work/moved.txt": "saved on s1\n"})
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") != new
    source_before = digests(fleet, "s1")
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert decision.status == "succeeded", decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == new
    s1, s2 = (fleet.hosts[n].projects_dir_outside / P for n in ("s1", "s2"))
    assert tree_digest(s2) == tree_digest(s1)
    moved = project(fleet)
    assert moved.master == fleet.server_id("s2")
    assert moved.replicas == (fleet.server_id("s1"),)
    assert digests(fleet, "s1") == source_before  # the old master's copy is only read
    assert "is a replica with the same head" in decision.message


def test_a_dry_run_shows_the_copy_commands_without_delete_and_changes_nothing(
    scratch_fleet: SandboxFleet,
) -> None:
    fleet = scratch_fleet
    before, inventory = fleet_digest(fleet), fleet.inventory_path.read_bytes()
    guard = make_guard(fleet)  # the default mode: approve

    decision = guard.submit(request(fleet, dry_run=True))

    assert decision.status == "dry_run", decision.message
    commands = [shlex.split(s["command"]) for s in decision.plan]
    rsyncs = [c for c in commands if "rsync" in c]
    assert len(rsyncs) >= 4 and not any("--delete" in a for c in rsyncs for a in c)
    assert any("--exclude=/.snapshots" in c and "--dry-run" in c for c in rsyncs)
    assert all(
        s["server_id"] == fleet.server_id("s2") for s in decision.plan if "rsync" in s["command"]
    )
    assert fleet_digest(fleet) == before and fleet.inventory_path.read_bytes() == inventory
    assert move_project.MoveProjectSettings().mode == "approve"


def test_an_experimental_target_is_refused_unless_allowed(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    edit_inventory(fleet, "servers", "s2", experimental=True)
    guard = make_guard(fleet, AUTO)
    refused_with(guard, fleet, "experimental")
    ctx = Context(guard.config, guard.inventory, guard.journal, "test")
    try:
        allowed = move_project.repair.preconditions(
            request(fleet, allow_experimental=True), ctx, move_project.MoveProjectSettings()
        )
    finally:
        ctx.close()
    assert allowed == []


def test_a_target_whose_copy_is_ahead_of_the_source_is_refused(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    bup_save_on(fleet, "s2", P, int(time.time()), {"work/only-on-s2.txt": "newer on s2\n"})
    refused_with(make_guard(fleet, AUTO), fleet, "target_copy")


def test_an_integrity_finding_on_the_source_is_refused(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    repos.corrupt_newest_pack(fleet.repo_path("s1", P))
    refused_with(make_guard(fleet, AUTO), fleet, "integrity")


def test_an_inventory_changed_between_plan_and_execute_is_not_overwritten(
    scratch_fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = scratch_fleet
    guard = make_guard(fleet, AUTO)
    plan = move_project.MoveProject.plan

    def plan_then_someone_edits_the_inventory(self: Any, *args: Any) -> Any:
        steps = plan(self, *args)
        edit_inventory(fleet, "projects", P, replicas=[])  # someone else's change, master kept
        edit_inventory(fleet, "projects", P, master=fleet.server_id("s2"))
        return steps

    monkeypatch.setattr(move_project.MoveProject, "plan", plan_then_someone_edits_the_inventory)
    decision = guard.submit(request(fleet))

    assert decision.status == "failed", decision.message
    assert "the inventory changed meanwhile" in decision.message
    after = project(fleet)
    assert after.master == fleet.server_id("s2") and after.replicas == ()  # as the other wrote it


def test_a_move_with_the_cassandra_inventory_switches_bup_location_by_a_lightweight_transaction(
    scratch_fleet: SandboxFleet, cassandra: CassandraNode
) -> None:
    fleet, keyspace = scratch_fleet, "move_project_test"
    text = fleet.config_path.read_text().replace('source = "file"', 'source = "cassandra"', 1)
    path = fleet.config_path.with_name("config-cassandra.toml")
    path.write_text(f"{text}\n{AUTO}\n{cassandra_toml(cassandra, keyspace)}")
    config = load_config(path, settings_models())
    loaded = CliRunner().invoke(
        main,
        [
            "inventory",
            "load",
            "--config",
            str(path),
            str(fleet.inventory_path),
            "--replication-factor",
            "1",
        ],
    )
    assert loaded.exit_code == 0, loaded.output
    new = bup_save_on(fleet, "s1", P, int(time.time()), {"work/moved.txt": "saved on s1\n"})
    source_before = digests(fleet, "s1")
    state = open_state(config)
    guard = Guard(config, state, load_inventory(inventory_source(config), state))

    decision = guard.submit(request(fleet))

    assert decision.status == "succeeded", decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == new
    with cql(cassandra, keyspace) as db:
        [row] = db.execute("SELECT bup_location FROM projects WHERE project_id = %s", [UUID(P)])
    assert str(row.bup_location) == fleet.server_id("s2")
    moved = CassandraInventory.from_config(config).load().projects[P]
    assert (moved.master, moved.replicas) == (fleet.server_id("s2"), (fleet.server_id("s1"),))
    assert digests(fleet, "s1") == source_before
    # The compare-and-swap: the master is no longer s1, so a second switch is not applied.
    writer = CassandraInventory.from_config(config)
    assert writer.set_master(P, fleet.server_id("s1"), fleet.server_id("s2")) is False


def test_a_move_to_a_host_without_a_copy_creates_it_and_writes_the_new_placement_everywhere(
    scratch_fleet: SandboxFleet,
) -> None:
    fleet = scratch_fleet
    shutil.rmtree(fleet.repo_path("s2", P))
    shutil.rmtree(fleet.hosts["s2"].projects_dir_outside / P)
    edit_inventory(fleet, "projects", P, replicas=[])
    (fleet.repo_path("s1", P) / "conf/replicas.json").write_text(
        json.dumps([fleet.server_id("s1")]) + "\n"
    )
    head = git_out(fleet, "s1", P, "rev-parse", "refs/heads/master")
    objects = file_digests(fleet.repo_path("s1", P) / "objects")

    decision = make_guard(fleet, AUTO).submit(request(fleet))

    assert decision.status == "succeeded", decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == head
    s1, s2 = (fleet.hosts[n].projects_dir_outside / P for n in ("s1", "s2"))
    assert tree_digest(s2) == tree_digest(s1)
    moved = project(fleet)
    assert (moved.master, moved.replicas) == (fleet.server_id("s2"), (fleet.server_id("s1"),))
    want = [fleet.server_id("s2"), fleet.server_id("s1")]
    for name in ("s1", "s2"):
        placed = json.loads((fleet.repo_path(name, P) / "conf/replicas.json").read_text())
        assert placed == want, name
    assert file_digests(fleet.repo_path("s1", P) / "objects") == objects


@pytest.mark.parametrize(
    ("target", "extra", "code"),
    [
        ("no-such-server", "", "target_unknown"),
        ("s1", "", "same_host"),
        ("s2", "space_margin = 1e15\n", "space"),
    ],
)
def test_an_unknown_target_the_master_itself_or_a_target_without_room_is_refused(
    scratch_fleet: SandboxFleet, target: str, extra: str, code: str
) -> None:
    guard = make_guard(scratch_fleet, AUTO + extra)
    refused_with(guard, scratch_fleet, code, target=target)


def test_a_live_tree_that_stays_different_on_the_target_stops_the_move_before_the_switch(
    scratch_fleet: SandboxFleet,
) -> None:
    fleet = scratch_fleet
    newer = fleet.hosts["s2"].projects_dir_outside / P / "README.md"
    newer.write_text("edited on s2, newer than the master's\n")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    inventory = fleet.inventory_path.read_bytes()

    decision = make_guard(fleet, AUTO).submit(request(fleet))

    assert decision.status == "failed", decision.message
    assert "differs from" in decision.message and "nothing was switched" in decision.message
    assert fleet.inventory_path.read_bytes() == inventory
    assert newer.read_text() == "edited on s2, newer than the master's\n"  # --update kept it


def test_a_save_on_the_source_during_the_live_trees_check_stops_the_move_before_the_switch(
    scratch_fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is proven, then the live trees are compared (minutes on a big project): a real
    bup save lands on the source meanwhile. Switching then would strand it on a replica."""
    fleet = scratch_fleet
    inventory = fleet.inventory_path.read_bytes()
    real_changes = move_project._changes
    saved: list[str] = []

    def save_during_the_check(result: Any) -> Any:
        saved.append(bup_save_on(fleet, "s1", P, int(time.time()), {"work/late.txt": "late\n"}))
        return real_changes(result)

    monkeypatch.setattr(move_project, "_changes", save_during_the_check)
    decision = make_guard(fleet, AUTO).submit(request(fleet))

    assert saved, "the live check did not run"
    assert decision.status == "failed", decision.message
    assert "moved during the live tree's check" in decision.message, decision.message
    assert "nothing was switched" in decision.message
    assert fleet.inventory_path.read_bytes() == inventory
    assert git_out(fleet, "s1", P, "rev-parse", "master").strip() == saved[0]


def test_a_save_running_on_the_source_is_refused(scratch_fleet: SandboxFleet) -> None:
    """A real ``bup split`` waiting on its input holds the source's repository open."""
    fleet = scratch_fleet
    busy = subprocess.Popen(
        fleet.hosts["s1"].enter_argv(
            ["env", f"BUP_DIR=/bup/bups/{P}", "bup", "split", "-n", "in-progress"]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        assert busy.poll() is None
        seen_by_host = pid_in_host(fleet, "s1", busy)
        guard = make_guard(fleet, AUTO)
        decision = guard.submit(request(fleet))
    finally:
        busy.kill()
        busy.wait()
    assert decision.status == "refused", decision.message
    assert "busy:" in decision.message and f"pid {seen_by_host}: 'bup split" in decision.message
    assert project(fleet).master == fleet.server_id("s1")


def test_the_cli_plans_a_move_with_to_and_changes_nothing(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    before, inventory = fleet_digest(fleet), fleet.inventory_path.read_bytes()
    result = CliRunner().invoke(
        main,
        [
            "repair", "move_project", f"s1/{P}", "--to", "s2",
            "-c", str(fleet.config_path), "--format", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["status"] == "dry_run", decision
    assert any("rsync" in s["command"] for s in decision["plan"])
    assert fleet_digest(fleet) == before and fleet.inventory_path.read_bytes() == inventory


def test_a_move_is_refused_while_the_targets_copy_is_under_lease(
    scratch_fleet: SandboxFleet,
) -> None:
    """The move writes the target's copy (a resync of that replica would race its rsync): it
    takes that copy's lease too, and gives its own back when it cannot."""
    fleet = scratch_fleet
    inventory = fleet.inventory_path.read_bytes()
    guard = make_guard(fleet, AUTO)
    req = request(fleet)
    target_copy = f"{fleet.server_id('s2')}/{P}"
    assert guard.journal.acquire_lease(target_copy, "resync-elsewhere", 60)

    decision = guard.submit(req)

    assert decision.status == "refused", decision.message
    assert decision.message.startswith("lease:") and target_copy in decision.message
    assert "move_project writes there too" in decision.message
    assert guard.leases.holder(req.target) is None
    assert fleet.inventory_path.read_bytes() == inventory
