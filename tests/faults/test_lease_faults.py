"""Leases left by a watchdog process that died (SIGKILL, a crash): at start, the daemon releases
those of this host's processes that are gone, in either backend, and nobody else's."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.cassandra_schema import migrate
from bup_watchdog.journal import Journal
from bup_watchdog.leases import CassandraLeases, LocalLeases
from bup_watchdog.state import State
from faults.recorder import Reliability
from support.cassandra.node import CassandraNode
from support.cassandra_fixture import cassandra_toml, cql


def gone_pid() -> int:
    """The pid of a process of this host that has exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("backend", ["local", "cassandra"])
def test_only_the_leases_of_gone_processes_of_this_host_are_released(
    backend: str, reliability: Reliability, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state = State(tmp_path / "state" / "state.db")
    leases: LocalLeases | CassandraLeases
    if backend == "cassandra":
        node: CassandraNode = request.getfixturevalue("cassandra")
        keyspace = f"faults_{secrets.token_hex(4)}"
        with cql(node) as session:
            migrate(session, keyspace, replication_factor=1)
        path = tmp_path / "config.toml"
        path.write_text(
            '[inventory]\nsource = "cassandra"\n'
            + cassandra_toml(node, keyspace)
            + '[guard]\nleases = "cassandra"\n'
        )
        leases = CassandraLeases.from_config(load_config(path, settings_models()))
    else:
        leases = LocalLeases(Journal(state))
    here = socket.gethostname()
    dead, alive = gone_pid(), os.getppid()
    holders = {
        "t-dead": f"{here}:{dead}",
        "t-alive": f"{here}:{alive}",
        "t-elsewhere": f"another-host:{dead}",
        "t-ours": f"{here}:{os.getpid()}",
    }
    try:
        for target, holder in holders.items():
            assert leases.acquire(target, holder, 600)
        released = leases.release_dead()
        left = {t: leases.holder(t) for t in holders}
    finally:
        leases.close()
        state.close()

    assert [t for t, _ in released] == ["t-dead"]
    assert left["t-dead"] is None
    for target in ("t-alive", "t-elsewhere", "t-ours"):
        assert (left[target] or "").startswith(holders[target]), (target, left[target])
    reliability.record(
        area="watchdog",
        what=f"leases left in the {backend} backend by a watchdog process that is gone (beside "
        "leases of a live process of this host, of another host, and of the caller)",
        expected="released at start (a conditional delete in Cassandra); every other lease kept",
        observed=f"released {[t for t, _ in released]}; kept {sorted(t for t in left if left[t])}",
        loss=None,
    )
