"""resync_replica on a real scratch fleet (s1 master, s2 replica): real bup saves, real rsync over
the hosts' own SSH, and byte-for-byte checks that nothing on either side was lost."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.repair_context import Context
from bup_watchdog.repairs.base import RepairRequest, Step
from bup_watchdog.runner import inventory_source, load_inventory, open_state
from bup_watchdog.sandbox import repos
from bup_watchdog.sandbox.fleet import SandboxFleet
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
# The root disk's /projects: what a host sees once its /projects tmpfs is unmounted.
ROOT_DISK_PROJECTS = Path("/projects")
AUTO = '[repairs.resync_replica]\nmode = "auto"\n'
# The sandbox's newest saves are 10 min old; a 1-minute bound makes the stale replica a finding.
LAG = "[checks.replication_lag]\nwarn_seconds = 60\n"


def request(fleet: SandboxFleet, project_id: str = P, **params: object) -> RepairRequest:
    return RepairRequest("resync_replica", fleet.server_id("s2"), project_id, params=params)


def make_master_newer(fleet: SandboxFleet) -> str:
    """A new real save on the master, one second newer than anything else: s2 is now stale."""
    return bup_save_on(
        fleet, "s1", P, int(time.time()), {"work/after-the-replica.txt": "new on the master\n"}
    )


def lag_findings(guard: Guard, fleet: SandboxFleet) -> list[str]:
    ctx = Context(guard.config, guard.inventory, guard.journal, "test")
    try:
        found = ctx.evaluate("replication_lag", (fleet.server_id("s1"), fleet.server_id("s2")))
    finally:
        ctx.close()
    return [f.code for f in found if f.project_id == P]


def assert_refused(guard: Guard, decision_status: str, code: str) -> None:
    """Refused, and the journal holds exactly that one refusal with its reason."""
    assert decision_status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert entry.refusal is not None and f"{code}:" in entry.refusal, entry.refusal
    assert guard.journal.entries(status="running") == []
    assert guard.journal.entries(status="succeeded") == []


def assert_kept(before: dict[str, str], root_after: dict[str, str]) -> None:
    """Every file that existed before still exists with the same bytes."""
    lost = sorted(k for k in before if k not in root_after)
    changed = sorted(k for k in before if k in root_after and before[k] != root_after[k])
    assert not lost, f"files lost: {lost}"
    assert not changed, f"files changed: {changed}"


@pytest.fixture()
def stale(scratch_fleet: SandboxFleet) -> Iterator[SandboxFleet]:
    """The scratch fleet with a master one real save ahead of its replica."""
    make_master_newer(scratch_fleet)
    yield scratch_fleet


def test_a_stale_replica_is_brought_up_to_date_in_auto_mode_and_nothing_is_lost(
    stale: SandboxFleet,
) -> None:
    fleet = stale
    s2_live = fleet.hosts["s2"].projects_dir_outside / P
    (s2_live / "only-on-the-replica.txt").write_text("never on the master\n")
    newer = s2_live / "README.md"
    newer.write_text("edited on the replica after the master's copy\n")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    guard = make_guard(fleet, AUTO + LAG)
    assert lag_findings(guard, fleet) == ["behind"]
    new = git_out(fleet, "s1", P, "rev-parse", "refs/heads/master")
    when = int(git_out(fleet, "s1", P, "log", "-1", "--format=%ct", new))
    replica_objects = file_digests(fleet.repo_path("s2", P) / "objects")
    master_before = {k: v for k, v in fleet_digest(fleet).items() if k.startswith("s1:")}

    decision = guard.submit(request(fleet))

    assert decision.status == "succeeded", decision.message
    assert "replication_lag passes" in decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == new
    shown = fleet.hosts["s2"].run(["bup", "-d", f"/bup/bups/{P}", "ls", "master"], check=True)
    assert datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d-%H%M%S") in shown.stdout.split()
    assert lag_findings(guard, fleet) == []
    # The reflog carries the master's save time, so the replica never looks newer than it is.
    reflog = (fleet.repo_path("s2", P) / "logs/refs/heads/master").read_text().splitlines()
    assert reflog[-1].endswith(f" {when} +0000\tresync_replica from {fleet.server_id('s1')}")
    # Nothing lost: every object file the replica had is still there, byte for byte; its own
    # live file and its newer README survive; the master was only read.
    assert_kept(replica_objects, file_digests(fleet.repo_path("s2", P) / "objects"))
    assert (s2_live / "only-on-the-replica.txt").read_text() == "never on the master\n"
    assert newer.read_text() == "edited on the replica after the master's copy\n"
    assert (s2_live / "work/after-the-replica.txt").read_text() == "new on the master\n"
    assert {k: v for k, v in fleet_digest(fleet).items() if k.startswith("s1:")} == master_before
    [entry] = guard.journal.entries(status="succeeded")
    assert all("--delete" not in step["command"] for step in entry.plan)


def test_dry_run_and_the_approval_queue_change_nothing_and_show_the_commands(
    stale: SandboxFleet,
) -> None:
    fleet = stale
    before = fleet_digest(fleet)
    guard = make_guard(fleet)  # the default mode: approve

    dry = guard.submit(request(fleet, dry_run=True))
    pending = guard.submit(request(fleet))

    assert dry.status == "dry_run" and "preconditions hold now" in dry.message
    assert pending.status == "pending"
    assert fleet_digest(fleet) == before
    for plan in (dry.plan, pending.plan):
        commands = [step["command"] for step in plan]
        assert any(c.startswith("rsync ") and "--ignore-existing" in c for c in commands)
        assert any("objects/" in c for c in commands)
        assert any("update-ref --create-reflog" in c and "refs/heads/master" in c for c in commands)
        assert any("merge-base --is-ancestor" in c for c in commands)
        assert not any("--delete" in c for c in commands)
        assert not any("refs/heads" in c and c.startswith("rsync") for c in commands)

    done = guard.approve(pending.entry_id, "operator")
    assert done.status == "succeeded", done.message


def test_the_hosts_python_is_the_one_ssh_python_names(
    stale: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the busy scan ran a hard-coded ``python3``, which a host whose Python is
    elsewhere (and a gate installed with ``--python``) refused: every resync was refused."""
    python = "/usr/bin/python3"  # not the default spelling, so a hard-coded one shows
    programs: list[tuple[str, ...]] = []
    real_run = Context.run

    def run(self: Context, step: Step) -> object:
        if step.argv[1:3] == ("-S", "-"):
            programs.append(step.argv)
        return real_run(self, step)

    monkeypatch.setattr(Context, "run", run)
    text = stale.config_path.read_text().replace("[ssh]\n", f'[ssh]\npython = "{python}"\n', 1)
    path = stale.config_path.with_name("config-python.toml")
    path.write_text(text + "\n" + AUTO)
    config = load_config(path, settings_models())
    assert config.ssh.python == python
    state = open_state(config)
    guard = Guard(config, state, load_inventory(inventory_source(config), state))
    decision = guard.submit(request(stale))
    assert decision.status == "succeeded", decision.message
    assert programs, "the resync ran no Python program on the hosts"
    assert {argv[0] for argv in programs} == {python}, programs


