"""fence_host's write-through to Cassandra: the fleet's own ``storage_servers.experimental``.

With the Cassandra inventory, a fence is not only the watchdog's ``fenced`` override (which every
repair of this watchdog consults): the server's row in ``storage_servers`` gets
``experimental = true``, so the fleet's own tooling (which places new projects and replicas by
that flag) stops using the host too, and so do the other watchdogs, which read it back.

The value the row had before is recorded first in ``bupwatch_fences`` (``INSERT … IF NOT
EXISTS``: a second fence, by this or another watchdog, keeps the first record, never the ``true``
the fence itself wrote), then the flag is set. Un-fencing writes the recorded value back (a null
stays null) and deletes the record. A crash between the two steps leaves a record and an
unchanged flag; fencing again completes it. Fencing and un-fencing one server never race: both
run under the guard's lease on the server.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bup_watchdog.config import Config
from bup_watchdog.errors import WatchdogError
from bup_watchdog.inventory.cassandra_shared import MIGRATE_HINT, SharedSession, driver_errors

SELECT_EXPERIMENTAL = (
    "SELECT experimental FROM {ks}.storage_servers WHERE dummy = ? AND server_id = ?"
)
SET_EXPERIMENTAL = (
    "UPDATE {ks}.storage_servers SET experimental = ? WHERE dummy = ? AND server_id = ?"
)
SELECT_FENCE = (
    "SELECT previous_experimental, fenced_by, fenced_at, reason FROM {ks}.bupwatch_fences "
    "WHERE server_id = ?"
)
INSERT_FENCE = (
    "INSERT INTO {ks}.bupwatch_fences (server_id, previous_experimental, fenced_by, fenced_at, "
    "reason) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
)
DELETE_FENCE = "DELETE FROM {ks}.bupwatch_fences WHERE server_id = ?"


class FenceStoreError(WatchdogError):
    """Cassandra could not be read or written for a fence."""


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """A fence in ``bupwatch_fences``: what ``experimental`` was before, who fenced, when."""

    previous: bool | None
    fenced_by: str
    fenced_at: datetime | None
    reason: str


def _show(value: bool | None) -> str:
    return "null" if value is None else str(value).lower()


class CassandraFences:
    """Fences written through to ``storage_servers`` (one short connection per use)."""

    def __init__(self, db: SharedSession) -> None:
        self.db = db

    @classmethod
    def from_config(cls, config: Config) -> CassandraFences:
        return cls(SharedSession.from_config(config))

    def _run(self, doing: str, template: str, params: tuple[Any, ...], **kw: Any) -> Any:
        try:
            return self.db.execute(template, params, **kw)
        except driver_errors() as exc:
            raise FenceStoreError(str(self.db.error(exc, doing))) from None

    def experimental(self, server_id: str) -> tuple[bool, bool | None]:
        """(row exists?, its experimental value)."""
        row = self._run(
            "reading storage_servers", SELECT_EXPERIMENTAL, (True, uuid.UUID(server_id))
        ).one()
        return (False, None) if row is None else (True, row[0])

    def record(self, server_id: str) -> FenceRecord | None:
        row = self._run("reading bupwatch_fences", SELECT_FENCE, (uuid.UUID(server_id),)).one()
        if row is None:
            return None
        previous, by, at, reason = row
        return FenceRecord(previous, str(by or ""), at, str(reason or ""))

    def fence(self, server_id: str, *, by: str, reason: str) -> str:
        """Record the previous value (unless a fence is recorded already), set the flag; returns
        what was done, for the journal."""
        sid = uuid.UUID(server_id)
        exists, previous = self.experimental(server_id)
        if not exists:
            raise FenceStoreError(
                f"server {server_id} has no row in storage_servers; nothing to fence there",
                permanent=True,
            )
        who = f"{by} via bup-watchdog on {socket.gethostname()}:{os.getpid()}"
        inserted = self._run(
            "recording the fence",
            INSERT_FENCE,
            (sid, previous, who[:200], datetime.now(UTC), reason[:1000]),
            serial="LOCAL_SERIAL",
        )
        if inserted.was_applied:
            kept = previous
            note = f"the previous value {_show(previous)} is recorded in bupwatch_fences"
        else:
            record = self.record(server_id)
            kept = record.previous if record is not None else previous
            note = f"a fence was recorded already; its previous value {_show(kept)} is kept"
        self._run("setting experimental", SET_EXPERIMENTAL, (True, True, sid))
        return f"Cassandra: storage_servers.experimental = true for {server_id} ({note})"

    def unfence(self, server_id: str) -> str:
        """Write the recorded value back and delete the record; returns what was done."""
        sid = uuid.UUID(server_id)
        record = self.record(server_id)
        if record is None:
            return (
                f"Cassandra: no fence of {server_id} is recorded in bupwatch_fences; "
                "storage_servers.experimental is left as it is"
            )
        self._run("restoring experimental", SET_EXPERIMENTAL, (record.previous, True, sid))
        self._run("deleting the fence record", DELETE_FENCE, (sid,))
        return (
            f"Cassandra: storage_servers.experimental restored to {_show(record.previous)} "
            f"for {server_id} (fenced by {record.fenced_by})"
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CassandraFences:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def writes_through(ctx: object) -> bool:
    """Whether fences of this repair context go to Cassandra too: its config (the repair
    context's ``config``) reads the inventory from Cassandra."""
    config = getattr(ctx, "config", None)
    return isinstance(config, Config) and config.inventory.source == "cassandra"


def write_through(ctx: object) -> CassandraFences | None:
    """The fence store of a repair context (not connected yet; use it in a ``with``), or None
    when the watchdog's own override is the whole fence."""
    config = getattr(ctx, "config", None)
    if not isinstance(config, Config) or not writes_through(ctx):
        return None
    return CassandraFences.from_config(config)


__all__ = [
    "MIGRATE_HINT",
    "CassandraFences",
    "FenceRecord",
    "FenceStoreError",
    "write_through",
    "writes_through",
]
