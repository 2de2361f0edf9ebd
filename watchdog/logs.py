"""Logging for operators: text or JSON lines on stderr, repeated warnings and errors rate-limited.

``bup-watchdog --log-format json`` writes one JSON object a line (``time`` in ISO 8601 UTC,
``level``, ``logger``, ``event``, and every ``extra=`` field the code passed: ``server``,
``project``, ``repair_id``…), for journald, Loki or Elasticsearch. Stdlib only: every command
imports it, ``--help`` included.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")

#: Warnings and errors with the same logger, level and message template: at most BURST lines a
#: WINDOW seconds, the rest counted and said once ("… repeated K times"). Info lines are one per
#: sweep and one per repair decision, bounded by the schedule, so they are not limited.
BURST = 10
WINDOW_SECONDS = 60.0

#: Loggers of libraries that configure their own handlers (uvicorn does, from its Config):
#: routed to ours, so they get the same format and the same rate limit.
ADOPTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")

# The attributes every LogRecord has: what is left on a record is an ``extra=`` field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def utc_iso(created: float) -> str:
    """A record's time as ISO 8601 UTC with milliseconds: ``2026-12-04T23:30:00.123Z``."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, event, the extra fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<UTC time> LEVEL logger: message``, the same clock as the JSON lines."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_iso(record.created)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(slots=True)
class _Slot:
    start: float
    count: int = 0
    dropped: int = 0
    last: str = ""


class RateLimit(logging.Filter):
    """Lets at most ``burst`` records with one logger, level and message template through per
    ``window`` seconds; drops the rest, then writes one "… repeated K times" line for them when
    their window is over (at the next record, or when the handler closes).

    Records below ``min_level`` pass untouched. Keys are bounded: past ``max_keys`` the oldest
    are reported and forgotten, so messages built with f-strings cannot grow it without bound.
    """

    def __init__(
        self,
        burst: int = BURST,
        window: float = WINDOW_SECONDS,
        *,
        min_level: int = logging.WARNING,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or window <= 0:
            raise ValueError("a rate limit needs burst >= 1 and window > 0")
        self.burst = burst
        self.window = window
        self.min_level = min_level
        self.max_keys = max_keys
        self.clock = clock
        self.emit: Callable[[logging.LogRecord], object] | None = None
        self._slots: dict[tuple[str, int, str], _Slot] = {}
        self._lock = threading.Lock()

    def attach(self, handler: logging.Handler) -> None:
        """Filter ``handler``'s records; the "repeated" lines are written through it."""
        handler.addFilter(self)
        self.emit = handler.handle

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or getattr(record, "_rate_limit_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            summaries = self._expired(now)
            slot = self._slots.get(key)
            if slot is None:
                if len(self._slots) >= self.max_keys:
                    oldest = next(iter(self._slots))
                    summaries.append(self._summary(oldest, self._slots.pop(oldest)))
                slot = self._slots[key] = _Slot(now)
            slot.count += 1
            passed = slot.count <= self.burst
            if not passed:
                slot.dropped += 1
                slot.last = record.getMessage()
        self._write(summaries)
        return passed

    def flush(self) -> None:
        """Say now what was dropped (the process is stopping)."""
        with self._lock:
            summaries = [self._summary(k, s) for k, s in self._slots.items() if s.dropped]
            self._slots.clear()
        self._write(summaries)

    def _expired(self, now: float) -> list[logging.LogRecord | None]:
        """Summaries of the windows that are over; their slots are forgotten."""
        over = [k for k, s in self._slots.items() if now - s.start >= self.window]
        return [self._summary(k, self._slots.pop(k)) for k in over]

    def _summary(self, key: tuple[str, int, str], slot: _Slot) -> logging.LogRecord | None:
        if not slot.dropped:
            return None
        name, level, _ = key
        last = slot.last if len(slot.last) <= 300 else slot.last[:300] + " …"
        record = logging.LogRecord(
            name,
            level,
            __file__,
            0,
            "%s … repeated %d times (at most %d such lines a %g s are written)",
            (last, slot.dropped, self.burst, self.window),
            None,
        )
        record.repeated = slot.dropped
        record._rate_limit_summary = True
        return record

    def _write(self, summaries: list[logging.LogRecord | None]) -> None:
        for record in summaries:
            if record is not None and self.emit is not None:
                self.emit(record)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (a test runner may swap it), rate-limited."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.limit = limit
        limit.attach(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the stderr of the moment

    def close(self) -> None:
        self.limit.flush()
        super().close()


_state: dict[str, Any] = {"format": "text", "handler": None}


def setup(fmt: str = "text", verbose: int = 0, *, daemon: bool = False) -> StderrHandler:
    """Log to stderr in ``fmt``; the level from ``verbose``; the daemon's own lines at info.

    Default: warnings and errors only, except for ``bup_watchdog`` in the daemon, which also
    writes one info line per sweep and per repair decision. ``-v``: info from every library,
    ``-vv``: debug (and paramiko's own lines). Calling it again replaces the handler.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    old = _state["handler"]
    if old is not None:
        root.removeHandler(old)
        old.close()
    handler = StderrHandler(RateLimit())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING - 10 * min(verbose, 2))
    ours = logging.INFO if daemon and verbose == 0 else logging.NOTSET
    logging.getLogger("bup_watchdog").setLevel(ours)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL if verbose < 2 else logging.INFO)
    # Python's own warnings become records: a JSON log stays one object a line.
    logging.captureWarnings(fmt == "json")
    _state.update(format=fmt, handler=handler)
    return handler


def reset() -> None:
    """Undo ``setup``: remove its handler, back to the logging module's defaults (for tests that
    set logging up in their own process)."""
    handler = _state["handler"]
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("bup_watchdog").setLevel(logging.NOTSET)
    logging.getLogger("paramiko").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    _state.update(format="text", handler=None)


def current_format() -> str:
    """The format ``setup`` was last called with ("text" before)."""
    return str(_state["format"])


def adopt(names: tuple[str, ...] = ADOPTED_LOGGERS) -> None:
    """Send these loggers' records to the root handler (format, rate limit) instead of their own
    handlers. Call it after the library configured its logging (uvicorn: in ``Config()``)."""
    for name in names:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.propagate = True
