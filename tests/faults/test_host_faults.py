"""Host faults, injected for real on the scratch fleet: sshd stopped, frozen mid-probe, re-keyed,
a probe answering garbage or cut short, bup_server flapping. Each host fault becomes a finding,
the other host is still swept, nothing is repaired on a host the watchdog cannot trust, and not a
byte of the fleet changes."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config, SshConfig
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import GatherFailure, Inventory, Severity
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.hosts import PYTHON
from bup_watchdog.state import State
from bup_watchdog.sweep import SweepResult, sweep
from faults.harness import AtStake, host_pids, parent, plant_fake_python, wait_until
from faults.recorder import Reliability, short
from support.fleet import make_guard

P = SCRATCH_P1
AUTO_RESYNC = '[repairs.resync_replica]\nmode = "auto"\n'


def load(fleet: SandboxFleet) -> tuple[Config, Inventory]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    return config, FileInventory(config.inventory.file).load()


def reach(result: SweepResult, server_id: str) -> dict[str, Severity]:
    return {
        f.code: f.severity
        for f in result.findings
        if f.check == "reachability" and f.server_id == server_id
    }


def resync_on_s2(fleet: SandboxFleet) -> tuple[str, str]:
    """Ask the guard (auto mode) to resync s2's replica; (status, message)."""
    guard = make_guard(fleet, AUTO_RESYNC)
    try:
        d = guard.submit(RepairRequest("resync_replica", fleet.server_id("s2"), P))
    finally:
        guard.state.close()
    return d.status, d.message


def test_a_stopped_sshd_is_a_finding_the_other_host_is_swept_and_no_repair_touches_it(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    fleet.hosts["s2"].kill_sshd()
    config, inventory = load(fleet)
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")

    started = time.monotonic()
    result = sweep(config, inventory)
    took = time.monotonic() - started
    status, message = resync_on_s2(fleet)

    assert result.facts[s1].probed
    assert result.facts[s2].failure is GatherFailure.UNREACHABLE
    assert "connection refused" in (result.facts[s2].failure_message or "")
    assert reach(result, s2)["ssh_unreachable"] is Severity.CRITICAL
    assert status == "refused" and "unreachable" in message, message
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="sshd stopped on a host (its listening sshd SIGKILLed)",
        expected="reachability/ssh_unreachable (critical: a host never seen good has no "
        "patience); the other host swept; a repair on it refused",
        observed=f"'connection refused' in {took:.2f} s for the sweep; s1 probed; "
        f"ssh_unreachable critical; resync_replica refused: {short(message, 110)}",
        loss=lost,
    )


