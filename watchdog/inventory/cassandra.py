"""The fleet's inventory from Cassandra: the 2014 schema of DESIGN §1 (keyspace ``salvus``).

What is read, and how it maps onto ``Server`` and ``Project``:

- ``storage_servers`` (the rows of partition ``dummy = true``): ``server_id``; ``host`` (inet)
  and ``port`` are the ``bup_server`` address; ``dc``; ``experimental``. ``secret`` and ``health``
  are never read.
- ``storage_topology``: a server is ``disabled`` when a row for its data centre (``dc`` as text)
  and host (its address as text) says so; a row for the host in another data centre counts too.
- ``bupwatch_servers`` (the watchdog's own table, same keyspace, made by ``cassandra_schema``):
  how to reach a server over SSH — ``name``, ``ssh_host``, ``ssh_port``, ``ssh_user``,
  ``bup_root``, ``projects_root``, ``transport``. The 2014 schema has nothing for these (its
  ``ssh map<int,varchar>`` has no documented meaning, so it is left alone). A server without a
  row, or a keyspace without the table, gets the defaults: SSH to ``host`` port 22 as the
  configured user, ``/bup`` and ``/projects``. Every value goes through the same validation as the
  file inventory's, because these values end up in SSH connections and paths.
- ``projects``, streamed page by page (``fetch_size`` rows a page) with a prepared statement,
  as ``read_ranges`` token ranges read at once and handed on in the table's order
  (``cassandra_ranges``; one scan unless the partitioner is Murmur3):
  ``project_id``; master = ``bup_location``; **replicas = the keys of ``bup_last_save`` other than
  the master**, sorted. The schema has no replica list: ``bup_last_save`` is where the fleet's
  tooling recorded a save on each server, so it is the database's own account of where copies
  are (a replica that never received a save is invisible to the database, and to this source).
  ``bup_last_save`` itself is kept as the database's view of the newest save per server;
  ``settings['disk']`` (MB) is the quota; ``last_edited``; ``deleted``.

Rows that cannot be used are skipped and counted in ``skipped`` (and logged as one warning per
load), never passed on: project ids that are not version-4 UUIDs, projects without
``bup_location`` or mastered on a server the inventory does not have, servers without an address
or port or with invalid SSH details. A replica on an unknown server is dropped from the project
(counted). Every driver error becomes one ``InventoryError`` line naming the nodes and the cause.

Each ``load`` connects, reads and disconnects: a sweep every few minutes gains nothing from an
idle connection, and one left open while Cassandra is down has the driver retrying and logging in
the background. So the source recovers by itself at the first ``load`` after Cassandra answers
again, and the runner's cached inventory (flagged stale) covers the time between.

``write_inventory`` is the other direction (``bup-watchdog inventory load``): it upserts a file
inventory into these tables with prepared statements, refusing entries the schema cannot carry.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from bup_watchdog.config import CassandraConfig, Config
from bup_watchdog.errors import InventoryError
from bup_watchdog.inventory.cassandra_ranges import MURMUR3, pages_in_order, token_ranges
from bup_watchdog.inventory.cassandra_schema import checked_keyspace, migrate
from bup_watchdog.inventory.file import ServerEntry
from bup_watchdog.model import NOTHING, Inventory, Project, Server

#: A version-4 UUID as Cassandra writes one as text (lower case).
_V4_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class ProjectRow(msgspec.Struct, gc=False):
    """One row of SELECT_PROJECTS_FAST, as Cassandra writes it in JSON."""

    project_id: str
    bup_location: str | None = None
    bup_last_save: dict[str, datetime] | None = None
    disk: str | None = None
    last_edited: datetime | None = None
    deleted: bool | None = None


#: A project row as ``_project_rows`` hands it on: id, master, bup_last_save (None: a time past
#: the year 9999), settings['disk'], last_edited, deleted.
_NO_SAVES: dict[str, datetime] = {}  # never changed: a row without saves
_Row = tuple[str, str | None, dict[str, datetime] | None, str | None, datetime | None, Any]

log = logging.getLogger(__name__)

# Every statement, with {ks} for the keyspace. CQL cannot bind identifiers, so the validated
# keyspace name is filled in by ``CassandraSession.prepare`` alone; every value is a bound
# parameter. Tables are named with their keyspace: Cassandra 5.0 warns that prepared statements
# relying on ``USE <keyspace>`` are ambiguous.
SELECT_TABLE = (
    "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?"
)
SELECT_SERVERS = (
    "SELECT server_id, host, port, dc, experimental FROM {ks}.storage_servers WHERE dummy = ?"
)
SELECT_TOPOLOGY = "SELECT data_center, host, disabled FROM {ks}.storage_topology"
SELECT_SSH = (
    "SELECT server_id, name, ssh_host, ssh_port, ssh_user, bup_root, projects_root, transport "
    "FROM {ks}.bupwatch_servers"
)
# The projects as the reader wants them (Cassandra 4.0 or later): each row one JSON text that
# msgspec decodes into a ProjectRow (times aware), not the driver's objects (a UUID per id, and
# a map object for bup_last_save that looks each key up by serialising it again); of settings,
# only 'disk'. At 100,000 projects the driver's decoding drops from ~1.6 s of CPU to ~0.2 s, for
# ~0.3 s more on the node. A node that refuses it (older than 4.0) is read with SELECT_PROJECTS.
SELECT_PROJECTS_FAST = (
    "SELECT JSON project_id, bup_location, bup_last_save, settings['disk'] AS disk, "
    "last_edited, deleted FROM {ks}.projects"
)
SELECT_PROJECTS = (
    "SELECT project_id, bup_location, bup_last_save, settings, last_edited, deleted "
    "FROM {ks}.projects"
)
# Either, limited to one token range (see cassandra_ranges).
IN_RANGE = " WHERE token(project_id) > ? AND token(project_id) <= ?"
INSERT_SERVER = (
    "INSERT INTO {ks}.storage_servers (dummy, server_id, host, port, dc, experimental) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_TOPOLOGY = "INSERT INTO {ks}.storage_topology (data_center, host, disabled) VALUES (?, ?, ?)"
INSERT_SSH = (
    "INSERT INTO {ks}.bupwatch_servers (server_id, name, ssh_host, ssh_port, ssh_user, bup_root, "
    "projects_root, transport) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# settings['disk'] sets one key of the map: the project's other settings stay as they are.
UPDATE_PROJECT_WITH_DISK = (
    "UPDATE {ks}.projects SET bup_location = ?, bup_last_save = ?, settings['disk'] = ?, "
    "last_edited = ?, deleted = ? WHERE project_id = ?"
)
# move_project's switch: a lightweight transaction, applied only while the master is the old one.
SWITCH_MASTER = "UPDATE {ks}.projects SET bup_location = ? WHERE project_id = ? IF bup_location = ?"
UPDATE_PROJECT = (
    "UPDATE {ks}.projects SET bup_location = ?, bup_last_save = ?, last_edited = ?, deleted = ? "
    "WHERE project_id = ?"
)

#: Driver errors that mean "Cassandra (or the way to it) failed", as opposed to a bug of ours.
#: Filled on first use so that importing this module does not import the driver.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = ()


def _driver_errors() -> tuple[type[BaseException], ...]:
    global _DRIVER_ERRORS
    if not _DRIVER_ERRORS:
        from cassandra import DriverException
        from cassandra.cluster import NoHostAvailable
        from cassandra.connection import ConnectionException
        from cassandra.protocol import ErrorMessage  # server errors not mapped to the above

        _DRIVER_ERRORS = (
            DriverException,
            NoHostAvailable,
            ConnectionException,
            ErrorMessage,
            OSError,
        )
    return _DRIVER_ERRORS


def _one_line(text: str) -> str:
    return " ".join(text.split())


def plain_cause(exc: BaseException) -> str:
    """A driver exception as a short sentence for an operator."""
    import errno

    from cassandra import (
        AuthenticationFailed,
        InvalidRequest,
        OperationTimedOut,
        Timeout,
        Unauthorized,
        Unavailable,
        UnresolvableContactPoints,
    )
    from cassandra.cluster import NoHostAvailable
    from cassandra.protocol import ErrorMessage

    if isinstance(exc, NoHostAvailable):
        errors = exc.errors or {}
        if not errors:
            return "no node answered"
        return (
            "no node answered ("
            + "; ".join(f"{host}: {plain_cause(e)}" for host, e in errors.items())
            + ")"
        )
    if isinstance(exc, UnresolvableContactPoints):
        return "no contact point resolves to an address (check hosts and DNS)"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, OperationTimedOut):
        return "timed out waiting for an answer"
    if isinstance(exc, AuthenticationFailed):
        return f"login refused ({_one_line(str(exc))})"
    if isinstance(exc, Unauthorized):
        return f"not allowed ({_one_line(str(exc))})"
    if isinstance(exc, Unavailable):
        return (
            f"not enough replicas alive for consistency {exc.consistency} "
            f"({exc.alive_replicas} of {exc.required_replicas})"
        )
    if isinstance(exc, Timeout):
        return (
            f"replicas did not answer in time for consistency {exc.consistency} "
            f"({exc.received_responses} of {exc.required_responses})"
        )
    if isinstance(exc, InvalidRequest | ErrorMessage):
        # 'Error from server: code=2200 [Invalid query] message="Keyspace x does not exist"'
        text = str(exc)
        if 'message="' in text:
            text = text.split('message="', 1)[1].rstrip('"')
        return f"refused: {_one_line(text)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or _one_line(str(exc))})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(f"{type(exc).__name__}: {exc}") or type(exc).__name__


def _permanent(exc: BaseException) -> bool:
    from cassandra import AuthenticationFailed, InvalidRequest, Unauthorized

    return isinstance(exc, AuthenticationFailed | Unauthorized | InvalidRequest)


def _refused(exc: BaseException) -> bool:
    """True when every node refused a statement as invalid (as opposed to failing)."""
    from cassandra import InvalidRequest
    from cassandra.cluster import NoHostAvailable
    from cassandra.protocol import SyntaxException

    if isinstance(exc, NoHostAvailable):
        errors = list((exc.errors or {}).values())
        return bool(errors) and all(_refused(e) for e in errors)
    return isinstance(exc, InvalidRequest | SyntaxException)


def _resolve(base: Path | None, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() or base is None else base / p


class CassandraSession:
    """The one seam to Cassandra: a driver ``Cluster`` + ``Session`` built from the config.

    ``failed`` turns a driver error into an ``InventoryError`` line and drops the connection, so
    the next call connects afresh instead of waiting on the driver's own reconnection.
    """

    def __init__(self, config: CassandraConfig, *, base: Path | None = None) -> None:
        self.config = config
        self.base = base
        self.keyspace = checked_keyspace(config.keyspace)
        self._cluster: Any = None
        self._session: Any = None
        self._prepared: dict[str, Any] = {}
        # The protocol version the cluster settled on at the first connection: later connections
        # start there instead of stepping down again (the driver warns at every step).
        self._protocol_version: int | None = config.protocol_version

    @property
    def where(self) -> str:
        return ", ".join(f"{h}:{self.config.port}" for h in self.config.hosts)

    def _auth_provider(self) -> Any:
        c = self.config
        if not c.username:
            return None
        from cassandra.auth import PlainTextAuthProvider

        path = _resolve(self.base, c.password_file)
        assert path is not None  # the config requires it with a username
        try:
            password = path.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            cause = getattr(exc, "strerror", None) or "empty or not text"
            raise InventoryError(
                f"Cassandra password file {path}: cannot read it ({cause})", permanent=True
            ) from None
        return PlainTextAuthProvider(username=c.username, password=password)

    def _ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        ca = _resolve(self.base, c.ca_file)
        if ca is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(ca))
            cert, key = _resolve(self.base, c.cert_file), _resolve(self.base, c.key_file)
            if cert is not None and key is not None:
                context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise InventoryError(
                f"Cassandra TLS files: {plain_cause(exc)} ({ca})", permanent=True
            ) from None
        context.check_hostname = c.check_hostname
        return context

    def _connect(self) -> Any:
        if self._session is not None:
            return self._session
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import (
            ConstantReconnectionPolicy,
            DCAwareRoundRobinPolicy,
            TokenAwarePolicy,
        )
        from cassandra.query import tuple_factory

        c = self.config
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c.local_dc)),
            consistency_level=ConsistencyLevel.name_to_value[c.consistency.upper()],
            request_timeout=c.request_timeout,
            row_factory=tuple_factory,
        )
        kwargs: dict[str, Any] = {}
        if self._protocol_version is not None:
            kwargs["protocol_version"] = self._protocol_version
        cluster = Cluster(
            list(c.hosts),
            port=c.port,
            auth_provider=self._auth_provider(),
            ssl_context=self._ssl_context(),
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=c.connect_timeout,
            control_connection_timeout=c.connect_timeout,
            reconnection_policy=ConstantReconnectionPolicy(2.0, max_attempts=None),
            schema_metadata_enabled=False,  # the whole schema of a big cluster: not needed
            **kwargs,
        )
        self._cluster = cluster
        self._session = cluster.connect()
        self._protocol_version = cluster.protocol_version
        return self._session

    def prepare(self, template: str) -> Any:
        """A statement template (``{ks}`` = the keyspace), prepared once per connection."""
        stmt = self._prepared.get(template)
        if stmt is None:
            stmt = self.session().prepare(template.format(ks=self.keyspace))
            stmt.fetch_size = self.config.fetch_size
            self._prepared[template] = stmt
        return stmt

    def session(self) -> Any:
        """The driver session, connected first if needed."""
        return self._connect()

    def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared.clear()
        if cluster is not None:
            cluster.shutdown()

    def failed(self, exc: BaseException, doing: str) -> InventoryError:
        """The error to raise for a driver failure; the connection is dropped."""
        self.close()
        return InventoryError(
            f"Cassandra at {self.where} ({doing}): {plain_cause(exc)}", permanent=_permanent(exc)
        )

    def __enter__(self) -> CassandraSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- reading


def _utc(t: datetime) -> datetime:
    """A time from the database, in UTC when it came without a zone (as Cassandra stores it)."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _aware(t: datetime | None) -> datetime | None:
    return None if t is None else _utc(t)


