"""restart_bup_server on a real host: the stand-in restarted over SSH, its new port recorded.

And the boot gate on a host that booted without its ``/projects`` mount (a real plain directory
on the root disk in the host's mount namespace): bup_server does not start through the gate, the
repair is refused with the gate's line, and both go through once the tmpfs is mounted.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import ConfigError
from bup_watchdog.gather import make_transport
from bup_watchdog.hostside import preflight
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.repairs.restart_bup_server import preflight_argv
from bup_watchdog.runner import inventory_source, load_inventory
from bup_watchdog.sandbox.bup_server import GREETING
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.hosts import PYTHON
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec
from bup_watchdog.transport.base import CommandResult
from support.fleet import fleet_config, make_guard


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


# ------------------------------------------------------------------ the boot gate


@pytest.fixture()
def unmounted_fleet(tmp_path: Path) -> Iterator[SandboxFleet]:
    """One host, u1, booted without /projects mounted and with no bup_server running."""
    spec = FleetSpec(
        hosts=(HostSpec("u1", projects_mounted=False, bup_server_running=False),), projects=()
    )
    with SandboxFleet(tmp_path / "fleet", spec) as fleet:
        if not fleet.namespaces:
            pytest.skip("needs mount namespaces: /projects cannot be left unmounted without")
        yield fleet


def on_host(fleet: SandboxFleet, name: str, argv: list[str]) -> CommandResult:
    """Run argv on a host over SSH, as the watchdog (or an operator) would."""
    config = fleet_config(fleet)
    server = load_inventory(inventory_source(config), None).servers[fleet.server_id(name)]
    transport = make_transport(server, config.ssh)
    try:
        return transport.run(argv, timeout=60)
    finally:
        transport.close()


def mount_projects(fleet: SandboxFleet, name: str) -> None:
    """What the operator does once the pool is back: mount /projects inside the host."""
    argv = ["mount", "-t", "tmpfs", "-o", "size=16m,mode=755", f"sandbox-projects-{name}"]
    done = on_host(fleet, name, [*argv, "/projects"])
    assert done.ok, done.stderr


def start_through_the_gate(fleet: SandboxFleet, name: str) -> CommandResult:
    """Start the host's bup_server with the boot gate as its ExecStartPre=, as systemd would.

    The gate goes to the host's /root/bin: bup_server (and so its ExecStartPre=) has a private
    /tmp, where the fleet's own directory would be hidden.
    """
    host = fleet.hosts[name]
    (host.home / "bin").mkdir(exist_ok=True)
    shutil.copyfile(preflight.__file__, host.home / "bin" / "bupwatch-preflight")
    gate = "/root/bin/bupwatch-preflight"
    server = make_guard(fleet).inventory.servers[fleet.server_id(name)]
    options = preflight_argv(server, PYTHON, fleet_config(fleet).check("mount_sanity"))[3:]
    pre = shlex.join([PYTHON, "-S", gate, *options])
    return on_host(fleet, name, [*host.bup_server_argv(daemon=True), "--exec-start-pre", pre])


def test_bup_server_does_not_start_through_the_gate_until_projects_is_mounted(
    unmounted_fleet: SandboxFleet,
) -> None:
    host = unmounted_fleet.hosts["u1"]

    refused = start_through_the_gate(unmounted_fleet, "u1")

    said = refused.stderr.decode()
    assert refused.returncode == 1, said
    assert "bupwatch-preflight: refusing: /projects is not mounted: it lies on /" in said
    assert "bup_server: not started: ExecStartPre" in said
    assert stand_ins_running(unmounted_fleet, "u1") == []
    assert host.read_bup_server_port() is None

    mount_projects(unmounted_fleet, "u1")
    started = start_through_the_gate(unmounted_fleet, "u1")

    assert started.ok, started.stderr.decode()
    assert b"bupwatch-preflight: ok:" in started.stdout
    port = host.read_bup_server_port()
    assert port is not None
    with socket.create_connection((host.address, port), timeout=3) as conn:
        assert conn.recv(64) == GREETING


def test_restart_bup_server_is_refused_with_the_gates_line_until_projects_is_mounted(
    unmounted_fleet: SandboxFleet,
) -> None:
    u1 = unmounted_fleet.server_id("u1")
    guard = make_guard(unmounted_fleet)

    decision = guard.submit(RepairRequest("restart_bup_server", u1), execute=True)

    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    refusal = entry.refusal or ""
    assert refusal.startswith("precondition: preflight: the boot gate on u1 fails (status 1)")
    assert "bupwatch-preflight: refusing: /projects is not mounted: it lies on /" in refusal
    assert stand_ins_running(unmounted_fleet, "u1") == []

    mount_projects(unmounted_fleet, "u1")
    decision = guard.submit(RepairRequest("restart_bup_server", u1), execute=True)

    assert decision.status == "succeeded", decision.message
    assert stand_ins_running(unmounted_fleet, "u1") != []
