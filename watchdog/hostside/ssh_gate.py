#!/usr/bin/env python3
"""bupwatch-ssh-gate: the ``authorized_keys`` ``command=`` that lets the watchdog run only its own
commands on a storage host (probe, deep probe, boot gate, the repairs' argv shapes, the archive
audit of a directory given as ``--archive-root``); the rest is refused, logged, and never reaches
a shell.

Installed by the operator (``bup-watchdog files --dest DIR`` copies it) as
``/usr/local/sbin/bupwatch-ssh-gate`` and named in the watchdog key's line::

    restrict,command="/usr/local/sbin/bupwatch-ssh-gate" ssh-ed25519 AAAA… bupwatch

sshd puts what the client asked for in ``SSH_ORIGINAL_COMMAND``; the gate splits it with
``shlex`` (the watchdog sends ``shlex.join`` of an argument list), matches the argument list
against the exact shapes below, and ``execvp``s it — no shell. Every decision is logged (syslog,
facility auth, or ``--log FILE``); a refusal also says why on stderr and exits 126.

Privilege. The login user (``bupwatch``) runs the monitoring programs itself. Commands the watchdog
sends as ``sudo -n …`` (``[ssh] sudo``), and the ``rsync`` sender a peer host starts to pull a
replica, run as root through ``sudo -n bupwatch-ssh-gate [OPTIONS] --as-root COMMAND…``: the
sudoers rule (``deploy/sudoers.bupwatch``) allows only the gate, and the gate as root checks the
command again. The repairs' Python programs sent on stdin are pinned by their SHA-256
(``PROGRAMS``): any other program on stdin is refused, so the key cannot run arbitrary code as
root. The probe, deep probe and boot gate are read-only and change with every release, so they
are not pinned; they never run through sudo (a ``sudo -n`` in front of them is dropped).

Stdlib only, imports nothing of bup-watchdog: it runs on the storage hosts. The shapes are those
of ``watchdog/gather.py`` (probe), ``watchdog/deep.py`` (deep probe), ``repairs/*.py``
(``plan()`` and the steps they run) and ``watchdog/transport/ssh.py`` (the ``timeout`` wrapper);
``tests/watchdog/hostside/test_ssh_gate.py`` runs every check and repair through this gate and
compares the copies below (``MOUNTED_GUARD``, ``PROGRAMS``, ``project_uid``) with the originals.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence

# Every command pays for the gate's start (FACTS: a command over a kept connection costs ~3 ms):
# no argparse, dataclasses or eager hashlib/syslog here, ~30 ms less per command.

REFUSED_STATUS = 126
MAX_COMMAND = 64 * 1024
MAX_PROGRAM = 1 << 20

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SERVER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHA = re.compile(r"[0-9a-f]{40}")
_INT = re.compile(r"[0-9]{1,12}")
_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST = re.compile(
    r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*)"
)
_TAG = re.compile(r"refs/tags/conflict-master-[0-9]{8}T[0-9]{6}Z")
_FSTYPES = re.compile(r"[A-Za-z0-9_.,-]{1,200}")
_SOURCE = re.compile(r"[A-Za-z0-9_.,*?/:@+=-]{1,200}")
# An rsync server's short options: those -a, --one-file-system and --update give, and -n, -c of
# move_project's dry run with checksums (never -L, -k or -K: following a symlink a project's user
# made would send any file of the host), then, after 'e', the protocol's capability letters.
# prune_repo: a bup PERIOD (repairs/prune_repo.py _PERIOD), a save's name in ``bup ls master``
# (_SAVE), the aside copy's time stamp, and the keep options in the order the repair gives them.
_PERIOD = re.compile(r"forever|[1-9][0-9]{0,5}(s|min|h|d|w|m|y)")
_SAVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}(-[0-9]{1,4})?")
_STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_KEEP = ("--keep-all-for", "--keep-dailies-for", "--keep-monthlies-for", "--keep-yearlies-for")
REPLICAS_JSON = "/conf/replicas.json"
WORK_SUFFIX = ".prune-new"
ASIDE_INFIX = ".pruned-"
_RSYNC_SHORT = re.compile(r"-[rlptgoDxuvqnc]{1,20}(e[.A-Za-z]{0,30})?")
ZERO_SHA = "0" * 40

#: repairs/_copy.py MOUNTED_GUARD, character for character (a test compares them).
MOUNTED_GUARD = (
    "side=$1 root=$2; shift 2; "
    'if ! cd -- "$root" || ! mountpoint -q "$root" || '
    '[ "$(stat -c %d:%i .)" != "$(stat -c %d:%i "$root")" ]; '
    'then echo "resync_replica refused: $root on the $side is not mounted, or is no longer the '
    'filesystem this copy stands in; nothing copied" >&2; exit 97; fi; '
    'exec "$@"'
)

#: SHA-256 of the repairs' programs sent on stdin (the bytes of the constants named); a test
#: recomputes them. A program not listed here never runs: after an upgrade that changes one,
#: install the new gate on the hosts (``bup-watchdog files --dest DIR``).
PROGRAMS = {
    "clean_repo busy scan": "c9acb2410d9cfd74d444a3fb05ba9e09ae8d1b13e50f051a0797daf172efc53c",
    "resync_replica busy scan": "698cfa33b836ac4745804bce95e1e6f61829c8eff8745d0092b81d697f2eae53",
    "rotate_save_log": "ab9463efae7fe08cc57cd3fd37eef8c3dfb0f044a7e70957a9f0812d273ccd7e",
    "prune_repo": "1ab9feaceb57bfa1dbf0c176d205b4beb674e3d9d00d89f541562d04b92f1b7f",
    "move_project replicas.json": (
        "ccfa2fd24cbafd688018629037cd7a3463772d589b6dbff8a11649fcea9253e4"
    ),
}

# The option sets resync_replica's rsync copies use (after ``-a --numeric-ids --timeout=N``
# and an optional ``--bwlimit=N``), by what is copied.
_OBJECT_EXCLUDES = (
    "--exclude=*tmp*",
    "--exclude=*.midx",
    "--exclude=bup.bloom",
    "--exclude=/info/",
)
_PACKS_ONLY = ("--include=/pack/", "--include=/pack/*.pack", "--exclude=*")
_RSYNC_OPTIONS = {
    ("--ignore-existing", *_OBJECT_EXCLUDES, *_PACKS_ONLY): "objects",
    ("--ignore-existing", *_OBJECT_EXCLUDES): "objects",
    ("--update", "--exclude=/replicas.json"): "conf",
    ("--ignore-existing",): "replicas.json",
}
# move_project's proof that the target's live tree equals the source's: changes nothing.
_LIVE_PROOF = ("--dry-run", "--checksum", "--itemize-changes")
# Long options an rsync sender (``rsync --server --sender``) may be started with.
_SENDER_LONG = re.compile(
    r"--(numeric-ids|ignore-existing|one-file-system|(timeout|bwlimit)=[0-9]{1,9})"
)


class Refused(Exception):
    """The command is not one the watchdog sends; the message says which part is wrong."""


DEFAULT_PYTHONS = ("python3", "/usr/bin/python3")
DEFAULT_RESTART = (("systemctl", "restart", "bup_server"),)


class Gate:
    """What this host allows: its roots, its Python, its restart command and port file."""

    __slots__ = ("archive_roots", "bup_root", "port_file", "projects_root", "pythons", "restart")

    def __init__(
        self,
        bup_root: str = "/bup",
        projects_root: str = "/projects",
        pythons: tuple[str, ...] = DEFAULT_PYTHONS,
        restart: tuple[tuple[str, ...], ...] = DEFAULT_RESTART,
        port_file: str = "",
        archive_roots: tuple[str, ...] = (),
    ) -> None:
        self.archive_roots = archive_roots
        self.bup_root = bup_root
        self.projects_root = projects_root
        self.pythons = pythons
        self.restart = restart
        self.port_file = port_file

    @property
    def bups_root(self) -> str:
        return self.bup_root.rstrip("/") + "/bups"

    @property
    def port_path(self) -> str:
        return self.port_file or self.bup_root.rstrip("/") + "/conf/bup_server.port"


class Allowed:
    """A command the gate lets through: ``argv`` to exec, and how.

    ``root``: runs as root (sudo re-exec through the gate when the login user is not root);
    ``program``: the PROGRAMS entry stdin must match, if it is a pinned program; ``peer``: a
    peer host's rsync sender, run as root even when not asked for through sudo.
    """

    __slots__ = ("argv", "kind", "peer", "program", "root")

    def __init__(
        self,
        kind: str,
        argv: tuple[str, ...],
        root: bool = False,
        program: str | None = None,
        peer: bool = False,
    ) -> None:
        self.kind = kind
        self.argv = argv
        self.root = root
        self.program = program
        self.peer = peer

    def __repr__(self) -> str:
        return f"Allowed({self.kind!r}, root={self.root}, peer={self.peer})"


# -- the pieces of a command -----------------------------------------------------------------------


def project_uid(project_id: str) -> int:
    """watchdog/model.py project_uid: the project's uid from its id (a test compares them)."""
    import hashlib  # only for this shape: it loads OpenSSL (5 ms)

    n = int(hashlib.sha512(project_id.encode()).hexdigest()[:8], 16) // 2
    return n + 65537 if n <= 65537 else n


