"""Gathering from hosts that misbehave: each gives a finding, the others go on."""

from __future__ import annotations

import shlex
import time

from bup_watchdog.checks import settings_models
from bup_watchdog.checks.reachability import check as reachability
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import GatherFailure, Inventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sweep import sweep


def load(fleet: SandboxFleet) -> tuple[Config, Inventory]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    return config, FileInventory(config.inventory.file).load()


def plant_fake_python(fleet: SandboxFleet, host: str, script: str) -> None:
    """FAKE: a host whose python3 answers something else than the probe's facts.

    A host that answers garbage cannot be produced with a healthy Python, so a shell script
    named python3 is put first on PATH inside that host's mount namespace only.
    """
    h = fleet.hosts[host]
    shell = (
        "mount -t tmpfs fakebin /usr/local/bin && "
        f"printf '%s\\n' '#!/bin/sh' {shlex.quote(script)} > /usr/local/bin/python3 && "
        "chmod 755 /usr/local/bin/python3"
    )
    result = h.run(["/bin/sh", "-c", shell])
    assert result.returncode == 0, result.stderr


def test_a_host_answering_garbage_is_a_finding_and_the_others_are_probed(
    scratch_fleet: SandboxFleet,
) -> None:
    plant_fake_python(scratch_fleet, "s1", "echo 'Welcome to host s1!'; cat >/dev/null")
    config, inventory = load(scratch_fleet)
    result = sweep(config, inventory)
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    assert result.facts[s1].failure is GatherFailure.GARBAGE
    assert "not JSON" in (result.facts[s1].failure_message or "")
    assert result.facts[s2].probed
    codes = {(f.server_id, f.code) for f in result.findings if f.check == "reachability"}
    assert codes == {(s1, "probe_garbage")}


def test_a_host_that_says_it_is_another_server_is_not_filed_under_this_one(
    scratch_fleet: SandboxFleet,
) -> None:
    """s1's address reaches a host whose /bup/conf/bup_server_id names s2 (an address reused, a
    wrong ssh_host): its facts would be taken, and repaired, as s1's."""
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    (scratch_fleet.hosts["s1"].bup_dir / "conf" / "bup_server_id").write_text(s2.upper() + "\n")
    config, inventory = load(scratch_fleet)
    result = sweep(config, inventory)
    message = result.facts[s1].failure_message or ""
    assert not result.facts[s1].probed
    assert f"the host says it is server '{s2.upper()}'" in message and f"not {s1}" in message
    assert result.facts[s2].probed
    assert {(f.server_id, f.code) for f in result.findings if f.check == "reachability"} == {
        (s1, "probe_garbage")
    }


def test_a_probe_stream_cut_short_is_reported_as_truncated(scratch_fleet: SandboxFleet) -> None:
    hello = '{"type": "hello", "probe_version": 2, "bups": "/bup/bups"}'
    plant_fake_python(scratch_fleet, "s1", f"cat >/dev/null; echo '{hello}'")
    config, inventory = load(scratch_fleet)
    result = sweep(config, inventory, servers=["s1"])
    facts = result.facts[scratch_fleet.server_id("s1")]
    assert facts.failure is GatherFailure.TRUNCATED


def test_a_host_frozen_mid_sweep_times_out_within_the_bound(scratch_fleet: SandboxFleet) -> None:
    config, inventory = load(scratch_fleet)
    config.ssh.banner_timeout = 2.0
    scratch_fleet.hosts["s2"].freeze()
    try:
        started = time.monotonic()
        result = sweep(config, inventory)
        elapsed = time.monotonic() - started
    finally:
        scratch_fleet.hosts["s2"].thaw()
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    assert result.facts[s1].probed
    assert result.facts[s2].failure in {GatherFailure.UNREACHABLE, GatherFailure.TIMEOUT}
    assert elapsed < 6.0, f"sweep took {elapsed:.1f} s with one frozen host"
    print(f"sweep with one frozen host finished in {elapsed:.2f} s")


def test_a_host_whose_key_changed_gets_a_security_finding(scratch_fleet: SandboxFleet) -> None:
    scratch_fleet.hosts["s2"].replace_host_key()
    config, inventory = load(scratch_fleet)
    result = sweep(config, inventory, only=["reachability"])
    [finding] = [f for f in result.findings if f.code == "host_key"]
    assert finding.server_id == scratch_fleet.server_id("s2")
    assert finding.details["security"] is True
    assert reachability.name == finding.check
