"""clean_repo on a real bup repository: leftovers and caches gone, packs and refs untouched."""

from __future__ import annotations

from pathlib import Path

from conftest import SCRATCH_P1

from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import fleet_digest, git_digest, make_guard, repo_inside, start_in_host


def plant_garbage(fleet: SandboxFleet) -> list[Path]:
    """A real bupindex and midx made by bup on the host, and leftover tmp files."""
    host = fleet.hosts["s1"]
    inside = repo_inside(fleet, "s1", SCRATCH_P1)
    projects = f"{host.projects_root}/{SCRATCH_P1}"
    host.run(["bup", "-d", inside, "index", projects], check=True)
    host.run(["bup", "-d", inside, "midx", "-f"], check=True)
    repo = fleet.repo_path("s1", SCRATCH_P1)
    (repo / "objects" / "tmp-xyz").write_bytes(b"an interrupted save\n")
    (repo / "objects" / "pack" / "tmp_pack_abc").write_bytes(b"an interrupted fetch\n")
    planted = [
        *repo.glob("bupindex*"),
        *(repo / "objects" / "pack").glob("*.midx"),
        repo / "objects" / "tmp-xyz",
        repo / "objects" / "pack" / "tmp_pack_abc",
    ]
    assert any(p.name == "bupindex" for p in planted)
    assert any(p.suffix == ".midx" for p in planted)
    return planted


def test_clean_repo_waits_for_approval_then_deletes_only_leftovers_and_caches(
    scratch_fleet: SandboxFleet,
) -> None:
    planted = plant_garbage(scratch_fleet)
    repo = scratch_fleet.repo_path("s1", SCRATCH_P1)
    # Out of the find's reach (objects/info is one level too deep): must stay.
    deeper = repo / "objects" / "info" / "tmp-keep"
    deeper.parent.mkdir(exist_ok=True)
    deeper.write_text("not a leftover of objects/\n")
    git_before = git_digest(repo)
    fleet_before = fleet_digest(scratch_fleet)
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")

    pending = guard.submit(RepairRequest("clean_repo", s1, SCRATCH_P1))
    assert pending.status == "pending"
    assert any("-delete" in step["command"] for step in pending.plan)
    assert fleet_digest(scratch_fleet) == fleet_before

    decision = guard.approve(pending.entry_id, "tester")

    assert decision.status == "succeeded", decision.message
    assert [p for p in planted if p.exists()] == []
    assert deeper.exists()
    assert git_digest(repo) == git_before
    ls = scratch_fleet.hosts["s1"].run(
        ["bup", "-d", repo_inside(scratch_fleet, "s1", SCRATCH_P1), "ls", "master"]
    )
    assert ls.returncode == 0, ls.stderr
    entry = guard.journal.get(decision.entry_id)
    assert entry is not None and entry.decided_by == "tester"
    assert "tmp-xyz" in (entry.output or "") and "bupindex" in (entry.output or "")
    assert "deep check" in (entry.verification or "")


def test_clean_repo_refuses_while_a_process_works_on_the_repository(
    scratch_fleet: SandboxFleet,
) -> None:
    planted = plant_garbage(scratch_fleet)
    inside = repo_inside(scratch_fleet, "s1", SCRATCH_P1)
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")
    save = start_in_host(scratch_fleet, "s1", ["env", f"BUP_DIR={inside}", "sleep", "60"])
    try:
        decision = guard.submit(RepairRequest("clean_repo", s1, SCRATCH_P1), execute=True)
    finally:
        save.kill()
        save.wait()

    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert (entry.refusal or "").startswith("precondition: busy:")
    assert f"pid {save.pid}" in (entry.refusal or "") and "BUP_DIR" in (entry.refusal or "")
    assert all(p.exists() for p in planted)
