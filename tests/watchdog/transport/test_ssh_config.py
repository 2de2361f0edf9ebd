"""[ssh] config_file: hosts reached as ``ssh HOST`` would, bastions (ProxyJump) included.

The sandbox bastion: s2's sshd runs in a network namespace of its own, which nothing but s1's
sessions can reach (s1's sshd is socket-activated in the root namespace, ``sshd -i`` per
connection as Debian's ssh.socket does, its sessions in s2's network). A direct connection to s2
is refused for real; through s1 it works.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import SshConfig
from bup_watchdog.config_load import file_problems, load_config
from bup_watchdog.errors import HostKeyError, HostUnreachable, LocalFault
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Server
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.hosts import SSH_PORT, SSHD, SandboxHost
from bup_watchdog.transport.ssh import SshTransport
from bup_watchdog.transport.ssh_config import Hop, Route, resolve
from support.fleet_template import CopiedReposFleet, RepoTemplates

# ------------------------------------------------------------------ which value wins (no hosts)

SERVER = Server(
    "5c7a2f1e-1111-4c1d-9a0b-0000000000aa",
    "10.0.0.9",
    7000,
    ssh_host="store1",
    ssh_port=2200,
    ssh_user="inventory-user",
    name="store1",
)


def ssh_with(tmp_path: Path, text: str, **extra: object) -> SshConfig:
    path = tmp_path / "ssh_config"
    path.write_text(text, encoding="utf-8")
    return SshConfig(config_file=path, **extra)  # type: ignore[arg-type]


def test_without_a_config_file_the_inventory_says_where_and_as_whom() -> None:
    route = resolve(SERVER, SshConfig())
    assert route == Route(Hop("store1", "store1", 2200, "inventory-user"))


def test_what_the_file_sets_for_the_host_wins_over_the_inventory(tmp_path: Path) -> None:
    ssh = ssh_with(
        tmp_path,
        "Host store1\n  HostName 10.1.0.1\n  Port 2222\n  User ops\n  IdentityFile /k/store\n"
        "Host *\n  User nobody-else\n  IdentityFile /k/all\n",
        key_file=Path("/k/watchdog"),
    )
    assert resolve(SERVER, ssh) == Route(
        Hop("store1", "10.1.0.1", 2222, "ops", (Path("/k/store"), Path("/k/all")))
    )


def test_the_inventory_applies_where_the_file_is_silent(tmp_path: Path) -> None:
    ssh = ssh_with(tmp_path, "Host other\n  User ops\n")
    assert resolve(SERVER, ssh) == Route(Hop("store1", "store1", 2200, "inventory-user"))


def test_proxyjump_hops_are_resolved_through_the_file_outermost_first(tmp_path: Path) -> None:
    ssh = ssh_with(
        tmp_path,
        "Host store1\n  ProxyJump inner,admin@edge:2022\n"
        "Host inner\n  HostName 10.0.0.2\n  ProxyJump outer\n"
        "Host edge\n  HostName 192.0.2.7\n  User ignored\n  Port 1\n"
        "Host outer\n  HostName 198.51.100.1\n  User jumper\n",
        user="bupwatch",
    )
    route = resolve(SERVER, ssh)
    assert route.jumps == (
        Hop("outer", "198.51.100.1", 22, "jumper"),
        Hop("inner", "10.0.0.2", 22, "bupwatch"),
        Hop("edge", "192.0.2.7", 2022, "admin"),
    ), "user@host:port in ProxyJump wins over the jump host's block, as with ssh -J"
    assert route.target == Hop("store1", "store1", 2200, "inventory-user")


def test_a_proxyjump_loop_is_the_watchdogs_own_fault(tmp_path: Path) -> None:
    ssh = ssh_with(
        tmp_path, "Host store1\n  ProxyJump a\nHost a\n  ProxyJump b\nHost b\n  ProxyJump a\n"
    )
    with pytest.raises(LocalFault, match="more than 8 jump hosts") as info:
        resolve(SERVER, ssh)
    assert info.value.kind == "ssh_config"


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("Host x\n  User a\nInclude config.d/*\n", "line 3: Include is not supported"),
        ('Match host store1 exec "true"\n  User a\n', "line 1: Match exec is not supported"),
        ("Host store1\n  ProxyCommand nc %h %p\n", "gives store1 a ProxyCommand"),
    ],
)
def test_what_would_run_a_command_or_be_skipped_silently_is_refused(
    tmp_path: Path, text: str, refused: str
) -> None:
    with pytest.raises(LocalFault, match=refused):
        resolve(SERVER, ssh_with(tmp_path, text))


def test_a_missing_config_file_fails_the_connection_as_the_watchdogs_fault(tmp_path: Path) -> None:
    transport = SshTransport(SERVER, SshConfig(config_file=tmp_path / "nope"))
    with pytest.raises(LocalFault, match=r"SSH config file .*nope does not exist") as info:
        transport.connect()
    assert info.value.kind == "ssh_config"
    assert transport.label == "store1 (store1:2200)", "labelled as the inventory has it"


def test_config_check_names_an_unreadable_or_refused_ssh_config_file(tmp_path: Path) -> None:
    missing = file_problems({"ssh": {"config_file": "nope"}}, tmp_path)
    assert any(p.startswith("At 'ssh.config_file':") and "does not exist" in p for p in missing)
    (tmp_path / "ssh_config").write_text("Include other\n")
    refused = file_problems({"ssh": {"config_file": "ssh_config"}}, tmp_path)
    assert any("line 1: Include is not supported" in p for p in refused)


# ------------------------------------------------------------------ a bastion in the sandbox


class Bastion:
    """s2 in a network of its own; s1 a bastion whose sessions live in that network."""

    def __init__(self, fleet: SandboxFleet) -> None:
        self.fleet = fleet
        self.jump: SandboxHost = fleet.hosts["s1"]
        self.target: SandboxHost = fleet.hosts["s2"]
        self.net = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--",
                "/bin/sh",
                "-c",
                "ip link set lo up && echo up && exec sleep infinity",
            ],
            stdout=subprocess.PIPE,
        )
        assert self.net.stdout is not None and self.net.stdout.readline() == b"up\n"
        self.netns = f"/proc/{self.net.pid}/ns/net"
        self.sessions: list[subprocess.Popen[bytes]] = []
        self.target_sshd: subprocess.Popen[bytes] | None = None
        self.listener: socket.socket | None = None
        self.acceptor: threading.Thread | None = None
        self.target.kill_sshd()
        self.start_target()
        self.jump.kill_sshd()
        self.start_jump()

    def _in_private_network(self, host: SandboxHost, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--", *host.enter_argv(argv)]

    def start_target(self) -> None:
        """s2's sshd, in the private network only."""
        log = (self.target.dir / "sshd-private.log").open("ab")
        argv = [SSHD, "-D", "-e", "-f", str(self.target.sshd_config)]
        self.target_sshd = subprocess.Popen(
            self._in_private_network(self.target, argv), stdout=log, stderr=log
        )
        probe = (
            "import socket, sys; s = socket.create_connection((sys.argv[1], 22), 1); "
            "s.settimeout(1); s.recv(8)"
        )
        deadline = time.monotonic() + 15
        while subprocess.run(
            [
                "nsenter",
                f"--net={self.netns}",
                "--",
                sys.executable,
                "-c",
                probe,
                self.target.address,
            ],
            capture_output=True,
        ).returncode:
            assert time.monotonic() < deadline, "s2's sshd did not answer in its network"
            time.sleep(0.05)

    def stop_target(self) -> None:
        if self.target_sshd is not None:
            self.target_sshd.kill()
            self.target_sshd.wait()
            self.target_sshd = None

    def start_jump(self) -> None:
        """Accept on s1's address here; each connection's ``sshd -i`` runs in s2's network."""
        self.listener = socket.create_server((self.jump.address, SSH_PORT))
        listener = self.listener
        argv = [SSHD, "-i", "-e", "-f", str(self.jump.sshd_config)]
        log = (self.jump.dir / "sshd-inetd.log").open("ab")

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    self.sessions.append(
                        subprocess.Popen(
                            self._in_private_network(self.jump, argv),
                            stdin=conn.fileno(),
                            stdout=conn.fileno(),
                            stderr=log,
                        )
                    )

        self.acceptor = threading.Thread(target=accept, daemon=True)
        self.acceptor.start()

    def stop_jump(self) -> None:
        if self.listener is not None:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
            self.listener.close()
            self.listener = None
            if self.acceptor is not None:
                self.acceptor.join(timeout=10)
        for proc in self.sessions:
            proc.kill()
            proc.wait()
        self.sessions.clear()

    def close(self) -> None:
        self.stop_jump()
        self.stop_target()
        self.net.kill()
        self.net.wait()

    def write_ssh_config(self, path: Path) -> Path:
        """The operator's file: s2 through the bastion, logins with the key named here only."""
        key = self.fleet.root / "client" / "id_ed25519"
        path.write_text(
            f"Host bastion\n  HostName {self.jump.address}\n  User root\n  IdentityFile {key}\n"
            f"Host {self.target.address}\n  ProxyJump bastion\n  IdentityFile {key}\n",
            encoding="utf-8",
        )
        return path


