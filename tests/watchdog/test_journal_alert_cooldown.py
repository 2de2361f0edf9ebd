"""The journal's side of the alert cooldown, over a real SQLite state: which decision the cooldown
counts from, and the count of alert requests it held back (persisted, exported as a metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bup_watchdog.journal import Journal
from bup_watchdog.metrics import StateCollector
from bup_watchdog.state import State
from support.facts import S1


def row(journal: Journal, status: str, requested_by: str, **kw: Any) -> int:
    return journal.write(
        repair="restart_bup_server",
        target=S1,
        server_id=S1,
        project_id=None,
        requested_by=requested_by,
        reason="test",
        fingerprint=kw.pop("fingerprint", None),
        mode="auto",
        status=status,
        **kw,
    )


def test_the_cooldown_counts_from_the_last_decision_on_an_alerts_request_for_the_target(
    tmp_path: Path,
) -> None:
    journal = Journal(State(tmp_path / "state.db"))
    decided = row(journal, "refused", "alertmanager:bupwatch", refusal="lease: held")
    row(journal, "succeeded", "cli")  # an operator's repair does not hold alerts back
    row(journal, "running", "alertmanager:bupwatch")  # not decided yet
    last = journal.last_alert_decision("restart_bup_server", S1, since=0)
    assert last is not None and last.id == decided
    assert journal.last_alert_decision("chown_project", S1, since=0) is None
    assert journal.last_alert_decision("restart_bup_server", S1, since=last.created_at + 1) is None


def test_alert_requests_held_back_are_counted_in_the_state_and_exported_as_refusals(
    tmp_path: Path,
) -> None:
    journal = Journal(State(tmp_path / "state.db"))
    journal.count_alert_cooldown({"restart_bup_server": 3})
    journal.count_alert_cooldown({"restart_bup_server": 2, "chown_project": 1})
    journal.state.close()

    reopened = State(tmp_path / "state.db")
    assert Journal(reopened).alert_cooldown_counts() == {
        "restart_bup_server": 5,
        "chown_project": 1,
    }
    registry = CollectorRegistry()
    registry.register(StateCollector(reopened, lambda: {}, []))
    sample = registry.get_sample_value(
        "bupwatch_repairs_refused_total",
        {"repair": "restart_bup_server", "reason": "alert_cooldown"},
    )
    assert sample == 5.0