def _uuid(value: str, what: str = "project id") -> str:
    if not _UUID4.fullmatch(value):
        raise Refused(f"{what} {value!r} is not a lower-case version-4 UUID")
    return value


def _repo(gate: Gate, path: str) -> str:
    """``BUPS/<project id>``; returns the project id."""
    head, sep, pid = path.rpartition("/")
    if not sep or head != gate.bups_root:
        raise Refused(f"{path!r} is not a repository under {gate.bups_root}")
    return _uuid(pid)


def _work(gate: Gate, path: str) -> str:
    """prune_repo's work copy ``BUPS/<project id>.prune-new``; returns the project id."""
    if not path.endswith(WORK_SUFFIX):
        raise Refused(f"{path!r} is not a repository's {WORK_SUFFIX} copy")
    return _repo(gate, path.removesuffix(WORK_SUFFIX))


def _live(gate: Gate, path: str) -> str:
    """``PROJECTS/<project id>``; returns the project id."""
    head, sep, pid = path.rpartition("/")
    if not sep or head != gate.projects_root.rstrip("/"):
        raise Refused(f"{path!r} is not a project directory under {gate.projects_root}")
    return _uuid(pid)


def _match(argv: Sequence[str], shape: Sequence[str], what: str) -> None:
    if list(argv) != list(shape):
        raise Refused(f"{what}: arguments differ from the only shape allowed")


