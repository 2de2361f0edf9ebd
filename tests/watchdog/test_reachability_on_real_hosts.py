"""reachability against real sandbox hosts whose bup_server runs as systemd runs a unit with
``PrivateTmp=yes``: in a mount namespace of its own, in the host's PID namespace."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Finding, Inventory, Severity
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.hosts import PYTHON
from bup_watchdog.sweep import sweep
from support.fleet import make_guard


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def reachability(fleet: SandboxFleet) -> tuple[list[Finding], Inventory]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    return sweep(config, inventory, only=["reachability"]).findings, inventory


def restart_over_ssh_as_the_unit_would(fleet: SandboxFleet, name: str) -> int:
    """Stop the host's bup_server, start it again over SSH with the repair's command (a private
    /tmp in a mount namespace of its own, as ``PrivateTmp=yes``); return its new port."""
    host = fleet.hosts[name]
    host.stop_bup_server()
    key, known = str(fleet.client_key), str(fleet.known_hosts)
    ssh = ["ssh", "-i", key, "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes"]
    command = shlex.join(host.bup_server_argv(daemon=True))
    subprocess.run([*ssh, f"root@{host.address}", command], check=True, timeout=60)
    port = host.read_bup_server_port()
    assert port is not None
    return port


def _bup_server_pids(fleet: SandboxFleet, name: str) -> list[int]:
    script = str(fleet.hosts[name].bup_server_script)
    found = subprocess.run(["pgrep", "-f", script], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_a_bup_server_in_a_mount_namespace_of_its_own_gives_no_reachability_finding(
    scratch_fleet: SandboxFleet,
) -> None:
    s1 = scratch_fleet.hosts["s1"]
    [pid] = _bup_server_pids(scratch_fleet, "s1")  # started by the fleet with --private-tmp
    assert _ns(pid, "mnt") != _ns(s1.sshd_pid, "mnt"), "bup_server has a mount namespace of its own"
    assert _ns(pid, "pid") == _ns(s1.sshd_pid, "pid"), "in the host's PID namespace"
    private, hosts = (os.stat(f"/proc/{p}/root/tmp").st_dev for p in (pid, s1.sshd_pid))
    assert private != hosts, "its /tmp is its own"

    findings, _ = reachability(scratch_fleet)

    assert findings == [], [f.message for f in findings]


def test_the_same_bup_server_with_its_port_moved_gives_one_finding_naming_both_ports(
    scratch_fleet: SandboxFleet,
) -> None:
    old_port = scratch_fleet.hosts["s1"].inventory_port
    new_port = restart_over_ssh_as_the_unit_would(scratch_fleet, "s1")
    assert new_port != old_port
    s1 = scratch_fleet.server_id("s1")

    findings, inventory = reachability(scratch_fleet)

    assert inventory.servers[s1].port == old_port
    [finding] = findings
    assert (finding.server_id, finding.code) == (s1, "port_mismatch")
    assert finding.severity is Severity.CRITICAL
    assert f":{old_port} (from the inventory)" in finding.message, finding.message
    assert f"listens on port {new_port}" in finding.message, finding.message


def test_a_port_that_answers_while_its_bup_server_is_out_of_sight_is_informational_only(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """A bup_server in another PID namespace than the probe's (here the root one) answers on the
    inventory's port: the probe cannot see it, the port is the truth; no warning, no critical,
    and restart_bup_server will not restart a server that serves."""
    host = scratch_fleet.hosts["s1"]
    port = host.inventory_port
    host.stop_bup_server()
    argv = [PYTHON, str(host.bup_server_script), "--bup-root", str(host.bup_dir)]
    argv += ["--host", host.address, "--port", str(port), "--port-file", str(tmp_path / "port")]
    outside = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "port").exists() and outside.poll() is None:
            assert time.monotonic() < deadline, "the outside bup_server did not start"
            time.sleep(0.01)
        assert (tmp_path / "port").read_text().strip() == str(port)

        findings, _ = reachability(scratch_fleet)
        guard = make_guard(scratch_fleet)
        s1 = scratch_fleet.server_id("s1")
        decision = guard.submit(RepairRequest("restart_bup_server", s1), execute=True)
        assert outside.poll() is None, "the serving bup_server was left alone"
    finally:
        outside.kill()
        outside.wait()

    [finding] = findings
    assert (finding.code, finding.severity) == ("bup_server_not_seen", Severity.OK)
    assert f"answers at {host.address}:{port}" in finding.message
    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert (entry.refusal or "").startswith("precondition: healthy:"), entry.refusal
