"""save_freshness on real sandbox fleets: real bup saves, real conf/touch times, real sweeps.

The demo fleet plants one fault (P6's saves stopped 30 h before its last use); a fleet of its own
here has a project whose saves stopped four days before its last use and one whose repository was
re-made with ``bup init`` inside its host and never saved, and the sweeps go on to the state, the
metrics and the audit report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Inventory, Severity
from bup_watchdog.report import build_report
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import DEMO_PROJECTS, FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from bup_watchdog.sweep import record, sweep

STALE = "6f1c3a52-2b7e-4d0a-9c1e-5a0000000001"  # saves stopped 4 days before its last use
NEVER = "6f1c3a52-2b7e-4d0a-9c1e-5a0000000002"  # its repository is re-made, never saved
FRESH = "6f1c3a52-2b7e-4d0a-9c1e-5a0000000003"  # healthy, mastered on the other host
H = 3600.0


def test_the_demo_fleets_planted_fault_is_the_one_save_freshness_finding(
    demo_fleet: SandboxFleet, demo_config: Config, demo_inventory: Inventory
) -> None:
    result = sweep(demo_config, demo_inventory, only=("save_freshness",))

    assert result.checks["save_freshness"].error is None
    [f] = result.findings
    p6 = DEMO_PROJECTS["P6"]
    assert (f.code, f.severity, f.server_id, f.project_id) == (
        "stale",
        Severity.WARNING,
        demo_fleet.server_id("h4"),
        p6,
    )
    assert f.value == 30 * H  # conf/touch's mtime minus the reflog's newest save, both real
    repo = result.facts[demo_fleet.server_id("h4")].repos[p6]
    assert repo.touch_mtime is not None and repo.reflog_last_time is not None
    assert repo.reflog_last_time < demo_fleet.now - 30 * H


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[SandboxFleet]:
    spec = FleetSpec(
        hosts=(HostSpec("s1", dc=0), HostSpec("s2", dc=1)),
        projects=(
            ProjectSpec(STALE, "s1", ("s2",), used_after_save_hours=96),
            ProjectSpec(NEVER, "s1", ("s2",)),
            ProjectSpec(FRESH, "s2", ("s1",)),
        ),
    )
    with SandboxFleet(tmp_path / "fleet", spec) as f:
        yield f


def scrape(state: State, inventory: Inventory) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(StateCollector(state, lambda: inventory.servers, sorted(check_registry())))
    return reg


def save_ages(state: State, inventory: Inventory, server_id: str) -> dict[str, float]:
    return {
        s.labels["bucket"]: s.value
        for family in scrape(state, inventory).collect()
        if family.name == "bupwatch_save_age_projects"
        for s in family.samples
        if s.labels["server_id"] == server_id
    }


def test_stopped_and_missing_saves_are_found_on_the_master_counted_and_listed(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    s1 = fleet.server_id("s1")
    state = State(tmp_path / "state.db")

    found = sweep(config, inventory, only=("save_freshness",)).findings
    assert [(f.code, f.severity, f.server_id, f.project_id, f.value) for f in found] == [
        ("stale", Severity.CRITICAL, s1, STALE, 96 * H)
    ]
    assert "used 4.0 days after its newest save" in found[0].message

    # A real never-saved repository: re-made with bup init inside the host; its live files stay.
    inside = f"{fleet.hosts['s1'].bup_root}/bups/{NEVER}"
    fleet.hosts["s1"].run(["rm", "-rf", inside], check=True)
    fleet.hosts["s1"].run(["env", f"BUP_DIR={inside}", "bup", "init"], check=True)
    assert not (fleet.repo_path("s1", NEVER) / "refs" / "heads" / "master").exists()

    # Sweeps that list the live directories (ownership runs) see its files: critical.
    listed = sweep(config, inventory, only=("save_freshness", "ownership"))
    record(state, listed)
    mine = [f for f in listed.findings if f.check == "save_freshness"]
    assert {(f.code, f.severity, f.project_id) for f in mine} == {
        ("stale", Severity.CRITICAL, STALE),
        ("never_saved", Severity.CRITICAL, NEVER),
    }
    [never] = [f for f in mine if f.code == "never_saved"]
    assert never.server_id == s1 and "live directory holds files" in never.message

    # A sweep that does not list them cannot judge it: its finding stays open, not resolved.
    unlisted = sweep(config, inventory, only=("save_freshness",))
    assert [f.project_id for f in unlisted.findings] == [STALE]
    assert unlisted.checks["save_freshness"].unjudged == {(s1, NEVER)}
    record(state, unlisted)
    still_open = {f.project_id for f in state.open_findings() if f.check == "save_freshness"}
    assert still_open == {STALE, NEVER}

    assert save_ages(state, inventory, s1) == {
        "under_1d": 0.0,
        "1d_to_3d": 0.0,
        "3d_to_7d": 1.0,
        "7d_to_30d": 0.0,
        "over_30d": 0.0,
        "never_saved": 1.0,
    }
    assert set(save_ages(state, inventory, fleet.server_id("s2")).values()) == {0.0}
    failing = scrape(state, inventory).get_sample_value(
        "bupwatch_projects_failing", {"check": "save_freshness", "server_id": s1}
    )
    assert failing == 2.0

    section = build_report(state, servers=inventory.servers)["save_freshness"]
    assert section["stale"] == 2
    assert [(p["project_id"], p["host"], p["used_after_seconds"]) for p in section["projects"]] == [
        (NEVER, "s1", None),
        (STALE, "s1", 96 * H),
    ]
