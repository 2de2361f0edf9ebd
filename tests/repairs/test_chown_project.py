"""chown_project on a real host: owners fixed, .snapshots untouched, dry-run changes nothing."""

from __future__ import annotations

import os

from conftest import SCRATCH_P1

from bup_watchdog.model import project_uid
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import fleet_digest, make_guard


def plant(fleet: SandboxFleet) -> tuple[str, str]:
    live = fleet.hosts["s1"].projects_dir_outside / SCRATCH_P1
    stray = live / "stray-owner.txt"
    stray.write_text("owned by root by mistake\n")
    os.chown(stray, 0, 0)
    snaps = live / ".snapshots"
    snaps.mkdir()
    (snaps / "old").write_text("history\n")
    os.chown(snaps / "old", 4242, 4242)
    return str(stray), str(snaps / "old")


def test_chown_project_fixes_wrong_owners_and_skips_snapshots(scratch_fleet: SandboxFleet) -> None:
    stray, snap = plant(scratch_fleet)
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")
    decision = guard.submit(RepairRequest("chown_project", s1, SCRATCH_P1), execute=True)
    assert decision.status == "succeeded", decision.message
    assert os.lstat(stray).st_uid == project_uid(SCRATCH_P1)
    assert os.lstat(snap).st_uid == 4242, ".snapshots must never be touched"
    [entry] = guard.journal.entries(status="succeeded")
    assert "ownership passes" in (entry.verification or "")


def test_chown_project_in_dry_run_changes_nothing_on_any_host(scratch_fleet: SandboxFleet) -> None:
    plant(scratch_fleet)
    before = fleet_digest(scratch_fleet)
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")
    req = RepairRequest("chown_project", s1, SCRATCH_P1, params={"dry_run": True})
    decision = guard.submit(req)
    assert decision.status == "dry_run"
    assert any("chown" in step["command"] for step in decision.plan)
    assert fleet_digest(scratch_fleet) == before
