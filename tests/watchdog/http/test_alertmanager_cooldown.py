"""Alert re-deliveries after a decision: held back for [alerts] cooldown_seconds, counted, not
journaled again. All real: the app, the repair queue's worker and the guard over a sandbox fleet
with real sshd; each alert asks for restart_bup_server, which the guard decides on for real."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from bup_watchdog.guard import Guard
from bup_watchdog.http.app import create_app
from bup_watchdog.metrics import StateCollector
from bup_watchdog.repair_queue import RepairQueue
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.alerts import bup_server_down
from support.fleet import make_guard

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Webhook:
    client: TestClient
    queue: RepairQueue
    guard: Guard
    registry: CollectorRegistry
    s1: str

    def post(self, *fingerprints: str) -> dict[str, Any]:
        body = bup_server_down(*((fp, self.s1) for fp in fingerprints), summary="bup_server down")
        r = self.client.post("/alertmanager", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def rows(self) -> list[Any]:
        self.queue.join()
        return self.guard.journal.entries(limit=1000)

    def held_back(self) -> float | None:
        return self.registry.get_sample_value(
            "bupwatch_repairs_refused_total",
            {"repair": "restart_bup_server", "reason": "alert_cooldown"},
        )


@pytest.fixture()
def webhook(scratch_fleet: SandboxFleet) -> Iterator[Webhook]:
    guard = make_guard(scratch_fleet, "[alerts]\ntransient_cooldown_seconds = 2\n")
    queue = RepairQueue(lambda: guard)
    registry = CollectorRegistry()
    registry.register(StateCollector(guard.state, lambda: guard.inventory.servers, []))
    app = create_app(registry, guard.state, repairs=queue, token=TOKEN, alerts=guard.config.alerts)
    yield Webhook(TestClient(app), queue, guard, registry, scratch_fleet.server_id("s1"))
    queue.stop()


def test_a_redelivered_alert_after_a_refusal_is_held_back_counted_and_not_journaled_again(
    webhook: Webhook,
) -> None:
    webhook.queue.start()
    assert webhook.post("a1")["queued"] == 1
    [refused] = webhook.rows()
    assert refused.status == "refused" and (refused.refusal or "").startswith("precondition:")

    for _ in range(5):  # Alertmanager re-sends the firing alert
        started = time.perf_counter()
        answer = webhook.post("a1")
        assert time.perf_counter() - started < 2, "the webhook answers at once"
        assert answer["queued"] == 0
        assert answer["ignored"][0]["why"].startswith(f"cooldown: repair #{refused.id} ")
    assert len(webhook.rows()) == 1, "no journal row per re-delivery"
    assert webhook.held_back() == 5.0


def test_requests_queued_before_the_decision_are_dropped_at_their_turn(
    webhook: Webhook,
) -> None:
    # Five alerts for the same target arrive before the guard decided on any of them.
    assert webhook.post("b1", "b2", "b3", "b4", "b5")["queued"] == 5
    webhook.queue.start()
    assert len(webhook.rows()) == 1, "one decision for the target, not five"
    assert webhook.queue.cooled_down == 4
    assert webhook.held_back() == 4.0


def test_after_a_transient_refusal_the_alert_asks_again_after_the_shorter_cooldown(
    webhook: Webhook,
) -> None:
    assert webhook.guard.journal.acquire_lease(webhook.s1, "other-watchdog:1", 600)
    webhook.queue.start()
    assert webhook.post("c1")["queued"] == 1
    [first] = webhook.rows()
    assert (first.refusal or "").startswith("lease:")

    soon = webhook.post("c1")
    assert soon["queued"] == 0 and "(transient refusal)" in soon["ignored"][0]["why"]
    time.sleep(2.2)  # transient_cooldown_seconds = 2; cooldown_seconds stays 1800
    assert webhook.post("c1")["queued"] == 1
    rows = webhook.rows()
    assert [(r.refusal or "").split(":")[0] for r in rows] == ["lease", "lease"]
    assert webhook.held_back() == 1.0