def _number(value: str, what: str) -> str:
    if not _NUMBER.fullmatch(value):
        raise Refused(f"{what} {value!r} is not a plain number")
    return value


def _sha(value: str) -> str:
    if not _SHA.fullmatch(value):
        raise Refused(f"{value!r} is not a commit id (40 hex digits)")
    return value


# -- programs on stdin -----------------------------------------------------------------------------


def _python(gate: Gate, args: Sequence[str]) -> Allowed:
    """``python3 -S - …``: probe, deep probe, boot gate, or one of the repairs' pinned programs."""
    if list(args[1:3]) != ["-S", "-"]:
        raise Refused("python runs only as 'python3 -S -' (a program on stdin)")
    rest = list(args[3:])
    argv = tuple(args)
    if rest[:1] == ["--bup-root"] and rest[2:3] == ["--projects-root"]:
        _probe_options(gate, rest)
        return Allowed("probe", argv)
    if rest[:1] == ["--bup-root"] and rest[2:3] == ["--timeout"]:
        if rest[1] != gate.bup_root:
            raise Refused(f"deep probe: --bup-root must be {gate.bup_root}")
        _number(rest[3] if len(rest) > 3 else "", "deep probe: --timeout")
        ids = rest[4:]
        if not ids:
            raise Refused("deep probe: no project ids")
        for i in ids:
            _uuid(i)
        return Allowed("deep probe", argv)
    if rest[:1] in (["list"], ["check"]):
        _archive_options(gate, rest)
        return Allowed(f"archive audit {rest[0]}", argv)
    if rest and rest[0].startswith("--projects="):
        _preflight_options(gate, rest)
        return Allowed("boot gate", argv)
    if rest[:1] in (["swap"], ["discard"]):
        _prune_program(gate, rest)
        return Allowed(f"prune_repo {rest[0]}", argv, root=True, program="prune_repo")
    if len(rest) == 1:
        _repo(gate, rest[0])
        return Allowed("clean_repo busy scan", argv, root=True, program="clean_repo busy scan")
    if len(rest) == 2 and rest[0].endswith(REPLICAS_JSON):
        _placement(gate, rest[0], rest[1])
        return Allowed(
            "move_project replicas.json", argv, root=True, program="move_project replicas.json"
        )
    if len(rest) == 2:
        if _repo(gate, rest[0]) != rest[1]:
            raise Refused("busy scan: the project id differs from the repository's")
        return Allowed(
            "resync_replica busy scan", argv, root=True, program="resync_replica busy scan"
        )
    if len(rest) == 3:
        _repo(gate, rest[0])
        if not _INT.fullmatch(rest[1]):
            raise Refused(f"rotate_save_log: keep bytes {rest[1]!r} is not a number")
        _number(rest[2], "rotate_save_log: settle seconds")
        return Allowed("rotate_save_log", argv, root=True, program="rotate_save_log")
    raise Refused("python -S -: arguments match none of the watchdog's programs")


def _archive_options(gate: Gate, rest: list[str]) -> None:
    """``archive audit``'s read-only program: ``list ROOT`` or ``check ROOT TIMEOUT ID…``, ROOT
    one of the gate's ``--archive-root`` directories word for word."""
    root = rest[1] if len(rest) > 1 else ""
    if root not in gate.archive_roots:
        raise Refused(
            f"archive audit: {root!r} is not an archive this host offers "
            "(add --archive-root DIR to the gate's command in authorized_keys)"
        )
    if rest[0] == "list":
        if len(rest) != 2:
            raise Refused("archive audit list: only 'list ROOT'")
        return
    _number(rest[2] if len(rest) > 2 else "", "archive audit check: timeout")
    if len(rest) < 4:
        raise Refused("archive audit check: no project ids")
    for pid in rest[3:]:
        _uuid(pid)


def _placement(gate: Gate, path: str, text: str) -> None:
    """move_project's ``REPO/conf/replicas.json JSON``: a list of distinct server ids (UUIDs)."""
    _repo(gate, path[: -len(REPLICAS_JSON)])
    import json  # only here: every other command starts faster without it

    try:
        ids = json.loads(text)
    except ValueError:
        raise Refused("move_project replicas.json: the placement is not JSON") from None
    if not (
        isinstance(ids, list)
        and 0 < len(ids) <= 64
        and all(isinstance(i, str) and _SERVER_ID.fullmatch(i) for i in ids)
        and len(set(ids)) == len(ids)
    ):
        raise Refused("move_project replicas.json: the placement is not a list of server ids")


def _prune_program(gate: Gate, rest: list[str]) -> None:
    """``swap REPO WORK REPO.pruned-STAMP SHA UNTIL`` or ``discard REPO WORK``."""
    if rest[0] == "discard" and len(rest) == 3:
        if _repo(gate, rest[1]) != _work(gate, rest[2]):
            raise Refused("prune_repo discard: the copy is not the repository's")
        return
    if rest[0] != "swap" or len(rest) != 6:
        raise Refused("prune_repo: only 'swap REPO WORK ASIDE SHA UNTIL' or 'discard REPO WORK'")
    repo, work, aside, sha, until = rest[1:]
    if _repo(gate, repo) != _work(gate, work):
        raise Refused("prune_repo swap: the copy is not the repository's")
    stamp = aside.removeprefix(repo + ASIDE_INFIX)
    if stamp == aside or not _STAMP.fullmatch(stamp):
        raise Refused(f"prune_repo swap: {aside!r} is not {repo}{ASIDE_INFIX}YYYYMMDDThhmmssZ")
    _sha(sha)
    if not _INT.fullmatch(until):
        raise Refused(f"prune_repo swap: keep-until {until!r} is not a time in seconds")


