"""A project's live directory under ``/projects`` as the probe reports it: the lstat of its top
and a bounded sample of its entries' owners, held in as few bytes as the usual directory allows
(the incremental cache keeps one per project per host between sweeps)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any, cast

import msgspec

from bup_watchdog.errors import ProbeError
from bup_watchdog.model import (
    NOTHING,
    is_v4_uuid,
    mapping_eq,
    mapping_repr,
    project_uid,
    project_uid_unchecked,
    record_value,
)


def _uid_key(key: object, field_name: str) -> int:
    if not isinstance(key, str) or not key.isascii() or not key.isdigit():
        raise ProbeError(f"probe record 'project_dir': {field_name} has a key that is no uid")
    return int(key)


def _owner_counts(rec: Mapping[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for key, value in record_value(rec, "owners", dict, {}).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProbeError("probe record 'project_dir': owners has a count that is no count")
        counts[_uid_key(key, "owners")] = value
    return counts


def _owner_examples(rec: Mapping[str, Any]) -> dict[int, tuple[str, ...]]:
    examples: dict[int, tuple[str, ...]] = {}
    for key, paths in record_value(rec, "examples", dict, {}).items():
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ProbeError("probe record 'project_dir': examples must map uids to lists of paths")
        examples[_uid_key(key, "examples")] = tuple(paths)
    return examples


class OwnerCounts(msgspec.Struct, frozen=True, gc=False):
    """A live directory's sampled entries by owner uid, as a read-only mapping (equal to the dict
    of its items): the first owner and its count held inline, any others in ``more`` (uid,
    count, uid, count…). Nearly every directory has one owner, and a one-entry dict is 224 bytes;
    this is 40, for every live directory the incremental cache keeps. Made by ``of``."""

    uid: int
    count: int
    more: tuple[int, ...] = ()

    @classmethod
    def of(cls, counts: Mapping[int, int]) -> Mapping[int, int]:
        """The counts of a non-empty mapping, in its order (a Mapping, registered as one)."""
        if len(counts) == 1:  # nearly always: no list or tuple to build
            for uid, count in counts.items():
                return cast(Mapping[int, int], cls(uid, count))
        (uid, count), *rest = counts.items()
        return cast(Mapping[int, int], cls(uid, count, tuple(x for item in rest for x in item)))

    def items(self) -> list[tuple[int, int]]:
        more = self.more
        return [(self.uid, self.count), *zip(more[::2], more[1::2], strict=True)]

    def keys(self) -> list[int]:
        return [self.uid, *self.more[::2]]

    def values(self) -> list[int]:
        return [self.count, *self.more[1::2]]

    def get(self, uid: int, default: int | None = None) -> int | None:
        if uid == self.uid:
            return self.count
        more = self.more
        for i in range(0, len(more), 2):
            if more[i] == uid:
                return more[i + 1]
        return default

    def __getitem__(self, uid: int) -> int:
        count = self.get(uid)  # a count is never None
        if count is None:
            raise KeyError(uid)
        return count

    def __contains__(self, uid: object) -> bool:
        if uid == self.uid:
            return True
        more = self.more
        return bool(more) and uid in more[::2]

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def __len__(self) -> int:
        return 1 + len(self.more) // 2

    __eq__ = mapping_eq
    __repr__ = mapping_repr


Mapping.register(OwnerCounts)


def owned_as_usual(
    own: int, uid: int | None, gid: int | None, owners: Mapping[int, int], sampled: int
) -> bool:
    """Whether a live directory's top (owner and group) and every sampled entry are the project's
    uid ``own``: the usual directory's ownership (see ProjectDirFacts)."""
    if uid != own or gid != own:
        return False
    return len(owners) == 1 and owners.get(own) == sampled if sampled else not owners


class DirOddities(msgspec.Struct, frozen=True, gc=False):
    """What a live directory has beyond the usual one (see ProjectDirFacts), in full."""

    is_symlink: bool
    uid: int | None
    gid: int | None
    owners: Mapping[int, int]
    sample_truncated: bool
    sample_skipped: bool
    examples: Mapping[int, tuple[str, ...]]


