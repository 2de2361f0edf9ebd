"""The embedded default inventory: servers and projects from a TOML or JSON file.

Every entry is validated; a project id that is not a version-4 UUID is rejected with the entry
named, before it can ever reach a path or a command.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import os
import re
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bup_watchdog.errors import ConfigError
from bup_watchdog.model import (
    Inventory,
    Project,
    Server,
    is_uuid,
    is_v4_uuid,
    system_path_problem,
)

_rust_loads: Callable[..., dict[str, Any]] | None
try:  # a TOML parser in Rust: 100,000 projects parse in about 1.3 s instead of tomllib's 10 s
    from toml_rs import loads as _rust_loads
except ImportError:  # pragma: no cover - a dependency; tomllib gives the same data, slower
    _rust_loads = None

_HOSTNAME = r"^[A-Za-z0-9][A-Za-z0-9.:-]*$"
_ABS_PATH = r"^/[A-Za-z0-9_./-]*$"


class ServerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_id: str
    host: str = Field(pattern=_HOSTNAME)
    port: int = Field(ge=1, le=65535)
    dc: int = 0
    experimental: bool = False
    disabled: bool = False
    ssh_host: str | None = Field(None, pattern=_HOSTNAME)
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_-]*$")
    bup_root: str = Field("/bup", pattern=_ABS_PATH)
    projects_root: str = Field("/projects", pattern=_ABS_PATH)
    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    transport: Literal["ssh", "local"] = "ssh"

    @field_validator("server_id")
    @classmethod
    def _server_id_is_uuid(cls, v: str) -> str:
        if not is_uuid(v):
            raise ValueError(f"{v!r} is not a UUID")
        return v.lower()

    @field_validator("bup_root", "projects_root")
    @classmethod
    def _no_dotdot(cls, v: str) -> str:
        if ".." in v.split("/"):
            raise ValueError("must not contain '..'")
        bad = system_path_problem(v)
        if bad:
            raise ValueError(bad)
        return v.rstrip("/") or "/"

    def server(self, default_user: str) -> Server:
        """The inventory's Server for this entry (ssh_host defaults to host, the user to the
        config's)."""
        return Server(
            server_id=self.server_id,
            host=self.host,
            port=self.port,
            dc=self.dc,
            experimental=self.experimental,
            disabled=self.disabled,
            ssh_host=self.ssh_host or self.host,
            ssh_port=self.ssh_port,
            ssh_user=self.ssh_user or default_user,
            bup_root=self.bup_root,
            projects_root=self.projects_root,
            name=self.name,
            transport=self.transport,
        )

    @model_validator(mode="after")
    def _separate_roots(self) -> ServerEntry:
        b, p = self.bup_root, self.projects_root
        if b == p or p.startswith(b + "/") or b.startswith(p + "/"):
            raise ValueError(
                f"bup_root {b!r} and projects_root {p!r} must be separate trees (a repair of one "
                "would act on the other)"
            )
        return self


class ProjectEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str
    master: str
    replicas: list[str] = []
    disk_mb: int | None = Field(None, ge=0)
    last_edited: datetime | None = None
    bup_last_save: dict[str, datetime] = {}
    deleted: bool = False

    @field_validator("project_id")
    @classmethod
    def _project_id_is_v4(cls, v: str) -> str:
        if not is_v4_uuid(v):
            raise ValueError(f"{v!r} is not a version-4 UUID, so it cannot be a project id")
        return v.lower()

    @field_validator("master")
    @classmethod
    def _master_is_uuid(cls, v: str) -> str:
        if not is_uuid(v):
            raise ValueError(f"{v!r} is not a server UUID")
        return v.lower()

    @field_validator("replicas")
    @classmethod
    def _replicas_are_uuids(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not is_uuid(r)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a server UUID")
        return [r.lower() for r in v]

    @model_validator(mode="after")
    def _times_are_aware(self) -> ProjectEntry:
        def aware(t: datetime) -> datetime:
            return t if t.tzinfo else t.replace(tzinfo=UTC)

        if self.last_edited:
            self.last_edited = aware(self.last_edited)
        self.bup_last_save = {k.lower(): aware(t) for k, t in self.bup_last_save.items()}
        return self


_TOP_KEYS = ("servers", "projects")


def _label(kind: str, index: int, entry: Any, loc: tuple[int | str, ...]) -> str:
    """Name the entry an error is about: 'projects[3].master ('<project id>')'."""
    ident = None
    if isinstance(entry, dict):
        ident = entry.get("project_id") or entry.get("server_id") or entry.get("name")
    rest = ".".join(str(p) for p in loc)
    label = f"{kind}[{index}]" + (f".{rest}" if rest else "")
    return f"{label} ({ident!r})" if ident else label


def _messages(kind: str, index: int, entry: Any, exc: ValidationError) -> list[str]:
    return [
        f"At '{_label(kind, index, entry, tuple(e['loc']))}': "
        + ("unknown key (check the spelling)" if e["type"] == "extra_forbidden" else e["msg"])
        for e in exc.errors()
    ]


def _entries(data: dict[str, Any], kind: str, problems: list[str]) -> list[Any]:
    value = data.get(kind, [])
    if not isinstance(value, list):
        problems.append(f"At '{kind}': must be a list of tables ([[{kind}]]), not {value!r:.40}")
        return []
    return value


def loads_toml(text: str) -> dict[str, Any]:
    """TOML text as data, exactly as ``tomllib`` reads it, with tomllib's error when it is not
    valid TOML (toml_rs, held to TOML 1.0, does the work; tomllib reads only text it rejects)."""
    if _rust_loads is not None:
        try:
            data, rest = toml_pieces(text, _rust_loads)
            for projects in rest:
                data["projects"] += projects
            return data
        except Exception:  # noqa: S110 - not in pieces: whole, then tomllib judges such text
            pass  # (its error names the line and column the way operators know it)
        try:
            return _rust_loads(text, toml_version="1.0.0")
        except Exception:  # noqa: S110
            pass
    return tomllib.loads(text)


#: Projects per piece of an inventory parsed at once (see toml_pieces).
PIECE_PROJECTS = 2000
_PROJECTS_HEADER = "\n[[projects]]\n"
#: Characters of a file read at once when its pieces are cut as it is read (FileInventory).
READ_CHARS = 1 << 20


def toml_pieces(
    text: str, loads: Callable[..., dict[str, Any]]
) -> tuple[dict[str, Any], Iterator[list[Any]]]:
    """An inventory's TOML a few thousand ``[[projects]]`` tables at a time: the data of the
    first piece, and the further pieces' projects, each parsed when it is asked for.

    The Rust parser holds its own tree of the whole text until it is done, so 100,000 projects
    parsed at once peaked at 160 MB above the data itself; and a whole parsed tree freed after
    the projects were built left its memory fragmented under them. Every piece after the first
    must hold nothing but ``[[projects]]`` tables, and the text no multi-line string (see
    ``text_pieces``): otherwise ValueError (then the caller parses the text whole), so the data
    and every error stay those of parsing it whole.
    """
    return parsed_pieces(text_pieces([text]), loads)


def text_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """The text given in ``chunks`` cut just before every ``PIECE_PROJECTS``-th ``[[projects]]``
    header line, as the chunks come (a file is never held whole: one piece and one chunk).

    A header line can be a place to cut only outside multi-line strings: a triple quote anywhere
    raises ValueError when it is reached (text with none has none)."""
    buf, tail, scan, n = "", "", 0, 0
    for chunk in chunks:
        seen = tail + chunk  # a triple quote may be cut across chunks
        if '"""' in seen or "'''" in seen:
            raise ValueError("a multi-line string: no header line is surely a place to cut")
        tail = seen[-2:]
        buf += chunk
        while (at := buf.find(_PROJECTS_HEADER, scan)) != -1:
            scan = at + 1
            if n and n % PIECE_PROJECTS == 0:
                yield buf[:scan]
                buf, scan = buf[scan:], 0
            n += 1
        scan = max(scan, len(buf) - len(_PROJECTS_HEADER) + 1)
    yield buf


def parsed_pieces(
    pieces: Iterator[str], loads: Callable[..., dict[str, Any]]
) -> tuple[dict[str, Any], Iterator[list[Any]]]:
    """The data of the first of ``pieces`` and the further pieces' projects (see toml_pieces);
    a single piece is the whole text, parsed as it is."""
    data = loads(next(pieces), toml_version="1.0.0")
    second = next(pieces, None)
    if second is None:
        return data, iter(())
    if type(data.get("projects")) is not list:
        raise ValueError("the first piece holds no array of [[projects]] tables")

    def rest() -> Iterator[list[Any]]:
        for text in itertools.chain((second,), pieces):
            piece = loads(text, toml_version="1.0.0")
            del text
            if piece.keys() != {"projects"}:
                raise ValueError("a piece holds more than [[projects]] tables")
            yield piece["projects"]

    return data, rest()


def file_chunks(path: Path) -> Iterator[str]:
    """A UTF-8 text file's text, ``READ_CHARS`` characters at a time (UnicodeDecodeError where
    it is not UTF-8; line endings as written)."""
    with open(path, encoding="utf-8", newline="") as f:
        while chunk := f.read(READ_CHARS):
            yield chunk


_PROJECT_KEYS = frozenset(ProjectEntry.model_fields)
_V4_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_D = "[0-9]"
_RFC3339 = re.compile(
    f"{_D}{{4}}-{_D}{_D}-{_D}{_D}T{_D}{_D}:{_D}{_D}:{_D}{_D}(?:[.]{_D}{{1,6}})?(?:Z|[+-]{_D}{_D}:{_D}{_D})?"
)
_NO_REPLICAS: list[str] = []  # never changed: the default of an entry without replicas


def _fast_time(value: object) -> datetime | None:
    """A time the fast path takes as it is (a TOML datetime or an RFC 3339 string), made aware;
    None for anything else, which the full validation then judges."""
    if type(value) is str and _RFC3339.fullmatch(value):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if type(value) is not datetime:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _fast_project(
    raw: object, ids: Mapping[str, str], tuples: dict[tuple[Any, ...], tuple[Any, ...]]
) -> Project | None:
    """The Project of an entry in the usual form, checked with plain tests: a lower-case v4 id,
    servers by their known (lower-case) ids, times, a non-negative int quota, a bool. None for
    anything else, so that ProjectEntry validates it and says what is wrong: the same outcome as
    validating every entry, at a sixth of the cost (a pydantic model per project was most of a
    100,000-project load). Held compactly: projects with the same replicas share one tuple (from
    ``tuples``, the load's table), and so do those saved on the same servers; the times are
    packed (``Project.of``: ~120 bytes fewer per project). The id is interned: the facts
    gathered from the hosts name the project by that same string (``watchdog.wire`` interns
    them too), not a copy of their own (96 bytes per project)."""
    if type(raw) is not dict or not _PROJECT_KEYS.issuperset(raw):
        return None
    pid = raw.get("project_id")
    master = raw.get("master")
    if type(pid) is not str or type(master) is not str or not _V4_LOWER.fullmatch(pid):
        return None
    master = ids.get(master)
    replicas = raw.get("replicas", _NO_REPLICAS)
    disk = raw.get("disk_mb")
    deleted = raw.get("deleted", False)
    if (
        master is None
        or type(replicas) is not list
        or (disk is not None and (type(disk) is not int or disk < 0))
        or type(deleted) is not bool
    ):
        return None
    edited = raw.get("last_edited")
    if edited is not None and (edited := _fast_time(edited)) is None:
        return None
    saves = raw.get("bup_last_save", {})
    if type(saves) is not dict:
        return None
    last_save: dict[str, datetime] = {}
    try:  # an unknown server (KeyError) or no text at all (TypeError): the model judges
        shared = tuple([ids[r] for r in replicas])
        shared = tuples.setdefault(shared, shared)
        for k, t in saves.items():
            when = t if type(t) is datetime and t.tzinfo is not None else _fast_time(t)
            if when is None:
                return None
            last_save[ids[k]] = when
    except (KeyError, TypeError):
        return None
    return Project.of(
        sys.intern(pid),
        master,
        shared,
        disk,
        edited,
        last_save,
        deleted,
        shared=tuples,
    )


def parse_inventory(
    data: Any,
    *,
    source: str,
    default_user: str = "root",
    more_projects: Iterable[list[Any]] = (),
) -> Inventory:
    """Validate inventory data and build the Inventory; every bad entry is reported at once.

    Entries are validated one at a time and each entry of ``data`` is dropped (set to None) once
    it is built, so that a large inventory never exists three times over (parsed tree, validated
    models, inventory objects): 50,000 projects peak at about half the memory of validating the
    whole tree at once. Server ids are shared by every project that names them. An entry in
    the usual form is checked by ``_fast_project``; only the others go through ProjectEntry.
    ``more_projects``: further lists of project entries, read after ``data``'s (the pieces of
    ``toml_pieces``), numbered on from them.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, ["the inventory must be a table with 'servers' and 'projects'"])
    problems = [
        f"At '{key}': unknown key (check the spelling)" for key in data if key not in _TOP_KEYS
    ]
    servers: dict[str, Server] = {}
    named: dict[str, int] = {}  # name -> index of the entry that has it first
    raw_servers = _entries(data, "servers", problems)
    for i, raw in enumerate(raw_servers):
        try:
            s = ServerEntry.model_validate(raw)
        except ValidationError as exc:
            problems += _messages("servers", i, raw, exc)
            continue
        if s.server_id in servers:
            problems.append(f"At 'servers[{i}]': server_id {s.server_id} appears twice")
        if s.name and s.name in named:
            problems.append(
                f"At 'servers[{i}].name': {s.name!r} is also the name of servers[{named[s.name]}]"
                " (a name must pick one server, e.g. for --server)"
            )
        named.setdefault(s.name, i)
        servers[s.server_id] = s.server(default_user)
    ids = {sid: sid for sid in servers}  # one string per server id, however many projects
    tuples: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # one tuple per list of servers
    projects: dict[str, Project] = {}
    raw_projects = _entries(data, "projects", problems)
    i = -1  # numbered through every list of entries, as in the file
    for chunk in itertools.chain((raw_projects,), more_projects):
        for at, raw in enumerate(chunk):
            i += 1
            chunk[at] = None  # freed as we go (the caller's tree is consumed)
            fast = _fast_project(raw, ids, tuples)
            if fast is not None:
                if fast.project_id in projects:
                    problems.append(
                        f"At 'projects[{i}] ({fast.project_id!r})': project_id appears twice"
                    )
                projects[fast.project_id] = fast
                continue
            try:
                p = ProjectEntry.model_validate(raw)
            except ValidationError as exc:
                problems += _messages("projects", i, raw, exc)
                continue
            label = f"projects[{i}] ({p.project_id!r})"
            if p.project_id in projects:
                problems.append(f"At '{label}': project_id appears twice")
            for sid in (p.master, *p.replicas):
                if sid not in servers:
                    problems.append(f"At '{label}': server {sid} is not in the servers list")
            pid = sys.intern(p.project_id)  # one string for the key, the project and the facts
            projects[pid] = Project.of(
                pid,
                ids.get(p.master, p.master),
                tuple(ids.get(r, r) for r in p.replicas),
                p.disk_mb,
                p.last_edited,
                {ids.get(k, k): t for k, t in p.bup_last_save.items()},
                p.deleted,
                shared=tuples,
            )
    if problems:
        raise ConfigError(source, problems)
    return Inventory(servers=servers, projects=projects, source="file", loaded_at=time.time())


# A file changed less than this long before it was read is read again at the next load, even
# if its stat did not change (a write within the timestamp granularity could leave it the same).
RACY_SECONDS = 2.0


class FileInventory:
    """Inventory from a TOML (``.toml``) or JSON file.

    The parsed inventory is kept and returned again while the file's identity, size, mtime and
    ctime stay the same, so a daemon sweeping every few minutes does not parse 50,000 projects
    each time; any change to the file (or a replaced file) is read at the next load.
    """

    name = "file"

    def __init__(self, path: Path, default_user: str = "root") -> None:
        self.path = path
        self.default_user = default_user
        self._cached: tuple[tuple[int, ...], Inventory] | None = None

    def load(self) -> Inventory:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise self._unreadable(exc) from None
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        if self.path.suffix == ".json":
            inventory = self._whole(self._bytes())
        else:
            inventory = self._pieces() or self._whole(self._text())
        settled = max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - RACY_SECONDS * 1e9
        if settled:  # a file written within the racy window may change again unseen
            version = f"file {self.path} {self.default_user} {' '.join(map(str, signature))}"
            inventory = dataclasses.replace(inventory, version=version)
        self._cached = (signature, inventory) if settled else None
        return inventory

    def _unreadable(self, exc: OSError) -> ConfigError:
        return ConfigError(str(self.path), [f"cannot read the file: {exc.strerror or exc}"])

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise self._unreadable(exc) from None

    def _text(self) -> str:
        """The file's text, read whole (ConfigError when it is not UTF-8)."""
        raw = self._bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(str(self.path), [f"not valid TOML: {exc}"]) from None

    def _pieces(self) -> Inventory | None:
        """The inventory of a TOML file read and parsed in pieces as it is read (text_pieces),
        each validated before the next is read: the file's text (36 MB at 100,000 projects) is
        never held whole, nor its bytes beside it. None when the text is not in plain pieces,
        not valid TOML or not UTF-8, or the file could not be read to its end: it is then read
        whole, and tomllib or the decoder words the error."""
        if _rust_loads is None:
            return None
        try:
            data, rest = parsed_pieces(text_pieces(file_chunks(self.path)), _rust_loads)
            return parse_inventory(
                data, source=str(self.path), default_user=self.default_user, more_projects=rest
            )
        except ConfigError:
            raise
        except Exception:  # read whole (and tomllib words the error)
            return None

    def _whole(self, raw: bytes | str) -> Inventory:
        """The inventory of the file's JSON (bytes) or TOML (text), parsed whole."""
        try:
            data = json.loads(raw) if isinstance(raw, bytes) else loads_toml(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            kind = "JSON" if self.path.suffix == ".json" else "TOML"
            raise ConfigError(str(self.path), [f"not valid {kind}: {exc}"]) from None
        del raw  # the text is not needed once parsed
        return parse_inventory(data, source=str(self.path), default_user=self.default_user)

    def set_master(self, project_id: str, old: str, new: str) -> bool:
        """Switch a project's master in the file, only while it is ``old`` (set_master_in_file)."""
        self._cached = None
        return set_master_in_file(self.path, project_id, old, new)


def dump_inventory(inventory: Inventory) -> dict[str, Any]:
    """The inventory as file data (JSON-ready), e.g. for the sandbox fleet or a cache."""
    return {
        "servers": [
            {
                "server_id": s.server_id,
                "name": s.name,
                "host": s.host,
                "port": s.port,
                "dc": s.dc,
                "experimental": s.experimental,
                "disabled": s.disabled,
                "ssh_host": s.ssh_host,
                "ssh_port": s.ssh_port,
                "ssh_user": s.ssh_user,
                "bup_root": s.bup_root,
                "projects_root": s.projects_root,
                "transport": s.transport,
            }
            for s in inventory.servers.values()
        ],
        "projects": [
            {
                "project_id": p.project_id,
                "master": p.master,
                "replicas": list(p.replicas),
                "disk_mb": p.disk_mb,
                "last_edited": p.last_edited.isoformat() if p.last_edited else None,
                "bup_last_save": {k: v.isoformat() for k, v in p.bup_last_save.items()},
                "deleted": p.deleted,
            }
            for p in inventory.projects.values()
        ],
    }


def _toml_value(value: Any) -> str:
    """A TOML literal for the values an inventory file holds (strings, numbers, times, lists,
    tables of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date | dtime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise ConfigError("inventory", [f"no TOML form for {value!r}"])


def dump_toml(data: dict[str, Any]) -> str:
    """Inventory file data as TOML: plain keys first, then each array of tables."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if not _tables(v)]
    for key, value in data.items():
        if not _tables(value):
            continue
        for entry in value:
            lines += ["", f"[[{key}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def set_master_in_file(path: Path, project_id: str, old: str, new: str) -> bool:
    """Make ``new`` the master of ``project_id`` in the inventory file, only while it is ``old``.

    The old master joins the replicas (a move never drops a copy) and ``new`` leaves them. The
    file is read, checked and written to a temporary file in the same directory, which replaces
    it only if the file is still the one read (same inode, size, mtime): a compare-and-swap on
    the file. False when the master is no longer ``old`` or the file changed meanwhile. TOML
    comments are not kept (the file is written again from its data); JSON is written indented.
    Watchdog processes take turns (a lock file beside it), so two moves of different projects
    both land instead of the second failing, or undoing the first, after its whole copy.
    """
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return _swap_master(path, project_id, old, new)


def _swap_master(path: Path, project_id: str, old: str, new: str) -> bool:
    """set_master_in_file's compare-and-swap, under its lock."""
    st = path.stat()
    raw = path.read_bytes()
    is_json = path.suffix == ".json"
    data = json.loads(raw) if is_json else loads_toml(raw.decode("utf-8"))
    entries = [
        p
        for p in data.get("projects", [])
        if isinstance(p, dict) and str(p.get("project_id", "")).lower() == project_id
    ]
    if len(entries) != 1 or str(entries[0].get("master", "")).lower() != old:
        return False
    entry = entries[0]
    replicas = [str(r).lower() for r in entry.get("replicas", []) if str(r).lower() != new]
    entry["master"] = new
    entry["replicas"] = [*replicas, old] if old not in replicas else replicas
    text = json.dumps(data, indent=2) + "\n" if is_json else dump_toml(data)
    if not is_json and loads_toml(text) != data:
        raise ConfigError(str(path), ["the inventory could not be written back as the same TOML"])
    parse_inventory(json.loads(text) if is_json else loads_toml(text), source=str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        now = path.stat()
        same = (now.st_ino, now.st_size, now.st_mtime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        )
        if not same or path.read_bytes() != raw:
            return False
        os.replace(tmp, path)
        tmp = ""
    finally:
        if tmp:
            os.unlink(tmp)
    return True
