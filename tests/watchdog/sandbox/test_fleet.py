"""The sandbox fleet, for real: sshd hosts in their own mount namespaces holding real bup repos."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from pydantic import BaseModel, ConfigDict

from bup_watchdog.config_load import parse_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import project_uid
from bup_watchdog.sandbox import (
    DEMO_PROJECTS,
    FleetSpec,
    HostSpec,
    ProjectSpec,
    SandboxFleet,
    demo_spec,
    namespaces_available,
    scaled_spec,
)
from bup_watchdog.sandbox.repos import corrupt_newest_pack

P1, P2, P3, P4 = (DEMO_PROJECTS[k] for k in ("P1", "P2", "P3", "P4"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    assert namespaces_available(), "the sandbox fleet needs mount namespaces (unshare, root)"
    messages: list[str] = []
    f = SandboxFleet(tmp_path_factory.mktemp("demo"), demo_spec(), progress=messages.append)
    with f:
        yield f


def connect(fleet: SandboxFleet, name: str, *, banner_timeout: float = 3.0) -> paramiko.SSHClient:
    """Log in to a sandbox host as the watchdog does: strict known_hosts, the fleet's key."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        fleet.hosts[name].address,
        port=22,
        username="root",
        key_filename=str(fleet.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=3,
        banner_timeout=banner_timeout,
        auth_timeout=3,
    )
    return client


def ssh(fleet: SandboxFleet, name: str, command: str) -> tuple[int, str]:
    """Run one command on a host over SSH; return its exit status and stdout."""
    client = connect(fleet, name)
    try:
        _, out, _ = client.exec_command(command, timeout=30)
        text = out.read().decode()
        return out.channel.recv_exit_status(), text
    finally:
        client.close()


def test_every_host_answers_ssh_with_its_own_host_key(fleet: SandboxFleet) -> None:
    keys = paramiko.HostKeys(str(fleet.known_hosts))
    seen = set()
    for name, host in fleet.hosts.items():
        client = connect(fleet, name)
        try:
            transport = client.get_transport()
            assert transport is not None
            key = transport.get_remote_server_key()
        finally:
            client.close()
        assert keys.check(host.address, key)
        seen.add(key.get_base64())
    assert len(seen) == len(fleet.hosts)


def test_each_host_sees_its_own_server_id(fleet: SandboxFleet) -> None:
    for name in fleet.hosts:
        rc, out = ssh(fleet, name, "cat /bup/conf/bup_server_id")
        assert rc == 0
        assert out.strip() == fleet.server_id(name)


def test_projects_is_mounted_on_h1_but_not_on_h3(fleet: SandboxFleet) -> None:
    rc, out = ssh(fleet, "h1", "findmnt -no FSTYPE,SOURCE /projects")
    assert rc == 0 and out.split() == ["tmpfs", "sandbox-projects-h1"]
    rc, _ = ssh(fleet, "h3", "findmnt /projects")
    assert rc == 1


def test_bup_bups_is_a_mount_point_on_every_host(fleet: SandboxFleet) -> None:
    for name in fleet.hosts:
        rc, _ = ssh(fleet, name, "findmnt /bup/bups")
        assert rc == 0, name


def test_p1_fails_bup_ls_on_its_corrupt_master_but_works_on_its_replica(
    fleet: SandboxFleet,
) -> None:
    command = f"bup -d /bup/bups/{P1} ls master"
    rc, _ = ssh(fleet, "h1", command)
    assert rc != 0
    rc, out = ssh(fleet, "h3", command)
    assert rc == 0 and "latest" in out.split()
    idx = list((fleet.repo_path("h1", P1) / "objects" / "pack").glob("*.idx"))
    packs = list((fleet.repo_path("h1", P1) / "objects" / "pack").glob("*.pack"))
    assert len(packs) == len(idx) - 1


