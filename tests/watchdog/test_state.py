"""The SQLite state: findings open, stay, resolve and come back; schema versions; bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bup_watchdog.model import Finding, HostFacts, Severity
from bup_watchdog.state import MIGRATIONS, UNJUDGED_KEEP_SECONDS, State, StateError
from support.facts import P1, S1, S2


def finding(code: str = "too_large", server: str = S1, project: str | None = P1) -> Finding:
    return Finding("save_log_size", server, Severity.WARNING, "big", project_id=project, code=code)


def record(
    state: State, t: float, findings: list[Finding], servers: set[str] | None = None
) -> None:
    servers = {S1, S2} if servers is None else servers
    state.record_sweep(
        started=t,
        seconds=1.0,
        facts={s: HostFacts(server_id=s, gathered_at=t) for s in servers},
        findings=findings,
        checks_run={"save_log_size": (0.01, None)},
        evaluated_servers={"save_log_size": servers},
        ssh_sessions=len(servers),
    )


def test_a_finding_seen_twice_is_one_open_finding_with_first_and_last_seen(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding()])
    record(state, 200.0, [finding()])
    [f] = state.open_findings()
    assert (f.first_seen, f.last_seen, f.resolved_at) == (101.0, 201.0, None)


def test_a_finding_not_reported_again_is_resolved_and_kept_in_history(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding()])
    record(state, 200.0, [])
    assert state.open_findings() == []
    [f] = state.finding_history()
    assert f.resolved_at == 201.0


def test_a_host_that_could_not_be_judged_keeps_its_findings_open(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding(server=S1)])
    record(state, 200.0, [], servers={S2})
    assert [f.server_id for f in state.open_findings()] == [S1]


def test_a_finding_that_returns_after_resolution_opens_a_new_history_entry(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding()])
    record(state, 200.0, [])
    record(state, 300.0, [finding()])
    assert len(state.finding_history()) == 2
    assert state.open_findings()[0].first_seen == 301.0


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding()])
    state.close()
    again = State(tmp_path / "state.db")
    assert len(again.open_findings()) == 1
    assert again.schema_version() == len(MIGRATIONS)


def test_a_state_file_from_a_newer_watchdog_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this watchdog knows"):
        State(tmp_path / "state.db")


def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="not a usable SQLite database"):
        State(tmp_path / "state.db")


def test_an_unjudged_finding_stays_open_a_day_after_it_was_last_seen_then_resolves(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding()])

    def unjudged_sweep(t: float) -> None:
        state.record_sweep(
            started=t,
            seconds=1.0,
            facts={S1: HostFacts(server_id=S1, gathered_at=t)},
            findings=[],
            checks_run={"save_log_size": (0.01, None)},
            evaluated_servers={"save_log_size": {S1}},
            ssh_sessions=1,
            unjudged={"save_log_size": {(S1, P1)}},
        )

    unjudged_sweep(100.0 + UNJUDGED_KEEP_SECONDS - 10)
    assert [f.project_id for f in state.open_findings()] == [P1]
    unjudged_sweep(100.0 + UNJUDGED_KEEP_SECONDS + 10)
    assert state.open_findings() == []


def test_a_server_gone_from_the_inventory_has_its_findings_resolved_and_rows_dropped(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    record(state, 100.0, [finding(server=S1), finding(server=S2)])
    assert state.forget_servers({S1}) == [S2]
    assert [f.server_id for f in state.open_findings()] == [S1]
    assert [sid for (sid,) in state.query("SELECT server_id FROM hosts")] == [S1]
    assert state.forget_servers({S1}) == []  # nothing left to forget
    assert state.forget_servers(set()) == []  # an empty inventory forgets nothing
    assert [f.server_id for f in state.open_findings()] == [S1]
