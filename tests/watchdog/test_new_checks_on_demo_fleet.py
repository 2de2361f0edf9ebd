"""bup_quota, repo_garbage, ownership and placement on the real sandbox fleet.

The demo fleet has no fault these checks look for, so they must stay silent on it (the live files
are chowned to each project's uid, every project has a master and one replica, replicas.json lists
them, repositories are small); on a scratch fleet, faults planted for real must be found.
"""

from __future__ import annotations

import json
import os

from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Inventory, Severity, project_uid
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sweep import sweep

NEW_CHECKS = ("bup_quota", "repo_garbage", "ownership", "placement")


def test_the_new_checks_find_nothing_on_the_demo_fleet(
    demo_fleet: SandboxFleet, demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory, only=NEW_CHECKS)

    assert {name: run.error for name, run in result.checks.items()} == dict.fromkeys(NEW_CHECKS)
    assert [f.as_dict() for f in result.findings] == []
    # Not silent for want of facts: the live trees of a mounted host were sampled.
    h1 = result.facts[demo_fleet.server_id("h1")]
    assert h1.project_dirs
    for pid, d in h1.project_dirs.items():
        assert d.sampled > 1 and dict(d.owners) == {project_uid(pid): d.sampled}


def test_faults_planted_on_a_scratch_fleet_are_found_on_the_right_server(
    scratch_fleet: SandboxFleet,
) -> None:
    config = load_config(scratch_fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")

    live = scratch_fleet.hosts["s1"].projects_dir_outside / SCRATCH_P1
    os.chown(live / "notes with space.txt", 0, 0)
    repo_s1 = scratch_fleet.repo_path("s1", SCRATCH_P1)
    (repo_s1 / "objects" / "tmp-xyz").write_bytes(b"half a pack")
    (repo_s1 / "conf" / "replicas.json").write_text(json.dumps([s1]))
    (scratch_fleet.repo_path("s2", SCRATCH_P1) / "refs" / "escape").symlink_to("/etc")

    result = sweep(config, inventory, only=NEW_CHECKS)

    found = {(f.check, f.code, f.server_id, f.project_id, f.severity) for f in result.findings}
    assert found == {
        ("ownership", "wrong_owner", s1, SCRATCH_P1, Severity.WARNING),
        ("repo_garbage", "tmp_objects", s1, SCRATCH_P1, Severity.WARNING),
        ("placement", "replicas_json_disagrees", s1, SCRATCH_P1, Severity.WARNING),
        ("repo_garbage", "symlink_outside", s2, SCRATCH_P1, Severity.CRITICAL),
    }
    [owner] = [f for f in result.findings if f.check == "ownership"]
    assert owner.value == 1.0
    assert "notes with space.txt" in owner.message and "uid 0: 1" in owner.message
