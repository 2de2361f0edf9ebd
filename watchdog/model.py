"""Plain data that flows through the pipeline: inventory, gathered facts and findings.

Nothing here does I/O. Facts arrive from hosts as JSON records (see ``watchdog/probe.py``) and are
turned into typed objects here, so a host that answers garbage fails in one place with one message.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec

from bup_watchdog import project_times, repo_numbers
from bup_watchdog.errors import ProbeError
from bup_watchdog.repo_numbers import (
    AT_BUPINDEX,
    AT_REFLOG,
    AT_REPO,
    AT_SAVE_LOG,
    AT_TOUCH,
    NO_BUPINDEX,
    NO_REFLOG,
    NO_SAVE_LOG,
    NO_TOUCH,
    read_float,
    read_int,
)
from bup_watchdog.repo_numbers import SIZE as _NO_SHA_SIZE

if TYPE_CHECKING:  # live_dirs imports this module
    from bup_watchdog.live_dirs import ProjectDirFacts

_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_v4_uuid(value: object) -> bool:
    """True when ``value`` is a version-4 UUID in its canonical text form (any case)."""
    return isinstance(value, str) and _V4.fullmatch(value.lower()) is not None


def is_uuid(value: object) -> bool:
    """True for any canonical UUID text (server ids need not be version 4)."""
    return isinstance(value, str) and _UUID.fullmatch(value.lower()) is not None


#: System trees a directory the watchdog writes under (a storage root where repairs chown, rsync
#: and rotate; its own state) may not be, nor lie in.
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr", "/var/run",
)  # fmt: skip


def system_path_problem(path: str) -> str | None:
    """Why an absolute directory is outside the roots the watchdog may write under, or None."""
    path = "/" + path.strip("/") if path.strip("/") else "/"
    if path == "/":
        return "must not be / (the whole filesystem)"
    for d in SYSTEM_DIRS:
        if path == d or path.startswith(d + "/"):
            return f"must not be in the system directory {d}"
    return None


def project_uid(project_id: str) -> int:
    """The Unix uid of a project, derived from its id exactly as the fleet's tooling does.

    First 8 hex digits of SHA-512 of the id, as an integer, halved; plus 65537 when that is
    at most 65537 (so a project never gets a system uid).
    """
    if not is_v4_uuid(project_id):
        raise ValueError(f"{project_id!r} is not a version-4 UUID, so it is not a project id")
    return project_uid_unchecked(project_id)


def project_uid_unchecked(project_id: str) -> int:
    """``project_uid`` of an id already known to be a v4 UUID (decoded, or a live directory's
    own), without checking it again: ~0.9 µs. Worked out anew each time rather than remembered
    per project (that table was ~8 MB held at 100,000 projects, and spared only full walks of a
    live directory after the first: incremental sweeps decode the few that changed)."""
    n = int.from_bytes(hashlib.sha512(project_id.encode()).digest()[:4], "big") // 2
    return n + 65537 if n <= 65537 else n


class Severity(enum.IntEnum):
    """Severity of a finding; the values are the Nagios exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


#: An empty read-only mapping, shared by every object that has nothing to map (a live directory
#: with no example paths, a project with no recorded save): 64 bytes fewer each than its own {}.
NOTHING: Mapping[Any, Any] = MappingProxyType({})


# ---------------------------------------------------------------- inventory


@dataclass(frozen=True, slots=True)
class Server:
    """A storage host as the inventory knows it."""

    server_id: str
    host: str
    port: int
    dc: int = 0
    experimental: bool = False
    disabled: bool = False
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_user: str = "root"
    bup_root: str = "/bup"
    projects_root: str = "/projects"
    name: str = ""
    transport: str = "ssh"

    @property
    def label(self) -> str:
        """How operators refer to the host in messages: its name or address."""
        return self.name or self.ssh_host or self.host

    @property
    def bups_root(self) -> str:
        return self.bup_root.rstrip("/") + "/bups"