def test_p3_stale_replica_on_h4_has_an_older_master_than_h1(fleet: SandboxFleet) -> None:
    command = f"git --git-dir=/bup/bups/{P3} log -1 --format=%ct master"
    _, on_h1 = ssh(fleet, "h1", command)
    _, on_h4 = ssh(fleet, "h4", command)
    assert int(on_h4) < int(on_h1)
    assert fleet.last_save(P3, "h4") < fleet.last_save(P3, "h1")  # type: ignore[operator]


def test_p2_save_log_is_over_60_mb(fleet: SandboxFleet) -> None:
    rc, out = ssh(fleet, "h2", f"stat -c %s /bup/bups/{P2}/conf/save_log.json")
    assert rc == 0 and int(out) > 60 * 10**6


def test_bup_server_answers_on_h1_at_the_inventory_port_and_none_listens_on_h4(
    fleet: SandboxFleet,
) -> None:
    servers = {s["name"]: s for s in tomllib.loads(fleet.inventory_path.read_text())["servers"]}
    with socket.create_connection((servers["h1"]["host"], servers["h1"]["port"]), timeout=3) as s:
        assert s.recv(100) == b"bup_server sandbox\n"
    assert fleet.hosts["h4"].bup_server_pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((servers["h4"]["host"], servers["h4"]["port"]), timeout=3)


def test_live_files_of_p4_on_h2_belong_to_the_project_uid(fleet: SandboxFleet) -> None:
    rc, out = ssh(fleet, "h2", f"find /projects/{P4} -printf '%U:%G\\n' | sort -u")
    uid = project_uid(P4)
    assert rc == 0 and out.split() == [f"{uid}:{uid}"]
    rc, out = ssh(fleet, "h3", f"ls /projects/{P4}")
    assert rc != 0  # h3's /projects is not mounted, so nothing was written there


def test_freeze_makes_ssh_connect_time_out_and_thaw_recovers(fleet: SandboxFleet) -> None:
    host = fleet.hosts["h2"]
    host.freeze()
    try:
        start = time.monotonic()
        with pytest.raises((paramiko.SSHException, OSError)):
            connect(fleet, "h2", banner_timeout=2)
        assert time.monotonic() - start < 3.5
    finally:
        host.thaw()
    rc, _ = ssh(fleet, "h2", "true")
    assert rc == 0


def test_a_hosts_proc_shows_only_its_own_processes_with_an_init_as_pid_1(
    fleet: SandboxFleet,
) -> None:
    rc, out = ssh(fleet, "h1", "for p in /proc/[0-9]*; do echo ${p#/proc/} $(cat $p/comm); done")
    seen = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert rc == 0 and seen["1"] == "python3"  # the host's init
    assert "bup_server" in seen.values() and "sshd" in seen.values()
    assert len(seen) < 20, f"h1's /proc shows other hosts' processes: {sorted(seen.values())}"
    h1, h2 = fleet.hosts["h1"], fleet.hosts["h2"]
    assert _ns(h1.init_pid, "pid") != _ns(h2.init_pid, "pid") != _ns("self", "pid")


def test_bup_server_runs_in_a_mount_namespace_of_its_own_with_a_private_tmp(
    fleet: SandboxFleet,
) -> None:
    """As a systemd unit with PrivateTmp=yes: a child mount namespace of the host's."""
    h1 = fleet.hosts["h1"]
    assert h1.bup_server_pid is not None
    assert _ns(h1.bup_server_pid, "mnt") not in (_ns(h1.sshd_pid, "mnt"), None)
    assert _ns(h1.bup_server_pid, "pid") == _ns(h1.sshd_pid, "pid")
    mine = Path(f"/proc/{h1.bup_server_pid}/root/tmp/only-bup-server-sees-this")
    mine.write_text("x")
    try:
        rc, _ = ssh(fleet, "h1", f"test -e /tmp/{mine.name}")
        assert rc == 1, "the host's /tmp and bup_server's are not the same"
        # The host's own mounts are there too: the repositories and /projects.
        assert Path(f"/proc/{h1.bup_server_pid}/root/bup/conf/bup_server_id").exists()
    finally:
        mine.unlink()


