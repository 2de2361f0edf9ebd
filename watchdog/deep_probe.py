"""Deep integrity checks on a storage host: ``git fsck --connectivity-only`` + ``bup ls master``.

Stdlib-only, like ``probe.py``: sent to ``python3 -S -`` over the host's SSH connection with the
project ids on the command line, it checks each repository and prints one JSON line per repository,
then a ``done`` line. ``git fsck --connectivity-only`` is the one usual tool that caught every
corruption measured in FACTS.md (deleted packs, bad refs, damaged indexes); ``bup ls master`` proves
bup itself can still read the newest save. Imports nothing from the watchdog.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SHA = re.compile(r"^[0-9a-f]{40}$")
TAIL = 300


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[-TAIL:]


MAX_PACKED_REFS = 16 << 20  # as probe.py's cap


def _master_sha(repo: str) -> str | None:
    """master as the cheap probe reads it: the loose ref, else its ``packed-refs`` line (after
    ``git gc`` or ``git pack-refs`` there is no loose one). None when neither holds a sha."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(repo, "refs", "heads", "master"), flags)
    except FileNotFoundError:
        return _packed_master(repo, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        sha = f.read(100).decode("ascii", "replace").strip()
    return sha if SHA.fullmatch(sha) else None


def _packed_master(repo: str, flags: int) -> str | None:
    try:
        with os.fdopen(os.open(os.path.join(repo, "packed-refs"), flags), "rb") as f:
            packed = f.read(MAX_PACKED_REFS)
    except OSError:
        return None
    for line in packed.split(b"\n"):
        sha, _, name = line.strip().partition(b" ")
        if name == b"refs/heads/master":
            text = sha.decode("ascii", "replace")
            return text if SHA.fullmatch(text) else None
    return None


def _run(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"{argv[0]} did not finish within {timeout:g} s"
    except OSError as exc:
        return -2, f"cannot run {argv[0]}: {exc.strerror}"
    return proc.returncode, _tail(proc.stderr) if proc.returncode else ""


def check_repo(bups: str, project_id: str, timeout: float) -> dict[str, Any]:
    """Deep-check one repository; never raises."""
    started = time.monotonic()
    rec: dict[str, Any] = {
        "type": "deep",
        "project_id": project_id,
        "ok": False,
        "master_sha": None,
        "fsck_rc": None,
        "bup_rc": None,
        "message": None,
    }
    repo = os.path.join(bups, project_id)
    if not UUID4.fullmatch(project_id):
        rec["message"] = "not a version-4 UUID; not checked"
    elif os.path.islink(repo) or not os.path.isdir(repo):
        rec["message"] = "repository directory is missing or a symlink; not checked"
    else:
        rec["master_sha"] = _master_sha(repo)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            "LC_ALL": "C",
        }
        fsck_rc, fsck_msg = _run(
            ["git", f"--git-dir={repo}", "fsck", "--connectivity-only", "--no-progress"],
            env,
            timeout,
        )
        bup_rc, bup_msg = _run(["bup", "-d", repo, "ls", "master"], env, timeout)
        rec["fsck_rc"], rec["bup_rc"] = fsck_rc, bup_rc
        problems = []
        if fsck_rc != 0:
            problems.append(f"git fsck --connectivity-only failed ({fsck_rc}): {fsck_msg}")
        if bup_rc != 0:
            problems.append(f"bup ls master failed ({bup_rc}): {bup_msg}")
        rec["ok"] = not problems
        rec["message"] = "; ".join(problems) or None
    rec["seconds"] = round(time.monotonic() - started, 4)
    return rec


def iter_records(bup_root: str, ids: list[str], timeout: float) -> Iterator[dict[str, Any]]:
    started = time.monotonic()
    bups = os.path.join(bup_root, "bups")
    for pid in ids:
        yield check_repo(bups, pid.lower(), timeout)
    yield {
        "type": "done",
        "repos": len(ids),
        "elapsed_seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Deep-check bup repositories on this host.")
    ap.add_argument("--bup-root", default="/bup")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per command")
    ap.add_argument("project_ids", nargs="*")
    args = ap.parse_args(argv)
    out = sys.stdout
    try:
        for rec in iter_records(args.bup_root, args.project_ids, args.timeout):
            out.write(json.dumps(rec, sort_keys=True) + "\n")
            out.flush()
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
