"""One sandbox storage host: its own sshd on a loopback address, in its own mount namespace.

The host's mount namespace is kept alive by an open file descriptor on ``/proc/PID/ns/mnt``, so the
sshd can be killed and restarted (a replaced host key) and ``run()`` still works in between, and
``/projects`` keeps its tmpfs. ``stop()`` kills every process of the host: the sshd, its
per-connection children (which sit in sessions of their own), anything in the host's namespace, and
anything whose command line names the host's directory (a daemonised ``bup_server``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bup_watchdog.sandbox.spec import HostSpec

SSHD = "/usr/sbin/sshd"
PYTHON = "/usr/bin/python3"
SSH_PORT = 22


class HostStartError(RuntimeError):
    """A sandbox host's sshd or bup_server did not come up; the message has its log's tail."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The name field may hold spaces and parentheses: the fields we need follow the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _mnt_ns(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ancestors_of_self() -> set[int]:
    out = {os.getpid()}
    pid: int | None = os.getpid()
    while pid and pid > 1:
        pid = _ppid(pid)
        if pid:
            out.add(pid)
    return out


def kill_processes(find: Callable[[], set[int]]) -> set[int]:
    """SIGSTOP what ``find`` returns until nothing new appears, then SIGKILL it all.

    Stopping first means nothing found can fork a child we would miss. Never touches this
    process or its ancestors. Returns the pids signalled.
    """
    protected = _ancestors_of_self() | {1}
    seen: set[int] = set()
    for _ in range(50):
        new = find() - seen - protected
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        seen |= new
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return seen


def wait_for_banner(
    address: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Poll until ``address:port`` sends an SSH banner; raise HostStartError with the log if not."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HostStartError(
                f"sshd for {address} exited with status {proc.returncode}; sshd.log:\n{_tail(log)}"
            )
        try:
            with socket.create_connection((address, port), timeout=1.0) as s:
                s.settimeout(1.0)
                if s.recv(64).startswith(b"SSH-2.0"):
                    return
                last = "no SSH banner"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.02)
    raise HostStartError(
        f"sshd for {address}:{port} did not answer within {timeout:.0f} s ({last}); "
        f"sshd.log:\n{_tail(log)}"
    )


