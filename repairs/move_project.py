"""move_project: make another server a project's master; copy, prove, switch, keep the old copy.

Design (issue 19, and why):

- **Never automatic.** Default mode ``approve``: a move changes where saves go; a human says yes.
- **The request** names the project on its current master (``server_id``) and the target in
  ``params["target"]`` (server id or name); ``params["allow_experimental"]`` lets an experimental
  target through (the seed's "new host added as experimental, after sync move projects there").
- **The copy is resync_replica's**, with the target as the replica: rsync run on the target
  pulling from the master over the hosts' own SSH, no ``--delete``, objects ``--ignore-existing``
  packs before indexes, conf/ ``--update``, the live tree ``--update --one-file-system
  --exclude=/.snapshots`` behind MOUNTED_GUARD on both sides, the target's ref moved last by
  compare-and-swap, fast-forward only. A target whose copy is not strictly behind (newer, same
  second, unreadable, or no ancestor at execute time) is refused or stops the move: nothing is
  overwritten and nothing is switched.
- **Proved on the target before the switch**: its head equals the master's (and the master's did
  not move during the copy: a save meanwhile stops the move), the deep check passes there, and an
  ``rsync --dry-run --checksum --itemize-changes`` of the live tree finds no file to send.
- **The switch is a compare-and-swap on the inventory** (``InventoryWriter.set_master``): only
  while the master is still the source; the old master joins the replicas in the same write.
  conf/replicas.json on every copy is rewritten only when the set of locations changed.
- **Deleting the old copy is never part of a move** (a separate, approved step).
- **Cassandra**: ``UPDATE projects SET bup_location = new … IF bup_location = old`` (a
  lightweight transaction). The schema has no replica list: replicas are the keys of
  ``bup_last_save``, so the old master stays a replica only if a save of it is recorded there;
  a move whose source has none is refused (``inventory_replica``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from bup_watchdog.config import Config
from bup_watchdog.inventory.base import InventoryWriter
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import HostFacts, Inventory, Project, Server
from bup_watchdog.repairs._copy import (
    address_problems,
    guarded,
    mount_blockers,
    probe_pair,
    repo_path,
    tail,
)
from bup_watchdog.repairs._repo_checks import space_blocker
from bup_watchdog.repairs._resync_steps import ResyncStep, Snapshot, resync_steps, rsync_pull
from bup_watchdog.repairs.base import (
    Mode,
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    Step,
    mode_field,
    step_failed,
)
from bup_watchdog.repairs.resync_replica import ResyncReplica, ResyncReplicaSettings
from bup_watchdog.transport.base import CommandResult

_RESYNC = ResyncReplica()
# The copy's steps, in order (resync_replica's, without its conflict branch: a move stops).
_COPY = (
    "init",
    "packs",
    "objects",
    "complete",
    "ancestry",
    "conf",
    "replicas_json",
    "mounted_replica",
    "mounted_master",
    "live",
    "fast_forward",
)
# Sent to ``python3 -S - PATH JSON``: writes conf/replicas.json atomically (temp file, rename).
WRITE_REPLICAS = r"""
import os, sys
path, text = sys.argv[1], sys.argv[2]
tmp = path + ".bup-watchdog.tmp"
with open(tmp, "w") as f:
    f.write(text + "\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, path)
"""


class MoveProjectSettings(ResyncReplicaSettings):
    """move_project: copy a project to a target server, prove it, switch the master (CAS)."""

    mode: Mode = mode_field("approve")
    space_margin: float = Field(
        1.2,
        ge=1.0,
        description="The target's bups_root must have more free bytes than this factor times "
        "the master repository's size.",
    )


@dataclass(frozen=True, slots=True)
class MoveStep(ResyncStep):
    """A step of a move's plan (``kind`` as in resync_replica, plus 'live_check')."""


def inventory_writer(ctx: RepairContext) -> InventoryWriter | None:
    """The writable inventory behind a repair context, if the configured source has one."""
    config = getattr(ctx, "config", None)
    if not isinstance(config, Config):
        return None
    if config.inventory.source == "file" and config.inventory.file is not None:
        return FileInventory(Path(config.inventory.file), default_user=config.ssh.user)
    if config.inventory.source == "cassandra":
        from bup_watchdog.inventory.cassandra import CassandraInventory

        return CassandraInventory.from_config(config)
    return None


def resolve_target(ctx: RepairContext, value: object) -> Server | None:
    """The server ``params["target"]`` names, by id or by name."""
    return _server_named(ctx.inventory, value)


def _server_named(inventory: Inventory, value: object) -> Server | None:
    if not isinstance(value, str) or not value:
        return None
    servers = inventory.servers
    if value.lower() in servers:
        return servers[value.lower()]
    named = [s for s in servers.values() if s.name and s.name == value]
    return named[0] if len(named) == 1 else None


def _changes(result: CommandResult) -> list[str]:
    """The itemized lines of an rsync dry run that would send content ('.' lines: attributes)."""
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    return [line for line in lines if line[:1] in ("<", ">", "c", "h", "*")]


class MoveProject(Repair[MoveProjectSettings]):
    name = "move_project"
    Settings = MoveProjectSettings
    # An operator's decision, never the answer to a finding: no check, so neither the schedule,
    # an alert nor the report proposes a move for a replica that is behind (resync_replica does).
    check = ""

    def leased(self, req: RepairRequest, inventory: Inventory) -> tuple[str, ...]:
        """The source, and the target's copy the move writes (a resync there would race it)."""
        target = _server_named(inventory, req.params.get("target"))
        if target is None or target.server_id == req.server_id:
            return (req.target,)
        return (req.target, f"{target.server_id}/{req.project_id}")

    def _parties(self, req: RepairRequest, ctx: RepairContext) -> tuple[Project, Server, Server]:
        assert req.project_id is not None
        project = ctx.project(req.project_id)
        if project is None:
            raise RepairError(f"project {req.project_id} is not in the inventory")
        target = resolve_target(ctx, req.params.get("target"))
        if target is None:
            raise RepairError(f"params target {req.params.get('target')!r} is no known server")
        return project, ctx.server(req.server_id), target

    # -- preconditions -----------------------------------------------------------------------

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: MoveProjectSettings
    ) -> list[str]:
        assert req.project_id is not None
        pid = req.project_id
        project = ctx.project(pid)
        if project is None:
            return [f"inventory: project {pid} is not in the inventory"]
        if project.deleted:
            return [f"deleted: project {pid} is marked deleted; nothing is moved"]
        if ctx.inventory.stale:
            return ["inventory_stale: the inventory comes from the local cache; no move on it"]
        if req.server_id != project.master:
            return [
                f"not_master: {req.server_id} is not the master of {pid} (the inventory says "
                f"{project.master}); a move starts from the master"
            ]
        target = resolve_target(ctx, req.params.get("target"))
        if target is None:
            return [
                f"target_unknown: params target {req.params.get('target')!r} is no server id or "
                "name of the inventory"
            ]
        source = ctx.server(req.server_id)
        if target.server_id == source.server_id:
            return [f"same_host: the target {target.label} is already the master of {pid}"]
        writer = inventory_writer(ctx)
        if writer is None:
            return [
                "inventory_write: the configured inventory source cannot be switched by the "
                "watchdog; move the master by hand"
            ]
        if writer.name == "cassandra" and req.server_id not in project.bup_last_save:
            return [
                f"inventory_replica: projects.bup_last_save of {pid} records no save on "
                f"{req.server_id}, so after the switch the old master would not be listed as a "
                "replica; refusing to hide a copy"
            ]
        bad = [f"{s.label}: {p}" for s in (source, target) for p in address_problems(s)]
        if bad:
            return [f"bad_address: {'; '.join(bad)}"]
        fenced = [s.label for s in (source, target) if ctx.fenced(s.server_id)]
        if fenced:
            return [f"fenced: {', '.join(fenced)} is fenced; nothing is moved to or from it"]
        if target.disabled:
            return [f"disabled: the target {target.label} is disabled in the inventory"]
        if target.experimental and req.params.get("allow_experimental") is not True:
            return [
                f"experimental: the target {target.label} is experimental; a move there needs "
                "allow_experimental"
            ]

        s_facts, t_facts, unreachable = probe_pair(ctx, source, target, pid)
        if unreachable:
            return [unreachable]
        reasons = mount_blockers((source, s_facts), (target, t_facts))
        if reasons:
            return reasons

        s_repo = s_facts.repos.get(pid)
        integrity = _RESYNC._master_integrity(pid, source, s_repo, s_facts)
        reasons = [f"integrity: {integrity}"] if integrity else []
        reasons += [
            f"integrity: repo_integrity/{f.code}: {f.message}"
            for f in ctx.evaluate("repo_integrity", (source.server_id,))
            if f.server_id == source.server_id and f.project_id == pid
        ]
        if reasons:
            return reasons
        assert s_repo is not None
        t_repo = t_facts.repos.get(pid)
        ahead = _RESYNC._master_newer(source, s_repo, target, t_repo)
        if ahead and not ahead.startswith("up_to_date:"):
            code, _, why = ahead.partition(": ")
            return [f"target_copy: {why.replace('replica', 'target')} ({code})"]
        reasons += _RESYNC._live_dirs(pid, (source, s_facts), (target, t_facts))
        space = space_blocker(target, t_facts, s_repo.repo_bytes, settings.space_margin, "the")
        if space:
            reasons.append(space)
        for server in (source, target):
            busy = _RESYNC._busy(ctx, server, pid)
            if busy:
                reasons.append(f"busy: {busy}")
        return reasons

    # -- plan --------------------------------------------------------------------------------

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: MoveProjectSettings
    ) -> list[Step]:
        project, source, target = self._parties(req, ctx)
        bad = address_problems(source) + address_problems(target)
        if bad:
            raise RepairError("; ".join(bad))
        s_facts, t_facts = ctx.facts(source.server_id), ctx.facts(target.server_id)
        for s, f in ((source, s_facts), (target, t_facts)):
            if not f.probed:
                raise RepairError(f"cannot probe {s.label}: {f.failure_message}")
        snap = _RESYNC._snapshot(project, source, target, s_facts, t_facts)
        steps = [
            MoveStep(s.server_id, s.argv, s.description, timeout=s.timeout, kind=s.kind)
            for s in resync_steps(snap, settings)
            if s.kind in _COPY
        ]
        steps += self._proof(snap, settings)
        return list(steps)

    def _proof(self, s: Snapshot, settings: MoveProjectSettings) -> list[MoveStep]:
        """The live tree's check: an rsync dry run (checksums) that must find nothing to send."""
        if not s.master_live_exists:
            return []
        pid, m, r = s.project.project_id, s.master, s.replica
        sender = shlex.join(guarded("master", m.projects_root, "rsync"))
        argv = guarded(
            "replica",
            r.projects_root,
            *rsync_pull(
                settings,
                m,
                f"{pid}/",
                f"{pid}/",
                "--dry-run",
                "--checksum",
                "--itemize-changes",
                "--one-file-system",
                "--exclude=/.snapshots",
                f"--rsync-path={sender}",
            ),
        )
        return [
            MoveStep(
                r.server_id,
                argv,
                f"prove the live tree on {r.label} holds every file of {m.label} with the same "
                "content (rsync dry run with checksums: nothing to send)",
                timeout=settings.rsync_timeout,
                kind="live_check",
            )
        ]

    # -- execute -----------------------------------------------------------------------------

    def execute(
        self,
        req: RepairRequest,
        plan: list[Step],
        ctx: RepairContext,
        settings: MoveProjectSettings,
    ) -> Outcome:
        steps = {s.kind: s for s in plan if isinstance(s, MoveStep)}
        if len(steps) != len(plan) or "fast_forward" not in steps or "complete" not in steps:
            raise RepairError("the plan was not made by move_project; refusing to run it")
        project, source, target = self._parties(req, ctx)
        pid = project.project_id
        new = steps["complete"].argv[-1]
        out = Outcome()

        def run(kind: str) -> CommandResult:
            step = steps[kind]
            result = ctx.run(step)
            out.output.append(f"$ {shlex.join(step.argv)}  # rc={result.returncode}")
            text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
            if text:
                out.output.append(text[-2000:])
            if not result.ok:
                why = tail(result)
                if kind == "ancestry" and result.returncode == 1:
                    why = "the target's commit is no ancestor of the master's (a conflict)"
                raise RepairError(f"{step_failed(step, result, why)}; nothing was switched")
            return result

        for kind in _COPY:
            if kind in steps:
                run(kind)
        self._prove(ctx, source, target, pid, new)
        if "live_check" in steps:
            changes = _changes(run("live_check"))
            if changes:
                raise RepairError(
                    f"the live tree on {target.label} differs from {source.label}'s in "
                    f"{len(changes)} file(s) (e.g. {changes[0][:200]!r}); nothing was switched"
                )
            self._still_unmoved(ctx, source, pid, new)  # the live check may take minutes
        writer = inventory_writer(ctx)
        if writer is None:
            raise RepairError("the inventory cannot be written; nothing was switched")
        if not writer.set_master(pid, source.server_id, target.server_id):
            raise RepairError(
                f"the inventory changed meanwhile: the master of {pid} is no longer "
                f"{source.label}; nothing was switched (the copy on {target.label} stays, a "
                "replica-to-be)"
            )
        out.output.append(
            f"inventory: master of {pid} {source.server_id} -> {target.server_id} "
            f"(compare-and-swap); {source.label} is now a replica and keeps its copy"
        )
        self._replicas_json(ctx, project, source, target, out)
        return out

    def _prove(
        self, ctx: RepairContext, source: Server, target: Server, pid: str, new: str
    ) -> None:
        """The target's head is the master's, the master did not move, the deep check passes."""
        t_facts = ctx.facts(target.server_id, deep_ids=(pid,))
        s_facts = ctx.facts(source.server_id)
        if not t_facts.probed or not s_facts.probed:
            raise RepairError("cannot probe both hosts after the copy; nothing was switched")
        s_repo, t_repo = s_facts.repos.get(pid), t_facts.repos.get(pid)
        if s_repo is None or s_repo.master_sha != new:
            raise RepairError(
                f"the master on {source.label} moved during the copy (a save?): now "
                f"{s_repo.master_sha if s_repo else 'missing'}, copied {new}; nothing was "
                "switched, run the move again"
            )
        if t_repo is None or t_repo.master_sha != new:
            raise RepairError(
                f"the target's head on {target.label} is "
                f"{t_repo.master_sha if t_repo else 'missing'}, not the master's {new}; nothing "
                "was switched"
            )
        deep = t_facts.deep.get(pid)
        if deep is None or not deep.ok:
            why = deep.message if deep else (t_facts.deep_error or "no result")
            raise RepairError(
                f"the deep check fails on {target.label}'s copy: {why}; nothing was switched"
            )

    def _still_unmoved(self, ctx: RepairContext, source: Server, pid: str, new: str) -> None:
        """Right before the switch: no save ran on the master since the copy was proven, and
        none runs now (else it would be stranded on what becomes a replica)."""
        busy = _RESYNC._busy(ctx, source, pid)
        if busy:
            raise RepairError(f"{busy}; nothing was switched, run the move again")
        facts = ctx.facts(source.server_id)
        repo = facts.repos.get(pid) if facts.probed else None
        if repo is None or repo.master_sha != new:
            now = repo.master_sha if repo else f"unknown ({facts.failure_message or 'missing'})"
            raise RepairError(
                f"the master on {source.label} moved during the live tree's check (a save?): "
                f"now {now}, copied {new}; nothing was switched, run the move again"
            )

    def _replicas_json(
        self, ctx: RepairContext, project: Project, source: Server, target: Server, out: Outcome
    ) -> None:
        """conf/replicas.json on every copy, when the move added a location."""
        if target.server_id in project.locations:
            return  # the same set of servers: placement unchanged
        replicas = [r for r in project.replicas if r != target.server_id] + [source.server_id]
        text = json.dumps([target.server_id, *replicas])
        for sid in (target.server_id, *replicas):
            server = ctx.server(sid)
            path = f"{repo_path(server, project.project_id)}/conf/replicas.json"
            result = ctx.run(
                Step(
                    sid,
                    (ctx.python, "-S", "-", path, text),
                    f"write the new placement into {path} on {server.label}",
                    stdin=WRITE_REPLICAS.encode(),
                    timeout=60.0,
                )
            )
            out.output.append(f"replicas.json on {server.label}: rc={result.returncode}")
            if not result.ok:
                out.output.append(f"  could not write it: {tail(result)} (fix by hand)")

    # -- verify ------------------------------------------------------------------------------

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: MoveProjectSettings
    ) -> tuple[bool, str]:
        """The inventory names the target as master, the source as a replica; heads equal."""
        assert req.project_id is not None
        pid = req.project_id
        target = resolve_target(ctx, req.params.get("target"))
        writer = inventory_writer(ctx)
        if target is None or writer is None:
            return False, "cannot verify: the target or the inventory is unknown"
        project = writer.load().projects.get(pid)
        if project is None or project.master != target.server_id:
            return False, f"the inventory does not name {target.label} as master of {pid}"
        if req.server_id not in project.replicas:
            return False, f"the inventory does not list {req.server_id} as a replica of {pid}"
        facts: dict[str, HostFacts] = {
            sid: ctx.facts(sid) for sid in (req.server_id, target.server_id)
        }
        heads = {
            sid: (f.repos[pid].master_sha if pid in f.repos else None) for sid, f in facts.items()
        }
        if len(set(heads.values())) != 1 or None in heads.values():
            return False, f"heads differ after the move: {heads}"
        return True, (
            f"{target.label} is the master of {pid} at {heads[target.server_id]}; the old master "
            f"{req.server_id} is a replica with the same head and keeps its copy"
        )


repair = MoveProject()
