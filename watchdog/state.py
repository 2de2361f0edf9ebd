"""Durable state on the watchdog host: SQLite in WAL mode.

Holds the latest findings and their history (first seen, last seen, resolved), per-host and
per-check status of the last sweep, deep-check bookkeeping and the last good inventory. One sweep is
written in one transaction, so a reader (metrics, a report) sees a whole sweep or the one before.
The schema is versioned; ``migrate()`` brings an older file up to date and refuses a newer one.

When the state's filesystem cannot take writes (full, failing, read-only), the state goes on in
memory: the file is copied into an in-memory database, every read is served from it, and the
writes that can wait (sweeps, findings, repair outcomes, lease releases: ``write()``) are applied
to it and *kept*, to be written to the file in order once it takes writes again (tried at every
write, and every ``retry_seconds`` by a thread). Of sweep data only the latest write per key is
kept (a newer sweep supersedes an older one; sweep rows and check counters are all kept, so
counters never go back). Writes that must be on disk before anything happens (a repair's intent:
journal first) use ``transaction()`` and fail while the file cannot be written. The memory
costs one copy of the state file, for as long as the outage lasts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bup_watchdog.errors import WatchdogError
from bup_watchdog.model import DeepResult, Finding, HostFacts, Severity
from bup_watchdog.suspicion import HostRecord

# A finding a check could not judge (its peer unreadable) stays open this long after it was last
# seen, then is resolved: long enough to ride out a host's outage, short enough not to keep an
# alert firing for a pair that can never be judged again.
UNJUDGED_KEEP_SECONDS = 86400.0

# Interrupted journal rows not yet acknowledged that a later run of the same repair on the same
# target ended in success: acknowledged by the watchdog, as of that success. Used by the journal
# after every success and at start-up, and by migration 7 for rows older than it.
_LATER_SUCCESS = (
    "FROM journal AS s WHERE s.repair = journal.repair AND s.target = journal.target "
    "AND s.id > journal.id AND s.status = 'succeeded'"
)
ACK_BY_LATER_SUCCESS = f"""
    UPDATE journal SET
        acked_at = (SELECT COALESCE(s.finished_at, s.created_at) {_LATER_SUCCESS} ORDER BY s.id
                    LIMIT 1),
        acked_by = 'watchdog',
        ack_reason = 'resolved: repair #' || (SELECT MIN(s.id) {_LATER_SUCCESS}) || ' (' || repair
                     || ' on the same target) succeeded afterwards'
    WHERE status = 'interrupted' AND acked_at IS NULL AND EXISTS (SELECT 1 {_LATER_SUCCESS})
