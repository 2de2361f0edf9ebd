"""One sandbox storage host: its own sshd on a loopback address, in mount and PID namespaces.

A host is a small init (PID 1 of the host's PID namespace, it only reaps orphans) in a mount
namespace of its own with a fresh ``/proc``: on the host, ``/proc`` shows the host's processes only,
as on a real machine. sshd and bup_server are started in both namespaces (``nsenter``) as children
of that init, the way a service manager starts services, and ``run()`` enters them too. The
namespaces live as long as the init, so the sshd can be killed and restarted (a replaced host key)
and ``run()`` still works in between, and ``/projects`` keeps its tmpfs.
bup_server runs in a child mount namespace of the host with a private ``/tmp``, as a systemd unit
with ``PrivateTmp=yes`` does. ``sshd_pid`` and ``bup_server_pid`` are pids as seen from here (the
root PID namespace): SIGSTOP of ``sshd_pid`` freezes the host's listening sshd.
``stop()`` kills every process of the host: its init (which takes the PID namespace with it), the
sshd and its per-connection children, and anything whose command line names the host's directory.
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


def _ns(pid: int | str, kind: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _mnt_ns(pid: int | str) -> tuple[int, int] | None:
    return _ns(pid, "mnt")


def _child_of(parent: int, timeout: float = 10.0) -> int | None:
    """The pid of ``parent``'s (first) child, waiting for it to be forked; None if none came."""
    deadline = time.monotonic() + timeout
    while True:
        kids = sorted(p for p in _pids() if _ppid(p) == parent)
        if kids:
            return kids[0]
        if time.monotonic() >= deadline or not os.path.exists(f"/proc/{parent}"):
            return None
        time.sleep(0.005)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b") ")[2][:1] != b"Z"
    except OSError:
        return False


def _wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    """Wait (bounded) until none of ``pids`` runs any more."""
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.005)


# PID 1 of a host: reap every child, orphans included (a daemonised bup_server, a session whose
# sshd went away), so none stays a zombie. SIGCHLD is blocked and waited for, so none is missed.
# It never exits by itself (its end is the host's): stop() kills it.
INIT = """\
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    signal.sigtimedwait({signal.SIGCHLD}, 60)
"""