@pytest.mark.parametrize("host", ["s2", "s1"], ids=["replica", "master"])
def test_a_host_whose_projects_is_not_mounted_is_refused_with_mount_sanity(
    stale: SandboxFleet, host: str
) -> None:
    fleet = stale
    fleet.hosts[host].run(["umount", "/projects"], check=True)
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "mount_sanity")
    assert "/projects" in decision.message
    assert fleet_digest(fleet) == before


def test_a_replica_newer_than_its_master_is_refused_and_kept(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    bup_save_on(fleet, "s2", P, int(time.time()), {"replica-work.txt": "saved on the replica\n"})
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "replica_newer")
    assert fleet_digest(fleet) == before


def test_a_replica_with_saves_the_master_lacks_stops_as_a_conflict_tagged_on_both_sides(
    scratch_fleet: SandboxFleet,
) -> None:
    fleet = scratch_fleet
    now = int(time.time())
    theirs = bup_save_on(fleet, "s2", P, now - 300, {"replica-work.txt": "only on s2\n"})
    ours = bup_save_on(fleet, "s1", P, now, {"master-work.txt": "only on s1\n"})
    replica_repo = file_digests(fleet.repo_path("s2", P))
    master_repo = file_digests(fleet.repo_path("s1", P))
    s2_live = tree_digest(fleet.hosts["s2"].projects_dir_outside / P)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert decision.status == "conflict", decision.message
    assert "an operator must merge or choose" in decision.message
    for host in ("s1", "s2"):
        tags = git_out(fleet, host, P, "tag", "--list", "conflict-master-*").split()
        assert len(tags) == 1, tags
        assert git_out(fleet, host, P, "rev-parse", f"{tags[0]}^{{commit}}") == theirs
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == theirs
    assert git_out(fleet, "s1", P, "rev-parse", "refs/heads/master") == ours
    assert_kept(replica_repo, file_digests(fleet.repo_path("s2", P)))
    assert_kept(master_repo, file_digests(fleet.repo_path("s1", P)))
    assert tree_digest(fleet.hosts["s2"].projects_dir_outside / P) == s2_live
    [entry] = guard.journal.entries(status="conflict")
    assert "conflict-master-" in (entry.output or "")

    again = guard.submit(request(fleet))

    assert_refused(guard, again.status, "conflict_pending")
    assert len(git_out(fleet, "s2", P, "tag", "--list", "conflict-master-*").split()) == 1