"""  # noqa: S608 - built from constants only

MIGRATIONS: Sequence[str] = (
    # 1: findings with history, host and check status, deep-check book, inventory cache
    """
    CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY,
        started REAL NOT NULL,
        seconds REAL NOT NULL,
        hosts INTEGER NOT NULL,
        repos INTEGER NOT NULL,
        ssh_sessions INTEGER NOT NULL,
        worst INTEGER NOT NULL
    );
    CREATE TABLE findings (
        id INTEGER PRIMARY KEY,
        check_name TEXT NOT NULL,
        code TEXT NOT NULL,
        server_id TEXT NOT NULL,
        project_id TEXT NOT NULL DEFAULT '',
        severity INTEGER NOT NULL,
        message TEXT NOT NULL,
        value REAL,
        details TEXT NOT NULL DEFAULT '{}',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        resolved_at REAL
    );
    CREATE UNIQUE INDEX findings_open ON findings(check_name, code, server_id, project_id)
        WHERE resolved_at IS NULL;
    CREATE INDEX findings_server ON findings(server_id, check_name) WHERE resolved_at IS NULL;
    CREATE TABLE hosts (
        server_id TEXT PRIMARY KEY,
        gathered_at REAL NOT NULL,
        seconds REAL NOT NULL,
        probed INTEGER NOT NULL,
        failure TEXT,
        failure_message TEXT,
        repos INTEGER NOT NULL,
        repo_bytes INTEGER NOT NULL,
        save_log_max_bytes INTEGER NOT NULL,
        bup_server_up INTEGER NOT NULL,
        ssh_sessions INTEGER NOT NULL
    );
    CREATE TABLE check_runs (
        check_name TEXT PRIMARY KEY,
        last_run REAL NOT NULL,
        last_success REAL,
        seconds REAL NOT NULL,
        error TEXT,
        errors_total INTEGER NOT NULL DEFAULT 0,
        runs_total INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE deep_checks (
        server_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        checked_at REAL NOT NULL,
        ok INTEGER NOT NULL,
        master_sha TEXT,
        message TEXT,
        PRIMARY KEY (server_id, project_id)
    );
    CREATE TABLE inventory_cache (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        source TEXT NOT NULL,
        saved_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # 2: key/value facts about the watchdog itself (inventory status, breaker), lag histograms
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE hosts ADD COLUMN lag_seconds TEXT NOT NULL DEFAULT '{}';
    """,
    # 3: each host's reachability record (adaptive timeouts and patience)
    """
    CREATE TABLE host_records (
        server_id TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    """,
    # 4: the repair journal, leases on repair targets, the watchdog's own overrides (fences, ports)
    """
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        repair TEXT NOT NULL,
        target TEXT NOT NULL,
        server_id TEXT NOT NULL,
        project_id TEXT NOT NULL DEFAULT '',
        requested_by TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        fingerprint TEXT,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        refusal TEXT,
        plan TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL,
        decided_by TEXT,
        started_at REAL,
        finished_at REAL,
        output TEXT,
        verification TEXT
    );
    CREATE INDEX journal_target ON journal(target, created_at);
    CREATE INDEX journal_status ON journal(status);
    CREATE TABLE leases (
        target TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE overrides (
        server_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        set_by TEXT NOT NULL,
        set_at REAL NOT NULL,
        PRIMARY KEY (server_id, key)
    );
    """,
    # 5: deep-check coverage is read at every scrape
    """
    CREATE INDEX deep_checks_coverage ON deep_checks(server_id, checked_at);
    """,
    # 6: a request's parameters, so an approved repair runs exactly as it was asked for
    """
    ALTER TABLE journal ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
    """,
    # 7: an interrupted repair is acknowledged (by an operator, or by a later success of the same
    # repair on the same target) without changing its status, so counts by outcome never fall
    """
    ALTER TABLE journal ADD COLUMN acked_at REAL;
    ALTER TABLE journal ADD COLUMN acked_by TEXT;
    ALTER TABLE journal ADD COLUMN ack_reason TEXT;
    """
    + ACK_BY_LATER_SUCCESS,
    # 8: the progress book of batch operations, rebuild and evacuation (watchdog/batches.py)
    """
    CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        host TEXT NOT NULL,
        started REAL NOT NULL,
        updated REAL NOT NULL,
        finished REAL,
        stopped TEXT NOT NULL DEFAULT '',
        holder TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE batch_items (
        batch_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        nbytes INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'left',
        reason TEXT NOT NULL DEFAULT '',
        done_at REAL,
        PRIMARY KEY (batch_id, project_id)
    );
    """,
    # 9: /metrics counts the open findings per check, server and severity (and per project) after
    # every sweep: from this index alone, not a table lookup per finding (watchdog/metrics.py)
    """
    CREATE INDEX findings_open_counts ON findings(check_name, server_id, severity, project_id)
        WHERE resolved_at IS NULL;
    """,
    # 10: the schedule's cooldown and the alerts' duplicate rule look rows up by fingerprint at
    # every sweep and every alert: from an index, not a scan of the whole journal
    """
    CREATE INDEX journal_fingerprint ON journal(fingerprint, created_at);
    """,
)


log = logging.getLogger(__name__)

T = TypeVar("T")
#: One part of a write: a function of the connection, and the key under which a write kept in
#: memory is replaced by a newer one (None: every such write is kept, in order).
Part = tuple[Callable[[sqlite3.Connection], Any], Hashable | None]

# SQLite result codes (the low byte of an extended code) that mean the file cannot take writes
# now, as opposed to a lock another process holds (SQLITE_BUSY): https://sqlite.org/rescode.html
_UNWRITABLE = {8: "read-only", 10: "I/O error", 13: "full", 14: "cannot open"}


class StateError(WatchdogError):
    """The state database cannot be opened or written."""


def unwritable(exc: BaseException) -> bool:
    """Whether a SQLite error says the file cannot take writes now (disk full, I/O, read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _UNWRITABLE
    text = str(exc).lower()
    return any(w in text for w in ("disk is full", "disk i/o error", "readonly database"))


@dataclass(frozen=True, slots=True)
class StoredFinding:
    """An open (or historical) finding as the state keeps it."""

    id: int
    check: str
    code: str
    server_id: str
    project_id: str | None
    severity: Severity
    message: str
    value: float | None
    details: dict[str, Any]
    first_seen: float
    last_seen: float
    resolved_at: float | None


class State:
    """The watchdog's SQLite state. Thread-safe: one connection guarded by a lock."""

    def __init__(self, path: Path, *, retry_seconds: float = 5.0) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            if "not a database" in str(exc):
                raise StateError(
                    f"{path} is not a usable SQLite database ({exc}); move it aside to start "
                    "with empty state"
                ) from None
            raise StateError(f"cannot open the state database {path}: {exc}") from None
        self._lock = threading.RLock()
        #: Writes that failed (disk full, read-only, locked) since this process opened the file,
        #: and whether the last write succeeded: exported so a full disk looks broken.
        self.write_errors = 0
        self.writable = True
        #: While the file cannot take writes: the in-memory copy every read is served from, and
        #: the writes kept to be written to the file (in order; then the latest per key).
        self._mem: sqlite3.Connection | None = None
        self._kept: list[Callable[[sqlite3.Connection], Any]] = []
        self._latest: dict[Hashable, Callable[[sqlite3.Connection], Any]] = {}
        self._retry_seconds = retry_seconds
        self._next_try = 0.0
        self._closed = threading.Event()
        self.migrate()

    @property
    def kept_writes(self) -> int:
        """Writes held in memory until the file takes writes again (0 when it does)."""
        return len(self._kept) + len(self._latest)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._mem is not None:
                self._next_try = 0.0
                if not self._recover():
                    log.error(
                        "closing with %d writes to %s kept in memory that could not be written "
                        "(the disk still cannot take them): they are lost",
                        self.kept_writes,
                        self.path,
                    )
                    self._mem.close()
                    self._mem = None
            self._db.close()

    # -- schema -------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply every migration newer than the file's version, each in its own transaction."""
        with self._lock:
            try:
                current = self.schema_version()
            except sqlite3.DatabaseError as exc:
                raise StateError(
                    f"{self.path} is not a usable SQLite database ({exc}); move it aside to "
                    "start with empty state"
                ) from None
            if current > len(MIGRATIONS):
                raise StateError(
                    f"{self.path} has schema version {current}, newer than this watchdog knows "
                    f"({len(MIGRATIONS)}); refusing to touch it"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                with self.transaction() as db:
                    for stmt in _statements(MIGRATIONS[version - 1]):
                        db.execute(stmt)
                    db.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on the file; errors become StateError.

        For what must be on disk before anything else happens: while writes are kept in memory
        this first writes them (in order) and fails if the file still cannot take them."""
        with self._lock:
            if self._mem is not None and not self._recover(force=True):
                self._write_failed()
                raise StateError(
                    f"cannot write the state database {self.path}: its filesystem still cannot "
                    f"take writes ({self.kept_writes} writes kept in memory until it can)"
                )
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
            try:
                yield self._db
            except sqlite3.Error as exc:
                self._rollback()
                raise self._failed(exc) from None
            except BaseException:
                self._rollback()
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._failed(exc) from None
            self.writable = True

    def write(self, fn: Callable[[sqlite3.Connection], T], *, key: Hashable | None = None) -> T:
        """Run ``fn`` in a transaction; while the file cannot take writes, on the in-memory copy,
        kept to be written later (see the module's docstring). ``fn`` is run again on the file
        then: it must depend only on its arguments and the database."""
        result: T = self.write_parts([(fn, key)])[0]
        return result

    def write_parts(self, parts: Sequence[Part]) -> list[Any]:
        """Several parts in one transaction (a reader sees all or none), each kept in memory under
        its own key while the file cannot take writes. Returns each part's result."""
        with self._lock:
            if self._mem is None or self._recover():
                try:
                    with self.transaction() as db:
                        return [fn(db) for fn, _ in parts]
                except StateError:
                    if self._mem is None:  # not the filesystem (e.g. locked): nothing to keep
                        raise
            mem = self._mem
            assert mem is not None
            mem.execute("BEGIN")
            try:
                results = [fn(mem) for fn, _ in parts]
            except sqlite3.Error as exc:
                mem.execute("ROLLBACK")
                raise StateError(f"cannot write the in-memory state: {exc}") from None
            except BaseException:
                mem.execute("ROLLBACK")
                raise
            mem.execute("COMMIT")
            for fn, key in parts:
                if key is None:
                    self._kept.append(fn)
                else:
                    self._latest.pop(key, None)  # a newer one goes last
                    self._latest[key] = fn
            return results

    def _failed(self, exc: sqlite3.Error) -> StateError:
        """Count a failed write; when the filesystem is what failed, go on in memory."""
        self._write_failed()
        if unwritable(exc) and self._mem is None:
            self._to_memory(exc)
        return StateError(f"cannot write the state database {self.path}: {exc}")

    def _to_memory(self, exc: sqlite3.Error) -> None:
        """Copy the file into memory: reads are served from it and writes kept until the file
        takes writes again. Without a copy (the file unreadable too) writes just fail."""
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        try:
            self._db.backup(mem)
        except sqlite3.Error as again:
            mem.close()
            log.error("cannot copy the state %s into memory either: %s", self.path, again)
            return
        self._mem = mem
        self._next_try = time.monotonic() + min(1.0, self._retry_seconds)
        log.error(
            "the state database %s cannot be written (%s): sweeps, findings and repair outcomes "
            "are kept in memory and served from there, and written to it when it can be again",
            self.path,
            exc,
        )
        threading.Thread(target=self._retry, name="state retry", daemon=True).start()

    def _retry(self) -> None:
        """While writes are kept in memory: try to write them every ``retry_seconds``."""
        while not self._closed.wait(self._retry_seconds):
            with self._lock:
                if self._mem is None or self._closed.is_set():
                    return
                self._recover(force=True)

    def _recover(self, *, force: bool = False) -> bool:
        """Write the kept writes to the file, in order (the latest of each key last); True when
        all are written and the in-memory copy is dropped. Tried at most once a second unless
        ``force``."""
        if self._mem is None:
            return True
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        self._next_try = now + min(1.0, self._retry_seconds)
        written = 0
        while self._kept or self._latest:
            key: Hashable | None = None if self._kept else next(iter(self._latest))
            fn = self._kept[0] if key is None else self._latest[key]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                fn(self._db)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._write_failed()
                log.debug("state %s still cannot be written: %s", self.path, exc)
                return False
            if key is None:
                self._kept.pop(0)
            else:
                self._latest.pop(key)
            written += 1
        self._mem.close()
        self._mem = None
        self.writable = True
        log.warning(
            "the state database %s can be written again: %d writes kept in memory were written",
            self.path,
            written,
        )
        return True

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR); a ROLLBACK then
        # fails with "no transaction is active" and would hide the real error.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _write_failed(self) -> None:
        self.write_errors += 1
        self.writable = False

    def check_integrity(self) -> None:
        """``PRAGMA quick_check``: a damaged file is refused when the daemon starts, instead of
        failing every sweep that happens to read the broken page."""
        with self._lock:
            try:
                rows = self._db.execute("PRAGMA quick_check(1)").fetchall()
            except sqlite3.DatabaseError as exc:
                rows = [(str(exc),)]
        if rows != [("ok",)]:
            why = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
            raise StateError(
                f"{self.path} is damaged ({why or 'no answer'}); move it (and its -wal and -shm "
                "files) aside to start with empty state"
            )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read (from memory while writes are kept there)."""
        with self._lock:
            return (self._mem or self._db).execute(sql, params).fetchall()

    # -- sweeps -------------------------------------------------------------------------------

    def record_sweep(
        self,
        *,
        started: float,
        seconds: float,
        facts: dict[str, HostFacts],
        findings: Iterable[Finding],
        checks_run: dict[str, tuple[float, str | None]],
        evaluated_servers: dict[str, set[str]],
        ssh_sessions: int,
        lag_seconds: dict[str, dict[str, Any]] | None = None,
        unjudged: dict[str, set[tuple[str, str]]] | None = None,
        unjudged_keep_seconds: float = UNJUDGED_KEEP_SECONDS,
    ) -> int:
        """Store one sweep in one transaction.

        ``checks_run`` maps check name to (seconds, error). ``evaluated_servers`` maps a check
        to the servers it could judge in this sweep: only their open findings that were not
        reported again are resolved (a host that was unreachable keeps its old findings open).
        ``unjudged`` maps a check to (server, project) pairs it could not judge although their
        server was evaluated (a replica whose master was not probed): their findings stay open,
        for at most ``unjudged_keep_seconds`` after they were last seen (a pair that can never be
        judged again, say a master decommissioned or swept by another watchdog, must not keep
        an alert firing for ever).
        """
        unjudged = unjudged or {}
        now = started + seconds
        findings = list(findings)
        worst = max((f.severity for f in findings), default=Severity.OK)
        sweep_row = (
            started,
            seconds,
            len(facts),
            sum(len(f.repos) for f in facts.values()),
            ssh_sessions,
            int(worst),
        )
        # Host rows now: the facts themselves (big) are not held by a write kept in memory.
        host_rows = [
            (
                sid,
                h.gathered_at,
                h.duration_seconds,
                int(h.probed),
                h.failure.value if h.failure else None,
                h.failure_message,
                len(h.repos),
                sum(r.repo_bytes for r in h.repos.values()),
                max((r.save_log_bytes or 0 for r in h.repos.values()), default=0),
                int(bool(h.bup_server_tcp and h.bup_server_tcp.ok)),
                h.ssh_sessions,
                json.dumps((lag_seconds or {}).get(sid, {})),
            )
            for sid, h in facts.items()
        ]

        def add_sweep(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO sweeps(started, seconds, hosts, repos, ssh_sessions, worst) "
                "VALUES (?,?,?,?,?,?)",
                sweep_row,
            )
            return int(cur.lastrowid or 0)

        def update_findings(db: sqlite3.Connection) -> None:
            seen: set[tuple[str, str, str, str]] = set()
            for f in findings:
                key = (f.check, f.code, f.server_id, f.project_id or "")
                seen.add(key)
                updated = db.execute(
                    "UPDATE findings SET severity=?, message=?, value=?, details=?, last_seen=? "
                    "WHERE check_name=? AND code=? AND server_id=? AND project_id=? "
                    "AND resolved_at IS NULL",
                    (int(f.severity), f.message, f.value, _json(f.details), now, *key),
                ).rowcount
                if not updated:
                    db.execute(
                        "INSERT INTO findings(check_name, code, server_id, project_id, severity, "
                        "message, value, details, first_seen, last_seen) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (*key, int(f.severity), f.message, f.value, _json(f.details), now, now),
                    )
            for check, servers in evaluated_servers.items():
                if check not in checks_run or checks_run[check][1] is not None:
                    continue  # a check that failed proves nothing resolved
                for sid in servers:
                    rows = db.execute(
                        "SELECT id, code, project_id, last_seen FROM findings WHERE "
                        "check_name=? AND server_id=? AND resolved_at IS NULL",
                        (check, sid),
                    ).fetchall()
                    kept = unjudged.get(check, set())
                    for fid, code, pid, last_seen in rows:
                        if (check, code, sid, pid) in seen:
                            continue
                        if (sid, pid) in kept and last_seen >= now - unjudged_keep_seconds:
                            continue
                        db.execute("UPDATE findings SET resolved_at=? WHERE id=?", (now, fid))
            db.executemany(
                "INSERT OR REPLACE INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", host_rows
            )

        def count_check_runs(db: sqlite3.Connection) -> None:
            for check, (secs, error) in checks_run.items():
                db.execute(
                    "INSERT INTO check_runs(check_name, last_run, last_success, seconds, error, "
                    "errors_total, runs_total) VALUES (?,?,?,?,?,?,1) "
                    "ON CONFLICT(check_name) DO UPDATE SET last_run=excluded.last_run, "
                    "last_success=COALESCE(excluded.last_success, check_runs.last_success), "
                    "seconds=excluded.seconds, error=excluded.error, "
                    "errors_total=check_runs.errors_total + excluded.errors_total, "
                    "runs_total=check_runs.runs_total + 1",
                    (check, now, None if error else now, secs, error, 1 if error else 0),
                )

        # Kept in memory (file full): every sweep row and check count (counters never go back),
        # the findings of the latest sweep of the same hosts and checks.
        latest = ("sweep", frozenset(facts), frozenset(checks_run), frozenset(evaluated_servers))
        sweep_id, _, _ = self.write_parts(
            [(add_sweep, None), (update_findings, latest), (count_check_runs, None)]
        )
        return int(sweep_id)

    # -- reading ------------------------------------------------------------------------------

    def forget_servers(self, keep: Collection[str]) -> list[str]:
        """Servers gone from the inventory: their open findings are resolved and their host rows
        (gauges, reachability record, deep-check book) dropped, so that a decommissioned host does
        not keep an alert firing. Returns the server ids forgotten (none when ``keep`` is empty:
        an empty inventory is more likely a mistake than a fleet with no servers)."""
        keep = set(keep)
        if not keep:
            return []
        return self.drop_servers(
            self.servers_held() - keep, tables=("hosts", "host_records", "deep_checks")
        )

    def servers_held(self, *, except_check: str | None = None) -> set[str]:
        """Servers with host rows, a reachability record or open findings (those of
        ``except_check`` not counted)."""
        return {
            str(sid)
            for (sid,) in self.query(
                "SELECT server_id FROM hosts UNION SELECT server_id FROM host_records UNION "
                "SELECT server_id FROM findings WHERE resolved_at IS NULL AND check_name != ?",
                (except_check or "",),
            )
        }

    def drop_servers(
        self, server_ids: Collection[str], *, tables: Collection[str], except_check: str = ""
    ) -> list[str]:
        """Resolve the servers' open findings (but ``except_check``'s) and delete their rows from
        ``tables``, in one transaction. Returns the server ids, sorted."""
        gone = sorted(server_ids)
        if not gone:
            return []
        now = time.time()
        tables = list(tables)

        def drop(db: sqlite3.Connection) -> None:
            for sid in gone:
                db.execute(
                    "UPDATE findings SET resolved_at=? WHERE server_id=? AND resolved_at IS NULL "
                    "AND check_name != ?",
                    (now, sid, except_check),
                )
                for table in tables:
                    db.execute(f"DELETE FROM {table} WHERE server_id=?", (sid,))  # noqa: S608
            if "deep_checks" in tables:
                _deep_checks_written(db)

        self.write(drop)
        return gone

    def raise_finding(self, f: Finding) -> None:
        """Open (or refresh) one finding outside a sweep, e.g. the guard giving up on a target."""
        now = time.time()
        key = (f.check, f.code, f.server_id, f.project_id or "")

        def upsert(db: sqlite3.Connection) -> None:
            updated = db.execute(
                "UPDATE findings SET severity=?, message=?, value=?, last_seen=? WHERE "
                "check_name=? AND code=? AND server_id=? AND project_id=? AND resolved_at IS NULL",
                (int(f.severity), f.message, f.value, now, *key),
            ).rowcount
            if not updated:
                db.execute(
                    "INSERT INTO findings(check_name, code, server_id, project_id, severity, "
                    "message, value, details, first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (*key, int(f.severity), f.message, f.value, _json(f.details), now, now),
                )

        # Kept in order with the journal's changes (not the latest only): an acknowledgement that
        # resolves this finding must be written after it.
        self.write(upsert)

    def open_findings(
        self, *, server_id: str | None = None, check: str | None = None
    ) -> list[StoredFinding]:
        sql = "SELECT * FROM findings WHERE resolved_at IS NULL"
        params: list[Any] = []
        if server_id:
            sql += " AND server_id=?"
            params.append(server_id)
        if check:
            sql += " AND check_name=?"
            params.append(check)
        sql += " ORDER BY severity DESC, check_name, server_id, project_id"
        return [_stored(r) for r in self.query(sql, params)]

    def finding_history(self, since: float = 0.0) -> list[StoredFinding]:
        rows = self.query(
            "SELECT * FROM findings WHERE last_seen >= ? ORDER BY first_seen", (since,)
        )
        return [_stored(r) for r in rows]

    def set_meta(self, **values: Any) -> None:
        rows = [(k, json.dumps(v)) for k, v in values.items()]
        self.write(
            lambda db: db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows),
            key=("meta", *sorted(values)),
        )

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.query("SELECT key, value FROM meta")}

    def last_sweep(self) -> tuple[Any, ...] | None:
        rows = self.query("SELECT * FROM sweeps ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    # -- deep checks --------------------------------------------------------------------------

    def deep_book(self, server_id: str) -> dict[str, DeepResult]:
        """The latest deep result of every repository of a server."""
        rows = self.query(
            "SELECT project_id, checked_at, ok, master_sha, message FROM deep_checks "
            "WHERE server_id=?",
            (server_id,),
        )
        return {r[0]: DeepResult(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows}

    def record_deep(self, server_id: str, results: Iterable[DeepResult]) -> None:
        rows = [
            (server_id, r.project_id, r.checked_at, int(r.ok), r.master_sha, r.message)
            for r in results
        ]

        def insert(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO deep_checks VALUES (?,?,?,?,?,?)", rows)
            _deep_checks_written(db)

        self.write(insert)

    def deep_coverage(self, window_seconds: float, now: float | None = None) -> dict[str, int]:
        """Per server, how many repositories were deep-checked within the window."""
        since = (time.time() if now is None else now) - window_seconds
        return {sid: n for sid, (n, _) in self.deep_counts(since).items()}

    def deep_counts(self, since: float) -> dict[str, tuple[int, float]]:
        """Per server, the deep checks made since ``since``: how many, and the oldest's time."""
        rows = self.query(
            "SELECT server_id, COUNT(*), MIN(checked_at) FROM deep_checks WHERE checked_at >= ? "
            "GROUP BY server_id",
            (since,),
        )
        return {str(sid): (int(n), float(oldest)) for sid, n, oldest in rows}

    def deep_generation(self) -> int:
        """A number that changes whenever deep-check rows are written or dropped (by any
        process): what was counted from them holds while it stays the same (at 200,000 rows
        the count is a 27 ms scan)."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (_DEEP_GENERATION,))
        return int(rows[0][0]) if rows else 0

    # -- reachability records ------------------------------------------------------------------

    def host_records(self) -> dict[str, HostRecord]:
        out = {}
        for sid, data in self.query("SELECT server_id, record FROM host_records"):
            d = json.loads(data)
            out[sid] = HostRecord(
                sid,
                int(d["ok_streak"]),
                int(d["fail_streak"]),
                tuple(bool(x) for x in d["recent"]),
                d["rtt"],
                int(d.get("ok_before_failures", 0)),
            )
        return out

    def save_host_records(self, records: Iterable[HostRecord]) -> None:
        rows = [
            (
                r.server_id,
                json.dumps(
                    {
                        "ok_streak": r.ok_streak,
                        "fail_streak": r.fail_streak,
                        "recent": list(r.recent),
                        "rtt": r.rtt,
                        "ok_before_failures": r.ok_before_failures,
                    }
                ),
            )
            for r in records
        ]
        self.write(
            lambda db: db.executemany("INSERT OR REPLACE INTO host_records VALUES (?, ?)", rows),
            key=("host_records", *sorted(sid for sid, _ in rows)),
        )

    # -- inventory cache ----------------------------------------------------------------------

    def save_inventory(self, source: str, data: dict[str, Any], version: str | None = None) -> None:
        """Cache the inventory (the fallback when its source is down), with its ``version``."""
        row = (source, time.time(), json.dumps(data))
        meta = ("inventory_version", json.dumps(version))

        def save(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO inventory_cache VALUES (1, ?, ?, ?)", row)
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)

        self.write(save, key="inventory")

    def cached_inventory_version(self) -> str | None:
        """The ``version`` the cached inventory was saved with (None: unknown or none cached)."""
        rows = self.query("SELECT value FROM meta WHERE key = 'inventory_version'")
        if not rows or not self.query("SELECT 1 FROM inventory_cache WHERE id=1"):
            return None
        version = json.loads(rows[0][0])
        return version if isinstance(version, str) else None

    def touch_inventory(self) -> None:
        """The cached inventory is still its source's content as of now."""
        now = time.time()
        self.write(
            lambda db: db.execute("UPDATE inventory_cache SET saved_at = ? WHERE id=1", (now,)),
            key="inventory",
        )

    def cached_inventory(self) -> tuple[str, float, dict[str, Any]] | None:
        rows = self.query("SELECT source, saved_at, data FROM inventory_cache WHERE id=1")
        if not rows:
            return None
        source, saved_at, data = rows[0]
        return str(source), float(saved_at), json.loads(data)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _stored(row: tuple[Any, ...]) -> StoredFinding:
    (fid, check, code, sid, pid, sev, msg, value, details, first, last, resolved) = row
    return StoredFinding(
        fid,
        check,
        code,
        sid,
        pid or None,
        Severity(sev),
        msg,
        value,
        json.loads(details),
        first,
        last,
        resolved,
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


#: The meta key of ``State.deep_generation``.
_DEEP_GENERATION = "deep_checks_generation"


def _deep_checks_written(db: sqlite3.Connection) -> None:
    """Move the deep-check generation on, in the transaction that wrote or dropped the rows."""
    db.execute(
        "INSERT INTO meta VALUES (?, '1') "
        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (_DEEP_GENERATION,),
    )
