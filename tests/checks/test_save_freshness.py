"""save_freshness, from recorded facts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from bup_watchdog.checks.save_freshness import age_bucket, check
from bup_watchdog.model import Finding, HostFacts, Severity
from support.facts import (
    P1,
    P2,
    S1,
    S2,
    SHA_B,
    host_facts,
    host_records,
    inventory,
    mount,
    project,
    project_dir,
    repo,
)

SETTINGS = check.Settings()
T = 1_700_000_000
H = 3600.0
NEVER = {"master_sha": None, "master_error": "refs/heads/master is missing"}
NEVER.update(reflog_last_time=None, master_in_pack=None)


def facts(*master: dict[str, Any], replica: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {S1: host_facts(S1, host_records(*master)), S2: host_facts(S2, host_records(*replica))}


def evaluate(*master: dict[str, Any], **kw: Any) -> list[Finding]:
    return list(check.evaluate(facts(*master, **kw), inventory(project(P1)), SETTINGS))


def used_after(hours: float, **kw: Any) -> dict[str, Any]:
    return repo(P1, reflog_last_time=T, touch_mtime=T + hours * H, **kw)


def test_a_project_used_a_few_hours_after_its_newest_save_yields_no_finding() -> None:
    assert evaluate(used_after(5)) == []


def test_a_project_saved_after_its_last_use_yields_no_finding() -> None:
    assert evaluate(used_after(-30)) == []


def test_a_project_used_30_hours_after_its_newest_save_is_a_warning_on_its_master() -> None:
    [f] = evaluate(used_after(30))
    assert (f.code, f.severity, f.server_id, f.project_id, f.value) == (
        "stale",
        Severity.WARNING,
        S1,
        P1,
        30 * H,
    )
    assert "used 30.0 h after its newest save (2023-11-14 22:13 UTC)" in f.message
    assert f.details == {"newest_save": T, "last_used": T + 30 * H}


def test_a_project_used_four_days_after_its_newest_save_is_critical() -> None:
    [f] = evaluate(used_after(96))
    assert (f.code, f.severity) == ("stale", Severity.CRITICAL)
    assert "4.0 days" in f.message


def test_the_thresholds_come_from_the_settings() -> None:
    strict = check.Settings(warn_seconds=H, critical_seconds=2 * H)
    found = check.evaluate(facts(used_after(1.5)), inventory(project(P1)), strict)
    assert [f.severity for f in found] == [Severity.WARNING]


def test_critical_below_warn_is_refused() -> None:
    with pytest.raises(ValidationError, match="critical_seconds must be at least warn_seconds"):
        check.Settings(warn_seconds=10, critical_seconds=5)


def test_only_the_master_copy_is_judged_not_a_stale_replica() -> None:
    stale_replica = repo(P1, master_sha=SHA_B, reflog_last_time=T, touch_mtime=T + 96 * H)
    assert evaluate(used_after(0), replica=(stale_replica,)) == []


def test_a_deleted_project_or_an_unprobed_master_is_not_judged() -> None:
    inv = inventory(dataclasses.replace(project(P1), deleted=True))
    assert list(check.evaluate(facts(used_after(96)), inv, SETTINGS)) == []
    down = {S1: HostFacts(S1, 0.0), S2: host_facts(S2, host_records())}
    assert list(check.evaluate(down, inventory(project(P1)), SETTINGS)) == []


def test_a_project_never_used_or_with_a_master_ref_but_no_reflog_is_not_judged() -> None:
    assert evaluate(repo(P1, reflog_last_time=T, touch_mtime=None)) == []
    assert evaluate(repo(P1, reflog_last_time=None, touch_mtime=T + 96 * H)) == []


def test_a_used_project_with_no_save_at_all_is_critical() -> None:
    [f] = evaluate(repo(P1, touch_mtime=T, **NEVER))
    assert (f.code, f.severity, f.server_id, f.value) == (
        "never_saved",
        Severity.CRITICAL,
        S1,
        None,
    )
    assert "no save at all" in f.message and "conf/touch exists" in f.message


def test_a_never_saved_project_is_critical_when_its_live_directory_holds_files() -> None:
    [f] = evaluate(repo(P1, touch_mtime=None, **NEVER), project_dir(P1))
    assert f.code == "never_saved" and "live directory holds files" in f.message


def test_a_never_saved_project_with_an_empty_or_no_live_directory_yields_no_finding() -> None:
    empty = project_dir(P1, owners={1: 1})  # only the top directory itself
    assert evaluate(repo(P1, touch_mtime=None, **NEVER), empty) == []
    other = project_dir(P2)  # the host's live directories were listed; P1's is not there
    assert evaluate(repo(P1, touch_mtime=None, **NEVER), other) == []


def test_live_files_under_an_unmounted_projects_do_not_count() -> None:
    unmounted = mount("/projects", is_mount_point=False, mount_point="/", fstype="ext4")
    records = host_records(
        repo(P1, touch_mtime=None, **NEVER), project_dir(P1), mounts=[unmounted, mount("/bup/bups")]
    )
    fleet = {S1: host_facts(S1, records)}
    assert list(check.evaluate(fleet, inventory(project(P1)), SETTINGS)) == []
    assert set(check.unjudged(fleet, inventory(project(P1)), SETTINGS)) == {(S1, P1)}


def test_a_never_saved_project_is_unjudged_in_a_sweep_that_did_not_list_live_directories() -> None:
    never = repo(P1, touch_mtime=None, **NEVER)
    assert set(check.unjudged(facts(never), inventory(project(P1)), SETTINGS)) == {(S1, P1)}
    listed = facts(never, project_dir(P2))
    assert set(check.unjudged(listed, inventory(project(P1)), SETTINGS)) == set()
    touched = facts(repo(P1, touch_mtime=T, **NEVER))
    assert set(check.unjudged(touched, inventory(project(P1)), SETTINGS)) == set()


def test_each_gap_falls_in_the_bucket_from_the_bound_below_up_to_its_own() -> None:
    gaps = (None, 0.0, 86399.0, 86400.0, 3 * 86400.0, 29 * 86400.0, 400 * 86400.0)
    assert [age_bucket(g) for g in gaps] == [
        "never_saved",
        "under_1d",
        "under_1d",
        "1d_to_3d",
        "3d_to_7d",
        "7d_to_30d",
        "over_30d",
    ]


def test_only_live_master_copies_are_left_unjudged() -> None:
    """A never-saved replica is replication_lag's, a deleted project nobody's, a project the
    inventory does not list is placement's: none of them is save_freshness' unjudged."""
    never = repo(P1, touch_mtime=None, **NEVER)
    on_the_replica = facts(repo(P1, reflog_last_time=T), replica=(never,))
    assert set(check.unjudged(on_the_replica, inventory(project(P1)), SETTINGS)) == set()
    deleted = inventory(dataclasses.replace(project(P1), deleted=True))
    assert set(check.unjudged(facts(never), deleted, SETTINGS)) == set()
    assert set(check.unjudged(facts(never), inventory(project(P2)), SETTINGS)) == set()