def test_a_prune_swap_between_the_conflict_proof_and_the_tag_gets_the_objects_copied_again(
    scratch_fleet: SandboxFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master's copy is not leased by a resync, so a prune's swap can land between the
    conflict's proof (the replica's objects are on the master) and the master's tag. The swap
    puts back a copy made before those objects came (refs equal, so the prune's own check lets
    it pass); git then refused the tag (nonexistent object) and the resync failed half-way, the
    replica tagged and the master without the replica's commits. A named fake timing: the swap
    is done by hand (rename the repository aside, the early copy in its place), right before the
    tag's command goes out; everything else is the real resync over real SSH."""
    fleet = scratch_fleet
    now = int(time.time())
    theirs = bup_save_on(fleet, "s2", P, now - 300, {"replica-work.txt": "only on s2\n"})
    bup_save_on(fleet, "s1", P, now, {"master-work.txt": "only on s1\n"})
    master = fleet.repo_path("s1", P)
    early, aside = tmp_path / "prune-copy", tmp_path / "prune-aside"
    subprocess.run(["cp", "-a", str(master), str(early)], check=True)
    real_run = Context.run
    swapped: list[str] = []

    def run_swapping_first(self: Context, step: Step) -> object:
        if getattr(step, "kind", "") == "conflict_tag_master" and not swapped:
            master.rename(aside)
            early.rename(master)
            swapped.append(step.argv[-3])
        return real_run(self, step)

    monkeypatch.setattr(Context, "run", run_swapping_first)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert swapped, "the repair never reached the master's tag"
    assert decision.status == "conflict", decision.message
    [entry] = guard.journal.entries(status="conflict")
    assert "git refused the master's tag" in (entry.output or "")
    assert "copying the replica's objects to it again" in (entry.output or "")
    tag = swapped[0]
    assert git_out(fleet, "s1", P, "rev-parse", f"{tag}^{{commit}}") == theirs
    fsck = subprocess.run(
        ["git", f"--git-dir={master}", "fsck", "--connectivity-only", "--no-dangling", tag],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, f"the master's tag lacks objects: {fsck.stdout}{fsck.stderr}"


def _older_pack(repo: Path) -> Path:
    """Delete a pack that does not hold the master commit: only a deep check notices."""
    sha = bytes.fromhex(repos.master_sha(repo))
    for idx in sorted((repo / "objects" / "pack").glob("*.idx")):
        if not repos.idx_contains(idx, sha):
            pack = idx.with_suffix(".pack")
            pack.unlink()
            return pack
    raise AssertionError("no older pack to delete")


@pytest.mark.parametrize(
    ("corrupt", "caught_by"),
    [(repos.corrupt_newest_pack, "is in no pack"), (_older_pack, "fails the deep check")],
    ids=["newest-pack-deleted", "older-pack-deleted-only-the-deep-check-sees-it"],
)
def test_a_master_that_fails_repo_integrity_is_never_replicated(
    stale: SandboxFleet, corrupt: Callable[[Path], Path], caught_by: str
) -> None:
    fleet = stale
    corrupt(fleet.repo_path("s1", P))
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "repo_integrity")
    assert caught_by in decision.message
    assert fleet_digest(fleet) == before


