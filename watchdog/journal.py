"""The repair journal, leases on repair targets, and the watchdog's own overrides.

Journal first: a repair's intent (plan, who asked, why) is written before any command runs, its
outcome after. A row still ``running`` when the watchdog starts was interrupted (crash, SIGKILL):
it is reported, never blindly re-run. Every guard decision — refusals included — is a row.

A new row must reach the file (no intent, no repair); a change to a row (an outcome) and a lease's
release are kept in memory while the state's filesystem is full and written when it can be again,
in order (``State.write``), so a repair that ends during the outage neither loses its outcome nor
holds its target.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bup_watchdog.errors import WatchdogError
from bup_watchdog.model import Inventory
from bup_watchdog.state import ACK_BY_LATER_SUCCESS, State

# Statuses a journal row goes through.
REFUSED = "refused"
DRY_RUN = "dry_run"
PENDING = "pending"  # waiting for an operator (mode approve)
DENIED = "denied"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"  # a command failed, or verification did not pass
INTERRUPTED = "interrupted"
CONFLICT = "conflict"  # stopped on purpose: newer data on the target (resync_replica)

FINISHED = frozenset({REFUSED, DRY_RUN, DENIED, SUCCEEDED, FAILED, INTERRUPTED, CONFLICT})

#: ``requested_by`` of every request that comes from the Alertmanager webhook.
ALERT_REQUESTER = "alertmanager:"
#: The refusal code under which alert requests held back by the cooldown are counted (metrics).
ALERT_COOLDOWN = "alert_cooldown"
_COOLDOWN_META_KEY = "alert_cooldown_skipped"
#: ``meta`` keys: journal rows retention removed (watchdog/retention.py), per "repair\tstatus"
#: and per "repair\trefusal code", still counted so the repair counters never go down.
RETIRED_BY_STATUS = "journal_retired_by_status"
RETIRED_REFUSALS = "journal_retired_refusals"


def add_retired(db: sqlite3.Connection, key: str, counts: Mapping[tuple[str, str], int]) -> None:
    """Add removed rows' counts to a ``meta`` total (inside the removing transaction)."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    totals: dict[str, int] = json.loads(row[0]) if row else {}
    for (repair, what), n in counts.items():
        name = f"{repair}\t{what}"
        totals[name] = int(totals.get(name, 0)) + int(n)
    db.execute(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(totals, sort_keys=True))
    )


