"""resync_replica: bring a replica of a project up to its master; never destroy newer data.

Design (DESIGN §4, and why):

- **Pull, run on the replica.** Every rsync runs on the host it writes to, pulling from the other
  over SSH (``-o BatchMode=yes -o StrictHostKeyChecking=yes``: the hosts' own keys and
  known_hosts, never a new host key accepted). The writing rsync is then the process the
  watchdog started, under its own timeout, on the host whose mounts were just checked; the
  host it reads from only runs a sender. The conflict path copies the replica's objects to the
  master the same way, run on the master. One rule for the reviewer: the writer runs where the
  data lands.
- **No ``--delete`` anywhere.** Git objects are immutable and named by their content, so
  ``objects/`` is copied with ``--ignore-existing`` (bup's caches ``*.midx``/``bup.bloom``,
  ``*tmp*`` leftovers of an unfinished write and ``objects/info/`` are not copied). Refs are
  never rsynced.
- **Each ``.pack`` before its ``.idx``.** rsync sends a directory in name order, ``pack-X.idx``
  before ``pack-X.pack``, so a copy that stops half-way (ENOSPC, timeout) used to leave an
  ``.idx`` whose ``.pack`` never came (``repo_garbage``: ``orphan_idx``). The objects are now
  copied in two passes: the ``*.pack`` files alone, then everything (the ``.idx`` files). git and
  bup ignore a ``.pack`` without ``.idx`` (nothing reads it until its index arrives) and treat
  an ``.idx`` without ``.pack`` as absent, so the order only keeps a failed copy tidy; rsync
  writes each file under a temporary name and renames it when complete.
- **The ref moves last, by compare-and-swap, only forward.** After the copy the replica proves
  the master's commit is complete there (``git fsck --connectivity-only NEW``), then
  ``git merge-base --is-ancestor OLD NEW`` decides: 0, fast-forward; 1, conflict; anything else
  (a missing object), stop. ``git update-ref refs/heads/master NEW OLD`` is the commit point of
  the whole repair and runs after conf/ and the live files: a failure before it leaves the
  master "newer", so the next attempt is allowed. Its reflog entry carries the master's own
  reflog time (``GIT_COMMITTER_DATE``), as the old rsync of ``logs/`` did: stamping "now"
  would make a replica that copied commit A look newer than the master's commit B saved a
  second earlier, and every later resync would be refused as ``replica_newer``.
- **Conflict.** When the replica's commit is not an ancestor of the master's, both commits are
  kept: ``refs/tags/conflict-master-<UTC>`` is created on the replica and, after the replica's
  objects are copied over (``--ignore-existing``) and proven complete, on the master too;
  ``refs/heads/master`` is left alone on both and the repair stops with status ``conflict``.
  The master's copy is not leased, so a prune's swap can land between the proof and the tag
  (it refuses after the tag, refs differing): when git refuses the tag (its commit is gone) or
  the proof made again under the tag fails, the replica's objects are copied again, proven,
  and the tag written.
  While that tag stands and the master has not absorbed the commit, a new attempt is refused
  (``conflict_pending``) instead of tagging again.
- **conf/** is copied with ``--update`` (a newer file on the replica is kept) except
  ``replicas.json``: its mtime says nothing about which copy is right. The master's must agree
  with the inventory (checked), the replica's must agree too or be missing; a missing one is
  filled from the master's (``--ignore-existing``); a disagreeing one is refused, because a
  placement change half done is the state in which the 2014 near-loss happened.
- **Live files** are copied with ``--update --one-file-system --exclude=/.snapshots``, only when
  both hosts' ``/projects`` are mounted (checked on fresh facts, and again with ``mountpoint -q``
  on both hosts right before the copy, the boot race). The re-check alone left a window: an
  unmount between it and the rsync would let the rsync write into (or read from) the root
  disk's ``/projects/<project_id>``. So the rsync itself runs behind ``MOUNTED_GUARD`` on both
  sides (the receiver on the replica directly, the sender on the master as ``--rsync-path``):
  it changes into ``/projects`` first, which holds the mount busy (``umount`` fails with EBUSY;
  ``umount -l`` only detaches it, and the copy stays inside the tree it checked), then proves
  that its working directory is the root of what is mounted at ``/projects`` now, and only then
  execs rsync, with paths relative to that directory. Known limit: ``--update`` does not apply
  to a change of type, so a replica file where the master has a directory or symlink is
  replaced whatever the dates say.
"""

