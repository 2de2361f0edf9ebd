"""The no-progress limit of a command, apart from its time limit: a silent command on a host that
answers goes on; one on a frozen host, or a local one that neither prints nor works, is given up."""

from __future__ import annotations

import os
import signal
import threading
import time

import paramiko
import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import CommandTimeout, HostUnreachable
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Server
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.transport.local import LocalTransport
from bup_watchdog.transport.ssh import SshTransport


def setup(fleet: SandboxFleet, name: str = "s1") -> tuple[Config, Server]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    return config, FileInventory(config.inventory.file).load().servers[fleet.server_id(name)]


def test_a_silent_command_on_a_host_that_answers_is_not_given_up(
    scratch_fleet: SandboxFleet,
) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    try:
        result = t.run(["sleep", "3"], timeout=20, no_progress=1.0)
    finally:
        t.close()
    assert result.ok and result.seconds >= 3


def test_a_command_on_a_frozen_sshd_is_given_up_after_no_progress_not_its_time_limit(
    scratch_fleet: SandboxFleet,
) -> None:
    config, server = setup(scratch_fleet)
    t = SshTransport(server, config.ssh)
    host = scratch_fleet.hosts["s1"]
    t.run(["true"])  # connected: the per-connection sshd is a child of the listener
    children = [
        int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == host.sshd_pid
    ]
    assert children, "no per-connection sshd found"
    started = time.monotonic()
    stopped: list[int] = []
    try:

        def freeze_soon() -> None:
            time.sleep(0.5)
            for pid in children:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

        threading.Thread(target=freeze_soon, daemon=True).start()
        with pytest.raises(CommandTimeout, match=r"made no progress for [0-9]+ s"):
            t.run(["sleep", "30"], timeout=60, no_progress=2.0)
        took = time.monotonic() - started
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        t.close()
    assert 2.0 <= took < 6.0, took


def test_a_host_that_freezes_between_opening_a_session_and_starting_the_command_is_given_up(
    scratch_fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's exec_command waits for sshd's answer without a limit. The per-connection sshd
    is really frozen (SIGSTOP), at the moment the command is sent (the hook only picks the
    moment): the call gives up after ssh.banner_timeout, not never."""
    t, children = connected(scratch_fleet, banner_timeout=2.0)
    stopped: list[int] = []
    real_exec = paramiko.Channel.exec_command

    def freeze_then_exec(chan: paramiko.Channel, command: str) -> None:
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        real_exec(chan, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", freeze_then_exec)
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout, match=r"did not start the command within 2 s"):
            list(t.stream_lines(["echo", "hello"], timeout=60))
        took = time.monotonic() - started
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        t.close()
    assert stopped and 2.0 <= took < 5.0, took


def test_a_connection_dropped_mid_stream_is_unreachable_not_garbage_in_a_cut_off_line(
    scratch_fleet: SandboxFleet,
) -> None:
    """The per-connection sshd is killed while the command has printed half a line: the stream
    must not yield that half line (the probe's reader would call it garbage)."""
    t, children = connected(scratch_fleet)
    got: list[bytes] = []
    argv = ["sh", "-c", "echo first; printf half; sleep 30"]
    try:
        with pytest.raises(HostUnreachable, match="the SSH connection dropped while sh ran"):
            for line in t.stream_lines(argv, timeout=60):
                got.append(line)
                time.sleep(0.3)  # the half line is in the watchdog's buffer by now
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
    finally:
        t.close()
    assert got == [b"first"]


def connected(fleet: SandboxFleet, **ssh: float) -> tuple[SshTransport, list[int]]:
    """A transport connected to s1 (``ssh``: settings changed first), and the sshd processes
    of that connection."""
    config, server = setup(fleet)
    for key, value in ssh.items():
        setattr(config.ssh, key, value)
    t = SshTransport(server, config.ssh)
    t.run(["true"])
    children = _connection_sshds(fleet.hosts["s1"].sshd_pid)
    assert children, "no per-connection sshd found"
    return t, children


def _connection_sshds(listener: int) -> list[int]:
    """The sshd processes below the listener (the connection's monitor and its session
    process), not the commands they run."""
    out, todo = [], [listener]
    procs = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    while todo:
        parent = todo.pop()
        for pid in procs:
            if _ppid(pid) == parent:
                todo.append(pid)
                if _comm(pid) == "sshd":
                    out.append(pid)
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def test_a_local_command_that_neither_prints_nor_works_is_killed_after_no_progress() -> None:
    t = LocalTransport()
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="made no progress"):
        t.run(["sleep", "30"], timeout=60, no_progress=1.0)
    assert time.monotonic() - started < 3


def test_a_local_command_that_works_without_printing_is_not_killed() -> None:
    busy = "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass"
    result = LocalTransport().run(["python3", "-c", busy], timeout=20, no_progress=1.0)
    assert result.ok
