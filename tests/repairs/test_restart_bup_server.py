"""restart_bup_server on a real host: the stand-in restarted over SSH, its new port recorded."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import load_config
from bup_watchdog.errors import ConfigError
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory
from bup_watchdog.sandbox.bup_server import GREETING
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import make_guard


def stand_ins_running(fleet: SandboxFleet, name: str) -> list[str]:
    script = str(fleet.hosts[name].bup_server_script)
    found = subprocess.run(["pgrep", "-f", script], capture_output=True, text=True)
    return found.stdout.split()


def test_restart_bup_server_brings_a_stopped_server_back_and_records_its_new_port(
    scratch_fleet: SandboxFleet,
) -> None:
    host = scratch_fleet.hosts["s1"]
    s1 = scratch_fleet.server_id("s1")
    host.stop_bup_server()
    guard = make_guard(scratch_fleet)
    old_port = guard.inventory.servers[s1].port

    decision = guard.submit(RepairRequest("restart_bup_server", s1), execute=True)

    assert decision.status == "succeeded", decision.message
    new_port = host.read_bup_server_port()
    assert new_port is not None
    with socket.create_connection((host.address, new_port), timeout=3) as conn:
        assert conn.recv(64) == GREETING
    [entry] = guard.journal.entries(status="succeeded")
    assert "reachability passes" in (entry.verification or "")
    assert str(host.bup_server_script) in entry.plan[0]["command"]
    if new_port != old_port:
        assert f"now listens on port {new_port}" in (entry.output or "")
        assert "the new port is recorded" in (entry.output or "")
        assert guard.journal.overrides()[s1]["port"] == new_port
        inventory = load_inventory(inventory_source(guard.config), guard.state)
        assert inventory.servers[s1].port == new_port


def test_restart_bup_server_in_dry_run_starts_nothing(scratch_fleet: SandboxFleet) -> None:
    host = scratch_fleet.hosts["s1"]
    s1 = scratch_fleet.server_id("s1")
    host.stop_bup_server()
    guard = make_guard(scratch_fleet)

    req = RepairRequest("restart_bup_server", s1, params={"dry_run": True})
    decision = guard.submit(req)

    assert decision.status == "dry_run"
    assert "--daemon" in decision.plan[0]["command"]
    assert stand_ins_running(scratch_fleet, "s1") == []
    assert host.read_bup_server_port() is None
    assert guard.journal.overrides() == {}


def test_restart_bup_server_refuses_to_restart_a_healthy_server(
    scratch_fleet: SandboxFleet,
) -> None:
    guard = make_guard(scratch_fleet)
    s2 = scratch_fleet.server_id("s2")
    running = stand_ins_running(scratch_fleet, "s2")

    decision = guard.submit(RepairRequest("restart_bup_server", s2), execute=True)

    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert (entry.refusal or "").startswith("precondition: healthy:")
    assert stand_ins_running(scratch_fleet, "s2") == running


def test_an_unknown_placeholder_in_the_restart_command_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[inventory]\nsource = "file"\nfile = "inventory.toml"\n'
        "[repairs.restart_bup_server]\n"
        'command = ["systemctl", "restart", "bup_server@{hostname}"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(config, settings_models())
    [problem] = err.value.problems
    assert problem.startswith("At 'repairs.restart_bup_server.command")
    assert "unknown placeholder {hostname}" in problem
