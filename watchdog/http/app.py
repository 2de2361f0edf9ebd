"""The HTTP application (FastAPI: the API gets an OpenAPI schema and no hand-written parsing)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from starlette import types as asgi
from starlette.exceptions import HTTPException as StarletteHTTPException

from bup_watchdog import __version__
from bup_watchdog.config import AlertsConfig
from bup_watchdog.errors import WatchdogError
from bup_watchdog.guard import RepairRequest
from bup_watchdog.http.alertmanager import WebhookPayload
from bup_watchdog.http.alertmanager import handle as handle_alerts
from bup_watchdog.http.auth import AuthFirstRoute, TokenAuth
from bup_watchdog.http.limits import HttpLimits, RequestLimit, bounded_protocol
from bup_watchdog.journal import PENDING, Journal
from bup_watchdog.metrics import exposition
from bup_watchdog.repair_queue import QueueFull, RepairQueue, Work
from bup_watchdog.repairs import registry as repair_registry
from bup_watchdog.report import (
    ReportSettings,
    Scope,
    build_report,
    check_names,
    history_window,
    render,
    resolve_servers,
    servers_from_state,
)
from bup_watchdog.report_members import members_view
from bup_watchdog.state import State, StateError


class RepairBody(BaseModel):
    """A repair request through the API (it goes through the guard like any other)."""

    model_config = ConfigDict(extra="forbid")

    repair: str = Field(pattern=r"^[a-z_]{1,40}$", examples=["chown_project"])
    server_id: str = Field(min_length=1, max_length=64)
    project_id: str | None = Field(None, max_length=64)
    reason: str = Field("", max_length=500)
    dry_run: bool = False


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    why: str = Field("", max_length=500)


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    why: str = Field(
        min_length=1, max_length=500, pattern=r"\S", examples=["checked the replica: bup ls ok"]
    )


def _field_errors(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"At '{loc}': {e.get('msg', 'invalid')}")
    return "; ".join(parts)[:2000]


class BodyLimit:
    """413 for a request body over ``max_bytes``, declared or not: a chunked upload has no
    Content-Length, so the bytes are counted as they arrive and reading stops at the bound."""

    def __init__(self, app: asgi.ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body over {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await JSONResponse({"error": too_big}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> asgi.Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read: the app's handler answers 413.
                    raise StarletteHTTPException(status_code=413, detail=too_big)
            return message

        await self.app(scope, counted, send)


def create_app(
    registry: CollectorRegistry,
    state: State,
    ready: Callable[[], bool] | None = None,
    *,
    repairs: RepairQueue | None = None,
    token: str | None = None,
    alerts: AlertsConfig | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    report: ReportSettings | None = None,
) -> FastAPI:
    """The app over a metrics registry and the state; ``ready`` says when to answer /ready 200.
    /ready says "standby" (200: nothing is this one's) while the state's meta says the other
    watchdogs own every server, as bupwatch_standby does.

    Write endpoints need ``repairs`` (the queue to the guard) and a bearer ``token``. ``report``
    holds the thresholds and bounds of the /report page (defaults: the config's defaults).
    """
    report_settings = report or ReportSettings()
    app = FastAPI(title="bup-watchdog", version=__version__)
    app.router.route_class = AuthFirstRoute  # the token is checked before a body is parsed
    auth = TokenAuth(token)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _field_errors(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a sweep has completed and the state is readable")
    def ready_() -> JSONResponse:
        try:
            last = state.last_sweep()
            meta = state.meta()
        except Exception as exc:
            return JSONResponse({"status": f"state unreadable: {exc}"}, status_code=503)
        if meta.get("standby"):
            return JSONResponse(
                {"status": "standby: the other watchdogs own every server now"}, status_code=200
            )
        if last is None or (ready is not None and not ready()):
            return JSONResponse({"status": "waiting for the first sweep"}, status_code=503)
        # The watchdog's own fault (errors.LocalFault) kept the last sweep from hosts.
        problems = meta.get("watchdog_problems") or {}
        if problems:
            why = "; ".join(f"{kind}: {text}" for kind, text in sorted(problems.items()))
            return JSONResponse(
                {"status": f"watchdog problem: {why}", "watchdog_problems": problems},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "last_sweep_started": last[1]})

    @app.get("/api/findings", summary="Open findings, worst first")
    def findings(
        server_id: str | None = Query(None, max_length=64),
        check: str | None = Query(None, max_length=64),
    ) -> dict[str, Any]:
        rows = state.open_findings(server_id=server_id, check=check)
        return {
            "findings": [
                {
                    "check": f.check,
                    "code": f.code,
                    "server_id": f.server_id,
                    "project_id": f.project_id,
                    "severity": f.severity.label,
                    "message": f.message,
                    "value": f.value,
                    "first_seen": f.first_seen,
                    "last_seen": f.last_seen,
                }
                for f in rows
            ]
        }

    @app.get("/api/members", summary="With [membership]: the watchdogs and who owns which host")
    def members() -> dict[str, Any]:
        return members_view(state.meta().get("membership"), time.time())

    @app.get("/api/repairs", summary="The repair journal, newest first")
    def list_repairs(
        status: str | None = Query(None, pattern=r"^[a-z_]{1,20}$"),
        limit: int = Query(100, ge=1, le=10000),
    ) -> dict[str, Any]:
        return {
            "repairs": [e.as_dict() for e in Journal(state).entries(status=status, limit=limit)]
        }

    @app.get(
        "/report",
        summary="The audit report, rendered from the state now (HTML page, Markdown or JSON)",
        response_class=HTMLResponse,
    )
    def report_page(
        server: Annotated[
            list[str] | None, Query(max_length=64, description="Server id or name (repeatable)")
        ] = None,
        check: Annotated[
            list[str] | None, Query(max_length=64, description="Check name (repeatable)")
        ] = None,
        since: str = Query("7d", max_length=16, description="History window: 30m, 24h, 7d"),
        fmt: str = Query("html", alias="format", pattern=r"^(html|md|json)$"),
    ) -> Response:
        try:
            servers = servers_from_state(state)
            scope = Scope(resolve_servers(server or (), servers, state), check_names(check or ()))
            data = build_report(
                state,
                servers=servers,
                settings=report_settings,
                scope=scope,
                since_seconds=history_window(since),
            )
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except sqlite3.Error as exc:
            raise HTTPException(status_code=503, detail=f"state unreadable: {exc}") from None
        text = render(data, fmt)
        if fmt == "json":
            return Response(text, media_type="application/json")
        if fmt == "md":
            return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
        return HTMLResponse(text)

    def _queue() -> RepairQueue:
        if repairs is None:
            raise HTTPException(status_code=503, detail="repairs are not served by this process")
        return repairs

    @app.post(
        "/api/repairs",
        status_code=202,
        summary="Ask for a repair (queued; the guard decides)",
        dependencies=[Depends(auth)],
    )
    def request_repair(body: RepairBody) -> dict[str, Any]:
        req = RepairRequest(
            body.repair,
            body.server_id.lower(),
            body.project_id.lower() if body.project_id else None,
            requested_by="api",
            reason=body.reason,
            params={"dry_run": body.dry_run},
        )
        return _enqueue(_queue(), Work(request=req))

    @app.post(
        "/api/repairs/{entry_id}/approve",
        status_code=202,
        summary="Approve a pending repair (queued; every guard rule is checked again)",
        dependencies=[Depends(auth)],
    )
    def approve(entry_id: int = Path(ge=1, le=2**62)) -> dict[str, Any]:
        _pending(entry_id)
        return _enqueue(_queue(), Work(approve=entry_id, by="api"))

    @app.post(
        "/api/repairs/{entry_id}/deny",
        status_code=202,
        summary="Deny a pending repair",
        dependencies=[Depends(auth)],
    )
    def deny(body: DecisionBody, entry_id: int = Path(ge=1, le=2**62)) -> dict[str, Any]:
        _pending(entry_id)
        return _enqueue(_queue(), Work(deny=entry_id, by="api", why=body.why))

    def _pending(entry_id: int) -> None:
        """404 / 409 now, with the reason, for a row that is not a pending repair (the queue's
        worker would only log it, and the caller would have been told "queued")."""
        try:
            entry = Journal(state).get(entry_id)
        except StateError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no repair #{entry_id} in the journal")
        if entry.status != PENDING:
            raise HTTPException(
                status_code=409, detail=f"repair #{entry_id} is {entry.status}, not pending"
            )

    @app.post(
        "/api/repairs/{entry_id}/ack",
        summary="Acknowledge an interrupted repair once its target was checked (it stays "
        "interrupted in the journal; it no longer counts as open)",
        dependencies=[Depends(auth)],
    )
    def ack(body: AckBody, entry_id: int = Path(ge=1, le=2**62)) -> dict[str, Any]:
        journal = Journal(state)
        if journal.get(entry_id) is None:
            raise HTTPException(status_code=404, detail=f"no repair #{entry_id} in the journal")
        try:
            return journal.ack(entry_id, "api", body.why).as_dict()
        except StateError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except WatchdogError as exc:  # not interrupted, or already acknowledged
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @app.post(
        "/alertmanager",
        summary="Alertmanager webhook (payload version 4): firing alerts become repair requests",
        dependencies=[Depends(auth)],
    )
    def alertmanager(payload: WebhookPayload) -> dict[str, Any]:
        rules = alerts or AlertsConfig.model_validate({})
        if len(payload.alerts) > rules.max_alerts_per_payload:
            raise HTTPException(
                status_code=413,
                detail=f"{len(payload.alerts)} alerts in one payload; at most "
                f"{rules.max_alerts_per_payload}",
            )
        return handle_alerts(payload, rules, repair_registry(), state, _queue())

    return app


def _enqueue(q: RepairQueue, work: Work) -> dict[str, Any]:
    try:
        queued = q.put(work)
    except QueueFull as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return {"queued": queued, "queue_length": q.qsize()}


class HttpServer:
    """Runs the app with uvicorn in a background thread; ``stop()`` shuts it down cleanly."""

    def __init__(
        self, app: FastAPI, host: str, port: int, limits: HttpLimits | None = None
    ) -> None:
        #: Connections, requests in progress and time to send a request are bounded (limits.py).
        self.limits = limits or HttpLimits()
        self.config = uvicorn.Config(
            RequestLimit(app, self.limits),
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            http=bounded_protocol(self.limits),
            # typed int, but uvicorn hands it to loop.call_later: a fraction of a second works
            timeout_keep_alive=self.limits.keep_alive,  # type: ignore[arg-type]
            backlog=self.limits.backlog,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the HTTP server could not start on {self.config.host}:{self.config.port} "
                    "(port in use?)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
