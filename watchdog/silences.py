"""Silences in Alertmanager while an alert-driven repair runs (``[alerts] silence = true``).

A silence stops the humans being paged for what the watchdog is fixing right now; it is expired as
soon as the repair is decided (succeeded, failed, refused). Alertmanager being down never stops a
repair: the failure is logged and the repair goes on. API: Alertmanager's ``/api/v2/silences``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)


class Silencer:
    """Creates and expires silences through Alertmanager's v2 API."""

    def __init__(self, base_url: str, minutes: float, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.minutes = minutes
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the configured http(s) URL only
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
            text = resp.read()
        return json.loads(text) if text else None

    def silence(self, labels: dict[str, str], comment: str) -> str | None:
        """Silence alerts with exactly these labels; the silence id, or None when it failed."""
        now = datetime.now(UTC)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in sorted(labels.items())
            ],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=self.minutes)).isoformat(),
            "createdBy": "bup-watchdog",
            "comment": comment[:500],
        }
        try:
            answer = self._call("POST", "/api/v2/silences", body)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.warning("could not silence the alert in Alertmanager (%s); repairing anyway", exc)
            return None
        silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
        return str(silence_id) if silence_id else None

    def expire(self, silence_id: str) -> None:
        try:
            self._call("DELETE", f"/api/v2/silence/{urllib.parse.quote(silence_id, safe='')}")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.warning(
                "could not expire silence %s in Alertmanager (%s); it ends by itself after "
                "%g minutes",
                silence_id,
                exc,
                self.minutes,
            )
