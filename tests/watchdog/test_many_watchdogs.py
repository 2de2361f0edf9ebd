"""Several watchdogs on one fleet (DESIGN §8), against the real Cassandra node and the real fleets.

Every test works in a keyspace of its own on the session's Cassandra node, loaded with
``bup-watchdog inventory load`` from the fleet's own inventory file. The watchdogs are real:
``bup-watchdog run`` subprocesses (each with its own state directory and port), or processes
that drive the real guard; leases and membership go through Cassandra.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from starlette.testclient import TestClient

from bup_watchdog.checks import settings_models
from bup_watchdog.cli import main
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.http.app import create_app
from bup_watchdog.inventory.cassandra import CassandraInventory
from bup_watchdog.leases import CassandraLeases, Renewing
from bup_watchdog.membership import Membership, assignment
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Inventory
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import Runner, inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.cassandra.node import CassandraNode
from support.cassandra_fixture import cql
from support.prometheus import WatchdogDaemon, free_port, poll, watchdog_config

TESTS = Path(__file__).parents[1]


def cassandra_section(node: CassandraNode, keyspace: str, **extra: Any) -> dict[str, Any]:
    return {
        "hosts": [node.address],
        "port": node.native_port,
        "keyspace": keyspace,
        "protocol_version": 5,
        "connect_timeout": 3.0,
        **extra,
    }


def cassandra_config(
    fleet: SandboxFleet,
    directory: Path,
    node: CassandraNode,
    keyspace: str,
    **sections: dict[str, Any],
) -> Path:
    """A copy of the fleet's config in ``directory`` (own state, own port) on the Cassandra
    inventory, with Cassandra leases."""
    directory.mkdir(parents=True, exist_ok=True)
    guard = {"leases": "cassandra", **sections.pop("guard", {})}
    path, _ = watchdog_config(
        fleet,
        directory,
        inventory={"source": "cassandra", "cassandra": cassandra_section(node, keyspace)},
        guard=guard,
        **sections,
    )
    return path


def member_sections(name: str, ttl: float, interval: float) -> dict[str, dict[str, Any]]:
    """A [membership] member named ``name`` sweeping every ``interval`` s (heartbeat 1.5 s)."""
    return {
        "schedule": {"sweep_interval_seconds": interval, "jitter_seconds": 0},
        "membership": {
            "enabled": True,
            "ttl_seconds": ttl,
            "heartbeat_seconds": 1.5,
            "member_id": name,
        },
    }


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def load_inventory_into_cassandra(fleet: SandboxFleet, config: Path) -> None:
    data = tomllib.loads(fleet.config_path.read_text())
    inventory_file = fleet.config_path.parent / data["inventory"]["file"]
    cli(
        "inventory",
        "load",
        "--config",
        str(config),
        str(inventory_file),
        "--replication-factor",
        "1",
    )


def member_configs(
    fleet: SandboxFleet,
    directory: Path,
    node: CassandraNode,
    keyspace: str,
    names: Iterable[str],
    ttl: float,
    interval: float,
) -> dict[str, Path]:
    """One config per member name (own state directory and port, [membership] on), all in one
    keyspace, and the fleet's inventory loaded into it."""
    configs = {
        name: cassandra_config(
            fleet, directory / name, node, keyspace, **member_sections(name, ttl, interval)
        )
        for name in names
    }
    load_inventory_into_cassandra(fleet, next(iter(configs.values())))
    return configs


def guard_for(config_path: Path) -> Guard:
    config = load_config(config_path, settings_models())
    state = open_state(config)
    return Guard(config, state, load_inventory(inventory_source(config), state))


