"""ownership, from recorded facts."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import uuid
from typing import Any

import pytest

from bup_watchdog.checks.ownership import check
from bup_watchdog.errors import ProbeError
from bup_watchdog.model import Finding, Severity, project_uid, project_uid_unchecked
from support.facts import (
    P1,
    P2,
    S1,
    S2,
    host_facts,
    host_records,
    inventory,
    mount,
    project,
    project_dir,
)

SETTINGS = check.Settings()
UID1 = project_uid(P1)
ROOT = 0


def evaluate(
    *records: dict[str, Any],
    projects_mounted: bool = True,
    settings: Any = SETTINGS,
    deleted: bool = False,
) -> list[Finding]:
    projects = mount("/projects")
    if not projects_mounted:
        projects = mount(
            "/projects", is_mount_point=False, mount_point="/", source="/dev/vda1", fstype="ext4"
        )
    facts = {S1: host_facts(S1, host_records(*records, mounts=[projects, mount("/bup/bups")]))}
    inv = inventory(dataclasses.replace(project(P1), deleted=deleted))
    return list(check.evaluate(facts, inv, settings))


def test_live_files_all_owned_by_the_projects_uid_yield_no_finding() -> None:
    assert evaluate(project_dir(P1)) == []


def test_a_few_files_owned_by_another_uid_are_a_warning_naming_three_of_them() -> None:
    rec = project_dir(P1, owners={UID1: 16, ROOT: 4})
    [f] = evaluate(rec)
    assert (f.code, f.severity, f.server_id, f.project_id, f.value) == (
        "wrong_owner",
        Severity.WARNING,
        S1,
        P1,
        4.0,
    )
    assert "4 of 20" in f.message and f"uid {UID1}" in f.message and "uid 0: 4" in f.message
    assert "dir/file-0-0, dir/file-0-1, dir/file-0-2" in f.message
    assert "dir/file-0-3" not in f.message


def test_more_than_half_of_the_sample_owned_by_another_uid_is_critical() -> None:
    [f] = evaluate(project_dir(P1, owners={UID1: 9, ROOT: 11}))
    assert (f.code, f.severity, f.value) == ("wrong_owner", Severity.CRITICAL, 11.0)


def test_a_truncated_sample_says_it_saw_only_the_first_entries() -> None:
    [f] = evaluate(project_dir(P1, owners={UID1: 190, 4242: 10}, sample_truncated=True))
    assert "10 of the first 200 sampled entries" in f.message


def test_a_wrong_top_directory_is_found_even_when_the_hosts_sample_budget_was_spent() -> None:
    skipped = project_dir(P1, owners={}, examples={}, uid=ROOT, sampled=0, sample_skipped=True)
    [f] = evaluate(skipped)
    assert (f.code, f.severity, f.value) == ("wrong_owner", Severity.CRITICAL, 1.0)
    assert "e.g. ." in f.message


def test_a_skipped_sample_with_a_right_top_directory_yields_no_finding() -> None:
    assert evaluate(project_dir(P1, owners={}, examples={}, sampled=0, sample_skipped=True)) == []


def test_a_symlinked_live_directory_is_critical() -> None:
    link = project_dir(P1, owners={}, examples={}, sampled=0, is_symlink=True, is_dir=False)
    [f] = evaluate(link)
    assert (f.code, f.severity) == ("symlink", Severity.CRITICAL)


def test_a_missing_live_directory_is_a_warning_unless_turned_off() -> None:
    [f] = evaluate()
    assert (f.code, f.severity, f.project_id) == ("missing_live_dir", Severity.WARNING, P1)
    assert evaluate(settings=check.Settings(report_missing=False)) == []


def test_an_unmounted_projects_yields_no_ownership_finding_at_all() -> None:
    assert evaluate(project_dir(P1, owners={ROOT: 20}), projects_mounted=False) == []
    assert evaluate(projects_mounted=False) == []


def test_live_directories_of_projects_not_placed_on_the_host_are_not_judged() -> None:
    stray = project_dir(P2, owners={ROOT: 20})
    assert evaluate(project_dir(P1), stray) == []


def test_a_deleted_project_is_not_judged() -> None:
    assert evaluate(project_dir(P1, owners={ROOT: 20}), deleted=True) == []


def test_each_host_is_judged_on_its_own_copy() -> None:
    good = host_records(project_dir(P1))
    bad = host_records(project_dir(P1, owners={UID1: 19, ROOT: 1}))
    facts = {S1: host_facts(S1, good), S2: host_facts(S2, bad)}
    found = check.evaluate(facts, inventory(project(P1)), SETTINGS)
    assert [(f.server_id, f.code) for f in found] == [(S2, "wrong_owner")]


@pytest.mark.parametrize(
    "bad",
    [
        {"owners": {"root": 3}},
        {"owners": {"0": "3"}},
        {"owners": {"0": True}},
        {"owners": {"0": -1}},
        {"owners": [[0, 3]]},
        {"examples": {"0": "a/b"}},
        {"examples": {"0": [1]}},
        {"examples": {"-1": ["a"]}},
        {"sampled": -4},
        {"sampled": "20"},
        {"sample_skipped": "yes"},
    ],
)
def test_an_owner_sample_of_the_wrong_shape_is_a_probe_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ProbeError, match="project_dir"):
        host_facts(S1, host_records({**project_dir(P1), **bad}))


def test_a_project_dir_record_from_an_older_probe_has_an_empty_sample() -> None:
    old = {k: v for k, v in project_dir(P1).items() if k in {"type", "project_id", "uid", "gid"}}
    d = host_facts(S1, host_records(old)).project_dirs[P1]
    assert (dict(d.owners), d.sampled, d.sample_skipped, dict(d.examples)) == ({}, 0, False, {})
    assert evaluate(old) == []


def test_only_the_examples_of_other_owners_are_kept_from_a_project_dir_record() -> None:
    rec = project_dir(
        P1,
        owners={str(UID1): 5, "0": 2},
        examples={str(UID1): [".", "a", "b"], "0": ["x/root-owned"]},
        sampled=7,
    )
    d = host_facts(S1, host_records(rec)).project_dirs[P1]
    assert dict(d.examples) == {ROOT: ("x/root-owned",)}
    assert dict(d.owners) == {UID1: 5, ROOT: 2}
    (finding,) = evaluate(rec)
    assert "e.g. x/root-owned" in finding.message


def test_a_projects_uid_is_the_fleet_tools_sha512_formula_with_or_without_the_id_check() -> None:
    rnd = random.Random(5)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(2000)]
    for pid in ids:
        n = int(hashlib.sha512(pid.encode()).hexdigest()[:8], 16) // 2
        want = n + 65537 if n <= 65537 else n
        assert project_uid(pid) == project_uid_unchecked(pid) == want
    with pytest.raises(ValueError, match="not a version-4 UUID"):
        project_uid("not-a-project")