def refusal_code(refusal: str | None) -> str:
    """A refusal's short reason code: the text before its first colon."""
    return (refusal or "").split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row."""

    id: int
    repair: str
    target: str
    server_id: str
    project_id: str | None
    requested_by: str
    reason: str
    fingerprint: str | None
    mode: str
    status: str
    refusal: str | None
    plan: list[dict[str, Any]]
    created_at: float
    decided_by: str | None
    started_at: float | None
    finished_at: float | None
    output: str | None
    verification: str | None
    params: dict[str, Any]
    #: An interrupted repair someone took care of: when, who (``watchdog`` when a later run of
    #: the same repair on the same target succeeded), and why. The status stays ``interrupted``.
    acked_at: float | None = None
    acked_by: str | None = None
    ack_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


_COLUMNS = (
    "id, repair, target, server_id, project_id, requested_by, reason, fingerprint, mode, status, "
    "refusal, plan, created_at, decided_by, started_at, finished_at, output, verification, params, "
    "acked_at, acked_by, ack_reason"
)


def _entry(row: Sequence[Any]) -> Entry:
    values = list(row)
    values[4] = values[4] or None
    values[11] = json.loads(values[11] or "[]")
    values[18] = json.loads(values[18] or "{}")
    return Entry(*values)


class Journal:
    """Journal, leases and overrides, stored in the watchdog's state database."""

    def __init__(self, state: State) -> None:
        self.state = state

    # -- journal ------------------------------------------------------------------------------

    def write(
        self,
        *,
        repair: str,
        target: str,
        server_id: str,
        project_id: str | None,
        requested_by: str,
        reason: str,
        fingerprint: str | None,
        mode: str,
        status: str,
        refusal: str | None = None,
        plan: list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
    ) -> int:
        """Write a new row (an intent or a decision) and return its id."""
        now = time.time()
        with self.state.transaction() as db:
            cur = db.execute(
                "INSERT INTO journal(repair, target, server_id, project_id, requested_by, reason, "
                "fingerprint, mode, status, refusal, plan, created_at, finished_at, params) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    repair,
                    target,
                    server_id,
                    project_id or "",
                    requested_by,
                    reason,
                    fingerprint,
                    mode,
                    status,
                    refusal,
                    json.dumps(plan or []),
                    now,
                    now if status in FINISHED else None,
                    json.dumps(params or {}, default=str),
                ),
            )
            return int(cur.lastrowid or 0)

    def update(self, entry_id: int, **fields: Any) -> None:
        allowed = {
            "status",
            "refusal",
            "plan",
            "decided_by",
            "started_at",
            "finished_at",
            "output",
            "verification",
        }
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"journal fields cannot be updated: {sorted(bad)}")
        if "plan" in fields:
            fields["plan"] = json.dumps(fields["plan"])
        if fields.get("status") in FINISHED and "finished_at" not in fields:
            fields["finished_at"] = time.time()
        sql = f"UPDATE journal SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?"  # noqa: S608
        params = (*fields.values(), entry_id)
        succeeded = fields.get("status") == SUCCEEDED

        def apply(db: sqlite3.Connection) -> None:
            db.execute(sql, params)
            if succeeded:  # interrupted runs of the same repair on this target are resolved
                _ack_by_later_success(db)
                _resolve_gave_up(db, entry_id)

        self.state.write(apply)

    def get(self, entry_id: int) -> Entry | None:
        rows = self.state.query(f"SELECT {_COLUMNS} FROM journal WHERE id=?", (entry_id,))  # noqa: S608
        return _entry(rows[0]) if rows else None

    def entries(self, *, status: str | None = None, limit: int = 100) -> list[Entry]:
        sql = f"SELECT {_COLUMNS} FROM journal"  # noqa: S608
        params: list[Any] = []
        if status:
            sql += " WHERE status=?"
            params.append(status)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_entry(r) for r in self.state.query(sql, params)]

    def mark_interrupted(self) -> list[Entry]:
        """On start-up: rows still running were interrupted. Mark them and return those that
        need someone: not those a later run of the same repair on the target already resolved
        (one run by hand while the watchdog was down); their rows say so."""
        running = self.entries(status=RUNNING, limit=10_000)
        for e in running:
            self.update(
                e.id,
                status=INTERRUPTED,
                output=(e.output or "")
                + "\nthe watchdog stopped while this repair ran; its outcome is unknown. "
                "Not re-run: check the target and repair again if needed.",
            )
        if running:
            self.state.write(_ack_by_later_success)
        marked = [self.get(e.id) for e in running]
        return [e for e in marked if e is not None and e.acked_at is None]

    def ack(self, entry_id: int, by: str, why: str) -> Entry:
        """Acknowledge an interrupted repair: someone checked its target. Its status stays
        ``interrupted`` (counts by outcome never fall); it no longer counts as open, and the
        guard's finding on its target resolves once no other interrupted run there is open.
        Written to the file before it returns (an acknowledgement must not be lost)."""
        why = why.strip()
        if not why:
            raise WatchdogError(
                f"say why repair #{entry_id} is acknowledged (what was checked on its target)"
            )
        with self.state.transaction() as db:
            row = db.execute(
                "SELECT status, acked_by, acked_at FROM journal WHERE id=?", (entry_id,)
            ).fetchone()
            if row is None:
                raise WatchdogError(f"no repair #{entry_id} in the journal")
            status, acked_by, acked_at = row
            if status != INTERRUPTED:
                raise WatchdogError(
                    f"repair #{entry_id} is {status}, not interrupted: only an interrupted "
                    "repair is acknowledged"
                )
            if acked_at is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(acked_at))
                raise WatchdogError(
                    f"repair #{entry_id} was already acknowledged by {acked_by} at {when}"
                )
            db.execute(
                "UPDATE journal SET acked_at=?, acked_by=?, ack_reason=? WHERE id=?",
                (time.time(), by, why[:500], entry_id),
            )
            _resolve_interrupted_findings(db)
        entry = self.get(entry_id)
        assert entry is not None
        return entry

    def count_started(
        self, since: float, *, repair: str | None = None, server_id: str | None = None
    ) -> int:
        """Repairs that started executing since a time (for rate limits)."""
        sql = "SELECT COUNT(*) FROM journal WHERE started_at >= ?"
        params: list[Any] = [since]
        if repair:
            sql += " AND repair=?"
            params.append(repair)
        if server_id:
            sql += " AND server_id=?"
            params.append(server_id)
        return int(self.state.query(sql, params)[0][0])

    def recent_failures(self, repair: str, target: str, since: float) -> int:
        """Failed attempts on a target since a time, not counting those before a success."""
        rows = self.state.query(
            "SELECT status FROM journal WHERE repair=? AND target=? AND started_at >= ? "
            "AND status IN (?, ?, ?) ORDER BY id DESC",
            (repair, target, since, SUCCEEDED, FAILED, INTERRUPTED),
        )
        n = 0
        for (status,) in rows:
            if status == SUCCEEDED:
                break
            n += 1
        return n

    def active_fingerprint(self, fingerprint: str) -> Entry | None:
        """A pending or running repair started for this alert fingerprint, if any."""
        rows = self.state.query(
            f"SELECT {_COLUMNS} FROM journal WHERE fingerprint=? AND status IN (?, ?) "  # noqa: S608
            "ORDER BY id DESC LIMIT 1",
            (fingerprint, PENDING, RUNNING),
        )
        return _entry(rows[0]) if rows else None

    def pending_for(self, repair: str, target: str) -> Entry | None:
        """A request of this repair on this target waiting for an operator, if any (whoever
        asked: the schedule and an alert ask with different fingerprints)."""
        rows = self.state.query(
            f"SELECT {_COLUMNS} FROM journal WHERE status=? AND repair=? AND target=? "  # noqa: S608
            "ORDER BY id DESC LIMIT 1",
            (PENDING, repair, target),
        )
        return _entry(rows[0]) if rows else None

    def decided_since(self, fingerprint: str, since: float) -> bool:
        """Whether any decision was taken for this fingerprint since a time (schedule cooldown)."""
        rows = self.state.query(
            "SELECT 1 FROM journal WHERE fingerprint=? AND created_at >= ? LIMIT 1",
            (fingerprint, since),
        )
        return bool(rows)

    def last_alert_decision(self, repair: str, target: str, since: float) -> Entry | None:
        """The latest decision (a finished row) on an alert's request for this repair and target,
        taken since a time: what the alert cooldown is counted from."""
        rows = self.state.query(
            f"SELECT {_COLUMNS} FROM journal WHERE target=? AND repair=? "  # noqa: S608
            "AND finished_at >= ? AND substr(requested_by, 1, ?) = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            (target, repair, since, len(ALERT_REQUESTER), ALERT_REQUESTER),
        )
        return _entry(rows[0]) if rows else None

    def count_alert_cooldown(self, skipped: Mapping[str, int]) -> None:
        """Add alert requests held back by the cooldown, per repair. They get no journal row (that
        flood is what the cooldown stops), so they are counted here, in the state, for metrics."""
        if not skipped:
            return
        added = dict(skipped)

        def count(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT value FROM meta WHERE key=?", (_COOLDOWN_META_KEY,)).fetchone()
            totals: dict[str, int] = json.loads(row[0]) if row else {}
            for repair, n in added.items():
                totals[repair] = int(totals.get(repair, 0)) + int(n)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (_COOLDOWN_META_KEY, json.dumps(totals, sort_keys=True)),
            )

        self.state.write(count)

    def alert_cooldown_counts(self) -> dict[str, int]:
        """Alert requests held back by the cooldown so far, per repair."""
        rows = self.state.query("SELECT value FROM meta WHERE key=?", (_COOLDOWN_META_KEY,))
        return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()} if rows else {}

    def _retired(self, key: str) -> dict[tuple[str, str], int]:
        rows = self.state.query("SELECT value FROM meta WHERE key=?", (key,))
        totals: dict[str, int] = json.loads(rows[0][0]) if rows else {}
        out: dict[tuple[str, str], int] = {}
        for name, n in totals.items():
            repair, _, what = name.partition("\t")
            out[(repair, what)] = int(n)
        return out

    def counts_by(self) -> dict[tuple[str, str], int]:
        """Journal rows per (repair, status), those retention removed included, for metrics."""
        out = self._retired(RETIRED_BY_STATUS)
        for r, s, n in self.state.query(
            "SELECT repair, status, COUNT(*) FROM journal GROUP BY repair, status"
        ):
            out[(r, s)] = out.get((r, s), 0) + int(n)
        return out

    def open_by(self) -> dict[tuple[str, str], int]:
        """Rows that still need someone per (repair, status): pending, running, and interrupted
        ones not acknowledged, for metrics."""
        return {
            (r, s): int(n)
            for r, s, n in self.state.query(
                "SELECT repair, status, COUNT(*) FROM journal WHERE status IN (?, ?, ?) "
                "AND acked_at IS NULL GROUP BY repair, status",
                (PENDING, RUNNING, INTERRUPTED),
            )
        }

    def refusals_by_reason(self) -> dict[tuple[str, str], int]:
        """Refusals per (repair, short reason code), for metrics. Alert requests held back by the
        cooldown (``[alerts] cooldown_seconds``) count under the code ``alert_cooldown``."""
        out = self._retired(RETIRED_REFUSALS)
        for repair, n in self.alert_cooldown_counts().items():
            out[(repair, ALERT_COOLDOWN)] = out.get((repair, ALERT_COOLDOWN), 0) + n
        for repair, refusal, n in self.state.query(
            "SELECT repair, refusal, COUNT(*) FROM journal WHERE status=? GROUP BY repair, refusal",
            (REFUSED,),
        ):
            code = refusal_code(refusal)
            out[(repair, code)] = out.get((repair, code), 0) + int(n)
        return out

    # -- leases -------------------------------------------------------------------------------

    def acquire_lease(self, target: str, holder: str, ttl: float) -> bool:
        """Take the lease on a target unless someone holds an unexpired one."""
        now = time.time()
        with self.state.transaction() as db:
            db.execute("DELETE FROM leases WHERE expires_at < ?", (now,))
            try:
                db.execute("INSERT INTO leases VALUES (?, ?, ?)", (target, holder, now + ttl))
            except sqlite3.IntegrityError:
                return False
        return True

    def lease_holder(self, target: str) -> str | None:
        rows = self.state.query(
            "SELECT holder FROM leases WHERE target=? AND expires_at >= ?", (target, time.time())
        )
        return str(rows[0][0]) if rows else None

    def release_lease(self, target: str, holder: str) -> None:
        """Release a lease; kept in memory (and written later) while the state file is full."""
        self.state.write(
            lambda db: db.execute(
                "DELETE FROM leases WHERE target=? AND holder=?", (target, holder)
            )
        )

    def leases(self) -> list[tuple[str, str, float]]:
        """Every lease row: (target, holder, expires_at)."""
        return [
            (str(t), str(h), float(e))
            for t, h, e in self.state.query("SELECT target, holder, expires_at FROM leases")
        ]

    # -- overrides ----------------------------------------------------------------------------

    def set_override(self, server_id: str, key: str, value: Any, set_by: str) -> None:
        with self.state.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO overrides VALUES (?, ?, ?, ?, ?)",
                (server_id, key, json.dumps(value), set_by, time.time()),
            )

    def clear_override(self, server_id: str, key: str) -> None:
        with self.state.transaction() as db:
            db.execute("DELETE FROM overrides WHERE server_id=? AND key=?", (server_id, key))

    def overrides(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sid, key, value in self.state.query("SELECT server_id, key, value FROM overrides"):
            out.setdefault(sid, {})[key] = json.loads(value)
        return out


def _ack_by_later_success(db: sqlite3.Connection) -> None:
    db.execute(ACK_BY_LATER_SUCCESS)
    _resolve_interrupted_findings(db)


def _resolve_gave_up(db: sqlite3.Connection, entry_id: int) -> None:
    """A success of a repair on a target ends the guard's ``gave_up`` finding about that repair
    there (no sweep resolves it: the guard is not a check)."""
    db.execute(
        "UPDATE findings SET resolved_at=? WHERE check_name='guard' AND code='gave_up' "
        "AND resolved_at IS NULL AND EXISTS (SELECT 1 FROM journal AS j WHERE j.id=? "
        "AND j.server_id=findings.server_id AND j.project_id IS findings.project_id "
        "AND substr(findings.message, 1, length(j.repair) + 8) = j.repair || ' failed ')",
        (time.time(), entry_id),
    )


def _resolve_interrupted_findings(db: sqlite3.Connection) -> None:
    """Resolve the guard's ``interrupted`` findings on targets with no open interrupted run."""
    db.execute(
        "UPDATE findings SET resolved_at=? WHERE check_name='guard' AND code='interrupted' "
        "AND resolved_at IS NULL AND NOT EXISTS (SELECT 1 FROM journal AS j WHERE "
        "j.status=? AND j.acked_at IS NULL AND j.server_id=findings.server_id "
        "AND j.project_id=findings.project_id)",
        (time.time(), INTERRUPTED),
    )


def apply_overrides(inventory: Inventory, overrides: dict[str, dict[str, Any]]) -> Inventory:
    """The inventory as the watchdog must act on it: fenced hosts take no new projects (they
    count as experimental) and a bup_server port recorded after a restart replaces the old one."""
    if not overrides:
        return inventory
    servers = dict(inventory.servers)
    for sid, values in overrides.items():
        server = servers.get(sid)
        if server is None:
            continue
        if values.get("fenced"):
            server = dataclasses.replace(server, experimental=True)
        if isinstance(values.get("port"), int):
            server = dataclasses.replace(server, port=int(values["port"]))
        servers[sid] = server
    return dataclasses.replace(inventory, servers=servers)
