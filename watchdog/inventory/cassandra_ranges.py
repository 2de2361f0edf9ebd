"""A table read as token ranges at once, its rows handed on in the table's own (token) order.

One paged scan keeps one read on the node busy at a time (the next page is asked for while the
caller works on this one, but the node reads it alone). With ``Murmur3Partitioner`` (Cassandra's
default since 1.2) the token ring splits into equal ranges that the node, or the nodes owning
them, read at once; a scan of the ranges one after the other returns what one scan returns, in
the same order, so the ranges' pages are handed on range by range. Each range is read by a
thread of its own that keeps at most ``AHEAD`` pages waiting (and one in flight), so memory stays
bounded whatever the table's size. Other partitioners (Random, ByteOrdered) have other token
types: the caller reads them in one scan.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

MURMUR3 = "org.apache.cassandra.dht.Murmur3Partitioner"
# Murmur3 tokens are signed 64-bit; the minimum is never a row's token (the partitioner maps a
# hash equal to it to the maximum), so (MIN, MAX] holds every row.
MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1
AHEAD = 2  # pages a range's reader may hold that the caller has not taken yet
_DONE = object()


def token_ranges(n: int) -> list[tuple[int, int]]:
    """``n`` ranges (start excluded, end included) that cover the Murmur3 ring in order."""
    if n < 1:
        raise ValueError(f"at least one range is needed, not {n}")
    step = (MAX_TOKEN - MIN_TOKEN) // n
    edges = [MIN_TOKEN + k * step for k in range(n)] + [MAX_TOKEN]
    return list(pairwise(edges))


def pages_in_order(
    pages: Callable[[Any], Iterator[list[Any]]], scans: list[Any], stop_wait: float = 0.5
) -> Iterator[list[Any]]:
    """``pages(scan)`` of every scan, scan by scan, while all of them are read at once.

    ``scans``: one statement per range. An error of any scan is raised here when its turn comes
    (the ranges before it have been handed on); a caller that stops early (an error of its own,
    or ``close()``) stops the readers at their next page.
    """
    if len(scans) == 1:
        yield from pages(scans[0])
        return
    stop = threading.Event()
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=AHEAD) for _ in scans]

    def put(q: queue.Queue[Any], item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=stop_wait)
                return True
            except queue.Full:
                continue
        return False

    def read(scan: Any, q: queue.Queue[Any]) -> None:
        try:
            for page in pages(scan):
                if not put(q, page):
                    return
        except BaseException as e:  # handed to the caller, in order
            put(q, e)
            return
        put(q, _DONE)

    threads = [
        threading.Thread(target=read, args=(scan, q), name=f"cassandra-range-{k}", daemon=True)
        for k, (scan, q) in enumerate(zip(scans, queues, strict=True))
    ]
    for t in threads:
        t.start()
    try:
        for q in queues:
            while (item := q.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        stop.set()
