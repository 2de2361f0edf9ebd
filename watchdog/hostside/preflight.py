#!/usr/bin/env python3
"""bupwatch-preflight, the boot gate: exit 1 with one line unless /projects and /bup/bups are sane.

A host that boots before its ZFS pool is imported serves (and is rsync'd into) an empty
``/projects`` on the root disk. systemd runs this as ``ExecStartPre=`` of bup_server and of the VPN
unit (drop-ins in ``deploy/``), so neither starts until both paths are their own writable mounts of
the expected filesystem type and source. Stdlib only, one file, importing nothing of ours: install
it as ``/usr/local/sbin/bupwatch-preflight``. The rules (``mount_problems``) are also what the
watchdog's ``mount_sanity`` check imports, so the gate and the check judge alike; the
``restart_bup_server`` repair sends this file to ``python3 -S -`` on the host before a restart.
Exit status: 0 sane (one "ok" line on stdout), 1 refused (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

PROG = "bupwatch-preflight"
MOUNTINFO = "/proc/self/mountinfo"


# --------------------------------------------------------------------------------------------
# The rules: one source of truth for what a sane mount is (checks/mount_sanity.py imports them)
# --------------------------------------------------------------------------------------------


def mount_problems(
    path: str,
    *,
    exists: bool,
    is_mount_point: bool,
    mount_point: str | None,
    source: str | None,
    fstype: str | None,
    writable: bool | None,
    fstypes: Sequence[str],
    source_pattern: str,
) -> list[tuple[str, str]]:
    """The (code, message) problems of one path's mount; empty when it is sane.

    ``mount_point``/``source``/``fstype`` describe the mount the path lies on; ``writable`` None
    means unknown. An empty ``fstypes`` or ``source_pattern`` (a glob) accepts anything.
    """
    if not exists:
        return [("missing", f"{path} does not exist")]
    if not is_mount_point:
        return [
            (
                "not_mounted",
                f"{path} is not mounted: it lies on {mount_point or '?'} ({source or '?'}, "
                f"{fstype or '?'}), so anything written there lands on that disk and "
                "replication from this host could copy an empty tree over real data",
            )
        ]
    problems = []
    if fstypes and fstype not in fstypes:
        problems.append(("wrong_fstype", f"{path} is {fstype}, expected {' or '.join(fstypes)}"))
    if source_pattern and not fnmatch.fnmatchcase(source or "", source_pattern):
        problems.append(
            ("wrong_source", f"{path} is mounted from {source}, expected {source_pattern}")
        )
    if writable is False:
        problems.append(("read_only", f"{path} is mounted read-only"))
    return problems


# --------------------------------------------------------------------------------------------
# The facts, read on this host (the watchdog's probe reads the same table the same way)
# --------------------------------------------------------------------------------------------

_OCTAL_RE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    return os.fsdecode(_OCTAL_RE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


def parse_mountinfo(data: bytes) -> list[dict[str, Any]]:
    """mount_point, fstype, source and options of each line of a mountinfo table, in order."""
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        options = _unescape(fields[5]).split(",")
        if len(fields) > sep + 3:
            options += _unescape(fields[sep + 3]).split(",")
        mounts.append(
            {
                "mount_point": _unescape(fields[4]),
                "fstype": _unescape(fields[sep + 1]),
                "source": _unescape(fields[sep + 2]),
                "options": options,
            }
        )
    return mounts


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point + "/")


def mount_facts(path: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``mount_problems`` needs to know of path, from the table and the path itself."""
    real = os.path.realpath(path)
    best: dict[str, Any] | None = None
    is_mount_point = False
    for m in mounts:
        if m["mount_point"] == real:
            is_mount_point = True
        # Later lines are mounted on top of earlier ones at the same point: ">=" keeps the last.
        if _contains(m["mount_point"], real) and (
            best is None or len(m["mount_point"]) >= len(best["mount_point"])
        ):
            best = m
    if best is None:
        best = {"mount_point": None, "source": None, "fstype": None, "options": []}
    writable = "ro" not in best["options"]
    try:
        # ST_RDONLY also covers a filesystem the kernel turned read-only after an error.
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            writable = False
    except OSError:
        pass
    return {
        "exists": os.path.exists(path),
        "is_mount_point": is_mount_point,
        "mount_point": best["mount_point"],
        "source": best["source"],
        "fstype": best["fstype"],
        "writable": writable,
    }


# --------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------


def _types(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Exit 1 with one line unless the projects and bups paths are their own "
        "writable mounts of the expected filesystem type and source (the boot gate for "
        "ExecStartPre= of bup_server and the VPN). Exit 0 prints one 'ok' line.",
    )
    p.add_argument("--projects", default="/projects", help="live project trees (/projects)")
    p.add_argument("--bups", default="/bup/bups", help="bup repositories (/bup/bups)")
    p.add_argument(
        "--fstype",
        default="zfs",
        help="filesystem types both must have, comma-separated; '' accepts any (zfs)",
    )
    p.add_argument("--projects-fstype", help="types for --projects only (default --fstype)")
    p.add_argument("--bups-fstype", help="types for --bups only (default --fstype)")
    p.add_argument(
        "--projects-source",
        default="bup/projects",
        help="mount source of --projects, a glob; '' accepts any (bup/projects)",
    )
    p.add_argument(
        "--bups-source",
        default="bup/bups",
        help="mount source of --bups, a glob; '' accepts any (bup/bups)",
    )
    return p


def judge(args: argparse.Namespace, mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """Every problem of both paths, as ``mount_problems`` states them."""
    try:
        with open(mountinfo, "rb") as f:
            mounts = parse_mountinfo(f.read())
    except OSError as exc:
        return [("no_mount_table", f"cannot read {mountinfo}: {exc.strerror}")]
    wanted = (
        (args.projects, args.projects_fstype, args.projects_source),
        (args.bups, args.bups_fstype, args.bups_source),
    )
    problems = []
    for path, fstypes, source in wanted:
        types = _types(args.fstype if fstypes is None else fstypes)
        problems += mount_problems(
            path, **mount_facts(path, mounts), fstypes=types, source_pattern=source
        )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problems = judge(args)
    if problems:
        print(f"{PROG}: refusing: {'; '.join(m for _c, m in problems)}", file=sys.stderr)
        return 1
    print(f"{PROG}: ok: {args.projects} and {args.bups} are writable mounts as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
