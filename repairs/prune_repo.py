"""prune_repo: thin an over-quota bup repository by a retention policy, on a copy, then swap.

``bup prune-older`` and ``bup gc`` are marked experimental by bup (they refuse to run without
``--unsafe``), so they never touch the repository itself:

1. the plan asks bup which saves the policy drops (``bup prune-older --pretend``, read-only) with
   ``--wrt`` pinned to the plan's time, so the saves named in the plan are exactly those that go
   when the plan runs later (an approved plan keeps its ``wrt`` in the request's params); saves
   made after that time are always kept, and a plan that would drop the newest save is refused;
2. ``cp -a --reflink=auto`` copies the repository next to it (``<repo>.prune-new``);
3. on the copy: ``bup prune-older --no-gc``, ``bup gc``, ``git fsck --connectivity-only``, ``bup ls
   master`` (exactly the kept saves) and ``bup ls`` of every kept save;
4. a stdlib program swaps the copy in atomically (``renameat2(RENAME_EXCHANGE)``) after checking
   that nothing landed meanwhile: the master ref is the one copied, and every other ref (a
   resync's conflict tag) and every file outside ``objects/``, ``refs/`` and ``logs/`` (``conf/``,
   ``config``) is the same in the repository as in the copy; both checked again after the
   exchange, which is undone if either moved. It gives the pruned copy one reflog entry carrying the
   old newest reflog time (bup rewrites the history and empties the reflog; ``replication_lag``
   and ``save_freshness`` read that time);
5. the old repository stays aside as ``<repo>.pruned-<UTC time>`` with a ``BUPWATCH-PRUNED.txt``
   saying from when it may go (``keep_aside_hours``). Nothing removes it automatically: the
   operator does, once that time has passed and the replicas are in step (the journal's
   verification line names it and the time).

A failure before the swap deletes the copy and leaves the repository as it was. bup rewrites the
kept commits deterministically (same saves and policy, same ``--wrt``: same commit ids), so the
replicas of a pruned master come back in step when they are pruned with the same ``wrt`` (the
plan's params); a replica left unpruned holds commits the master no longer has, which
``resync_replica`` reports as a conflict instead of copying.

The policy uses what bup 0.33 offers: keep every save for a period, then the newest of each
day, month and year for longer periods (there is no weekly tier). The default keeps every save of
the last 7 days, one a day for 60 days and one a month before that.
"""

from __future__ import annotations

import re
import shlex
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import Field, model_validator

from bup_watchdog.errors import WatchdogError
from bup_watchdog.repairs._repo_checks import busy_blockers, integrity_blockers, repo_on_host
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
from bup_watchdog.repairs.clean_repo import BUSY_SCAN

_PERIOD = r"^(forever|[1-9][0-9]{0,5}(s|min|h|d|w|m|y))$"
_SAVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}(-[0-9]{1,4})?")
_PRETEND = re.compile(r"([+-]) master/(\S+)")
WORK_SUFFIX = ".prune-new"
REFUSED = 2  # PROGRAM's status for "refused, nothing changed"
ASIDE_INFIX = ".pruned-"

