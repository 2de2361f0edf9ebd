"""Bounds on the HTTP server: connections, requests in progress, and time to send a request.

uvicorn bounds none of what a slowloris client does: its keep-alive timer starts only after a
response, so a connection that sends ``GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n`` and holds keeps
its file descriptor forever, and ``limit_concurrency`` answers 503 only once a request is
complete (and counts connections too, so at the limit every request would get 503). This module
adds, on uvicorn's own h11 protocol (no second server, no change to the app):

- a **request timeout**: a connection that starts waiting for a request (when it opens, and
  after each response) must deliver it whole, line, headers and body, within
  ``header_timeout`` (plus ``keep_alive`` after a response); else it is closed. The deadline is
  not pushed back by each byte, so trickling does not help;
- a **connection limit**: at ``max_connections`` a new connection closes the one that has waited
  longest without a complete request (a slowloris client holds nothing for long, a scraper's
  fresh connection gets its request served); when every connection has a request in progress,
  the new one is answered 503 and closed, without reading it;
- a **request limit** (``RequestLimit``): more than ``max_requests`` at once are answered 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import h11
from starlette import types as asgi
from uvicorn.protocols.http.h11_impl import H11Protocol

from bup_watchdog.config import HttpConfig

log = logging.getLogger(__name__)

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 40\r\nconnection: close\r\n\r\ntoo many connections to bup-watchdog now\n"
)


@dataclass(slots=True)
class HttpLimits:
    """The bounds, and counts of what they cut off (read by tests and the log)."""

    max_connections: int = 512
    max_requests: int = 64
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    #: The listen backlog, which is also how many connections asyncio accepts in one go before
    #: any of them is looked at: a burst takes this many descriptors beyond max_connections.
    backlog: int = 64
    #: Connections closed for not sending a complete request in time.
    timed_out: int = 0
    #: Waiting connections closed to make room for a new one.
    evicted: int = 0
    #: New connections answered 503 (every connection had a request in progress).
    refused: int = 0
    #: Requests answered 503 by RequestLimit.
    requests_refused: int = 0
    #: Connections waiting for a request, the longest-waiting first.
    waiting: OrderedDict[int, BoundedH11Protocol] = field(default_factory=OrderedDict)

    @classmethod
    def from_config(cls, http: HttpConfig, open_files: int) -> HttpLimits:
        """The configured bounds, connections capped at ``open_files`` minus ``fd_reserve`` (at
        least 8) and a burst of accepts at a quarter of the reserve: no HTTP load can take the
        descriptors a sweep or a repair needs."""
        return cls(
            max_connections=max(8, min(http.max_connections, open_files - http.fd_reserve)),
            max_requests=http.max_requests,
            header_timeout=http.header_timeout_seconds,
            keep_alive=http.keep_alive_seconds,
            backlog=max(16, min(128, http.fd_reserve // 4)),
        )


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection limit (``HttpLimits``)."""

    limits: HttpLimits
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        lim = self.limits
        if len(self.connections) > lim.max_connections:
            if lim.waiting:
                _, oldest = lim.waiting.popitem(last=False)
                lim.evicted += 1
                log.warning(
                    "HTTP connection limit reached: closing the connection that waited longest "
                    "without a complete request"
                )
                oldest._close_waiting()
            else:
                lim.refused += 1
                log.warning(
                    "HTTP connection limit reached and every connection has a request in "
                    "progress: a new connection is answered 503"
                )
                transport.write(_REFUSED)
                transport.close()
                return
        self._wait_for_request(lim.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:
            if self.conn.their_state is not h11.SEND_BODY:
                self._stop_waiting()  # the request is complete (or the connection is done)
            else:
                self.limits.waiting.pop(id(self), None)  # a request in progress: not evictable

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._wait_for_request(self.limits.keep_alive + self.limits.header_timeout)

    # -- the request deadline ------------------------------------------------------------------

    def _wait_for_request(self, seconds: float) -> None:
        self._stop_waiting()
        self._deadline = self.loop.call_later(seconds, self._too_slow)
        self.limits.waiting[id(self)] = self

    def _stop_waiting(self) -> None:
        deadline = self._deadline
        if deadline is not None:
            deadline.cancel()
            self._deadline = None
        self.limits.waiting.pop(id(self), None)

    def _too_slow(self) -> None:
        self._deadline = None
        self.limits.waiting.pop(id(self), None)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.limits.timed_out += 1
            log.warning("HTTP connection closed: no complete request within its time limit")
            self.transport.close()

    def _close_waiting(self) -> None:
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()


def bounded_protocol(limits: HttpLimits) -> type[BoundedH11Protocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class it is given)."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})


class RequestLimit:
    """503 at once for a request beyond ``limits.max_requests`` in progress."""

    def __init__(self, app: asgi.ASGIApp, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits
        self.active = 0

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limits.max_requests:
            self.limits.requests_refused += 1
            log.warning("HTTP request limit reached: a request is answered 503")
            body = b"too many requests to bup-watchdog now\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