def test_a_frozen_sshd_with_the_default_config_is_a_finding_that_says_no_ssh_banner(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    """SIGSTOP of s2's listening sshd; the fleet's config keeps every [ssh] timeout at its
    default (connect 3 s, banner 5 s)."""
    fleet = scratch_fleet
    config, inventory = load(fleet)
    defaults = SshConfig()
    assert (config.ssh.connect_timeout, config.ssh.banner_timeout) == (
        defaults.connect_timeout,
        defaults.banner_timeout,
    )
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")
    stake = AtStake(fleet)
    fleet.hosts["s2"].freeze()
    try:
        started = time.monotonic()
        result = sweep(config, inventory)
        took = time.monotonic() - started
    finally:
        fleet.hosts["s2"].thaw()
    assert result.facts[s1].probed
    [finding] = [f for f in result.findings if f.check == "reachability" and f.server_id == s2]
    assert finding.code == "ssh_unreachable", finding
    assert "no SSH banner within 5 s (frozen or overloaded?)" in finding.message, finding.message
    assert "No existing session" not in finding.message
    assert took < defaults.banner_timeout + 4.0, f"the sweep took {took:.1f} s"
    reliability.record(
        area="host",
        what="listening sshd frozen (SIGSTOP), default [ssh] config",
        expected="reachability/ssh_unreachable saying no SSH banner within 5 s; s1 swept",
        observed=f"sweep in {took:.2f} s; s2: {short(finding.message, 110)}",
        loss=stake.loss(),
    )


def _freeze_probe_when_it_runs(
    fleet: SandboxFleet, host: str, frozen: list[int], stop: threading.Event
) -> None:
    """Watch the host for the probe (``python3 -S - --bup-root …``) and SIGSTOP it together
    with its per-connection sshd: the connection is open, the probe half-way."""
    listener = fleet.hosts[host].sshd_pid
    while not stop.is_set() and not frozen:
        for pid in host_pids(fleet, host, lambda a: b"--bup-root" in a and b"-S" in a):
            chain = [pid]
            p = parent(pid)
            while p and p != listener and p > 1:
                chain.append(p)
                p = parent(p)
            for q in chain:
                os.kill(q, signal.SIGSTOP)
            frozen.extend(chain)
            return
        time.sleep(0.002)


def test_an_sshd_frozen_mid_probe_times_out_within_the_command_timeout(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    config, inventory = load(fleet)
    config.ssh.command_timeout = 3.0
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")
    attempts, frozen = 0, []
    try:
        while not frozen and attempts < 8:  # the probe lives ~0.1 s: catch it in the act
            attempts += 1
            stop = threading.Event()
            watcher = threading.Thread(
                target=_freeze_probe_when_it_runs, args=(fleet, "s2", frozen, stop)
            )
            watcher.start()
            started = time.monotonic()
            result = sweep(config, inventory)
            took = time.monotonic() - started
            stop.set()
            watcher.join()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)

    assert frozen, f"the probe was never caught running in {attempts} sweeps"
    assert result.facts[s1].probed
    assert result.facts[s2].failure is GatherFailure.TIMEOUT, result.facts[s2].failure_message
    assert "ssh_timeout" in reach(result, s2)
    assert took < config.ssh.command_timeout + 5.0, f"the sweep took {took:.1f} s"
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="sshd frozen mid-probe (SIGSTOP of the running probe and its per-connection sshd)",
        expected="the probe is given up after ssh.command_timeout (3 s here); "
        "reachability/ssh_timeout; the other host swept",
        observed=f"caught mid-probe on sweep {attempts}; sweep finished in {took:.2f} s; "
        f"s2: {result.facts[s2].failure_message}; s1 probed",
        loss=lost,
    )


def test_a_changed_host_key_is_refused_with_a_security_finding_and_the_host_is_not_touched(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    fleet.hosts["s2"].replace_host_key()
    config, inventory = load(fleet)
    s2 = fleet.server_id("s2")

    result = sweep(config, inventory)
    status, message = resync_on_s2(fleet)

    facts = result.facts[s2]
    assert facts.failure is GatherFailure.HOST_KEY
    assert "HOST KEY CHANGED" in (facts.failure_message or "")
    assert facts.ssh_sessions == 0, "no command ran on a host with a changed key"
    [finding] = [f for f in result.findings if f.code == "host_key"]
    assert finding.severity is Severity.CRITICAL and finding.details["security"] is True
    assert status == "refused" and "HOST KEY CHANGED" in message, message
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="host key changed (new key, sshd restarted; known_hosts has the old one)",
        expected="connection refused before login; critical reachability/host_key with "
        "security=true; no command runs there; repairs refused",
        observed=f"host_key critical, security=true, 0 SSH sessions on s2; resync_replica "
        f"refused: {short(message, 110)}",
        loss=lost,
    )


def test_a_login_shell_that_prints_a_banner_makes_the_probe_garbage_not_a_crash(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    """Real: Debian's bash reads ~/.bashrc for commands run by sshd (FACTS.md), so a host whose
    root .bashrc greets the user answers garbage to every command — the probe included."""
    fleet = scratch_fleet
    stake = AtStake(fleet)
    (fleet.hosts["s2"].home / ".bashrc").write_text('echo "Welcome to s2! Last login: never"\n')
    config, inventory = load(fleet)
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")

    result = sweep(config, inventory)

    assert result.facts[s1].probed
    assert result.facts[s2].failure is GatherFailure.GARBAGE, result.facts[s2].failure_message
    assert "not JSON" in (result.facts[s2].failure_message or "")
    assert "probe_garbage" in reach(result, s2)
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="probe output is garbage (the host's ~/.bashrc prints a banner before every command)",
        expected="reachability/probe_garbage naming the line; no traceback; other host swept",
        observed=f"s2: {result.facts[s2].failure_message}; s1 probed",
        loss=lost,
    )


