"""Shared heads: each master copy's newest save, published for the watchdogs judging its replicas.

With several watchdogs (DESIGN §8) a replica's master may be on a host another watchdog sweeps.
After each sweep a watchdog writes, for every master copy it swept, the master ref, the time of
its newest save and the host's sweep time into ``bupwatch_heads`` (one partition per master
host, rows ``USING TTL`` a few sweep intervals), in UNLOGGED batches of one partition each, sent
concurrently: 5,000 repositories cost a few dozen small batches on a few connections, not 5,000
round trips. Before its sweep, a watchdog reads the heads of the master hosts it needs and does
not sweep (one prepared query per host); ``checks.replication_lag.with_heads`` believes only
those swept less than ``heads_max_age`` ago. Cassandra failing is logged and the replicas are
unjudged: the sweep goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bup_watchdog.checks.replication_lag import Head
from bup_watchdog.config import Config
from bup_watchdog.inventory.cassandra_shared import SharedSession, store_errors
from bup_watchdog.model import HostFacts, Inventory

log = logging.getLogger(__name__)

PUBLISH = (
    "INSERT INTO {ks}.bupwatch_heads (server_id, project_id, master_sha, saved_at, swept_at, "
    "published_by) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
)
SELECT_HOST = (
    "SELECT project_id, master_sha, saved_at, swept_at, published_by "
    "FROM {ks}.bupwatch_heads WHERE server_id = ?"
)
#: Rows per UNLOGGED batch: ~150 bytes a row stays under Cassandra's batch_size_fail (50 KiB).
BATCH_ROWS = 100
CONCURRENCY = 16


def heads_max_age(config: Config) -> float:
    """How old a published head may be and still be believed."""
    m = config.membership.heads_max_age_seconds
    return m if m > 0 else 3 * config.schedule.sweep_interval_seconds


def master_heads(facts: Mapping[str, HostFacts], inventory: Inventory) -> dict[str, list[Head]]:
    """Per master host swept (probed), the heads of its master copies (those with a ref)."""
    out: dict[str, list[Head]] = {}
    for project in inventory.projects.values():
        host = facts.get(project.master)
        if project.deleted or host is None or not host.probed:
            continue
        repo = host.repos.get(project.project_id)
        if repo is None or repo.master_sha is None:
            continue
        out.setdefault(project.master, []).append(
            Head(
                project.master,
                project.project_id,
                repo.master_sha,
                repo.reflog_last_time,
                host.gathered_at,
                "",
            )
        )
    return out


def masters_needed(inventory: Inventory, owned: Collection[str]) -> list[str]:
    """Master hosts not in ``owned`` with a replica on a host in ``owned``."""
    mine = set(owned)
    return sorted(
        {
            p.master
            for p in inventory.projects.values()
            if not p.deleted
            and p.master not in mine
            and any(r in mine for r in p.replicas if r != p.master)
        }
    )


@dataclass(slots=True)
class Published:
    """What one publish wrote."""

    hosts: int = 0
    rows: int = 0
    batches: int = 0
    #: Bound values as the native protocol carries them (framing and batch headers not counted).
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _wire_bytes(row: tuple[object, ...]) -> int:
    """A PUBLISH row's bound values as the native protocol carries them: each value's 4-byte
    length, text as UTF-8, saved_at (bigint) and swept_at (timestamp) 8 bytes, the TTL 4."""
    texts = (v for v in (row[0], row[1], row[2], row[5]) if isinstance(v, str))
    return 4 * len(row) + sum(len(t.encode()) for t in texts) + 8 + 8 + 4


class SharedHeads:
    """This watchdog's side of ``bupwatch_heads``: publish after a sweep, read before one."""

    def __init__(self, db: SharedSession, member_id: str, *, ttl_seconds: float) -> None:
        self.db = db
        self.member_id = member_id
        self.ttl = max(1, round(ttl_seconds))
        self._failing = False

    @classmethod
    def for_config(cls, db: SharedSession, member_id: str, config: Config) -> SharedHeads:
        """Rows live twice as long as they are believed: a late reader still sees them age."""
        return cls(db, member_id, ttl_seconds=2 * heads_max_age(config))

    def publish(self, heads: Mapping[str, Iterable[Head]]) -> Published:
        """Write the heads, one UNLOGGED batch per host and ``BATCH_ROWS``, concurrently."""
        from cassandra.concurrent import execute_concurrent
        from cassandra.query import BatchStatement, BatchType

        done = Published()
        try:
            session, insert = self.db.prepared(PUBLISH)
            batches = []
            for sid, host_heads in heads.items():
                done.hosts += 1
                rows = [
                    (
                        sid,
                        h.project_id,
                        h.master_sha,
                        h.saved_at,
                        datetime.fromtimestamp(h.swept_at, UTC),
                        self.member_id,
                        self.ttl,
                    )
                    for h in host_heads
                ]
                for i in range(0, len(rows), BATCH_ROWS):
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for row in rows[i : i + BATCH_ROWS]:
                        batch.add(insert, row)
                        done.bytes += _wire_bytes(row)
                    batches.append((batch, ()))
                    done.rows += min(BATCH_ROWS, len(rows) - i)
            done.batches = len(batches)
            results = execute_concurrent(
                session, batches, concurrency=CONCURRENCY, raise_on_first_error=False
            )
            done.errors = [str(r) for ok, r in results if not ok]
        except store_errors() as exc:
            done.errors.append(str(self.db.error(exc, "publishing heads")))
        self._note(done.errors, "publish the heads of its masters")
        return done

    def read(self, server_ids: Collection[str]) -> list[Head]:
        """The published heads of ``server_ids`` (one prepared query per host, concurrently);
        hosts Cassandra did not answer for have none (their replicas are unjudged)."""
        if not server_ids:
            return []
        from cassandra.concurrent import execute_concurrent_with_args

        heads: list[Head] = []
        errors: list[str] = []
        try:
            session, select = self.db.prepared(SELECT_HOST)
            args = [(sid,) for sid in server_ids]
            results = execute_concurrent_with_args(
                session, select, args, concurrency=CONCURRENCY, raise_on_first_error=False
            )
            for (sid,), (ok, rows) in zip(args, results, strict=True):
                if not ok:
                    errors.append(f"{sid}: {rows}")
                    continue
                for pid, sha, saved, swept_at, by in rows:
                    swept = swept_at.replace(tzinfo=UTC).timestamp() if swept_at else 0.0
                    saved_at = None if saved is None else int(saved)
                    heads.append(Head(sid, str(pid), str(sha), saved_at, swept, str(by or "")))
        except store_errors() as exc:
            errors.append(str(self.db.error(exc, "reading heads")))
        self._note(errors, "read the heads of the masters other watchdogs sweep")
        return heads

    def _note(self, errors: list[str], doing: str) -> None:
        if errors and not self._failing:
            log.error(
                "shared heads: could not %s (%s%s); replicas of masters swept elsewhere are "
                "unjudged until it works again",
                doing,
                errors[0],
                f", and {len(errors) - 1} more" if len(errors) > 1 else "",
            )
        elif not errors and self._failing:
            log.warning("shared heads: Cassandra answers again")
        self._failing = bool(errors)


__all__ = [
    "Published",
    "SharedHeads",
    "heads_max_age",
    "master_heads",
    "masters_needed",
]