def read_state(state_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a daemon's state database, read-only, while the daemon writes it."""
    path = state_dir / "state.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def hosts_of(state_dir: Path) -> dict[str, float]:
    """Server id -> when it was last gathered, from a watchdog's hosts table."""
    return {
        str(s): float(t)
        for s, t in read_state(state_dir, "SELECT server_id, gathered_at FROM hosts")
    }


# ---------------------------------------------------------------- migration


def test_inventory_migrate_creates_the_watchdogs_tables_once_then_has_nothing_to_apply(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = cassandra_config(demo_fleet, tmp_path, cassandra, "migrate_only")
    missing = CliRunner().invoke(main, ["inventory", "migrate", "--config", str(config)])
    assert missing.exit_code == 3
    assert "refused: Keyspace 'migrate_only' doesn't exist" in missing.output

    first = cli("inventory", "migrate", "--config", str(config), "--replication-factor", "1")
    again = cli("inventory", "migrate", "--config", str(config))

    assert "keyspace migrate_only" in first and "schema version 4 (applied 1, 2, 3, 4)" in first
    assert "schema version 4 (nothing to apply)" in again
    with cql(cassandra) as session:
        tables = {
            row.table_name
            for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                ["migrate_only"],
            )
        }
    assert {"bupwatch_members", "bupwatch_leases", "bupwatch_fences", "bupwatch_heads"} <= tables


# ---------------------------------------------------------------- leases


def test_a_cassandra_lease_is_exclusive_expires_by_its_ttl_and_stays_while_it_is_renewed(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    path = cassandra_config(demo_fleet, tmp_path, cassandra, "leases")
    cli("inventory", "migrate", "--config", str(path), "--replication-factor", "1")
    config = load_config(path, settings_models())
    a, b = CassandraLeases.from_config(config), CassandraLeases.from_config(config)
    try:
        # exclusive (a TTL long enough that a slow, loaded node cannot expire it meanwhile)
        assert a.acquire("t1", "watchdog-a:1", 60)
        assert not b.acquire("t1", "watchdog-b:2", 60)
        b.release("t1", "watchdog-b:2")  # not b's lease: nothing happens
        assert (a.holder("t1") or "").startswith("watchdog-a:1#")
        a.release("t1", "watchdog-a:1")

        assert a.acquire("t3", "watchdog-a:1", 1)
        time.sleep(2.1)  # TTL 1 s (Cassandra counts whole seconds)
        assert a.holder("t3") is None
        assert b.acquire("t3", "watchdog-b:2", 5), "an expired lease is free"

        kept = Renewing(a)
        assert kept.acquire("t2", "watchdog-a:1", 3)  # renewed every second
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            assert not b.acquire("t2", "watchdog-b:2", 5), "a renewed lease outlives its TTL"
            time.sleep(0.3)
        kept.release("t2", "watchdog-a:1")
        assert kept.renewals >= 5 and kept.lost == 0
        assert b.acquire("t2", "watchdog-b:2", 5), "a released lease is free at once"
    finally:
        a.close()
        b.close()


def test_a_repair_is_refused_with_a_lease_reason_when_cassandra_does_not_answer(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    path, _ = watchdog_config(
        demo_fleet,
        tmp_path,
        inventory={
            "cassandra": {"hosts": ["127.0.0.1"], "port": free_port(), "connect_timeout": 2.0}
        },
        guard={"leases": "cassandra"},
    )
    guard = guard_for(path)  # the inventory is the file; only the leases need Cassandra
    try:
        h1 = demo_fleet.server_id("h1")  # refused before anything runs: the demo fleet stays
        decision = guard.submit(RepairRequest("restart_bup_server", h1), execute=True)
    finally:
        guard.state.close()
    assert decision.status == "refused"
    assert decision.message.startswith(f"lease: cannot take the lease on {h1}: Cassandra at")
    assert "(taking the lease): no node answered" in decision.message


# ---------------------------------------------------------------- fence_host writes through


def experimental(cassandra: CassandraNode, keyspace: str, server_id: str) -> Any:
    """(storage_servers.experimental, ("recorded", previous) or None) of one server."""
    with cql(cassandra, keyspace) as session:
        row = session.execute(
            "SELECT experimental FROM storage_servers WHERE dummy = true AND server_id = %s",
            [uuid.UUID(server_id)],
        ).one()
        fence = session.execute(
            "SELECT previous_experimental FROM bupwatch_fences WHERE server_id = %s",
            [uuid.UUID(server_id)],
        ).one()
    return row.experimental, (None if fence is None else ("recorded", fence.previous_experimental))


def test_fence_host_on_the_cassandra_inventory_sets_experimental_and_unfence_restores_the_old_value(
    cassandra: CassandraNode, scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    ks = "fences"
    path_a = cassandra_config(scratch_fleet, tmp_path / "a", cassandra, ks)
    path_b = cassandra_config(scratch_fleet, tmp_path / "b", cassandra, ks)
    load_inventory_into_cassandra(scratch_fleet, path_a)
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    with cql(cassandra, ks) as session:  # s2's flag was never set: null, not false
        session.execute(
            "UPDATE storage_servers SET experimental = null WHERE dummy = true AND server_id = %s",
            [uuid.UUID(s2)],
        )
    host = scratch_fleet.hosts["s2"]
    assert host.run(["umount", host.projects_root]).returncode == 0
    a, b = guard_for(path_a), guard_for(path_b)
    try:
        fenced = a.submit(RepairRequest("fence_host", s2), execute=True)
        after_fence = experimental(cassandra, ks, s2)
        seen_by_others = CassandraInventory.from_config(b.config).load().servers[s2].experimental
        # A second watchdog (no fence of its own) fences again: the first record is kept.
        again = b.submit(RepairRequest("fence_host", s2), execute=True)
        after_again = experimental(cassandra, ks, s2)

        host.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=64m,mode=755",
                "sandbox-projects-s2",
                host.projects_root,
            ],
            check=True,
        )
        unfence = RepairRequest("fence_host", s2, params={"unfence": True})
        lifted = a.submit(unfence, execute=True)
        after_unfence = experimental(cassandra, ks, s2)
        lifted_b = b.submit(unfence, execute=True)  # its own fence; nothing left in Cassandra
        after_both = experimental(cassandra, ks, s2)
        a_entries = {e.id: e for e in a.journal.entries()}
        b_entries = {e.id: e for e in b.journal.entries()}
        local_a, local_b = a.journal.overrides(), b.journal.overrides()
    finally:
        a.state.close()
        b.state.close()

    assert fenced.status == "succeeded", fenced.message
    assert [step["command"].split()[0] for step in fenced.plan] == ["set-override", "cassandra-set"]
    assert after_fence == (True, ("recorded", None))
    assert seen_by_others is True
    assert "storage_servers.experimental is True in Cassandra" in fenced.message
    assert again.status == "succeeded", again.message
    assert after_again == (True, ("recorded", None)), "never records the fence's own true"
    assert "a fence was recorded already; its previous value null is kept" in (
        b_entries[again.entry_id].output or ""
    )
    assert lifted.status == "succeeded", lifted.message
    assert after_unfence == (None, None), "the old null is back, and the record is gone"
    assert "experimental restored to null" in (a_entries[lifted.entry_id].output or "")
    assert lifted_b.status == "succeeded", lifted_b.message
    assert "no fence of" in (b_entries[lifted_b.entry_id].output or "")
    assert after_both == (None, None)
    assert experimental(cassandra, ks, s1) == (False, None)
    assert "fenced" not in local_a.get(s2, {}) and "fenced" not in local_b.get(s2, {})


# ---------------------------------------------------------------- three watchdogs


def test_three_watchdogs_check_every_host_exactly_once_and_a_killed_ones_hosts_move_within_a_ttl(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    ks, ttl, interval = "three_watchdogs", 6.0, 5.0
    names = ("wd-a", "wd-b", "wd-c")
    configs = member_configs(demo_fleet, tmp_path, cassandra, ks, names, ttl, interval)
    servers = sorted(h.server_id for h in demo_fleet.hosts.values())
    states = {name: tmp_path / name / "state" for name in names}
    daemons = {name: WatchdogDaemon(configs[name]) for name in names}
    with cql(cassandra, ks) as session:

        def members() -> set[str]:
            return {row.id for row in session.execute("SELECT id FROM bupwatch_members")}

        def any_dead() -> str | None:
            return next((d for d in (w.dead() for w in daemons.values()) if d), None)

        try:
            poll(
                lambda: True if members() == set(names) else None,
                timeout=60,
                what="three members",
                alive=any_dead,
            )
            joined = time.time()
            owners = assignment(servers, names)
            share = {n: {s for s, o in owners.items() if o == n} for n in names}

            def settled() -> dict[str, dict[str, float]] | None:
                tables = {n: hosts_of(states[n]) for n in names}
                for n in names:
                    if set(tables[n]) != share[n]:
                        return None
                    if any(t <= joined for t in tables[n].values()):
                        return None
                return tables

            poll(settled, timeout=40, what="each host swept by its owner alone", alive=any_dead)
            window = time.time()
            # A whole sweep interval more: every host is gathered again, by its owner alone.

            def swept_again() -> dict[str, dict[str, float]] | None:
                t = settled()
                return t if t and all(v > window for n in names for v in t[n].values()) else None

            poll(swept_again, timeout=30, what="a second round of sweeps", alive=any_dead)
            sweeps = {
                n: [
                    int(h)
                    for (h,) in read_state(
                        states[n], "SELECT hosts FROM sweeps WHERE started >= ?", (window,)
                    )
                ]
                for n in names
            }

            # SIGKILL the watchdog with the most hosts: no goodbye, its row has to expire.
            victim = max(names, key=lambda n: (len(share[n]), n))
            survivors = [n for n in names if n != victim]
            daemons[victim].proc.kill()
            daemons[victim].proc.wait()
            killed = time.time()
            gone_at: list[float] = []

            def picked_up() -> dict[str, str] | None:
                if not gone_at and victim not in members():
                    gone_at.append(time.time())
                got = {
                    sid: n
                    for n in survivors
                    for sid, t in hosts_of(states[n]).items()
                    if t > killed
                }
                return got if share[victim] <= set(got) else None

            got = poll(
                picked_up,
                timeout=ttl + interval + 30,
                what=f"{victim}'s hosts to be picked up",
                interval=0.2,
                alive=lambda: next((d for d in (daemons[n].dead() for n in survivors) if d), None),
            )
            failover = time.time() - killed
            expired = gone_at[0] - killed if gone_at else float("nan")
            print(
                f"\nmany watchdogs: shares {[len(share[n]) for n in names]} of {len(servers)} "
                f"hosts; SIGKILL {victim} ({len(share[victim])} hosts): its member row expired "
                f"after {expired:.1f} s, its hosts swept by the others after {failover:.1f} s "
                f"(ttl {ttl:g} s, heartbeat 1.5 s, sweep interval {interval:g} s)"
            )
        finally:
            codes = {n: d.stop() for n, d in daemons.items()}
        left = members()

    for n in names:
        # every sweep of the window gathered exactly its share (a watchdog owning none: none)
        assert set(sweeps[n]) == ({len(share[n])} if share[n] else set()), (n, sweeps, share)
    assert set().union(*share.values()) == set(servers)
    new_owners = assignment(servers, survivors)
    assert {sid: got[sid] for sid in share[victim]} == {
        sid: new_owners[sid] for sid in share[victim]
    }
    assert failover <= ttl + interval + 8, f"failover took {failover:.1f} s"
    assert all(codes[n] == 0 for n in survivors), codes
    assert left == set(), "a watchdog stopped with SIGTERM leaves the members at once"


def pair_owning_all(servers: list[str]) -> tuple[tuple[str, str], str, str]:
    """Two member names whose rendezvous hashing gives every server to one: (pair, owner, idle)."""
    pair = next(
        (f"wd-{i}", f"wd-{i + 1}")
        for i in range(10_000)
        if len(set(assignment(servers, [f"wd-{i}", f"wd-{i + 1}"]).values())) == 1
    )
    [owner] = set(assignment(servers, list(pair)).values())
    [idle] = [n for n in pair if n != owner]
    return pair, owner, idle


def test_a_watchdog_that_owns_no_server_is_ready_on_standby(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """Two watchdogs whose rendezvous hashing gives every server to one: the other has nothing
    to sweep, and its /ready said 503 "waiting for the first sweep" for as long as that lasted
    (a load balancer or an orchestrator took it for broken)."""
    servers = sorted(h.server_id for h in demo_fleet.hosts.values())
    standby = (200, "standby: the other watchdogs own every server now")
    pair, owner, idle = pair_owning_all(servers)
    ks = "standby_watchdog"
    configs = member_configs(demo_fleet, tmp_path, cassandra, ks, pair, ttl=6.0, interval=5.0)
    urls = {n: "http://" + tomllib.loads(configs[n].read_text())["http"]["listen"] for n in pair}
    daemons = {n: WatchdogDaemon(configs[n]) for n in pair}

    def any_dead() -> str | None:
        return next((d for d in (w.dead() for w in daemons.values()) if d), None)

    def answers(name: str) -> tuple[int, str] | None:
        try:
            r = httpx.get(f"{urls[name]}/ready", timeout=2)
        except httpx.HTTPError:
            return None
        return r.status_code, r.json()["status"]

    try:
        with cql(cassandra, ks) as session:
            poll(
                lambda: (
                    {r.id for r in session.execute("SELECT id FROM bupwatch_members")} >= set(pair)
                    or None
                ),
                timeout=60,
                what="both members",
                alive=any_dead,
            )
        joined = time.time()

        def settled() -> dict[str, tuple[int, str]] | None:
            """The idle one on standby, the owner has swept every server since both joined."""
            got = {n: answers(n) for n in pair}
            swept = hosts_of(tmp_path / owner / "state")
            if got[idle] != standby or got[owner] is None:
                return None
            if set(swept) != set(servers) or min(swept.values()) <= joined:
                return None
            return {n: a for n, a in got.items() if a is not None}

        got = poll(settled, timeout=60, what="the idle one on standby", alive=any_dead)
        exported = httpx.get(f"{urls[idle]}/metrics", timeout=5).text
        idle_swept = hosts_of(tmp_path / idle / "state")
    finally:
        for d in daemons.values():
            d.stop()

    assert got[idle] == standby, got
    assert "\nbupwatch_standby 1.0\n" in exported  # BupWatchSweepStale stays quiet for it
    assert got[owner] == (200, "ready"), got
    # Before both had joined each swept alone (owning everything); not since.
    assert all(t <= joined + 1.0 for t in idle_swept.values()), (idle_swept, joined)


# ---------------------------------------------------------------- lease contention


def test_100_concurrent_requests_to_restart_one_bup_server_from_three_processes_run_it_once(
    cassandra: CassandraNode, scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    ks = "contention"
    s1 = scratch_fleet.server_id("s1")
    data = tomllib.loads(scratch_fleet.config_path.read_text())
    command = data["repairs"]["restart_bup_server"]["command"]
    slow = ["sh", "-c", 'sleep 3; exec "$@"', "restart", *command]  # a restart that takes 3 s
    configs = [
        cassandra_config(
            scratch_fleet,
            tmp_path / f"p{i}",
            cassandra,
            ks,
            guard={"lease_seconds": 2.0},  # renewed every 0.7 s while the restart runs
            repairs={"restart_bup_server": {"command": slow}},
        )
        for i in range(3)
    ]
    load_inventory_into_cassandra(scratch_fleet, configs[0])
    scratch_fleet.hosts["s1"].stop_bup_server()
    counts = [34, 33, 33]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "support.lease_contender",
                str(c),
                "restart_bup_server",
                s1,
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"},
        )
        for c, n in zip(configs, counts, strict=True)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            if p.stdout.readline().strip() != "ready":
                raise AssertionError(f"a contender failed to start:\n{p.stderr.read()[-3000:]}")
        start = time.time() + 0.5
        outs = []
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start}\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
        took = time.time() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    decisions = [tuple(d) for o in outs for d in o["decisions"]]
    statuses = Counter(status for status, _ in decisions)
    refusals = [message for status, message in decisions if status == "refused"]
    journal = [
        row
        for c in configs
        for row in read_state(c.parent / "state", "SELECT status, started_at, refusal FROM journal")
    ]
    started = [row for row in journal if row[1] is not None]
    held = sum(1 for r in refusals if "is being repaired by" in r)
    print(
        f"\nlease contention: {len(decisions)} requests from 3 processes in {took:.1f} s: "
        f"{dict(statuses)}; refused {held} as held by another, {len(refusals) - held} as "
        f"undecided; lease renewals during the run: {sum(o['renewals'] for o in outs)}"
    )
    assert len(decisions) == 100 and len(journal) == 100
    assert statuses["succeeded"] == 1, decisions
    assert len(refusals) == 99 and all(r.startswith("lease:") for r in refusals), refusals
    assert len(started) == 1 and started[0][0] == "succeeded"
    assert sum(o["renewals"] for o in outs) >= 2, "the lease was renewed while the restart ran"
    running = subprocess.run(
        ["pgrep", "-f", str(scratch_fleet.hosts["s1"].bup_server_script)],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(running) == 1, "bup_server was started exactly once"


def test_standby_holds_through_the_next_inventory_load_and_ends_when_the_owner_leaves(
    cassandra: CassandraNode, demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """The standby flag was reset at the start of every sweep turn and said again after the
    inventory load: a scrape or /ready during the load (Cassandra: tens of ms each turn) saw a
    standby member as an ordinary one, and BupWatchSweepStale could fire for it. The runner is
    driven in process so that the flag is read exactly while the real inventory loads."""
    servers = sorted(h.server_id for h in demo_fleet.hosts.values())
    pair, owner, idle = pair_owning_all(servers)
    ks = "standby_turns"
    paths = member_configs(demo_fleet, tmp_path, cassandra, ks, pair, ttl=60.0, interval=5.0)
    config = load_config(paths[idle], settings_models())
    state = open_state(config)
    real = inventory_source(config)
    during_load: list[object] = []

    class Watched:
        """The real Cassandra inventory, noting the standby flag each time it is loaded."""

        name = real.name

        def load(self) -> Inventory:
            during_load.append(state.meta().get("standby"))
            return real.load()

    others = Membership.from_config(load_config(paths[owner], settings_models()))
    mine = Membership.from_config(config)
    app = TestClient(create_app(CollectorRegistry(), state))
    exported = CollectorRegistry()
    exported.register(StateCollector.for_config(config, state, lambda: {}))
    try:
        assert others.heartbeat() and mine.heartbeat()
        runner = Runner(config, state, Watched(), membership=mine)
        assert runner.run_once(force=True) is None  # nothing is this one's
        assert runner.run_once(force=True) is None
        assert during_load == [None, True], "standby is kept while the next inventory loads"
        assert app.get("/ready").json()["status"].startswith("standby")
        assert "\nbupwatch_standby 1.0\n" in generate_latest(exported).decode()

        others.leave()  # the owner stops: every server is this one's at the next turn
        result = runner.run_once(force=True)
        assert result is not None and set(result.facts) == set(servers)
        assert state.meta()["standby"] is False
        assert "\nbupwatch_standby 0.0\n" in generate_latest(exported).decode()
        assert app.get("/ready").status_code == 200

        state.set_meta(standby=True)  # left behind by a run with [membership]; now without it
        Runner(config, state, real)
        assert state.meta()["standby"] is False, "a watchdog without members is never standby"
    finally:
        mine.leave()
        others.close()
        mine.close()
        state.close()