@pytest.fixture(scope="module")
def bastion(
    tmp_path_factory: pytest.TempPathFactory, repo_templates: RepoTemplates
) -> Iterator[Bastion]:
    from conftest import scratch_spec  # tests/conftest.py

    root = tmp_path_factory.mktemp("bastion") / "fleet"
    with CopiedReposFleet(root, scratch_spec(), repo_templates) as fleet:
        b = Bastion(fleet)
        try:
            yield b
        finally:
            b.close()


def target_transport(bastion: Bastion, tmp_path: Path, **ssh: object) -> SshTransport:
    config = load_config(bastion.fleet.config_path, settings_models())
    config.ssh.config_file = bastion.write_ssh_config(tmp_path / "ssh_config")
    config.ssh.key_file = None  # the file's IdentityFile logs in
    for key, value in ssh.items():
        setattr(config.ssh, key, value)
    assert config.inventory.file is not None
    server = FileInventory(config.inventory.file).load().servers[bastion.fleet.server_id("s2")]
    return SshTransport(server, config.ssh)


def test_the_host_behind_the_bastion_refuses_direct_connections_and_answers_through_it(
    bastion: Bastion, tmp_path: Path
) -> None:
    direct = target_transport(bastion, tmp_path, config_file=None)
    with pytest.raises(HostUnreachable, match="connection refused"):
        direct.connect()
    t = target_transport(bastion, tmp_path)
    try:
        started = time.monotonic()
        out = t.run(["cat", "/bup/conf/bup_server_id"])
        elapsed = time.monotonic() - started
        again = t.run(["true"])
        assert out.stdout.decode().strip() == bastion.fleet.server_id("s2")
        assert again.returncode == 0 and t.sessions_opened == 2, "one connection, reused"
        assert t.label == f"s2 ({bastion.target.address}:22 via {bastion.jump.address})"
        (jump,) = t._jumps
        sock = jump.get_transport().sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        print(f"first command through the bastion, connections included: {elapsed:.3f} s")
    finally:
        t.close()


