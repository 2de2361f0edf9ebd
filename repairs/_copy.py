"""A copy between two storage hosts: the command lines it is made of and what both ends must be.

Shared by resync_replica and move_project (and evacuate's placement): SSH addresses checked before
they go into an rsync remote spec, repository and live paths from a validated project id, the
mount guard every copy runs under, the last useful line of a failed copy, and the fresh facts of
both hosts with the boot race read from them.
"""

from __future__ import annotations

import ipaddress
import re

from bup_watchdog.model import HostFacts, Server, is_v4_uuid
from bup_watchdog.repairs.base import RepairContext, RepairError
from bup_watchdog.transport.base import CommandResult

_HOSTNAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$"
)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Paths that travel inside an rsync remote spec reach the remote shell: keep them boring.
_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
# Not copied from objects/: bup's caches (rebuilt locally), unfinished writes, git's info/.
OBJECT_EXCLUDES = (
    "--exclude=*tmp*",
    "--exclude=*.midx",
    "--exclude=bup.bloom",
    "--exclude=/info/",
)
# The first pass over objects/: the packs alone (the .idx files come in the second pass).
PACKS_ONLY = ("--include=/pack/", "--include=/pack/*.pack", "--exclude=*")
# How MOUNTED_GUARD starts the line that says why it refused (picked out of rsync's output).
_REFUSED = "resync_replica refused: "

# Run as ``sh -c MOUNTED_GUARD resync-guard SIDE ROOT COMMAND...``: fixed text, the values are
# positional arguments (SIDE is "master" or "replica", ROOT a validated path). It enters ROOT
# before it checks it: from then on this shell and the command it execs keep the filesystem
# busy (umount: EBUSY), so the check and the copy cannot be separated by an unmount. If ROOT was
# unmounted before the cd, the shell stands on the root disk: ROOT is then no mount point, or
# (remounted since) not the directory the shell stands in (device:inode differ).
MOUNTED_GUARD = (
    "side=$1 root=$2; shift 2; "
    'if ! cd -- "$root" || ! mountpoint -q "$root" || '
    '[ "$(stat -c %d:%i .)" != "$(stat -c %d:%i "$root")" ]; '
    f'then echo "{_REFUSED}$root on the $side is not mounted, or is no longer the filesystem '
    'this copy stands in; nothing copied" >&2; exit 97; fi; '
    'exec "$@"'
)


def address_problems(server: Server) -> list[str]:
    """Why a server's SSH address or roots cannot be put into an rsync command, if they cannot."""
    problems = []
    host = server.ssh_host or server.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or len(host) > 253:
            problems.append(f"ssh host {host!r} is neither an IP address nor a host name")
    if not _USER.fullmatch(server.ssh_user):
        problems.append(f"ssh user {server.ssh_user!r} is not a plain user name")
    if not 0 < server.ssh_port < 65536:
        problems.append(f"ssh port {server.ssh_port} is out of range")
    for root in (server.bups_root, server.projects_root):
        if not _PATH.fullmatch(root) or ".." in root.split("/"):
            problems.append(f"path {root!r} has characters a remote path may not carry")
    return problems


def remote(server: Server, path: str) -> str:
    """``user@host:path`` for rsync, from validated values (IPv6 in brackets)."""
    host = server.ssh_host or server.host
    if ":" in host:
        host = f"[{host}]"
    return f"{server.ssh_user}@{host}:{path}"


def repo_path(server: Server, project_id: str) -> str:
    if not is_v4_uuid(project_id) or project_id != project_id.lower():
        raise RepairError(f"{project_id!r} is not a version-4 UUID, so it is not a project")
    return f"{server.bups_root}/{project_id}"


def live_path(server: Server, project_id: str) -> str:
    repo_path(server, project_id)  # validates the id
    return f"{server.projects_root.rstrip('/')}/{project_id}"


def guarded(side: str, root: str, *argv: str) -> tuple[str, ...]:
    """``argv`` run in ``root`` only while ``root`` is mounted there (MOUNTED_GUARD)."""
    return ("sh", "-c", MOUNTED_GUARD, "resync-guard", side, root, *argv)


def git_argv(repo: str, *args: str) -> tuple[str, ...]:
    return ("git", f"--git-dir={repo}", *args)


def tail(result: CommandResult) -> str:
    text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    if not text:
        return "no output"
    lines = text.splitlines()
    refused = next((line for line in lines if line.startswith(_REFUSED)), None)
    if refused is not None:  # MOUNTED_GUARD said why; rsync's own lines only say it ended
        return refused[-300:]
    # rsync prints the cause first ("rsync: [receiver] write failed on …: No space left on
    # device (28)") and a summary last ("rsync error: … (code 11)"), which alone hides it.
    cause = next((line for line in lines if line.startswith("rsync: ")), None)
    if cause is not None and cause != lines[-1]:
        return f"{cause[-300:]} … {lines[-1][-200:]}"
    return lines[-1][-300:]


def mount_problems(server: Server, facts: HostFacts) -> list[str]:
    """The boot race, from fresh facts: both roots must be writable mount points of their own."""
    out = []
    for path in (server.projects_root, server.bups_root):
        m = facts.mounts.get(path)
        if m is None:
            out.append(f"the probe of {server.label} said nothing about {path}")
        elif not m.exists or not m.is_mount_point:
            out.append(
                f"{path} on {server.label} is not a mount point (it lies on "
                f"{m.mount_point or '?'}): nothing may be copied to or from it"
            )
        elif m.read_only:
            out.append(f"{path} on {server.label} is mounted read-only")
    return out


def probe_pair(
    ctx: RepairContext, source: Server, dest: Server, project_id: str
) -> tuple[HostFacts, HostFacts, str | None]:
    """Fresh facts of the host a copy comes from (with a deep check of ``project_id``) and of the
    one it goes to, and the refusal when either did not answer: (source's, dest's, refusal)."""
    dest_facts = ctx.facts(dest.server_id)
    source_facts = ctx.facts(source.server_id, deep_ids=(project_id,))
    down = [
        f"{s.label} ({f.failure_message or 'incomplete probe'})"
        for s, f in ((source, source_facts), (dest, dest_facts))
        if not f.probed
    ]
    refusal = f"unreachable: cannot probe {', '.join(down)} now" if down else None
    return source_facts, dest_facts, refusal


def mount_blockers(*hosts: tuple[Server, HostFacts]) -> list[str]:
    """The boot race on each host of a copy, as precondition reasons."""
    return [f"mount_sanity: {p}" for server, facts in hosts for p in mount_problems(server, facts)]
