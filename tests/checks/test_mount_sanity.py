"""mount_sanity, from recorded facts."""

from __future__ import annotations

from bup_watchdog.checks.mount_sanity import check
from bup_watchdog.model import Severity
from support.facts import S1, host_facts, host_records, inventory, mount

SETTINGS = check.Settings()


def findings(*mounts: dict[str, object]) -> list[tuple[str, str]]:
    facts = {S1: host_facts(S1, host_records(mounts=list(mounts)))}
    found = list(check.evaluate(facts, inventory(), SETTINGS))
    assert all(f.severity is Severity.CRITICAL for f in found)
    return [(f.details.get("path", ""), f.code) for f in found]


def test_mounts_of_the_expected_datasets_yield_no_finding() -> None:
    assert findings(mount("/projects"), mount("/bup/bups")) == []


def test_projects_lying_on_the_root_disk_is_the_boot_race() -> None:
    root = mount(
        "/projects", is_mount_point=False, mount_point="/", source="/dev/vda", fstype="ext4"
    )
    found = findings(root, mount("/bup/bups"))
    assert found == [("/projects", "not_mounted")]


def test_a_wrong_filesystem_type_and_source_are_both_reported() -> None:
    wrong = mount("/bup/bups", fstype="ext4", source="/dev/sdb1")
    assert sorted(findings(mount("/projects"), wrong)) == [
        ("/bup/bups", "wrong_fstype"),
        ("/bup/bups", "wrong_source"),
    ]


def test_a_read_only_mount_is_reported() -> None:
    assert findings(mount("/projects", read_only=True), mount("/bup/bups")) == [
        ("/projects", "read_only")
    ]


def test_a_path_the_probe_said_nothing_about_is_reported() -> None:
    assert findings(mount("/projects")) == [("", "no_mount_facts")]


def test_an_empty_fstype_list_and_source_pattern_accept_any_mount_but_not_a_read_only_one() -> None:
    anything = check.Settings(
        projects_fstypes=[], projects_source="", bups_fstypes=[], bups_source=""
    )
    odd = mount("/projects", fstype="ext4", source="/dev/sdz9")
    facts = {S1: host_facts(S1, host_records(mounts=[odd, mount("/bup/bups", read_only=True)]))}

    found = list(check.evaluate(facts, inventory(), anything))

    assert [(f.details["path"], f.code) for f in found] == [("/bup/bups", "read_only")]