def test_the_jump_hosts_key_is_checked_against_the_same_known_hosts(
    bastion: Bastion, tmp_path: Path
) -> None:
    known = (bastion.fleet.root / "client" / "known_hosts").read_text().splitlines()
    without_jump = tmp_path / "no_jump_known_hosts"
    without_jump.write_text(
        "".join(f"{k}\n" for k in known if not k.startswith(f"{bastion.jump.address} "))
    )
    t = target_transport(bastion, tmp_path, known_hosts=without_jump)
    with pytest.raises(
        HostKeyError, match=f"jump host root@{bastion.jump.address}:22: host key is not in"
    ):
        t.connect()
    without_target = tmp_path / "no_target_known_hosts"
    without_target.write_text(
        "".join(f"{k}\n" for k in known if not k.startswith(f"{bastion.target.address} "))
    )
    t = target_transport(bastion, tmp_path, known_hosts=without_target)
    with pytest.raises(HostKeyError) as info:
        t.connect()
    assert "jump host" not in str(info.value) and "host key is not in" in str(info.value)


def test_a_target_the_bastion_cannot_reach_is_reported_naming_the_bastion(
    bastion: Bastion, tmp_path: Path
) -> None:
    bastion.stop_target()
    try:
        with pytest.raises(HostUnreachable) as info:
            target_transport(bastion, tmp_path).connect()
    finally:
        bastion.start_target()
    assert str(info.value) == (
        f"s2 ({bastion.target.address}:22 via {bastion.jump.address}): jump host "
        f"root@{bastion.jump.address}:22 could not connect to {bastion.target.address}:22 "
        "(Connect failed)"
    )


