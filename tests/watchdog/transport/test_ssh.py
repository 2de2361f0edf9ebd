"""The SSH seam against real sshd hosts: strict keys, bounded waits, capped output."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import paramiko
import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config, SshConfig
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import CommandTimeout, HostKeyError, HostUnreachable, ProbeError
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Server
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.transport import ssh
from bup_watchdog.transport.ssh import PREFERRED_CIPHERS, SshTransport


def setup(fleet: SandboxFleet, name: str = "s1", **ssh: object) -> tuple[Config, Server]:
    config = load_config(fleet.config_path, settings_models())
    for key, value in ssh.items():
        setattr(config.ssh, key, value)
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    return config, inventory.servers[fleet.server_id(name)]


def test_commands_run_over_one_reused_aes_gcm_connection_with_nodelay(
    scratch_fleet: SandboxFleet,
) -> None:
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
        transport = client.get_transport()
        assert transport is not None
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # type: ignore[union-attr]
        assert (transport.local_cipher, transport.remote_cipher) == (PREFERRED_CIPHERS[0],) * 2, (
            "OpenSSH takes the cipher offered first"
        )
    finally:
        t.close()


def test_streamed_lines_are_whole_however_the_output_arrives(scratch_fleet: SandboxFleet) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    script = "printf 'a\\nb'; sleep 0.3; printf 'c\\n\\nd'; sleep 0.3; printf 'e\\nf\\n'"
    try:
        assert list(t.stream_lines(["sh", "-c", script])) == [b"a", b"bc", b"", b"de", b"f"]
        assert list(t.stream_lines(["printf", "x\\ny"])) == [b"x", b"y"], "a last unended line"
    finally:
        t.close()


def test_a_key_changed_in_known_hosts_between_connections_is_believed(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_bytes(scratch_fleet.known_hosts.read_bytes())
    old = time.time() - 60  # past the window in which a file is always read afresh
    os.utime(known, (old, old))
    config, server = setup(scratch_fleet, known_hosts=known)
    SshTransport(server, config.ssh).run(["true"])  # the file is parsed and kept
    other = setup(scratch_fleet, "s2")[1]
    lines = known.read_text().splitlines()
    key_of = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}
    host = next(h for h in key_of if server.ssh_host in h)
    theirs = next(k for h, k in key_of.items() if other.ssh_host in h)
    known.write_text("".join(f"{h} {theirs if h == host else k}\n" for h, k in key_of.items()))
    os.utime(known, (old, old + 1))  # same size; only the mtime tells
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        SshTransport(server, config.ssh).run(["true"])


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


def test_an_endless_line_is_cut_off_at_the_line_cap_not_the_output_cap(
    scratch_fleet: SandboxFleet,
) -> None:
    """A host printing one line without end was buffered up to max_output_bytes (256 MB) per
    host and then copied; lines of whole output are yielded up to the cap. (sshd is still
    draining the cut-off command when the next session opens: on a loaded machine that took
    over 5 s, the default banner_timeout, in CI once.)"""
    config, server = setup(scratch_fleet, banner_timeout=30.0)
    t = SshTransport(server, config.ssh)
    cap = ssh._MAX_LINE
    try:
        with pytest.raises(ProbeError, match=f"printed a line longer than {cap} bytes"):
            list(t.stream_lines(["head", "-c", str(4 * cap), "/dev/zero"]))
        whole = f"head -c {cap} /dev/zero | tr '\\0' x; echo"
        assert [len(line) for line in t.stream_lines(["sh", "-c", whole])] == [cap]
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


def test_the_key_file_is_parsed_once_across_connects_and_again_when_it_changes(
    scratch_fleet: SandboxFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "id_key"
    key.write_bytes(Path(scratch_fleet.client_key).read_bytes())
    key.chmod(0o600)
    config, server = setup(scratch_fleet, key_file=key)
    parsed: list[str] = []
    real = paramiko.PKey.from_path

    def spy(path: Path, *args: object) -> paramiko.PKey:
        parsed.append(str(path))
        return real(path, *args)

    def by_name(*args: object) -> None:
        raise AssertionError("paramiko parsed the key file again")

    monkeypatch.setattr(paramiko.PKey, "from_path", spy)
    monkeypatch.setattr(paramiko.SSHClient, "_key_from_filepath", by_name)
    for _ in range(3):
        t = SshTransport(server, config.ssh)
        try:
            assert t.run(["echo", "ok"]).stdout == b"ok\n"
        finally:
            t.close()
    assert parsed == [str(key)], "parsed once, for the check and every login after it"
    os.utime(key, ns=(0, 0))
    t = SshTransport(server, config.ssh)
    try:
        assert t.run(["echo", "ok"]).stdout == b"ok\n"
    finally:
        t.close()
    assert parsed == [str(key)] * 2, "a changed file is parsed again"
    assert ssh._PARSED_KEYS, "the parsed key is kept"
