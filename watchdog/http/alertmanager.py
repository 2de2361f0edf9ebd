"""POST /alertmanager: Alertmanager's webhook (payload version 4) turned into repair requests.

Validated strictly (a bad payload gets 400 naming the field), split into its alerts; firing alerts
whose name maps to a repair are queued for the guard, resolved ones never start anything, and one
alert fingerprint is never acted on twice while its repair is queued, pending or running, and a
repair target the guard decided on for an alert within ``[alerts] cooldown_seconds`` is not asked
for again (Alertmanager re-sends firing alerts; each re-delivery would be one more journal row).
The handler only enqueues, so it answers in milliseconds whatever the repairs cost.
Payload reference: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bup_watchdog.config import AlertsConfig
from bup_watchdog.guard import RepairRequest, alert_cooldown
from bup_watchdog.journal import ALERT_REQUESTER, Journal
from bup_watchdog.model import is_uuid, is_v4_uuid
from bup_watchdog.repair_queue import QueueFull, RepairQueue, Work
from bup_watchdog.repairs.base import Repair, RepairSettings
from bup_watchdog.state import State, StateError

log = logging.getLogger(__name__)

Labels = dict[str, str]


class Alert(BaseModel):
    """One alert of a webhook payload."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = Field("", max_length=4096)
    fingerprint: str = Field(pattern=r"^[0-9a-fA-F]{1,64}$")


class WebhookPayload(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    receiver: str = Field(max_length=256)
    status: Literal["firing", "resolved"]
    alerts: list[Alert] = Field(max_length=10_000)
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Labels = Field(default_factory=dict)
    externalURL: str = Field("", max_length=4096)
    groupKey: str = Field("", max_length=4096)
    truncatedAlerts: int = Field(0, ge=0)


def _projects_for(state: State, repair: Repair[RepairSettings], server_id: str) -> list[str]:
    """Projects with an open finding of the repair's check (and codes) on a server."""
    rows = state.query(
        "SELECT DISTINCT project_id, code FROM findings WHERE resolved_at IS NULL AND "
        "check_name=? AND server_id=? AND project_id != '' ORDER BY project_id",
        (repair.check, server_id),
    )
    return sorted({pid for pid, code in rows if not repair.codes or code in repair.codes})


def handle(
    payload: WebhookPayload,
    config: AlertsConfig,
    repairs: dict[str, Repair[RepairSettings]],
    state: State,
    queue: RepairQueue,
) -> dict[str, Any]:
    """Split the payload into repair requests and queue them; return what was done with each."""
    rules = {r.alertname: r.repair for r in config.rules}
    journal = Journal(state)
    now = time.time()
    receiver = "".join(c for c in payload.receiver[:64] if c.isprintable())
    queued, ignored = 0, []
    cooled: Counter[str] = Counter()
    for alert in payload.alerts:
        name = alert.labels.get("alertname", "")
        why = _skip_reason(alert, name, rules, repairs)
        if why:
            ignored.append({"fingerprint": alert.fingerprint, "alertname": name, "why": why})
            continue
        repair = repairs[rules[name]]
        server_id = alert.labels["server_id"].lower()
        label_pid = alert.labels.get("project_id")
        if repair.needs_project:
            if label_pid is not None and not is_v4_uuid(label_pid):
                ignored.append(
                    {
                        "fingerprint": alert.fingerprint,
                        "alertname": name,
                        "why": "label project_id is not a version-4 UUID",
                    }
                )
                continue
            projects = [label_pid.lower()] if label_pid else _projects_for(state, repair, server_id)
        else:
            projects = [None]  # type: ignore[list-item]
        if not projects:
            ignored.append(
                {
                    "fingerprint": alert.fingerprint,
                    "alertname": name,
                    "why": f"no open {repair.check} finding on that server to repair",
                }
            )
            continue
        for pid in projects:
            fingerprint = alert.fingerprint + (f":{pid}" if pid and not label_pid else "")
            if journal.active_fingerprint(fingerprint) is not None:
                ignored.append(
                    {"fingerprint": fingerprint, "alertname": name, "why": "already being repaired"}
                )
                continue
            req = RepairRequest(
                repair.name,
                server_id,
                pid,
                requested_by=f"{ALERT_REQUESTER}{receiver}",
                reason=(alert.annotations.get("summary") or name)[:500],
                fingerprint=fingerprint,
                params={"alert_labels": dict(alert.labels)},
            )
            cooldown = alert_cooldown(journal, req, config, now)
            if cooldown:
                cooled[repair.name] += 1
                log.debug(
                    "alert %s: %s on %s not asked for: %s",
                    fingerprint,
                    repair.name,
                    req.target,
                    cooldown,
                )
                ignored.append({"fingerprint": fingerprint, "alertname": name, "why": cooldown})
                continue
            try:
                if queue.put(Work(request=req)):
                    queued += 1
                else:
                    ignored.append(
                        {"fingerprint": fingerprint, "alertname": name, "why": "already queued"}
                    )
            except QueueFull as exc:
                ignored.append({"fingerprint": fingerprint, "alertname": name, "why": str(exc)})
    try:
        journal.count_alert_cooldown(cooled)
    except StateError as exc:  # counting must not fail the webhook
        log.warning("alert requests held back by the cooldown not counted: %s", exc)
    return {"queued": queued, "ignored": ignored, "alerts": len(payload.alerts)}


def _skip_reason(
    alert: Alert, name: str, rules: dict[str, str], repairs: dict[str, Repair[RepairSettings]]
) -> str | None:
    if alert.status != "firing":
        return "resolved alerts never start repairs"
    if name not in rules:
        return "no repair is mapped to this alert"
    if rules[name] not in repairs:
        return f"the mapped repair {rules[name]!r} does not exist"
    server_id = alert.labels.get("server_id")
    if server_id is None:
        return "the alert has no server_id label"
    if not is_uuid(server_id):
        return "label server_id is not a UUID"
    return None
