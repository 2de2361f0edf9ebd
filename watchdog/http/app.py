"""The HTTP application (FastAPI, so the API has an OpenAPI schema and no hand-written parsing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watchdog import __version__
from watchdog.sweep import SweepResult


def create_app(registry: CollectorRegistry, latest: Callable[[], SweepResult | None]) -> FastAPI:
    """Build the app over a metrics registry and a source of the latest sweep."""
    app = FastAPI(title="bup-watchdog", version=__version__)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: at least one sweep has completed")
    def ready() -> JSONResponse:
        result = latest()
        if result is None:
            return JSONResponse({"status": "waiting for the first sweep"}, status_code=503)
        return JSONResponse({"status": "ready", "last_sweep": result.started})

    @app.get("/api/findings", summary="Findings of the latest sweep")
    def findings() -> dict[str, Any]:
        result = latest()
        if result is None:
            return {"sweep": None, "findings": []}
        return {
            "sweep": {"started": result.started, "seconds": result.seconds},
            "findings": [f.as_dict() for f in result.findings],
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
                raise RuntimeError("the HTTP server did not start within 10 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