def test_freezing_the_sshd_stops_the_listener_and_thaw_lets_it_be_killed_later(
    tmp_path: Path,
) -> None:
    with SandboxFleet(tmp_path, _small_spec()) as f:
        host = f.hosts["a"]
        host.freeze()
        deadline = time.monotonic() + 5
        while _state(host.sshd_pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)  # a signal is delivered when the process is next scheduled
        assert _state(host.sshd_pid) == "T", "the listening sshd itself is stopped"
        host.thaw()
        assert ssh(f, "a", "true")[0] == 0
        host.freeze()
        host.kill_sshd()  # while frozen: the kill still ends it and is waited for
        assert not _alive(host.sshd_pid)
        host.start_sshd()
        assert ssh(f, "a", "true")[0] == 0


def test_host_runs_commands_in_its_own_namespace(fleet: SandboxFleet) -> None:
    proc = fleet.hosts["h1"].run(["cat", "/bup/conf/bup_server_id"])
    assert proc.stdout.strip() == fleet.server_id("h1")
    assert not Path("/bup/conf").exists()  # the root namespace's mount point stays empty


class _AnyCheck(BaseModel):
    model_config = ConfigDict(extra="allow")


def test_the_written_inventory_and_config_load_with_the_watchdog_readers(
    fleet: SandboxFleet,
) -> None:
    inventory = FileInventory(fleet.inventory_path).load()
    assert {s.name for s in inventory.servers.values()} == set(fleet.hosts)
    p3 = inventory.projects[P3]
    h1, h4 = fleet.server_id("h1"), fleet.server_id("h4")
    assert p3.master == h1 and p3.replicas == (h4,)
    assert p3.bup_last_save[h4] < p3.bup_last_save[h1]
    assert inventory.servers[h1].port == fleet.hosts["h1"].bup_server_port
    config = parse_config(
        tomllib.loads(fleet.config_path.read_text()),
        {"mount_sanity": _AnyCheck},
        base=fleet.config_path.parent,
    )
    assert config.inventory.file == fleet.inventory_path
    assert config.ssh.key_file == fleet.client_key


def _small_spec() -> FleetSpec:
    return FleetSpec(
        hosts=(HostSpec("a"), HostSpec("b", dc=1, port_mismatch=True)),
        projects=(ProjectSpec(DEMO_PROJECTS["P1"], "a", ("b",), saves=1, files=3),),
    )


def _ns(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _outside_pid(host_pid: int, init_pid: int) -> int:
    """The pid, as seen here, of the process a host calls ``host_pid`` (its NSpid's last field)."""
    for d in os.listdir("/proc"):
        if not d.isdigit() or _ns(d, "pid") != _ns(init_pid, "pid"):
            continue
        with open(f"/proc/{d}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        if int(nspid[-1]) == host_pid:
            return int(d)
    raise AssertionError(f"no process {host_pid} in the host's PID namespace")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def test_stop_leaves_no_process_of_the_fleet_behind(tmp_path: Path) -> None:
    f = SandboxFleet(tmp_path, _small_spec())
    f.start()
    a = f.hosts["a"]
    assert f.hosts["b"].inventory_port == f.hosts["b"].bup_server_port + 1  # type: ignore[operator]
    client = connect(f, "a")
    # A session whose command outlives stop(): a per-connection sshd in a session of its own.
    _, out, _ = client.exec_command("echo $$; exec sleep 300")
    sleeper = _outside_pid(int(out.readline()), a.init_pid)
    pids = [h.sshd_pid for h in f.hosts.values()] + [
        h.bup_server_pid or 0 for h in f.hosts.values()
    ]
    pids += [h.init_pid for h in f.hosts.values()]
    f.stop()
    client.close()
    assert not [p for p in pids if p and _alive(p)]
    assert not _alive(sleeper)
    for h in f.hosts.values():
        found = subprocess.run(["pgrep", "-f", str(h.sshd_config)], capture_output=True, text=True)
        assert found.stdout == ""
    assert a.sshd_pid  # recorded pids stay readable after stop
    f.stop()  # a second stop is harmless


def test_host_faults_kill_restart_and_replace_key_act_on_that_host(tmp_path: Path) -> None:
    with SandboxFleet(tmp_path, _small_spec()) as f:
        host = f.hosts["a"]
        host.stop_bup_server()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host.address, host.inventory_port), timeout=3)
        rc, _ = ssh(f, "a", shlex.join(host.bup_server_argv(daemon=True)))  # a restart over SSH
        port = host.read_bup_server_port()
        assert rc == 0 and port is not None
        with socket.create_connection((host.address, port), timeout=3) as s:
            assert s.recv(100) == b"bup_server sandbox\n"
        host.kill_sshd()
        with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
            connect(f, "a")
        host.start_sshd()  # back in the same namespace: /projects still holds the live files
        rc, out = ssh(f, "a", f"ls /projects/{DEMO_PROJECTS['P1']}")
        assert rc == 0 and "README.md" in out.split()
        host.replace_host_key()
        with pytest.raises(paramiko.BadHostKeyException):
            connect(f, "a")


