"""Replication lag across watchdogs: three real daemons on the real Cassandra node share one fleet,
and the replica's watchdog judges it against the head its master's watchdog published.

The scratch fleet has one project mastered on s1 and replicated on s2. The member names are picked
so that rendezvous hashing gives s2 (the replica) to wd-a, s1 (the master) to wd-b, and s1 to wd-c
once wd-b is gone: wd-a never sweeps the master, it only reads its head from ``bupwatch_heads``.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
import tomllib
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from conftest import SCRATCH_P1
from prometheus_client import CollectorRegistry, generate_latest

from bup_watchdog.checks.replication_lag import Head, check, with_heads
from bup_watchdog.cli import main
from bup_watchdog.membership import owner
from bup_watchdog.metrics import StateCollector
from bup_watchdog.report import build_report, render
from bup_watchdog.report_members import members_view
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from support.cassandra.node import CassandraNode
from support.facts import (
    P1,
    P2,
    S1,
    S2,
    SHA_A,
    SHA_B,
    host_facts,
    host_records,
    inventory,
    project,
    repo,
)
from support.fleet import bup_save_on, git_out
from support.prometheus import WatchdogDaemon, poll, watchdog_config
from support.scrape import metrics, promtool_check_metrics, sample

P = SCRATCH_P1
KEYSPACE = "shared_heads"
SETTINGS = check.Settings()
T = 1_700_000_000
INTERVAL = 5.0  # sweep interval, s (the least the config allows)
HEADS_MAX_AGE = 11.0  # a published head is believed this long (rows live twice as long)
# Long enough to see wd-b's heads age out before its hosts move: wd-a's first sweep to end a second
# after they aged out (killed + 12 s) read the heads by killed + 17 s at worst; wd-c owns s1 and
# publishes its head no sooner than killed - heartbeat + ttl + a sweep, about killed + 23 s.
MEMBER_TTL = 24.0


def daemon_config(
    fleet: SandboxFleet, directory: Path, node: CassandraNode, **sections: Any
) -> Path:
    """The fleet's config for one daemon (own state and port) on the Cassandra inventory."""
    directory.mkdir(parents=True, exist_ok=True)
    cassandra = {
        "hosts": [node.address],
        "port": node.native_port,
        "keyspace": KEYSPACE,
        "protocol_version": 5,
        "connect_timeout": 3.0,
    }
    path, _ = watchdog_config(
        fleet,
        directory,
        inventory={"source": "cassandra", "cassandra": cassandra},
        guard={"leases": "cassandra"},
        **sections,
    )
    return path


def load_inventory(fleet: SandboxFleet, config: Path) -> None:
    """The fleet's inventory file into the keyspace (migrated first, schema 4 included)."""
    data = tomllib.loads(fleet.config_path.read_text())
    inventory_file = fleet.config_path.parent / data["inventory"]["file"]
    argv = ["inventory", "load", "--config", str(config), str(inventory_file)]
    result = CliRunner().invoke(main, [*argv, "--replication-factor", "1"])
    assert result.exit_code == 0, result.output


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


def names_for(s1: str, s2: str) -> tuple[str, str, str]:
    """Member names (a, b, c): a owns s2, b owns s1, and c owns s1 once b is gone."""
    for i in itertools.count():
        a, b, c = f"wd-a{i}", f"wd-b{i}", f"wd-c{i}"
        if (
            owner(s2, (a, b, c)) == a
            and owner(s1, (a, b, c)) == b
            and owner(s1, (a, c)) == c
            and owner(s2, (a, c)) == a
        ):
            return a, b, c
    raise AssertionError("unreachable")


def open_finding(state: Path, code: str, server_id: str) -> tuple[float, str] | None:
    """(first_seen, message) of the open replication_lag finding ``code`` on ``server_id``."""
    rows = read_state(
        state,
        "SELECT first_seen, message FROM findings WHERE check_name = 'replication_lag' "
        "AND code = ? AND server_id = ? AND project_id = ? AND resolved_at IS NULL",
        (code, server_id, P),
    )
    return (float(rows[0][0]), str(rows[0][1])) if rows else None


def meta(state: Path, key: str) -> Any:
    rows = read_state(state, "SELECT value FROM meta WHERE key = ?", (key,))
    return json.loads(rows[0][0]) if rows else None


def heads_after(state: Path, t: float) -> dict[str, Any] | None:
    """The shared-heads summary of the first sweep that ended after ``t``."""
    h = meta(state, "shared_heads")
    return h if h and h["at"] > t else None


def believing(state: Path, t: float, server_id: str) -> dict[str, Any] | None:
    """The summary of the first sweep after ``t`` that believed a head of ``server_id``."""
    h = heads_after(state, t)
    return h if h and server_id in h["believed"] else None


# ---------------------------------------------------------------- from recorded facts