@dataclass(eq=False)
class SandboxHost:
    """A running sandbox host and the handles to fault it (freeze, kill, new key, no bup_server)."""

    name: str
    server_id: str
    address: str
    dc: int
    dir: Path
    spec: HostSpec
    namespaced: bool
    fleet_root: Path
    inventory_port: int = 0
    sshd_pid: int = 0
    bup_server_pid: int | None = None
    bup_server_port: int | None = None
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _bup_server: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _ns_fd: int | None = field(default=None, repr=False)
    _ns_id: tuple[int, int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------ paths

    @property
    def bups_dir(self) -> Path:
        """The repositories, as seen from outside the host's namespace."""
        return self.dir / "bups" if self.namespaced else self.dir / "bup" / "bups"

    @property
    def bup_dir(self) -> Path:
        """The host's ``/bup`` (conf/ and the bups mount point), seen from outside."""
        return self.dir / "bup"

    @property
    def bup_root(self) -> str:
        """``/bup`` as the host itself (and the inventory) names it."""
        return "/bup" if self.namespaced else str(self.dir / "bup")

    @property
    def projects_root(self) -> str:
        """``/projects`` as the host itself (and the inventory) names it."""
        return "/projects" if self.namespaced else str(self.dir / "projects")

    @property
    def projects_dir_outside(self) -> Path:
        """The host's ``/projects`` seen from outside (via ``/proc/PID/root`` when namespaced)."""
        if not self.namespaced:
            return self.dir / "projects"
        for pid in (self.sshd_pid, self.bup_server_pid):
            if pid and _mnt_ns(pid) == self._ns_id:
                return Path(f"/proc/{pid}/root/projects")
        raise RuntimeError(f"no process of host {self.name} is running to reach its /projects")

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def bup_server_script(self) -> Path:
        return self.dir / "bin" / "bup_server"

    @property
    def port_file(self) -> Path:
        """Where the bup_server stand-in writes its port (outside view)."""
        return self.bup_dir / "conf" / "bup_server.port"

    def bup_server_argv(self, *, daemon: bool = False) -> list[str]:
        """The command that starts this host's bup_server stand-in, run on the host itself.

        With ``daemon=True`` it detaches once listening: a restart command to run over SSH.
        """
        argv = [PYTHON, str(self.bup_server_script), "--bup-root", self.bup_root]
        argv += ["--host", self.address, "--port", "0"]
        argv += ["--port-file", f"{self.bup_root}/conf/bup_server.port"]
        return [*argv, "--daemon"] if daemon else argv

    # ------------------------------------------------------------ files

    def write_sshd_config(self) -> None:
        """Write this host's sshd_config (own address, host key and pid file; key-only login)."""
        keys = (
            "/root/.ssh/authorized_keys"
            if self.namespaced
            else str(self.home / ".ssh/authorized_keys")
        )
        lines = [
            f"ListenAddress {self.address}:{SSH_PORT}",
            f'HostKey "{self.host_key}"',
            f'PidFile "{self.dir / "sshd.pid"}"',
            f'AuthorizedKeysFile "{keys}"',
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "MaxSessions 64",
            "MaxStartups 200",
            "LogLevel ERROR",
            "UseDNS no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
        ]
        if not self.namespaced:
            # No clean /root to mount: point HOME at the host's own home so no start-up files run.
            lines.append(f'SetEnv HOME="{self.home}"')
        self.sshd_config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def gate_log(self) -> Path:
        """Where the host's bupwatch-ssh-gate logs its decisions (``HostSpec.ssh_gate``)."""
        return self.dir / "ssh-gate.log"

    def authorized_key(self, pub: str) -> str:
        """The watchdog key's ``authorized_keys`` line. With ``spec.ssh_gate`` it is restricted
        to bupwatch-ssh-gate (copied to ``bin/``), as the README's recipe installs it."""
        if not self.spec.ssh_gate:
            return pub
        from bup_watchdog.hostside import ssh_gate

        gate = self.dir / "bin" / "bupwatch-ssh-gate"
        gate.write_bytes(Path(ssh_gate.__file__).read_bytes())
        gate.chmod(0o755)
        argv = [str(gate), "--bup-root", self.bup_root, "--projects-root", self.projects_root]
        argv += ["--restart", shlex.join(self.bup_server_argv(daemon=True))]
        argv += ["--log", str(self.gate_log)]
        command = shlex.join(argv).replace("\\", "\\\\").replace('"', '\\"')
        return f'restrict,command="{command}" {pub}'

    def generate_host_key(self) -> str:
        """Create a fresh ed25519 host key; return the public key (``ssh-ed25519 AAAA…``)."""
        for p in (self.host_key, self.host_key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                self.name,
                "-f",
                str(self.host_key),
            ],
            check=True,
            capture_output=True,
        )
        pub = self.dir / "ssh_host_ed25519_key.pub"
        return " ".join(pub.read_text(encoding="ascii").split()[:2])

    # ------------------------------------------------------------ sshd

    def _setup_script(self) -> str:
        """The shell line that mounts the host's view and execs sshd inside the new namespace."""
        q = shlex.quote
        steps = [
            f"mount --bind {q(str(self.bup_dir))} /bup",
            f"mount --bind {q(str(self.bups_dir))} /bup/bups",
        ]
        root = self.fleet_root
        if root == Path("/root") or Path("/root") in root.parents:
            # A clean home over /root would hide the fleet itself: show it again inside the home.
            inside = self.home / root.relative_to("/root")
            inside.mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind {q(str(root))} {q(str(inside))}")
            steps.append(f"mount --rbind {q(str(self.home))} /root")
        else:
            steps.append(f"mount --bind {q(str(self.home))} /root")
        if self.spec.projects_mounted:
            steps.append(
                f"mount -t tmpfs -o size=256m,mode=755 sandbox-projects-{q(self.name)} /projects"
            )
        steps.append(f"exec {SSHD} -D -e -f {q(str(self.sshd_config))}")
        return " && ".join(steps)

    def launch_sshd(self) -> None:
        """Start the sshd (in a new namespace, or in the kept one after a restart); do not wait."""
        if self._sshd is not None and self._sshd.poll() is None:
            raise RuntimeError(f"sshd of host {self.name} is already running")
        pass_fds: tuple[int, ...] = ()
        if not self.namespaced:
            argv = [SSHD, "-D", "-e", "-f", str(self.sshd_config)]
        elif self._ns_fd is None:
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                self._setup_script(),
            ]
        else:
            argv = ["nsenter", f"--mount=/proc/self/fd/{self._ns_fd}", "--"]
            argv += [SSHD, "-D", "-e", "-f", str(self.sshd_config)]
            pass_fds = (self._ns_fd,)
        with (self.dir / "sshd.log").open("ab") as log:
            self._sshd = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self.sshd_pid = self._sshd.pid

    def wait_sshd(self, timeout: float = 15.0) -> None:
        """Wait for the SSH banner; on first start, take hold of the host's mount namespace."""
        assert self._sshd is not None
        wait_for_banner(self.address, SSH_PORT, self._sshd, self.dir / "sshd.log", timeout)
        if self.namespaced and self._ns_fd is None:
            ns = _mnt_ns(self.sshd_pid)
            if ns is None or ns == _mnt_ns("self"):
                raise HostStartError(
                    f"sshd of host {self.name} is not in a mount namespace of its own"
                )
            self._ns_fd = os.open(f"/proc/{self.sshd_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            self._ns_id = ns

    def start_sshd(self, timeout: float = 15.0) -> None:
        """Start the sshd and wait until it answers."""
        self.launch_sshd()
        self.wait_sshd(timeout)

    def freeze(self) -> None:
        """SIGSTOP the listening sshd: new connections then hang before the banner."""
        os.kill(self.sshd_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the listening sshd."""
        os.kill(self.sshd_pid, signal.SIGCONT)

    def kill_sshd(self) -> None:
        """Kill the listening sshd (connections are then refused); sessions already open live on."""
        proc = self._sshd
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def replace_host_key(self) -> str:
        """Give the host a new host key and restart its sshd: known_hosts no longer matches it."""
        self.kill_sshd()
        pub = self.generate_host_key()
        self.start_sshd()
        return pub

    # ------------------------------------------------------------ bup_server stand-in

    def _in_host(self, argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        if not self.namespaced:
            return argv, ()
        if self._ns_fd is None:
            raise RuntimeError(f"host {self.name} has not been started")
        return ["nsenter", f"--mount=/proc/self/fd/{self._ns_fd}", "--", *argv], (self._ns_fd,)

    def start_bup_server(self, timeout: float = 10.0) -> int:
        """Start the bup_server stand-in inside the host; return the port it listens on."""
        if self._bup_server is not None and self._bup_server.poll() is None:
            raise RuntimeError(f"bup_server of host {self.name} is already running")
        self.port_file.unlink(missing_ok=True)
        argv, fds = self._in_host(self.bup_server_argv())
        with (self.dir / "bup_server.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=fds,
            )
        self._bup_server = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = (
                self.port_file.read_text(encoding="ascii").strip()
                if self.port_file.exists()
                else ""
            )
            if text.isdigit():
                self.bup_server_pid, self.bup_server_port = proc.pid, int(text)
                return self.bup_server_port
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        raise HostStartError(
            f"bup_server stand-in of host {self.name} did not start; bup_server.log:\n"
            f"{_tail(self.dir / 'bup_server.log')}"
        )

    def read_bup_server_port(self) -> int | None:
        """The port in the host's port file (e.g. after a restart over SSH), or None."""
        try:
            text = self.port_file.read_text(encoding="ascii").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def stop_bup_server(self) -> None:
        """Stop every bup_server of this host (the one we started and any started over SSH)."""
        marker = str(self.bup_server_script).encode()

        def find() -> set[int]:
            return {p for p in _pids() if marker in _cmdline(p)}

        kill_processes(find)
        if self._bup_server is not None:
            self._bup_server.wait(timeout=10)
            self._bup_server = None
        self.bup_server_pid = self.bup_server_port = None
        self.port_file.unlink(missing_ok=True)

    # ------------------------------------------------------------ commands

    def run(
        self,
        argv: list[str],
        *,
        input: str | None = None,
        timeout: float = 120.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host's mount namespace (``nsenter``), no shell, text output."""
        full, fds = self._in_host(argv)
        return subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            pass_fds=fds,
        )

    # ------------------------------------------------------------ teardown

    def _find_mine(self) -> set[int]:
        """Every process of this host: tracked pids, their descendants, namespace members, and
        anything naming the host's directory on its command line."""
        marker = (str(self.dir) + "/").encode()
        own_ns = _mnt_ns("self")
        ppid_of: dict[int, int] = {}
        found: set[int] = set()
        for pid in _pids():
            ppid = _ppid(pid)
            if ppid is not None:
                ppid_of[pid] = ppid
            if (
                self._ns_id is not None and self._ns_id != own_ns and _mnt_ns(pid) == self._ns_id
            ) or marker in _cmdline(pid):
                found.add(pid)
        for proc in (self._sshd, self._bup_server):
            if proc is not None and proc.poll() is None:
                found.add(proc.pid)
        children: dict[int, list[int]] = {}
        for pid, ppid in ppid_of.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def stop(self) -> None:
        """Kill every process of this host and release its namespace; safe to call twice."""
        kill_processes(self._find_mine)
        for proc in (self._sshd, self._bup_server):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self._bup_server = None
        self.bup_server_pid = None
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None
        # The namespace is gone; its inode number may be reused by another one later.
        self._ns_id = None
