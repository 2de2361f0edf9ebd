"""Leases on repair targets: one repair per target at a time, whoever asks (DESIGN §4 and §8).

The guard takes a lease on a repair's target before anything runs, and releases it after. Two
backends behind one small protocol (``acquire`` / ``holder`` / ``renew`` / ``release``), chosen
by ``[guard] leases``:

- ``local`` (the default): the ``leases`` table of the watchdog's own state database
  (``watchdog/journal.py``). Enough when one watchdog repairs the fleet.
- ``cassandra``: lightweight transactions on ``bupwatch_leases`` (made by
  ``bup-watchdog inventory migrate``), so several watchdogs never repair one target at once::

      INSERT INTO bupwatch_leases (target, holder) VALUES (?, ?) IF NOT EXISTS USING TTL ?
      UPDATE bupwatch_leases USING TTL ? SET holder = ? WHERE target = ? IF holder = ?
      DELETE FROM bupwatch_leases WHERE target = ? IF holder = ?

  with serial consistency LOCAL_SERIAL (Paxos among the local data centre's replicas) and the
  configured consistency for the commit. Every acquisition stores a holder of its own
  (``host:pid#token``), so two threads of one process can never take one lease for each other.
  A lightweight transaction that times out has an unknown outcome: a serial read then decides
  (it completes any Paxos round in flight), and when that read fails too the lease is refused
  and a release is attempted: fail closed, the TTL frees the target at the latest.

``Renewing`` wraps either backend: while a lease is held, a thread renews it every third of its
TTL, so a short TTL frees the targets of a watchdog that died mid-repair soon, and a repair that
runs longer than the TTL keeps its lease. A renewal that finds the lease taken or gone is logged
as an error (the repair already runs; stopping it half-way would be worse).

At start the daemon releases the leases held by processes of this host that are gone
(``release_dead``): a holder is ``host:pid`` (``host:pid#token`` in Cassandra), so a lease whose
host is this one and whose pid no longer exists belonged to a watchdog that died mid-repair (the
journal keeps that repair as interrupted). A pid reused since by another process keeps its lease
until the TTL: that errs on the side of not repairing twice.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from bup_watchdog.config import Config
from bup_watchdog.errors import WatchdogError
from bup_watchdog.inventory.cassandra_shared import SharedSession, driver_errors, store_errors
from bup_watchdog.journal import Journal

log = logging.getLogger(__name__)

SERIAL = "LOCAL_SERIAL"

INSERT_LEASE = (
    "INSERT INTO {ks}.bupwatch_leases (target, holder) VALUES (?, ?) IF NOT EXISTS USING TTL ?"
)
RENEW_LEASE = (
    "UPDATE {ks}.bupwatch_leases USING TTL ? SET holder = ? WHERE target = ? IF holder = ?"
)
RELEASE_LEASE = "DELETE FROM {ks}.bupwatch_leases WHERE target = ? IF holder = ?"
SELECT_LEASE = "SELECT holder FROM {ks}.bupwatch_leases WHERE target = ?"
SCAN_LEASES = "SELECT target, holder FROM {ks}.bupwatch_leases"


def holder_name() -> str:
    """This process as a lease holder: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_holder(holder: str, host: str | None = None) -> bool:
    """Whether a holder (``host:pid``, or ``host:pid#token``) is a process of ``host`` (this
    one by default) that no longer exists."""
    name, _, pid = holder.split("#", 1)[0].rpartition(":")
    if name != (host or socket.gethostname()) or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, as another user
        return False
    return False


class LeaseError(WatchdogError):
    """Whether the lease is ours could not be decided (Cassandra down, or too slow to answer)."""


class LeaseBackend(Protocol):
    """Where leases live. ``acquire``/``renew`` may raise ``LeaseError``; ``holder`` and
    ``release`` never raise (an unknown holder is None; a failed release is left to the TTL)."""

    def acquire(self, target: str, holder: str, ttl: float) -> bool: ...

    def holder(self, target: str) -> str | None: ...

    def renew(self, target: str, holder: str, ttl: float) -> bool: ...

    def release(self, target: str, holder: str) -> None: ...

    def release_dead(self) -> list[tuple[str, str]]: ...


