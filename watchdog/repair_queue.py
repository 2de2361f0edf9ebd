"""A bounded queue of repair work, drained by one worker thread through the guard.

HTTP handlers (the API, the Alertmanager webhook) only enqueue and answer at once; the worker runs
one guard decision at a time, so a flood of requests can never exceed the guard's limits, and a
full queue says so instead of growing without bound. An alert's request queued before the guard
decided on the same target is dropped when its turn comes (the alert cooldown, checked again).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bup_watchdog.errors import WatchdogError
from bup_watchdog.guard import Decision, Guard
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.silences import Silencer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Work:
    """One unit of repair work: a request to submit, or a pending entry to approve or deny."""

    request: RepairRequest | None = None
    approve: int | None = None
    deny: int | None = None
    by: str = ""
    why: str = ""


class QueueFull(Exception):
    """The queue is at its bound; the caller should answer 503 and let the sender retry."""


class RepairQueue:
    """Bounded FIFO + one worker; ``guard_factory`` gives a guard over the current inventory."""

    def __init__(
        self,
        guard_factory: Callable[[], Guard],
        maxsize: int = 1000,
        silencer: Silencer | None = None,
    ) -> None:
        self.guard_factory = guard_factory
        self.silencer = silencer
        self._q: queue.Queue[Work | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._work, name="repairs", daemon=True)
        self.processed = 0
        #: Alert requests dropped at their turn because of the alert cooldown.
        self.cooled_down = 0
        self.last: Decision | None = None
        self._pending_fingerprints: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current unit, drop nothing silently: what is left is logged."""
        try:
            self._q.put_nowait(None)
        except queue.Full:
            log.warning("repair queue full at shutdown: %d requests not run", self._q.qsize())
        self._thread.join(timeout=timeout)

    def put(self, work: Work) -> bool:
        """Enqueue; False when an identical alert fingerprint is already queued (not run twice)."""
        fp = work.request.fingerprint if work.request else None
        with self._lock:
            if fp and fp in self._pending_fingerprints:
                return False
            try:
                self._q.put_nowait(work)
            except queue.Full:
                raise QueueFull(f"repair queue is full ({self._q.maxsize}); retry later") from None
            if fp:
                self._pending_fingerprints.add(fp)
        return True

    def qsize(self) -> int:
        return self._q.qsize()

    def join(self) -> None:
        """Wait until everything queued so far is processed (tests, shutdown)."""
        self._q.join()

    def _work(self) -> None:
        while True:
            work = self._q.get()
            try:
                if work is None:
                    return
                self._handle(work)
            except WatchdogError as exc:  # e.g. approve/deny of an id that is not pending
                log.warning("repair work not done: %s", exc)
            except Exception:
                log.exception("a repair request failed unexpectedly; the queue goes on")
            finally:
                if work is not None and work.request and work.request.fingerprint:
                    with self._lock:
                        self._pending_fingerprints.discard(work.request.fingerprint)
                self._q.task_done()

    def _handle(self, work: Work) -> None:
        guard = self.guard_factory()
        if work.request is not None:
            cooldown = guard.alert_cooldown(work.request)
            if cooldown:
                req = work.request
                self.cooled_down += 1
                log.debug("%s on %s not submitted: %s", req.repair, req.target, cooldown)
                guard.journal.count_alert_cooldown({req.repair: 1})
                return
            labels = work.request.params.get("alert_labels")
            silence_id = None
            if self.silencer is not None and isinstance(labels, dict) and labels:
                req = work.request
                why = f"bup-watchdog is running {req.repair} on {req.target}"
                silence_id = self.silencer.silence(labels, why)
            try:
                self.last = guard.submit(work.request)
            finally:
                if silence_id is not None and self.silencer is not None:
                    self.silencer.expire(silence_id)
        elif work.approve is not None:
            self.last = guard.approve(work.approve, work.by)
        elif work.deny is not None:
            self.last = guard.deny(work.deny, work.by, work.why)
        self.processed += 1
        if self.last is not None:
            log.debug(
                "repair #%d: %s — %s", self.last.entry_id, self.last.status, self.last.message
            )