def lag_codes(heads: list[Head], now: float) -> tuple[list[str], set[tuple[str, str]]]:
    """replication_lag on a sweep of S2 only (the replica), with ``heads`` of S1 published."""
    facts = {S2: host_facts(S2, host_records(repo(P1, master_sha=SHA_B, reflog_last_time=T)))}
    seen = with_heads(facts, heads, now, HEADS_MAX_AGE)
    inv = inventory(project(P1))
    found = list(check.evaluate(seen, inv, SETTINGS))
    return [f.code for f in found], set(check.unjudged(seen, inv, SETTINGS))


def test_a_fresh_published_head_judges_the_replica_and_a_stale_one_leaves_it_unjudged() -> None:
    head = Head(S1, P1, SHA_A, T + 6 * 3600, swept_at=1000.0, published_by="wd-b")
    assert lag_codes([head], now=1000.0 + HEADS_MAX_AGE) == (["behind"], set())
    assert lag_codes([head], now=1000.5 + HEADS_MAX_AGE) == ([], {(S2, P1)})
    assert lag_codes([], now=1000.0) == ([], {(S2, P1)})


def test_a_host_made_of_published_heads_is_never_judged_as_a_replica() -> None:
    # P2 is mastered on S2 (swept) and replicated on S1 (only heads published): no replica_missing.
    facts = {S2: host_facts(S2, host_records(repo(P2, master_sha=SHA_A, reflog_last_time=T)))}
    head = Head(S1, P1, SHA_A, T, swept_at=1000.0, published_by="wd-b")
    seen = with_heads(facts, [head], 1000.0, HEADS_MAX_AGE)
    inv = inventory(project(P2, master=S2, replicas=(S1,)))
    assert list(check.evaluate(seen, inv, SETTINGS)) == []
    assert set(check.unjudged(seen, inv, SETTINGS)) == set()


