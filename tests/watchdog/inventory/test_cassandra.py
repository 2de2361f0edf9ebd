"""The Cassandra inventory against a real Cassandra 5.0 node and the real sandbox fleet.

The session's ``cassandra`` node is shared; every test works in a keyspace of its own. The test
that stops Cassandra mid-run starts a second, short-lived node of its own, so stopping it cannot
disturb the other tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.checks import settings_models
from bup_watchdog.cli import main
from bup_watchdog.config import CassandraConfig, Config
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import InventoryError
from bup_watchdog.inventory import cassandra as cassandra_inventory
from bup_watchdog.inventory.cassandra import CassandraInventory, CassandraSession, write_inventory
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Finding, Inventory, Project
from bup_watchdog.runner import Runner, inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sweep import sweep
from support.cassandra.node import CassandraNode, free_port
from support.cassandra_fixture import cassandra_toml, cql


def cassandra_config(
    fleet: SandboxFleet, node: CassandraNode, keyspace: str, state: Path | None = None
) -> Config:
    """The demo fleet's config with ``source = "cassandra"`` (written beside it: same keys)."""
    text = fleet.config_path.read_text(encoding="utf-8")
    assert 'source = "file"' in text
    text = text.replace('source = "file"', 'source = "cassandra"', 1)
    if state is not None:
        text = text.replace('directory = "state"', f'directory = "{state}"', 1)
    path = fleet.config_path.with_name(f"config-cassandra-{keyspace}.toml")
    path.write_text(text + "\n" + cassandra_toml(node, keyspace), encoding="utf-8")
    return load_config(path, settings_models())


