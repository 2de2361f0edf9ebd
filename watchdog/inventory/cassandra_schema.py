"""Versioned schema migrations for the Cassandra keyspace the watchdog reads (and, when asked,
writes): the fleet's own 2014 tables where they are missing, then the watchdog's tables.

Applied migrations are recorded in ``bupwatch_schema_migrations``; each one is idempotent
(``IF NOT EXISTS``), so a migration interrupted half-way, or two watchdogs migrating at once, end
in the same schema. A keyspace that already holds the fleet's tables keeps them exactly as they
are: ``CREATE TABLE IF NOT EXISTS`` never alters an existing table.

CQL cannot bind identifiers: the keyspace name is validated (``^[a-z][a-z0-9_]{0,47}$``) and
filled into the ``{ks}`` of these constant statements; every value is a bound parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_KEYSPACE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
COMPONENT = "bupwatch"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# Never edit a released migration: add one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the fleet's tables (DESIGN §1), created only where missing",
        (
            "CREATE TABLE IF NOT EXISTS {ks}.storage_servers (dummy boolean, server_id uuid, "
            "host inet, port int, dc int, health float, secret varchar, experimental boolean, "
            "ssh map<int, varchar>, PRIMARY KEY (dummy, server_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.storage_topology (data_center varchar, "
            "host varchar, vnodes int, disabled boolean, PRIMARY KEY (data_center, host))",
            "CREATE TABLE IF NOT EXISTS {ks}.projects (project_id uuid PRIMARY KEY, "
            "bup_location uuid, bup_last_save map<uuid, timestamp>, bup_repo_size_kb int, "
            "bup_working_size_kb int, settings map<text, text>, last_edited timestamp, "
            "deleted boolean)",
            "CREATE TABLE IF NOT EXISTS {ks}.recently_modified_projects (ttl varchar, "
            "project_id uuid, dummy boolean, PRIMARY KEY (ttl, project_id))",
        ),
    ),
    Migration(
        2,
        "bupwatch_servers: how the watchdog reaches each storage server over SSH",
        (
            "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_servers (server_id uuid PRIMARY KEY, "
            "name text, ssh_host text, ssh_port int, ssh_user text, bup_root text, "
            "projects_root text, transport text)",
        ),
    ),
    Migration(
        3,
        "bupwatch_members, bupwatch_leases, bupwatch_fences: several watchdogs on one fleet",
        (
            # One row per live watchdog, written with a TTL at every heartbeat: a watchdog that
            # stops heartbeating disappears by itself (watchdog/membership.py).
            "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_members (id text PRIMARY KEY, host text, "
            "pid int, started timestamp, heartbeat timestamp)",
            # One row per repair target under repair, taken and released with lightweight
            # transactions, with a TTL renewed while the repair runs (watchdog/leases.py).
            "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_leases (target text PRIMARY KEY, "
            "holder text)",
            # One row per server fence_host fenced: the storage_servers.experimental it had
            # before, restored by un-fencing (watchdog/fences.py).
            "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_fences (server_id uuid PRIMARY KEY, "
            "previous_experimental boolean, fenced_by text, fenced_at timestamp, reason text)",
        ),
    ),
    Migration(
        4,
        "bupwatch_heads: each master copy's newest save, for the watchdogs judging its replicas",
        (
            # One partition per master host, one row per master copy swept, written in batches
            # with a TTL of a few sweep intervals (watchdog/shared_heads.py).
            "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_heads (server_id text, project_id text, "
            "master_sha text, saved_at bigint, swept_at timestamp, published_by text, "
            "PRIMARY KEY (server_id, project_id))",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

CREATE_KEYSPACE = (
    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
    "{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
)
CREATE_LEDGER = (
    "CREATE TABLE IF NOT EXISTS {ks}.bupwatch_schema_migrations (component text, version int, "
    "description text, applied_at timestamp, PRIMARY KEY (component, version))"
)
SELECT_APPLIED = "SELECT version FROM {ks}.bupwatch_schema_migrations WHERE component = ?"
RECORD_APPLIED = (
    "INSERT INTO {ks}.bupwatch_schema_migrations (component, version, description, applied_at) "
    "VALUES (?, ?, ?, ?)"
)


def checked_keyspace(keyspace: str) -> str:
    if not _KEYSPACE.fullmatch(keyspace):
        raise ValueError(f"{keyspace!r} is not a keyspace name this tool writes into statements")
    return keyspace


def applied_versions(session: Any, keyspace: str) -> set[int]:
    """Versions already recorded (the ledger table must exist)."""
    ks = checked_keyspace(keyspace)
    select = session.prepare(SELECT_APPLIED.format(ks=ks))
    return {int(row[0]) for row in session.execute(select, (COMPONENT,))}


def migrate(session: Any, keyspace: str, *, replication_factor: int | None = None) -> list[int]:
    """Bring ``keyspace`` to the latest schema; returns the versions applied now.

    With ``replication_factor``, a missing keyspace is created (SimpleStrategy, for a test or demo
    cluster); without it, a missing keyspace is an error: production keyspaces are made by their
    operators, with their data centres' replication.
    """
    ks = checked_keyspace(keyspace)
    if replication_factor is not None:
        rf = int(replication_factor)
        if not 1 <= rf <= 10:
            raise ValueError(f"replication factor {rf} is out of range (1-10)")
        session.execute(CREATE_KEYSPACE.format(ks=ks, rf=rf))
    session.execute(CREATE_LEDGER.format(ks=ks))
    done = applied_versions(session, ks)
    record = session.prepare(RECORD_APPLIED.format(ks=ks))
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        for statement in m.statements:
            session.execute(statement.format(ks=ks))
        session.execute(record, (COMPONENT, m.version, m.description, datetime.now(UTC)))
        applied.append(m.version)
    return applied
