"""Where and as whom to connect to a host: the inventory, or an operator's ssh_config file.

With ``[ssh] config_file`` the server's ``ssh_host`` is looked up as ``ssh HOST`` would
(paramiko's ``SSHConfig``): ``HostName``, ``Port``, ``User``, ``IdentityFile`` and
``ProxyJump`` of the matching ``Host`` blocks (first value wins, as in OpenSSH). A value the file
sets for the host wins over the inventory's ``ssh_port``/``ssh_user`` and over ``[ssh] user`` and
``key_file``, which apply where the file is silent: the inventory cannot tell a port or user it was
given from its default (22, ``[ssh] user``), and per-host users kept in the file must apply.

Nothing in the file runs a command or weakens host keys: ``ProxyCommand`` and ``Match exec`` are
refused, and host keys always come from ``[ssh] known_hosts`` (``StrictHostKeyChecking`` and
``UserKnownHostsFile`` are ignored), for the jump hosts too. ``Include`` is refused, since paramiko
would skip it silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import paramiko

from bup_watchdog.config import SshConfig
from bup_watchdog.errors import LocalFault
from bup_watchdog.model import Server

#: How many jump hosts a route may go through (a ProxyJump loop ends here).
MAX_JUMPS = 8
_UNSUPPORTED = re.compile(r"^\s*(?:(include)|match\b.*\b(exec))\b", re.IGNORECASE)
_HOP = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$"
)


@dataclass(frozen=True, slots=True)
class Hop:
    """One SSH endpoint: the address connected to, the login, and the keys to try (empty: the
    ``[ssh] key_file``, else the agent and ``~/.ssh/id_*``)."""

    alias: str
    hostname: str
    port: int
    user: str
    keys: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach a host: through ``jumps`` (the first is connected to first), then ``target``."""

    target: Hop
    jumps: tuple[Hop, ...] = ()


def _fault(path: Path, message: str) -> LocalFault:
    return LocalFault(
        f"the watchdog's SSH config file {path} {message} (ssh.config_file)", kind="ssh_config"
    )


def load(path: Path) -> paramiko.SSHConfig:
    """Parse the file; LocalFault when it cannot be read or asks for what is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fault(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fault(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if m := _UNSUPPORTED.match(line):
            what = "Include" if m.group(1) else "Match exec"
            raise _fault(
                path,
                f"line {number}: {what} is not supported (the watchdog reads one file and runs "
                "no command from it: put every Host block in this file)",
            )
    config = paramiko.SSHConfig()
    try:
        config.parse(text.splitlines(keepends=True))
    except paramiko.ConfigParseError as exc:
        raise _fault(path, f"cannot be parsed: {exc}") from None
    return config


def _hop(
    config: paramiko.SSHConfig,
    path: Path,
    alias: str,
    *,
    port: int,
    user: str,
    explicit_port: int | None = None,
    explicit_user: str | None = None,
) -> tuple[Hop, str]:
    """The endpoint ``alias`` stands for, and its ProxyJump value ('' for none)."""
    try:
        found = config.lookup(alias)
    except (paramiko.SSHException, ImportError, ValueError) as exc:
        raise _fault(path, f"cannot be applied to {alias}: {exc}") from None
    if "proxycommand" in found:
        raise _fault(path, f"gives {alias} a ProxyCommand, which is not supported (use ProxyJump)")
    if "port" in found:
        try:
            port = int(found["port"])
        except ValueError:
            raise _fault(path, f"gives {alias} the port {found['port']!r}") from None
        if not 0 < port < 65536:
            raise _fault(path, f"gives {alias} the port {port}, out of range")
    keys = tuple(Path(k) for k in found.get("identityfile", []))
    hop = Hop(
        alias=alias,
        hostname=found.get("hostname", alias),
        port=explicit_port or port,
        user=explicit_user or found.get("user", user),
        keys=keys,
    )
    jump = found.get("proxyjump", "").strip()
    return hop, "" if jump.lower() == "none" else jump


def _parse_jumps(value: str, path: Path, alias: str) -> list[tuple[str, str | None, int | None]]:
    out: list[tuple[str, str | None, int | None]] = []
    for part in value.split(","):
        m = _HOP.match(part.strip())
        if not m:
            raise _fault(path, f"gives {alias} the ProxyJump {value!r}, not [user@]host[:port],…")
        port = int(m["port"]) if m["port"] else None
        out.append((m["host"].strip("[]"), m["user"], port))
    return out


def _jumps(
    config: paramiko.SSHConfig, path: Path, value: str, of: str, ssh: SshConfig, depth: int
) -> list[Hop]:
    """The hops of a ProxyJump value, outermost first; the first hop's own ProxyJump too."""
    hops: list[Hop] = []
    for i, (alias, user, port) in enumerate(_parse_jumps(value, path, of)):
        if depth + len(hops) >= MAX_JUMPS:
            raise _fault(path, f"makes {of} go through more than {MAX_JUMPS} jump hosts (a loop?)")
        hop, own = _hop(
            config, path, alias, port=22, user=ssh.user, explicit_port=port, explicit_user=user
        )
        if i == 0 and own:  # as ssh -J: only the first hop is reached by its own ProxyJump
            hops += _jumps(config, path, own, alias, ssh, depth + 1)
        hops.append(hop)
    return hops


def resolve(server: Server, ssh: SshConfig, config: paramiko.SSHConfig | None = None) -> Route:
    """The route to ``server``: the inventory's values, or the SSH config file's (see the module
    docstring for which wins). ``config`` is the parsed file, when the caller has it."""
    user = server.ssh_user or ssh.user
    if ssh.config_file is None:
        return Route(Hop(server.ssh_host, server.ssh_host, server.ssh_port, user))
    path = ssh.config_file
    parsed = config if config is not None else load(path)
    target, jump = _hop(parsed, path, server.ssh_host, port=server.ssh_port, user=user)
    jumps = _jumps(parsed, path, jump, server.ssh_host, ssh, 0) if jump else []
    return Route(target, tuple(jumps))
