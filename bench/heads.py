"""What publishing shared heads costs (issue 21): N synthetic master heads written the way a
watchdog writes them after a sweep (``SharedHeads.publish``: UNLOGGED batches of one host's
partition, sent concurrently), then read back the way the replicas' watchdogs read them (one
prepared query per master host). Prints statements, batches, bytes and seconds per sweep.

Against a running node (``python tests/support/cassandra/node.py run`` prints its port), or one
started for the run when no ``--port`` is given:

    .venv/bin/python bench/heads.py --port 9042
    .venv/bin/python bench/heads.py --repos 100000 --hosts 50 --sweeps 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from bup_watchdog.checks.replication_lag import Head
from bup_watchdog.config import CassandraConfig
from bup_watchdog.inventory.cassandra import CassandraSession
from bup_watchdog.inventory.cassandra_schema import migrate
from bup_watchdog.inventory.cassandra_shared import SharedSession
from bup_watchdog.shared_heads import BATCH_ROWS, SharedHeads

KEYSPACE = "bench_heads"


def synthetic(repos: int, hosts: int, swept_at: float) -> dict[str, list[Head]]:
    """``repos`` heads spread evenly over ``hosts`` master hosts (v4 ids, 40-hex commit ids)."""
    sids = [str(uuid.uuid4()) for _ in range(hosts)]
    out: dict[str, list[Head]] = {sid: [] for sid in sids}
    for i in range(repos):
        sid = sids[i % hosts]
        sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        out[sid].append(Head(sid, str(uuid.uuid4()), sha, 1_700_000_000 + i, swept_at, ""))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, help="a running node's CQL port (else one is started)")
    ap.add_argument("--repos", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=50, help="master hosts the repos are spread on")
    ap.add_argument("--sweeps", type=int, default=3, help="publishes timed (the median is shown)")
    args = ap.parse_args(argv)

    with ExitStack() as stack:
        address, port = args.address, args.port
        if port is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from support.cassandra.node import CassandraNode

            node = CassandraNode(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            node.start()
            stack.callback(node.stop)
            address, port = node.address, node.native_port
            print(f"started Cassandra on {address}:{port} in {node.start_seconds:.1f} s")
        config = CassandraConfig(
            hosts=[address], port=port, keyspace=KEYSPACE, protocol_version=5, connect_timeout=5.0
        )
        db = CassandraSession(config)
        stack.callback(db.close)
        migrate(db.session(), KEYSPACE, replication_factor=1)
        heads = SharedHeads(SharedSession(db), "bench", ttl_seconds=900)

        times, published = [], None
        for _ in range(args.sweeps):
            batch = synthetic(args.repos, args.hosts, time.time())
            started = time.perf_counter()
            published = heads.publish(batch)
            times.append(time.perf_counter() - started)
            if published.errors:
                print(f"errors: {published.errors[:3]}", file=sys.stderr)
                return 1
        assert published is not None
        sids = list(batch)
        started = time.perf_counter()
        read = heads.read(sids)
        read_seconds = time.perf_counter() - started
        assert len(read) == args.repos, (len(read), args.repos)

    print(
        f"publish {published.rows:,} heads of {published.hosts} master hosts: "
        f"{published.batches:,} UNLOGGED batches of up to {BATCH_ROWS} rows "
        f"({published.rows:,} row writes, {published.bytes / 1e6:.1f} MB of bound values), "
        f"{statistics.median(times):.2f} s per sweep (median of {len(times)}: "
        f"{', '.join(f'{t:.2f}' for t in times)} s)"
    )
    print(
        f"read them back: {len(sids)} prepared queries (one per master host), "
        f"{len(read):,} heads in {read_seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
