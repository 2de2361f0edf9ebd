"""What incremental sweeps remember per host: each repository's last fully walked facts with the
fingerprint that vouches for them, and each live directory's last record with its digest.

Held for as long as the daemon runs, for every repository of the fleet, so a host's entries are
kept in columns over its known project ids (sorted: the order of the probe's bitmaps) rather
than as an object per entry: fingerprints and digests packed as bytes, times in float arrays,
facts in tuples. At 200,000 repositories that is ~40 bytes per repository and directory instead
of ~150 (an entry object, its hex text, a dict slot). ``CachedRepo`` and ``CachedDir`` are the
entries as values, made on demand (tests, and a skipped owner sample's lookup).
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import re
import threading
import time
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bup_watchdog.live_dirs import ProjectDirFacts
from bup_watchdog.model import RepoFacts
from bup_watchdog.probe import DIGEST_HEX, FP_HEX

# Unchanged repositories are walked again after at most this long (spread over the second half).
DEFAULT_MAX_AGE = 6 * 3600.0

_HEX = re.compile(r"[0-9a-f]+")


class CachedRepo(NamedTuple):
    """A repository's facts from its last full walk, and the fingerprint that vouches for them."""

    fingerprint: str
    facts: RepoFacts
    walked_at: float


class CachedDir(NamedTuple):
    """A project directory's last facts and the digest of the record they were read from.

    ``skipped``: that record had no owner sample (the host's budget ran out before it); the facts
    are then the directory's last sampled ones, if its top was the same.
    """

    digest: str
    facts: ProjectDirFacts
    skipped: bool = False
    #: When the owner sample in ``facts`` was taken (a kept sample is not kept past max_age).
    sampled_at: float = 0.0


class _Hex:
    """Fixed-width lowercase hex text packed into bytes (a leading zero nibble if odd)."""

    def __init__(self, width: int) -> None:
        self.width, self.size, self.odd = width, (width + 1) // 2, width % 2
        self.blank = bytes(self.size)

    def pack(self, text: object) -> bytes | None:
        """The packed text; None when it is not hex of this width (the probe makes no other:
        anything else would only be walked again, or corrupt the known state sent next time)."""
        if not isinstance(text, str) or len(text) != self.width or not _HEX.fullmatch(text):
            return None
        return bytes.fromhex("0" * self.odd + text)

    def at(self, column: bytes, i: int) -> str:
        """The text at position ``i``."""
        return column[i * self.size : (i + 1) * self.size].hex()[self.odd :]

    def get(self, column: bytes, i: int) -> bytes:
        """The packed value at position ``i``."""
        return column[i * self.size : (i + 1) * self.size]

    def put(self, column: bytearray, i: int, packed: bytes) -> None:
        column[i * self.size : (i + 1) * self.size] = packed

    def picks(self, column: bytes, flags: Iterable[bool]) -> list[bytes]:
        """The packed values at the flagged positions."""
        n = self.size
        return [column[i * n : i * n + n] for i in itertools.compress(itertools.count(), flags)]


FINGERPRINT = _Hex(FP_HEX)
DIGEST = _Hex(DIGEST_HEX)


