"""clean_repo: clear a bup repository's ``repo_garbage`` findings, each by its own action.

- ``tmp_objects``: delete ``objects/*tmp*`` and ``objects/pack/*tmp*`` files (an interrupted
  save's leftovers);
- ``midx``: delete the ``*.midx`` files (bup caches; bup rebuilds them);
- ``bupindex``: delete ``bupindex``, ``bupindex.meta``, ``bupindex.hlink`` — only for this code:
  they are the normal state of the next save, which without them re-indexes the whole live tree;
- ``too_many_packs``: ``git repack -a -d -k`` into one pack, delete the ``*.midx`` files that
  named the old packs, then ``bup ls master``: bup must read the repacked repository. ``-k``
  keeps unreachable objects: bup dedups against every pack index, so a save that starts while
  the repack runs may point at objects nothing reachable names yet (an interrupted save's packs);
  ``-a -d`` alone would drop them, and that save would be broken.

The codes to clear are the request's ``params["codes"]`` when given, else the repository's open
``repo_garbage`` findings of those codes, taken fresh when the repair runs; ``verify`` re-runs the
check for exactly those codes (other findings of the repository are not this run's business), then
the deep check. The probe reports counts, not names, so the plan names patterns instead of paths:
``find`` with ``-mindepth 1 -maxdepth 1`` per directory, ``-type f`` (never a directory or a
symlink; ``find`` does not follow symlinks) and fixed ``-name`` patterns, printing each file it
deletes. Packs, their ``.idx`` files and refs never match. ``tmp`` files are what an interrupted
save leaves — or what a running one is writing, so the repair refuses while any process works on
the repository, and checks that again as its first step.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from pydantic import Field

from bup_watchdog.model import HostFacts
from bup_watchdog.repairs._repo_checks import (
    busy_blockers,
    integrity_blockers,
    repo_on_host,
)
from bup_watchdog.repairs.base import (
    Mode,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)

#: Runs on the host: ``python3 -S - REPO``. Lists (one JSON line each) the processes of this
#: host's mount namespace that work on REPO: it is in their argv, their BUP_DIR or GIT_DIR, or
#: their working directory. Exit 0: none; 3: some; anything else: the scan itself failed.
BUSY_SCAN = r"""
import json, os, sys

repo = sys.argv[1].rstrip("/")
want = os.fsencode(repo)


def names_repo(value):
    i = value.find(want)
    while i >= 0:
        end = i + len(want)
        if end == len(value) or value[end:end + 1] == b"/":
            return True
        i = value.find(want, i + 1)
    return False