#: Runs on the host: ``python3 -S - swap REPO WORK ASIDE OLD_SHA KEEP_UNTIL`` or ``python3 -S -
#: discard REPO WORK``. Exit 0 done, 2 refused (nothing changed), anything else failed.
PROGRAM = r"""
import ctypes, hashlib, os, shutil, subprocess, sys, time

ZERO = "0" * 40


def refuse(msg):
    sys.stderr.write("refused: " + msg + "\n")
    sys.exit(2)


def master(repo):
    p = subprocess.run(["git", "--git-dir=" + repo, "rev-parse", "--verify", "-q",
                        "refs/heads/master^{commit}"], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


#: Top-level entries a prune rewrites (objects, refs, logs; master is checked on its own) or that
#: are caches bup rebuilds (bupindex*, index-cache): left out of the comparison.
NOT_COMPARED = ("objects", "refs", "logs", "packed-refs", "index-cache")


def other_refs(repo):
    p = subprocess.run(["git", "--git-dir=" + repo, "for-each-ref",
                        "--format=%(objectname) %(refname)"], capture_output=True, text=True)
    if p.returncode != 0:
        return {"(the refs of %s: %s)" % (repo, p.stderr.strip()[-300:]): "unreadable"}
    refs = dict(ln.split(" ", 1)[::-1] for ln in p.stdout.splitlines() if " " in ln)
    refs.pop("refs/heads/master", None)
    return refs


def other_files(repo):
    out = {}
    for d, dirs, names in os.walk(repo):
        if d == repo:
            dirs[:] = [n for n in dirs if n not in NOT_COMPARED]
            names = [n for n in names if n not in NOT_COMPARED and not n.startswith("bupindex")]
        for n in names + [n for n in dirs if os.path.islink(os.path.join(d, n))]:
            path = os.path.join(d, n)
            if os.path.islink(path):
                seen = "link " + os.readlink(path)
            elif os.path.isfile(path):
                try:
                    digest = hashlib.sha256()
                    with open(path, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            digest.update(block)
                    seen = digest.hexdigest()
                except OSError as e:
                    seen = "unreadable: %s" % e.strerror
            else:
                seen = "special"
            out[os.path.relpath(path, repo)] = seen
    return out


def state_of(repo):
    # What a prune must not roll back: every ref but master, every file but the objects.
    return other_refs(repo), other_files(repo)


def differences(one, other):
    out = []
    for a, b in zip(one, other):
        out += sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    return out


def real_dir(path):
    return os.path.isdir(path) and not os.path.islink(path)


def size(path):
    total = 0
    for d, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def last_reflog_time(repo):
    try:
        with open(os.path.join(repo, "logs/refs/heads/master"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = [ln for ln in f.read().split(b"\n") if ln.strip()]
        head = lines[-1].partition(b"\t")[0].rsplit(b" ", 2)
        return int(head[1])
    except (OSError, IndexError, ValueError):
        return None


def exchange(a, b):
    libc = ctypes.CDLL(None, use_errno=True)
    f = libc.renameat2
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if f(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap(repo, work, aside, old, until):
    parent = os.path.dirname(repo)
    if not aside.startswith(repo + ".pruned-") or os.path.dirname(aside) != parent:
        refuse("the aside name is not REPO.pruned-TIME")
    if not (real_dir(repo) and real_dir(work)):
        refuse("%s and %s must both be directories (not symlinks)" % (repo, work))
    if os.path.lexists(aside):
        refuse("%s exists already" % aside)
    if master(repo) != old:
        refuse("refs/heads/master of %s moved since the copy (a save landed); nothing swapped"
               % repo)
    new = master(work)
    if new is None:
        refuse("the pruned copy %s has no master commit" % work)
    seen = state_of(repo)
    moved = differences(seen, state_of(work))
    if moved:
        refuse("%s changed since the copy outside its master (%s); the pruned copy would roll "
               "that back; nothing swapped" % (repo, ", ".join(moved[:10])))
    when = last_reflog_time(repo) or int(time.time())
    logs = os.path.join(work, "logs", "refs", "heads")
    os.makedirs(logs, exist_ok=True)
    st = os.stat(repo)
    reflog = os.path.join(logs, "master")
    with open(reflog, "a") as f:
        f.write("%s %s bup-watchdog <bup-watchdog@localhost> %d +0000\tprune_repo: pruned, "
                "the unpruned repository kept aside as %s\n" % (ZERO, new, when, aside))
    os.chown(reflog, st.st_uid, st.st_gid)
    exchange(work, repo)
    # The original (at WORK now) against what was checked: a write that landed just before the
    # exchange is swapped back. Writes to the pruned repository, live at REPO now, are its own.
    try:
        landed = master(work) != old or state_of(work) != seen
    except BaseException:  # (out of memory, a signal): unsure, so back to the original
        landed = True
    if landed:
        exchange(work, repo)
        refuse("%s changed during the swap; swapped back, nothing changed" % repo)
    os.rename(work, aside)
    fsync_dir(parent)
    note = os.path.join(aside, "BUPWATCH-PRUNED.txt")
    with open(note, "w") as f:
        f.write("This is %s as it was before bup-watchdog's prune_repo thinned it at %s UTC.\n"
                "The pruned repository is %s. Remove this copy after %s UTC, once the "
                "replicas are in step.\n" % (
                    repo, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), repo,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until))))
    print("swapped: %s is the pruned repository (master %s), the old one is %s"
          % (repo, new, aside))
    print("size: %d bytes before, %d bytes after" % (size(aside), size(repo)))


def discard(repo, work):
    if work != repo + ".prune-new":
        refuse("%s is not %s.prune-new" % (work, repo))
    if os.path.islink(work):
        refuse("%s is a symlink" % work)
    if os.path.lexists(work):
        shutil.rmtree(work)
        print("deleted the unfinished copy %s" % work)


action, args = sys.argv[1], sys.argv[2:]
if action == "swap" and len(args) == 5:
    swap(args[0], args[1], args[2], args[3], int(args[4]))
elif action == "discard" and len(args) == 2:
    discard(args[0], args[1])
else:
    refuse("usage: swap REPO WORK ASIDE OLD_SHA KEEP_UNTIL | discard REPO WORK")
"""


