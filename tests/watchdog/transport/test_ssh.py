"""The SSH seam against real sshd hosts: strict keys, bounded waits, capped output."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config, SshConfig, load_config
from bup_watchdog.errors import CommandTimeout, HostKeyError, HostUnreachable, ProbeError
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Server
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.transport.ssh import SshTransport


def setup(fleet: SandboxFleet, name: str = "s1", **ssh: object) -> tuple[Config, Server]:
    config = load_config(fleet.config_path, settings_models())
    for key, value in ssh.items():
        setattr(config.ssh, key, value)
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    return config, inventory.servers[fleet.server_id(name)]


def test_commands_run_over_one_reused_connection_with_nodelay(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    try:
        first = t.run(["cat", "/bup/conf/bup_server_id"])
        client = t._client
        second = t.run(["echo", "a b; $(id)"])
        assert first.stdout.decode().strip() == server.server_id
        assert second.stdout == b"a b; $(id)\n", "arguments reach the host quoted, not interpreted"
        assert t._client is client and t.sessions_opened == 2
        assert client is not None
        sock = client.get_transport().sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        t.close()


def test_a_changed_host_key_is_refused_as_a_security_error(scratch_fleet: SandboxFleet) -> None:
    scratch_fleet.hosts["s1"].replace_host_key()
    config, server = setup(scratch_fleet)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        SshTransport(server, config.ssh).run(["true"])


def test_a_host_missing_from_known_hosts_is_refused(scratch_fleet: SandboxFleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config, server = setup(scratch_fleet, known_hosts=empty)
    with pytest.raises(HostKeyError, match=r"not in .*known_hosts"):
        SshTransport(server, config.ssh).run(["true"])


def test_a_frozen_sshd_times_out_within_the_banner_timeout(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet, banner_timeout=2.0)
    scratch_fleet.hosts["s1"].freeze()
    started = time.monotonic()
    try:
        with pytest.raises(HostUnreachable, match="no SSH banner within 2 s"):
            SshTransport(server, config.ssh).run(["true"])
    finally:
        scratch_fleet.hosts["s1"].thaw()
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4.0, f"gave up after {elapsed:.1f} s"
    print(f"frozen sshd detected after {elapsed:.2f} s (banner_timeout 2 s)")


def test_a_frozen_sshd_with_the_default_timeouts_is_reported_as_no_ssh_banner(
    scratch_fleet: SandboxFleet,
) -> None:
    """The banner wait (5 s) is longer than the TCP connect's (3 s): the banner's bound holds."""
    config, server = setup(scratch_fleet)
    defaults = SshConfig()
    assert (config.ssh.connect_timeout, config.ssh.banner_timeout) == (
        defaults.connect_timeout,
        defaults.banner_timeout,
    )
    assert defaults.banner_timeout > defaults.connect_timeout
    scratch_fleet.hosts["s1"].freeze()
    started = time.monotonic()
    try:
        with pytest.raises(HostUnreachable) as raised:
            SshTransport(server, config.ssh).run(["true"])
    finally:
        scratch_fleet.hosts["s1"].thaw()
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "no SSH banner within 5 s (frozen or overloaded?)" in message, message
    assert "No existing session" not in message
    assert 4.5 < elapsed < 7.0, f"gave up after {elapsed:.1f} s"
    print(f"frozen sshd, default config: {message!r} after {elapsed:.2f} s")


def test_a_stopped_sshd_is_reported_as_connection_refused(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet)
    scratch_fleet.hosts["s1"].kill_sshd()
    with pytest.raises(HostUnreachable, match="connection refused"):
        SshTransport(server, config.ssh).run(["true"])


def test_a_command_that_runs_too_long_is_cut_off(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout, match="within 1 s"):
            t.run(["sleep", "30"], timeout=1.0)
    finally:
        t.close()
    assert time.monotonic() - started < 5


def test_output_over_the_cap_is_refused(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet, max_output_bytes=100_000)
    t = SshTransport(server, config.ssh)
    try:
        with pytest.raises(ProbeError, match="more than 100000 bytes"):
            list(t.stream_lines(["head", "-c", "1000000", "/dev/zero"]))
    finally:
        t.close()


def _running(marker: str) -> list[int]:
    """Pids on this machine (the sandbox hosts share its pid namespace) whose command line is
    exactly ``sleep <marker>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", marker.encode()]:
                found.append(int(entry.name))
    return found


def test_a_command_given_up_on_is_stopped_on_the_host_before_run_returns(
    scratch_fleet: SandboxFleet,
) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    try:
        with pytest.raises(CommandTimeout, match="stopped on the host"):
            t.run(["sleep", "4243"], timeout=1.0)
        assert _running("4243") == []  # a repair's rsync would not go on writing
    finally:
        t.close()


def test_a_streamed_command_given_up_on_is_stopped_on_the_host_soon_after(
    scratch_fleet: SandboxFleet,
) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    try:
        with pytest.raises(CommandTimeout):
            list(t.stream_lines(["sleep", "4244"], timeout=1.0))
    finally:
        t.close()
    deadline = time.monotonic() + 10
    while _running("4244") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running("4244") == []
