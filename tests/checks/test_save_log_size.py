"""save_log_size, from recorded facts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bup_watchdog.checks.save_log_size import check
from bup_watchdog.model import Severity
from support.facts import P1, S1, host_facts, host_records, inventory, repo

SETTINGS = check.Settings()


def evaluate(**kw: object) -> list[tuple[Severity, str]]:
    facts = {S1: host_facts(S1, host_records(repo(P1, **kw)))}
    return [(f.severity, f.code) for f in check.evaluate(facts, inventory(), SETTINGS)]


def test_a_small_save_log_yields_no_finding() -> None:
    assert evaluate(save_log_bytes=49_999_999) == []


def test_a_save_log_over_the_warning_size_is_a_warning() -> None:
    assert evaluate(save_log_bytes=62_000_000) == [(Severity.WARNING, "too_large")]


def test_a_save_log_over_the_critical_size_is_critical() -> None:
    assert evaluate(save_log_bytes=382_000_000) == [(Severity.CRITICAL, "too_large")]


def test_a_symlinked_save_log_is_reported_not_measured() -> None:
    assert evaluate(save_log_bytes=None, save_log_is_symlink=True) == [
        (Severity.WARNING, "symlink")
    ]


def test_thresholds_out_of_order_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="critical_bytes must be at least warn_bytes"):
        check.Settings(warn_bytes=10, critical_bytes=5)
