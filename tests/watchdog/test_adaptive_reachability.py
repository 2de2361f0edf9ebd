"""Adaptive reachability on real hosts: a host with a good record gets patience, then is down."""

from __future__ import annotations

from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Severity
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep


def test_a_host_with_a_good_record_is_warned_about_before_it_is_declared_down(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = load_config(scratch_fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    state = State(tmp_path / "state.db")
    for _ in range(12):  # an hour of good 5-minute sweeps earns a patience of 2
        assert sweep(config, inventory, only=["reachability"], state=state).findings == []
    scratch_fleet.hosts["s1"].stop_bup_server()
    s1 = scratch_fleet.server_id("s1")

    first = sweep(config, inventory, only=["reachability"], state=state)
    severities = {(f.code, f.severity) for f in first.findings if f.server_id == s1}
    assert ("bup_server_unreachable", Severity.WARNING) in severities
    assert any("failed sweep 1 of 2" in f.message for f in first.findings)

    second = sweep(config, inventory, only=["reachability"], state=state)
    assert ("bup_server_unreachable", Severity.CRITICAL) in {
        (f.code, f.severity) for f in second.findings if f.server_id == s1
    }
    assert state.host_records()[s1].fail_streak == 2
