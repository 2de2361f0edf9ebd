"""bup_quota, from recorded facts."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from bup_watchdog.checks.bup_quota import check
from bup_watchdog.model import Finding, Severity
from support.facts import P1, S1, S2, host_facts, host_records, inventory, project, repo

SETTINGS = check.Settings()
MIB = 1 << 20


def evaluate(
    repo_mib: float, *, disk_mb: int | None = None, settings: object = None, deleted: bool = False
) -> list[Finding]:
    rec = repo(P1, repo_bytes=int(repo_mib * MIB), settings=settings)
    facts = {S1: host_facts(S1, host_records(rec))}
    p = dataclasses.replace(project(P1), disk_mb=disk_mb, deleted=deleted)
    return list(check.evaluate(facts, inventory(p), SETTINGS))


def test_a_repo_within_three_times_its_quota_yields_no_finding() -> None:
    assert evaluate(3000, disk_mb=1000) == []


def test_a_repo_over_three_times_the_inventory_quota_is_a_warning_with_its_size() -> None:
    [f] = evaluate(3500, disk_mb=1000)
    assert (f.code, f.severity, f.server_id, f.project_id) == (
        "over_quota",
        Severity.WARNING,
        S1,
        P1,
    )
    assert f.value == 3500 * MIB
    assert "3500 MiB" in f.message and "1000 MiB" in f.message and "inventory" in f.message


def test_a_repo_over_five_times_its_quota_is_critical() -> None:
    [f] = evaluate(5001, disk_mb=1000)
    assert f.severity is Severity.CRITICAL


def test_the_inventory_quota_wins_over_conf_settings_json() -> None:
    assert evaluate(3500, disk_mb=2000, settings={"disk": 100}) == []


def test_without_an_inventory_quota_the_quota_of_conf_settings_json_is_used() -> None:
    [f] = evaluate(3500, settings={"disk": 1000})
    assert f.code == "over_quota" and "conf/settings.json" in f.message


def test_a_numeric_text_disk_setting_counts_as_a_quota() -> None:
    [f] = evaluate(3500, settings={"disk": "1000"})
    assert f.code == "over_quota"


@pytest.mark.parametrize("disk", ["lots", None, True, [1000], 0, -5, "nan"])
def test_a_disk_setting_that_is_no_positive_number_is_ignored(disk: object) -> None:
    assert evaluate(10**6, settings={"disk": disk}) == []


def test_no_quota_known_yields_no_finding() -> None:
    assert evaluate(10**6, settings=None) == []


def test_a_deleted_project_is_not_judged() -> None:
    assert evaluate(10**6, disk_mb=1, deleted=True) == []


def test_every_copy_over_its_quota_is_reported_on_its_own_server() -> None:
    rec = repo(P1, repo_bytes=4000 * MIB, settings={"disk": 1000})
    facts = {S1: host_facts(S1, host_records(rec)), S2: host_facts(S2, host_records(rec))}
    found = check.evaluate(facts, inventory(project(P1)), SETTINGS)
    assert sorted((f.server_id, f.code) for f in found) == [(S1, "over_quota"), (S2, "over_quota")]


def test_factors_out_of_order_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="critical_factor must be at least factor"):
        check.Settings(factor=6, critical_factor=5)
