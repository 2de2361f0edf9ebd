"""Alertmanager webhook bodies (``version: "4"``) for the tests that post to ``/alertmanager``.

The shape is the one Alertmanager sends to a ``webhook_config`` receiver
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config).
"""

from __future__ import annotations

from typing import Any

STARTS_AT = "2026-11-28T01:00:00Z"
NEVER = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for an alert that is still firing


def alert(
    name: str,
    status: str = "firing",
    fp: str = "a1b2",
    *,
    summary: str | None = None,
    generator_url: str = "http://127.0.0.1:9090/graph",
    **labels: str,
) -> dict[str, Any]:
    """One alert named ``name`` with ``labels``, summarised as "NAME fired" unless ``summary``."""
    return {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} fired" if summary is None else summary},
        "startsAt": STARTS_AT,
        "endsAt": NEVER,
        "generatorURL": generator_url,
        "fingerprint": fp,
    }


def payload(
    *alerts: dict[str, Any],
    external_url: str = "http://127.0.0.1:9093",
    group_key: str = "{}:{}",
) -> dict[str, Any]:
    """A body for the ``bupwatch`` receiver carrying ``alerts``."""
    return {
        "version": "4",
        "receiver": "bupwatch",
        "status": "firing",
        "alerts": list(alerts),
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": external_url,
        "groupKey": group_key,
        "truncatedAlerts": 0,
    }


def bup_server_down(*targets: tuple[str, str], summary: str) -> dict[str, Any]:
    """A bare body (no URLs) with one firing ``BupWatchBupServerDown`` alert per
    ``(fingerprint, server_id)``: each asks the daemon for a real ``restart_bup_server``."""
    return payload(
        *(
            alert("BupWatchBupServerDown", fp=fp, summary=summary, generator_url="", server_id=sid)
            for fp, sid in targets
        ),
        external_url="",
        group_key="{}",
    )
