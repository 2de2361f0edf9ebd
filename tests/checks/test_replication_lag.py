"""replication_lag, from recorded facts."""

from __future__ import annotations

from bup_watchdog.checks.replication_lag import check
from bup_watchdog.model import Finding, HostFacts, Severity
from support.facts import (
    P1,
    S1,
    S2,
    SHA_A,
    SHA_B,
    host_facts,
    host_records,
    inventory,
    project,
    repo,
)

SETTINGS = check.Settings()
T = 1_700_000_000


def evaluate(replica: dict[str, object] | None) -> list[Finding]:
    facts = {
        S1: host_facts(S1, host_records(repo(P1, master_sha=SHA_A, reflog_last_time=T))),
        S2: host_facts(S2, host_records(*([replica] if replica else []))),
    }
    return list(check.evaluate(facts, inventory(project(P1)), SETTINGS))


def test_a_replica_with_the_masters_commit_yields_no_finding() -> None:
    assert evaluate(repo(P1, master_sha=SHA_A, reflog_last_time=T)) == []


def test_a_replica_a_few_minutes_behind_is_within_bounds() -> None:
    assert evaluate(repo(P1, master_sha=SHA_B, reflog_last_time=T - 600)) == []


def test_a_replica_six_hours_behind_is_a_warning_on_the_replica() -> None:
    [f] = evaluate(repo(P1, master_sha=SHA_B, reflog_last_time=T - 6 * 3600))
    assert (f.code, f.severity, f.server_id, f.value) == (
        "behind",
        Severity.WARNING,
        S2,
        6 * 3600.0,
    )


def test_a_replica_two_days_behind_is_critical() -> None:
    [f] = evaluate(repo(P1, master_sha=SHA_B, reflog_last_time=T - 2 * 86400))
    assert f.severity is Severity.CRITICAL


def test_a_replica_newer_than_the_master_is_a_conflict() -> None:
    [f] = evaluate(repo(P1, master_sha=SHA_B, reflog_last_time=T + 60))
    assert f.code == "replica_ahead"
    assert "NEWER" in f.message


def test_a_missing_replica_is_critical() -> None:
    [f] = evaluate(None)
    assert (f.code, f.severity) == ("replica_missing", Severity.CRITICAL)


def unjudged(master: HostFacts | None, replica_records: list[dict[str, object]]) -> set[object]:
    facts = {S2: host_facts(S2, host_records(*replica_records))}
    if master is not None:
        facts[S1] = master
    return set(check.unjudged(facts, inventory(project(P1)), SETTINGS))


def test_a_replica_whose_master_was_not_probed_is_unjudged_not_healthy() -> None:
    behind = [repo(P1, master_sha=SHA_B, reflog_last_time=T - 2 * 86400)]
    down = HostFacts(S1, 0.0)  # the probe never answered: not probed
    assert unjudged(None, behind) == {(S2, P1)}  # the master's host is another watchdog's
    assert unjudged(down, behind) == {(S2, P1)}
    no_master_repo = host_facts(S1, host_records())
    assert unjudged(no_master_repo, behind) == {(S2, P1)}


def test_a_replica_whose_master_was_read_is_judged() -> None:
    master = host_facts(S1, host_records(repo(P1, master_sha=SHA_A, reflog_last_time=T)))
    assert unjudged(master, [repo(P1, master_sha=SHA_B, reflog_last_time=T - 60)]) == set()