def _disk_mb(raw: str | None) -> tuple[int | None, bool]:
    """settings['disk'] in MB; (value, True) when there is a value that is no size."""
    if raw is None or raw.strip() == "":
        return None, False
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        return None, True
    return (value, False) if value >= 0 else (None, True)


@dataclass
class LoadStats:
    """What the last ``load`` read and skipped (by reason)."""

    servers: int = 0
    projects: int = 0
    pages: int = 0
    ranges: int = 0  # token ranges read at once (1: one scan)
    seconds: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)


def _pages(session: Any, stmt: Any) -> Iterator[list[Any]]:
    """The rows of ``stmt``, a page (fetch_size rows) at a time, so a table of any size streams
    through; the next page is requested before this one is handed out, so Cassandra reads it
    while the caller works on this one."""
    future = session.execute_async(stmt)
    while True:
        page = future.result().current_rows
        more = future.has_more_pages
        if more:
            future.start_fetching_next_page()
        yield page
        if not more:
            return


class CassandraInventory:
    """Inventory from Cassandra (see the module docstring for the mapping)."""

    name = "cassandra"

    def __init__(
        self,
        config: CassandraConfig,
        *,
        default_user: str = "root",
        base: Path | None = None,
    ) -> None:
        self.config = config
        self.default_user = default_user
        self.db = CassandraSession(config, base=base)
        self.last = LoadStats()

    @classmethod
    def from_config(cls, config: Config) -> CassandraInventory:
        base = config.path.parent if config.path is not None else None
        return cls(config.inventory.cassandra, default_user=config.ssh.user, base=base)

    @property
    def skipped(self) -> Counter[str]:
        """Rows skipped by the last load, by reason."""
        return self.last.skipped

    def close(self) -> None:
        self.db.close()

    def load(self) -> Inventory:
        started = time.monotonic()
        stats = LoadStats()
        doing = "connecting"
        try:
            self.db.session()
            doing = "reading storage_servers"
            servers = self._servers(stats)
            doing = "reading projects"
            projects = dict(self._projects(servers, stats))
        except _driver_errors() as exc:
            raise self.db.failed(exc, doing) from None
        finally:
            self.db.close()
        stats.servers, stats.projects = len(servers), len(projects)
        stats.seconds = time.monotonic() - started
        self.last = stats
        if stats.skipped:
            log.warning(
                "Cassandra inventory: skipped %s",
                ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items())),
            )
        return Inventory(
            servers=servers, projects=projects, source=self.name, loaded_at=time.time()
        )

    def set_master(self, project_id: str, old: str, new: str) -> bool:
        """``projects.bup_location = new`` only while it is ``old`` (LWT, serial LOCAL_SERIAL).

        The old master stays a replica: replicas are the keys of ``bup_last_save``, where its
        saves are recorded. A timeout leaves the outcome unknown: raised as an InventoryError
        that says so (the operator reads ``bup_location``), never guessed.
        """
        from cassandra import ConsistencyLevel

        doing = f"switching the master of {project_id} (outcome unknown if this timed out)"
        try:
            bound = self.db.prepare(SWITCH_MASTER).bind(
                (uuid.UUID(new), uuid.UUID(project_id), uuid.UUID(old))
            )
            bound.serial_consistency_level = ConsistencyLevel.LOCAL_SERIAL
            return bool(self.db.session().execute(bound).was_applied)
        except _driver_errors() as exc:
            raise self.db.failed(exc, doing) from None
        finally:
            self.db.close()

    # -- servers

    def _has_table(self, table: str) -> bool:
        stmt = self.db.prepare(SELECT_TABLE)
        return self.db.session().execute(stmt, (self.db.keyspace, table)).one() is not None

    def _servers(self, stats: LoadStats) -> dict[str, Server]:
        session = self.db.session()
        rows = session.execute(self.db.prepare(SELECT_SERVERS), (True,))
        disabled_at: dict[tuple[str, str], bool] = {}
        for dc, host, disabled in session.execute(self.db.prepare(SELECT_TOPOLOGY)):
            disabled_at[(str(dc), str(host))] = bool(disabled)
        ssh: dict[str, tuple[Any, ...]] = {}
        if self._has_table("bupwatch_servers"):
            for row in session.execute(self.db.prepare(SELECT_SSH)):
                ssh[str(row[0])] = row[1:]
        servers: dict[str, Server] = {}
        for server_id, host, port, dc, experimental in rows:
            sid = str(server_id)
            if host is None or port is None:
                stats.skipped["servers without host or port"] += 1
                continue
            host, dc = str(host), int(dc or 0)
            disabled = disabled_at.get((str(dc), host))
            if disabled is None:
                disabled = any(d for (_, h), d in disabled_at.items() if h == host)
            name, ssh_host, ssh_port, ssh_user, bup_root, projects_root, transport = ssh.get(
                sid, (None,) * 7
            )
            entry: dict[str, Any] = {
                "server_id": sid,
                "host": host,
                "port": port,
                "dc": dc,
                "experimental": bool(experimental),
                "disabled": disabled,
                "ssh_host": ssh_host,
                "ssh_port": ssh_port,
                "ssh_user": ssh_user,
                "bup_root": bup_root,
                "projects_root": projects_root,
                "name": name,
                "transport": transport,
            }
            try:
                s = ServerEntry.model_validate({k: v for k, v in entry.items() if v is not None})
            except ValidationError as exc:
                err = exc.errors()[0]
                log.warning(
                    "Cassandra inventory: server %s skipped: %s: %s",
                    sid,
                    ".".join(str(p) for p in err["loc"]),
                    err["msg"],
                )
                stats.skipped["servers with invalid details"] += 1
                continue
            servers[s.server_id] = s.server(self.default_user)
        return servers

    # -- projects

    def _scan(self, template: str, stats: LoadStats) -> Iterator[list[Any]]:
        """The projects table's pages in token order: ``read_ranges`` token ranges read at once
        when the cluster's partitioner is Murmur3, else one scan."""
        session = self.db.session()
        n = self.config.read_ranges
        if n > 1 and session.cluster.metadata.partitioner == MURMUR3:
            stmt = self.db.prepare(template + IN_RANGE)
            scans = [stmt.bind(bounds) for bounds in token_ranges(n)]
        else:
            scans = [self.db.prepare(template)]
        stats.ranges = len(scans)
        for page in pages_in_order(partial(_pages, session), scans):
            stats.pages += 1
            yield page

    def _project_rows(self, stats: LoadStats) -> Iterator[_Row]:
        """The projects table's rows as ``_Row``s (ids as text, times aware), read with
        SELECT_PROJECTS_FAST where the node takes it, SELECT_PROJECTS where not."""
        try:
            self.db.prepare(SELECT_PROJECTS_FAST)
            fast = True
        except _driver_errors() as exc:
            if not _refused(exc):  # Cassandra failing, not a node older than 4.0
                raise
            fast = False
        if not fast:
            for page in self._scan(SELECT_PROJECTS, stats):
                for project_id, location, last_save, settings, last_edited, deleted in page:
                    yield (
                        str(project_id),
                        None if location is None else str(location),
                        {str(k): v.replace(tzinfo=UTC) for k, v in (last_save or {}).items()},
                        (settings or {}).get("disk"),
                        last_edited,
                        deleted,
                    )
            return
        decode = msgspec.json.Decoder(ProjectRow).decode
        for page in self._scan(SELECT_PROJECTS_FAST, stats):
            for (text,) in page:
                try:
                    r = decode(text)
                except msgspec.ValidationError:  # a time past the year 9999: "+10000-…"
                    raw = msgspec.json.decode(text)
                    yield raw["project_id"], raw["bup_location"], None, None, None, None
                    continue
                yield (
                    r.project_id,
                    r.bup_location,
                    r.bup_last_save or _NO_SAVES,
                    r.disk,
                    r.last_edited,
                    r.deleted,
                )

    def _projects(
        self, servers: dict[str, Server], stats: LoadStats
    ) -> Iterator[tuple[str, Project]]:
        skipped = stats.skipped
        # Server ids as the inventory holds them: one string shared by every project that names
        # the server (300,000 fewer strings at 100,000 projects); so is one replicas tuple per
        # set of replicas, and NOTHING for a project without a recorded save.
        known = {s.server_id.lower(): s.server_id for s in servers.values()}
        tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        v4 = _V4_LOWER.fullmatch
        for pid, location, last_save, disk_raw, last_edited, deleted in self._project_rows(stats):
            if not v4(pid):
                skipped["projects whose id is not a version-4 UUID"] += 1
                continue
            if location is None:
                skipped["projects without bup_location"] += 1
                continue
            master = known.get(location)
            if master is None:
                skipped["projects mastered on an unknown server"] += 1
                continue
            if last_save is None:
                skipped["projects with a save time past the year 9999"] += 1
                continue
            saves: Mapping[str, datetime] = (
                {known.get(k) or k: _utc(when) for k, when in last_save.items()}
                if last_save
                else NOTHING
            )
            replicas = []
            for sid in sorted(saves):
                if sid == master:
                    continue
                if sid in servers:
                    replicas.append(sid)
                else:
                    skipped["replicas on an unknown server (dropped)"] += 1
            shared = tuple(replicas)
            shared = tuples.setdefault(shared, shared)
            disk, bad_disk = _disk_mb(disk_raw)
            if bad_disk:
                skipped["disk quotas that are no size (ignored)"] += 1
            pid = sys.intern(pid)  # the facts from the hosts name it by this same string
            yield (
                pid,
                Project.of(
                    pid,
                    master,
                    shared,
                    disk,
                    _aware(last_edited),
                    saves,
                    bool(deleted),
                    shared=tuples,
                ),
            )


