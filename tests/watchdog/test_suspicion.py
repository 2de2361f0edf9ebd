"""Adaptive reachability: patience grows with a good record and shrinks for a flapping host."""

from __future__ import annotations

from bup_watchdog.suspicion import HostRecord, connect_timeout, patience, suspicion, update


def run(outcomes: list[bool], rtt: float = 0.001) -> HostRecord:
    record = HostRecord("s")
    for ok in outcomes:
        record = update(record, ok, rtt if ok else None)
    return record


def test_a_new_host_is_declared_down_on_its_first_failure() -> None:
    record = run([False])
    assert patience(record) == 1
    assert suspicion(record) >= 1


def test_a_host_good_for_three_hours_gets_three_failed_sweeps_before_down() -> None:
    good = [True] * 36  # 3 h of 5-minute sweeps
    assert patience(run(good)) == 3
    assert suspicion(run([*good, False])) < 1
    assert suspicion(run([*good, False, False])) < 1
    assert suspicion(run([*good, False, False, False])) >= 1


def test_a_flapping_host_gets_no_patience_whatever_its_streak() -> None:
    flapping = [True, False] * 3 + [True] * 12
    record = run([*flapping, False])
    assert record.flapping
    assert patience(record) == 1


def test_the_connect_timeout_grows_with_the_record_but_stays_within_bounds() -> None:
    assert connect_timeout(run([]), 3.0, 10.0) == 3.0
    day = run([True] * 300)
    assert connect_timeout(day, 3.0, 10.0) == 6.0
    slow = run([True] * 300, rtt=2.0)
    assert connect_timeout(slow, 3.0, 10.0) == 10.0


def test_a_recovered_host_clears_its_suspicion() -> None:
    assert suspicion(run([True] * 20 + [False, False, True])) == 0
