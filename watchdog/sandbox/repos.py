"""Real bup repositories for the sandbox fleet: saves, replica copies, conf files and faults.

Small fleets get one real repository per project, made with the real ``bup`` (init, then per save
``bup index`` + ``bup save``), and replicas copied from it with ``cp -a`` the way the fleet's
replication did. Big fleets (benchmarks) cannot afford a ``bup`` run per repository, so a handful of
template repositories are made with real ``bup`` once and every repository is materialised from one
of them: pack files, indexes and other immutable files are hard links (git objects are never
rewritten; deleting a ``.pack`` in one copy only removes that copy's link), while refs, reflogs,
``HEAD``, ``bupindex*``, ``bup.bloom`` and ``conf/`` are real per-repository files, so a change in
one repository never shows in another. Templates leave out what neither git nor bup needs (sample
hooks, ``branches/``, ``info/``, ``refs/tags/``, ``objects/info/``, ``logs/HEAD``): each inode costs
about 0.3 ms on these disks, and a benchmark fleet has 100,000 repositories.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bup_watchdog.sandbox.spec import ProjectSpec

SAVE_INTERVAL = 6 * 3600  # seconds between two saves of a project
NEWEST_SAVE_AGE = 600  # the newest save of every project happened this long before the build
_BIG_LOG = 1 << 20  # save logs larger than this are padded from a file written once per project

BUP = "/usr/bin/bup" if os.path.exists("/usr/bin/bup") else "bup"


class BuildError(RuntimeError):
    """A command needed to build the sandbox failed; the message carries its output."""


def run_checked(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run a command, return its stdout, raise BuildError with its stderr when it fails."""
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        cmd = " ".join(argv)
        raise BuildError(f"`{cmd}` failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def save_times(saves: int, now: float) -> list[int]:
    """The epoch time of each save: the newest ``NEWEST_SAVE_AGE`` ago, earlier ones 6 h apart."""
    newest = int(now) - NEWEST_SAVE_AGE
    return [newest - (saves - 1 - i) * SAVE_INTERVAL for i in range(saves)]


_BASE_FILES = (
    "README.md",
    "notes with space.txt",
    "src/main.py",
    "src/util.py",
    "data/table.csv",
    "src/lib/helpers.py",
)


def live_tree(project: ProjectSpec, upto_save: int) -> dict[str, bytes]:
    """The project's live files as they were just before save ``upto_save`` (1-based).

    ``files`` small text files (one in a subdirectory, one with a space in its name), plus a
    journal that changes on every save and one new file per save after the first.
    """
    pid = project.project_id
    tree: dict[str, bytes] = {}
    for i in range(project.files):
        name = _BASE_FILES[i] if i < len(_BASE_FILES) else f"src/more/file-{i}.txt"
        tree[name] = f"project {pid}\nfile {i}: {name}\n".encode() * (1 + i % 3)
    if project.files >= 2:
        tree["journal.txt"] = "".join(f"save {s}\n" for s in range(1, upto_save + 1)).encode()
        for s in range(2, upto_save + 1):
            tree[f"work/save-{s}.txt"] = f"{pid} written before save {s}\n".encode()
    return tree


def write_tree(dest: Path, tree: dict[str, bytes], uid: int | None = None) -> None:
    """Write a tree of files under ``dest`` (replacing changed files); chown all when uid given."""
    dest.mkdir(parents=True, exist_ok=True)
    dirs = {dest}
    for rel, data in tree.items():
        path = dest / rel
        if path.parent not in dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            dirs.update(path.parents)
        path.write_bytes(data)
        if uid is not None:
            os.lchown(path, uid, uid)
    if uid is not None:
        for d in dirs:
            if d == dest or dest in d.parents:
                os.lchown(d, uid, uid)


def bup_env(repo: Path, when: int | None = None) -> dict[str, str]:
    """Environment for a bup command on ``repo``; ``when`` dates the commit and the reflog."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BUP_"))}
    env.update(
        BUP_DIR=str(repo),
        LC_ALL="C",
        GIT_AUTHOR_NAME="sandbox",
        GIT_AUTHOR_EMAIL="sandbox@localhost",
        GIT_COMMITTER_NAME="sandbox",
        GIT_COMMITTER_EMAIL="sandbox@localhost",
    )
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"{when} +0000"
    return env


def bup_init(repo: Path) -> None:
    """``bup init`` a new repository at ``repo``."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    run_checked([BUP, "init"], env=bup_env(repo))


def bup_save(repo: Path, staging: Path, when: int) -> None:
    """One real save of ``staging`` into ``repo``'s branch ``master``, dated ``when``."""
    env = bup_env(repo, when)
    run_checked([BUP, "index", str(staging)], env=env)
    run_checked(
        [BUP, "save", "-q", "--strip", "-n", "master", "-d", str(when), str(staging)], env=env
    )


def bup_save_series(
    repo: Path,
    staging: Path,
    trees: list[dict[str, bytes]],
    times: list[int],
    before: dict[int, Callable[[], None]] | None = None,
) -> None:
    """Real saves of ``trees`` into ``repo``, the Nth dated ``times[N]``: every tree is written to
    its own folder and indexed by ONE ``bup index`` (each run waits for the next whole second),
    then saved with ``--strip``, so each save holds just that tree. ``before[N]`` runs before the
    Nth save (0-based), e.g. to copy a replica that stays one save behind."""
    folders = []
    for n, tree in enumerate(trees):
        folder = staging / f"save-{n + 1}"
        write_tree(folder, tree)
        folders.append(folder)
    if not folders:
        return
    run_checked([BUP, "index", str(staging)], env=bup_env(repo))
    for n, folder in enumerate(folders):
        if before and n in before:
            before[n]()
        run_checked(
            [BUP, "save", "-q", "--strip", "-n", "master", "-d", str(times[n]), str(folder)],
            env=bup_env(repo, times[n]),
        )


def copy_repo(src: Path, dest: Path) -> None:
    """Copy a repository the way the fleet's replication did (``cp -a``)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_checked(["cp", "-a", str(src), str(dest)])


# ---------------------------------------------------------------- conf/ files


class SaveLog:
    """Writes a project's ``conf/save_log.json``: older history padding, then one line per save.

    Padding is generated once per project; big logs are streamed to a file once and then copied
    to each location, so a 60 MB log costs one generation, not one per copy.
    """

    def __init__(self, project: ProjectSpec, times: list[int], scratch: Path) -> None:
        self.project = project
        self.times = times
        self.scratch = scratch
        self._padding: bytes | None = None
        self._padding_file: Path | None = None

    def save_lines(self, held: int) -> bytes:
        """The records of the saves a copy holds."""
        out = []
        for i, t in enumerate(self.times[:held]):
            out.append(
                json.dumps({"timestamp": t, "files": self.project.files + i, "size_kb": 40 + 8 * i})
            )
        return "".join(line + "\n" for line in out).encode()

    def _padding_target(self) -> int:
        return max(0, self.project.save_log_bytes - len(self.save_lines(self.project.saves)))

    def _padding_chunks(self) -> Iterable[bytes]:
        """History before the first save, oldest first: one record per 30 s of past activity."""
        target = self._padding_target()
        if target <= 0:
            return
        # Lines are 50-60 bytes: plan for enough of them and stop once the target is reached.
        lines = target // 40 + 1
        first = self.times[0] - 30 * (lines + 1)
        written = 0
        n = 0
        while n < lines:
            chunk = "".join(
                f'{{"timestamp": {first + 30 * k}, "files": {100 + k % 997}, '
                f'"size_kb": {50000 + k % 49999}}}\n'
                for k in range(n, min(lines, n + 20000))
            ).encode()
            n += 20000
            full = written + len(chunk) > target
            if full:
                chunk = chunk[: chunk.rfind(b"\n", 0, target - written) + 1]
            written += len(chunk)
            if chunk:
                yield chunk
            if full:
                return

    def write(self, conf: Path, held: int) -> None:
        """Write ``conf/save_log.json`` for a copy that holds ``held`` saves."""
        dest = conf / "save_log.json"
        if self._padding_target() > _BIG_LOG:
            if self._padding_file is None:
                self._padding_file = self.scratch / f"{self.project.project_id}.save_log_padding"
                with self._padding_file.open("wb") as f:
                    for chunk in self._padding_chunks():
                        f.write(chunk)
            shutil.copyfile(self._padding_file, dest)
            with dest.open("ab") as f:
                f.write(self.save_lines(held))
            return
        if self._padding is None:
            self._padding = b"".join(self._padding_chunks())
        dest.write_bytes(self._padding + self.save_lines(held))

    def close(self) -> None:
        """Remove the padding file, once every copy has its log."""
        if self._padding_file is not None:
            self._padding_file.unlink(missing_ok=True)
            self._padding_file = None


def write_conf(
    repo: Path,
    project: ProjectSpec,
    replicas: list[str],
    held: int,
    times: list[int],
    save_log: SaveLog,
) -> None:
    """Write a copy's ``conf/``: settings, replicas, save log and ``touch`` (mtime = last use: the
    newest save it holds, or ``used_after_save_hours`` after it)."""
    conf = repo / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    settings = {
        "disk": project.disk_mb,
        "memory": 1000,
        "cores": 1,
        "mintime": 3600,
        "network": False,
    }
    (conf / "settings.json").write_text(json.dumps(settings) + "\n", encoding="utf-8")
    (conf / "replicas.json").write_text(json.dumps(replicas) + "\n", encoding="utf-8")
    save_log.write(conf, held)
    touch = conf / "touch"
    touch.write_bytes(b"")
    if held:
        used = times[held - 1] + project.used_after_save_hours * 3600
        os.utime(touch, (used, used))


# ---------------------------------------------------------------- faults


def master_sha(repo: Path) -> str:
    """The sha ``refs/heads/master`` points to (loose ref or ``packed-refs``)."""
    loose = repo / "refs" / "heads" / "master"
    if loose.exists():
        return loose.read_text(encoding="ascii").strip()
    packed = repo / "packed-refs"
    if packed.exists():
        for line in packed.read_text(encoding="ascii").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == "refs/heads/master":
                return parts[0]
    raise BuildError(f"{repo} has no master ref")


def idx_contains(idx: Path, sha: bytes) -> bool:
    """Whether a v2 pack ``.idx`` lists the object ``sha`` (binary search in its sha table)."""
    data = idx.read_bytes()
    if data[:8] != b"\377tOc\x00\x00\x00\x02":
        raise BuildError(f"{idx} is not a version-2 pack index")
    fanout = struct.unpack(">256I", data[8 : 8 + 1024])
    lo = fanout[sha[0] - 1] if sha[0] else 0
    hi = fanout[sha[0]]
    table = 8 + 1024
    while lo < hi:
        mid = (lo + hi) // 2
        probe = data[table + 20 * mid : table + 20 * mid + 20]
        if probe == sha:
            return True
        if probe < sha:
            lo = mid + 1
        else:
            hi = mid
    return False


def corrupt_newest_pack(repo: Path) -> Path:
    """Delete the ``.pack`` holding the master commit, keep its ``.idx`` (FACTS.md's classic fault).

    Returns the deleted pack's path.
    """
    sha = bytes.fromhex(master_sha(repo))
    for idx in sorted((repo / "objects" / "pack").glob("*.idx")):
        if idx_contains(idx, sha):
            pack = idx.with_suffix(".pack")
            pack.unlink()
            return pack
    raise BuildError(f"no pack index in {repo} holds the master commit")


# ---------------------------------------------------------------- templates for big fleets


def _copy_for_real(rel: str) -> bool:
    """Files that change in place in a repository and so must not be shared by hard links."""
    top = rel.split("/", 1)[0]
    name = rel.rsplit("/", 1)[-1]
    return (
        top in ("HEAD", "packed-refs", "refs", "logs", "conf")
        or name.startswith("bupindex")
        or name == "bup.bloom"
    )


# Not needed by git or bup, and every inode costs ~0.3 ms on a slow disk, times 100,000 repos.
_TEMPLATE_SKIP = frozenset({"info", "info/exclude", "objects/info", "refs/tags", "logs/HEAD"})


@dataclass
class Template:
    """A real bup repository, read once, that many repositories are materialised from."""

    path: Path
    dirs: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    copies: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Template:
        """Walk the repository once and remember what to link and what to copy."""
        t = cls(path)
        for dirpath, dirnames, filenames in os.walk(path):
            rel_dir = os.path.relpath(dirpath, path)
            dirnames.sort()
            dirnames[:] = [
                d
                for d in dirnames
                if os.path.normpath(os.path.join(rel_dir, d)) not in _TEMPLATE_SKIP
            ]
            for d in dirnames:
                t.dirs.append(os.path.normpath(os.path.join(rel_dir, d)))
            for name in sorted(filenames):
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if rel in _TEMPLATE_SKIP:
                    continue
                if _copy_for_real(rel):
                    t.copies[rel] = (path / rel).read_bytes()
                else:
                    t.links.append(rel)
        return t

    def materialise(self, dest: Path) -> None:
        """Create ``dest`` as a hard-link copy of the template with its own mutable files."""
        dest.mkdir(parents=True)
        for d in self.dirs:
            (dest / d).mkdir()
        src = str(self.path)
        out = str(dest)
        for rel in self.links:
            os.link(f"{src}/{rel}", f"{out}/{rel}")
        for rel, data in self.copies.items():
            with open(f"{out}/{rel}", "wb") as f:
                f.write(data)


def template_key(project_id: str, count: int) -> int:
    """Which of ``count`` templates a project is made from (stable across runs)."""
    return int(hashlib.sha1(project_id.encode()).hexdigest()[:8], 16) % count  # noqa: S324


def build_project(
    project: ProjectSpec,
    staging: Path,
    repo_paths: dict[str, Path],
    times: list[int],
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Build one project's repositories with real bup; return the saves each location holds.

    The master's repository is made in place; each replica is a ``cp -a`` of it after the last
    save (or after save N-1 for ``stale_on`` hosts). Conf files and faults are not planted here.
    """
    master = repo_paths[project.master]
    bup_init(master)
    held = {project.master: project.saves}
    stale = [h for h in project.replicas if h in project.stale_on and h != project.master]
    fresh = [h for h in project.replicas if h not in project.stale_on and h != project.master]

    def copy_stale() -> None:
        for h in stale:
            copy_repo(master, repo_paths[h])
            held[h] = project.saves - 1

    trees = [live_tree(project, s) for s in range(1, project.saves + 1)]
    bup_save_series(master, staging, trees, times, {project.saves - 1: copy_stale})
    for h in fresh:
        copy_repo(master, repo_paths[h])
        held[h] = project.saves
    if progress:
        progress(f"built {project.project_id} ({project.saves} saves, {len(held)} copies)")
    return held


def build_template(
    base: Path, number: int, saves: int, times: list[int]
) -> tuple[Template, Template]:
    """Make template repository ``number`` with real bup: its full state and its state one save
    earlier (for stale replicas). Returns both, loaded."""
    fake_id = f"00000000-0000-4000-8000-{number:012d}"
    project = ProjectSpec(fake_id, "template", (), saves=saves, files=3)
    full = base / f"t{number}-s{saves}" / "full"
    prev = base / f"t{number}-s{saves}" / "prev"
    staging = base / f"t{number}-s{saves}" / "staging"
    bup_init(full)
    trees = [live_tree(project, s) for s in range(1, saves + 1)]
    bup_save_series(full, staging, trees, times, {saves - 1: lambda: copy_repo(full, prev)})
    for repo in (full, prev):
        # git's sample hooks and the legacy branches/ directory: unused, and 14 inodes per repo.
        for extra in ("hooks", "branches"):
            shutil.rmtree(repo / extra, ignore_errors=True)
    return Template.load(full), Template.load(prev)