# Run from nsenter inside a host: start argv[1:] in a session of its own and print its pid (as the
# host sees it). This process then exits, so the command's parent becomes the host's init.
LAUNCH = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(2, 1)
    os.closerange(3, 1024)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as exc:
        print(f"cannot run {sys.argv[1]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
print(pid, flush=True)
"""


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
    address: str, port: int, alive: Callable[[], bool], log: Path, timeout: float
) -> None:
    """Poll until ``address:port`` sends an SSH banner; raise HostStartError with the log if not
    (at once when ``alive()`` says the sshd is gone)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise HostStartError(f"sshd for {address} exited; sshd.log:\n{_tail(log)}")
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
    init_pid: int = 0
    bup_server_pid: int | None = None
    bup_server_port: int | None = None
    _init: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _bup_server: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _ns_fd: int | None = field(default=None, repr=False)
    _ns_id: tuple[int, int] | None = field(default=None, repr=False)
    _pid_ns_fd: int | None = field(default=None, repr=False)
    _pid_ns_id: tuple[int, int] | None = field(default=None, repr=False)

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
        """The host's ``/projects`` seen from outside (via its init's ``/proc/PID/root``)."""
        if not self.namespaced:
            return self.dir / "projects"
        if self.init_pid and _mnt_ns(self.init_pid) == self._ns_id:
            return Path(f"/proc/{self.init_pid}/root/projects")
        raise RuntimeError(f"host {self.name} is not running: its /projects cannot be reached")

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
        if self.namespaced:  # a mount namespace of its own, as systemd's PrivateTmp=yes gives
            argv.append("--private-tmp")
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
        argv += ["--log", str(self.gate_log), "--archive-root", f"{self.bup_root}/archive"]
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

    def _setup_script(self, ready: Path) -> str:
        """The shell line that mounts the host's view, says so in ``ready``, then execs the init."""
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
        steps.append(f": > {q(str(ready))}")
        steps.append(f"exec {PYTHON} -c {q(INIT)} sandbox-init {q(self.name)}")
        return " && ".join(steps)

    def _start_init(self, timeout: float = 15.0) -> None:
        """Create the host's mount and PID namespaces (fresh /proc) with the init as PID 1; hold
        both namespaces by file descriptor."""
        ready = self.dir / "init.ready"
        ready.unlink(missing_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
        argv += ["--kill-child", "--mount-proc", "--", "/bin/sh", "-c", self._setup_script(ready)]
        log_path = self.dir / "init.log"
        with log_path.open("ab") as log:
            self._init = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self._init.poll() is not None or time.monotonic() > deadline:
                raise HostStartError(
                    f"host {self.name}: its namespaces were not set up (unshare status "
                    f"{self._init.poll()}); init.log:\n{_tail(log_path)}"
                )
            time.sleep(0.005)
        init = _child_of(self._init.pid)
        mnt, pid_ns = (_ns(init, "mnt"), _ns(init, "pid")) if init else (None, None)
        if not init or None in (mnt, pid_ns) or mnt == _mnt_ns("self"):
            raise HostStartError(f"host {self.name}: its init is not in namespaces of its own")
        self.init_pid = init
        self._ns_fd = os.open(f"/proc/{init}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._pid_ns_fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._ns_id, self._pid_ns_id = mnt, pid_ns

    def _outside_pid(self, host_pid: int) -> int | None:
        """The pid, as seen here, of the host's process ``host_pid`` (the last field of NSpid)."""
        for pid in _pids():
            if _ns(pid, "pid") != self._pid_ns_id:
                continue
            try:
                with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                    nspid = next((line for line in f if line.startswith("NSpid:")), "").split()
            except OSError:
                continue
            if nspid and nspid[-1] == str(host_pid):
                return pid
        return None

    def _spawn(self, argv: list[str], log: Path) -> tuple[int, subprocess.Popen[bytes] | None]:
        """Start ``argv`` on the host in the background, its output to ``log``; return its pid as
        seen here and, on a host without namespaces, its Popen (there it is our child).

        On a namespaced host the command is a child of the host's init, not of an ``nsenter``
        here: it outlives nothing of ours, and the init reaps it.
        """
        with log.open("ab") as out:
            if not self.namespaced:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
                return proc.pid, proc
            full, fds = self._enter_fds()
            done = subprocess.run(
                [*full, PYTHON, "-c", LAUNCH, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                pass_fds=fds,
                timeout=30,
                check=False,
            )
        said = done.stdout.decode("ascii", "replace").strip()
        pid = self._outside_pid(int(said)) if done.returncode == 0 and said.isdigit() else None
        if pid is None:
            raise HostStartError(
                f"host {self.name}: {argv[0]} could not be started in the host (status "
                f"{done.returncode}, said {said!r}); {log.name}:\n{_tail(log)}"
            )
        return pid, None

    def _alive(self, pid: int | None, proc: subprocess.Popen[bytes] | None) -> bool:
        """Whether the host's process runs (a pid of another, later process does not count)."""
        if proc is not None:
            return proc.poll() is None
        if not pid or self._pid_ns_id is None:
            return False
        return _running(pid) and _ns(pid, "pid") == self._pid_ns_id

    def launch_sshd(self) -> None:
        """Start the sshd (creating the host on first start, in the kept one after); do not wait."""
        if self.sshd_pid and self._alive(self.sshd_pid, self._sshd):
            raise RuntimeError(f"sshd of host {self.name} is already running")
        if self.namespaced and self._ns_fd is None:
            self._start_init()
        argv = [SSHD, "-D", "-e", "-f", str(self.sshd_config)]
        self.sshd_pid, self._sshd = self._spawn(argv, self.dir / "sshd.log")

    def wait_sshd(self, timeout: float = 15.0) -> None:
        """Wait for the SSH banner."""
        pid, proc = self.sshd_pid, self._sshd
        wait_for_banner(
            self.address,
            SSH_PORT,
            lambda: self._alive(pid, proc),
            self.dir / "sshd.log",
            timeout,
        )

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
        if not self.sshd_pid or not self._alive(self.sshd_pid, self._sshd):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.sshd_pid, signal.SIGKILL)
        if self._sshd is not None:
            self._sshd.wait(timeout=10)
        else:
            _wait_gone({self.sshd_pid})

    def replace_host_key(self) -> str:
        """Give the host a new host key and restart its sshd: known_hosts no longer matches it."""
        self.kill_sshd()
        pub = self.generate_host_key()
        self.start_sshd()
        return pub

    # ------------------------------------------------------------ bup_server stand-in

    def _enter_fds(self) -> tuple[list[str], tuple[int, ...]]:
        """The ``nsenter`` prefix into the host's mount and PID namespaces, and the fds to pass."""
        if self._ns_fd is None or self._pid_ns_fd is None:
            raise RuntimeError(f"host {self.name} has not been started")
        enter = ["nsenter", f"--mount=/proc/self/fd/{self._ns_fd}"]
        enter += [f"--pid=/proc/self/fd/{self._pid_ns_fd}", "--"]
        return enter, (self._ns_fd, self._pid_ns_fd)

    def _in_host(self, argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        """``argv`` run inside the host, and the fds it needs passed.

        The command dies with its ``nsenter`` (parent death signal): killing what we started,
        e.g. on a timeout, kills the command, not only the ``nsenter`` in front of it.
        """
        if not self.namespaced:
            return argv, ()
        enter, fds = self._enter_fds()
        return [*enter, "setpriv", "--pdeathsig", "KILL", "--", *argv], fds

    def enter_argv(self, argv: list[str]) -> list[str]:
        """``argv`` as a command run from here inside the host (its mount and PID namespaces),
        for callers that cannot pass file descriptors; it dies with its ``nsenter``."""
        if not self.namespaced:
            return argv
        if not self.init_pid:
            raise RuntimeError(f"host {self.name} has not been started")
        enter = ["nsenter", f"--target={self.init_pid}", "--mount", "--pid", "--"]
        return [*enter, "setpriv", "--pdeathsig", "KILL", "--", *argv]

    def start_bup_server(self, timeout: float = 10.0) -> int:
        """Start the bup_server stand-in inside the host; return the port it listens on."""
        if self.bup_server_pid and self._alive(self.bup_server_pid, self._bup_server):
            raise RuntimeError(f"bup_server of host {self.name} is already running")
        self.port_file.unlink(missing_ok=True)
        pid, proc = self._spawn(self.bup_server_argv(), self.dir / "bup_server.log")
        self._bup_server = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = (
                self.port_file.read_text(encoding="ascii").strip()
                if self.port_file.exists()
                else ""
            )
            if text.isdigit():
                self.bup_server_pid, self.bup_server_port = pid, int(text)
                return self.bup_server_port
            if not self._alive(pid, proc):
                break
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
        self._bup_server = None
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

        _wait_gone(kill_processes(find))  # gone: its port refuses connections when we return
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
        own_pid_ns = _ns("self", "pid")
        ppid_of: dict[int, int] = {}
        found: set[int] = set()
        for pid in _pids():
            ppid = _ppid(pid)
            if ppid is not None:
                ppid_of[pid] = ppid
            if (
                (self._ns_id is not None and self._ns_id != own_ns and _mnt_ns(pid) == self._ns_id)
                or (
                    self._pid_ns_id is not None
                    and self._pid_ns_id != own_pid_ns
                    and _ns(pid, "pid") == self._pid_ns_id
                )
                or marker in _cmdline(pid)
            ):
                found.add(pid)
        for proc in (self._init, self._sshd, self._bup_server):
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
        _wait_gone(kill_processes(self._find_mine))
        for proc in (self._init, self._sshd, self._bup_server):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self._bup_server = self._init = None
        self.bup_server_pid = None
        for fd in (self._ns_fd, self._pid_ns_fd):
            if fd is not None:
                os.close(fd)
        self._ns_fd = self._pid_ns_fd = None
        # The namespaces are gone; their inode numbers may be reused by others later.
        self._ns_id = self._pid_ns_id = None