@dataclass(frozen=True, slots=True)
class HostCache:
    """One host's entries, never changed in place (a gather reads them while another is made).

    Columns over ``ids`` (sorted; each has a repository entry, a directory entry or both): a
    repository entry is ``repo_facts[i]`` (None: none) with its packed fingerprint and walk time;
    a directory entry is ``dir_facts[i]`` with its packed digest, sample time and skipped flag.
    Build one from entries with ``HostCache.of``; a gather builds one with ``CacheBuilder``.
    """

    ids: tuple[str, ...] = ()
    repo_facts: tuple[RepoFacts | None, ...] = ()
    fingerprints: bytes = b""
    walked_at: array[float] = field(default_factory=lambda: array("d"))
    dir_facts: tuple[ProjectDirFacts | None, ...] = ()
    digests: bytes = b""
    sampled_at: array[float] = field(default_factory=lambda: array("d"))
    skipped: bytes = b""

    @classmethod
    def of(
        cls,
        repos: Mapping[str, CachedRepo] | None = None,
        dirs: Mapping[str, CachedDir] | None = None,
    ) -> HostCache:
        """A host's entries from CachedRepo and CachedDir values (one with a fingerprint or digest
        of another form is left out: it could not be sent to the probe)."""
        b = CacheBuilder()
        for pid, r in (repos or {}).items():
            b.walked_repo(pid, r.facts, r.fingerprint, r.walked_at)
        for pid, d in (dirs or {}).items():
            b.walked_dir(pid, d.facts, d.digest, d.skipped, d.sampled_at)
        return b.build()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def repos(self) -> dict[str, CachedRepo]:
        """The repository entries by project id, as values (made on each call: for tests and
        inspection; gathers read the columns)."""
        return {
            pid: CachedRepo(FINGERPRINT.at(self.fingerprints, i), facts, self.walked_at[i])
            for i, (pid, facts) in enumerate(zip(self.ids, self.repo_facts, strict=True))
            if facts is not None
        }

    @property
    def dirs(self) -> dict[str, CachedDir]:
        """The directory entries by project id, as values (made on each call, as ``repos``)."""
        return {
            pid: self._dir(i) for i, pid in enumerate(self.ids) if self.dir_facts[i] is not None
        }

    def _dir(self, i: int) -> CachedDir:
        facts = self.dir_facts[i]
        assert facts is not None
        return CachedDir(
            DIGEST.at(self.digests, i), facts, bool(self.skipped[i]), self.sampled_at[i]
        )

    def dir_entry(self, project_id: str) -> CachedDir | None:
        """A project's directory entry, if any (binary search: ids are sorted)."""
        i = bisect.bisect_left(self.ids, project_id)
        if i == len(self.ids) or self.ids[i] != project_id or self.dir_facts[i] is None:
            return None
        return self._dir(i)

    def skipped_dirs(self) -> list[str]:
        """The projects whose last record had no owner sample, in order."""
        return list(itertools.compress(self.ids, self.skipped))

    def oldest_walk(self, default: float) -> float:
        """When the oldest repository entry was walked (``default`` if there is none)."""
        oldest = min(self.walked_at, default=math.inf)
        return default if oldest == math.inf else oldest

    def keeping(self, keep: list[bool]) -> HostCache:
        """Only the ids flagged (one flag per id), all their entries."""
        if all(keep):
            return self
        at = list(itertools.compress(range(len(self.ids)), keep))
        return HostCache(
            tuple(itertools.compress(self.ids, keep)),
            tuple(itertools.compress(self.repo_facts, keep)),
            b"".join(FINGERPRINT.picks(self.fingerprints, keep)),
            array("d", map(self.walked_at.__getitem__, at)),
            tuple(itertools.compress(self.dir_facts, keep)),
            b"".join(DIGEST.picks(self.digests, keep)),
            array("d", map(self.sampled_at.__getitem__, at)),
            bytes(itertools.compress(self.skipped, keep)),
        )