def _probe_options(gate: Gate, rest: list[str]) -> None:
    if rest[1] != gate.bup_root or rest[3:4] != [gate.projects_root]:
        raise Refused(
            f"probe: --bup-root and --projects-root must be {gate.bup_root} and "
            f"{gate.projects_root}"
        )
    flags = {"--fingerprint", "--no-project-dirs"}
    valued = {
        "--racy-seconds": _NUMBER,
        "--owner-sample": _INT,
        "--owner-sample-total": _INT,
        "--owner-sample-from": _UUID4,
    }
    seen: set[str] = set()
    i = 4
    while i < len(rest):
        opt = rest[i]
        if opt in seen:
            raise Refused(f"probe: {opt} given twice")
        if opt == "--only" and i + 1 < len(rest):  # a repair's probe: its projects, repeatable
            _uuid(rest[i + 1])
            i += 2
            continue
        seen.add(opt)
        if opt in flags:
            i += 1
        elif opt in valued and i + 1 < len(rest) and valued[opt].fullmatch(rest[i + 1]):
            i += 2
        else:
            raise Refused(f"probe: argument {opt!r} is not one the watchdog sends")


def _preflight_options(gate: Gate, rest: list[str]) -> None:
    allowed: dict[str, Callable[[str], object]] = {
        "--projects": lambda v: v == gate.projects_root,
        "--bups": lambda v: v == gate.bups_root,
        "--projects-fstype": _FSTYPES.fullmatch,
        "--bups-fstype": _FSTYPES.fullmatch,
        "--projects-source": _SOURCE.fullmatch,
        "--bups-source": _SOURCE.fullmatch,
    }
    seen: set[str] = set()
    for arg in rest:
        name, eq, value = arg.partition("=")
        if not eq or name not in allowed or name in seen or not allowed[name](value):
            raise Refused(f"boot gate: argument {arg!r} is not one the watchdog sends")
        seen.add(name)


# -- the repairs' commands -------------------------------------------------------------------------


def _find(gate: Gate, args: Sequence[str]) -> Allowed:
    """chown_project's chown walk, or one of clean_repo's three deletions."""
    where = args[1] if len(args) > 1 else ""
    if where.startswith(gate.projects_root.rstrip("/") + "/"):
        uid = project_uid(_live(gate, where))
        _match(
            args,
            ["find", where, "-xdev", "-path", f"{where}/.snapshots", "-prune", "-o",
             "!", "-uid", str(uid), "-execdir", "chown", "--no-dereference", f"{uid}:{uid}",
             "{}", "+"],
            "find (chown_project)",
        )  # fmt: skip
        return Allowed("chown_project", tuple(args), root=True)
    repo: str = where
    names: tuple[str, ...] = ("bupindex*", "*.midx")
    subs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("/objects/pack", ("*.midx", "*tmp*")),
        ("/objects", ("*tmp*",)),
    )
    for sub, sub_names in subs:
        if where.endswith(sub):
            repo, names = where[: -len(sub)], sub_names
            break
    _repo(gate, repo)
    # clean_repo deletes only what its findings name: any of the names, in this order.
    subsets = [[n for i, n in enumerate(names) if m >> i & 1] for m in range(1, 1 << len(names))]
    for subset in subsets:
        patterns: list[str] = []
        for n in subset:
            patterns += [*(["-o"] if patterns else []), "-name", n]
        shape = ["find", where, "-mindepth", "1", "-maxdepth", "1", "-type", "f",
                 "(", *patterns, ")", "-print", "-delete"]  # fmt: skip
        if list(args) == shape:
            return Allowed("clean_repo", tuple(args), root=True)
    raise Refused("find (clean_repo): arguments differ from the only shapes allowed")


