"""clean_repo: remove a bup repository's leftovers (``objects/*tmp*``) and caches (``*.midx``,
``bupindex*``), optionally ``git repack``; the repository must pass the deep check afterwards.

The probe reports counts, not names, so the plan names patterns instead of paths: ``find`` with
``-mindepth 1 -maxdepth 1`` per directory, ``-type f`` (never a directory or a symlink; ``find``
does not follow symlinks) and fixed ``-name`` patterns, printing each file it deletes. Packs,
their ``.idx`` files and refs never match. ``bupindex`` and ``*.midx`` are caches bup rebuilds;
``tmp`` files are what an interrupted save leaves — or what a running one is writing, so the
repair refuses while any process works on the repository, and checks that again as its first step.
"""

from __future__ import annotations

import json

from pydantic import Field

from bup_watchdog.repairs.base import (
    Mode,
    Repair,
    RepairContext,
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
BUSY = 3


class CleanRepoSettings(RepairSettings):
    """clean_repo: delete bupindex*, *.midx and objects/*tmp* files; optionally git repack."""

    mode: Mode = mode_field("approve")
    repack: bool = Field(
        False,
        description="Also run 'git repack -a -d' (one pack instead of many; rewrites every "
        "pack, so it needs free space the size of the repository, and takes long on big ones).",
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


class CleanRepo(Repair[CleanRepoSettings]):
    name = "clean_repo"
    Settings = CleanRepoSettings
    check = "repo_garbage"
    codes = ("tmp_objects", "midx", "bupindex")

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

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> list[str]:
        assert req.project_id is not None
        pid = req.project_id
        path = self._repo(req, ctx)
        facts = ctx.facts(req.server_id, deep_ids=(pid,))
        if not facts.probed:
            return [f"unreachable: cannot probe the host now ({facts.failure_message})"]
        repo = facts.repos.get(pid)
        if repo is None:
            return [f"missing: {path} does not exist"]
        if repo.is_symlink:
            return [f"symlink: {path} is a symlink; not followed"]
        if repo.symlinks_outside:
            return [
                f"symlink_outside: symlinks lead out of {path} "
                f"({', '.join(repo.symlinks_outside[:3])}); a human must look first"
            ]
        if not (repo.tmp_count or repo.midx_count or repo.bupindex_bytes is not None):
            return [f"nothing_to_do: {path} has no tmp, midx or bupindex files"]
        blockers: list[str] = []
        # The repository must be sound before we touch it: cheap tier by the check itself,
        # deep tier (git fsck --connectivity-only + bup ls master) from the probe just taken.
        for f in ctx.evaluate("repo_integrity", (req.server_id,)):
            if f.server_id == req.server_id and f.project_id == pid:
                blockers.append(f"integrity: repo_integrity/{f.code}: {f.message}")
        deep = facts.deep.get(pid)
        if facts.deep_error or deep is None:
            blockers.append(f"integrity: the deep check could not run ({facts.deep_error})")
        elif not deep.ok:
            blockers.append(f"integrity: the deep check fails: {deep.message}")
        scan = ctx.run(self._busy_step(req, path, settings))
        if scan.returncode == BUSY:
            procs = []
            for line in scan.stdout.decode("utf-8", "replace").splitlines()[:5]:
                try:
                    p = json.loads(line)
                    procs.append(f"pid {p['pid']} ({'/'.join(p['why'])}): {p['cmd']}")
                except (ValueError, KeyError, TypeError):
                    procs.append(line[:200])
            blockers.append(f"busy: processes work on {path}: {'; '.join(procs)}")
        elif not scan.ok:
            err = scan.stderr.decode("utf-8", "replace").strip().splitlines()
            blockers.append(
                f"busy_scan: could not scan for processes using {path} "
                f"(status {scan.returncode}: {err[-1] if err else 'no output'})"
            )
        return blockers

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> list[Step]:
        repo = self._repo(req, ctx)

        def find(where: str, *names: str) -> tuple[str, ...]:
            patterns: list[str] = []
            for n in names:
                patterns += [*(["-o"] if patterns else []), "-name", n]
            return (
                "find", where, "-mindepth", "1", "-maxdepth", "1", "-type", "f",
                "(", *patterns, ")", "-print", "-delete",
            )  # fmt: skip

        t = settings.timeout
        steps = [
            self._busy_step(req, repo, settings),
            Step(req.server_id, find(repo, "bupindex*", "*.midx"), "delete bupindex* and *.midx "
                 f"files at the top of {repo}", timeout=t),
            Step(req.server_id, find(f"{repo}/objects", "*tmp*"),
                 f"delete leftover *tmp* files in {repo}/objects", timeout=t),
            Step(req.server_id, find(f"{repo}/objects/pack", "*.midx", "*tmp*"),
                 f"delete *.midx and leftover *tmp* files in {repo}/objects/pack", timeout=t),
        ]  # fmt: skip
        if settings.repack:
            steps.append(
                Step(
                    req.server_id,
                    ("git", f"--git-dir={repo}", "repack", "-a", "-d", "-q"),
                    f"repack {repo} into one pack (git repack -a -d)",
                    timeout=settings.repack_timeout,
                )
            )
        return steps

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: CleanRepoSettings
    ) -> tuple[bool, str]:
        """repo_garbage passes for the cleaned codes, and the repository passes a deep check."""
        ok, message = super().verify(req, ctx, settings)
        if not ok:
            return ok, message
        assert req.project_id is not None
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