class LocalLeases:
    """Leases in the state database (one watchdog). ``clock`` tells when a lease expires (the
    guard's clock, so a test can move time past a TTL)."""

    def __init__(self, journal: Journal, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.clock = clock

    def acquire(self, target: str, holder: str, ttl: float) -> bool:
        """Take the lease on a target unless someone holds an unexpired one."""
        now = self.clock()
        with self.journal.state.transaction() as db:
            db.execute("DELETE FROM leases WHERE expires_at < ?", (now,))
            try:
                db.execute("INSERT INTO leases VALUES (?, ?, ?)", (target, holder, now + ttl))
            except sqlite3.IntegrityError:
                return False
        return True

    def holder(self, target: str) -> str | None:
        rows = self.journal.state.query(
            "SELECT holder FROM leases WHERE target=? AND expires_at >= ?", (target, self.clock())
        )
        return str(rows[0][0]) if rows else None

    def renew(self, target: str, holder: str, ttl: float) -> bool:
        now = self.clock()
        with self.journal.state.transaction() as db:
            cur = db.execute(
                "UPDATE leases SET expires_at=? WHERE target=? AND holder=? AND expires_at >= ?",
                (now + ttl, target, holder, now),
            )
            return cur.rowcount == 1

    def release(self, target: str, holder: str) -> None:
        self.journal.release_lease(target, holder)

    def release_dead(self) -> list[tuple[str, str]]:
        """Release the leases of this host's processes that are gone; (target, holder) each."""
        dead = [(t, h) for t, h, _ in self.journal.leases() if dead_holder(h)]
        for target, holder in dead:
            self.journal.release_lease(target, holder)
        return dead

    def close(self) -> None:
        pass


def _ttl(seconds: float) -> int:
    """Cassandra TTLs are whole seconds, at least one."""
    return max(1, math.ceil(seconds))


def _applied(result: Any) -> bool:
    return bool(result.was_applied)


class CassandraLeases:
    """Leases as Cassandra lightweight transactions (several watchdogs)."""

    def __init__(self, db: SharedSession) -> None:
        self.db = db
        self._stored: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> CassandraLeases:
        return cls(SharedSession.from_config(config))

    def _current(self, target: str) -> str | None:
        """The holder by a serial read (linearizable with the transactions); raises driver
        errors."""
        row = self.db.execute(SELECT_LEASE, (target,), consistency=SERIAL).one()
        return None if row is None else str(row[0])

    def _unknown_outcome(self, target: str, stored: str, doing: str, exc: BaseException) -> bool:
        """A transaction timed out: was it applied? A serial read decides; fail closed."""
        log.warning("lease on %s: %s timed out (%s); reading it back", target, doing, exc)
        try:
            return self._current(target) == stored
        except driver_errors() as again:
            try:  # if our INSERT did land after all, do not leave it to the TTL
                self.db.execute(RELEASE_LEASE, (target, stored), serial=SERIAL)
            except driver_errors():
                pass
            raise LeaseError(
                f"the lease on {target} is undecided: {self.db.error(again, doing)}"
            ) from None

    def acquire(self, target: str, holder: str, ttl: float) -> bool:
        from cassandra import OperationTimedOut, Timeout

        stored = f"{holder}#{secrets.token_hex(4)}"
        try:
            result = self.db.execute(INSERT_LEASE, (target, stored, _ttl(ttl)), serial=SERIAL)
            applied = _applied(result)
        except (Timeout, OperationTimedOut) as exc:
            applied = self._unknown_outcome(target, stored, "taking the lease", exc)
        except driver_errors() as exc:
            raise LeaseError(str(self.db.error(exc, "taking the lease"))) from None
        if applied:
            with self._lock:
                self._stored[(target, holder)] = stored
        return applied

    def holder(self, target: str) -> str | None:
        try:
            return self._current(target)
        except store_errors() as exc:
            log.warning("%s", self.db.error(exc, f"reading the lease on {target}"))
            return None

    def renew(self, target: str, holder: str, ttl: float) -> bool:
        from cassandra import OperationTimedOut, Timeout

        with self._lock:
            stored = self._stored.get((target, holder))
        if stored is None:
            return False
        params = (_ttl(ttl), stored, target, stored)
        try:
            return _applied(self.db.execute(RENEW_LEASE, params, serial=SERIAL))
        except (Timeout, OperationTimedOut) as exc:
            return self._unknown_outcome(target, stored, "renewing the lease", exc)
        except driver_errors() as exc:
            raise LeaseError(str(self.db.error(exc, "renewing the lease"))) from None

    def release(self, target: str, holder: str) -> None:
        with self._lock:
            stored = self._stored.pop((target, holder), None)
        if stored is None:
            return
        try:
            self.db.execute(RELEASE_LEASE, (target, stored), serial=SERIAL)
        except store_errors() as exc:
            log.warning(
                "%s; it expires by its TTL", self.db.error(exc, f"releasing the lease on {target}")
            )

    def release_dead(self) -> list[tuple[str, str]]:
        """Release the leases of this host's processes that are gone (a conditional delete
        each, so a lease taken again meanwhile stays); (target, holder) each."""
        try:
            rows = self.db.execute(SCAN_LEASES).all()
        except store_errors() as exc:
            log.warning("%s; they expire by their TTL", self.db.error(exc, "reading the leases"))
            return []
        released = []
        for target, holder in rows:
            if not dead_holder(str(holder)):
                continue
            try:
                self.db.execute(RELEASE_LEASE, (target, holder), serial=SERIAL)
            except store_errors() as exc:
                log.warning("%s", self.db.error(exc, f"releasing the lease on {target}"))
                continue
            released.append((str(target), str(holder)))
        return released

    def close(self) -> None:
        self.db.close()


class Renewing:
    """A lease backend whose leases are renewed in the background while they are held."""

    def __init__(self, inner: LocalLeases | CassandraLeases) -> None:
        self.inner = inner
        self._keepers: dict[tuple[str, str], tuple[threading.Event, threading.Thread]] = {}
        self._lock = threading.Lock()
        #: Renewals done, and leases found lost while held (for tests and logs).
        self.renewals = 0
        self.lost = 0

    def acquire(self, target: str, holder: str, ttl: float) -> bool:
        if not self.inner.acquire(target, holder, ttl):
            return False
        stop = threading.Event()
        thread = threading.Thread(
            target=self._keep,
            args=(target, holder, ttl, stop),
            name=f"lease {target}",
            daemon=True,
        )
        with self._lock:
            self._keepers[(target, holder)] = (stop, thread)
        thread.start()
        return True

    def _keep(self, target: str, holder: str, ttl: float, stop: threading.Event) -> None:
        every = ttl / 3
        while not stop.wait(every):
            try:
                ok = self.inner.renew(target, holder, ttl)
            except WatchdogError as exc:
                log.warning("cannot renew the lease on %s now (%s); trying again", target, exc)
                continue
            if stop.is_set():
                return
            if ok:
                self.renewals += 1
                continue
            self.lost += 1
            log.error(
                "the lease on %s was lost while its repair runs (expired and taken, or removed); "
                "another watchdog may start repairing it",
                target,
            )
            return

    def holder(self, target: str) -> str | None:
        return self.inner.holder(target)

    def renew(self, target: str, holder: str, ttl: float) -> bool:
        return self.inner.renew(target, holder, ttl)

    def release(self, target: str, holder: str) -> None:
        with self._lock:
            keeper = self._keepers.pop((target, holder), None)
        if keeper is not None:
            stop, thread = keeper
            stop.set()
            thread.join()
        self.inner.release(target, holder)

    def release_dead(self) -> list[tuple[str, str]]:
        return self.inner.release_dead()

    def close(self) -> None:
        self.inner.close()


def lease_backend(
    config: Config, journal: Journal, clock: Callable[[], float] = time.time
) -> Renewing:
    """The backend ``[guard] leases`` names, renewing what it hands out (``clock``: when a local
    lease expires; Cassandra's TTLs run on its own clock)."""
    if config.guard.leases == "cassandra":
        return Renewing(CassandraLeases.from_config(config))
    return Renewing(LocalLeases(journal, clock))


__all__ = [
    "CassandraLeases",
    "LeaseBackend",
    "LeaseError",
    "LocalLeases",
    "Renewing",
    "dead_holder",
    "holder_name",
    "lease_backend",
]
