"""The HTTP application (FastAPI: the API gets an OpenAPI schema and no hand-written parsing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watchdog import __version__
from watchdog.state import State


def create_app(
    registry: CollectorRegistry, state: State, ready: Callable[[], bool] | None = None
) -> FastAPI:
    """The app over a metrics registry and the state; ``ready`` says when to answer /ready 200."""
    app = FastAPI(title="bup-watchdog", version=__version__)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a sweep has completed and the state is readable")
    def ready_() -> JSONResponse:
        try:
            last = state.last_sweep()
        except Exception as exc:
            return JSONResponse({"status": f"state unreadable: {exc}"}, status_code=503)
        if last is None or (ready is not None and not ready()):
            return JSONResponse({"status": "waiting for the first sweep"}, status_code=503)
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

    return app


class HttpServer:
    """Runs the app with uvicorn in a background thread; ``stop()`` shuts it down cleanly."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
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
