"""Retention: history older than ``[state] keep_history_days`` leaves the state database.

Without it the state grew for as long as the watchdog ran: every sweep a row, every flapping
finding a row each time it reopened, every journaled decision (a refusal repeated each cooldown
for a target that keeps failing: up to 48 a day, each with its plan and output) a row, forever.
Kept whatever their age: open findings, the newest sweep (``bupwatch_sweeps_total`` counts on
from it), journal rows still pending or running, and interrupted repairs nobody acknowledged (an
alert stands on each). The file does not shrink (SQLite reuses the freed pages); it stops
growing. Runs at most once a day, after a sweep (``Runner.run_once``).
"""

from __future__ import annotations

import json
import logging
import sqlite3

from bup_watchdog.journal import (
    INTERRUPTED,
    PENDING,
    REFUSED,
    RETIRED_BY_STATUS,
    RETIRED_REFUSALS,
    RUNNING,
    add_retired,
    refusal_code,
)
from bup_watchdog.state import State

log = logging.getLogger(__name__)

DAY = 86400.0
#: ``meta`` key: when history was last pruned (Unix time).
LAST_RUN = "retention_last_run"

#: Finished rows (not pending, not running), except interrupted ones nobody acknowledged and the
#: newest row (its id goes on: "repair #N" is never handed out twice).
_OLD_ROWS = (
    " FROM journal WHERE COALESCE(finished_at, created_at) < ? AND status NOT IN (?, ?) "
    "AND NOT (status = ? AND acked_at IS NULL) AND id < (SELECT MAX(id) FROM journal)"
)


def _retire_journal(db: sqlite3.Connection, cutoff: float) -> int:
    """Delete the old journal rows, adding them to the counts the metrics keep counting from."""
    old = (cutoff, PENDING, RUNNING, INTERRUPTED)
    by_status = {
        (repair, status): n
        for repair, status, n in db.execute(
            "SELECT repair, status, COUNT(*)" + _OLD_ROWS + " GROUP BY repair, status", old
        )
    }
    refusals: dict[tuple[str, str], int] = {}
    for repair, refusal, n in db.execute(
        "SELECT repair, refusal, COUNT(*)" + _OLD_ROWS + " AND status = ? GROUP BY repair, refusal",
        (*old, REFUSED),
    ):
        key = (repair, refusal_code(refusal))
        refusals[key] = refusals.get(key, 0) + n
    add_retired(db, RETIRED_BY_STATUS, by_status)
    add_retired(db, RETIRED_REFUSALS, refusals)
    return int(db.execute("DELETE" + _OLD_ROWS, old).rowcount)


def due(state: State, now: float) -> bool:
    """Whether a day has passed since the last prune (or none ever ran)."""
    last = state.meta().get(LAST_RUN)
    return last is None or now - float(last) >= DAY


def prune_history(state: State, keep_days: float, now: float) -> dict[str, int]:
    """Delete the history older than ``keep_days`` (0: keep everything); rows deleted by table."""
    if keep_days <= 0:
        return {}
    cutoff = now - keep_days * DAY

    def prune(db: sqlite3.Connection) -> dict[str, int]:
        gone = {
            "sweeps": db.execute(
                "DELETE FROM sweeps WHERE started < ? AND id < (SELECT MAX(id) FROM sweeps)",
                (cutoff,),
            ).rowcount,
            "findings": db.execute(
                "DELETE FROM findings WHERE resolved_at IS NOT NULL AND resolved_at < ?",
                (cutoff,),
            ).rowcount,
            "journal": _retire_journal(db, cutoff),
        }
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (LAST_RUN, json.dumps(now)))
        return gone

    gone = state.write(prune)
    if any(gone.values()):
        log.info(
            "retention: removed history older than %g days: %s",
            keep_days,
            ", ".join(f"{n} {table} rows" for table, n in gone.items()),
        )
    return gone
