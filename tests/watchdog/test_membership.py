"""Rendezvous hashing (who watches which host) and the hand-over in the state: pure, no Cassandra.

The watchdogs never talk to each other about the assignment: each computes it from the member
list alone, so it must be a function of the names only — the same in every process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import parse_config
from bup_watchdog.errors import ConfigError
from bup_watchdog.membership import assignment, hand_over, owner
from bup_watchdog.model import Finding, Severity
from bup_watchdog.state import State

SERVERS = [str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(2000)]
MEMBERS = ["wd-dc0-a", "wd-dc0-b", "wd-dc1-a", "wd-dc1-b", "wd-dc2-a"]


def test_every_server_has_exactly_one_owner_among_the_members() -> None:
    owners = assignment(SERVERS, MEMBERS)
    assert set(owners) == set(SERVERS)
    assert set(owners.values()) <= set(MEMBERS)
    shares = {m: {s for s, o in owners.items() if o == m} for m in MEMBERS}
    assert sum(len(s) for s in shares.values()) == len(SERVERS)  # disjoint and covering
    assert set().union(*shares.values()) == set(SERVERS)


def test_the_servers_are_shared_out_about_evenly() -> None:
    counts = Counter(assignment(SERVERS, MEMBERS).values())
    fair = len(SERVERS) / len(MEMBERS)
    assert all(0.8 * fair < counts[m] < 1.2 * fair for m in MEMBERS), counts


def test_the_order_of_the_member_list_does_not_matter() -> None:
    assert assignment(SERVERS, MEMBERS) == assignment(SERVERS, list(reversed(MEMBERS)))


def test_removing_a_member_moves_only_its_own_servers() -> None:
    before = assignment(SERVERS, MEMBERS)
    gone = "wd-dc1-a"
    after = assignment(SERVERS, [m for m in MEMBERS if m != gone])
    moved = {s for s in SERVERS if before[s] != after[s]}
    assert moved == {s for s in SERVERS if before[s] == gone}
    assert all(after[s] != gone for s in SERVERS)


def test_adding_a_member_moves_only_servers_to_it() -> None:
    before = assignment(SERVERS, MEMBERS)
    after = assignment(SERVERS, [*MEMBERS, "wd-new"])
    moved = {s for s in SERVERS if before[s] != after[s]}
    assert moved and all(after[s] == "wd-new" for s in moved)
    assert 0.5 * len(SERVERS) / 6 < len(moved) < 1.5 * len(SERVERS) / 6


def test_the_assignment_is_the_same_in_other_processes_whatever_their_hash_seed() -> None:
    program = (
        "import json, sys\n"
        "from watchdog.membership import assignment\n"
        "servers, members = json.load(sys.stdin)\n"
        "print(json.dumps(assignment(servers, members), sort_keys=True))\n"
    )
    here = json.dumps(assignment(SERVERS, MEMBERS), sort_keys=True)
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps([SERVERS, MEMBERS]),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert done.stdout.strip() == here


def test_a_single_member_owns_everything_and_no_member_is_an_error() -> None:
    assert set(assignment(SERVERS[:50], ["alone"]).values()) == {"alone"}
    with pytest.raises(ValueError, match="no live member"):
        owner(SERVERS[0], [])


def test_handing_over_forgets_the_hosts_and_closes_their_findings_but_not_the_guards(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    mine, theirs = SERVERS[0], SERVERS[1]
    with state.transaction() as db:
        for sid in (mine, theirs):
            db.execute(
                "INSERT INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (sid, 1.0, 0.1, 1, None, None, 0, 0, 0, 1, 1, "{}"),
            )
    for sid, check in ((mine, "mount_sanity"), (theirs, "mount_sanity"), (theirs, "guard")):
        state.raise_finding(Finding(check, sid, Severity.CRITICAL, "planted", code="x"))

    assert hand_over(state, {theirs, SERVERS[2]}) == [theirs]
    assert hand_over(state, {theirs}) == []  # nothing left to forget: no write

    hosts = {r[0] for r in state.query("SELECT server_id FROM hosts")}
    open_ = {(f.server_id, f.check) for f in state.open_findings()}
    state.close()
    assert hosts == {mine}
    assert open_ == {(mine, "mount_sanity"), (theirs, "guard")}


def test_membership_needs_cassandra_leases_and_a_heartbeat_below_the_ttl() -> None:
    base = {"inventory": {"source": "file", "file": "inventory.toml"}}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "membership": {"enabled": True}}, settings_models())
    assert "At 'guard.leases': must be 'cassandra' when membership.enabled" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(
            {**base, "membership": {"ttl_seconds": 10, "heartbeat_seconds": 10}}, settings_models()
        )
    assert "heartbeat_seconds must be below ttl_seconds" in str(err.value)
    ok = parse_config(
        {**base, "membership": {"enabled": True}, "guard": {"leases": "cassandra"}},
        settings_models(),
    )
    assert (ok.membership.ttl_seconds, ok.membership.heartbeat_seconds) == (30.0, 10.0)
