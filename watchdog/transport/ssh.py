"""The single SSH seam (paramiko): strict host keys, bounded waits, plain-sentence errors.

One connection per host is opened lazily and reused for every command of a sweep. TCP_NODELAY is set
on the socket we open ourselves: without it each command over the connection costs ~44 ms of Nagle
delay (FACTS.md: 100 commands, 4.41 s vs 0.28 s).

Every command runs on the host under coreutils ``timeout``, one second longer than the watchdog
waits for it: closing an SSH channel does not stop the remote command, so without it a repair's
rsync that the watchdog gave up on would go on writing after its lease was released. ``run`` (the
repairs' commands) also waits for the host to report the command's end after a timeout, so that
when it raises the command is gone.
"""

from __future__ import annotations

import errno
import os
import selectors
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
from paramiko.common import OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
from paramiko.pkey import UnknownKeyType

from bup_watchdog.config import SshConfig
from bup_watchdog.errors import (
    CommandTimeout,
    HostKeyError,
    HostUnreachable,
    LocalFault,
    ProbeError,
    TransportError,
)
from bup_watchdog.model import Server
from bup_watchdog.transport.base import CommandResult
from bup_watchdog.transport.ssh_config import Hop, resolve

_STDERR_KEEP = 64 * 1024
# stdout is taken from the channel's buffer in pieces of up to this much: a sweep's probe prints
# megabytes, and every piece costs a wake-up, a select and a recv.
_CHUNK = 1 << 20
# The longest line a streamed command may print: the probe's longest records (a host's known
# state bitmaps, a repository's error list) are well below it; a host that prints one endless
# line is cut off here, not when max_output_bytes (256 MB by default) is buffered and copied.
_MAX_LINE = 16 << 20
# The command is stopped on the host this long after the watchdog stopped waiting (SIGTERM), and
# killed KILL_AFTER seconds later if it is still there.
REMOTE_GRACE = 1.0
KILL_AFTER = 3.0


def remote_argv(argv: list[str], limit: float, *, sudo: bool = False) -> list[str]:
    """The command as run on the host: under ``timeout``, so that it never outlives the wait;
    with ``sudo`` as ``sudo -n timeout …`` (root's ``timeout`` can stop root's command)."""
    wrapped = ["timeout", f"--kill-after={KILL_AFTER:g}", f"{limit + REMOTE_GRACE:.3f}", *argv]
    return ["sudo", "-n", *wrapped] if sudo else wrapped


#: errno values that say the watchdog's own process or machine ran out of file descriptors.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def out_of_descriptors(exc: BaseException) -> LocalFault | None:
    """The local fault an OSError stands for when it is EMFILE/ENFILE (else None)."""
    if isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS:
        which = "the system" if exc.errno == errno.ENFILE else "the watchdog's process"
        return LocalFault(
            f"{which} has no file descriptor left ({exc.strerror}): the watchdog cannot open "
            "connections or files; raise its limit (LimitNOFILE=, ulimit -n) or lower "
            "ssh.parallel_hosts",
            kind="file_descriptors",
        )
    return None