class PruneRepoSettings(RepairSettings):
    """prune_repo: thin an over-quota repository by a retention policy (bup prune-older + gc on
    a copy, every kept save listed, atomic swap, the old repository kept aside)."""

    mode: Mode = mode_field("approve")
    keep_all_for: str | None = Field(
        "7d",
        pattern=_PERIOD,
        description="Keep every save this recent (bup PERIOD: N followed by s, min, h, d, w, "
        "m (31 days) or y (366 days), or 'forever'; unset: not this tier).",
    )
    keep_dailies_for: str | None = Field(
        "60d", pattern=_PERIOD, description="Then keep the newest save of each day this recent."
    )
    keep_monthlies_for: str | None = Field(
        "forever",
        pattern=_PERIOD,
        description="Then keep the newest save of each month this recent (bup 0.33 has no "
        "weekly tier).",
    )
    keep_yearlies_for: str | None = Field(
        None,
        pattern=_PERIOD,
        description="Then keep the newest save of each year this recent.",
        examples=["forever"],
    )
    keep_aside_hours: float = Field(
        168.0,
        ge=0,
        description="The old repository stays aside as <repo>.pruned-<UTC time> at least this "
        "long; the operator removes it after that, once the replicas are in step.",
    )
    space_margin: float = Field(
        1.2,
        ge=1.0,
        description="The host's bups_root must have this factor times the repository's size "
        "free (the copy, plus what bup gc rewrites).",
    )
    python: str = Field(
        "python3",
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="The Python 3 on the hosts (busy scan, swap) (as ssh.python).",
    )
    timeout: float = Field(
        3600.0, gt=0, description="Seconds the copy, bup prune-older, bup gc or git fsck may take."
    )

    @model_validator(mode="after")
    def _some_tier(self) -> PruneRepoSettings:
        if not self.keep_options():
            raise ValueError("set at least one keep_*_for period, or every save would go")
        return self

    def keep_options(self) -> tuple[str, ...]:
        out: list[str] = []
        for option, period in (
            ("--keep-all-for", self.keep_all_for),
            ("--keep-dailies-for", self.keep_dailies_for),
            ("--keep-monthlies-for", self.keep_monthlies_for),
            ("--keep-yearlies-for", self.keep_yearlies_for),
        ):
            if period:
                out += [option, period]
        return tuple(out)


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What the policy does to the repository, as bup said before anything ran."""

    wrt: int
    master_sha: str
    kept: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PruneStep(Step):
    """A step of this plan; ``kind`` tells execute() what to check and what to undo."""

    kind: str = ""


#: The plan of each run (the guard uses one context for preconditions, plan, execute, verify).
_plans: weakref.WeakKeyDictionary[object, dict[str, PrunePlan]] = weakref.WeakKeyDictionary()


def _stamp(wrt: int) -> str:
    return datetime.fromtimestamp(wrt, UTC).strftime("%Y%m%dT%H%M%SZ")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


class PruneRepo(Repair[PruneRepoSettings]):
    name = "prune_repo"
    Settings = PruneRepoSettings
    check = "bup_quota"
    codes = ("over_quota",)

    def _repo(self, req: RepairRequest, ctx: RepairContext) -> str:
        assert req.project_id is not None
        return f"{ctx.server(req.server_id).bups_root}/{req.project_id}"

    def _busy_step(self, req: RepairRequest, repo: str, settings: PruneRepoSettings) -> PruneStep:
        return PruneStep(
            req.server_id,
            (settings.python, "-S", "-", repo),
            f"stop here if any process works on {repo} (a save; program on stdin: "
            "repairs/clean_repo.py BUSY_SCAN)",
            stdin=BUSY_SCAN.encode(),
            timeout=60.0,
            kind="busy",
        )

    def _wrt(self, req: RepairRequest) -> int:
        """The policy's reference time: pinned in the request's params (journaled with a pending
        plan, so the approved run drops exactly the saves shown), else now."""
        wrt = req.params.get("wrt")
        if wrt is None:
            wrt = req.params["wrt"] = int(time.time())
        if isinstance(wrt, bool) or not isinstance(wrt, int) or not 0 < wrt < 1 << 40:
            raise RepairError(f"params wrt {wrt!r} is not a time in seconds since the epoch")
        return wrt

    def prune_plan(
        self, req: RepairRequest, ctx: RepairContext, settings: PruneRepoSettings
    ) -> PrunePlan:
        """Which saves the policy keeps and drops, from ``bup prune-older --pretend``."""
        runs = _plans.setdefault(ctx, {})
        if req.target in runs:
            return runs[req.target]
        repo = self._repo(req, ctx)
        wrt = self._wrt(req)
        sha = ctx.run(
            Step(
                req.server_id,
                ("git", f"--git-dir={repo}", "rev-parse", "--verify", "refs/heads/master"),
                f"the master commit of {repo}",
                timeout=60.0,
            )
        )
        master_sha = _text(sha.stdout)
        if not sha.ok or not re.fullmatch(r"[0-9a-f]{40}", master_sha):
            raise RepairError(f"cannot read refs/heads/master of {repo}: {_text(sha.stderr)}")
        pretend = ctx.run(
            Step(
                req.server_id,
                self._prune_argv(repo, wrt, settings, pretend=True),
                f"which saves of {repo} the policy drops (read-only)",
                timeout=settings.timeout,
            )
        )
        if not pretend.ok:
            raise RepairError(
                f"bup prune-older --pretend failed on {repo} (status {pretend.returncode}): "
                f"{_text(pretend.stderr)[-500:]}"
            )
        kept: list[str] = []
        dropped: list[str] = []
        for line in _text(pretend.stdout).splitlines():
            m = _PRETEND.fullmatch(line.strip())
            if not m or not _SAVE.fullmatch(m.group(2)):
                raise RepairError(f"bup prune-older --pretend printed {line[:200]!r}")
            (kept if m.group(1) == "+" else dropped).append(m.group(2))
        if not kept:
            raise RepairError(f"the policy would remove every save of {repo}; refused")
        newest = max(kept + dropped)
        if newest in dropped:
            raise RepairError(f"the policy would remove the newest save {newest}; refused")
        runs[req.target] = PrunePlan(wrt, master_sha, tuple(sorted(kept)), tuple(sorted(dropped)))
        return runs[req.target]

    def _prune_argv(
        self, repo: str, wrt: int, settings: PruneRepoSettings, *, pretend: bool
    ) -> tuple[str, ...]:
        mode = ("--pretend",) if pretend else ("--no-gc",)
        return (
            "bup", "-d", repo, "prune-older", "--unsafe", *mode, "--wrt", str(wrt),
            *settings.keep_options(), "master",
        )  # fmt: skip

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: PruneRepoSettings
    ) -> list[str]:
        assert req.project_id is not None
        pid = req.project_id
        path = self._repo(req, ctx)
        found = repo_on_host(req, ctx, path)
        if isinstance(found, str):
            return [found]
        facts, repo = found
        blockers = integrity_blockers(req, ctx, facts)
        leftover = [
            s["name"]
            for s in facts.strays
            if s.get("root") == "bups" and s.get("name") == pid + WORK_SUFFIX
        ]
        if leftover:
            blockers.append(
                f"leftover: {path}{WORK_SUFFIX} exists (an earlier prune that did not finish); "
                "a human looks at it and removes it first"
            )
        root = ctx.server(req.server_id).bups_root
        mounts = facts.mounts.get(root)
        free = mounts.bytes_free if mounts else None
        need = settings.space_margin * repo.repo_bytes
        if free is None:
            blockers.append(f"space: free space on {root} is unknown")
        elif free < need:
            blockers.append(
                f"space: {root} has {free} bytes free; the copy needs {need:.0f} "
                f"({settings.space_margin:g} x the repository's {repo.repo_bytes} bytes)"
            )
        blockers += busy_blockers(ctx.run(self._busy_step(req, path, settings)), path)
        return blockers

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: PruneRepoSettings
    ) -> list[Step]:
        repo = self._repo(req, ctx)
        p = self.prune_plan(req, ctx, settings)
        if not p.dropped:
            raise RepairError(f"nothing to prune: the policy keeps all {len(p.kept)} saves")
        work = repo + WORK_SUFFIX
        aside = f"{repo}{ASIDE_INFIX}{_stamp(p.wrt)}"
        until = int(time.time() + settings.keep_aside_hours * 3600)
        t = settings.timeout
        sid = req.server_id
        program = PROGRAM.encode()
        steps: list[Step] = [
            self._busy_step(req, repo, settings),
            PruneStep(sid, ("mkdir", "--", work), f"make the work copy's directory {work} "
                      "(fails if it exists)", timeout=60.0, kind="mkdir"),
            PruneStep(sid, ("cp", "-a", "-T", "--reflink=auto", "--", repo, work),
                      f"copy {repo} to {work}", timeout=t, kind="copy"),
            PruneStep(sid, self._prune_argv(work, p.wrt, settings, pretend=False),
                      f"on the copy, remove {len(p.dropped)} of {len(p.kept) + len(p.dropped)} "
                      f"saves: {', '.join(p.dropped)}", timeout=t, kind="work"),
            PruneStep(sid, ("bup", "-d", work, "gc", "--unsafe"),
                      "on the copy, delete the data no kept save uses (bup gc)", timeout=t,
                      kind="work"),
            PruneStep(sid, ("git", f"--git-dir={work}", "fsck", "--connectivity-only",
                            "--no-dangling"),
                      "on the copy, every object the kept saves need is there", timeout=t,
                      kind="work"),
            PruneStep(sid, ("bup", "-d", work, "ls", "master"),
                      f"on the copy, exactly the {len(p.kept)} kept saves are listed: "
                      f"{', '.join(p.kept)}", timeout=t, kind="list"),
            *(
                PruneStep(sid, ("bup", "-d", work, "ls", f"master/{name}"),
                          f"on the copy, bup reads the kept save {name}", timeout=t,
                          kind="work")
                for name in p.kept
            ),
            self._busy_step(req, repo, settings),
            PruneStep(sid, (settings.python, "-S", "-", "swap", repo, work, aside, p.master_sha,
                            str(until)),
                      f"swap the pruned copy in for {repo} (atomic rename exchange, only if "
                      f"master is still {p.master_sha[:12]}); keep the old one as {aside} until "
                      f"{datetime.fromtimestamp(until, UTC):%Y-%m-%d %H:%M} UTC (program on "
                      "stdin: repairs/prune_repo.py PROGRAM)", stdin=program, timeout=t,
                      kind="swap"),
        ]  # fmt: skip
        return steps

    def _discard(self, req: RepairRequest, ctx: RepairContext, settings: PruneRepoSettings) -> str:
        repo = self._repo(req, ctx)
        argv = (settings.python, "-S", "-", "discard", repo, repo + WORK_SUFFIX)
        step = Step(
            req.server_id,
            argv,
            "delete the unfinished copy",
            stdin=PROGRAM.encode(),
            timeout=settings.timeout,
        )
        try:
            result = ctx.run(step)
        except WatchdogError as exc:
            return f"; the copy could not be deleted: {exc}"
        if not result.ok:
            return f"; the copy could not be deleted: {_text(result.stderr)[-300:]}"
        return f"; the unfinished copy {repo}{WORK_SUFFIX} was deleted, {repo} is unchanged"

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: PruneRepoSettings
    ) -> Outcome:
        """Run the plan; check the kept saves' list; delete the copy when a step before the swap
        fails (the repository itself is untouched until then)."""
        p = self.prune_plan(req, ctx, settings)
        out = Outcome()
        copied = False
        for step in plan:
            kind = step.kind if isinstance(step, PruneStep) else ""
            try:
                result = ctx.run(step)
            except WatchdogError as exc:  # the host went away or the step timed out
                if copied and kind != "swap":
                    raise RepairError(f"{exc}{self._discard(req, ctx, settings)}") from exc
                raise
            text = _text(result.stdout + result.stderr)
            out.output.append(f"$ {shlex.join(step.argv)}  # rc={result.returncode}")
            if text and kind != "list":
                out.output.append(text[-2000:])
            problem = ""
            if not result.ok:
                problem = step_failed(step, result, text.splitlines()[-1] if text else "no output")
            elif kind == "list":
                listed = sorted(n for n in _text(result.stdout).split() if n != "latest")
                if listed != list(p.kept):
                    gone = sorted(set(p.kept) - set(listed))
                    extra = sorted(set(listed) - set(p.kept))
                    problem = (
                        f"the pruned copy lists {len(listed)} saves, not the {len(p.kept)} "
                        f"planned (missing: {', '.join(gone) or 'none'}; unexpected: "
                        f"{', '.join(extra) or 'none'})"
                    )
            if kind == "mkdir" and result.ok:
                copied = True
            if problem:
                if kind == "swap" and result.returncode != REFUSED:
                    # Past the refusals the program may have exchanged the directories: the
                    # path of the copy may hold the original now. Nothing is deleted.
                    problem += (
                        f"; the swap did not finish: look at {self._repo(req, ctx)} and "
                        f"{self._repo(req, ctx)}{WORK_SUFFIX} before anything else runs"
                    )
                elif copied:
                    problem += self._discard(req, ctx, settings)
                raise RepairError(problem)
        out.output.append(
            f"kept {len(p.kept)} saves: {', '.join(p.kept)}; removed {len(p.dropped)}: "
            f"{', '.join(p.dropped)}"
        )
        return out

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: PruneRepoSettings
    ) -> tuple[bool, str]:
        """bup_quota passes on the target, and bup lists every kept save of the pruned repo."""
        p = self.prune_plan(req, ctx, settings)
        repo = self._repo(req, ctx)
        aside = f"{repo}{ASIDE_INFIX}{_stamp(p.wrt)}"
        unread = []
        for name in p.kept:
            argv = ("bup", "-d", repo, "ls", f"master/{name}")
            ls = ctx.run(Step(req.server_id, argv, f"list {name}", timeout=settings.timeout))
            if not ls.ok:
                unread.append(f"{name} ({_text(ls.stderr)[-200:]})")
        ok, message = super().verify(req, ctx, settings)
        kept = (
            f"kept {len(p.kept)} saves (newest {p.kept[-1]}), removed {len(p.dropped)}; the old "
            f"repository is kept aside as {aside}: remove it after "
            f"{settings.keep_aside_hours:g} h, once the replicas are in step"
        )
        if unread:
            return False, f"bup cannot list kept saves of {repo}: {'; '.join(unread)}; {kept}"
        if not ok:
            return False, f"{message} (still over quota after pruning); {kept}"
        return True, f"{message}; bup lists every kept save; {kept}"


repair = PruneRepo()
