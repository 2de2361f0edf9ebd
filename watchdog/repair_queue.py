"""A bounded queue of repair work, run through the guard by a worker per host (bounded total).

HTTP handlers (the API, the Alertmanager webhook) only enqueue and answer at once. A dispatcher
sorts the work into one lane per host; at most ``max_parallel`` workers take the oldest work of a
host that is not busy, so a host's repairs run one at a time, in order, and a host that hangs
holds up only its own lane (and one worker), never the fleet's. The guard re-checks its limits
atomically as a repair starts, so parallel workers can never exceed them. A full queue says so
instead of growing without bound. An alert's request queued before the guard decided on the
same target is dropped when its turn comes (the alert cooldown, checked again).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bup_watchdog.errors import WatchdogError
from bup_watchdog.guard import Decision, Guard, RepairRequest
from bup_watchdog.silences import Silencer

log = logging.getLogger(__name__)

#: The lane of work whose host cannot be told (an approval of an id the journal lacks).
UNKNOWN_HOST = "?"


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
    """Bounded intake + a lane per host + ``max_parallel`` workers; ``guard_factory`` gives a
    guard over the current inventory."""

    def __init__(
        self,
        guard_factory: Callable[[], Guard],
        maxsize: int = 1000,
        silencer: Silencer | None = None,
        *,
        max_parallel: int = 4,
    ) -> None:
        self.guard_factory = guard_factory
        self.silencer = silencer
        self.maxsize = maxsize
        self.max_parallel = max_parallel
        #: The intake (HTTP threads put here); its unfinished tasks are the queue's length.
        self._q: queue.Queue[Work | None] = queue.Queue(maxsize=maxsize)
        self._dispatcher = threading.Thread(target=self._dispatch, name="repairs", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"repairs-{i + 1}", daemon=True)
            for i in range(max_parallel)
        ]
        self._cond = threading.Condition()
        #: host -> its work in arrival order, each with its arrival number.
        self._lanes: dict[str, deque[tuple[int, Work]]] = {}
        self._busy: set[str] = set()
        self._arrival = itertools.count()
        self._closing = False
        #: Set by stop(): no more work starts; what waits is dropped (and counted).
        self._stopping = False
        self._dropped = 0
        self.processed = 0
        #: Alert requests dropped at their turn because of the alert cooldown.
        self.cooled_down = 0
        self.last: Decision | None = None
        self._pending_fingerprints: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._dispatcher.start()
        for w in self._workers:
            w.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop: nothing more starts. Work queued and not started is dropped at once (logged with
        its count: the schedule and Alertmanager ask again, an approval is given again); the
        repairs already running are waited for up to ``timeout`` seconds. One still running
        then is named in the log; its journal row becomes 'interrupted' at the next start."""
        with self._lock:  # put() refuses new work from here on
            self._stopping = True
        with self._cond:
            self._closing = True
            waiting = sum(len(lane) for lane in self._lanes.values())
            self._lanes.clear()
            for _ in range(waiting):  # taken from the intake, never to be done: join() returns
                self._q.task_done()
            while True:  # and the intake, not yet sorted into lanes
                try:
                    work = self._q.get_nowait()
                except queue.Empty:
                    break
                waiting += work is not None
                self._q.task_done()
            self._dropped += waiting
            self._cond.notify_all()
        with contextlib.suppress(queue.Full):  # (full: a put() raced the drain; a daemon thread)
            self._q.put_nowait(None)  # the dispatcher's end
        if self._dropped:
            log.warning(
                "stopping: %d queued repair requests not started were dropped (the schedule and "
                "Alertmanager ask again; an approval must be given again)",
                self._dropped,
            )
        running = sorted(self._busy)
        if running:
            log.info(
                "stopping: waiting up to %g s for the repairs running on %s",
                timeout,
                ", ".join(running),
            )
        deadline = time.monotonic() + timeout
        for t in (self._dispatcher, *self._workers):
            if t.is_alive():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._busy:
            log.warning(
                "stopped while repairs still run on %s: their journal rows become 'interrupted' "
                "at the next start (see bup-watchdog repairs list --status interrupted)",
                ", ".join(sorted(self._busy)),
            )

    def put(self, work: Work) -> bool:
        """Enqueue; False when an identical alert fingerprint is already queued (not run twice)."""
        fp = work.request.fingerprint if work.request else None
        with self._lock:
            if self._stopping:
                raise QueueFull("the watchdog is stopping; retry later")
            if fp and fp in self._pending_fingerprints:
                return False
            if self._q.unfinished_tasks >= self.maxsize:
                raise QueueFull(f"repair queue is full ({self.maxsize}); retry later")
            try:
                self._q.put_nowait(work)
            except queue.Full:
                raise QueueFull(f"repair queue is full ({self.maxsize}); retry later") from None
            if fp:
                self._pending_fingerprints.add(fp)
        return True

    def drain(self, stop: threading.Event, poll: float = 0.2) -> None:
        """Wait until the work queued so far has run (``run --once``: the pass's repairs run
        before it exits), or until ``stop`` is set (a signal)."""
        while self._q.unfinished_tasks and not stop.wait(poll):
            pass

    def qsize(self) -> int:
        """Units waiting (not yet started), in the intake and in every host's lane."""
        with self._cond:
            waiting = sum(len(lane) for lane in self._lanes.values())
        return self._q.qsize() + waiting

    def join(self) -> None:
        """Wait until everything queued so far is processed (tests, shutdown)."""
        self._q.join()

    # -- dispatcher and workers -----------------------------------------------------------------

    def _dispatch(self) -> None:
        """Move work from the intake into its host's lane (cheap: no command runs here)."""
        while True:
            work = self._q.get()
            if work is None:
                self._q.task_done()
                with self._cond:
                    self._closing = True
                    self._cond.notify_all()
                return
            try:
                host = self._host_of(work)
            except Exception:  # the journal unreadable: the worker reports it
                host = UNKNOWN_HOST
            with self._cond:
                if self._stopping:  # taken from the intake just as stop() emptied it
                    self._dropped += 1
                    self._q.task_done()
                    continue
                self._lanes.setdefault(host, deque()).append((next(self._arrival), work))
                self._cond.notify()

    def _host_of(self, work: Work) -> str:
        if work.request is not None:
            return work.request.server_id
        entry_id = work.approve if work.approve is not None else work.deny
        entry = self.guard_factory().journal.get(entry_id) if entry_id is not None else None
        return entry.server_id if entry is not None else UNKNOWN_HOST

    def _next(self) -> tuple[str, Work] | None:
        """The oldest work of a host that is not busy (None when closing and all is done)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                ready = [
                    (lane[0][0], h)
                    for h, lane in self._lanes.items()
                    if lane and h not in self._busy
                ]
                if ready:
                    _, host = min(ready)
                    _, work = self._lanes[host].popleft()
                    if not self._lanes[host]:
                        del self._lanes[host]
                    self._busy.add(host)
                    return host, work
                if self._closing and not any(self._lanes.values()):
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (got := self._next()) is not None:
            host, work = got
            try:
                self._handle(work)
            except WatchdogError as exc:  # e.g. approve/deny of an id that is not pending
                log.warning("repair work not done: %s", exc)
            except Exception:
                log.exception("a repair request failed unexpectedly; the queue goes on")
            finally:
                if work.request and work.request.fingerprint:
                    with self._lock:
                        self._pending_fingerprints.discard(work.request.fingerprint)
                with self._cond:
                    self._busy.discard(host)
                    self._cond.notify_all()
                self._q.task_done()

    def _handle(self, work: Work) -> None:
        guard = self.guard_factory()
        if work.request is not None:
            cooldown = guard.alert_cooldown(work.request)
            if cooldown:
                req = work.request
                with self._lock:
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
        with self._lock:
            self.processed += 1
        if self.last is not None:
            log.debug(
                "repair #%d: %s — %s", self.last.entry_id, self.last.status, self.last.message
            )
