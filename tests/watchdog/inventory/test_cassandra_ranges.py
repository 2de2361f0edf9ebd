"""Token ranges read at once and handed on in order (pure: plain generators stand in for the
driver's paged reads; the real node is read in test_cassandra's 100,000-project test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import pairwise

import pytest

from bup_watchdog.inventory.cassandra_ranges import (
    AHEAD,
    MAX_TOKEN,
    MIN_TOKEN,
    pages_in_order,
    token_ranges,
)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 64])
def test_token_ranges_cover_the_murmur3_ring_in_order_without_gap_or_overlap(n: int) -> None:
    ranges = token_ranges(n)
    assert len(ranges) == n
    assert ranges[0][0] == MIN_TOKEN and ranges[-1][1] == MAX_TOKEN
    for (_, end), (start, _) in pairwise(ranges):
        assert end == start  # (a, b] then (b, c]
    assert all(a < b for a, b in ranges)


def test_token_ranges_refuse_zero() -> None:
    with pytest.raises(ValueError, match="at least one range"):
        token_ranges(0)


def _paged(scan: tuple[str, int, float]) -> Iterator[list[str]]:
    name, count, delay = scan
    for k in range(count):
        time.sleep(delay)
        yield [f"{name}{k}"]


def test_pages_come_range_by_range_even_when_a_later_range_is_faster() -> None:
    scans = [("a", 3, 0.05), ("b", 2, 0.0), ("c", 2, 0.01)]
    got = [page[0] for page in pages_in_order(_paged, scans)]
    assert got == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]


def test_ranges_are_read_at_the_same_time() -> None:
    # Each range's first read waits until all four have begun: read one after the other, the
    # barrier would break (after its timeout) and the error come out here.
    together = threading.Barrier(4, timeout=20)

    def pages(scan: int) -> Iterator[list[int]]:
        together.wait()
        yield [scan]

    assert [p[0] for p in pages_in_order(pages, [0, 1, 2, 3])] == [0, 1, 2, 3]


def test_an_error_in_a_range_is_raised_after_the_ranges_before_it() -> None:
    def pages(scan: str) -> Iterator[list[str]]:
        if scan == "bad":
            raise RuntimeError("node timed out")
        yield [scan]

    got: list[str] = []
    with pytest.raises(RuntimeError, match="node timed out"):
        for page in pages_in_order(pages, ["first", "bad", "never"]):
            got.extend(page)
    assert got == ["first"]


def test_a_reader_holds_at_most_ahead_pages_and_stops_when_the_caller_stops() -> None:
    made: dict[str, int] = {"late": 0}
    stopped = threading.Event()

    def pages(scan: str) -> Iterator[list[str]]:
        if scan == "first":
            yield ["first"]
            return
        try:
            for k in range(1000):
                made["late"] = k + 1
                yield [f"late{k}"]
        finally:
            stopped.set()

    it = pages_in_order(pages, ["first", "late"], stop_wait=0.05)
    assert next(it) == ["first"]
    time.sleep(0.3)  # the second range's reader fills its queue and waits
    assert made["late"] <= AHEAD + 1  # AHEAD queued, one more made and waiting to be put
    it.close()
    assert stopped.wait(5), "the reader did not stop after the caller stopped"
