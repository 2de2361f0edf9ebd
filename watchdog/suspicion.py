"""Adaptive reachability: how patient to be with each host, learned from its record.

Cassandra's phi-accrual detector raises a suspicion level from the history of heartbeats. Our
"heartbeats" are sweeps (minutes apart), and the operators' rule is the reverse of a plain timeout:
a host with a long good record gets more patience before it is declared down (one failed sweep of a
host that never failed is most likely a blip on the way), a flapping one gets less.

Per host we keep: ``ok_streak`` and ``fail_streak`` (consecutive good / failed sweeps), ``recent``
(the outcomes of the last 20 sweeps) and ``rtt`` (an EWMA of the TCP connect time, α = 0.2).

* **Patience** (failed sweeps before a host is *down*, i.e. critical)::

      patience = 1                                   if flips(recent) >= 4   (flapping)
               = min(max_patience, 1 + floor(log2(1 + good / 12)))     otherwise

  where ``good`` is the current good streak, or, while failing, the good streak the failures
  broke.

  With 5-minute sweeps: a host good for an hour gets 2 sweeps, for three hours 3 (the default cap).
  Before that the failure is a *warning* that says "n of patience".
* **Suspicion** ``phi = fail_streak / patience``: ≥ 1 means down. Exported per host.
* **Connect timeout**::

      timeout = clamp(max(base, 4 * rtt) * (1 + min(good, 288) / 288), base, max_timeout)

  at most double the base for a host good for a day (288 sweeps), and never below ``base``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

RECENT = 20
FLAPPING_FLIPS = 4


@dataclass(frozen=True, slots=True)
class HostRecord:
    """The reachability record of one host."""

    server_id: str
    ok_streak: int = 0
    fail_streak: int = 0
    recent: tuple[bool, ...] = field(default_factory=tuple)
    rtt: float | None = None
    #: The good streak the host had when its current failure streak began.
    ok_before_failures: int = 0

    @property
    def good_record(self) -> int:
        """Good sweeps that earn patience: the current streak, or the one just broken."""
        return self.ok_streak if self.fail_streak == 0 else self.ok_before_failures

    @property
    def flips(self) -> int:
        return sum(1 for a, b in zip(self.recent, self.recent[1:], strict=False) if a != b)

    @property
    def flapping(self) -> bool:
        return self.flips >= FLAPPING_FLIPS


def update(record: HostRecord, ok: bool, rtt: float | None) -> HostRecord:
    """The record after one more sweep."""
    new_rtt = record.rtt
    if ok and rtt is not None:
        new_rtt = rtt if record.rtt is None else 0.8 * record.rtt + 0.2 * rtt
    first_failure = not ok and record.fail_streak == 0
    return replace(
        record,
        ok_before_failures=record.ok_streak if first_failure else record.ok_before_failures,
        ok_streak=record.ok_streak + 1 if ok else 0,
        fail_streak=0 if ok else record.fail_streak + 1,
        recent=(*record.recent, ok)[-RECENT:],
        rtt=new_rtt,
    )


def patience(record: HostRecord, max_patience: int = 3) -> int:
    """Failed sweeps in a row before the host is declared down."""
    if record.flapping:
        return 1
    return max(1, min(max_patience, 1 + int(math.log2(1 + record.good_record / 12))))


def suspicion(record: HostRecord, max_patience: int = 3) -> float:
    """phi: 0 for a host that answers; ≥ 1 once it has failed ``patience`` sweeps in a row."""
    return record.fail_streak / patience(record, max_patience)


def connect_timeout(record: HostRecord, base: float, max_timeout: float) -> float:
    """Seconds to wait for this host's TCP connects in the next sweep."""
    t = max(base, 4 * record.rtt) if record.rtt is not None else base
    t *= 1 + min(record.good_record, 288) / 288
    return max(base, min(max_timeout, t))