def _unusable(path: Path, what: str, hint: str, kind: str) -> LocalFault | None:
    """Why a file of the watchdog's own cannot be read (None when it can): the watchdog's
    fault, not a host's, whatever host it was about to connect to."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        fault = out_of_descriptors(exc)
        if fault is not None:
            return fault
        if isinstance(exc, FileNotFoundError):
            why = "does not exist"
        elif isinstance(exc, IsADirectoryError):
            why = "is a directory"
        else:
            why = f"cannot be read ({exc.strerror or exc})"
        return LocalFault(f"the watchdog's {what} {path} {why}: {hint}", kind=kind)
    return None


#: Parsed private keys by file identity (see ``_key_stamp``): a connect parsed its key file 2-3
#: times (our check, then SSHClient trying key classes), ~1 ms each; now once per change.
_PARSED_KEYS: dict[tuple[object, ...], paramiko.PKey] = {}
_PARSED_KEYS_MAX = 64


def _key_stamp(path: Path) -> tuple[object, ...] | None:
    """The key file's (and its ``-cert.pub``'s) identity and mtime; None: do not cache."""
    if str(path).endswith("-cert.pub"):  # paramiko then reads the key beside it
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        cert: int | None = os.stat(f"{path}-cert.pub").st_mtime_ns
    except OSError:
        cert = None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, cert)


def _load_key(path: Path) -> tuple[paramiko.PKey | None, LocalFault | None]:
    """The parsed key (with its certificate, as paramiko loads it), or why it cannot be used."""
    stamp = _key_stamp(path)
    if stamp is not None and (key := _PARSED_KEYS.get(stamp)) is not None:
        return key, None
    fault = _unloadable_key(path, keep=stamp)
    return _PARSED_KEYS.get(stamp) if stamp is not None else None, fault


def _unloadable_key(path: Path, keep: tuple[object, ...] | None = None) -> LocalFault | None:
    """Why paramiko cannot use the key file (None when it can; parsing costs ~1 ms); the parsed
    key is kept under ``keep`` when given."""
    try:
        key = paramiko.PKey.from_path(path)
        if keep is not None:
            if len(_PARSED_KEYS) >= _PARSED_KEYS_MAX:
                _PARSED_KEYS.clear()
            _PARSED_KEYS[keep] = key
    except paramiko.PasswordRequiredException:
        why = "is encrypted and the watchdog has no passphrase for it"
    except (paramiko.SSHException, UnknownKeyType, ValueError, TypeError) as exc:
        why = f"is not a private key paramiko can read ({type(exc).__name__}: {exc})"
    except OSError as exc:
        return out_of_descriptors(exc) or LocalFault(
            f"the watchdog's SSH key file {path} cannot be read ({exc.strerror or exc})",
            kind="key_file",
        )
    else:
        return None
    return LocalFault(f"the watchdog's SSH key file {path} {why} (ssh.key_file)", kind="key_file")


#: Ciphers offered first: AES-GCM is an AEAD cipher whose tag the cryptography library checks in
#: C, where paramiko compares a CTR cipher's HMAC byte by byte in Python; receiving a probe's
#: stream from OpenSSH 9.2 costs ~40 % less CPU (4.9 vs 7.6 ns per byte, bench: a 2.4 MB stream,
#: 5 runs). Every other algorithm paramiko offers stays offered, after them.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport(sock: Any, /, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport with AES-GCM offered first (SSHClient.connect's transport_factory;
    ``kwargs`` as paramiko passes them: disabled_algorithms, and gss_* in some versions)."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
    options.ciphers = (*first, *(c for c in offered if c not in first))
    return transport


_KNOWN_RACY_SECONDS = 2.0
_known_lock = threading.Lock()
_known: dict[str, tuple[tuple[int, int, int], paramiko.HostKeys]] = {}


def known_host_keys(path: Path) -> paramiko.HostKeys:
    """The known_hosts file, parsed once per change of it (inode, size, mtime) rather than once
    per host per sweep: parsing it whole for every connection made a sweep's cost grow with the
    square of the fleet's hosts. A file changed in the last few seconds is parsed afresh every
    time (an edit in the same clock tick could keep its mtime). Raises OSError or
    paramiko.SSHException as loading it does."""
    st = os.stat(path)
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _known_lock:
        hit = _known.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    keys = paramiko.HostKeys(str(path))
    if time.time() - st.st_mtime > _KNOWN_RACY_SECONDS:
        with _known_lock:
            if len(_known) >= 8:
                _known.clear()
            _known[str(path)] = (stamp, keys)
    return keys


def _socket_error(exc: OSError, where: str) -> HostUnreachable:
    if isinstance(exc, TimeoutError | socket.timeout):
        return HostUnreachable(f"{where}: connection timed out")
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(f"{where}: host name does not resolve ({exc.strerror})")
    if exc.errno == errno.ECONNREFUSED:
        return HostUnreachable(f"{where}: connection refused (is sshd running?)")
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return HostUnreachable(f"{where}: no route to host")
    return HostUnreachable(f"{where}: {exc.strerror or exc}")


class SshTransport:
    """Commands on one storage host over one reused paramiko connection (through jump hosts
    when ``[ssh] config_file`` gives the host a ProxyJump)."""

    def __init__(self, server: Server, config: SshConfig) -> None:
        self.server = server
        self.config = config
        #: A fault of the SSH config file, raised by ``connect`` (a LocalFault, like known_hosts').
        self._route_fault: LocalFault | None = None
        try:
            self.route = resolve(server, config)
        except LocalFault as exc:
            self._route_fault = exc
            self.route = resolve(server, config.model_copy(update={"config_file": None}))
        target = self.route.target
        via = f" via {self.route.jumps[-1].hostname}" if self.route.jumps else ""
        self.label = f"{server.label} ({target.hostname}:{target.port}{via})"
        #: ``run`` (the repairs' commands) goes through ``sudo -n`` (``[ssh] sudo``); the probe
        #: and deep checks (``stream_lines``) never do.
        self.sudo = config.sudo if config.sudo is not None else target.user != "root"
        self.sessions_opened = 0
        self._client: paramiko.SSHClient | None = None
        self._jumps: list[paramiko.SSHClient] = []

    # -- connection ---------------------------------------------------------------------------

    def _known_hosts(self) -> Path:
        return self.config.known_hosts or Path("~/.ssh/known_hosts").expanduser()

    def _check_local_files(self, known_hosts: Path) -> None:
        """Raise LocalFault when the watchdog's own known_hosts or key file cannot be read: an
        unknown-host or login failure on every host would otherwise blame healthy hosts."""
        fault = _unusable(
            known_hosts,
            "known_hosts file",
            "it cannot verify any host key (add the hosts' keys, e.g. ssh-keyscan HOST >> FILE, "
            "or set ssh.known_hosts)",
            "known_hosts",
        )
        key = self.config.key_file
        if fault is None and key is not None:
            fault = _unusable(key, "SSH key file", "it cannot log in (ssh.key_file)", "key_file")
            if fault is None:
                fault = _load_key(key)[1]
        if fault is not None:
            raise fault

    def _keys(self, hop: Hop) -> list[str] | None:
        """The key files to log in to ``hop`` with (None: the agent and ~/.ssh/id_*). As ssh
        does, an IdentityFile of the SSH config that does not exist is skipped."""
        if not hop.keys:
            return [str(self.config.key_file)] if self.config.key_file else None
        present = [k for k in hop.keys if k.exists()]
        if not present:
            names = ", ".join(str(k) for k in hop.keys)
            raise LocalFault(
                f"none of the IdentityFile keys the SSH config file {self.config.config_file} "
                f"gives {hop.alias} exists ({names}): the watchdog cannot log in (ssh.config_file)",
                kind="key_file",
            )
        for key in present:
            fault = _unusable(key, "SSH key file", "it cannot log in (IdentityFile)", "key_file")
            if fault is not None or (fault := _load_key(key)[1]) is not None:
                raise fault
        return [str(k) for k in present]

    def _client_for(self, known_hosts: Path, hop: Hop) -> paramiko.SSHClient:
        """A client that knows ``hop``'s keys from known_hosts (under the name paramiko looks
        up, ``[host]:port`` off port 22) and refuses any host it does not know."""
        client = paramiko.SSHClient()
        try:
            known = known_host_keys(known_hosts)
        except (OSError, paramiko.SSHException) as exc:
            raise out_of_descriptors(exc) or LocalFault(
                f"the watchdog's known_hosts file {known_hosts} cannot be read: {exc}",
                kind="known_hosts",
            ) from None
        name = hop.hostname if hop.port == 22 else f"[{hop.hostname}]:{hop.port}"
        own = client.get_host_keys()
        for keytype, key in (known.lookup(name) or {}).items():
            own.add(name, keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def connect(self) -> paramiko.SSHClient:
        """Open (or reuse) the connection; every failure becomes a one-line TransportError, or
        a LocalFault when the watchdog's own side is at fault (see ``_check_local_files``).

        Through jump hosts: TCP to the first one, then on each hop's connection a direct-tcpip
        channel to the next, which carries the next hop's SSH connection (``ssh -J``). Every
        step is bounded, and every host key is checked against the same known_hosts.
        """
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            self.close()
        if self._route_fault is not None:
            raise self._route_fault
        route = self.route
        known_hosts = self._known_hosts()
        self._check_local_files(known_hosts)
        keys = [self._keys(hop) for hop in (*route.jumps, route.target)]
        first = route.jumps[0] if route.jumps else route.target
        where = f"{self.label}: jump host {first}" if route.jumps else self.label
        try:
            sock = socket.create_connection(
                (first.hostname, first.port), timeout=self.config.connect_timeout
            )
        except OSError as exc:
            raise out_of_descriptors(exc) or _socket_error(exc, where) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel: socket.socket | paramiko.Channel = sock
        jumps: list[paramiko.SSHClient] = []
        try:
            for i, hop in enumerate(route.jumps):
                jump = self._client_for(known_hosts, hop)
                jumps.append(jump)
                self._handshake(jump, hop, channel, keys[i], f"{self.label}: jump host {hop}")
                following = route.jumps[i + 1] if i + 1 < len(route.jumps) else route.target
                channel = self._forward(jump, hop, following)
            client = self._client_for(known_hosts, route.target)
            self._handshake(client, route.target, channel, keys[-1], self.label)
        except BaseException:
            for jump in reversed(jumps):
                jump.close()
            sock.close()
            raise
        self._client, self._jumps = client, jumps
        return client

    def _forward(self, jump: paramiko.SSHClient, hop: Hop, following: Hop) -> paramiko.Channel:
        """A direct-tcpip channel from jump host ``hop`` to ``following`` (bounded wait)."""
        transport = jump.get_transport()
        where = f"{self.label}: jump host {hop}"
        dest = f"{following.hostname}:{following.port}"
        wait = self.config.connect_timeout
        try:
            if transport is None:
                raise EOFError
            return transport.open_channel(
                "direct-tcpip", (following.hostname, following.port), ("127.0.0.1", 0), timeout=wait
            )
        except paramiko.ChannelException as exc:
            # OpenSSH's codes: 1 administratively prohibited (AllowTcpForwarding, PermitOpen),
            # 2 connect failed (refused, no route, a name it cannot resolve).
            if exc.code == OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                raise TransportError(
                    f"{where} refuses to forward to {dest} ({exc.text}: AllowTcpForwarding or "
                    "PermitOpen on the jump host)",
                    permanent=True,
                ) from None
            raise HostUnreachable(f"{where} could not connect to {dest} ({exc.text})") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise out_of_descriptors(exc) or HostUnreachable(
                f"{where} did not connect to {dest} within {wait:g} s ({exc or 'no answer'})"
            ) from None

    def _handshake(
        self,
        client: paramiko.SSHClient,
        hop: Hop,
        sock: socket.socket | paramiko.Channel,
        keys: list[str] | None,
        where: str,
    ) -> None:
        """SSH over ``sock`` to ``hop``: host key, login; failures as one-line errors."""
        cfg = self.config
        known_hosts = self._known_hosts()
        # With our own socket, paramiko's ``timeout`` bounds only the SSH negotiation (banner, then
        # key exchange): given connect_timeout, a frozen sshd ended it before banner_timeout did,
        # as "No existing session". The banner gets banner_timeout, the key exchange auth_timeout.
        handshake = cfg.banner_timeout + cfg.auth_timeout
        # The first key goes as the key parsed once (``_load_key``, cached), the others by file
        # name as before: paramiko tries ``pkey`` first, then ``key_filename``, the same order.
        pkey = _load_key(Path(keys[0]))[0] if keys else None
        filenames = keys[1:] if keys and pkey is not None else keys
        try:
            client.connect(
                hostname=hop.hostname,
                port=hop.port,
                username=hop.user,
                pkey=pkey,
                key_filename=filenames,  # type: ignore[arg-type]  # str or a list of str
                look_for_keys=keys is None,
                allow_agent=keys is None,
                sock=sock,
                timeout=handshake,
                banner_timeout=cfg.banner_timeout,
                auth_timeout=cfg.auth_timeout,
                channel_timeout=cfg.banner_timeout,
                transport_factory=_transport,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"{where}: HOST KEY CHANGED (got {exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()}, known_hosts has another) — possible "
                "man-in-the-middle; refusing to connect"
            ) from None
        except paramiko.AuthenticationException as exc:
            raise TransportError(
                f"{where}: SSH login as {hop.user} refused ({exc})", permanent=True
            ) from None
        except paramiko.SSHException as exc:
            text = str(exc)
            if "not found in known_hosts" in text:
                raise HostKeyError(
                    f"{where}: host key is not in {known_hosts}; refusing an unknown host"
                ) from None
            if "banner" in text.lower():
                raise HostUnreachable(
                    f"{where}: sshd accepted the connection but sent no SSH banner within "
                    f"{cfg.banner_timeout:g} s (frozen or overloaded?)"
                ) from None
            if text == "No existing session":  # the negotiation did not end within ``handshake``
                transport = client.get_transport()
                banner = transport is not None and bool(transport.remote_version)
                client.close()
                raise HostUnreachable(
                    f"{where}: sshd sent its banner but the key exchange did not finish within "
                    f"{handshake:g} s (overloaded?)"
                    if banner
                    else f"{where}: sshd accepted the connection but sent no SSH banner within "
                    f"{handshake:g} s (frozen or overloaded?)"
                ) from None
            if text == "No authentication methods available":
                raise LocalFault(
                    "the watchdog has no SSH key to log in with (no ssh.key_file, no SSH agent, "
                    "no ~/.ssh/id_* key): set ssh.key_file",
                    kind="key_file",
                ) from None
            raise TransportError(f"{where}: SSH failed: {text}") from None
        except OSError as exc:
            raise out_of_descriptors(exc) or _socket_error(exc, where) from None
        except EOFError:
            raise HostUnreachable(
                f"{where}: sshd closed the connection during the handshake"
            ) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for jump in reversed(self._jumps):
            jump.close()
        self._jumps = []

    # -- commands -----------------------------------------------------------------------------

    def _open(
        self, argv: list[str], stdin: bytes | None, timeout: float, *, sudo: bool = False
    ) -> paramiko.Channel:
        client = self.connect()
        transport = client.get_transport()
        if transport is None:  # pragma: no cover - connect() guarantees a transport
            raise TransportError(f"{self.label}: SSH connection lost")
        try:
            chan = transport.open_session(timeout=self.config.banner_timeout)
        except paramiko.ChannelException as exc:
            raise TransportError(f"{self.label}: sshd refused a session ({exc})") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise CommandTimeout(
                f"{self.label}: sshd did not open a session within "
                f"{self.config.banner_timeout:g} s ({exc or 'no answer'})"
            ) from None
        self.sessions_opened += 1
        chan.settimeout(timeout)
        self._exec(chan, shlex.join(remote_argv(argv, timeout, sudo=sudo)))
        if stdin:
            try:
                chan.sendall(stdin)
            except (OSError, TimeoutError) as exc:
                chan.close()
                raise CommandTimeout(f"{self.label}: could not send input: {exc}") from None
        chan.shutdown_write()
        return chan

    def _exec(self, chan: paramiko.Channel, command: str) -> None:
        """``exec_command``, bounded: paramiko waits for sshd's answer without a limit, so a host
        that froze just after it opened the session would hold the sweep forever."""
        given_up = threading.Event()

        def give_up() -> None:
            given_up.set()
            chan.close()  # wakes exec_command's wait

        timer = threading.Timer(self.config.banner_timeout, give_up)
        timer.daemon = True
        timer.start()
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not given_up.is_set():
                chan.close()
                raise TransportError(
                    f"{self.label}: sshd would not run the command ({exc or 'channel closed'})"
                ) from None
        finally:
            timer.cancel()
        if given_up.is_set():
            self.close()  # the connection is as stuck as the session
            raise CommandTimeout(
                f"{self.label}: sshd did not start the command within "
                f"{self.config.banner_timeout:g} s (frozen?)"
            )

    def stream_lines(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Iterator[bytes]:
        """Yield stdout lines as they arrive; raise when the command fails, hangs or floods."""
        limit = timeout or self.config.command_timeout
        deadline = time.monotonic() + limit
        chan = self._open(argv, stdin, limit)
        # Sent: not held while the output streams in (a probe with a host's known state is
        # about 0.8 MB at 10,000 repositories, and several hosts are gathered at once).
        del stdin
        sel = _selector(chan)
        buf = bytearray()
        total = 0
        stderr = bytearray()
        cap = self.config.max_output_bytes
        name = argv[0] if argv else "command"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(f"{self.label}: {name} did not finish within {limit:g} s")
                if not sel.select(timeout=remaining):
                    continue
                while chan.recv_stderr_ready():
                    stderr += chan.recv_stderr(65536)
                    del stderr[:-_STDERR_KEEP]
                if chan.recv_ready():
                    data = chan.recv(_CHUNK)
                elif chan.exit_status_ready() or chan.closed or chan.eof_received:
                    data = chan.recv(_CHUNK) if chan.recv_ready() else b""
                    if not data:
                        break
                else:
                    continue
                total += len(data)
                if total > cap:
                    raise ProbeError(f"{self.label}: {name} printed more than {cap} bytes; cut off")
                if b"\n" not in data:
                    buf += data
                    if len(buf) > _MAX_LINE:  # held whole, and copied once more to yield it
                        raise ProbeError(
                            f"{self.label}: {name} printed a line longer than {_MAX_LINE} bytes"
                        )
                    continue
                lines = data.split(b"\n")  # one C call, not a find and a copy per line
                if buf:
                    lines[0] = bytes(buf) + lines[0]
                    buf.clear()
                buf += lines.pop()
                yield from lines
            # The output ended; the exit status comes with it or just after (bounded: a host
            # that froze in between must not hold the sweep).
            if not chan.status_event.wait(max(deadline - time.monotonic(), 0.0)):
                raise CommandTimeout(f"{self.label}: {name} did not finish within {limit:g} s")
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            rc = chan.recv_exit_status()
            if rc == -1:  # the channel closed without one: the connection dropped, or a signal
                self._no_exit_status(chan, name, stderr)
            if buf:
                yield bytes(buf)
            if rc != 0:
                tail = bytes(stderr[-400:]).decode("utf-8", "replace").strip().splitlines()
                last = tail[-1] if tail else "no error output"
                raise TransportError(f"{self.label}: {name} exited with status {rc}: {last}")
        except TimeoutError:
            raise CommandTimeout(f"{self.label}: {name} went silent for {limit:g} s") from None
        finally:
            sel.close()
            chan.close()

    def _no_exit_status(self, chan: paramiko.Channel, name: str, stderr: bytearray) -> None:
        """Raise for a command whose channel closed without an exit status: a dropped connection
        (no end of output from sshd either) is the host's reachability, not garbage in a cut-off
        last line; after a proper end of output, the command was killed by a signal (sshd sends
        exit-signal, which paramiko does not keep)."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        if not chan.eof_received or transport is None or not transport.is_active():
            self.close()
            raise HostUnreachable(f"{self.label}: the SSH connection dropped while {name} ran")
        tail = bytes(stderr[-400:]).decode("utf-8", "replace").strip().splitlines()
        raise TransportError(
            f"{self.label}: {name} ended without an exit status (killed by a signal?): "
            f"{tail[-1] if tail else 'no error output'}"
        )

    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        no_progress: float | None = None,
    ) -> CommandResult:
        """Run a command to completion; non-zero exit is returned, not raised.

        ``no_progress``: when the command prints nothing for a while, the host is asked for a
        sign of life (a session opened and closed on the same connection, no command run); a
        command that printed nothing while the host did not answer for ``no_progress`` seconds
        is given up at once, its time limit notwithstanding (a frozen host)."""
        limit = timeout or self.config.command_timeout
        started = time.monotonic()
        chan = self._open(argv, stdin, limit, sudo=self.sudo)
        # The host's own timeout counts from here (the command started), not from before the
        # connection was opened: after giving up, wait long enough for it to fire.
        wait_end = (time.monotonic() - started) + REMOTE_GRACE + KILL_AFTER + 2.0
        out, err = bytearray(), bytearray()
        cap = self.config.max_output_bytes
        # A sign of life is asked for after this much silence (a third of no_progress, so that
        # a host that answers late but answers is never given up on).
        ask_after = min(no_progress / 3, 30.0) if no_progress else None
        alive_at = time.monotonic()
        try:
            deadline = started + limit
            sel = _selector(chan)
            try:
                while True:
                    now = time.monotonic()
                    remaining = deadline - now
                    if remaining <= 0:
                        raise CommandTimeout(
                            f"{self.label}: {argv[0]} did not finish within {limit:g} s"
                            + _after_timeout(chan, wait_end)
                        )
                    if no_progress and ask_after:
                        quiet = now - alive_at
                        if quiet >= no_progress:
                            self.close()  # the connection is as stuck as the command
                            raise CommandTimeout(
                                f"{self.label}: {argv[0]} made no progress for {quiet:.0f} s "
                                f"(no output, and the host answered nothing: frozen?); given "
                                f"up before its {limit:g} s limit. If the host thaws, its own "
                                f"timeout stops the command within {limit + REMOTE_GRACE:g} s "
                                "of its start"
                            )
                        if quiet >= ask_after:
                            if self._answers(no_progress - quiet):
                                alive_at = time.monotonic()
                            continue
                        remaining = min(remaining, ask_after - quiet)
                    if sel.select(timeout=remaining):
                        alive_at = time.monotonic()
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                        del err[:-_STDERR_KEEP]
                    if chan.recv_ready():
                        out += chan.recv(65536)
                        if len(out) > cap:
                            raise ProbeError(
                                f"{self.label}: {argv[0]} printed more than {cap} bytes"
                            )
                    elif chan.exit_status_ready() and not chan.recv_stderr_ready():
                        break
            finally:
                sel.close()
            rc = chan.recv_exit_status()
        except TimeoutError:
            raise CommandTimeout(
                f"{self.label}: {argv[0]} went silent for {limit:g} s"
                + _after_timeout(chan, wait_end)
            ) from None
        finally:
            chan.close()
        return CommandResult(rc, bytes(out), bytes(err), time.monotonic() - started)

    def _answers(self, within: float) -> bool:
        """Whether the host's sshd answers on this connection within ``within`` seconds: a
        session is opened and closed at once (nothing is run, so no gate or sudo is involved)."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        if transport is None or not transport.is_active():
            return False
        try:
            chan = transport.open_session(timeout=max(0.1, within))
        except (paramiko.SSHException, EOFError, OSError):
            return False
        chan.close()
        return True


def _selector(chan: paramiko.Channel) -> selectors.BaseSelector:
    """A selector watching the channel (an epoll and a pipe: two descriptors); running out of
    descriptors here is a LocalFault, not the host's."""
    try:
        sel = selectors.DefaultSelector()
    except OSError as exc:
        chan.close()
        raise out_of_descriptors(exc) or exc from None
    try:
        sel.register(chan, selectors.EVENT_READ)
    except OSError as exc:
        sel.close()
        chan.close()
        raise out_of_descriptors(exc) or exc from None
    return sel


def _after_timeout(chan: paramiko.Channel, seconds: float) -> str:
    """Wait for the host to end the command we gave up on; say how that went."""
    if _wait_remote_end(chan, seconds):
        return " (stopped on the host)"
    return " (the host did not confirm it stopped)"


def _wait_remote_end(chan: paramiko.Channel, seconds: float) -> bool:
    """After a timeout: drain the channel until the host reports the command's end (its own
    ``timeout`` stops it), at most ``seconds``. True when it ended."""
    deadline = time.monotonic() + seconds
    chan.settimeout(0.2)
    while time.monotonic() < deadline:
        if chan.exit_status_ready():
            return True
        try:
            if chan.recv_ready():
                chan.recv(65536)
            elif chan.recv_stderr_ready():
                chan.recv_stderr(65536)
            else:
                time.sleep(0.05)
        except (OSError, TimeoutError, paramiko.SSHException):
            return False
        if chan.closed:
            return chan.exit_status_ready()
    return False
