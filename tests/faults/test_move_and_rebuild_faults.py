"""Faults in the middle of a move and of a rebuild, for real: another writer switches the
inventory while move_project copies, the source host vanishes (every sshd of it killed) while the
target pulls from it, and ``rebuild HOST --execute`` is SIGKILLed mid-copy.

Every copy is hashed file by file before and after; a ref a repair moved is only excused when
the old commit is proved an ancestor of the new one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

from conftest import SCRATCH_P1

from bup_watchdog.guard import Decision, Guard
from bup_watchdog.inventory.file import FileInventory, dump_toml
from bup_watchdog.journal import Journal
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harm import state_query
from faults.harness import CLI, AtStake, Daemon, bup_ls, host_pids, wait_until, write_config
from faults.recorder import Reliability, short
from support.fleet import bup_save_on, git_out, make_guard

P = SCRATCH_P1
MOVE = '[repairs.move_project]\nmode = "auto"\n'
REF = f"s2:bups:{P}/refs/heads/master"  # the target's ref: a repair may move it forward only


def move(fleet: SandboxFleet) -> RepairRequest:
    return RepairRequest("move_project", fleet.server_id("s1"), P, params={"target": "s2"})


def ref(fleet: SandboxFleet, host: str) -> str:
    return git_out(fleet, host, P, "rev-parse", "refs/heads/master")


def forward(fleet: SandboxFleet, old: str) -> frozenset[str]:
    """The target's ref, excused once ``old`` is proved an ancestor of where it is now."""
    git_out(fleet, "s2", P, "merge-base", "--is-ancestor", old, ref(fleet, "s2"))  # raises if not
    return frozenset({REF})


def _rsync(argv: list[bytes]) -> bool:
    return argv[0].endswith(b"rsync") and b"--ignore-existing" in argv


def killed_row(db: Path, entry: int) -> tuple[str, str] | None:
    """(status, acked_by) of a journal row once it is marked interrupted."""
    [(status, acked_by)] = state_query(
        db, "SELECT status, acked_by FROM journal WHERE id=?", (entry,)
    )
    return (status, acked_by) if status == "interrupted" else None


def submit_in_thread(guard: Guard, req: RepairRequest) -> tuple[threading.Thread, list[Decision]]:
    decided: list[Decision] = []
    worker = threading.Thread(target=lambda: decided.append(guard.submit(req)))
    worker.start()
    return worker, decided


def test_a_move_whose_inventory_another_writer_switches_mid_copy_refuses_its_own_switch(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    new = bup_save_on(fleet, "s1", P, int(time.time()), {"work/moved.txt": "saved on s1\n"})
    old = ref(fleet, "s2")
    stake = AtStake(fleet)
    guard = make_guard(fleet, MOVE)
    watcher = Journal(State(guard.state.path))  # another connection, as another process has
    worker, decided = submit_in_thread(guard, move(fleet))
    try:
        wait_until(lambda: watcher.entries(status="running"), timeout=60, what="the move to run")
        # Another writer (an operator by hand, another tool) makes s2 the master meanwhile.
        data = tomllib.loads(fleet.inventory_path.read_text())
        [entry] = [e for e in data["projects"] if e["project_id"] == P]
        entry.update(master=fleet.server_id("s2"), replicas=[fleet.server_id("s1")])
        theirs = dump_toml(data)
        fleet.inventory_path.write_text(theirs)
        edited_at = time.time()
    finally:
        worker.join(120)
    [decision] = decided
    [row] = watcher.entries(status=decision.status)
    watcher.state.close()
    guard.state.close()

    assert decision.status == "failed", decision.message
    assert "the inventory changed meanwhile" in decision.message
    assert "nothing was switched" in decision.message
    assert fleet.inventory_path.read_text() == theirs, "the other writer's inventory overwritten"
    assert ref(fleet, "s1") == new and ref(fleet, "s2") == new  # the copy stays, in step
    lost = stake.loss(moved=forward(fleet, old))
    assert lost.bytes_lost == 0, lost.lost
    for host in ("s1", "s2"):
        assert bup_ls(fleet, host, P).returncode == 0
    project = FileInventory(fleet.inventory_path).load().projects[P]
    reliability.record(
        area="repair",
        what="another writer switches the inventory's master (s1 -> s2, by hand) while "
        "move_project s1 -> s2 copies: a real concurrent edit of the inventory file as soon as "
        "the journal says running",
        expected="the compare-and-swap of the switch finds the master is no longer the source: "
        "the move fails, the other writer's inventory is not overwritten, no copy is deleted",
        observed=f"edited {edited_at - (row.started_at or edited_at):.2f} s after the run began; "
        f"{decision.status}: {short(decision.message, 150)}; inventory as the other wrote it "
        f"(master {project.master[:8]}…); both heads {new[:12]}, bup ls master ok on both",
        loss=lost,
    )


def test_the_source_host_vanishing_mid_move_fails_the_move_unswitched_and_a_retry_succeeds(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    new = bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(600_000).hex()})
    old = ref(fleet, "s2")
    inventory = fleet.inventory_path.read_bytes()
    stake = AtStake(fleet)
    slow = make_guard(fleet, MOVE + "bwlimit_kib = 100\n")  # the packs take seconds to copy
    worker, decided = submit_in_thread(slow, move(fleet))
    try:
        wait_until(lambda: host_pids(fleet, "s2", _rsync), timeout=60, what="the copy's rsync")
        time.sleep(0.5)  # a part of the pack on its way
        # s1 vanishes: its listening sshd and every session (the target's rsync sender's too).
        sessions = host_pids(fleet, "s1", lambda a: b"sshd" in a[0])
        s1 = fleet.hosts["s1"]
        s1.kill_sshd()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        gone_at = time.monotonic()
    finally:
        worker.join(120)
    failed_after = time.monotonic() - gone_at
    [decision] = decided
    slow.state.close()

    assert decision.status == "failed", decision.message
    assert "nothing was switched" in decision.message, decision.message
    assert fleet.inventory_path.read_bytes() == inventory, "no half-switched inventory"
    assert ref(fleet, "s2") == old, "the target's ref moves last: unmoved"
    wait_until(lambda: not host_pids(fleet, "s2", _rsync), timeout=30, what="the rsync to end")
    lost_failed = stake.loss()
    assert lost_failed.bytes_lost == 0, lost_failed.lost
    partial = [p for p in stake.added() if "/objects/" in p and not p.endswith((".pack", ".idx"))]
    assert not partial, f"rsync left partial files: {partial}"

    s1.start_sshd()  # the host is back
    guard = make_guard(fleet, MOVE)
    again = guard.submit(move(fleet))
    guard.state.close()

    assert again.status == "succeeded", again.message
    assert ref(fleet, "s2") == new
    switched = FileInventory(fleet.inventory_path).load().projects[P]
    assert switched.master == fleet.server_id("s2")
    assert switched.replicas == (fleet.server_id("s1"),)
    lost = stake.loss(moved=forward(fleet, old))
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="repair",
        what="the source host vanishes mid-move (move_project s1 -> s2, rsync --bwlimit=100 "
        "half-way through a ~1 MB pack; every sshd of s1 SIGKILLed, the target's rsync sender "
        "with them)",
        expected="the copy fails, the move fails before its switch: inventory byte for byte "
        "unchanged, the target's ref unmoved, no partial file; once s1 is back a retry succeeds",
        observed=f"{decision.status} {failed_after:.2f} s after s1 vanished, the packs' rsync "
        f"with status {short(decision.message.split('failed with status ', 1)[-1], 150)}; "
        "inventory unchanged, ref unmoved, 0 partial files; "
        f"retry after sshd restarted: {again.status}, master now s2, s1 a replica",
        loss=lost,
    )


