"""A project's last edit and its newest save per server, packed in one bytes object.

The inventory holds every project of the fleet (100,000) for as long as the watchdog runs. As
datetimes (48 bytes each) in a mapping of their own these times were ~180 of a project's ~460
bytes; packed they are ~60 (issue 20, peak RSS). ``watchdog.model.Project`` reads them back as
datetimes through properties of the old names, each time it is asked (about a microsecond).

Layout of ``times``: a byte of flags (``HAS_EDITED``), then int64 microseconds since the epoch
(UTC) of the last edit if there is one, then of each save in the order of the servers' tuple
(sorted: equal mappings pack alike). ``zones`` is empty when every time is in UTC, else the
int64 UTC offset in microseconds of each time in the same order, so that a time written in
another zone is read back as it was written. Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

HAS_EDITED = 1
#: No last edit and no save.
NO_TIMES = bytes(1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_WALL = datetime(1970, 1, 1)
_MICRO = timedelta(microseconds=1)
_ZERO = timedelta(0)


#: Packers by the number of times (a project has a handful of servers).
_PACKERS = {n: struct.Struct(f"<B{n}q") for n in range(8)}


def pack(
    last_edited: datetime | None, saves: Mapping[str, datetime]
) -> tuple[bytes, tuple[str, ...], bytes]:
    """(times, servers, zones) of a last edit (None: unknown) and the save time per server.
    ValueError for a time without a time zone. About 2 µs: run for every project of a load."""
    servers = tuple(sorted(saves))
    order = [saves[s] for s in servers]
    if last_edited is not None:
        order.insert(0, last_edited)
    try:
        micros = [(when - _EPOCH) // _MICRO for when in order]
    except TypeError:  # naive - aware (or not a time at all)
        bad = next(w for w in order if not isinstance(w, datetime) or w.utcoffset() is None)
        raise ValueError(f"the time {bad!s} has no time zone") from None
    count = len(order)
    packer = _PACKERS.get(count) or struct.Struct(f"<B{count}q")
    times = packer.pack(HAS_EDITED if last_edited is not None else 0, *micros)
    for when in order:
        if when.tzinfo is not UTC and when.utcoffset():
            break
    else:  # every time in UTC (as parsers and the database give them): no zones to keep
        return times, servers, b""
    offsets = [(when.utcoffset() or _ZERO) // _MICRO for when in order]
    return times, servers, struct.pack(f"<{count}q", *offsets)


def _at(micros: int, offset: int) -> datetime:
    """The time as written: its wall clock in its zone (never out of range on the way)."""
    zone = UTC if offset == 0 else timezone(timedelta(microseconds=offset))
    return (_EPOCH_WALL + timedelta(microseconds=micros + offset)).replace(tzinfo=zone)


def _unpacked(times: bytes, zones: bytes) -> tuple[list[int], list[int]]:
    count = (len(times) - 1) // 8
    micros = list(struct.unpack_from(f"<{count}q", times, 1))
    offsets = list(struct.unpack(f"<{count}q", zones)) if zones else [0] * count
    return micros, offsets


def last_edited(times: bytes, zones: bytes) -> datetime | None:
    """The last edit packed in ``times`` (None: unknown)."""
    if not times[0] & HAS_EDITED:
        return None
    micros, offsets = _unpacked(times, zones)
    return _at(micros[0], offsets[0])


def save_times(times: bytes, zones: bytes) -> tuple[datetime, ...]:
    """The save times packed in ``times``, in the order of its servers' tuple."""
    micros, offsets = _unpacked(times, zones)
    skip = 1 if times[0] & HAS_EDITED else 0
    return tuple(map(_at, micros[skip:], offsets[skip:]))
