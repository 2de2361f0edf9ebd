"""POST /alertmanager: auth, validation with field names, splitting, resolved and duplicate alerts.

The app is the real one over a real State; the repair queue is real but its worker is not
started, so the tests see exactly what was queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from bup_watchdog.config import AlertsConfig
from bup_watchdog.http.app import create_app
from bup_watchdog.model import Finding, Severity
from bup_watchdog.repair_queue import RepairQueue
from bup_watchdog.state import State
from support.alerts import alert, payload
from support.facts import P1, P2, S1

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[TestClient, RepairQueue, State]:
    state = State(tmp_path / "state.db")
    queue = RepairQueue(lambda: None, maxsize=100)  # type: ignore[arg-type,return-value]
    app = create_app(
        CollectorRegistry(),
        state,
        repairs=queue,
        token=TOKEN,
        alerts=AlertsConfig.model_validate({}),
    )
    return TestClient(app), queue, state


def queued(queue: RepairQueue) -> list[Any]:
    items = []
    while queue.qsize():
        items.append(queue._q.get_nowait())
    return items


def test_without_the_bearer_token_the_webhook_answers_401(setup: Any) -> None:
    client, _, _ = setup
    r = client.post("/alertmanager", json=payload())
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    r = client.post("/alertmanager", json=payload(), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_a_bad_payload_gets_400_naming_the_field(setup: Any) -> None:
    client, _, _ = setup
    bad = payload(alert("BupWatchBupServerDown", server_id=S1))
    bad["alerts"][0]["status"] = "exploded"
    r = client.post("/alertmanager", json=bad, headers=AUTH)
    assert r.status_code == 400
    assert "alerts.0.status" in r.json()["error"]
    r = client.post("/alertmanager", json={**payload(), "version": "3"}, headers=AUTH)
    assert r.status_code == 400 and "version" in r.json()["error"]


def test_a_firing_alert_becomes_one_queued_repair_request(setup: Any) -> None:
    client, queue, _ = setup
    r = client.post(
        "/alertmanager", json=payload(alert("BupWatchBupServerDown", server_id=S1)), headers=AUTH
    )
    assert r.status_code == 200 and r.json()["queued"] == 1
    [work] = queued(queue)
    assert (work.request.repair, work.request.server_id) == ("restart_bup_server", S1)
    assert work.request.requested_by == "alertmanager:bupwatch"


def test_resolved_and_unmapped_alerts_never_start_repairs(setup: Any) -> None:
    client, queue, _ = setup
    body = payload(
        alert("BupWatchBupServerDown", status="resolved", server_id=S1),
        alert("SomethingElse", fp="ff", server_id=S1),
    )
    r = client.post("/alertmanager", json=body, headers=AUTH)
    assert r.json()["queued"] == 0
    whys = {i["why"] for i in r.json()["ignored"]}
    assert "resolved alerts never start repairs" in whys
    assert "no repair is mapped to this alert" in whys
    assert queued(queue) == []


def test_a_per_server_alert_is_split_into_one_request_per_failing_project(setup: Any) -> None:
    client, queue, state = setup
    for pid in (P1, P2):
        state.raise_finding(
            Finding("save_log_size", S1, Severity.WARNING, "big", project_id=pid, code="too_large")
        )
    body = payload(alert("BupWatchSaveLogTooLarge", server_id=S1))
    assert client.post("/alertmanager", json=body, headers=AUTH).json()["queued"] == 2
    assert sorted(w.request.project_id for w in queued(queue)) == [P1, P2]


def test_the_same_fingerprint_is_not_queued_twice(setup: Any) -> None:
    client, queue, _ = setup
    body = payload(alert("BupWatchBupServerDown", server_id=S1))
    client.post("/alertmanager", json=body, headers=AUTH)
    again = client.post("/alertmanager", json=body, headers=AUTH).json()
    assert again["queued"] == 0 and again["ignored"][0]["why"] == "already queued"
    assert len(queued(queue)) == 1


def test_hostile_label_values_are_refused_before_they_reach_a_request(setup: Any) -> None:
    client, queue, _ = setup
    body = payload(
        alert("BupWatchBupServerDown", fp="01", server_id="$(reboot)"),
        alert("BupWatchWrongOwner", fp="02", server_id=S1, project_id="../../etc/shadow"),
        alert("BupWatchBupServerDown", fp="03", server_id=S1 + "\n;rm -rf /"),
    )
    r = client.post("/alertmanager", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["queued"] == 0
    assert queued(queue) == []


def test_a_body_over_the_size_cap_is_refused_with_413(setup: Any) -> None:
    client, _, _ = setup
    r = client.post(
        "/alertmanager",
        content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 413