def _git(gate: Gate, args: Sequence[str], env: Sequence[str] = ()) -> Allowed:
    """resync_replica's and clean_repo's git commands on one repository."""
    if len(args) < 3 or not args[1].startswith("--git-dir="):
        raise Refused("git runs only as 'git --git-dir=REPOSITORY …'")
    git_dir = args[1].removeprefix("--git-dir=")
    sub = list(args[2:])
    argv = (*env, *args)
    if git_dir.endswith(WORK_SUFFIX) and not env:
        _work(gate, git_dir)
        _match(sub, ["fsck", "--connectivity-only", "--no-dangling"], "git (prune_repo's copy)")
        return Allowed("prune_repo fsck", argv, root=True)
    _repo(gate, git_dir)
    if sub == ["rev-parse", "--verify", "refs/heads/master"] and not env:
        return Allowed("prune_repo rev-parse", argv, root=True)
    if env:
        if sub[:4] != ["update-ref", "--create-reflog", "-m", sub[3] if len(sub) > 3 else ""]:
            raise Refused("env: only resync_replica's fast-forward runs with an environment")
        if not re.fullmatch(r"resync_replica from [A-Za-z0-9._-]{1,64}", sub[3]):
            raise Refused("git update-ref: unexpected reflog message")
        _match(sub[4:5], ["refs/heads/master"], "git update-ref")
        if len(sub) != 7:
            raise Refused("git update-ref: wrong number of arguments")
        _sha(sub[5])
        _sha(sub[6])
        return Allowed("resync_replica fast-forward", argv, root=True)
    if sub == ["repack", "-a", "-d", "-k", "-q"]:
        return Allowed("clean_repo repack", argv, root=True)
    if len(sub) == 4 and sub[:3] == ["fsck", "--connectivity-only", "--no-dangling"]:
        _sha(sub[3])
        return Allowed("git fsck", argv, root=True)
    if len(sub) == 4 and sub[:2] == ["merge-base", "--is-ancestor"]:
        _sha(sub[2])
        _sha(sub[3])
        return Allowed("git merge-base", argv, root=True)
    if len(sub) == 4 and sub[0] == "for-each-ref" and sub[1].startswith("--points-at="):
        _sha(sub[1].removeprefix("--points-at="))
        _match(sub[2:], ["--format=%(refname)", "refs/tags/conflict-master-*"], "for-each-ref")
        return Allowed("git for-each-ref", argv, root=True)
    if len(sub) == 6 and sub[:2] == ["update-ref", "-m"]:
        if not re.fullmatch(r"resync_replica: conflict with master [A-Za-z0-9._-]{1,64} at "
                        r"[0-9a-f]{40}", sub[2]):  # fmt: skip
            raise Refused("git update-ref: unexpected message")
        if not _TAG.fullmatch(sub[3]):
            raise Refused(f"git update-ref: {sub[3]!r} is not a conflict tag")
        _sha(sub[4])
        _match(sub[5:], [ZERO_SHA], "git update-ref (the tag must be new)")
        return Allowed("resync_replica conflict tag", argv, root=True)
    raise Refused("git: this sub-command is not one the repairs run")


def _env(gate: Gate, args: Sequence[str]) -> Allowed:
    """``env GIT_COMMITTER_*=… git …``: resync_replica's fast-forward."""
    env = ["env", "GIT_COMMITTER_NAME=bup-watchdog", "GIT_COMMITTER_EMAIL=bup-watchdog@localhost"]
    _match(args[:3], env, "env")
    rest = list(args[3:])
    if rest and re.fullmatch(r"GIT_COMMITTER_DATE=[0-9]{1,12} \+0000", rest[0]):
        env.append(rest.pop(0))
    if rest[:1] != ["git"]:
        raise Refused("env: only git runs with an environment")
    return _git(gate, rest, env)


def _remote(gate: Gate, spec: str) -> tuple[str, str]:
    """``user@host:path`` of a peer; returns (kind, project id) of the path."""
    user, at, rest = spec.partition("@")
    host, colon, path = rest.rpartition(":") if rest.startswith("[") else rest.partition(":")
    if not at or not colon or not _USER.fullmatch(user) or not _HOST.fullmatch(host):
        raise Refused(f"rsync: {spec!r} is not user@host:path")
    return _copy_path(gate, path)


def _copy_path(gate: Gate, path: str) -> tuple[str, str]:
    """What an rsync path names: a repository's objects/, conf/, conf/replicas.json, or the
    relative live tree ``<project id>/`` (inside MOUNTED_GUARD)."""
    for suffix, kind in (
        ("/objects/", "objects"),
        ("/conf/", "conf"),
        ("/conf/replicas.json", "replicas.json"),
    ):
        if path.endswith(suffix):
            return kind, _repo(gate, path[: -len(suffix)])
    if path.endswith("/") and _UUID4.fullmatch(path[:-1]):
        return "live", path[:-1]
    raise Refused(f"rsync: {path!r} is not a path the repairs copy")


def _rsync_ssh(value: str) -> None:
    if not re.fullmatch(
        r"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -p [0-9]{1,5}",
        value,
    ):
        raise Refused("rsync -e: only the repairs' ssh command (batch mode, strict host keys)")


def _rsync(gate: Gate, args: Sequence[str], *, live: bool = False) -> Allowed:
    """resync_replica's pulling copy (run where the data lands), or a peer's sender."""
    if list(args[1:3]) == ["--server", "--sender"]:
        return _rsync_sender(gate, args, live=live)
    head = ["rsync", "-a", "--numeric-ids"]
    _match(args[:3], head, "rsync")
    if len(args) < 4 or not re.fullmatch(r"--timeout=[0-9]{1,9}", args[3]):
        raise Refused("rsync: --timeout=N must follow -a --numeric-ids")
    rest = list(args[4:])
    if rest and re.fullmatch(r"--bwlimit=[0-9]{1,9}", rest[0]):
        rest.pop(0)
    if len(rest) < 4 or rest[-4] != "-e":
        raise Refused("rsync: must end with -e SSH SOURCE DEST")
    opts, ssh, src, dest = tuple(rest[:-4]), rest[-3], rest[-2], rest[-1]
    _rsync_ssh(ssh)
    if live:
        sender = f"--rsync-path={shlex.join(_guard_argv('master', gate.projects_root, 'rsync'))}"
        tail = ("--one-file-system", "--exclude=/.snapshots", sender)
        if opts not in (("--update", *tail), (*_LIVE_PROOF, *tail)):
            raise Refused("rsync (live files): options differ from the two sets allowed")
        kind = "live"
    else:
        kind = _RSYNC_OPTIONS.get(opts, "")
        if not kind:
            raise Refused("rsync: options differ from every set the repairs use")
    src_kind, src_id = _remote(gate, src)
    dest_kind, dest_id = _copy_path(gate, dest)
    if not (src_kind == dest_kind == kind and src_id == dest_id):
        raise Refused("rsync: source and destination are not the same part of one project")
    if opts[:1] == _LIVE_PROOF[:1]:
        return Allowed("move_project live-tree proof (dry run)", tuple(args), root=True)
    return Allowed(f"resync_replica copy ({kind})", tuple(args), root=True)


