"""The HTTP server's bounds, on a real uvicorn over loopback: the request deadline, the
connection limit and the request limit (watchdog/http/limits.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from bup_watchdog.http.app import HttpServer
from bup_watchdog.http.limits import HttpLimits
from support.process import free_port

PARTIAL = b"GET /ok HTTP/1.1\r\nHost: x\r\n"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.5)
        return {"slow": "yes"}

    return app


@pytest.fixture()
def server() -> Iterator[HttpServer]:
    limits = HttpLimits(max_connections=8, max_requests=2, header_timeout=1.0, keep_alive=0.5)
    srv = HttpServer(_app(), "127.0.0.1", free_port(), limits)
    srv.start()
    yield srv
    srv.stop()


def _connect(srv: HttpServer, send: bytes = PARTIAL) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.config.port), timeout=5)
    s.sendall(send)
    return s


def _closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``s`` (None: still open after ``seconds``)."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - t0


def test_a_request_head_without_its_blank_line_is_closed_after_the_header_timeout(
    server: HttpServer,
) -> None:
    s = _connect(server)
    took = _closed_within(s, 3.0)
    s.close()
    assert took is not None and 0.8 < took < 1.6, took
    assert server.limits.timed_out == 1


def test_trickling_one_byte_at_a_time_does_not_push_the_deadline_back(server: HttpServer) -> None:
    s = _connect(server, b"GET /ok HTTP/1.1\r\n")
    t0 = time.monotonic()
    closed = False
    for _ in range(20):  # a header byte every 0.2 s for up to 4 s
        time.sleep(0.2)
        try:
            s.sendall(b"X")
        except OSError:
            closed = True
            break
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    took = time.monotonic() - t0
    s.close()
    assert closed and took < 2.0, took


def test_a_new_connection_at_the_limit_closes_the_longest_waiting_one_and_is_served(
    server: HttpServer,
) -> None:
    idle = [_connect(server) for _ in range(8)]
    time.sleep(0.2)
    r = httpx.get(f"http://127.0.0.1:{server.config.port}/ok", timeout=2)
    assert r.status_code == 200
    assert _closed_within(idle[0], 0.5) is not None, "the oldest waiting one was not closed"
    assert server.limits.evicted >= 1
    for s in idle:
        s.close()


def test_when_every_connection_has_a_request_in_progress_a_new_one_gets_503(
    server: HttpServer,
) -> None:
    server.limits.max_requests = 100  # only the connection limit here
    busy = [_connect(server, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(8)]
    time.sleep(0.3)
    s = _connect(server, b"")
    s.settimeout(2)
    answer = s.recv(4096)
    s.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    for b in busy:
        assert b.recv(4096).startswith(b"HTTP/1.1 200")
        b.close()


def test_requests_beyond_max_requests_are_answered_503_at_once(server: HttpServer) -> None:
    base = f"http://127.0.0.1:{server.config.port}"
    slow = [_connect(server, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(2)]
    time.sleep(0.3)
    t0 = time.monotonic()
    r = httpx.get(f"{base}/ok", timeout=2)
    assert r.status_code == 503 and time.monotonic() - t0 < 0.5
    for s in slow:
        s.close()


def test_an_idle_keep_alive_connection_is_closed_after_its_response(server: HttpServer) -> None:
    s = _connect(server, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(2)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    took = _closed_within(s, 3.0)
    s.close()
    assert took is not None and took < 1.0, took
