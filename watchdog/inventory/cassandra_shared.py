"""One Cassandra connection shared by threads, for the watchdog's own tables (members, leases,
fences): the heartbeat job, the sweep and every repair of a daemon use it at the same time.

``CassandraSession`` (``watchdog.inventory.cassandra``) connects and prepares lazily without a
lock; here both happen under one, and each execution binds its own statement with its own
consistency and serial consistency. The connection stays open (the driver reconnects by itself);
it is dropped only when the error says the connection itself is gone, so one timed-out request
does not fail the others running on it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bup_watchdog.config import Config
from bup_watchdog.errors import InventoryError, WatchdogError
from bup_watchdog.inventory.cassandra import CassandraSession, _driver_errors, plain_cause

#: Hint added to errors about a table the keyspace does not have yet.
MIGRATE_HINT = " — run `bup-watchdog inventory migrate` to create the watchdog's tables"


def driver_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean Cassandra (or the way to it) failed."""
    return _driver_errors()


def store_errors() -> tuple[type[BaseException], ...]:
    """Driver errors, and the watchdog's own errors of connecting (e.g. unreadable TLS files)."""
    return (*_driver_errors(), WatchdogError)


def _connection_gone(exc: BaseException) -> bool:
    from cassandra import OperationTimedOut
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException

    return isinstance(exc, NoHostAvailable | ConnectionException | OperationTimedOut | OSError)


class SharedSession:
    """A thread-safe wrapper of ``CassandraSession`` for small, frequent statements."""

    def __init__(self, db: CassandraSession) -> None:
        self.db = db
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> SharedSession:
        base: Path | None = config.path.parent if config.path is not None else None
        return cls(CassandraSession(config.inventory.cassandra, base=base))

    @property
    def where(self) -> str:
        return self.db.where

    def execute(
        self,
        template: str,
        params: Sequence[Any] = (),
        *,
        consistency: str | None = None,
        serial: str | None = None,
    ) -> Any:
        """Run one statement (``{ks}`` = the keyspace); driver errors are raised as they are.

        ``consistency`` / ``serial``: level names (``"LOCAL_SERIAL"``) overriding the profile's.
        """
        from cassandra import ConsistencyLevel

        with self._lock:
            session = self.db.session()
            prepared = self.db.prepare(template)
        bound = prepared.bind(tuple(params))
        if consistency is not None:
            bound.consistency_level = ConsistencyLevel.name_to_value[consistency]
        if serial is not None:
            bound.serial_consistency_level = ConsistencyLevel.name_to_value[serial]
        return session.execute(bound)

    def prepared(self, template: str) -> tuple[Any, Any]:
        """(driver session, prepared statement) for callers that batch or run concurrently."""
        with self._lock:
            return self.db.session(), self.db.prepare(template)

    def error(self, exc: BaseException, doing: str) -> InventoryError:
        """The error to raise for a driver failure; the connection is dropped if it is gone."""
        if _connection_gone(exc):
            self.close()
        cause = plain_cause(exc)
        if "unconfigured table" in cause:
            cause += MIGRATE_HINT
        return InventoryError(f"Cassandra at {self.where} ({doing}): {cause}")

    def close(self) -> None:
        with self._lock:
            self.db.close()


__all__ = ["MIGRATE_HINT", "SharedSession", "driver_errors", "store_errors"]
