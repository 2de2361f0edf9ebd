"""The state database on a real filesystem that fills up: repair outcomes, lease releases and
sweeps are kept in memory, served from there, and written in order once space returns."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bup_watchdog.journal import RUNNING, SUCCEEDED, Journal
from bup_watchdog.model import Finding, HostFacts, Severity
from bup_watchdog.state import State, StateError
from faults.harm import state_loss, state_rows
from faults.harness import wait_until
from faults.recorder import Reliability

S1 = "9d2c0b1e-6a1f-4b57-9d6e-7f2f3c1d0a11"
P1 = "1c3a5e7f-0000-4000-8000-000000000001"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (mounted as root, unmounted after)."""
    where = tmp_path / "state"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "faults-state", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> int:
    """Write a file until the filesystem says ENOSPC; the bytes written."""
    filled = 0
    with (where / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                filled += f.write(b"\0" * 16384)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filled


def sweep(state: State, t: float, findings: list[Finding]) -> int:
    return state.record_sweep(
        started=t,
        seconds=1.0,
        facts={S1: HostFacts(server_id=S1, gathered_at=t)},
        findings=findings,
        checks_run={"save_log_size": (0.01, None)},
        evaluated_servers={"save_log_size": {S1}},
        ssh_sessions=1,
    )


def on_disk(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows as another process reads them from the file (not from the daemon's memory)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def big(i: int) -> Finding:
    return Finding(
        "save_log_size",
        S1,
        Severity.WARNING,
        "x" * 2000,
        project_id=f"1c3a5e7f-0000-4000-8000-{i:012x}",
        code="too_large",
    )


def test_a_full_state_disk_keeps_outcomes_and_lease_releases_in_memory_and_writes_them_in_order(
    small_disk: Path, reliability: Reliability
) -> None:
    db = small_disk / "state.db"
    state = State(db, retry_seconds=0.2)
    journal = Journal(state)
    sweep(state, 100.0, [big(0)])
    entry = journal.write(
        repair="resync_replica",
        target=f"{S1}/{P1}",
        server_id=S1,
        project_id=P1,
        requested_by="api",
        reason="test",
        fingerprint=None,
        mode="auto",
        status=RUNNING,
    )
    assert journal.acquire_lease(f"{S1}/{P1}", "host:1", 3600)
    rows = state_rows(db)
    filled = fill(small_disk)
    # A sweep with many findings no longer fits: from now on the state is in memory.
    sweep(state, 200.0, [big(i) for i in range(1, 400)])
    writable_while_full = state.writable

    journal.update(entry, status=SUCCEEDED, output="first")
    journal.update(entry, output="second")  # a later change to the same row: must win
    journal.release_lease(f"{S1}/{P1}", "host:1")
    sweep(state, 300.0, [big(1)])
    with pytest.raises(StateError):  # a new intent must reach the file: journal first
        journal.write(
            repair="chown_project",
            target=f"{S1}/{P1}",
            server_id=S1,
            project_id=P1,
            requested_by="api",
            reason="test",
            fingerprint=None,
            mode="auto",
            status=RUNNING,
        )
    seen_in_memory = (journal.get(entry), journal.lease_holder(f"{S1}/{P1}"), state.open_findings())
    sweeps_in_memory = state.query("SELECT COUNT(*) FROM sweeps")[0][0]
    file_while_full = (
        on_disk(db, "SELECT status FROM journal WHERE id=?", (entry,)),
        on_disk(db, "SELECT holder FROM leases"),
    )
    kept = state.kept_writes

    (small_disk / "filler").unlink()
    started = time.monotonic()
    wait_until(lambda: state.writable, timeout=10, what="the kept writes to reach the file")
    seconds = time.monotonic() - started
    row = on_disk(db, "SELECT status, output, finished_at FROM journal WHERE id=?", (entry,))
    leases = on_disk(db, "SELECT holder FROM leases")
    open_on_disk = on_disk(db, "SELECT project_id FROM findings WHERE resolved_at IS NULL")
    sweeps_on_disk = on_disk(db, "SELECT COUNT(*) FROM sweeps")[0][0]
    state.close()
    lost = state_loss(db, rows)

    assert not writable_while_full and filled > 0
    mem_entry, mem_holder, mem_findings = seen_in_memory
    assert mem_entry is not None and mem_entry.status == SUCCEEDED
    assert mem_entry.output == "second"
    assert mem_holder is None, "the lease is released at once, in memory"
    assert [f.project_id for f in mem_findings] == [big(1).project_id]
    assert file_while_full == ([("running",)], [("host:1",)]), "nothing reached the full file"
    assert sweeps_in_memory == 3
    assert kept >= 4
    assert row[0][:2] == ("succeeded", "second") and row[0][2] is not None
    assert leases == []
    assert open_on_disk == [(big(1).project_id,)]
    assert sweeps_on_disk == 3, "every sweep row reached the file: the counter never goes back"
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="watchdog",
        what=f"the state's filesystem full (a 2 MiB tmpfs filled with {filled // 1024} KiB) "
        "while a repair ends, its lease is released and sweeps go on",
        expected="the outcome, the lease's release and the sweeps are kept in memory and served "
        "from there; a new intent is refused (journal first); once space is back they reach "
        "the file in order",
        observed=f"in memory: repair succeeded, lease free, {sweeps_in_memory} sweeps; the file "
        f"still said running and held the lease; {kept} writes kept, written {seconds:.1f} s "
        "after space returned (the last change to the row won); a new intent raised StateError",
        loss=lost,
    )
