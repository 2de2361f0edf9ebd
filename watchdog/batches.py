"""The progress book of batch operations (a rebuild, an evacuation), kept in the state database.

A batch is a list of planned copies or moves, each one ``left`` until the run records what the
guard did with it. The book makes a batch visible after the fact and to the daemon (/metrics, the
audit report), which share the state file with the CLI that runs it. Recording never stops the
batch: a write that fails is a warning in the log (the state keeps writes in memory while its
disk is full, as for any other write).

A batch is *running* while it is not finished and the process that started it is alive. That
process is known as ``host:pid`` (as lease holders are): on this host its pid is looked up; a
batch started on another host counts as running while it recorded something within
``STALE_SECONDS``. A batch whose process is gone without finishing was interrupted (killed): it
is not running, and its ``stopped`` says so (a pid reused since by another process keeps it
counted as running until that one ends: rare, and it errs on the side of "still busy").
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bup_watchdog.errors import WatchdogError
from bup_watchdog.leases import dead_holder, holder_name
from bup_watchdog.state import State

log = logging.getLogger(__name__)

KINDS = ("rebuild", "evacuation")
#: An item's status before the run recorded anything for it.
LEFT = "left"
SUCCEEDED = "succeeded"
PENDING = ("pending_approval", "pending")
#: A batch of another host that recorded nothing for this long is no longer counted as running.
STALE_SECONDS = 3600.0
#: A failure's reason is kept to this many characters (a repair's message can hold its output).
MAX_REASON = 2000
#: /metrics shows batches running or finished within this long.
METRICS_WINDOW_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One planned copy or move: the project, and the bytes it is expected to send."""

    project_id: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch stands: counts of copies and bytes, the ETA, and the failures with reasons.

    ``done`` succeeded, ``failed`` failed or were refused, ``pending`` wait for an operator's
    approval, ``left`` were not (yet) submitted. ``eta_seconds``: the bytes left at the rate of
    the bytes done so far, while running (None before the first copy is done, or when stopped).
    """

    batch_id: str
    kind: str
    host: str
    started: float
    updated: float
    finished: float | None
    stopped: str
    total: int
    done: int
    failed: int
    pending: int
    left: int
    bytes_total: int
    bytes_done: int
    eta_seconds: float | None
    failures: tuple[tuple[str, str], ...]
    running: bool


def _record(state: State, what: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
    """One write through the state's write path; a failure is a warning, never the batch's end."""
    try:
        state.write(fn)
    except (WatchdogError, sqlite3.Error) as exc:
        log.warning("cannot record %s in the state (the batch goes on): %s", what, exc)


def start_batch(
    state: State,
    *,
    batch_id: str,
    kind: str,
    host: str,
    items: Sequence[BatchItem],
    now: float | None = None,
) -> None:
    """Record a batch and its planned items (all ``left``); a batch id used again starts over."""
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r} (one of {', '.join(KINDS)})")
    at = time.time() if now is None else now
    row = (batch_id, kind, host, at, at, holder_name())
    rows = [(batch_id, i.project_id, max(0, int(i.nbytes))) for i in items]

    def write(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM batch_items WHERE batch_id=?", (batch_id,))
        db.execute(
            "INSERT OR REPLACE INTO batches(batch_id, kind, host, started, updated, holder) "
            "VALUES (?,?,?,?,?,?)",
            row,
        )
        db.executemany(
            "INSERT OR REPLACE INTO batch_items(batch_id, project_id, nbytes) VALUES (?,?,?)",
            rows,
        )

    _record(state, f"the start of {batch_id}", write)


def item_done(
    state: State,
    batch_id: str,
    project_id: str,
    *,
    status: str,
    reason: str = "",
    now: float | None = None,
) -> None:
    """Record what became of one item: succeeded, failed, refused or pending_approval (the
    reason is kept to its first ``MAX_REASON`` characters)."""
    at = time.time() if now is None else now
    reason = reason[:MAX_REASON]

    def write(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO batch_items(batch_id, project_id, nbytes, status, reason, done_at) "
            "VALUES (?,?,0,?,?,?) ON CONFLICT(batch_id, project_id) DO UPDATE SET "
            "status=excluded.status, reason=excluded.reason, done_at=excluded.done_at",
            (batch_id, project_id, status, reason, at),
        )
        db.execute("UPDATE batches SET updated=? WHERE batch_id=?", (at, batch_id))

    _record(state, f"{project_id} of {batch_id}", write)


def finish_batch(
    state: State, batch_id: str, *, stopped: str = "", now: float | None = None
) -> None:
    """Record the batch's end; ``stopped``: why it ended before its last item, if it did."""
    at = time.time() if now is None else now
    _record(
        state,
        f"the end of {batch_id}",
        lambda db: db.execute(
            "UPDATE batches SET finished=?, updated=?, stopped=? WHERE batch_id=?",
            (at, at, stopped, batch_id),
        ),
    )


