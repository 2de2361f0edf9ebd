"""Retention of the state's history: what leaves after keep_history_days, what always stays, and
that a sweep prunes at most once a day (a real State file; a real sweep of a local host)."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from bup_watchdog import retention
from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import parse_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.journal import Journal
from bup_watchdog.runner import Runner
from bup_watchdog.state import State
from support.facts import S1, local_inventory

DAY = 86400.0
NOW = time.time()
OLD, RECENT = NOW - 40 * DAY, NOW - 2 * DAY


def add_sweep(state: State, started: float) -> None:
    state.write(
        lambda db: db.execute(
            "INSERT INTO sweeps (started, seconds, hosts, repos, ssh_sessions, worst) "
            "VALUES (?, 1, 1, 1, 1, 0)",
            (started,),
        )
    )


def add_finding(state: State, code: str, seen: float, resolved: float | None) -> None:
    state.write(
        lambda db: db.execute(
            "INSERT INTO findings (check_name, code, server_id, severity, message, first_seen, "
            "last_seen, resolved_at) VALUES ('reachability', ?, ?, 2, 'm', ?, ?, ?)",
            (code, S1, seen, seen, resolved),
        )
    )


def add_row(state: State, reason: str, status: str, at: float, acked: float | None = None) -> None:
    def insert(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO journal (repair, target, server_id, requested_by, reason, mode, status, "
            "created_at, finished_at, acked_at) VALUES ('chown_project', ?, ?, 'test', ?, "
            "'auto', ?, ?, ?, ?)",
            (S1, S1, reason, status, at, None if status in ("pending", "running") else at, acked),
        )

    state.write(insert)


def reasons(state: State) -> set[str]:
    return {r for (r,) in state.query("SELECT reason FROM journal")}


def seed(state: State) -> None:
    add_sweep(state, OLD)
    add_sweep(state, RECENT)
    add_finding(state, "old_resolved", OLD, OLD)
    add_finding(state, "old_open", OLD, None)
    add_finding(state, "recent_resolved", RECENT, RECENT)
    for status in ("succeeded", "refused", "failed", "denied", "dry_run", "conflict"):
        add_row(state, f"old {status}", status, OLD)
    add_row(state, "old interrupted, acknowledged", "interrupted", OLD, acked=OLD)
    add_row(state, "old interrupted, not acknowledged", "interrupted", OLD)
    add_row(state, "old pending", "pending", OLD)
    add_row(state, "old running", "running", OLD)
    add_row(state, "recent succeeded", "succeeded", RECENT)


def test_old_history_leaves_and_what_an_operator_still_needs_stays(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    seed(state)

    gone = retention.prune_history(state, keep_days=30, now=NOW)

    assert gone == {"sweeps": 1, "findings": 1, "journal": 7}
    assert [r[1] for r in state.query("SELECT id, started FROM sweeps")] == [RECENT]
    codes = {c for (c,) in state.query("SELECT code FROM findings")}
    assert codes == {"old_open", "recent_resolved"}
    assert reasons(state) == {
        "old interrupted, not acknowledged",
        "old pending",
        "old running",
        "recent succeeded",
    }
    assert state.meta()[retention.LAST_RUN] == NOW


def test_the_repair_counters_do_not_go_down_when_old_rows_leave(tmp_path: Path) -> None:
    """bupwatch_repairs_total and bupwatch_repairs_refused_total are counted from the journal:
    the rows retention removes are counted on (a counter that falls is a reset to Prometheus)."""
    state = State(tmp_path / "state.db")
    seed(state)
    add_row(state, "old refusal", "refused", OLD)
    state.write(
        lambda db: db.execute("UPDATE journal SET refusal = 'lease: held' WHERE status = 'refused'")
    )
    journal = Journal(state)
    before = (journal.counts_by(), journal.refusals_by_reason())

    retention.prune_history(state, keep_days=30, now=NOW)
    add_row(state, "a new refusal", "refused", NOW)
    state.write(
        lambda db: db.execute(
            "UPDATE journal SET refusal = 'lease: x' WHERE refusal IS NULL AND status = 'refused'"
        )
    )

    counts, refusals = journal.counts_by(), journal.refusals_by_reason()
    assert counts == {
        **before[0],
        ("chown_project", "refused"): before[0][("chown_project", "refused")] + 1,
    }
    assert refusals == {("chown_project", "lease"): before[1][("chown_project", "lease")] + 1}


def test_the_newest_journal_row_stays_so_no_repair_number_is_handed_out_twice(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    for n in range(3):
        add_row(state, f"old {n}", "succeeded", OLD)
    retention.prune_history(state, keep_days=30, now=NOW)
    assert reasons(state) == {"old 2"}
    add_row(state, "next", "succeeded", NOW)
    assert max(i for (i,) in state.query("SELECT id FROM journal")) == 4


def test_the_newest_sweep_stays_however_old_and_zero_keeps_everything(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    add_sweep(state, OLD - DAY)
    add_sweep(state, OLD)
    assert retention.prune_history(state, keep_days=0, now=NOW) == {}
    assert len(state.query("SELECT id FROM sweeps")) == 2
    retention.prune_history(state, keep_days=30, now=NOW)
    assert [r[0] for r in state.query("SELECT started FROM sweeps")] == [OLD]  # the counter's


def test_a_sweep_prunes_the_history_at_most_once_a_day(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    config = parse_config(
        {
            "inventory": {"file": str(inventory)},
            "state": {"directory": str(tmp_path), "keep_history_days": 30},
        },
        settings_models(),
        source="test",
        base=tmp_path,
    )
    config.ssh.python = sys.executable
    state = State(tmp_path / "state.db")
    seed(state)
    runner = Runner(config, state, FileInventory(inventory))

    runner.run_once(force=True, only=["reachability"])
    assert "old succeeded" not in reasons(state) and "recent succeeded" in reasons(state)
    add_row(state, "old, after the day's prune", "refused", OLD)
    runner.run_once(force=True, only=["reachability"])

    assert "old, after the day's prune" in reasons(state), "pruned twice within a day"