def mapping_eq(self: Any, other: object) -> bool:
    """``==`` for a small read-only mapping Struct: equal to any mapping of the same items."""
    if not isinstance(other, Mapping):
        return cast(bool, NotImplemented)  # as a method's __eq__ would: let the other side say
    return bool(dict(self.items()) == dict(other.items()))


def mapping_repr(self: Any) -> str:
    """A small read-only mapping Struct shown as the dict of its items."""
    return repr(dict(self.items()))


class SmallMap(msgspec.Struct, frozen=True, gc=False):
    """A small read-only mapping held as two tuples (equal to the dict of its items): a project's
    save time per server as ``Project.bup_last_save`` hands it out (the keys' tuple is the
    project's own)."""

    keys_: tuple[Any, ...]
    values_: tuple[Any, ...]

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self.values_[self.keys_.index(key)]
        except ValueError:
            return default

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.values_[self.keys_.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return key in self.keys_

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def keys(self) -> tuple[Any, ...]:
        return self.keys_

    def values(self) -> tuple[Any, ...]:
        return self.values_

    def items(self) -> list[tuple[Any, Any]]:
        return list(zip(self.keys_, self.values_, strict=True))

    __eq__ = mapping_eq
    __repr__ = mapping_repr


Mapping.register(SmallMap)


@dataclass(frozen=True, slots=True, repr=False)
class Project:
    """A project, where it is mastered and replicated, and what the database believes of it.

    Its last edit and save times are packed (see ``project_times``): read them as
    ``last_edited`` and ``bup_last_save``; build a project with them by ``Project.of``."""

    project_id: str
    master: str
    replicas: tuple[str, ...] = ()
    disk_mb: int | None = None
    deleted: bool = False
    times: bytes = project_times.NO_TIMES
    #: The servers of ``bup_last_save``, sorted (one tuple shared by projects with the same).
    saved_on: tuple[str, ...] = ()
    #: The times' UTC offsets when one is not UTC; equal instants compare equal, as datetimes do.
    zones: bytes = field(default=b"", compare=False)

    @classmethod
    def of(
        cls,
        project_id: str,
        master: str,
        replicas: tuple[str, ...] = (),
        disk_mb: int | None = None,
        last_edited: datetime | None = None,
        bup_last_save: Mapping[str, datetime] = NOTHING,
        deleted: bool = False,
        shared: dict[tuple[Any, ...], tuple[Any, ...]] | None = None,
    ) -> Project:
        """A project with its times; ``shared``: a table of tuples to reuse for the servers'.
        ValueError for a time without a time zone."""
        times, servers, zones = project_times.pack(last_edited, bup_last_save)
        if shared is not None:
            servers = shared.setdefault(servers, servers)
        return cls(project_id, master, replicas, disk_mb, deleted, times, servers, zones)

    @property
    def last_edited(self) -> datetime | None:
        return project_times.last_edited(self.times, self.zones)

    @property
    def bup_last_save(self) -> Mapping[str, datetime]:
        """The newest save per server, as the database records it."""
        if not self.saved_on:
            return NOTHING
        saves = project_times.save_times(self.times, self.zones)
        return cast(Mapping[str, datetime], SmallMap(self.saved_on, saves))

    @property
    def locations(self) -> tuple[str, ...]:
        """Every server that should hold the project: the master first."""
        return (self.master, *[r for r in self.replicas if r != self.master])

    def __repr__(self) -> str:
        return (
            f"Project(project_id={self.project_id!r}, master={self.master!r}, "
            f"replicas={self.replicas!r}, disk_mb={self.disk_mb!r}, "
            f"last_edited={self.last_edited!r}, bup_last_save={self.bup_last_save!r}, "
            f"deleted={self.deleted!r})"
        )


@dataclass(frozen=True, slots=True)
class Inventory:
    """Servers and projects, from whichever source; ``stale`` when it came from the cache."""

    servers: Mapping[str, Server]
    projects: Mapping[str, Project]
    source: str = "file"
    stale: bool = False
    loaded_at: float = 0.0
    # What names this content exactly (a file's path and stat), when the source can tell: the
    # state's cached copy is rewritten only when it changes (None: always rewritten).
    version: str | None = None

    def projects_on(self, server_id: str) -> list[Project]:
        return [p for p in self.projects.values() if server_id in p.locations]


# ---------------------------------------------------------------- facts from hosts

T = TypeVar("T")


def record_value(
    rec: Mapping[str, Any], key: str, kind: type[T] | tuple[type, ...], default: Any = None
) -> Any:
    """A field of a probe's readable record, of type ``kind`` (``default`` when absent or null);
    ProbeError naming the record and field when it has another type."""
    value = rec.get(key, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool and kind != (bool,):
        raise ProbeError(f"probe record {rec.get('type')!r}: field {key!r} is a bool, not {kind}")
    if not isinstance(value, kind):
        raise ProbeError(
            f"probe record {rec.get('type')!r}: field {key!r} has the wrong type "
            f"({type(value).__name__})"
        )
    return value


def _bad_idx_text(entry: Any) -> str:
    if isinstance(entry, dict):
        return f"{entry.get('name', '?')}: {entry.get('reason', '?')}"
    return str(entry)


@dataclass(frozen=True, slots=True)
class MountFacts:
    """What the host's mount table says about one path (``/projects``, ``/bup/bups``)."""

    path: str
    exists: bool
    is_mount_point: bool
    mount_point: str | None
    source: str | None
    fstype: str | None
    read_only: bool
    bytes_total: int | None = None
    bytes_free: int | None = None
    error: str | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> MountFacts:
        return cls(
            path=record_value(rec, "path", str, ""),
            exists=record_value(rec, "exists", bool, False),
            is_mount_point=record_value(rec, "is_mount_point", bool, False),
            mount_point=record_value(rec, "mount_point", str),
            source=record_value(rec, "source", str),
            fstype=record_value(rec, "fstype", str),
            read_only=record_value(rec, "read_only", bool, False),
            bytes_total=record_value(rec, "bytes_total", int),
            bytes_free=record_value(rec, "bytes_free", int),
            error=record_value(rec, "error", str),
        )


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """Whether the ``bup_server`` process runs on the host, and where it listens."""

    name: str
    pids: tuple[int, ...]
    listen: tuple[tuple[str, int], ...]
    #: How the probe learnt ``listen``: "sockets" (the process's fds), "port_file" (its fds
    #: unreadable to a non-root probe: the port file, confirmed by a LISTEN socket), "none".
    port_from: str = ""

    @property
    def running(self) -> bool:
        return bool(self.pids)

    @property
    def ports(self) -> set[int]:
        return {port for _, port in self.listen}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ProcessFacts:
        pids = record_value(rec, "pids", list, [])
        listen = record_value(rec, "listen", list, [])
        try:
            return cls(
                name=record_value(rec, "name", str, ""),
                pids=tuple(int(p) for p in pids),
                listen=tuple((str(a), int(p)) for a, p in listen),
                port_from=record_value(rec, "port_from", str, ""),
            )
        except (TypeError, ValueError) as exc:
            raise ProbeError(f"probe record 'process' is malformed: {exc}") from None


class RepoOddities(msgspec.Struct, frozen=True, gc=False):
    """The facts of a repository that are nearly always empty: a healthy repository has none.

    Held apart from RepoFacts, which points at the one shared empty instance (``NO_ODDITIES``)
    unless the repository has one of them: 13 pointers fewer per repository (104 bytes of the
    ~900 the facts and the incremental cache hold for each). Read through RepoFacts' properties.
    """

    #: The repository directory's name when it is not the project id itself (an upper-case UUID
    #: directory), None otherwise: no path string per repository (~90 bytes each at 200,000).
    dir_name: str | None = None
    is_symlink: bool = False
    master_error: str | None = None
    idx_without_pack: int = 0
    bad_idx: tuple[str, ...] = ()
    midx_count: int = 0
    tmp_count: int = 0
    save_log_is_symlink: bool = False
    #: What conf/save_log.json is when it is there but not a regular file ("FIFO", "socket"…).
    save_log_kind: str | None = None
    replicas_error: str | None = None
    symlinks_outside: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    #: All symlinks leading out of the repository; ``symlinks_outside`` lists only the first few.
    symlinks_outside_count: int = 0
    #: The master's commit as the probe read it when that is not 40 lower-case hex digits (ours
    #: never sends one such): RepoFacts packs a commit id written as git writes it.
    master_text: str | None = None


#: The oddities of a repository that has none (nearly every one): one instance, shared.
NO_ODDITIES = RepoOddities()


class RepoFacts(msgspec.Struct, frozen=True, gc=False):
    """The cheap facts of one bup repository, read in one pass by the probe.

    A frozen msgspec Struct rather than a dataclass: built in C and never tracked by the garbage
    collector (it holds no container that could lead back to it), so 100,000 of them cost a
    sweep no collector passes. What is nearly always empty is in ``odd`` (see RepoOddities);
    the sizes, times and commit id are packed in ``numbers`` (see ``repo_numbers``): ~150 bytes
    fewer per repository than as objects of their own. All of them are read as attributes
    (properties); build one with any of them by ``RepoFacts.of``, copy one with changes by
    ``replace``.
    """

    project_id: str
    head: str | None = None
    master_in_pack: bool | None = None
    pack_count: int = 0
    replicas: tuple[str, ...] | None = None
    settings: Mapping[str, Any] | None = None
    odd: RepoOddities = NO_ODDITIES
    numbers: bytes = repo_numbers.EMPTY

    @classmethod
    def of(cls, project_id: str, **fields: Any) -> RepoFacts:
        """RepoFacts from keyword fields, the packed ones and RepoOddities' among them (ValueError
        when a size or time is not a 64-bit number)."""
        numbers, text = repo_numbers.pack(
            fields.pop("bupindex_bytes", None),
            fields.pop("repo_bytes", 0),
            fields.pop("reflog_last_time", None),
            fields.pop("save_log_bytes", None),
            fields.pop("touch_mtime", None),
            fields.pop("master_sha", None),
        )
        odd = {k: fields.pop(k) for k in RepoOddities.__struct_fields__ if k in fields}
        if text is not None:
            odd["master_text"] = text
        return cls(
            project_id,
            **fields,
            odd=_oddities(RepoOddities(**odd)) if odd else NO_ODDITIES,
            numbers=numbers,
        )

    def replace(self, **changes: Any) -> RepoFacts:
        """A copy with ``changes``: any name ``of`` takes."""
        fields = {name: getattr(self, name) for name in _REPO_FACTS_NAMES[1:]}
        fields.update(changes)
        return RepoFacts.of(self.project_id, **fields)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _REPO_FACTS_NAMES[:12])
        return f"RepoFacts({shown}, odd={self.odd!r})"

    @property
    def master_sha(self) -> str | None:
        n = self.numbers
        return n[_NO_SHA_SIZE:].hex() if len(n) > _NO_SHA_SIZE else self.odd.master_text

    @property
    def master_known(self) -> bool:
        """``master_sha is not None``, without making its text (the checks ask for every copy)."""
        return len(self.numbers) > _NO_SHA_SIZE or self.odd.master_text is not None

    def same_master(self, other: RepoFacts) -> bool:
        """``self.master_sha == other.master_sha``, without making their texts."""
        a, b = self.numbers, other.numbers
        if len(a) > _NO_SHA_SIZE and len(b) > _NO_SHA_SIZE:
            return a[_NO_SHA_SIZE:] == b[_NO_SHA_SIZE:]
        return self.master_sha == other.master_sha

    @property
    def bupindex_bytes(self) -> int | None:
        n = self.numbers
        return None if n[0] & NO_BUPINDEX else read_int(n, AT_BUPINDEX)[0]

    @property
    def repo_bytes(self) -> int:
        size: int = read_int(self.numbers, AT_REPO)[0]
        return size

    @property
    def reflog_last_time(self) -> int | None:
        n = self.numbers
        return None if n[0] & NO_REFLOG else read_int(n, AT_REFLOG)[0]

    @property
    def save_log_bytes(self) -> int | None:
        n = self.numbers
        return None if n[0] & NO_SAVE_LOG else read_int(n, AT_SAVE_LOG)[0]

    @property
    def touch_mtime(self) -> float | None:
        n = self.numbers
        return None if n[0] & NO_TOUCH else read_float(n, AT_TOUCH)[0]

    @property
    def dir_name(self) -> str | None:
        return self.odd.dir_name

    @property
    def is_symlink(self) -> bool:
        return self.odd.is_symlink

    @property
    def master_error(self) -> str | None:
        return self.odd.master_error

    @property
    def idx_without_pack(self) -> int:
        return self.odd.idx_without_pack

    @property
    def bad_idx(self) -> tuple[str, ...]:
        return self.odd.bad_idx

    @property
    def midx_count(self) -> int:
        return self.odd.midx_count

    @property
    def tmp_count(self) -> int:
        return self.odd.tmp_count

    @property
    def save_log_is_symlink(self) -> bool:
        return self.odd.save_log_is_symlink

    @property
    def save_log_kind(self) -> str | None:
        return self.odd.save_log_kind

    @property
    def replicas_error(self) -> str | None:
        return self.odd.replicas_error

    @property
    def symlinks_outside(self) -> tuple[str, ...]:
        return self.odd.symlinks_outside

    @property
    def errors(self) -> tuple[str, ...]:
        return self.odd.errors

    @property
    def symlinks_outside_count(self) -> int:
        return self.odd.symlinks_outside_count

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RepoFacts:
        project_id = record_value(rec, "project_id", str, "")
        if not is_v4_uuid(project_id):
            raise ProbeError(f"probe reported a repository with a bad project id {project_id!r}")
        replicas = record_value(rec, "replicas", list)
        pid = sys.intern(project_id.lower())  # shared with the project_dir's facts
        name = os.path.basename(record_value(rec, "path", str, "")) or pid
        try:
            numbers, master_text = repo_numbers.pack(
                record_value(rec, "bupindex_bytes", int),
                record_value(rec, "repo_bytes", int, 0),
                record_value(rec, "reflog_last_time", int),
                record_value(rec, "save_log_bytes", int),
                record_value(rec, "touch_mtime", float),
                record_value(rec, "master_sha", str),
            )
        except ValueError as exc:
            raise ProbeError(f"probe record 'repo' for {pid}: {exc}") from None
        odd = RepoOddities(
            dir_name=None if name == pid else name,
            is_symlink=record_value(rec, "is_symlink", bool, False),
            master_error=record_value(rec, "master_error", str),
            idx_without_pack=record_value(rec, "idx_without_pack", int, 0),
            bad_idx=tuple(_bad_idx_text(x) for x in record_value(rec, "bad_idx", list, [])),
            midx_count=record_value(rec, "midx_count", int, 0),
            tmp_count=record_value(rec, "tmp_count", int, 0),
            save_log_is_symlink=record_value(rec, "save_log_is_symlink", bool, False),
            save_log_kind=record_value(rec, "save_log_kind", str),
            replicas_error=record_value(rec, "replicas_error", str),
            symlinks_outside=tuple(str(x) for x in record_value(rec, "symlinks_outside", list, [])),
            errors=tuple(str(x) for x in record_value(rec, "errors", list, [])),
            symlinks_outside_count=record_value(rec, "symlinks_outside_count", int, 0),
            master_text=master_text,
        )
        return cls(
            project_id=pid,
            head=record_value(rec, "head", str),
            master_in_pack=record_value(rec, "master_in_pack", bool),
            pack_count=record_value(rec, "pack_count", int, 0),
            replicas=None if replicas is None else tuple(_shared_text(x) for x in replicas),
            settings=record_value(rec, "settings", dict),
            odd=_oddities(odd),
            numbers=numbers,
        )


#: What a RepoFacts is, as its repr and ``replace`` name it: the fields and the packed numbers.
_REPO_FACTS_NAMES = (
    "project_id",
    "head",
    "master_sha",
    "master_in_pack",
    "pack_count",
    "bupindex_bytes",
    "repo_bytes",
    "reflog_last_time",
    "save_log_bytes",
    "touch_mtime",
    "replicas",
    "settings",
    *(name for name in RepoOddities.__struct_fields__ if name != "master_text"),
)


def _oddities(odd: RepoOddities) -> RepoOddities:
    """``odd``, or the shared empty instance when it is empty."""
    return NO_ODDITIES if odd == NO_ODDITIES else odd


def _shared_text(value: object) -> str:
    """A short text (a server id) as one shared object: 100,000 repositories name 20 servers."""
    text = str(value)
    return sys.intern(text) if len(text) <= 64 else text


@dataclass(frozen=True, slots=True)
class DeepResult:
    """The latest deep check of one repository (``git fsck --connectivity-only`` + ``bup ls``)."""

    project_id: str
    checked_at: float
    ok: bool
    master_sha: str | None
    message: str | None = None


class GatherFailure(enum.Enum):
    """Why a host's facts are missing or incomplete."""

    UNREACHABLE = "unreachable"
    HOST_KEY = "host_key"
    TIMEOUT = "timeout"
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """The watchdog's own TCP connect to the ``bup_server`` address from the inventory."""

    address: str
    port: int
    ok: bool
    seconds: float
    error: str | None = None


@dataclass(slots=True)
class HostFacts:
    """Everything one sweep learned about one host (possibly only why it learned nothing)."""

    server_id: str
    gathered_at: float
    duration_seconds: float = 0.0
    failure: GatherFailure | None = None
    failure_message: str | None = None
    complete: bool = False
    hello: dict[str, Any] = field(default_factory=dict)
    mounts: dict[str, MountFacts] = field(default_factory=dict)
    process: ProcessFacts | None = None
    repos: dict[str, RepoFacts] = field(default_factory=dict)
    project_dirs: dict[str, ProjectDirFacts] = field(default_factory=dict)
    strays: list[dict[str, Any]] = field(default_factory=list)
    bup_server_tcp: TcpProbe | None = None
    ssh_sessions: int = 0
    #: Latest deep-check result per repository (from this sweep or an earlier one).
    deep: dict[str, DeepResult] = field(default_factory=dict)
    deep_checked_now: int = 0
    deep_error: str | None = None
    #: Adaptive reachability (see watchdog/suspicion.py): failed sweeps in a row including this
    #: one, and how many the host's record allows before it is declared down.
    fail_streak: int = 0
    patience: int = 1
    #: Set when the facts are missing through the watchdog's own fault (errors.LocalFault's
    #: kind: known_hosts, key_file, file_descriptors): the host is not to blame.
    local_fault: str | None = None
    #: The projects a scoped probe walked (a repair's ``--only``), None for the whole host: the
    #: repos and live directories of every other project were not looked at, not found missing.
    scope: frozenset[str] | None = None

    @property
    def probed(self) -> bool:
        """True when the probe's facts are present and complete."""
        return self.failure is None and self.complete


# ---------------------------------------------------------------- findings


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem a check found: what, where, how bad, and a sentence for the operator."""

    check: str
    server_id: str
    severity: Severity
    message: str
    project_id: str | None = None
    value: float | None = None
    code: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The thing the finding is about: a server, or a project on a server."""
        return f"{self.server_id}/{self.project_id}" if self.project_id else self.server_id

    def order(self) -> tuple[int, str, str, str, str]:
        """The order findings are shown and kept in: worst first, then by check and target.
        Checks yield findings in any order (sorting every host's repositories was a tenth of an
        incremental sweep's own CPU); whoever lists them sorts by this."""
        return (-self.severity, self.check, self.server_id, self.project_id or "", self.code)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "code": self.code,
            "target": self.target,
            "server_id": self.server_id,
            "project_id": self.project_id,
            "severity": self.severity.label,
            "value": self.value,
            "message": self.message,
            "details": dict(self.details),
        }
