"""The placement of an evacuation: which host takes each project mastered on the host emptied.

Pure but for ``gather_plan``'s one probe per host: the rules are in ``compute_plan`` (data centre
first, a host already holding a copy, then the least loaded; never a fenced, disabled,
experimental unless allowed, full, or ahead host), and ``plan_dict``/``print_plan`` show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from bup_watchdog.errors import WatchdogError
from bup_watchdog.model import HostFacts, Inventory, Server
from bup_watchdog.rebuild import _size

if TYPE_CHECKING:
    from bup_watchdog.config import Config

REPAIR = "move_project"


@dataclass(frozen=True, slots=True)
class Move:
    """One project to move off the host: where to (None: nowhere fits) and why."""

    project_id: str
    source_id: str
    target_id: str | None
    nbytes: int
    bytes_to_copy: int
    why: str

    @property
    def placed(self) -> bool:
        return self.target_id is not None


@dataclass(frozen=True, slots=True)
class Plan:
    """The evacuation of ``host``: ``moves`` placed (largest first), ``unplaced`` with the reason,
    ``excluded`` hosts no project may go to (label -> why)."""

    host: Server
    moves: tuple[Move, ...]
    unplaced: tuple[Move, ...]
    excluded: Mapping[str, str]

    @property
    def bytes_to_copy(self) -> int:
        return sum(m.bytes_to_copy for m in self.moves)


@dataclass(slots=True)
class _Room:
    """A candidate host as the planning goes: its masters and free bytes after the moves so far."""

    server: Server
    facts: HostFacts
    masters: int
    free: int | None


def _excluded(
    server: Server, source: Server, fenced: Iterable[str], allow_experimental: bool
) -> str | None:
    """Why no project may go to ``server`` (before any probe), or None."""
    from bup_watchdog.repairs._copy import address_problems

    if server.server_id == source.server_id:
        return "the host being evacuated"
    if server.server_id in fenced:
        return "fenced"
    if server.disabled:
        return "disabled in the inventory"
    if server.experimental and not allow_experimental:
        return "experimental (--allow-experimental lets it take projects)"
    bad = address_problems(server)
    return f"bad address: {'; '.join(bad)}" if bad else None


def compute_plan(
    source_id: str,
    inventory: Inventory,
    facts: Mapping[str, HostFacts],
    *,
    fenced: Iterable[str] = (),
    allow_experimental: bool = False,
    space_margin: float = 1.2,
) -> Plan:
    """Where each project mastered on ``source_id`` goes, from fresh facts (pure: no I/O)."""
    from bup_watchdog.repairs._copy import mount_problems
    from bup_watchdog.repairs.resync_replica import ResyncReplica

    resync = ResyncReplica()
    fenced = set(fenced)
    source = inventory.servers[source_id]
    s_facts = facts.get(source_id)
    if s_facts is None or not s_facts.probed:
        why = (s_facts.failure_message if s_facts else None) or "not probed"
        raise WatchdogError(
            f"cannot probe {source.label}, the host to evacuate: {why}; a move copies from it"
        )
    excluded: dict[str, str] = {}
    rooms: list[_Room] = []
    masters = {sid: 0 for sid in inventory.servers}
    for p in inventory.projects.values():
        if not p.deleted and p.master in masters:
            masters[p.master] += 1
    for server in sorted(inventory.servers.values(), key=lambda s: s.server_id):
        reason = _excluded(server, source, fenced, allow_experimental)
        f = facts.get(server.server_id)
        if reason is None and (f is None or not f.probed):
            reason = f"unreachable: {(f.failure_message if f else None) or 'not probed'}"
        if reason is None and f is not None:
            problems = mount_problems(server, f)
            reason = f"mount_sanity: {problems[0]}" if problems else None
        if reason is not None or f is None:
            if server.server_id != source_id:
                excluded[server.label] = reason or "not probed"
            continue
        m = f.mounts.get(server.bups_root)
        rooms.append(_Room(server, f, masters[server.server_id], m.bytes_free if m else None))

    projects = [p for p in inventory.projects.values() if p.master == source_id and not p.deleted]
    sized = []
    unplaced: list[Move] = []
    for p in projects:
        repo = s_facts.repos.get(p.project_id)
        if repo is None or repo.master_sha is None:
            state = "missing" if repo is None else (repo.master_error or "no master ref")
            unplaced.append(
                Move(
                    p.project_id,
                    source_id,
                    None,
                    repo.repo_bytes if repo else 0,
                    0,
                    f"source_unreadable: the copy on {source.label} is {state}; a move copies "
                    "from it (restore it first)",
                )
            )
            continue
        sized.append((p, repo))
    sized.sort(key=lambda pr: (-pr[1].repo_bytes, pr[0].project_id))  # the largest first

    moves: list[Move] = []
    for project, s_repo in sized:
        pid, nbytes = project.project_id, s_repo.repo_bytes
        need = space_margin * nbytes
        fits: list[tuple[tuple[Any, ...], _Room, int, str]] = []
        refused: list[str] = []
        for room in rooms:
            label = room.server.label
            t_repo = room.facts.repos.get(pid)
            newer = resync._master_newer(source, s_repo, room.server, t_repo)
            if newer and not newer.startswith("up_to_date:"):
                code, _, text = newer.partition(": ")
                refused.append(
                    f"{label}: target_copy ({code}): {text.replace('replica', 'target')}"
                )
                continue
            if room.free is None:
                refused.append(f"{label}: space: free space on {room.server.bups_root} is unknown")
                continue
            if room.free <= need:
                refused.append(
                    f"{label}: space: {_size(room.free)} free (after the moves planned before), "
                    f"needs more than {_size(need)} ({space_margin:g} x {_size(nbytes)})"
                )
                continue
            has_copy = t_repo is not None and t_repo.master_sha is not None
            to_copy = max(0, nbytes - t_repo.repo_bytes) if has_copy and t_repo else nbytes
            key = (
                room.server.dc != source.dc,
                not has_copy,
                room.masters,
                -(room.free - to_copy),
                room.server.server_id,
            )
            copy = ""
            if has_copy and t_repo is not None:
                copy = "in step" if t_repo.master_sha == s_repo.master_sha else "older"
            fits.append((key, room, to_copy, copy))
        if not fits:
            others = [f"{label}: {why}" for label, why in sorted(excluded.items())]
            unplaced.append(
                Move(
                    pid,
                    source_id,
                    None,
                    nbytes,
                    0,
                    "no host fits: " + ("; ".join(refused + others) or "no other host"),
                )
            )
            continue
        fits.sort(key=lambda f: f[0])
        _key, room, to_copy, copy = fits[0]
        dc = (
            f"same data centre (dc {source.dc})"
            if room.server.dc == source.dc
            else f"data centre {room.server.dc}: no host in dc {source.dc} fits"
        )
        held = f"holds a copy already ({copy})" if copy else "no copy there yet"
        room.masters += 1
        assert room.free is not None
        room.free -= to_copy
        why = (
            f"{dc}; {held}; {room.masters} masters and {_size(room.free)} free after the moves "
            f"planned so far; {len(fits)} host(s) fit"
        )
        moves.append(Move(pid, source_id, room.server.server_id, nbytes, to_copy, why))
    unplaced.sort(key=lambda m: m.project_id)
    return Plan(source, tuple(moves), tuple(unplaced), excluded)


def gather_plan(
    config: Config,
    inventory: Inventory,
    source_id: str,
    *,
    fenced: Iterable[str],
    allow_experimental: bool,
) -> Plan:
    """Probe the host and every candidate now (one session each, in parallel), and plan."""
    from bup_watchdog.gather import gather

    fenced = set(fenced)
    source = inventory.servers[source_id]
    servers = [
        s
        for s in inventory.servers.values()
        if s.server_id == source_id or _excluded(s, source, fenced, allow_experimental) is None
    ]
    facts = {
        f.server_id: f
        for f in gather(
            sorted(servers, key=lambda s: s.server_id),
            config.ssh,
            tcp_timeout=config.check("reachability").connect_timeout,
            live_dirs=False,
        )
    }
    margin = float(getattr(config.repair(REPAIR), "space_margin", 1.2))
    return compute_plan(
        source_id,
        inventory,
        facts,
        fenced=fenced,
        allow_experimental=allow_experimental,
        space_margin=margin,
    )


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as data (``--format json``)."""

    def one(m: Move) -> dict[str, Any]:
        return {
            "project_id": m.project_id,
            "from": m.source_id,
            "to": m.target_id,
            "bytes": m.nbytes,
            "bytes_to_copy": m.bytes_to_copy,
            "why": m.why,
        }

    return {
        "host": plan.host.label,
        "server_id": plan.host.server_id,
        "moves": [one(m) for m in plan.moves],
        "unplaced": [one(m) for m in plan.unplaced],
        "excluded": dict(plan.excluded),
        "bytes_to_copy": plan.bytes_to_copy,
    }


def print_plan(plan: Plan, inventory: Inventory, out: TextIO) -> None:
    """The full list for people: one line per move (project, from, to, size, why)."""

    def label(sid: str | None) -> str:
        server = inventory.servers.get(sid or "")
        return server.label if server else str(sid)

    print(
        f"evacuation of {plan.host.label} (dc {plan.host.dc}): {len(plan.moves)} projects to "
        f"move ({_size(plan.bytes_to_copy)} to copy at most), {len(plan.unplaced)} cannot be "
        "placed",
        file=out,
    )
    for i, m in enumerate(plan.moves, 1):
        print(
            f"  {i:>4}. {m.project_id}  {label(m.source_id)} -> {label(m.target_id)}  "
            f"{_size(m.nbytes):>9}  ({m.why})",
            file=out,
        )
    for m in plan.unplaced:
        print(f"  cannot place {m.project_id} ({_size(m.nbytes)}): {m.why}", file=out)
    for name, why in sorted(plan.excluded.items()):
        print(f"  not a target: {name}: {why}", file=out)