def test_the_fallback_without_namespaces_builds_and_answers_ssh(tmp_path: Path) -> None:
    messages: list[str] = []
    with SandboxFleet(tmp_path, _small_spec(), use_namespaces=False, progress=messages.append) as f:
        assert not f.namespaces
        assert any("mount namespaces unavailable" in m for m in messages)
        b = f.hosts["b"]
        inventory: dict[str, Any] = tomllib.loads(f.inventory_path.read_text())
        entry = next(s for s in inventory["servers"] if s["name"] == "b")
        assert entry["bup_root"] == str(b.dir / "bup")
        assert entry["projects_root"] == str(b.dir / "projects")
        rc, out = ssh(f, "b", f"bup -d {entry['bup_root']}/bups/{DEMO_PROJECTS['P1']} ls master")
        assert rc == 0 and "latest" in out.split()
        rc, out = ssh(f, "b", "echo $HOME")
        assert out.strip() == str(b.home)
        assert "enabled = false" in f.config_path.read_text()


def test_scaled_spec_is_deterministic_and_balanced() -> None:
    spec = scaled_spec(4, 10, seed=7)
    assert spec == scaled_spec(4, 10, seed=7)
    assert spec != scaled_spec(4, 10, seed=8)
    held: dict[str, int] = {}
    for p in spec.projects:
        assert len(p.replicas) == 1 and p.replicas[0] != p.master
        for name in p.locations:
            held[name] = held.get(name, 0) + 1
    assert held == {"s01": 10, "s02": 10, "s03": 10, "s04": 10}


def test_a_spec_naming_an_unknown_host_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown hosts"):
        FleetSpec(
            hosts=(HostSpec("a"),), projects=(ProjectSpec(DEMO_PROJECTS["P1"], "a", ("zz",)),)
        )


def test_a_big_fleet_is_made_of_hard_linked_template_copies_that_fail_alone(tmp_path: Path) -> None:
    spec = scaled_spec(2, 34)  # 34 projects: more than are built one by one with real bup
    with SandboxFleet(tmp_path, spec) as f:
        first, second = spec.projects[0], spec.projects[2]
        assert first.master == second.master
        host = f.hosts[first.master]
        a, b = f.repo_path(host.name, first.project_id), f.repo_path(host.name, second.project_id)
        pack_a = sorted((a / "objects" / "pack").glob("*.pack"))[0]
        pack_b = b / "objects" / "pack" / pack_a.name
        if pack_b.exists():
            assert os.stat(pack_a).st_ino == os.stat(pack_b).st_ino
        assert os.stat(a / "refs/heads/master").st_ino != os.stat(b / "refs/heads/master").st_ino
        corrupt_newest_pack(a)
        for project_id, rc_ok in ((first.project_id, False), (second.project_id, True)):
            proc = host.run(["bup", "-d", f"/bup/bups/{project_id}", "ls", "master"])
            assert (proc.returncode == 0) is rc_ok
