"""The repair queue: a lane per host, at most max_parallel workers, each host's work in order.

FAKE guard: the queue's subject is scheduling, so a stand-in records what it was asked and blocks
one host's requests until released, as a hung host's repair would (the real guard and a really
frozen host: tests/faults/test_hung_host_repairs.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bup_watchdog.repair_queue import QueueFull, RepairQueue, Work
from bup_watchdog.repairs.base import RepairRequest


class FakeGuard:
    """Records submissions; those for ``hung`` hosts wait until ``release`` is set."""

    def __init__(self, hung: set[str]) -> None:
        self.hung = hung
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.done: list[tuple[str, str]] = []
        self.running = 0
        self.peak = 0

    def alert_cooldown(self, req: RepairRequest) -> None:
        return None

    def submit(self, req: RepairRequest) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if req.server_id in self.hung:
                self.release.wait(10)
            else:
                time.sleep(0.01)
        finally:
            with self.lock:
                self.running -= 1
                self.done.append((req.server_id, req.reason))


def _req(host: str, n: int) -> Work:
    return Work(request=RepairRequest("restart_bup_server", host, reason=str(n)))


def _queue(guard: FakeGuard, **kw: Any) -> RepairQueue:
    return RepairQueue(lambda: guard, **kw)  # type: ignore[arg-type,return-value]


def test_a_hung_host_holds_up_only_its_own_requests() -> None:
    guard = FakeGuard(hung={"A"})
    q = _queue(guard, max_parallel=2)
    q.start()
    try:
        for n in range(3):
            q.put(_req("A", n))
        for n in range(5):
            q.put(_req("B", n))
        deadline = time.monotonic() + 5
        while sum(1 for h, _ in guard.done if h == "B") < 5:
            assert time.monotonic() < deadline, guard.done
            time.sleep(0.01)
        assert not [d for d in guard.done if d[0] == "A"], "A's requests ran while A hung"
        assert [n for h, n in guard.done if h == "B"] == ["0", "1", "2", "3", "4"]
        guard.release.set()
        q.join()
    finally:
        guard.release.set()
        q.stop(timeout=5)
    assert [n for h, n in guard.done if h == "A"] == ["0", "1", "2"], "one at a time, in order"


def test_no_more_than_max_parallel_repairs_run_at_once_and_one_per_host() -> None:
    guard = FakeGuard(hung={"A", "B", "C"})
    q = _queue(guard, max_parallel=2)
    q.start()
    try:
        for host in ("A", "A", "B", "C"):
            q.put(_req(host, 0))
        time.sleep(0.5)
        assert guard.running == 2
        assert q.qsize() == 2  # A's second and one of B, C wait
        guard.release.set()
        q.join()
    finally:
        guard.release.set()
        q.stop(timeout=5)
    assert guard.peak == 2 and len(guard.done) == 4


def test_the_bound_counts_work_in_progress_and_in_the_lanes() -> None:
    guard = FakeGuard(hung={"A"})
    q = _queue(guard, max_parallel=1, maxsize=3)
    q.start()
    try:
        for n in range(3):
            q.put(_req("A", n))
        time.sleep(0.2)
        with pytest.raises(QueueFull):
            q.put(_req("B", 0))
    finally:
        guard.release.set()
        q.stop(timeout=5)


def test_stop_starts_nothing_more_drops_what_waits_and_waits_for_what_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM used to hand out the queued work for 30 s: a long repair started just before
    the exit and was cut off. Now the waiting work is dropped and the running one finishes."""
    guard = FakeGuard(hung={"A"})
    q = _queue(guard, max_parallel=2)
    q.start()
    for n in range(4):  # A's first runs (and hangs until released); three wait behind it
        q.put(_req("A", n))
    deadline = time.monotonic() + 5
    while guard.running < 1:
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.01)
    release = threading.Timer(0.3, guard.release.set)
    release.start()

    q.stop(timeout=10)

    assert guard.done == [("A", "0")], "the running repair finished; none of the waiting started"
    assert "3 queued repair requests not started were dropped" in caplog.text
    with pytest.raises(QueueFull, match="stopping"):
        q.put(_req("B", 0))


def test_stop_gives_up_on_a_repair_still_running_after_its_wait() -> None:
    guard = FakeGuard(hung={"A"})
    q = _queue(guard, max_parallel=1)
    q.start()
    q.put(_req("A", 0))
    deadline = time.monotonic() + 5
    while guard.running < 1:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)
    try:
        stopping = threading.Thread(target=q.stop, kwargs={"timeout": 0.2})
        stopping.start()
        stopping.join(5)
        assert not stopping.is_alive(), "stop() waited past its timeout for a hung repair"
        assert guard.done == []
    finally:
        guard.release.set()


def test_join_returns_after_a_stop_that_dropped_queued_work() -> None:
    """Dropped work counts as done for join(): nothing waits on it forever."""
    guard = FakeGuard(hung={"A"})
    q = _queue(guard, max_parallel=1)
    q.start()
    for n in range(3):
        q.put(_req("A", n))
    deadline = time.monotonic() + 5
    while guard.running < 1:
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.01)
    threading.Timer(0.2, guard.release.set).start()
    q.stop(timeout=5)
    joined = threading.Thread(target=q.join)
    joined.start()
    joined.join(5)
    assert not joined.is_alive(), "join() waits for work stop() dropped"