def load_cli(config: Config, inventory_file: Path) -> str:
    """``bup-watchdog inventory load`` (keyspace created with one replica); its output."""
    assert config.path is not None
    result = CliRunner().invoke(
        main,
        [
            "inventory",
            "load",
            "--config",
            str(config.path),
            str(inventory_file),
            "--replication-factor",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def same_order(inventory: Inventory) -> dict[str, Project]:
    """Projects with their replicas sorted: the database keeps no replica order."""
    return {
        pid: dataclasses.replace(p, replicas=tuple(sorted(p.replicas)))
        for pid, p in inventory.projects.items()
    }


def finding_keys(findings: list[Finding]) -> set[tuple[Any, ...]]:
    return {(f.check, f.code, f.server_id, f.project_id, f.severity) for f in findings}


@pytest.fixture(scope="module")
def demo_in_cassandra(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, demo_config: Config
) -> Iterator[tuple[Config, str]]:
    """The demo fleet's inventory loaded into keyspace ``demo`` with the CLI; its config."""
    config = cassandra_config(demo_fleet, cassandra, "demo")
    assert demo_config.inventory.file is not None
    output = load_cli(config, demo_config.inventory.file)
    yield config, output


def test_the_demo_inventory_loaded_into_cassandra_reads_back_as_the_same_servers_and_projects(
    demo_in_cassandra: tuple[Config, str], demo_inventory: Inventory
) -> None:
    config, output = demo_in_cassandra
    assert "4 servers and 6 projects written to keyspace demo" in output
    assert "schema migrations applied: 1, 2, 3" in output
    source = CassandraInventory.from_config(config)
    try:
        got = source.load()
    finally:
        source.close()
    assert got.source == "cassandra"
    assert dict(got.servers) == dict(demo_inventory.servers)
    assert same_order(got) == same_order(demo_inventory)
    assert not source.skipped


def test_loading_the_same_inventory_again_changes_nothing_and_migrates_nothing(
    demo_in_cassandra: tuple[Config, str], demo_config: Config, demo_inventory: Inventory
) -> None:
    config, _ = demo_in_cassandra
    assert demo_config.inventory.file is not None
    output = load_cli(config, demo_config.inventory.file)
    assert "migrations" not in output
    source = CassandraInventory.from_config(config)
    try:
        assert same_order(source.load()) == same_order(demo_inventory)
    finally:
        source.close()


def test_the_protocol_version_is_negotiated_once_then_remembered(
    demo_in_cassandra: tuple[Config, str], caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = demo_in_cassandra
    negotiate = config.inventory.cassandra.model_copy(update={"protocol_version": None})
    source = CassandraInventory(negotiate)
    with caplog.at_level(logging.WARNING, logger="cassandra.cluster"):
        source.load()
        first = caplog.text.count("Downgrading core protocol version")
        caplog.clear()
        source.load()
    assert first >= 1  # the driver starts above what Cassandra 5.0 speaks, and steps down
    assert "Downgrading" not in caplog.text


def test_a_sweep_on_the_cassandra_inventory_finds_what_a_sweep_on_the_file_inventory_finds(
    demo_in_cassandra: tuple[Config, str], demo_config: Config, demo_inventory: Inventory
) -> None:
    config, _ = demo_in_cassandra
    by_file = sweep(demo_config, demo_inventory)
    runner = Runner(config, None, inventory_source(config))  # the configured source: Cassandra
    by_cassandra = runner.run_once(force=True)
    assert by_cassandra is not None
    assert by_cassandra.inventory.source == "cassandra"
    assert not by_cassandra.inventory.stale
    assert finding_keys(by_cassandra.findings) == finding_keys(by_file.findings)
    assert len(by_file.findings) >= 6


def test_rows_that_are_not_projects_are_skipped_and_counted_never_passed_on(
    cassandra: CassandraNode,
    demo_fleet: SandboxFleet,
    demo_inventory: Inventory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = cassandra_config(demo_fleet, cassandra, "bad_rows")
    db = CassandraSession(config.inventory.cassandra)
    with db:
        write_inventory(db, demo_inventory, replication_factor=1)
    master = next(iter(demo_inventory.servers))
    now = datetime.now(UTC)
    not_v4 = [uuid.uuid1(), uuid.UUID(int=0), uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")]
    no_location = uuid.uuid4()
    unknown_master = uuid.uuid4()
    bad_quota = uuid.uuid4()
    with cql(cassandra, "bad_rows") as session:
        put = session.prepare(
            "INSERT INTO projects (project_id, bup_location, bup_last_save, settings) "
            "VALUES (?, ?, ?, ?)"
        )
        for pid in not_v4:
            session.execute(put, (pid, uuid.UUID(master), {uuid.UUID(master): now}, None))
        session.execute(put, (no_location, None, None, None))
        session.execute(put, (unknown_master, uuid.uuid4(), None, None))
        session.execute(put, (bad_quota, uuid.UUID(master), None, {"disk": "lots"}))
    source = CassandraInventory.from_config(config)
    with caplog.at_level(logging.WARNING, logger="bup_watchdog.inventory.cassandra"):
        try:
            got = source.load()
        finally:
            source.close()
    for pid in (*not_v4, no_location, unknown_master):
        assert str(pid) not in got.projects
    assert got.projects[str(bad_quota)].disk_mb is None
    assert set(got.projects) == {*demo_inventory.projects, str(bad_quota)}
    assert source.skipped == {
        "projects whose id is not a version-4 UUID": 3,
        "projects without bup_location": 1,
        "projects mastered on an unknown server": 1,
        "disk quotas that are no size (ignored)": 1,
    }
    assert "skipped 1 disk quotas that are no size" in caplog.text
    assert "3 projects whose id is not a version-4 UUID" in caplog.text

    # A node older than 4.0 refuses the one-JSON-text-per-row select: the plain columns are read
    # instead, with the same projects and the same rows skipped.
    monkeypatch.setattr(cassandra_inventory, "SELECT_PROJECTS_FAST", "SELECT JSON no_such_column")
    plain = CassandraInventory.from_config(config)
    assert plain.load().projects == got.projects
    assert plain.skipped == source.skipped
    monkeypatch.undo()

    # A save time the driver cannot hold (past the year 9999) skips that project alone.
    far = uuid.uuid4()
    with cql(cassandra, "bad_rows") as session:
        session.execute(
            "INSERT INTO projects (project_id, bup_location, bup_last_save) "
            f"VALUES ({far}, {master}, {{{master}: 253402300800000}})"
        )
    again = CassandraInventory.from_config(config)
    assert again.load().projects == got.projects
    assert again.skipped["projects with a save time past the year 9999"] == 1


def test_inventory_load_sets_the_disk_quota_and_keeps_a_projects_other_settings(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, demo_inventory: Inventory
) -> None:
    config = cassandra_config(demo_fleet, cassandra, "settings")
    project = next(p for p in demo_inventory.projects.values() if p.disk_mb is not None)
    db = CassandraSession(config.inventory.cassandra)
    with db:
        write_inventory(db, demo_inventory, replication_factor=1)
        with cql(cassandra, "settings") as session:
            session.execute(
                "UPDATE projects SET settings = {'memory': '2000', 'disk': '1'} "
                f"WHERE project_id = {project.project_id}"
            )
        write_inventory(db, demo_inventory)
        with cql(cassandra, "settings") as session:
            row = session.execute(
                f"SELECT settings FROM projects WHERE project_id = {project.project_id}"
            ).one()
    assert dict(row.settings) == {"memory": "2000", "disk": str(project.disk_mb)}


def test_an_inventory_the_schema_cannot_hold_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    server = "11111111-1111-4111-8111-111111111111"
    other = "22222222-2222-4222-8222-222222222222"
    pid = "33333333-3333-4333-8333-333333333333"
    inventory = {
        "servers": [
            {"server_id": server, "host": "storage1.example", "port": 6000},
            {"server_id": other, "host": "10.0.0.2", "port": 6000},
        ],
        "projects": [{"project_id": pid, "master": server, "replicas": [other]}],
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    config = tmp_path / "config.toml"
    # Nothing listens there: the refusal must come before any connection is tried.
    config.write_text(
        f'[inventory]\nsource = "cassandra"\n[inventory.cassandra]\nport = {free_port()}\n'
    )
    result = CliRunner().invoke(main, ["inventory", "load", "--config", str(config), str(path)])
    assert result.exit_code == 3
    assert "host 'storage1.example' is not an IP address" in result.output
    assert f"At project {pid}: replicas ['{other}'] differ from the servers" in result.output
    assert "Traceback" not in result.output


def test_cassandra_that_does_not_answer_is_a_one_line_error_naming_the_node() -> None:
    port = free_port()  # nothing listens there
    source = CassandraInventory(CassandraConfig(port=port, connect_timeout=1))
    with pytest.raises(InventoryError) as err:
        source.load()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"Cassandra at 127.0.0.1:{port} (connecting): no node answered")
    assert "connection refused" in message.lower()
    assert not err.value.permanent


def test_a_keyspace_that_does_not_exist_is_a_permanent_error(cassandra: CassandraNode) -> None:
    source = CassandraInventory(
        CassandraConfig(port=cassandra.native_port, keyspace="no_such_keyspace", protocol_version=5)
    )
    with pytest.raises(InventoryError) as err:
        source.load()
    assert "no_such_keyspace" in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.permanent


def test_the_password_comes_from_the_password_file_and_a_missing_file_is_named(
    tmp_path: Path,
) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    config = CassandraConfig(username="bupwatch", password_file=Path("password"))
    provider = CassandraSession(config, base=tmp_path)._auth_provider()
    assert (provider.username, provider.password) == ("bupwatch", "s3cret")
    missing = CassandraConfig(username="bupwatch", password_file=tmp_path / "nope")
    with pytest.raises(InventoryError, match=r"password file .*nope: cannot read it"):
        CassandraSession(missing)._auth_provider()


def test_tls_is_on_with_a_ca_file_and_an_unreadable_one_is_a_permanent_error(
    tmp_path: Path,
) -> None:
    assert CassandraSession(CassandraConfig())._ssl_context() is None
    with pytest.raises(InventoryError) as err:
        CassandraSession(CassandraConfig(ca_file=tmp_path / "ca.pem"))._ssl_context()
    assert "Cassandra TLS files" in str(err.value) and err.value.permanent


def stale_gauge(state: Any, inventory: Inventory) -> float | None:
    registry = CollectorRegistry()
    registry.register(StateCollector(state, lambda: inventory.servers, list(check_registry())))
    return registry.get_sample_value("bupwatch_inventory_stale")


def test_cassandra_stopped_mid_run_means_the_cached_inventory_flagged_stale_then_recovery(
    demo_fleet: SandboxFleet, demo_inventory: Inventory, tmp_path: Path
) -> None:
    node = CassandraNode(tmp_path / "cassandra")  # our own: it is stopped and started again
    try:
        node.start()
        config = cassandra_config(demo_fleet, node, "fleet", state=tmp_path / "state")
        db = CassandraSession(config.inventory.cassandra)
        with db:
            write_inventory(db, demo_inventory, replication_factor=1)
        state = open_state(config)
        runner = Runner(config, state, inventory_source(config))

        up = load_inventory(runner.source, state)
        assert not up.stale
        assert stale_gauge(state, up) == 0.0

        node.stop()
        down = runner.run_once(only=("placement",), force=True)  # a sweep, on the cache
        assert down is not None
        assert down.inventory.stale and down.inventory.source == "cassandra"
        assert same_order(down.inventory) == same_order(demo_inventory)
        assert dict(down.inventory.servers) == dict(demo_inventory.servers)
        assert stale_gauge(state, down.inventory) == 1.0
        error = state.meta()["inventory_error"]
        assert f"127.0.0.1:{node.native_port}" in error and "\n" not in error

        node.start()  # same address, same data
        back = load_inventory(runner.source, state)
        assert not back.stale
        assert same_order(back) == same_order(demo_inventory)
        assert stale_gauge(state, back) == 0.0
    finally:
        node.stop()


def generated_inventory(projects: int, servers: int = 20, seed: int = 7) -> dict[str, Any]:
    """A fleet of ``servers`` hosts and ``projects`` projects (master + one replica each)."""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(servers)]
    base = datetime(2014, 6, 1, tzinfo=UTC)
    out: dict[str, Any] = {
        "servers": [
            {"server_id": sid, "name": f"s{i:02d}", "host": f"10.1.{i // 250}.{i % 250 + 1}"}
            | {"port": 6000, "dc": i % 2, "ssh_user": "root"}
            for i, sid in enumerate(ids)
        ],
        "projects": [],
    }
    for k in range(projects):
        m, r = k % servers, (k + 1 + (k // servers) % (servers - 1)) % servers
        saved = base + timedelta(seconds=rng.randrange(10**7))
        out["projects"].append(
            {
                "project_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "master": ids[m],
                "replicas": [ids[r]],
                "disk_mb": 3000,
                "last_edited": saved.isoformat(),
                "bup_last_save": {
                    ids[m]: saved.isoformat(),
                    ids[r]: (saved - timedelta(minutes=5)).isoformat(),
                },
            }
        )
    return out


def test_100000_projects_are_written_and_read_back_page_by_page(
    cassandra: CassandraNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 100_000
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(generated_inventory(n)))
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        '[inventory]\nsource = "cassandra"\n' + cassandra_toml(cassandra, "fleet100k")
    )
    config = load_config(config_path, settings_models())

    started = time.monotonic()
    output = load_cli(config, path)
    written = time.monotonic() - started
    assert f"20 servers and {n} projects written" in output

    source = CassandraInventory.from_config(config)
    try:
        started = time.monotonic()
        got = source.load()
        read = time.monotonic() - started
    finally:
        source.close()
    assert len(got.projects) == n and len(got.servers) == 20
    fetch = config.inventory.cassandra.fetch_size
    ranges = config.inventory.cassandra.read_ranges
    # The test node is Murmur3 (Cassandra's default): read as token ranges at once, each streamed
    # in pages, never at once (a range's last page may come back empty).
    assert ranges > 1 and source.last.ranges == ranges
    assert n // fetch <= source.last.pages <= n // fetch + 2 * ranges
    expected = FileInventory(path).load()
    some = random.Random(1).sample(sorted(expected.projects), 200)
    assert {p: got.projects[p] for p in some} == {p: expected.projects[p] for p in some}

    # The ranges hand the rows on in the table's own order: one scan gives the same inventory,
    # in the same order.
    one_scan = config.inventory.cassandra.model_copy(update={"read_ranges": 1})
    single = CassandraInventory(one_scan, default_user=config.ssh.user)
    try:
        scanned = single.load()
    finally:
        single.close()
    assert single.last.ranges == 1
    assert list(scanned.projects.items()) == list(got.projects.items())
    with capsys.disabled():
        print(
            f"\n[cassandra] node start {cassandra.start_seconds:.1f} s "
            f"(jar fetch {cassandra.fetch_seconds:.1f} s); "
            f"{n} projects: `inventory load` {written:.1f} s, CassandraInventory.load() "
            f"{read:.1f} s in {source.last.pages} pages of {fetch}"
        )