def _rsync_sender(gate: Gate, args: Sequence[str], *, live: bool) -> Allowed:
    """``rsync --server --sender FLAGS . PATH``: a peer pulling a copy (read-only here)."""
    rest = list(args[3:])
    if len(rest) < 3 or rest[-2] != ".":
        raise Refused("rsync --server --sender: must end with '. PATH'")
    for opt in rest[:-2]:
        if not (_RSYNC_SHORT.fullmatch(opt) or _SENDER_LONG.fullmatch(opt)):
            raise Refused(f"rsync --server --sender: option {opt!r} is not allowed")
    kind, _pid = _copy_path(gate, rest[-1])
    if (kind == "live") != live:
        raise Refused("rsync --server --sender: live files are sent only inside the mount guard")
    return Allowed(f"rsync sender ({kind})", tuple(args), root=True, peer=True)


def _guard_argv(side: str, root: str, *argv: str) -> tuple[str, ...]:
    return ("sh", "-c", MOUNTED_GUARD, "resync-guard", side, root, *argv)


def _sh(gate: Gate, args: Sequence[str]) -> Allowed:
    """Only resync_replica's MOUNTED_GUARD, around a live-files rsync (either end)."""
    if list(args[1:4]) != ["-c", MOUNTED_GUARD, "resync-guard"]:
        raise Refused("sh -c runs only resync_replica's mount guard, word for word")
    if len(args) < 7 or args[4] not in ("master", "replica") or args[5] != gate.projects_root:
        raise Refused(f"mount guard: expects master|replica and {gate.projects_root}")
    if args[6] != "rsync":
        raise Refused("mount guard: only rsync runs inside it")
    inner = _rsync(gate, args[6:], live=True)
    if inner.peer != (args[4] == "master"):
        raise Refused("mount guard: the master sends, the replica receives")
    return Allowed(f"mount guard ({inner.kind})", tuple(args), root=True, peer=inner.peer)


def _bup(gate: Gate, args: Sequence[str]) -> Allowed:
    """``bup -d REPOSITORY init|ls``, and prune_repo's bup commands (on its copy but for the
    read-only ``--pretend`` and ``ls``)."""
    argv = tuple(args)
    if len(args) < 4 or args[1] != "-d":
        raise Refused("bup runs only as 'bup -d REPOSITORY …'")
    sub = list(args[3:])
    work = args[2].endswith(WORK_SUFFIX)
    if work:
        _work(gate, args[2])
    else:
        _repo(gate, args[2])
    if sub == ["init"] and not work:
        return Allowed("bup init", argv, root=True)
    if sub == ["ls", "master"]:
        return Allowed("bup ls", argv, root=True)
    if len(sub) == 2 and sub[0] == "ls" and sub[1].startswith("master/"):
        if not _SAVE.fullmatch(sub[1].removeprefix("master/")):
            raise Refused(f"bup ls: {sub[1]!r} is not master/YYYY-MM-DD-hhmmss")
        return Allowed("bup ls save", argv, root=True)
    if sub == ["gc", "--unsafe"] and work:
        return Allowed("prune_repo gc", argv, root=True)
    if sub[:2] == ["prune-older", "--unsafe"]:
        _prune_older(sub, work)
        return Allowed(f"prune_repo prune-older{'' if work else ' --pretend'}", argv, root=True)
    raise Refused("bup: this sub-command is not one the watchdog runs")


def _prune_older(sub: list[str], work: bool) -> None:
    """``prune-older --unsafe --pretend|--no-gc --wrt N KEEP… master``: --pretend (read-only)
    on the repository, --no-gc on the work copy only; the keep options once each, in order."""
    mode = "--no-gc" if work else "--pretend"
    if sub[2:4] != [mode, "--wrt"] or len(sub) < 8 or sub[-1] != "master":
        raise Refused(f"bup prune-older: only '--unsafe {mode} --wrt N --keep-…-for P… master'")
    if not _INT.fullmatch(sub[4]):
        raise Refused(f"bup prune-older: --wrt {sub[4]!r} is not a time in seconds")
    keep = sub[5:-1]
    names = keep[0::2]
    if len(keep) % 2 or len(set(names)) != len(names):
        raise Refused("bup prune-older: each keep option once, with a period")
    if [n for n in _KEEP if n in names] != names:
        raise Refused("bup prune-older: keep options other than the policy's, or out of order")
    for period in keep[1::2]:
        if not _PERIOD.fullmatch(period):
            raise Refused(f"bup prune-older: {period!r} is not a period")