def unused_batch_id(state: State, batch_id: str) -> str:
    """``batch_id``, or with ``-2``, ``-3``… when the book holds it already (two runs of one
    host within the same second)."""
    taken = {
        str(b)
        for (b,) in state.query(
            "SELECT batch_id FROM batches WHERE batch_id = ? OR batch_id LIKE ?",
            (batch_id, f"{batch_id}-%"),
        )
    }
    n, candidate = 1, batch_id
    while candidate in taken:
        n += 1
        candidate = f"{batch_id}-{n}"
    return candidate


def _alive(holder: str, updated: float, now: float) -> bool:
    """Whether the batch's process still runs (see the module's docstring)."""
    host = holder.split("#", 1)[0].rpartition(":")[0]
    if host == socket.gethostname():
        return not dead_holder(holder)
    return now - updated < STALE_SECONDS


_PENDING_SQL = ",".join(f"'{s}'" for s in PENDING)
_PROGRESS = f"""
    SELECT b.batch_id, b.kind, b.host, b.started, b.updated, b.finished, b.stopped, b.holder,
           COUNT(i.project_id),
           COALESCE(SUM(i.status = '{SUCCEEDED}'), 0),
           COALESCE(SUM(i.status IN ({_PENDING_SQL})), 0),
           COALESCE(SUM(i.status = '{LEFT}'), 0),
           COALESCE(SUM(i.nbytes), 0),
           COALESCE(SUM(CASE WHEN i.status = '{SUCCEEDED}' THEN i.nbytes END), 0),
           COALESCE(SUM(CASE WHEN i.status = '{LEFT}' THEN i.nbytes END), 0),
           MAX(CASE WHEN i.status = '{SUCCEEDED}' THEN i.done_at END)
    FROM batches AS b LEFT JOIN batch_items AS i ON i.batch_id = b.batch_id
    WHERE b.updated >= ? OR b.finished IS NULL
    GROUP BY b.batch_id ORDER BY b.started DESC, b.batch_id
"""  # noqa: S608 - built from constants only
_FAILURES = f"""
    SELECT batch_id, project_id, status, reason FROM batch_items
    WHERE status NOT IN ('{LEFT}', '{SUCCEEDED}', {_PENDING_SQL}) AND batch_id IN
        (SELECT batch_id FROM batches WHERE updated >= ? OR finished IS NULL)
    ORDER BY batch_id, done_at, project_id
"""  # noqa: S608 - built from constants only


def batch_progress(
    state: State, *, since: float = 0.0, now: float | None = None, failures: bool = True
) -> list[BatchProgress]:
    """Batches that recorded something at or after ``since``, or are running; newest first.
    ``failures=False`` leaves the failures out (what /metrics needs is the counts)."""
    at = time.time() if now is None else now
    failed: dict[str, list[tuple[str, str]]] = {}
    for bid, pid, status, reason in state.query(_FAILURES, (since,)) if failures else ():
        failed.setdefault(bid, []).append((pid, reason or status))
    out = []
    for row in state.query(_PROGRESS, (since,)):
        (bid, kind, host, started, updated, finished, stopped, holder) = row[:8]
        total, done, pending, left, b_total, b_done, b_left, last_done = row[8:]
        running = finished is None and _alive(holder, updated, at)
        if not running and updated < since:
            continue  # an unfinished batch whose process is gone, from before the window
        if finished is None and not running:
            stopped = stopped or f"interrupted: its process ({holder}) is gone"
        eta = None
        if running and b_done and last_done is not None and last_done > started:
            eta = b_left / (b_done / (last_done - started))
        out.append(
            BatchProgress(
                batch_id=bid,
                kind=kind,
                host=host,
                started=started,
                updated=updated,
                finished=finished,
                stopped=stopped,
                total=total,
                done=done,
                failed=total - done - pending - left,
                pending=pending,
                left=left,
                bytes_total=b_total,
                bytes_done=b_done,
                eta_seconds=eta,
                failures=tuple(failed.get(bid, ())),
                running=running,
            )
        )
    return out