def test_ownership_is_a_promtool_clean_gauge_and_a_report_section(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    try:
        view = {
            "member": "wd-a",
            "at": 1000.0,
            "ttl_seconds": 30.0,
            "members": [
                {"id": "wd-a", "host": "a", "pid": 1, "heartbeat": 999.0, "self": True},
                {"id": "wd-b", "host": "b", "pid": 2, "heartbeat": 950.0, "self": False},
            ],
            "owners": {S1: "wd-b", S2: "wd-a"},
        }
        state.set_meta(membership=view)
        reg = CollectorRegistry()
        reg.register(StateCollector(state, dict, ["replication_lag"]))
        exposition = generate_latest(reg).decode()
        report = build_report(state, servers={}, now=1010.0)
    finally:
        state.close()
    assert promtool_check_metrics(exposition) == ""
    assert f'bupwatch_host_owned{{server_id="{S2}"}} 1.0' in exposition
    assert f'bupwatch_host_owned{{server_id="{S1}"}} 0.0' in exposition
    members = members_view(view, 1010.0)
    assert [m["heartbeat_age_seconds"] for m in members["members"]] == [1.0, 50.0]
    assert members["owned_by_none"] == [S1], "wd-b's heartbeat is older than the TTL"
    assert report["members"]["owned_by_none"] == [S1]
    html, md = render(report, "html"), render(report, "md")
    assert 'id="members"' in html and "wd-b" in html and "Owned by a watchdog" in html
    assert "## Watchdogs (2 live)" in md and f"stopped heartbeating (by nobody alive): {S1}" in md


# ---------------------------------------------------------------- three real watchdogs


def test_a_replica_is_judged_against_its_masters_published_head_and_unjudged_once_it_ages_out(
    cassandra: CassandraNode, scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")
    a, b, c = names_for(s1, s2)
    configs = {
        n: daemon_config(
            fleet,
            tmp_path / n,
            cassandra,
            schedule={"sweep_interval_seconds": INTERVAL, "jitter_seconds": 0},
            membership={
                "enabled": True,
                "ttl_seconds": MEMBER_TTL,
                "heartbeat_seconds": 2.0,
                "member_id": n,
                "heads_max_age_seconds": HEADS_MAX_AGE,
            },
        )
        for n in (a, b, c)
    }
    load_inventory(fleet, configs[a])
    state_a = tmp_path / a / "state"
    base_a = "http://" + tomllib.loads(configs[a].read_text())["http"]["listen"]
    daemons = {n: WatchdogDaemon(configs[n]) for n in (a, b, c)}

    def any_dead() -> str | None:
        return next((d for d in (w.dead() for w in daemons.values()) if d), None)

    def survivors_dead() -> str | None:
        return next((d for d in (daemons[n].dead() for n in (a, c)) if d), None)

    timings: dict[str, float] = {}
    try:
        # wd-a judges the replica in step, from wd-b's head of the master.
        start = time.time()
        first = poll(
            lambda: believing(state_a, start, s1),
            timeout=90,
            what=f"{a} believing {b}'s head of s1",
            alive=any_dead,
        )
        assert first["unjudged_replicas"] == 0, first
        assert open_finding(state_a, "behind", s2) is None
        members = httpx.get(f"{base_a}/api/members", timeout=10).json()
        owned = metrics(base_a)

        # 1. The master saves 6 h after the replica's newest save: the replica is 6 h behind.
        replica_time = int(git_out(fleet, "s2", P, "log", "-1", "--format=%ct", "master"))
        bup_save_on(fleet, "s1", P, replica_time + 6 * 3600, {"work/new.txt": "on the master\n"})
        fault = time.time()
        behind = poll(
            lambda: open_finding(state_a, "behind", s2),
            timeout=4 * INTERVAL + 30,
            what=f"{a} reporting the replica behind",
            alive=any_dead,
        )
        timings["behind"] = time.time() - fault

        # 2. The replica saves after the master's newest save: a conflict.
        bup_save_on(fleet, "s2", P, replica_time + 7 * 3600, {"work/other.txt": "on the replica\n"})
        fault = time.time()
        ahead = poll(
            lambda: open_finding(state_a, "replica_ahead", s2),
            timeout=4 * INTERVAL + 30,
            what=f"{a} reporting the replica ahead",
            alive=any_dead,
        )
        timings["ahead"] = time.time() - fault

        # 3. wd-b is killed: its head ages out, and wd-a holds the replica unjudged (the conflict
        # stays open) until wd-c owns s1 and publishes its head again.
        daemons[b].proc.kill()
        daemons[b].proc.wait()
        killed = time.time()
        # A sweep judges the heads' age at its checks and ends a little later ("at"): one that
        # ends a second after they aged out judged them aged out (wd-b's last head is older than
        # the kill), one that merely ends after it might have judged them a moment before.
        stale = poll(
            lambda: heads_after(state_a, killed + HEADS_MAX_AGE + 1.0),
            timeout=HEADS_MAX_AGE + 4 * INTERVAL + 30,
            what=f"{a} sweeping after {b}'s heads aged out",
            alive=survivors_dead,
        )
        timings["unjudged"] = time.time() - killed
        still = open_finding(state_a, "replica_ahead", s2)
        gap_members = httpx.get(f"{base_a}/api/members", timeout=10).json()
        again = poll(
            lambda: believing(state_a, killed, s1),
            timeout=MEMBER_TTL + 4 * INTERVAL + 40,
            what=f"{a} believing {c}'s head of s1",
            alive=survivors_dead,
        )
        timings["judged again"] = time.time() - killed
        judged = open_finding(state_a, "replica_ahead", s2)
    finally:
        codes = {n: d.stop() for n, d in daemons.items() if n != b}

    print(
        f"\nshared heads (sweep interval {INTERVAL:g} s, heads believed {HEADS_MAX_AGE:g} s, "
        f"member ttl {MEMBER_TTL:g} s): replica behind reported {timings['behind']:.1f} s after "
        f"the master's save; conflict reported {timings['ahead']:.1f} s after the replica's "
        f"save; after SIGKILL of the master's watchdog, unjudged at {timings['unjudged']:.1f} s, "
        f"judged again from the new owner's head at {timings['judged again']:.1f} s"
    )
    assert members["member"] == a
    assert members["owners"] == {s1: b, s2: a}
    assert {m["id"] for m in members["members"]} == {a, b, c}
    assert all(0 <= m["heartbeat_age_seconds"] < MEMBER_TTL for m in members["members"])
    assert sample(owned, "bupwatch_host_owned", server_id=s2) == 1
    assert sample(owned, "bupwatch_host_owned", server_id=s1) == 0
    assert "6.0 h behind the master" in behind[1]
    assert timings["behind"] <= 2 * INTERVAL + 15, "within two sweeps (and their own time)"
    assert "NEWER than the master" in ahead[1]
    assert timings["ahead"] <= 2 * INTERVAL + 15
    assert stale["believed"] == [] and stale["unjudged_replicas"] == 1, stale
    assert still == ahead, "an unjudged replica keeps its finding: never 'in step'"
    gap_b = next(m for m in gap_members["members"] if m["id"] == b)
    assert gap_b["heartbeat_age_seconds"] >= HEADS_MAX_AGE, gap_members
    assert again["unjudged_replicas"] == 0, again
    assert judged == ahead, "judged again from the head wd-c published: still the conflict"
    assert all(code == 0 for code in codes.values()), codes
    swept_by_a = {str(sid) for (sid,) in read_state(state_a, "SELECT server_id FROM hosts")}
    assert swept_by_a == {s2}, "the master's host is not wd-a's: it judged from the heads"