class CacheBuilder:
    """A host's next entries, made while its probe's output is read.

    ``previous``: the host's entries; ``told_repos`` flags (one per id) the repositories whose
    fingerprints the probe is told (None: every one; a repository due for a full walk is not
    told); ``with_dirs``: whether it is told the directories' digests (a gather without the live
    directories keeps all their entries as they are). The probe's bitmaps are over the ids it
    was told something of (``known_ids``). The builder receives the walked entries (each with its
    fingerprint or digest) and the probe's bitmaps of those unchanged, and ``build`` makes the
    columns once the host's output is complete: in the steady state (no new project) by copying
    the previous columns and patching what was walked, without an object or a dict per entry.
    """

    def __init__(
        self,
        previous: HostCache | None = None,
        told_repos: list[bool] | None = None,
        with_dirs: bool = True,
    ) -> None:
        p = self.previous = previous if previous is not None else HostCache()
        has_repo = [f is not None for f in p.repo_facts]
        self._told = (
            has_repo if told_repos is None else list(map(operator.and_, has_repo, told_repos))
        )
        self.with_dirs = with_dirs
        told_dirs = [d is not None for d in p.dir_facts] if with_dirs else [False] * len(p.ids)
        self._told_dirs = told_dirs
        #: Positions (in ``previous``) of the ids the probe is told of, in the bitmaps' order.
        self.positions = list(
            itertools.compress(range(len(p.ids)), map(operator.or_, self._told, told_dirs))
        )
        #: Positions (in ``previous``) of the entries the probe reported unchanged.
        self._reused_repos: list[int] = []
        self._reused_dirs: list[int] = []
        # The walked entries, column by column (no object per entry).
        self._facts: dict[str, RepoFacts] = {}
        self._fps: dict[str, bytes] = {}
        self._walked: dict[str, float] = {}
        self._dfacts: dict[str, ProjectDirFacts] = {}
        self._digests: dict[str, bytes] = {}
        self._sampled: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    @property
    def told_repos(self) -> int:
        """How many repository fingerprints the probe is told."""
        return sum(self._told)

    def known_ids(self) -> list[str]:
        """The ids the probe is told of, in the bitmaps' order (sorted)."""
        return list(map(self.previous.ids.__getitem__, self.positions))

    def known_state(self) -> Iterator[str]:
        """The probe's known state, a line per id told of (see ``probe.KNOWN_STATE``)."""
        p, fp, dg = self.previous, FINGERPRINT, DIGEST
        for i in self.positions:
            r = fp.at(p.fingerprints, i) if self._told[i] else "-"
            d = dg.at(p.digests, i) if self._told_dirs[i] else "-"
            yield f"{p.ids[i]} {r} {d}\n"

    def unchanged(
        self, repos: list[bool], dirs: list[bool]
    ) -> tuple[list[str], list[RepoFacts | None], list[str], list[ProjectDirFacts | None]]:
        """Take the probe's bitmaps (one flag per known id): the ids reported unchanged and their
        kept facts, repositories then directories (None where nothing was told: refuse it)."""
        p, at = self.previous, self.positions
        r_at = list(itertools.compress(at, repos))
        d_at = list(itertools.compress(at, dirs))
        told, told_dirs = self._told, self._told_dirs
        self._reused_repos, self._reused_dirs = r_at, d_at
        return (
            list(map(p.ids.__getitem__, r_at)),
            [p.repo_facts[i] if told[i] else None for i in r_at],
            list(map(p.ids.__getitem__, d_at)),
            [p.dir_facts[i] if told_dirs[i] else None for i in d_at],
        )

    def walked_repo(self, pid: str, facts: RepoFacts, fingerprint: object, at: float) -> None:
        packed = FINGERPRINT.pack(fingerprint)
        if packed is not None:
            self._facts[pid], self._fps[pid], self._walked[pid] = facts, packed, at

    def walked_dir(
        self, pid: str, facts: ProjectDirFacts, digest: object, skipped: bool, sampled_at: float
    ) -> None:
        packed = DIGEST.pack(digest)
        if packed is not None:
            self._dfacts[pid], self._digests[pid] = facts, packed
            self._sampled[pid], self._skipped[pid] = sampled_at, int(skipped)

    def build(self) -> HostCache:
        """The host's next entries: those reported unchanged, the walked ones (over them), and
        without the live directories every directory entry as it was."""
        p = self.previous
        at = {
            pid: bisect.bisect_left(p.ids, pid) for pid in self._facts.keys() | self._dfacts.keys()
        }
        if not p.ids or any(i == len(p.ids) or p.ids[i] != pid for pid, i in at.items()):
            return self._build_by_id()
        return self._patch(at)

    def _patch(self, at: dict[str, int]) -> HostCache:
        """The previous columns with the walked entries patched in (every walked id is known)."""
        p, n = self.previous, len(self.previous.ids)
        keep = bytearray(n)
        for i in self._reused_repos:
            keep[i] = 1
        facts, fps, walked = list(p.repo_facts), bytearray(p.fingerprints), array("d", p.walked_at)
        for pid, f in self._facts.items():
            i = at[pid]
            keep[i] = 1
            facts[i], walked[i] = f, self._walked[pid]
            FINGERPRINT.put(fps, i, self._fps[pid])
        for i in itertools.compress(range(n), map(operator.not_, keep)):
            facts[i], walked[i] = None, math.inf
        if self.with_dirs:
            dirs = self._patched_dirs(at)
        else:  # not told, not reported: kept as they are
            dirs = (p.dir_facts, p.digests, p.sampled_at, p.skipped)
        entry = HostCache(p.ids, tuple(facts), bytes(fps), walked, *dirs)
        # An id left with neither entry (its repository gone, no live directory) is dropped.
        return entry.keeping(
            [
                r is not None or d is not None
                for r, d in zip(entry.repo_facts, entry.dir_facts, strict=True)
            ]
        )

    def _patched_dirs(
        self, at: dict[str, int]
    ) -> tuple[tuple[ProjectDirFacts | None, ...], bytes, array[float], bytes]:
        """The previous directory columns with the walked entries patched in."""
        p, n = self.previous, len(self.previous.ids)
        keep = bytearray(n)
        for i in self._reused_dirs:
            keep[i] = 1
        facts, digests = list(p.dir_facts), bytearray(p.digests)
        sampled, skipped = array("d", p.sampled_at), bytearray(p.skipped)
        for pid, d in self._dfacts.items():
            i = at[pid]
            keep[i] = 1
            facts[i], sampled[i], skipped[i] = d, self._sampled[pid], self._skipped[pid]
            DIGEST.put(digests, i, self._digests[pid])
        for i in itertools.compress(range(n), map(operator.not_, keep)):
            facts[i], sampled[i], skipped[i] = None, 0.0, 0
        return tuple(facts), bytes(digests), sampled, bytes(skipped)

    def _build_by_id(self) -> HostCache:
        """The columns made anew by project id (a first gather, or new projects on the host)."""
        p, rf = self.previous, self._reused_repos
        ids = list(map(p.ids.__getitem__, rf))
        facts = _over(self._facts, ids, map(p.repo_facts.__getitem__, rf))
        fps = _over(self._fps, ids, [FINGERPRINT.get(p.fingerprints, i) for i in rf])
        walked = _over(self._walked, ids, (p.walked_at[i] for i in rf))
        d_at = (
            self._reused_dirs
            if self.with_dirs
            else [i for i, d in enumerate(p.dir_facts) if d is not None]
        )
        ids = list(map(p.ids.__getitem__, d_at))
        dfacts = _over(self._dfacts, ids, map(p.dir_facts.__getitem__, d_at))
        digests = _over(self._digests, ids, [DIGEST.get(p.digests, i) for i in d_at])
        sampled = _over(self._sampled, ids, (p.sampled_at[i] for i in d_at))
        skipped = _over(self._skipped, ids, map(p.skipped.__getitem__, d_at))
        every = tuple(sorted(facts.keys() | dfacts.keys()))
        none = itertools.repeat
        return HostCache(
            every,
            tuple(map(facts.get, every)),
            b"".join(map(fps.get, every, none(FINGERPRINT.blank))),
            array("d", map(walked.get, every, none(math.inf))),
            tuple(map(dfacts.get, every)),
            b"".join(map(digests.get, every, none(DIGEST.blank))),
            array("d", map(sampled.get, every, none(0.0))),
            bytes(map(skipped.get, every, none(0))),
        )


