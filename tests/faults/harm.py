"""Measuring data loss: every file at stake hashed before and after a fault, bytes counted.

``Snapshot.of(roots)`` records size and SHA-256 of every regular file (symlinks by their target,
never followed). ``loss(before, after)`` counts the bytes of the files that were there before and
are now missing or different: that is data lost, whatever the fault or the repair did.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMALL = 64 * 1024  # files up to this size are kept whole: an append-only log may only grow


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Files under some roots: path -> (size, digest), and the bytes of the small ones."""

    files: dict[str, tuple[int, str]]
    small: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, roots: dict[str, Path], *, skip: Iterable[str] = ()) -> Snapshot:
        """Hash every file under each named root (``skip``: relative paths left out, e.g. a
        ref a successful repair is meant to move)."""
        skipped = set(skip)
        files: dict[str, tuple[int, str]] = {}
        small: dict[str, bytes] = {}
        for name, root in roots.items():
            if not root.exists():
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for fname in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                    p = Path(dirpath, fname)
                    rel = f"{name}:{p.relative_to(root)}"
                    if rel in skipped:
                        continue
                    if p.is_symlink():
                        files[rel] = (0, "symlink:" + os.readlink(p))
                    elif p.is_file():
                        h = hashlib.sha256()
                        with p.open("rb") as f:
                            for chunk in iter(lambda: f.read(1 << 20), b""):
                                h.update(chunk)
                                if len(chunk) <= SMALL and f.tell() <= SMALL:
                                    small[rel] = small.get(rel, b"") + chunk
                        files[rel] = (p.stat().st_size, h.hexdigest())
        return cls(files, small)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


@dataclass(frozen=True, slots=True)
class Loss:
    """What a comparison found: bytes lost, and how much was compared."""

    bytes_lost: int
    files_compared: int
    bytes_compared: int
    lost: tuple[str, ...] = field(default=())
    where: str = ""

    def describe(self) -> str:
        where = f" of {self.where}" if self.where else ""
        return f"{self.files_compared} files, {self.bytes_compared} bytes{where} compared"

    def __add__(self, other: Loss) -> Loss:
        return Loss(
            self.bytes_lost + other.bytes_lost,
            self.files_compared + other.files_compared,
            self.bytes_compared + other.bytes_compared,
            self.lost + other.lost,
            ", ".join(w for w in (self.where, other.where) if w),
        )


def loss(
    before: Snapshot, after: Snapshot, where: str = "", *, moved: frozenset[str] = frozenset()
) -> Loss:
    """Files present before and missing or changed after, with their bytes.

    Not a loss: a small file that only grew at its end (a reflog), and the paths in ``moved``
    (a ref a repair fast-forwarded; the caller proves the old commit is an ancestor)."""

    def kept(path: str, digest: str) -> bool:
        if path in moved or after.files.get(path, (None, None))[1] == digest:
            return True
        old, new = before.small.get(path), after.small.get(path)
        return old is not None and new is not None and new.startswith(old)

    lost = sorted(path for path, (_, digest) in before.files.items() if not kept(path, digest))
    return Loss(
        sum(before.files[p][0] for p in lost),
        len(before.files),
        before.bytes,
        tuple(lost),
        where,
    )


def state_loss(path: Path, before: dict[str, int]) -> Loss:
    """The state database after a fault: it must pass SQLite's integrity check and still hold
    every row it held before (counts per table may only grow). ``before`` from ``state_rows``."""
    after = state_rows(path)
    db = _connect(path)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    size = path.stat().st_size
    shrunk = tuple(f"state:{t}" for t, n in before.items() if after.get(t, 0) < n)
    lost = size if (not ok or shrunk) else 0
    return Loss(lost, 1, size, shrunk if ok else ("state: integrity_check failed",), "state db")


# Rows that are meant to go away: a lease is deleted when its repair ends.
EPHEMERAL_TABLES = frozenset({"leases", "sqlite_sequence"})


def state_rows(path: Path) -> dict[str, int]:
    """Rows per table of the state database (read-only), leases aside."""
    db = _connect(path)
    try:
        tables = [
            t
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if t not in EPHEMERAL_TABLES
        ]
        return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
    finally:
        db.close()


def state_query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read from the state file as it is on disk (not a daemon's memory)."""
    db = _connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that only reads. Not ``mode=ro``: in WAL mode that needs the -shm file
    writable by us, which it is not through another process's root (``/proc/PID/root``).

    Through ``/proc/PID/root`` it reads a copy of the file and its -wal (SQLite would rebuild the
    index from the -wal): SQLite resolves symbolic links in a database path, and that magic link
    reads as "/", so it would silently open (and create) the file of *this* mount namespace."""
    if not path.exists():
        raise FileNotFoundError(path)
    if path.parts[:2] == ("/", "proc") and len(path.parts) > 3 and path.parts[3] == "root":
        copy = Path(tempfile.mkdtemp(prefix="bupwatch-state-copy-")) / path.name
        atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
        for suffix in ("", "-wal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                shutil.copyfile(source, copy.with_name(copy.name + suffix))
        path = copy
    return sqlite3.connect(path)
