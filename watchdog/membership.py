"""Several watchdogs on one fleet (DESIGN §8): who is alive, and who watches which host.

Each watchdog heartbeats into ``bupwatch_members`` (``id, host, pid, started, heartbeat``)
``USING TTL [membership] ttl_seconds``; a watchdog that stops (SIGKILL, crash, lost network)
stops heartbeating and its row expires by itself; one that stops cleanly deletes it at once.

The hosts are shared out by **rendezvous hashing** (highest random weight): every (member,
server) pair has a weight from a hash of both names, and a server belongs to the live member
with the highest weight. ``owner`` is a pure function of the names, so every watchdog computes
the same assignment from the same member list without talking to the others; when a member
leaves, only its own servers move (each to the member with its next-highest weight), and when
one joins, it takes only the servers it now wins. The hash is BLAKE2b, not Python's ``hash()``
(salted per process).

At each sweep the runner asks ``Membership.select`` for this watchdog's servers. The member list
is read fresh each time; when Cassandra does not answer, the last list read is used (this
watchdog always counts itself), so while Cassandra is down the watchdogs keep to the assignment
they had — a host may then be watched twice for a while, never by nobody. Servers that moved to
another watchdog are handed over in the state (``hand_over``): their host rows go and their open
findings are closed here, since the new owner now reports them (its alerts replace ours). So a
watchdog's state, metrics and circuit breaker are about its own share of the fleet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bup_watchdog.config import Config
from bup_watchdog.inventory.cassandra_shared import SharedSession, store_errors
from bup_watchdog.model import Inventory
from bup_watchdog.state import State

log = logging.getLogger(__name__)

HEARTBEAT = (
    "INSERT INTO {ks}.bupwatch_members (id, host, pid, started, heartbeat) "
    "VALUES (?, ?, ?, ?, ?) USING TTL ?"
)
SELECT_MEMBERS = "SELECT id, host, pid, started, heartbeat FROM {ks}.bupwatch_members"
LEAVE = "DELETE FROM {ks}.bupwatch_members WHERE id = ?"


# ---------------------------------------------------------------- rendezvous hashing (pure)


def weight(member: str, server_id: str) -> int:
    """The pair's weight: 64 bits of BLAKE2b over both names (the same in every process)."""
    digest = hashlib.blake2b(f"{member}\n{server_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(server_id: str, members: Iterable[str]) -> str:
    """The member that watches ``server_id``: the highest weight (ties: the greater name)."""
    best = max(members, key=lambda m: (weight(m, server_id), m), default=None)
    if best is None:
        raise ValueError("no live member to own a server")
    return best


def assignment(server_ids: Iterable[str], members: Collection[str]) -> dict[str, str]:
    """Every server's owner."""
    return {sid: owner(sid, members) for sid in server_ids}


# ---------------------------------------------------------------- the members table


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    host: str
    pid: int
    started: datetime | None
    heartbeat: datetime | None


def default_member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Membership:
    """This watchdog's membership: heartbeat, the live members, its share of the servers."""

    def __init__(
        self,
        db: SharedSession,
        *,
        member_id: str | None = None,
        ttl_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.id = member_id or default_member_id()
        self.ttl_seconds = ttl_seconds
        self.started = datetime.now(UTC)
        self._known: list[str] = [self.id]  # the last member list read (self always in it)
        self._rows: list[Member] = []  # the last member rows read (heartbeats, for view())
        self._owned: int | None = None  # how many servers the last select gave this watchdog
        self._heartbeat_failing = False
        self._members_failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Membership:
        m = config.membership
        return cls(
            SharedSession.from_config(config), member_id=m.member_id, ttl_seconds=m.ttl_seconds
        )

    def heartbeat(self) -> bool:
        """Write this member's row with a fresh TTL; False (logged) when Cassandra failed."""
        row = (
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.started,
            datetime.now(UTC),
            max(1, round(self.ttl_seconds)),
        )
        try:
            self.db.execute(HEARTBEAT, row)
        except store_errors() as exc:
            if not self._heartbeat_failing:
                log.error(
                    "membership: heartbeat failed (%s); after %g s the others take this "
                    "watchdog's hosts",
                    self.db.error(exc, "heartbeat"),
                    self.ttl_seconds,
                )
            self._heartbeat_failing = True
            return False
        if self._heartbeat_failing:
            log.warning("membership: heartbeats are written again")
        self._heartbeat_failing = False
        return True

    def members(self) -> list[Member]:
        """The live members' rows (expired rows are gone by their TTL); raises driver errors."""
        rows = self.db.execute(SELECT_MEMBERS)
        return sorted(
            (Member(str(r[0]), str(r[1] or ""), int(r[2] or 0), r[3], r[4]) for r in rows),
            key=lambda m: m.id,
        )

    def live(self) -> list[str]:
        """The live members' ids, this one included; the last known list when Cassandra fails."""
        try:
            rows = self.members()
            ids = sorted({m.id for m in rows} | {self.id})
        except store_errors() as exc:
            if not self._members_failing:
                log.error(
                    "membership: cannot read the members (%s); keeping the last known: %s",
                    self.db.error(exc, "reading bupwatch_members"),
                    ", ".join(self._known),
                )
            self._members_failing = True
            return list(self._known)
        self._members_failing = False
        with self._lock:
            before, self._known, self._rows = self._known, ids, rows
        if ids != before:
            joined = sorted(set(ids) - set(before))
            gone = sorted(set(before) - set(ids))
            log.info(
                "membership: %d live watchdogs (%s)%s%s",
                len(ids),
                ", ".join(ids),
                f"; joined: {', '.join(joined)}" if joined else "",
                f"; gone: {', '.join(gone)}" if gone else "",
            )
        return ids

    def owned(self, server_ids: Iterable[str]) -> list[str]:
        """The servers this watchdog watches now, sorted."""
        members = self.live()
        return sorted(sid for sid in server_ids if owner(sid, members) == self.id)

    def select(self, inventory: Inventory, state: State | None) -> list[str]:
        """This watchdog's servers of ``inventory``; the others are handed over in ``state``."""
        every = sorted(inventory.servers)
        mine = self.owned(every)
        if state is not None:
            hand_over(state, set(every) - set(mine))
        if len(mine) != self._owned:
            log.info("membership: %s watches %d of %d servers now", self.id, len(mine), len(every))
        self._owned = len(mine)
        return mine

    def view(self, inventory: Inventory) -> dict[str, Any]:
        """Who this watchdog believes is alive (heartbeats as read) and owns which server: for
        the state, then ``/api/members``, ``bupwatch_host_owned`` and the audit report."""
        with self._lock:
            known, rows = list(self._known), list(self._rows)
        beats = {m.id: m for m in rows}
        members = []
        for mid in known:
            m = beats.get(mid)
            beat = m.heartbeat if m is not None else None
            members.append(
                {
                    "id": mid,
                    "host": m.host if m is not None else socket.gethostname(),
                    "pid": m.pid if m is not None else os.getpid(),
                    "heartbeat": _epoch(beat) if beat is not None else None,
                    "self": mid == self.id,
                }
            )
        return {
            "member": self.id,
            "at": datetime.now(UTC).timestamp(),
            "ttl_seconds": self.ttl_seconds,
            "members": members,
            "owners": assignment(sorted(inventory.servers), known),
        }

    def leave(self) -> None:
        """Delete this member's row: the others take its hosts at their next sweep."""
        try:
            self.db.execute(LEAVE, (self.id,))
        except store_errors() as exc:
            log.warning(
                "membership: could not leave (%s); the row expires in %g s",
                self.db.error(exc, "leaving"),
                self.ttl_seconds,
            )

    def close(self) -> None:
        self.db.close()


def _epoch(t: datetime) -> float:
    """A driver timestamp (naive UTC) as seconds since the epoch."""
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def hand_over(state: State, others: Collection[str]) -> list[str]:
    """Forget servers another watchdog watches now: their host rows and reachability records
    go, and their open findings are closed (the guard's own findings, about this watchdog's
    repairs, stay). Returns the servers that had something to forget."""
    if not others:
        return []
    held = state.servers_held(except_check="guard")
    gone = state.drop_servers(
        held & set(others), tables=("hosts", "host_records"), except_check="guard"
    )
    if not gone:
        return []
    log.info(
        "membership: %d servers are watched by another watchdog now; handed over: %s",
        len(gone),
        ", ".join(gone),
    )
    return gone


__all__ = ["Member", "Membership", "assignment", "hand_over", "owner", "weight"]
