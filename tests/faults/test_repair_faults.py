"""Host faults while ``resync_replica`` runs, for real: ``/projects`` unmounted after the
preconditions passed, and a replica whose repository fills its disk (ENOSPC) mid-copy.

Both copies are hashed file by file before and after; a repair that fails must fail before the
replica's ref moves, and both copies must still pass ``bup ls master``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Decision
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.journal import Journal
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep
from faults.harm import Snapshot, loss
from faults.harness import ROOT_PROJECTS, bup_ls, host_pids, wait_until
from faults.recorder import Reliability, short
from support.fleet import bup_save_on, git_out, make_guard

P = SCRATCH_P1
AUTO = '[repairs.resync_replica]\nmode = "auto"\n'


def request(fleet: SandboxFleet) -> RepairRequest:
    return RepairRequest("resync_replica", fleet.server_id("s2"), P, requested_by="test")


def inside(fleet: SandboxFleet, host: str, path: str) -> Path:
    """A path as the host sees it, from outside (through one of its processes' root)."""
    return Path(f"/proc/{fleet.hosts[host].sshd_pid}/root") / path.lstrip("/")


def keep_projects(fleet: SandboxFleet, host: str, keep: Path) -> Path:
    """Bind the host's /projects tmpfs to ``keep`` inside the host, so unmounting /projects does
    not destroy its files (a tmpfs dies with its last mount) and they can be compared after."""
    keep.mkdir(parents=True, exist_ok=True)
    fleet.hosts[host].run(["mount", "--bind", "/projects", str(keep)], check=True)
    return inside(fleet, host, str(keep))


@pytest.mark.parametrize("host", ["s2", "s1"], ids=["replica", "master"])
def test_projects_unmounted_after_the_preconditions_stops_the_resync_before_any_live_copy(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path, host: str
) -> None:
    fleet = scratch_fleet
    bup_save_on(fleet, "s1", P, int(time.time()), {"work/new.txt": "new on the master\n"})
    old = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    kept = {h: keep_projects(fleet, h, tmp_path / f"keep-{h}") for h in ("s1", "s2")}
    roots = {
        "s1:bups": fleet.hosts["s1"].bups_dir,
        "s2:bups": fleet.hosts["s2"].bups_dir,
        "s1:projects": kept["s1"],
        "s2:projects": kept["s2"],
    }
    before = Snapshot.of(roots)
    rootdisk = Snapshot.of({"rootdisk": ROOT_PROJECTS})
    guard = make_guard(fleet, AUTO)
    watcher = State(guard.state.path)  # a second connection, as another process would have
    decided: list[Decision] = []
    worker = threading.Thread(target=lambda: decided.append(guard.submit(request(fleet))))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not Journal(watcher).entries(status="running"):
            assert worker.is_alive(), f"the repair ended before it ran: {decided}"
            assert time.monotonic() < deadline, "the repair never started"
            time.sleep(0.005)
        unmounted_at = time.time()
        fleet.hosts[host].run(["umount", "/projects"], check=True)
    finally:
        worker.join(120)
    [decision] = decided
    [entry] = Journal(watcher).entries(status=decision.status)
    watcher.close()
    guard.state.close()

    assert decision.status == "failed", decision.message
    assert f"/projects is still mounted on {host}" in decision.message
    assert "--one-file-system" not in (entry.output or ""), "the live copy never started"
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == old, "ref not moved"
    lost = loss(before, Snapshot.of(roots), f"both copies ({host} unmounted)")
    lost += loss(rootdisk, Snapshot.of({"rootdisk": ROOT_PROJECTS}), "the root disk's /projects")
    assert lost.bytes_lost == 0, lost.lost
    landed = set(Snapshot.of({"rootdisk": ROOT_PROJECTS}).files) - set(rootdisk.files)
    assert not landed, f"writes landed on the root disk: {sorted(landed)[:5]}"
    for h in ("s1", "s2"):
        ls = bup_ls(fleet, h, P)
        assert ls.returncode == 0, f"bup ls master on {h}: {ls.stderr}"
    role = "replica" if host == "s2" else "master"
    reliability.record(
        area="repair",
        what=f"/projects unmounted on the {role} between resync_replica's preconditions and "
        "its live-file rsync (umount as soon as the journal row says running)",
        expected="the repair re-checks with mountpoint -q right before the copy: fails there, "
        "the replica's ref does not move, nothing written to the root disk",
        observed=f"unmounted {unmounted_at - (entry.started_at or unmounted_at):.3f} s after the "
        f"run began; {decision.status}: {short(decision.message, 110)}; ref unchanged; "
        "bup ls master passes on both",
        loss=lost,
    )


def test_a_replica_disk_that_fills_up_mid_resync_fails_cleanly_and_keeps_the_replica_readable(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    s2 = fleet.hosts["s2"]
    # ~3 MB of incompressible text in one new save on the master: a pack that will not fit.
    bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(1_500_000).hex()})
    old = _ref(fleet, "s2")
    repo = f"/bup/bups/{P}"
    used_kb = int(s2.run(["du", "-sk", repo], check=True).stdout.split()[0])
    size_kb = used_kb + 512
    stage = tmp_path / "full"
    stage.mkdir()
    script = (
        f"set -e; mount -t tmpfs -o size={size_kb}k faults-full {stage}; "
        f"cp -a {repo}/. {stage}/; mount --move {stage} {repo}"
    )
    s2.run(["/bin/sh", "-c", script], check=True)
    replica_repo = inside(fleet, "s2", repo)
    free_kb = int(s2.run(["df", "-k", "--output=avail", repo], check=True).stdout.split()[-1])
    roots = {"s1:bups": fleet.hosts["s1"].bups_dir, "s2:repo (tmpfs)": replica_repo}
    before = Snapshot.of(roots)
    guard = make_guard(fleet, AUTO)

    decision = guard.submit(request(fleet))

    [entry] = guard.journal.entries(status=decision.status)
    assert entry.status == "failed"
    assert decision.status == "failed", decision.message
    assert "No space left on device" in decision.message, decision.message
    assert _ref(fleet, "s2") == old, "the replica's ref (on the tmpfs, seen inside s2) unmoved"
    after = Snapshot.of(roots)
    lost = loss(before, after, "both repositories")
    assert lost.bytes_lost == 0, lost.lost
    leftovers = sorted(set(after.files) - set(before.files))
    # resync_replica copies every .pack before its .idx: an .idx alone would be an orphan_idx.
    orphans = [x for x in leftovers if x.endswith(".idx") and x[:-4] + ".pack" not in after.files]
    left = ", ".join(Path(x).name[:14] + "…." + x.rsplit(".", 1)[-1] for x in leftovers)
    ls = bup_ls(fleet, "s2", P)
    assert ls.returncode == 0, f"the full replica is unreadable: {ls.stderr}"
    assert bup_ls(fleet, "s1", P).returncode == 0
    garbage = _garbage_codes(fleet)
    # Space comes back (the tmpfs grows): the next resync completes from where this one stopped.
    s2.run(["mount", "-o", "remount,size=64m", repo], check=True)
    for host in ("s1", "s2"):  # the failed rsync's processes end first (else: busy, refused)
        wait_until(lambda h=host: not host_pids(fleet, h, _rsync), timeout=30, what="rsync to end")
    again = guard.submit(request(fleet))
    guard.state.close()
    assert again.status == "succeeded", again.message
    assert _ref(fleet, "s2") == _ref(fleet, "s1")
    reliability.record(
        area="repair",
        what=f"disk full on the replica during resync_replica (its repository on a tmpfs with "
        f"{free_kb} KiB free; the new pack is ~1.6 MB): real ENOSPC in rsync's receiver",
        expected="the rsync fails, the repair fails cleanly before the ref moves; the replica "
        "still passes bup ls master; nothing lost on either side; a later resync completes",
        observed=f"{decision.status}, the objects rsync exited with status "
        f"{short(decision.message.split('failed with status ', 1)[-1], 190)}; ref unchanged; new "
        f"files left in the repositories: {left or 'none'} ({len(orphans)} .idx without its "
        f".pack; repo_garbage: {', '.join(garbage) or 'nothing'}); bup ls master passes on s2 "
        f"(still full) and s1; after the tmpfs grew: resync {again.status}",
        loss=lost,
    )


def _rsync(argv: list[bytes]) -> bool:
    return argv[0].endswith(b"rsync")


def _ref(fleet: SandboxFleet, host: str) -> str:
    """refs/heads/master as the host itself sees it (s2's repository is a tmpfs inside it)."""
    repo = f"/bup/bups/{P}"
    return (
        fleet.hosts[host]
        .run(["git", f"--git-dir={repo}", "rev-parse", "refs/heads/master"], check=True)
        .stdout.strip()
    )


def _garbage_codes(fleet: SandboxFleet) -> list[str]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    result = sweep(config, FileInventory(config.inventory.file).load(), only=["repo_garbage"])
    return sorted(f.code for f in result.findings if f.server_id == fleet.server_id("s2"))
