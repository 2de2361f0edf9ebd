"""The audit report's "Rebuilds and evacuations" section, from the progress book of batches.

A module of its own beside ``report.py``, which calls ``batches_view``: every rebuild or
evacuation that recorded something within the report's history window, or still runs, with its
copies done / left / failed, bytes, ETA while running, and the failures with their reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from bup_watchdog.batches import batch_progress
from bup_watchdog.state import State

#: Failures listed per batch; the rest are counted.
MAX_FAILURES = 50


def batches_view(
    state: State,
    since: float,
    now: float,
    *,
    iso: Callable[[float | None], str | None],
    hosts: Collection[str] = (),
) -> dict[str, Any]:
    """The section's data; ``hosts``: only batches of these hosts (by name; none: all)."""
    out = []
    for b in batch_progress(state, since=since, now=now):
        if hosts and b.host not in hosts:
            continue
        out.append(
            {
                "batch_id": b.batch_id,
                "kind": b.kind,
                "host": b.host,
                "started": iso(b.started),
                "updated": iso(b.updated),
                "finished": iso(b.finished),
                "running": b.running,
                "stopped": b.stopped,
                "copies": {
                    "total": b.total,
                    "done": b.done,
                    "left": b.left,
                    "failed": b.failed,
                    "pending": b.pending,
                },
                "bytes": {"total": b.bytes_total, "done": b.bytes_done},
                "eta_seconds": None if b.eta_seconds is None else round(b.eta_seconds),
                "failures": [
                    {"project_id": pid, "reason": reason}
                    for pid, reason in b.failures[:MAX_FAILURES]
                ],
                "failures_not_listed": max(0, len(b.failures) - MAX_FAILURES),
            }
        )
    return {"running": sum(b["running"] for b in out), "batches": out}