def test_a_rebuild_sigkilled_mid_copy_resumes_and_its_interrupted_row_is_reported(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    new = bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(250_000).hex()})
    old = ref(fleet, "s2")
    stake = AtStake(fleet)
    config, url, _token = write_config(fleet, tmp_path / "w")
    db = tmp_path / "w" / "state" / "state.db"
    rebuild = [*CLI, "rebuild", "-c", str(config), "s2", "--execute"]
    killed = subprocess.Popen(
        [*rebuild, "--bwlimit", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: host_pids(fleet, "s2", _rsync), timeout=60, what="the copy's rsync")
        time.sleep(0.5)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    # The orphaned rsync (objects only, --ignore-existing) may finish; the ref moves last.
    wait_until(lambda: not host_pids(fleet, "s2", _rsync), timeout=60, what="the rsync to end")
    assert ref(fleet, "s2") == old
    held = state_query(db, "SELECT target, holder FROM leases")
    assert [h for _, h in held] and held[0][1].split("#")[0].endswith(f":{killed.pid}"), held

    resumed = subprocess.run(rebuild, capture_output=True, text=True, timeout=120)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 copies brought in step" in resumed.stdout, resumed.stdout
    assert f"released the lease on {held[0][0]}" in resumed.stderr, resumed.stderr
    assert ref(fleet, "s2") == ref(fleet, "s1") == new
    assert state_query(db, "SELECT target FROM leases") == []
    rows = state_query(db, "SELECT id, status FROM journal ORDER BY id")
    assert [s for _, s in rows] == ["running", "succeeded"], rows
    # A daemon started on that state reports the killed run interrupted; the later success on
    # the same target acknowledges it (no finding left open).
    with Daemon(config, url) as daemon:
        daemon.wait_up()
        status, acked_by = wait_until(
            lambda: killed_row(db, rows[0][0]), timeout=30, what="the killed run marked"
        )
        stopped = daemon.stop()
    assert status == "interrupted" and acked_by == "watchdog", (status, acked_by)
    lost = stake.loss(moved=forward(fleet, old))
    assert lost.bytes_lost == 0, lost.lost
    assert bup_ls(fleet, "s2", P).returncode == 0
    reliability.record(
        area="watchdog",
        what="`rebuild s2 --execute --bwlimit 100` SIGKILLed mid-copy (resync_replica's rsync "
        "half-way through a ~0.3 MB pack), then run again",
        expected="the replica's ref unmoved (it moves last), the master untouched; the second "
        "run releases the dead run's lease, brings the copy in step; the journal keeps the "
        "killed row, reported interrupted",
        observed=f"lease of pid {killed.pid} left, released by the second run (exit "
        f"{resumed.returncode}, 1 copy brought in step, heads {new[:12]} on both); journal "
        f"{[s for _, s in rows]}, the first marked {status} and acknowledged by {acked_by} "
        f"(the later success) when a daemon started (stopped with exit {stopped})",
        loss=lost,
    )