def test_a_replica_without_room_for_the_master_repository_is_refused(stale: SandboxFleet) -> None:
    """A full disk is hard to make for real (the replica's /bup/bups is a bind mount of the root
    disk): an absurd space_margin stands in for it, exercising the same free-space comparison."""
    fleet = stale
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO + "space_margin = 1e12\n")

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "space")
    assert fleet_digest(fleet) == before


def test_a_second_resync_of_a_target_under_lease_is_refused(stale: SandboxFleet) -> None:
    fleet = stale
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)
    req = request(fleet)
    assert guard.journal.acquire_lease(req.target, "someone-else", 60)

    decision = guard.submit(req)

    assert_refused(guard, decision.status, "lease")
    assert "someone-else" in decision.message
    assert fleet_digest(fleet) == before


def test_a_fenced_replica_is_refused(stale: SandboxFleet) -> None:
    fleet = stale
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)
    guard.journal.set_override(fleet.server_id("s2"), "fenced", True, "test")

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "fenced")
    assert fleet_digest(fleet) == before


def test_a_stale_inventory_is_refused_before_any_host_is_asked(stale: SandboxFleet) -> None:
    """From the cache (its source down), the inventory may name a master that has moved."""
    fleet = stale
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)
    guard.inventory = dataclasses.replace(guard.inventory, stale=True)

    decision = guard.submit(request(fleet))

    assert_refused(guard, decision.status, "inventory_stale")
    assert fleet_digest(fleet) == before