skip = set()
pid = os.getpid()
while pid > 1 and pid not in skip:  # this scan and the shell/sshd that started it
    skip.add(pid)
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            pid = int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        break
my_ns = os.readlink("/proc/self/ns/mnt")
busy = 0
for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) in skip:
        continue
    base = "/proc/" + entry
    try:
        if os.readlink(base + "/ns/mnt") != my_ns:
            continue  # another host's namespace (sandbox) sees another /bup
        with open(base + "/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(base + "/environ", "rb") as f:
            env = [v for v in f.read().split(b"\0") if v.startswith((b"BUP_DIR=", b"GIT_DIR="))]
        cwd = os.fsencode(os.readlink(base + "/cwd"))
    except (OSError, ValueError):
        continue  # gone, or a kernel thread
    why = []
    if any(names_repo(a) for a in argv):
        why.append("argv")
    if any(names_repo(v.partition(b"=")[2]) for v in env):
        why.append("BUP_DIR/GIT_DIR")
    if names_repo(cwd) and cwd.startswith(want):
        why.append("cwd")
    if why:
        busy += 1
        cmd = b" ".join(argv).decode("utf-8", "replace").strip()[:200]
        print(json.dumps({"pid": int(entry), "cmd": cmd, "why": why}))
sys.exit(3 if busy else 0)
"""

#: The repo_garbage codes clean_repo clears, in the order its plan acts on them.
CODES = ("tmp_objects", "midx", "bupindex", "too_many_packs")

#: The codes each run was asked to clear (the guard uses one context for preconditions, plan,
#: execute and verify): verify checks exactly these.
_asked: weakref.WeakKeyDictionary[object, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


class CleanRepoSettings(RepairSettings):
    """clean_repo: clear repo_garbage findings (tmp leftovers, midx, bupindex, too many packs)."""

    mode: Mode = mode_field("approve")
    repack: bool = Field(
        True,
        description="Answer too_many_packs with 'git repack -a -d -k' (one pack instead of many; "
        "rewrites every pack, so it needs free space the size of the repository, and takes long "
        "on big ones), then 'bup ls master'. false: too_many_packs is refused (repack by hand).",
    )
    python: str = Field(
        "python3",
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="The Python 3 on the hosts that scans /proc for processes using the repo "
        "(as ssh.python).",
    )
    timeout: float = Field(300.0, gt=0, description="Seconds each deleting step may take.")
    repack_timeout: float = Field(
        3600.0, gt=0, description="Seconds 'git repack' may take (when repack is on)."
    )


def _find(where: str, names: Iterable[str]) -> tuple[str, ...]:
    """``find`` deleting the regular files directly in ``where`` whose names match."""
    patterns: list[str] = []
    for n in names:
        patterns += [*(["-o"] if patterns else []), "-name", n]
    return (
        "find", where, "-mindepth", "1", "-maxdepth", "1", "-type", "f",
        "(", *patterns, ")", "-print", "-delete",
    )  # fmt: skip


class CleanRepo(Repair[CleanRepoSettings]):
    name = "clean_repo"
    Settings = CleanRepoSettings
    check = "repo_garbage"
    codes = CODES

    def _repo(self, req: RepairRequest, ctx: RepairContext) -> str:
        assert req.project_id is not None
        return f"{ctx.server(req.server_id).bups_root}/{req.project_id}"

    def _busy_step(self, req: RepairRequest, repo: str, settings: CleanRepoSettings) -> Step:
        return Step(
            req.server_id,
            (settings.python, "-S", "-", repo),
            f"stop here if any process works on {repo} (argv, BUP_DIR/GIT_DIR or cwd; program "
            "on stdin: repairs/clean_repo.py BUSY_SCAN)",
            stdin=BUSY_SCAN.encode(),
            timeout=60.0,
        )

    def asked_codes(self, req: RepairRequest, ctx: RepairContext) -> tuple[str, ...]:
        """The codes this run clears: ``params["codes"]``, else the open findings' codes now."""
        runs = _asked.setdefault(ctx, {})
        if req.target in runs:
            return runs[req.target]
        given = req.params.get("codes")
        if given is not None:
            if not isinstance(given, list | tuple) or not all(isinstance(c, str) for c in given):
                raise RepairError("params codes must be a list of repo_garbage finding codes")
            unknown = sorted(set(given) - set(CODES))
            if unknown:
                raise RepairError(
                    f"clean_repo does not clear {', '.join(unknown)} (it clears: "
                    f"{', '.join(CODES)})"
                )
            wanted = set(given)
        else:
            wanted = {
                f.code
                for f in ctx.evaluate(self.check, (req.server_id,), focus=req.project_id)
                if f.server_id == req.server_id and f.project_id == req.project_id
            }
        runs[req.target] = tuple(c for c in CODES if c in wanted)
        return runs[req.target]

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> list[str]:
        path = self._repo(req, ctx)
        found = repo_on_host(req, ctx, path)
        if isinstance(found, str):
            return [found]
        facts, repo = found
        try:
            codes = self.asked_codes(req, ctx)
        except RepairError as exc:
            return [f"invalid_codes: {exc}"]
        if not codes:
            return [
                f"nothing_to_do: {path} has no open repo_garbage finding clean_repo clears "
                f"({', '.join(CODES)})"
            ]
        blockers: list[str] = []
        if "too_many_packs" in codes:
            blockers += self._repack_blockers(req, ctx, settings, facts, repo.repo_bytes, path)
        blockers += integrity_blockers(req, ctx, facts)
        blockers += busy_blockers(ctx.run(self._busy_step(req, path, settings)), path)
        return blockers

    def _repack_blockers(
        self,
        req: RepairRequest,
        ctx: RepairContext,
        settings: CleanRepoSettings,
        facts: HostFacts,
        repo_bytes: int,
        path: str,
    ) -> list[str]:
        if not settings.repack:
            return [
                "repack_off: too_many_packs is cleared only by a repack, and "
                "[repairs.clean_repo] repack is false; repack by hand or switch it on"
            ]
        root = ctx.server(req.server_id).bups_root
        mounts = facts.mounts.get(root)
        free = mounts.bytes_free if mounts else None
        if free is None:
            return [f"space: free space on {root} is unknown; a repack rewrites every pack"]
        if free <= repo_bytes:
            return [
                f"space: {root} has {free} bytes free; a repack of {path} needs more than its "
                f"{repo_bytes} bytes"
            ]
        return []

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> list[Step]:
        repo = self._repo(req, ctx)
        codes = self.asked_codes(req, ctx)
        if not codes:
            raise RepairError(
                f"nothing to do: {repo} has no open repo_garbage finding clean_repo clears "
                f"({', '.join(CODES)})"
            )
        t = settings.timeout
        steps = [self._busy_step(req, repo, settings)]
        repack = "too_many_packs" in codes and settings.repack
        if repack:
            steps.append(
                Step(
                    req.server_id,
                    ("git", f"--git-dir={repo}", "repack", "-a", "-d", "-k", "-q"),
                    f"too_many_packs: repack {repo} into one pack, unreachable objects kept "
                    "(git repack -a -d -k)",
                    timeout=settings.repack_timeout,
                )
            )
        top = [(c, n) for c, n in (("bupindex", "bupindex*"), ("midx", "*.midx")) if c in codes]
        if top:
            steps.append(
                Step(req.server_id, _find(repo, [n for _, n in top]),
                     f"{'/'.join(c for c, _ in top)}: delete "
                     f"{' and '.join(n for _, n in top)} files at the top of {repo}", timeout=t)
            )  # fmt: skip
        if "tmp_objects" in codes:
            steps.append(
                Step(req.server_id, _find(f"{repo}/objects", ["*tmp*"]),
                     f"tmp_objects: delete leftover *tmp* files in {repo}/objects", timeout=t)
            )  # fmt: skip
        pack = [
            n
            for n, why in (("*.midx", "midx" in codes or repack), ("*tmp*", "tmp_objects" in codes))
            if why
        ]
        if pack:
            why = "; ".join(
                w
                for w, on in (
                    ("midx: bup caches", "midx" in codes),
                    ("too_many_packs: the midx files name the packs the repack removed", repack),
                    ("tmp_objects: an interrupted write's leftovers", "tmp_objects" in codes),
                )
                if on
            )
            steps.append(
                Step(req.server_id, _find(f"{repo}/objects/pack", pack),
                     f"delete {' and '.join(pack)} files in {repo}/objects/pack ({why})",
                     timeout=t)
            )  # fmt: skip
        if repack:
            steps.append(
                Step(
                    req.server_id,
                    ("bup", "-d", repo, "ls", "master"),
                    f"too_many_packs: bup must read {repo} after the repack (bup ls master)",
                    timeout=t,
                )
            )
        return steps

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> tuple[bool, str]:
        """repo_garbage passes for exactly the codes asked, and the repository passes a deep
        check."""
        assert req.project_id is not None
        codes = self.asked_codes(req, ctx)
        left = [
            f
            for f in ctx.evaluate(self.check, (req.server_id,), focus=req.project_id)
            if f.server_id == req.server_id and f.project_id == req.project_id and f.code in codes
        ]
        if left:
            return False, "; ".join(f"{f.check}/{f.code}: {f.message}" for f in left)
        message = f"{self.check} passes on {req.target} for {', '.join(codes)}"
        facts = ctx.facts(req.server_id, deep_ids=(req.project_id,))
        deep = facts.deep.get(req.project_id)
        if deep is None:
            return False, f"{message}, but the deep check could not run afterwards " + (
                f"({facts.deep_error or facts.failure_message})"
            )
        if not deep.ok:
            return False, f"{message}, but the deep check fails afterwards: {deep.message}"
        return True, f"{message}; deep check (git fsck --connectivity-only, bup ls) passes after"


repair = CleanRepo()