def _simple(gate: Gate, args: Sequence[str]) -> Allowed:
    argv = tuple(args)
    if args[0] == "mkdir":
        _work(gate, args[2] if len(args) == 3 else "")
        _match(args, ["mkdir", "--", args[2]], "mkdir (prune_repo's copy)")
        return Allowed("prune_repo mkdir", argv, root=True)
    if args[0] == "cp":
        if len(args) != 7 or _repo(gate, args[5]) != _work(gate, args[6]):
            raise Refused("cp: only prune_repo's copy of a repository to its .prune-new")
        _match(args[:5], ["cp", "-a", "-T", "--reflink=auto", "--"], "cp (prune_repo's copy)")
        return Allowed("prune_repo copy", argv, root=True)
    if args[0] == "mountpoint":
        _match(args, ["mountpoint", "-q", gate.projects_root], "mountpoint")
        return Allowed("mountpoint", argv)
    if args[0] == "cat":
        _match(args, ["cat", "--", gate.port_path], "cat (only the bup_server port file)")
        return Allowed("read port file", argv)
    raise Refused(f"{args[0]!r} is not a command the watchdog runs")


_COMMANDS = {"find": _find, "git": _git, "env": _env, "rsync": _rsync, "sh": _sh, "bup": _bup}


def judge(argv: Sequence[str], gate: Gate) -> tuple[Allowed, tuple[str, ...], bool]:
    """Decide on one argument list: (what it is, the ``timeout`` wrapper, sudo asked).

    Pure: no I/O. Raises Refused with the reason.
    """
    args = list(argv)
    for a in args:
        if any(ord(c) < 32 or ord(c) == 127 for c in a):
            raise Refused("a control character (newline, tab, escape…) in an argument")
        if "\x00" in a:
            raise Refused("a NUL byte in an argument")
    sudo = args[:2] == ["sudo", "-n"]
    if sudo:
        args = args[2:]
    wrapper: tuple[str, ...] = ()
    if args[:1] == ["timeout"]:
        if (
            len(args) < 4
            or not re.fullmatch(r"--kill-after=[0-9]{1,3}(\.[0-9]{1,3})?", args[1])
            or not _NUMBER.fullmatch(args[2])
        ):
            raise Refused("timeout: only 'timeout --kill-after=N SECONDS COMMAND…'")
        wrapper, args = tuple(args[:3]), args[3:]
    if not args:
        raise Refused("empty command")
    if tuple(args) in gate.restart:
        allowed = Allowed("restart_bup_server", tuple(args), root=True)
    elif args[0] in gate.pythons:
        allowed = _python(gate, args)
    elif args[0] in _COMMANDS:
        allowed = _COMMANDS[args[0]](gate, args)
    else:
        allowed = _simple(gate, args)
    return allowed, wrapper, sudo


# -- running it --------------------------------------------------------------------------------


class Log:
    """One line per decision: to a file when given, else syslog (facility auth)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def _syslog(self, level: str, line: str) -> None:
        import syslog

        syslog.openlog("bupwatch-ssh-gate", syslog.LOG_PID, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_WARNING if level == "refused" else syslog.LOG_INFO, line)

    def __call__(self, level: str, text: str) -> None:
        peer = (os.environ.get("SSH_CONNECTION") or "local").split(" ")[0]
        line = f"{level} from {peer} uid {os.getuid()}: {_printable(text)}"
        if not self.path:
            self._syslog(level, line)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, f"{stamp} bupwatch-ssh-gate[{os.getpid()}] {line}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            sys.stderr.write(f"bupwatch-ssh-gate: cannot write the log {self.path}: {exc}\n")


def _printable(text: str, limit: int = 4000) -> str:
    """The text with control characters escaped (no log injection), cut at ``limit``."""
    out = "".join(c if 32 <= ord(c) < 127 or ord(c) > 159 else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + f"… ({len(out)} characters)"


def _read_program(name: str) -> int:
    """Read stdin whole, check its SHA-256 against PROGRAMS[name]; return a memfd holding it."""
    data = b""
    while len(data) <= MAX_PROGRAM:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_PROGRAM:
        raise Refused(f"{name}: the program on stdin is over {MAX_PROGRAM} bytes")
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    if digest != PROGRAMS.get(name):
        raise Refused(
            f"{name}: the program on stdin (sha256 {digest[:16]}…) is not the one this gate "
            "knows (an upgraded watchdog needs the gate of the same release on the hosts)"
        )
    fd = os.memfd_create("bupwatch-program", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


USAGE = """\
usage: bupwatch-ssh-gate [--bup-root DIR] [--projects-root DIR] [--python PATH]...
                         [--restart 'COMMAND ARG...']... [--port-file FILE] [--log FILE]
                         [--archive-root DIR]... [--as-root COMMAND...]