def test_a_probe_stream_cut_short_at_a_line_or_mid_line_is_a_finding(
    scratch_fleet: SandboxFleet, reliability: Reliability
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    # The real probe, its output cut by head: at a line boundary, then in the middle of a line.
    plant_fake_python(fleet, "s2", f'{PYTHON} "$@" | head -n 3')
    config, inventory = load(fleet)
    s2 = fleet.server_id("s2")
    at_line = sweep(config, inventory).facts[s2]
    fleet.hosts["s2"].run(["sed", "-i", "s/head -n 3/head -c 200/", "/usr/local/bin/python3"])
    mid_line = sweep(config, inventory).facts[s2]

    assert at_line.failure is GatherFailure.TRUNCATED, at_line.failure_message
    assert mid_line.failure is GatherFailure.GARBAGE, mid_line.failure_message
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="probe output truncated (the real probe piped through head -n 3, then head -c 200)",
        fake="no real interpreter stops early on its own: a python3 wrapper on that host cuts "
        "the real probe's output",
        expected="cut at a line: probe_truncated; cut mid-line: probe_garbage; never a traceback",
        observed=f"{at_line.failure_message}; then {mid_line.failure_message}",
        loss=lost,
        count=2,
    )


def _run_bup_server(fleet: SandboxFleet, host: str) -> None:
    """Start the host's bup_server again on the inventory's port (a flapping daemon comes back
    where its clients look for it)."""
    h = fleet.hosts[host]
    argv = [PYTHON, str(h.bup_server_script), "--bup-root", h.bup_root, "--host", h.address]
    argv += ["--port", str(h.inventory_port), "--port-file", f"{h.bup_root}/conf/bup_server.port"]
    result = h.run([*argv, "--daemon"])
    assert result.returncode == 0, result.stderr


def _stop_bup_server(fleet: SandboxFleet, host: str) -> None:
    """Kill the host's bup_server and wait until its port refuses connections (SIGKILL is
    asynchronous: the socket closes when the process is gone)."""
    h = fleet.hosts[host]
    h.stop_bup_server()

    def refused() -> bool:
        try:
            socket.create_connection((h.address, h.inventory_port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:  # reset or timed out by a server on its way out: not closed yet
            return False
        return False

    wait_until(refused, timeout=10, what=f"{host}'s bup_server port to close")


def test_a_flapping_bup_server_is_warned_then_critical_and_asks_for_one_repair_only(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    config, inventory = load(fleet)
    state = State(tmp_path / "state.db")
    config.repair("restart_bup_server").mode = "approve"  # requests wait: nothing restarts
    guard = Guard(config, state, inventory)
    s1 = fleet.server_id("s1")

    def one_sweep() -> dict[str, Severity]:
        """A sweep, then what the daemon does with it: scheduled repairs through the guard."""
        result = sweep(config, inventory, only=["reachability"], state=state)
        for req in guard.scheduled_requests(result.findings, cooldown=1800):
            guard.submit(req)
        return reach(result, s1)

    for _ in range(12):  # an hour of good sweeps: patience 2
        assert one_sweep() == {}
    seen: list[str] = []
    for _ in range(4):
        _stop_bup_server(fleet, "s1")
        down = one_sweep()
        seen.append(down["bup_server_unreachable"].label)
        _run_bup_server(fleet, "s1")
        assert one_sweep() == {}
    record = state.host_records()[s1]
    entries = guard.journal.entries(limit=1000)

    assert seen[0] == "warning", seen
    assert set(seen[1:]) == {"critical"}, seen
    assert record.flapping
    assert [(e.repair, e.status) for e in entries] == [("restart_bup_server", "pending")]
    assert not [e for e in entries if e.started_at is not None]
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="host",
        what="bup_server flapping: stopped and started again between 8 sweeps (after 12 good)",
        expected="adaptive reachability: the first failure a warning (patience earned), then "
        "critical (a flapping host gets patience 1); one repair request, not one per sweep",
        observed=f"severities per failure: {', '.join(seen)}; host flapping ({record.flips} "
        f"flips); journal: {len(entries)} row (restart_bup_server pending), 0 started",
        loss=lost,
        count=4,
    )