def test_a_running_bup_on_the_master_repository_is_refused(stale: SandboxFleet) -> None:
    """A real ``bup split`` waiting on its input holds the master's repository open."""
    fleet = stale
    s1 = fleet.hosts["s1"]
    busy = subprocess.Popen(
        s1.enter_argv(["env", f"BUP_DIR=/bup/bups/{P}", "bup", "split", "-n", "in-progress"]),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        assert busy.poll() is None
        seen_by_host = pid_in_host(fleet, "s1", busy)
        guard = make_guard(fleet, AUTO)
        decision = guard.submit(request(fleet))
    finally:
        busy.kill()
        busy.wait()

    assert_refused(guard, decision.status, "busy")
    assert f"pid {seen_by_host}: 'bup split" in decision.message, decision.message


def test_a_missing_replica_repository_is_made_from_the_master(scratch_fleet: SandboxFleet) -> None:
    fleet = scratch_fleet
    subprocess.run(["rm", "-rf", str(fleet.repo_path("s2", P))], check=True)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert decision.status == "succeeded", decision.message
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == git_out(
        fleet, "s1", P, "rev-parse", "refs/heads/master"
    )
    assert (fleet.repo_path("s2", P) / "conf" / "replicas.json").read_bytes() == (
        fleet.repo_path("s1", P) / "conf" / "replicas.json"
    ).read_bytes()


BAD_IDS = [
    "../../etc",
    f"{P}/../../../etc",
    "not-a-project",
    "5c7a2f1e-1111-1c1d-9a0b-000000000001",  # a version-1 UUID
    "5c7a2f1e-1111-4c1d-9a0b-00000000000",  # one digit short
    f"{P}\n",
]


def test_ids_that_are_not_projects_are_refused_before_any_command(
    scratch_fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = scratch_fleet

    def no(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("no host may be touched for an invalid request")

    for name in ("run", "facts", "evaluate", "transport"):
        monkeypatch.setattr(Context, name, no)
    before = fleet_digest(fleet)
    guard = make_guard(fleet, AUTO)

    decisions = [guard.submit(request(fleet, bad)) for bad in BAD_IDS]

    assert [d.status for d in decisions] == ["refused"] * len(BAD_IDS)
    refused = guard.journal.entries(status="refused")
    assert len(refused) == len(BAD_IDS)
    assert all((e.refusal or "").startswith("invalid: ") for e in refused)
    assert fleet_digest(fleet) == before


def inside(fleet: SandboxFleet, host: str, path: str) -> Path:
    """A path as the host sees it, from outside (through its sshd's root)."""
    return Path(f"/proc/{fleet.hosts[host].sshd_pid}/root") / path.lstrip("/")


def root_disk_files() -> dict[str, str] | None:
    """The project's directory on the root disk, where an unguarded copy would land."""
    where = ROOT_DISK_PROJECTS / P
    return file_digests(where) if where.exists() else None


@pytest.mark.parametrize("host", ["s2", "s1"], ids=["replica", "master"])
def test_projects_unmounted_after_the_mount_recheck_is_refused_by_the_live_copy_command_itself(
    stale: SandboxFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """The boot race inside the repair: ``mountpoint -q`` has passed on both hosts, then
    /projects goes away before the live-file rsync starts. The unmount is real (``umount``
    inside the host); only its moment is chosen, by a wrapper around Context.run that unmounts
    right before the live step's command goes out over SSH (else the window is milliseconds
    wide). Nothing is faked: the command that runs rsync must itself see the mount is gone."""
    fleet = stale
    role = "replica" if host == "s2" else "master"
    old = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    kept = {}
    for h in ("s1", "s2"):  # the tmpfs outlives its unmount, so its files can be compared after
        keep = tmp_path / f"keep-{h}"
        keep.mkdir()
        fleet.hosts[h].run(["mount", "--bind", "/projects", str(keep)], check=True)
        kept[h] = inside(fleet, h, str(keep))
    live_before = {h: tree_digest(kept[h]) for h in kept}
    root_disk_before = root_disk_files()
    real_run = Context.run
    unmounted: list[str] = []

    def run_unmounting_first(self: Context, step: Step) -> object:
        if getattr(step, "kind", "") == "live":
            fleet.hosts[host].run(["umount", "/projects"], check=True)
            unmounted.append(host)
        return real_run(self, step)

    monkeypatch.setattr(Context, "run", run_unmounting_first)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert unmounted == [host], "the repair never reached its live copy"
    assert decision.status == "failed", decision.message
    assert f"resync_replica refused: /projects on the {role} is not mounted" in decision.message
    [entry] = guard.journal.entries(status="failed")
    assert "resync_replica refused" in (entry.output or "")
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == old, "ref not moved"
    assert root_disk_files() == root_disk_before, "the copy wrote to the root disk's /projects"
    assert {h: tree_digest(kept[h]) for h in kept} == live_before, "live files changed"


def test_a_replica_disk_that_fills_up_mid_resync_is_left_without_an_idx_whose_pack_never_came(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """Real ENOSPC (the replica's repository moved onto a tmpfs too small for the new pack, as
    tests/faults does): rsync sends pack-X.idx before pack-X.pack by name, so the .packs go
    first in a pass of their own and a full disk stops the copy before any .idx arrives."""
    fleet = scratch_fleet
    s2 = fleet.hosts["s2"]
    # ~3 MB of incompressible text in one new save on the master: a pack that will not fit.
    bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(1_500_000).hex()})
    repo = f"/bup/bups/{P}"
    used_kb = int(s2.run(["du", "-sk", repo], check=True).stdout.split()[0])
    stage = tmp_path / "full"
    stage.mkdir()
    s2.run(
        ["/bin/sh", "-c", 'set -e; mount -t tmpfs -o size="$1"k resync-full "$2"; '
         'cp -a "$3"/. "$2"/; mount --move "$2" "$3"', "sh", str(used_kb + 512), str(stage), repo],
        check=True,
    )  # fmt: skip
    packs = inside(fleet, "s2", repo) / "objects" / "pack"
    before = sorted(p.name for p in packs.iterdir())
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    assert decision.status == "failed", decision.message
    assert "No space left on device" in decision.message, decision.message
    after = sorted(p.name for p in packs.iterdir())
    orphans = [i for i in after if i.endswith(".idx") and i[:-4] + ".pack" not in after]
    assert not orphans, f".idx without its .pack left on the replica: {orphans}"
    assert after == before, "a failed copy leaves nothing behind in objects/pack"
    [entry] = guard.journal.entries(status="failed")
    commands = [step["command"] for step in entry.plan]
    copies = [c for c in commands if c.startswith("rsync ") and "/objects/" in c]
    # Both directions (the conflict path too): the packs alone, then the same copy in full.
    pack_filters = ["--include=/pack/", "--include=/pack/*.pack", "--exclude=*"]
    assert len(copies) == 4, copies
    for packs_only, everything in zip(copies[::2], copies[1::2], strict=True):
        argv = shlex.split(packs_only)
        assert [a for a in argv if a not in pack_filters] == shlex.split(everything)
        assert all(a in argv for a in pack_filters), packs_only