from __future__ import annotations

import json
import re
import shlex
import weakref

from pydantic import Field

from bup_watchdog.model import HostFacts, Project, RepoFacts, Server
from bup_watchdog.repairs._copy import (
    address_problems,
    git_argv,
    live_path,
    mount_blockers,
    probe_pair,
    repo_path,
    tail,
)
from bup_watchdog.repairs._repo_checks import space_blocker
from bup_watchdog.repairs._resync_steps import ResyncStep, Snapshot, resync_steps
from bup_watchdog.repairs.base import (
    Mode,
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
    step_failed,
)

_SHA = re.compile(r"^[0-9a-f]{40}$")
# The probe's master_error for a repository without the ref (watchdog/probe.py, _master_ref).
_MISSING_REF = "refs/heads/master is missing"


class ResyncReplicaSettings(RepairSettings):
    """resync_replica: bring a replica up to its master (rsync, no --delete; fast-forward only)."""

    mode: Mode = mode_field("approve")
    rsync_timeout: float = Field(
        3600.0, gt=0, description="Seconds one copy (rsync) or git step may take in all."
    )
    rsync_io_timeout: int = Field(
        300, ge=1, description="rsync --timeout: seconds without any data before rsync gives up."
    )
    space_margin: float = Field(
        1.1,
        ge=1.0,
        description="The replica's bups_root must have more free bytes than this factor times "
        "the master repository's size.",
    )
    bwlimit_kib: int | None = Field(
        None,
        ge=1,
        description="rsync --bwlimit in KiB per second for every copy (unset: no limit).",
        examples=[20000],
    )


# The facts preconditions() approved, per repair run (the guard uses one context for
# preconditions, plan and execute): the plan acts on exactly what was checked.
_approved: weakref.WeakKeyDictionary[object, dict[str, Snapshot]] = weakref.WeakKeyDictionary()

# Stdlib-only scan of /proc, sent to ``python3 -S -`` on a host: prints a JSON list of the
# processes working on one repository. A process counts when BUP_DIR or GIT_DIR in its environment
# points into the repository, or when it is bup, git or rsync and names the project on its command
# line or runs inside the repository. Only processes in the scanner's own mount namespace count:
# another namespace sees other files under the same path (containers; the sandbox's other hosts).
BUSY_SCAN = r"""
import json, os, sys
repo, project_id = sys.argv[1], sys.argv[2].encode()
real = os.path.realpath(repo)
def inside(path):
    path = os.path.realpath(path)
    return path == real or path.startswith(real + "/")
def ns(pid):
    try:
        return os.readlink("/proc/%s/ns/mnt" % pid)
    except OSError:
        return None
mine, pid = set(), os.getpid()
while pid > 1:
    mine.add(pid)
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        pid = int(stat[stat.rfind(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        break
own_ns, hits = ns("self"), []
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in mine or ns(name) != own_ns:
        continue
    try:
        with open("/proc/%s/cmdline" % name, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        continue
    if not argv or not argv[0]:
        continue
    why = None
    try:
        with open("/proc/%s/environ" % name, "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        env = []
    for item in env:
        key, _, value = item.partition(b"=")
        if key in (b"BUP_DIR", b"GIT_DIR") and value and inside(os.fsdecode(value)):
            why = key.decode() + " is the repository"
    tool = any(
        os.path.basename(a).split(b"-")[0] in (b"bup", b"git", b"rsync") or b"/lib/bup/" in a
        for a in argv[:3]
    )
    if why is None and tool:
        try:
            cwd = os.readlink("/proc/%s/cwd" % name)
        except OSError:
            cwd = "/"
        if project_id in b"\0".join(argv):
            why = "names the project"
        elif inside(cwd):
            why = "runs inside the repository"
    if why:
        cmd = b" ".join(argv).decode("utf-8", "replace")[:160]
        hits.append({"pid": int(name), "cmd": cmd, "why": why})
print(json.dumps(hits))
"""


def _bwlimited(req: RepairRequest, settings: ResyncReplicaSettings) -> ResyncReplicaSettings:
    """The settings with the request's ``params["bwlimit_kib"]`` (a rebuild's share of its
    bandwidth budget), which may only lower the configured ``bwlimit_kib``, never raise it."""
    given = req.params.get("bwlimit_kib")
    if given is None:
        return settings
    if not isinstance(given, int) or isinstance(given, bool) or not 1 <= given <= 10**9:
        raise RepairError(f"params bwlimit_kib {given!r} is not a whole number of KiB/s >= 1")
    limit = min(given, settings.bwlimit_kib) if settings.bwlimit_kib else given
    return settings.model_copy(update={"bwlimit_kib": limit})