authorized_keys command= for bup-watchdog: runs the command in SSH_ORIGINAL_COMMAND only when it
is one the watchdog sends; refuses (status 126) and logs anything else.

  --bup-root DIR         this host's bup root (default /bup)
  --projects-root DIR    the live project trees (default /projects)
  --python PATH          the Python the watchdog names (ssh.python); repeatable
                         (default: python3 and /usr/bin/python3)
  --restart 'COMMAND'    restart_bup_server's command as its dry run shows it, one shell-quoted
                         string; repeatable (default: 'systemctl restart bup_server')
  --port-file FILE       bup_server's port file (default BUP_ROOT/conf/bup_server.port)
  --log FILE             append decisions to FILE instead of syslog (env BUPWATCH_GATE_LOG)
  --archive-root DIR     an offline archive 'bup-watchdog archive audit HOST:DIR' may read
                         (as the login user, read-only); repeatable (default: none)
  --as-root COMMAND...   for sudo only (deploy/sudoers.bupwatch): judge COMMAND again, as root
"""


class UsageError(Exception):
    """The gate's own options are wrong (the authorized_keys or sudoers line)."""


def parse_options(argv: Sequence[str]) -> tuple[Gate, str | None, list[str], list[str] | None]:
    """(gate, log file, the options as given, the command after ``--as-root`` or None)."""
    as_root: list[str] | None = None
    argv = list(argv)
    if "--as-root" in argv:
        i = argv.index("--as-root")
        argv, as_root = argv[:i], argv[i + 1 :]
    single = {"--bup-root": "/bup", "--projects-root": "/projects", "--port-file": ""}
    single["--log"] = os.environ.get("BUPWATCH_GATE_LOG") or ""
    given: set[str] = set()
    pythons: list[str] = []
    restarts: list[tuple[str, ...]] = []
    archives: list[str] = []
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt in ("-h", "--help"):
            raise UsageError("")
        if opt not in single and opt not in ("--python", "--restart", "--archive-root"):
            raise UsageError(f"unknown option {opt!r}")
        if i + 1 >= len(argv):
            raise UsageError(f"{opt} needs a value")
        value = argv[i + 1]
        if opt == "--python":
            pythons.append(value)
        elif opt == "--archive-root":
            if not value.startswith("/") or "/../" in value + "/" or value.rstrip("/") == "":
                raise UsageError(f"--archive-root {value!r}: give an absolute directory")
            archives.append(value)
        elif opt == "--restart":
            try:
                restarts.append(tuple(shlex.split(value)))
            except ValueError as exc:
                raise UsageError(f"--restart {value!r}: {exc}") from None
        elif opt in given:
            raise UsageError(f"{opt} given twice")
        else:
            given.add(opt)
            single[opt] = value
        i += 2
    gate = Gate(
        bup_root=single["--bup-root"],
        projects_root=single["--projects-root"],
        pythons=tuple(pythons) or DEFAULT_PYTHONS,
        restart=tuple(restarts) or DEFAULT_RESTART,
        port_file=single["--port-file"],
        archive_roots=tuple(archives),
    )
    return gate, single["--log"] or None, argv, as_root


def main(argv: Sequence[str] | None = None) -> int:
    """Judge SSH_ORIGINAL_COMMAND (or the command after ``--as-root``) and exec it, or refuse."""
    try:
        gate, log_path, options, as_root = parse_options(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        if not str(exc):
            sys.stdout.write(USAGE)
            return 0
        sys.stderr.write(f"bupwatch-ssh-gate: {exc}\n{USAGE}")
        return 2
    log = Log(log_path)
    if as_root is not None:
        command, args = shlex.join(as_root), as_root
    else:
        command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
        args = []
    try:
        if as_root is not None and os.geteuid() != 0:
            raise Refused("--as-root is for sudo: run as root only")
        if as_root is None and "SUDO_COMMAND" in os.environ:
            raise Refused("started through sudo without --as-root COMMAND")
        if as_root is None:
            if not command.strip():
                raise Refused("no command: interactive logins are not allowed for this key")
            if len(command) > MAX_COMMAND:
                raise Refused(f"the command is over {MAX_COMMAND} characters")
            try:
                args = shlex.split(command)
            except ValueError as exc:
                raise Refused(f"the command does not split into words ({exc})") from None
        allowed, wrapper, sudo = judge(args, gate)
        root = os.geteuid() == 0
        if as_root is not None and sudo:
            raise Refused("--as-root: the command still asks for sudo")
        if sudo and not allowed.root:
            sudo = False  # read-only programs run as the login user, never through sudo
        program_fd = _read_program(allowed.program) if allowed.program else None
        run = [*wrapper, *allowed.argv]
        escalate = not root and (sudo or allowed.peer)
        if escalate:
            gate_path = os.path.abspath(sys.argv[0])
            # the same options, word for word: the sudoers rule is the command= line + --as-root *
            run = ["sudo", "-n", gate_path, *options, "--as-root", *run]
    except Refused as exc:
        log("refused", f"{exc}; command: {command}")
        sys.stderr.write(f"bupwatch-ssh-gate: refused: {exc}\n")
        return REFUSED_STATUS
    log("allowed", f"{allowed.kind}{' via sudo' if escalate else ''}: {command}")
    if program_fd is not None:
        os.dup2(program_fd, 0)
        os.close(program_fd)
    try:
        os.execvp(run[0], run)  # noqa: S606 - an argument list, no shell: the point of the gate
    except OSError as exc:
        log("failed", f"cannot run {run[0]}: {exc.strerror}")
        sys.stderr.write(f"bupwatch-ssh-gate: cannot run {run[0]}: {exc.strerror}\n")
        return 127
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