def test_a_bastion_that_is_down_is_named_in_the_error(bastion: Bastion, tmp_path: Path) -> None:
    bastion.stop_jump()
    try:
        with pytest.raises(
            HostUnreachable, match=f"jump host root@{bastion.jump.address}:22: connection refused"
        ):
            target_transport(bastion, tmp_path).connect()
    finally:
        bastion.start_jump()


def test_a_sweep_reaches_the_host_behind_the_bastion_only_with_the_ssh_config(
    bastion: Bastion, tmp_path: Path
) -> None:
    fleet = bastion.fleet
    ssh_config = bastion.write_ssh_config(tmp_path / "ssh_config")
    text = fleet.config_path.read_text(encoding="utf-8")
    configs = {}
    for name, ssh in (("direct", ""), ("bastion", f'config_file = "{ssh_config}"\n')):
        # Beside the fleet's config (its relative paths hold), each with a state of its own.
        path = configs[name] = fleet.root / f"config-{name}.toml"
        own = text.replace('directory = "state"', f'directory = "state-{name}"')
        path.write_text(own.replace("[ssh]\n", f"[ssh]\n{ssh}", 1), encoding="utf-8")

    def sweep(config: Path) -> tuple[int, dict[str, Any]]:
        argv = [sys.executable, "-m", "bup_watchdog.cli", "check", "-c", str(config)]
        proc = subprocess.run(
            [*argv, "--format", "json"], capture_output=True, text=True, timeout=180
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    code, direct = sweep(configs["direct"])
    s2 = fleet.server_id("s2")
    assert code == 2, direct
    assert direct["hosts"][s2]["probed"] is False
    assert any(
        f["server_id"] == s2 and f["check"] == "reachability" and "refused" in f["message"]
        for f in direct["findings"]
    ), direct["findings"]
    code, through = sweep(configs["bastion"])
    assert code == 0, through
    assert through["hosts"][s2]["probed"] is True
    # The sessions run in the private network, the bup_servers listen in the root one: the probe
    # sees no listening socket of theirs, which reachability reports as informational only.
    codes = {(f["code"], f["severity"]) for f in through["findings"]}
    assert codes <= {("bup_server_not_seen", "ok")}, through["findings"]


def test_a_frozen_bastion_is_given_up_on_within_the_banner_timeout_and_named(
    bastion: Bastion, tmp_path: Path
) -> None:
    bastion.stop_jump()
    held: list[socket.socket] = []
    frozen = socket.create_server((bastion.jump.address, SSH_PORT))  # accepts, never answers
    frozen.settimeout(10)

    def hold() -> None:
        with contextlib.suppress(OSError):
            held.append(frozen.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(
            HostUnreachable,
            match=f"jump host root@{bastion.jump.address}:22: sshd accepted the connection but "
            "sent no SSH banner within 1 s",
        ):
            target_transport(bastion, tmp_path, banner_timeout=1.0).connect()
    finally:
        frozen.close()
        for conn in held:
            conn.close()
        bastion.start_jump()
    assert time.monotonic() - started < 3.0