class ResyncReplica(Repair[ResyncReplicaSettings]):
    name = "resync_replica"
    Settings = ResyncReplicaSettings
    check = "replication_lag"
    codes = ("behind", "replica_missing", "differs")

    # -- what the plan is built from -------------------------------------------------------

    def _parties(self, req: RepairRequest, ctx: RepairContext) -> tuple[Project, Server, Server]:
        assert req.project_id is not None
        project = ctx.project(req.project_id)
        if project is None:
            raise RepairError(f"project {req.project_id} is not in the inventory")
        return project, ctx.server(project.master), ctx.server(req.server_id)

    def _snapshot(
        self,
        project: Project,
        master: Server,
        replica: Server,
        m_facts: HostFacts,
        r_facts: HostFacts,
    ) -> Snapshot:
        pid = project.project_id
        m_repo = m_facts.repos.get(pid)
        if m_repo is None or m_repo.master_sha is None or not _SHA.fullmatch(m_repo.master_sha):
            raise RepairError(f"the master's repository on {master.label} has no readable master")
        r_repo = r_facts.repos.get(pid)
        old = r_repo.master_sha if r_repo is not None else None
        if old is not None and not _SHA.fullmatch(old):
            raise RepairError(f"the replica's master on {replica.label} is not a sha")
        return Snapshot(
            project=project,
            master=master,
            replica=replica,
            new=m_repo.master_sha,
            new_time=m_repo.reflog_last_time,
            old=old,
            replica_repo_exists=r_repo is not None,
            master_live_exists=pid in m_facts.project_dirs,
        )

    # -- preconditions -----------------------------------------------------------------------

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: ResyncReplicaSettings
    ) -> list[str]:
        assert req.project_id is not None
        pid = req.project_id
        project = ctx.project(pid)
        if project is None:
            return [f"inventory: project {pid} is not in the inventory"]
        if project.deleted:
            return [f"deleted: project {pid} is marked deleted; nothing is replicated"]
        if ctx.inventory.stale:
            return [
                "inventory_stale: the inventory comes from the local cache (its source is down), "
                "so which copy is the master may have changed; resync waits for a fresh one"
            ]
        if req.server_id == project.master:
            return [f"is_master: {req.server_id} is the master of {pid}, not a replica"]
        if not project.replicas:
            return [f"replicas: the inventory lists no replicas for {pid}; refusing to guess"]
        if req.server_id not in project.replicas:
            return [f"replicas: {req.server_id} is not in the inventory's replica list of {pid}"]
        master, replica = ctx.server(project.master), ctx.server(req.server_id)
        bad = [f"{s.label}: {p}" for s in (master, replica) for p in address_problems(s)]
        if bad:
            return [f"bad_address: {'; '.join(bad)}"]
        fenced = [s.label for s in (replica, master) if ctx.fenced(s.server_id)]
        if fenced:
            return [f"fenced: {', '.join(fenced)} is fenced; no replication to or from it"]

        m_facts, r_facts, unreachable = probe_pair(ctx, master, replica, pid)
        if unreachable:
            return [unreachable]

        reasons = mount_blockers((master, m_facts), (replica, r_facts))
        labels = {master.server_id: master.label, replica.server_id: replica.label}
        for f in ctx.evaluate("mount_sanity", (master.server_id, replica.server_id)):
            if f.server_id in labels:
                reasons.append(f"mount_sanity: {labels[f.server_id]}: {f.code}: {f.message}")
        if reasons:
            return reasons  # the boot race: nothing else matters until the mounts are right

        m_repo = m_facts.repos.get(pid)
        integrity = self._master_integrity(pid, master, m_repo, m_facts)
        if integrity:
            return [f"repo_integrity: {integrity}"]
        assert m_repo is not None and m_repo.master_sha is not None
        r_repo = r_facts.repos.get(pid)

        agree = self._replicas_json(project, master, m_repo, replica, r_repo)
        if agree:
            return [f"replicas_json: {agree}"]

        newer = self._master_newer(master, m_repo, replica, r_repo)
        if newer:
            return [newer]

        reasons += self._live_dirs(pid, (master, m_facts), (replica, r_facts))
        space = space_blocker(
            replica, r_facts, m_repo.repo_bytes, settings.space_margin, "the master"
        )
        if space:
            reasons.append(space)
        for server in (master, replica):
            busy = self._busy(ctx, server, pid)
            if busy:
                reasons.append(f"busy: {busy}")
        if reasons:
            return reasons
        pending = self._conflict_pending(ctx, master, replica, pid, m_repo.master_sha, r_repo)
        if pending:
            return [pending]
        _approved.setdefault(ctx, {})[req.target] = self._snapshot(
            project, master, replica, m_facts, r_facts
        )
        return []

    def _master_integrity(
        self, pid: str, master: Server, repo: RepoFacts | None, facts: HostFacts
    ) -> str | None:
        """Why the master's copy must not be replicated (repo_integrity), or None."""
        where = f"the master's repository on {master.label}"
        if repo is None:
            return f"{where} is missing"
        if repo.is_symlink:
            return f"{where} is a symlink"
        if repo.master_error or repo.master_sha is None:
            return f"{where}: {repo.master_error or 'no master ref'}"
        if repo.master_in_pack is not True:
            return f"{where}: master commit {repo.master_sha} is in no pack with its .pack"
        if repo.errors:
            return f"{where}: {repo.errors[0]}"
        deep = facts.deep.get(pid)
        if deep is None:
            why = facts.deep_error or "no result"
            return f"{where}: the deep check (git fsck, bup ls) did not run: {why}"
        if deep.master_sha != repo.master_sha:
            return f"{where}: the deep check saw {deep.master_sha}, the probe {repo.master_sha}"
        if not deep.ok:
            return f"{where} fails the deep check: {deep.message or 'no message'}"
        return None

    def _replicas_json(
        self,
        project: Project,
        master: Server,
        m_repo: RepoFacts,
        replica: Server,
        r_repo: RepoFacts | None,
    ) -> str | None:
        """Whether conf/replicas.json agrees with the inventory (as sets of server ids)."""
        want = set(project.locations)
        if m_repo.replicas_error or m_repo.replicas is None:
            return (
                f"the master's conf/replicas.json on {master.label} is unreadable or missing "
                f"({m_repo.replicas_error or 'missing'})"
            )
        if not m_repo.replicas:
            return f"the master's conf/replicas.json on {master.label} is empty"
        if set(m_repo.replicas) != want:
            return (
                f"the master's conf/replicas.json on {master.label} lists "
                f"{sorted(m_repo.replicas)}, the inventory {sorted(want)}"
            )
        if r_repo is not None and r_repo.replicas_error:
            return f"the replica's conf/replicas.json on {replica.label} is unreadable"
        if r_repo is not None and r_repo.replicas is not None and set(r_repo.replicas) != want:
            return (
                f"the replica's conf/replicas.json on {replica.label} lists "
                f"{sorted(r_repo.replicas)}, the inventory {sorted(want)}; fix the placement first"
            )
        return None

    def _master_newer(
        self, master: Server, m_repo: RepoFacts, replica: Server, r_repo: RepoFacts | None
    ) -> str | None:
        """'code: why' unless the master's copy is strictly newer than the replica's."""
        if r_repo is None:
            return None  # replica_missing: made from scratch
        where = f"the replica's repository on {replica.label}"
        new = m_repo.master_sha or "?"
        if r_repo.is_symlink:
            return f"replica_unreadable: {where} is a symlink"
        if r_repo.master_sha is None:
            if r_repo.master_error == _MISSING_REF and r_repo.pack_count == 0 and not r_repo.errors:
                return None  # an empty repository: nothing in it to lose
            return (
                f"replica_unreadable: {where} has no readable master "
                f"({r_repo.master_error or '; '.join(r_repo.errors) or 'unknown'}) but may hold "
                "saves; a human must look"
            )
        if r_repo.master_sha == m_repo.master_sha:
            return f"up_to_date: {where} already has the master's {new[:12]}"
        m_time, r_time = m_repo.reflog_last_time, r_repo.reflog_last_time
        if m_time is None or r_time is None:
            return (
                "age_unknown: cannot tell which copy is newer (no reflog time on "
                f"{master.label if m_time is None else replica.label})"
            )
        if r_time > m_time:
            return (
                f"replica_newer: {where} was last saved {r_time - m_time} s AFTER the master "
                f"({r_repo.master_sha[:12]} vs {new[:12]}); it may hold work the "
                "master lacks and is not overwritten"
            )
        if r_time == m_time:
            return (
                f"replica_newer: {where} and the master were last saved at the same second with "
                "different commits; which is newer cannot be told"
            )
        return None

    def _live_dirs(self, pid: str, *sides: tuple[Server, HostFacts]) -> list[str]:
        out = []
        for server, facts in sides:
            d = facts.project_dirs.get(pid)
            if d is not None and d.is_symlink:
                out.append(f"symlink: {live_path(server, pid)} on {server.label} is a symlink")
        return out

    def _busy(self, ctx: RepairContext, server: Server, pid: str) -> str | None:
        """A process working on the repository on ``server`` (bup save, git, rsync), if any."""
        repo = repo_path(server, pid)
        step = Step(
            server.server_id,
            (ctx.python, "-S", "-", repo, pid),
            f"look for processes working on {repo}",
            stdin=BUSY_SCAN.encode(),
            timeout=60.0,
        )
        result = ctx.run(step)
        try:
            hits = json.loads(result.stdout) if result.ok else None
        except ValueError:
            hits = None
        if not isinstance(hits, list):
            return f"cannot tell whether bup works on {repo} on {server.label}: {tail(result)}"
        if not hits:
            return None
        shown = "; ".join(
            f"pid {h.get('pid')}: {h.get('cmd')!r} ({h.get('why')})"
            for h in hits[:3]
            if isinstance(h, dict)
        )
        return f"{len(hits)} process(es) work on {repo} on {server.label}: {shown}"

    def _conflict_pending(
        self,
        ctx: RepairContext,
        master: Server,
        replica: Server,
        pid: str,
        new: str,
        r_repo: RepoFacts | None,
    ) -> str | None:
        """Refuse while an earlier conflict tag on the replica's commit is unresolved."""
        old = r_repo.master_sha if r_repo else None
        if old is None:
            return None
        repo = repo_path(replica, pid)
        result = ctx.run(
            Step(
                replica.server_id,
                git_argv(
                    repo,
                    "for-each-ref",
                    f"--points-at={old}",
                    "--format=%(refname)",
                    "refs/tags/conflict-master-*",
                ),
                "earlier conflict tags of the replica's commit",
                timeout=60.0,
            )
        )
        if not result.ok:
            return (
                f"replica_unreadable: cannot read the replica's commit {old[:12]} on "
                f"{replica.label}: {tail(result)}"
            )
        tags = result.stdout.decode("utf-8", "replace").split()
        if not tags:
            return None
        merged = ctx.run(
            Step(
                master.server_id,
                git_argv(repo_path(master, pid), "merge-base", "--is-ancestor", old, new),
                "has the master absorbed the conflicting commit?",
                timeout=60.0,
            )
        )
        if merged.returncode == 0:
            return None  # resolved on the master: the fast-forward will now work
        return (
            f"conflict_pending: the replica's commit {old[:12]} on {replica.label} was tagged "
            f"{tags[0].removeprefix('refs/tags/')} by an earlier resync and the master has not "
            "absorbed it; an operator must resolve the conflict first"
        )

    # -- plan --------------------------------------------------------------------------------

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: ResyncReplicaSettings
    ) -> list[Step]:
        snap = _approved.get(ctx, {}).pop(req.target, None)
        if snap is None:  # dry run or approval queue: fresh facts, no preconditions yet
            project, master, replica = self._parties(req, ctx)
            bad = address_problems(master) + address_problems(replica)
            if bad:
                raise RepairError("; ".join(bad))
            r_facts, m_facts = ctx.facts(replica.server_id), ctx.facts(master.server_id)
            for s, f in ((replica, r_facts), (master, m_facts)):
                if not f.probed:
                    raise RepairError(f"cannot probe {s.label}: {f.failure_message}")
            snap = self._snapshot(project, master, replica, m_facts, r_facts)
        return list(resync_steps(snap, _bwlimited(req, settings)))

    def execute(
        self,
        req: RepairRequest,
        plan: list[Step],
        ctx: RepairContext,
        settings: ResyncReplicaSettings,
    ) -> Outcome:
        steps = {s.kind: s for s in plan if isinstance(s, ResyncStep)}
        if len(steps) != len(plan) or "fast_forward" not in steps:
            raise RepairError("the plan was not made by resync_replica; refusing to run it")
        out = Outcome()

        def run(kind: str, ok: tuple[int, ...] = (0,)) -> int:
            step = steps[kind]
            result = ctx.run(step)
            out.output.append(f"$ {shlex.join(step.argv)}  # rc={result.returncode}")
            text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
            if text:
                out.output.append(text[-2000:])
            if result.returncode not in ok:
                raise RepairError(step_failed(step, result, tail(result)))
            return result.returncode

        for kind in ("init", "packs", "objects", "complete"):
            if kind in steps:
                run(kind)
        if "ancestry" in steps and run("ancestry", ok=(0, 1)) == 1:
            for kind in (
                "conflict_tag_replica",
                "conflict_packs",
                "conflict_objects",
                "conflict_complete",
            ):
                run(kind)
            any_rc = tuple(range(256))
            tagged = run("conflict_tag_master", ok=any_rc) == 0
            if not tagged or run("conflict_recheck", ok=any_rc) != 0:
                # A prune's swap landed between the proof and the tag (it refuses once the tag
                # is there, refs differing): the pruned repository lacks the objects copied
                # before, so git refused the tag, or took it over a partial copy. The replica
                # still has them: copy, prove and tag again.
                what = (
                    "git refused the master's tag"
                    if not tagged
                    else "the master's tag lacks objects the proof had found"
                )
                out.output.append(
                    f"conflict: {what} (its output is above); if a prune swapped the master's "
                    "repository between the proof and the tag, it lacks the copied objects: "
                    "copying the replica's objects to it again"
                )
                for kind in ("conflict_packs", "conflict_objects", "conflict_recheck"):
                    run(kind)
                if not tagged:
                    run("conflict_tag_master")
            tag = steps["conflict_tag_master"].argv[-3]
            anc = steps["ancestry"].argv
            old, new = anc[-2], anc[-1]
            out.output.append(
                f"conflict: the replica's commit {old} on {ctx.server(req.server_id).label} is "
                f"not an ancestor of the master's {new}: each side has saves the other lacks. "
                f"Nothing was overwritten: both commits are kept, the replica's is tagged "
                f"{tag.removeprefix('refs/tags/')} on both hosts, refs/heads/master is unchanged "
                "on both; an operator must merge or choose."
            )
            out.status = "conflict"
            return out
        for kind in ("conf", "replicas_json", "mounted_replica", "mounted_master", "live"):
            if kind in steps:
                run(kind)
        run("fast_forward")
        return out

    # -- verify ------------------------------------------------------------------------------

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: ResyncReplicaSettings
    ) -> tuple[bool, str]:
        """replication_lag passes for this replica (both hosts gathered) and bup can read it."""
        project, master, replica = self._parties(req, ctx)
        pid = project.project_id
        r_facts, m_facts = ctx.facts(replica.server_id), ctx.facts(master.server_id)
        for s, f in ((replica, r_facts), (master, m_facts)):
            if not f.probed:
                return False, f"cannot verify: {s.label} could not be probed now"
        r_repo, m_repo = r_facts.repos.get(pid), m_facts.repos.get(pid)
        if r_repo is None or r_repo.master_sha is None or m_repo is None or not m_repo.master_sha:
            return False, f"the replica's repository on {replica.label} has no master after resync"
        # The check needs the master's facts as well: gathering the replica alone passes vacuously.
        findings = [
            f
            for f in ctx.evaluate(self.check, (master.server_id, replica.server_id))
            if f.server_id == replica.server_id and f.project_id == pid
        ]
        if findings:
            return False, "; ".join(f"{f.check}/{f.code}: {f.message}" for f in findings)
        ls = ctx.run(
            Step(
                replica.server_id,
                ("bup", "-d", repo_path(replica, pid), "ls", "master"),
                "bup can read the replica's saves",
                timeout=settings.rsync_timeout,
            )
        )
        if not ls.ok:
            return False, f"bup ls master fails on {replica.label}: {tail(ls)}"
        saves = [x for x in ls.stdout.decode("utf-8", "replace").split() if x != "latest"]
        return True, (
            f"{self.check} passes on {req.target} (replica at {r_repo.master_sha[:12]}, master at "
            f"{m_repo.master_sha[:12]}); bup ls master lists {len(saves)} saves"
        )


repair = ResyncReplica()
