"""Bearer-token auth for the write endpoints (API and Alertmanager webhook)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from bup_watchdog.errors import ConfigError


def read_token(path: Path | None) -> str | None:
    """The API token from its file (first line), or None when no file is configured."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read the API token: {exc}"]) from None
    if len(token) < 16:
        raise ConfigError(str(path), ["the API token must be at least 16 characters"])
    return token


class TokenAuth:
    """A FastAPI dependency: 403 when writes are disabled, 401 without the right bearer token."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(self, request: Request) -> None:
        if self.token is None:
            raise HTTPException(
                status_code=403,
                detail="write endpoints are disabled: set guard.api_token_file in the config",
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )


class AuthFirstRoute(APIRoute):
    """A route whose ``TokenAuth`` dependencies are checked before its body is read or parsed:
    without the token, a malformed body gets 401, not a 400 that tells what the body should be
    (FastAPI parses the body before it runs dependencies). The dependency stays declared, for
    the OpenAPI schema."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = [d.dependency for d in self.dependencies if isinstance(d.dependency, TokenAuth)]
        if not checks:
            return handler

        async def auth_first(request: Request) -> Response:
            for check in checks:
                check(request)
            return await handler(request)

        return auth_first