class ProjectDirFacts(msgspec.Struct, frozen=True, gc=False):
    """A project's live directory under ``/projects``: lstat of its top and a bounded owner sample.

    ``owners`` counts the sampled entries (the top included) by uid, ``examples`` holds a few
    project-relative paths per uid other than the project's own (``.`` is the top).
    ``sample_skipped``: the host's sample budget was spent before this project, so only the top's
    ``uid`` is known. A frozen, untracked msgspec Struct, as RepoFacts.

    Nearly every directory is the usual one: not a symlink, its top's owner and group the
    project's uid, every sampled entry that uid's, the sample whole. Such a one is held as its id
    and sample size alone (40 bytes, its other facts worked out from the id when read); any other
    keeps them all in ``odd``. Made by ``of``, which chooses.
    """

    project_id: str
    sampled: int = 0
    odd: DirOddities | None = None

    @classmethod
    def of(
        cls,
        project_id: str,
        *,
        uid: int | None,
        gid: int | None,
        is_symlink: bool = False,
        owners: Mapping[int, int] = NOTHING,
        sampled: int = 0,
        sample_truncated: bool = False,
        sample_skipped: bool = False,
        examples: Mapping[int, tuple[str, ...]] = NOTHING,
    ) -> ProjectDirFacts:
        """The facts of one live directory, held as the usual one when they are."""
        try:
            own: int | None = project_uid(project_id)
        except ValueError:  # not a project id: nothing to work out from it
            own = None
        if (
            own is not None
            and not (is_symlink or sample_truncated or sample_skipped or examples)
            and owned_as_usual(own, uid, gid, owners, sampled)
        ):
            return cls(project_id, sampled)
        if owners and not isinstance(owners, OwnerCounts):
            # One int object for the top's uid, its gid and its owner count's key (nearly always
            # the same number), the counts one small struct instead of a dict.
            owners = OwnerCounts.of({uid if u == uid else u: n for u, n in owners.items()})
        elif not owners:
            owners = NOTHING
        gid = uid if gid == uid else gid
        odd = DirOddities(
            is_symlink, uid, gid, owners, sample_truncated, sample_skipped, examples or NOTHING
        )
        return cls(project_id, sampled, odd)

    @property
    def usual(self) -> bool:
        """Not a symlink, owned by the project's uid throughout (as far as sampled), whole."""
        return self.odd is None

    @property
    def is_symlink(self) -> bool:
        return self.odd is not None and self.odd.is_symlink

    @property
    def uid(self) -> int | None:
        odd = self.odd
        return project_uid_unchecked(self.project_id) if odd is None else odd.uid

    @property
    def gid(self) -> int | None:
        odd = self.odd
        return project_uid_unchecked(self.project_id) if odd is None else odd.gid

    @property
    def owners(self) -> Mapping[int, int]:
        odd = self.odd
        if odd is not None:
            return odd.owners
        if not self.sampled:
            return NOTHING
        own = project_uid_unchecked(self.project_id)
        return cast(Mapping[int, int], OwnerCounts(own, self.sampled))

    @property
    def sample_truncated(self) -> bool:
        return self.odd is not None and self.odd.sample_truncated

    @property
    def sample_skipped(self) -> bool:
        return self.odd is not None and self.odd.sample_skipped

    @property
    def examples(self) -> Mapping[int, tuple[str, ...]]:
        odd = self.odd
        return NOTHING if odd is None else odd.examples

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ProjectDirFacts:
        project_id = record_value(rec, "project_id", str, "")
        if not is_v4_uuid(project_id):
            raise ProbeError(f"probe reported a project directory with a bad id {project_id!r}")
        sampled = record_value(rec, "sampled", int, 0)
        if sampled < 0:
            raise ProbeError("probe record 'project_dir': sampled is negative")
        project_id = sys.intern(project_id.lower())
        own_uid = project_uid_unchecked(project_id)
        return cls.of(
            project_id,
            is_symlink=record_value(rec, "is_symlink", bool, False),
            uid=record_value(rec, "uid", int),
            gid=record_value(rec, "gid", int),
            owners=_owner_counts(rec),
            sampled=sampled,
            sample_truncated=record_value(rec, "sample_truncated", bool, False),
            sample_skipped=record_value(rec, "sample_skipped", bool, False),
            # Only other owners' examples are ever shown (the ownership check names wrong owners);
            # the project's own uid owns nearly every sampled entry, and its example paths were a
            # quarter of a 100,000-repository sweep's facts in memory.
            examples={u: paths for u, paths in _owner_examples(rec).items() if u != own_uid},
        )
