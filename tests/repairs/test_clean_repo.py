"""clean_repo on a real bup repository: each repo_garbage finding cleared by its own action (tmp
leftovers deleted, packs repacked so bup still reads them, bupindex only when it is the finding),
and verified for exactly the codes it was asked to clear."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from conftest import SCRATCH_P1, scratch_spec

from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.repos import bup_save, live_tree, write_tree
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


def git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args], input=data, capture_output=True, check=True
    ).stdout


def pack_names(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "objects" / "pack").glob("*.pack"))


def bup_ls(fleet: SandboxFleet, *path: str) -> list[str]:
    """``bup ls`` on host s1 (as the host sees the repository); fails the test if bup cannot."""
    ls = fleet.hosts["s1"].run(["bup", "-d", repo_inside(fleet, "s1", SCRATCH_P1), "ls", *path])
    assert ls.returncode == 0, ls.stderr
    return ls.stdout.split()


def more_saves(fleet: SandboxFleet, count: int) -> None:
    """``count`` more real saves of the project (one pack each), the newest a minute ago."""
    repo = fleet.repo_path("s1", SCRATCH_P1)
    staging = fleet.root / "more-saves"
    now = int(time.time())
    for i in range(count):
        write_tree(staging, {**live_tree_of(i), f"extra-{i}.txt": f"save {i}\n".encode() * 50})
        bup_save(repo, staging, now - 60 * (count - i))


def live_tree_of(i: int) -> dict[str, bytes]:
    return live_tree(scratch_spec().projects[0], 2 + i)


def test_clean_repo_waits_for_approval_then_deletes_the_tmp_leftovers_and_keeps_bupindex(
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
    assert not any("bupindex" in step["command"] for step in pending.plan)
    assert fleet_digest(scratch_fleet) == fleet_before

    decision = guard.approve(pending.entry_id, "tester")

    assert decision.status == "succeeded", decision.message
    tmp = [p for p in planted if "tmp" in p.name]
    assert len(tmp) == 2 and not any(p.exists() for p in tmp)
    # bupindex* and the one midx are bup's normal state, not a finding: they stay.
    kept = [p for p in planted if "tmp" not in p.name]
    assert {p.name for p in kept} >= {"bupindex", "bupindex.meta"}
    assert all(p.exists() for p in kept)
    assert deeper.exists()
    assert git_digest(repo) == git_before
    bup_ls(scratch_fleet, "master")
    entry = guard.journal.get(decision.entry_id)
    assert entry is not None and entry.decided_by == "tester"
    assert "tmp-xyz" in (entry.output or "") and "bupindex" not in (entry.output or "")
    assert "for tmp_objects" in (entry.verification or "")
    assert "deep check" in (entry.verification or "")


def test_clean_repo_deletes_bupindex_only_when_the_finding_is_about_it(
    scratch_fleet: SandboxFleet,
) -> None:
    planted = plant_garbage(scratch_fleet)
    guard = make_guard(scratch_fleet, "[checks.repo_garbage]\nmax_bupindex_bytes = 1\n")
    s1 = scratch_fleet.server_id("s1")

    decision = guard.submit(RepairRequest("clean_repo", s1, SCRATCH_P1), execute=True)

    assert decision.status == "succeeded", decision.message
    assert "bupindex" in decision.message and "tmp_objects" in decision.message
    assert [p.name for p in planted if p.exists()] == [
        p.name for p in planted if p.suffix == ".midx"
    ]


def test_too_many_packs_is_repacked_into_one_pack_that_bup_reads_and_saves_on(
    scratch_fleet: SandboxFleet,
) -> None:
    more_saves(scratch_fleet, 4)
    repo = scratch_fleet.repo_path("s1", SCRATCH_P1)
    plant_garbage(scratch_fleet)  # a midx naming every old pack, and tmp leftovers
    packs_before = pack_names(repo)
    saves_before = bup_ls(scratch_fleet, "master")
    master_before = (repo / "refs" / "heads" / "master").read_text()
    assert len(packs_before) == 6
    # An interrupted save's pack: objects nothing reachable names yet, which bup dedups against
    # (a save running beside the repack may point at them): -a -d alone would drop them.
    unreachable = git(repo, "hash-object", "-w", "--stdin", data=b"an interrupted save's blob\n")
    git(repo, "pack-objects", "-q", str(repo / "objects" / "pack" / "pack"), data=unreachable)
    (repo / "objects" / unreachable[:2].decode() / unreachable[2:40].decode()).unlink()
    guard = make_guard(scratch_fleet, "[checks.repo_garbage]\nmax_packs = 3\n")
    s1 = scratch_fleet.server_id("s1")

    decision = guard.submit(RepairRequest("clean_repo", s1, SCRATCH_P1), execute=True)

    assert decision.status == "succeeded", decision.message
    assert "too_many_packs" in decision.message
    commands = [step["command"] for step in decision.plan]
    assert any(" repack -a -d -k -q" in c for c in commands)
    assert commands[-1].endswith("ls master")
    assert len(pack_names(repo)) == 1 and pack_names(repo) != packs_before
    git(repo, "cat-file", "-e", unreachable.strip().decode())  # kept by -k
    assert list((repo / "objects" / "pack").glob("*.midx")) == []  # named the old packs
    assert (repo / "refs" / "heads" / "master").read_text() == master_before
    assert bup_ls(scratch_fleet, "master") == saves_before
    for save in saves_before:
        if save != "latest":
            assert bup_ls(scratch_fleet, f"master/{save}")
    more_saves(scratch_fleet, 1)  # bup saves on the repacked repository
    assert len(bup_ls(scratch_fleet, "master")) == len(saves_before) + 1


def test_clean_repo_verifies_exactly_the_codes_it_was_asked_to_clear(
    scratch_fleet: SandboxFleet,
) -> None:
    more_saves(scratch_fleet, 4)
    planted = plant_garbage(scratch_fleet)
    repo = scratch_fleet.repo_path("s1", SCRATCH_P1)
    packs_before = pack_names(repo)
    extra = "[checks.repo_garbage]\nmax_packs = 3\n[repairs.clean_repo]\nrepack = false\n"
    guard = make_guard(scratch_fleet, extra)
    s1 = scratch_fleet.server_id("s1")

    # Asked for everything open: too_many_packs is one, and repack is off: refused, not a
    # "success" with the finding still open.
    refused = guard.submit(RepairRequest("clean_repo", s1, SCRATCH_P1), execute=True)
    assert refused.status == "refused"
    assert "repack_off" in refused.message
    assert all(p.exists() for p in planted)

    # Asked for tmp_objects only: cleared and verified, too_many_packs left open and untouched.
    asked = RepairRequest("clean_repo", s1, SCRATCH_P1, params={"codes": ["tmp_objects"]})
    decision = guard.submit(asked, execute=True)

    assert decision.status == "succeeded", decision.message
    assert "for tmp_objects;" in decision.message
    assert pack_names(repo) == packs_before
    assert [p.name for p in planted if p.exists()] == [
        p.name for p in planted if "tmp" not in p.name
    ]
    unknown = RepairRequest("clean_repo", s1, SCRATCH_P1, params={"codes": ["orphan_idx"]})
    assert "invalid_codes" in guard.submit(unknown, execute=True).message


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
    # The host has its own PID namespace: its pid for the process is not ours; its argv is.
    assert "(BUP_DIR/GIT_DIR): sleep 60" in (entry.refusal or "")
    assert all(p.exists() for p in planted)
