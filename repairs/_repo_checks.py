"""Preconditions shared by the repairs that rewrite or copy a bup repository.

Not a repair (the registry skips modules whose name starts with ``_``): the checks clean_repo and
prune_repo make before touching a repository (it is there and no symlink, it is sound, cheap and
deep tier, no process works on it), and the free space resync_replica and move_project need on
the host a copy goes to.
"""

from __future__ import annotations

import json

from bup_watchdog.model import HostFacts, RepoFacts, Server
from bup_watchdog.repairs.base import RepairContext, RepairRequest
from bup_watchdog.transport.base import CommandResult

# Exit status of clean_repo's BUSY_SCAN when a process holds the repository.
BUSY = 3


def repo_on_host(
    req: RepairRequest, ctx: RepairContext, path: str
) -> tuple[HostFacts, RepoFacts] | str:
    """The host's fresh facts (with a deep check of the project) and its repository, or the
    refusal: the host cannot be probed, the repository is missing, a symlink or links outside."""
    assert req.project_id is not None
    facts = ctx.facts(req.server_id, deep_ids=(req.project_id,))
    if not facts.probed:
        return f"unreachable: cannot probe the host now ({facts.failure_message})"
    repo = facts.repos.get(req.project_id)
    if repo is None:
        return f"missing: {path} does not exist"
    if repo.is_symlink:
        return f"symlink: {path} is a symlink; not followed"
    if repo.symlinks_outside:
        return (
            f"symlink_outside: symlinks lead out of {path} "
            f"({', '.join(repo.symlinks_outside[:3])}); a human must look first"
        )
    return facts, repo


def integrity_blockers(req: RepairRequest, ctx: RepairContext, facts: HostFacts) -> list[str]:
    """The repository must be sound before it is rewritten: the cheap tier by repo_integrity
    itself, the deep tier (git fsck --connectivity-only + bup ls master) from ``facts``."""
    pid = req.project_id
    blockers = [
        f"integrity: repo_integrity/{f.code}: {f.message}"
        for f in ctx.evaluate("repo_integrity", (req.server_id,))
        if f.server_id == req.server_id and f.project_id == pid
    ]
    deep = facts.deep.get(pid) if pid is not None else None
    if facts.deep_error or deep is None:
        blockers.append(f"integrity: the deep check could not run ({facts.deep_error})")
    elif not deep.ok:
        blockers.append(f"integrity: the deep check fails: {deep.message}")
    return blockers


def busy_blockers(scan: CommandResult, path: str) -> list[str]:
    """The refusal a busy scan's result calls for: processes working on ``path`` (a save?), or a
    scan that could not run."""
    if scan.returncode == BUSY:
        procs = []
        for line in scan.stdout.decode("utf-8", "replace").splitlines()[:5]:
            try:
                p = json.loads(line)
                procs.append(f"pid {p['pid']} ({'/'.join(p['why'])}): {p['cmd']}")
            except (ValueError, KeyError, TypeError):
                procs.append(line[:200])
        return [f"busy: processes work on {path} (a save?): {'; '.join(procs)}"]
    if not scan.ok:
        err = scan.stderr.decode("utf-8", "replace").strip().splitlines()
        return [
            f"busy_scan: could not scan for processes using {path} "
            f"(status {scan.returncode}: {err[-1][-200:] if err else 'no output'})"
        ]
    return []


def space_blocker(
    server: Server, facts: HostFacts, repo_bytes: int, margin: float, whose: str
) -> str | None:
    """Why ``server``'s bups_root cannot take a copy of ``repo_bytes`` (``margin`` times it must
    fit in its free bytes), or None; ``whose`` names the repository copied ("the master")."""
    mounts = facts.mounts.get(server.bups_root)
    free = mounts.bytes_free if mounts else None
    need = margin * repo_bytes
    if free is None:
        return f"space: free space on {server.label}:{server.bups_root} is unknown"
    if free <= need:
        return (
            f"space: {server.label}:{server.bups_root} has {free} bytes free, needs more "
            f"than {need:.0f} ({margin:g} x {whose} repository's {repo_bytes} bytes)"
        )
    return None
