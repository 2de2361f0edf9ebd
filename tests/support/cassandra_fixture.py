"""The ``cassandra`` session fixture: one real Cassandra 5.0 node for the whole test run.

Started once, on first use, from the cached Maven Central jars (``support/cassandra/node.py``
fetches them the first time); stopped cleanly at the end. Tests share the node but not its data:
each one works in a keyspace of its own (``cassandra_toml(node, keyspace)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from support.cassandra.node import CassandraNode


@pytest.fixture(scope="session")
def cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraNode]:
    """A running single-node Cassandra on 127.0.0.1 (``.native_port`` for CQL)."""
    node = CassandraNode(tmp_path_factory.mktemp("cassandra"))
    try:
        node.start()  # fetches the jars first when the cache has none (fetch_seconds)
        yield node
    finally:
        node.stop()


def cassandra_toml(node: CassandraNode, keyspace: str, **extra: Any) -> str:
    """An ``[inventory.cassandra]`` table pointing at ``node`` and ``keyspace``."""
    values: dict[str, Any] = {
        "hosts": [node.address],
        "port": node.native_port,
        "keyspace": keyspace,
        "protocol_version": 5,
        "connect_timeout": 3.0,
        **extra,
    }

    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        return repr(v)

    return "[inventory.cassandra]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in values.items())


@contextmanager
def cql(node: CassandraNode, keyspace: str | None = None) -> Iterator[Any]:
    """A plain driver session on ``node``, for tests that plant or inspect rows directly."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    cluster = Cluster(
        [node.address],
        port=node.native_port,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        },
    )
    try:
        yield cluster.connect(keyspace)
    finally:
        cluster.shutdown()