def _over(walked: dict[str, Any], ids: list[str], kept: Iterable[Any]) -> dict[str, Any]:
    """Kept values by id with the walked ones over them (``walked`` itself when none is kept)."""
    if not ids:
        return walked
    out = dict(zip(ids, kept, strict=True))
    out.update(walked)
    return out


class RepoCache:
    """Every host's HostCache, for the sweeps that come after. A stored HostCache is never
    changed in place (it is replaced whole), so gathers read its columns without copying them.

    Kept in memory by whoever runs sweeps repeatedly (the daemon's runner); safe to share between
    the gather's threads (each host's entry is replaced whole). ``max_age``: a repository is walked
    in full again after at most this long, even when its fingerprint did not change; each one's
    own limit lies between half and all of it (from its id), so the full walks spread over time.
    Project directories have no age: their owners are sampled at every sweep and only an identical
    record is reused.
    """

    def __init__(self, max_age: float = DEFAULT_MAX_AGE, racy_seconds: float | None = None) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        if racy_seconds is not None and racy_seconds < 0:
            raise ValueError("racy_seconds must not be negative")
        self.max_age = max_age
        #: The probe's racy window (None: the probe's default, 2 s); tests make it short.
        self.racy_seconds = racy_seconds
        self._hosts: dict[str, HostCache] = {}
        self._sample_from: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Per host, from its last successful gather: repositories walked, and reused.
        self.last_counts: dict[str, tuple[int, int]] = {}

    def _limit(self, project_id: str) -> float:
        return self.max_age * (0.5 + 0.5 * int(project_id[:8], 16) / 0xFFFFFFFF)

    def entry(self, server_id: str) -> HostCache:
        """A host's stored entries (empty if none)."""
        with self._lock:
            return self._hosts.get(server_id) or HostCache()

    def builder(
        self, server_id: str, with_dirs: bool = True, now: float | None = None
    ) -> CacheBuilder:
        """A builder of the host's next entries over its stored ones, telling the probe of every
        repository not due for a full walk (and, ``with_dirs``, of every live directory)."""
        now = time.time() if now is None else now
        entry = self.entry(server_id)
        told = None
        # Entries come from few gathers: when none is older than the shortest limit, none is due.
        if now - entry.oldest_walk(now) >= 0.5 * self.max_age:
            told = [
                now - at < self._limit(pid)
                for pid, at in zip(entry.ids, entry.walked_at, strict=True)
            ]
        return CacheBuilder(entry, told, with_dirs)

    def replace(self, server_id: str, entry: HostCache, walked: int, reused: int) -> None:
        """A host's new entries after a complete gather (repositories gone are dropped).

        The host's next owner sample starts at the first project whose sample was skipped, in
        the order of this one (sorted ids from where it started, wrapping around).
        """
        skipped = entry.skipped_dirs()
        with self._lock:
            start = self._sample_from.get(server_id, "")
            self._hosts[server_id] = entry
            self.last_counts[server_id] = (walked, reused)
            self._sample_from[server_id] = next(
                (pid for pid in skipped if pid >= start), skipped[0] if skipped else ""
            )

    def sample_start(self, server_id: str) -> str:
        """Where the host's next owner sample starts ("" = the first project)."""
        with self._lock:
            return self._sample_from.get(server_id, "")

    def forget(self, server_id: str | None = None) -> None:
        """Drop one host's entries (or all): its next gather walks every repository."""
        with self._lock:
            if server_id is None:
                self._hosts.clear()
                self.last_counts.clear()
                self._sample_from.clear()
            else:
                self._hosts.pop(server_id, None)
                self.last_counts.pop(server_id, None)
                self._sample_from.pop(server_id, None)

    def retain(self, server_ids: Collection[str]) -> None:
        """Drop the entries of every host not in ``server_ids`` (gone from the inventory, or now
        swept by another watchdog): they would only take memory, and be old if the host came back
        (still correct: fingerprints vouch for every reuse, but walked again soon anyway)."""
        keep = set(server_ids)
        with self._lock:
            for sid in [sid for sid in self._hosts if sid not in keep]:
                del self._hosts[sid]
                self.last_counts.pop(sid, None)
                self._sample_from.pop(sid, None)

    def forget_project(self, server_id: str, project_id: str) -> None:
        """Drop one project's entries on one host (after a repair changed it): its repository is
        walked and its live directory's record taken afresh at the next sweep, and no sample from
        before the repair is kept for it."""
        with self._lock:
            entry = self._hosts.get(server_id)
            if entry is not None:  # a new entry: a gather may be reading the stored one
                self._hosts[server_id] = entry.keeping([pid != project_id for pid in entry.ids])

    def totals(self) -> tuple[int, int]:
        """(walked, reused) repositories over every host's last gather."""
        with self._lock:
            counts = list(self.last_counts.values())
        return sum(w for w, _ in counts), sum(r for _, r in counts)