# ---------------------------------------------------------------- writing


def unrepresentable(inventory: Inventory) -> list[str]:
    """Why entries of a (file) inventory cannot be stored in the 2014 schema, one line each."""
    problems = []
    for s in inventory.servers.values():
        try:
            ipaddress.ip_address(s.host)
        except ValueError:
            problems.append(
                f"At server {s.server_id} ({s.label}): host {s.host!r} is not an IP address "
                "(storage_servers.host is an inet)"
            )
    for p in inventory.projects.values():
        saved = set(p.bup_last_save) - {p.master}
        wanted = set(p.replicas) - {p.master}
        if saved != wanted:
            problems.append(
                f"At project {p.project_id}: replicas {sorted(wanted)} differ from the servers "
                f"in bup_last_save {sorted(saved)} (other than the master); the database knows a "
                "replica only by its last save"
            )
    return problems


@dataclass
class WriteStats:
    servers: int = 0
    projects: int = 0
    migrations: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _chunks(items: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_inventory(
    db: CassandraSession,
    inventory: Inventory,
    *,
    replication_factor: int | None = None,
    concurrency: int = 16,
    batch: int = 10,
) -> WriteStats:
    """Upsert ``inventory`` into the keyspace (schema migrated first); nothing is deleted.

    Servers go to storage_servers (dummy = true), storage_topology (data centre = dc as text) and
    bupwatch_servers; projects to projects, where only bup_location, bup_last_save,
    settings['disk'], last_edited and deleted are written (other settings keys stay).

    Projects go ``batch`` to an UNLOGGED batch, ``concurrency`` batches in flight: at 20,000
    projects a tenth of the client's CPU (0.65 s, not 5.1 s) and a third of the node's (1.5 s,
    not 4.5 s) of one statement each. Ten rows (~2.7 KiB) stay under the node's warnings about
    batches (more than 10 partitions, more than 5 KiB), so nothing is logged on the cluster;
    160 rows in flight (256 single statements before) keep a loaded node within its write timeout.
    """
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    problems = unrepresentable(inventory)
    if problems:
        raise InventoryError(
            "the inventory cannot be stored in Cassandra:\n"
            + "\n".join(f"  {p}" for p in problems),
            permanent=True,
        )
    started = time.monotonic()
    stats = WriteStats()
    doing = "migrating the schema"
    try:
        session = db.session()
        stats.migrations = migrate(session, db.keyspace, replication_factor=replication_factor)
        doing = "writing servers"
        put_server = db.prepare(INSERT_SERVER)
        put_topology = db.prepare(INSERT_TOPOLOGY)
        put_ssh = db.prepare(INSERT_SSH)
        for s in inventory.servers.values():
            sid = uuid.UUID(s.server_id)
            session.execute(put_server, (True, sid, s.host, s.port, s.dc, s.experimental))
            session.execute(put_topology, (str(s.dc), s.host, s.disabled))
            session.execute(
                put_ssh,
                (
                    sid,
                    s.name,
                    s.ssh_host,
                    s.ssh_port,
                    s.ssh_user,
                    s.bup_root,
                    s.projects_root,
                    s.transport,
                ),
            )
            stats.servers += 1
        doing = "writing projects"
        with_disk = db.prepare(UPDATE_PROJECT_WITH_DISK)
        without_disk = db.prepare(UPDATE_PROJECT)

        def rows(disk: bool) -> Iterator[tuple[Any, ...]]:
            for p in inventory.projects.values():
                if (p.disk_mb is not None) != disk:
                    continue
                saves = {uuid.UUID(k): v for k, v in p.bup_last_save.items()}
                head: tuple[Any, ...] = (uuid.UUID(p.master), saves)
                if disk:
                    head += (str(p.disk_mb),)
                yield (*head, p.last_edited, p.deleted, uuid.UUID(p.project_id))

        def batches(stmt: Any, chunk: list[tuple[Any, ...]]) -> Iterator[tuple[Any, None]]:
            for i in range(0, len(chunk), batch):
                b = BatchStatement(batch_type=BatchType.UNLOGGED)
                for values in chunk[i : i + batch]:
                    b.add(stmt, values)
                yield b, None

        for stmt, disk in ((with_disk, True), (without_disk, False)):
            for chunk in _chunks(rows(disk), 10_000):
                for ok, result in execute_concurrent(
                    session,
                    batches(stmt, chunk),
                    concurrency=concurrency,
                    raise_on_first_error=True,
                ):
                    if not ok:  # pragma: no cover - raise_on_first_error raises instead
                        raise result
                stats.projects += len(chunk)
    except _driver_errors() as exc:
        raise db.failed(exc, doing) from None
    stats.seconds = time.monotonic() - started
    return stats
