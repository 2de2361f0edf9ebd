"""Benchmark: loading a file inventory of N projects, as the daemon does at each sweep's start.

Writes a synthetic inventory the way the sandbox fleet writes its own (``[[servers]]`` and
``[[projects]]`` tables: master, one replica, disk quota, last edit, a save time per copy) as TOML
and as JSON, then times ``FileInventory(path).load()`` in a fresh child process per run (so the
parse cache and the previous run's garbage play no part) and prints the median of the runs, every
run, its CPU time, the parse and validation parts, and the child's peak RSS after the load. The
load average (1 min) is printed beside the figures: the machine is shared.

``--cassandra`` adds the Cassandra inventory: a test node is started from the cached jars
(``tests/support/cassandra/node.py``), the same inventory is written into it with
``write_inventory`` (what ``bup-watchdog inventory load`` does; timed, with the node's CPU) and
``CassandraInventory.load()`` is timed in a fresh child per run, with the CPU time of the child
and of the node (a shared machine stretches the wall time; the CPU times are what the load
costs). Its "parse s" column is the node's CPU time, which on a node just written to includes
its flushes and compactions (at 100,000 projects ~4.5 s there, ~1.7 s on a settled node).

Run from the repository:  .venv/bin/python bench/inventory_load.py [--projects 100000] [--runs 3]
                          [--formats toml json cassandra]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The child: one load, timed in parts; prints one JSON line.
CHILD = r"""
import gc, json, sys, time, tomllib
from pathlib import Path
from bup_watchdog.inventory import file
from bup_watchdog.inventory.file import FileInventory, parse_inventory
loads_toml = getattr(file, "loads_toml", tomllib.loads)
path = Path(sys.argv[1])
t0, c0 = time.perf_counter(), time.process_time()
inv = FileInventory(path).load()
total, cpu = time.perf_counter() - t0, time.process_time() - c0
# VmHWM, the high-water mark of this process's own memory: ru_maxrss would start at the
# parent's size, which a forked child inherits (the parent holds the synthetic data).
status = Path("/proc/self/status").read_text().split("\n")
rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
n = len(inv.projects)
del inv
gc.collect()
raw = path.read_bytes()
t0 = time.perf_counter()
data = json.loads(raw) if path.suffix == ".json" else loads_toml(raw.decode())
parse = time.perf_counter() - t0
t0 = time.perf_counter()
parse_inventory(data, source=str(path))
validate = time.perf_counter() - t0
out = {"total": total, "cpu": cpu, "parse": parse, "validate": validate, "rss_mb": rss, "n": n}
print(json.dumps(out))
"""

# The Cassandra child: one CassandraInventory.load(); prints one JSON line.
CASSANDRA_CHILD = r"""
import json, sys, time
from pathlib import Path
from bup_watchdog.config import CassandraConfig
from bup_watchdog.inventory.cassandra import CassandraInventory
config = CassandraConfig(hosts=["127.0.0.1"], port=int(sys.argv[1]), keyspace=sys.argv[2],
                         protocol_version=5, request_timeout=60, read_ranges=int(sys.argv[3]))
t0, c0 = time.perf_counter(), time.process_time()
inv = CassandraInventory(config).load()
total, cpu = time.perf_counter() - t0, time.process_time() - c0
status = Path("/proc/self/status").read_text().split("\n")
rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps({"total": total, "cpu": cpu, "rss_mb": rss, "n": len(inv.projects)}))
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cassandra_runs(
    node: object,
    data: dict[str, list[dict[str, object]]],
    n: int,
    runs: int,
    env: dict[str, str],
    read_ranges: list[int],
) -> None:
    """Write ``data`` into a keyspace of ``node``, then time ``runs`` loads per ``read_ranges``
    setting, the settings interleaved run by run; prints a line for the write and one per
    setting."""
    import time

    from bup_watchdog.config import CassandraConfig
    from bup_watchdog.inventory.cassandra import CassandraSession, write_inventory
    from bup_watchdog.inventory.file import FileInventory

    pid, port = node.pid, node.native_port  # type: ignore[attr-defined]
    keyspace = f"bench{n}"
    config = CassandraConfig.model_validate(
        {"hosts": ["127.0.0.1"], "port": port, "keyspace": keyspace, "protocol_version": 5}
    )
    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-cassandra-") as tmp:
        path = Path(tmp) / "inventory.json"
        write(data, path)
        inventory = FileInventory(path).load()
    load = os.getloadavg()[0]
    t0, c0, j0 = time.perf_counter(), time.process_time(), _cpu_seconds(pid)
    with CassandraSession(config) as db:
        write_inventory(db, inventory, replication_factor=1)
    wall, cpu, node_cpu = time.perf_counter() - t0, time.process_time() - c0, _cpu_seconds(pid) - j0
    print(
        f"{n:>9} {'write':>6} {'':>6} {f'{wall:.2f}':>30} {cpu:>6.2f} {node_cpu:>8.2f} "
        f"{'':>10} {'':>11} {load:>8.2f}",
        flush=True,
    )
    by: dict[int, list[dict[str, float]]] = {k: [] for k in read_ranges}
    loads: dict[int, list[float]] = {k: [] for k in read_ranges}
    for _ in range(runs):
        for k in read_ranges:
            loads[k].append(os.getloadavg()[0])
            j0 = _cpu_seconds(pid)
            out = subprocess.run(
                [sys.executable, "-c", CASSANDRA_CHILD, str(port), keyspace, str(k)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            got = json.loads(out.stdout.splitlines()[-1])
            by[k].append({**got, "node": _cpu_seconds(pid) - j0})
            assert got["n"] == n, got
    for k in read_ranges:
        _cassandra_line(n, f"cass.{k}", by[k], loads[k])


def _cassandra_line(
    n: int, label: str, results: list[dict[str, float]], loads: list[float]
) -> None:
    med = statistics.median(r["total"] for r in results)
    every = ", ".join(f"{r['total']:.2f}" for r in results)
    print(
        f"{n:>9} {label:>6} {'':>6} {f'{med:.2f} ({every})':>30} "
        f"{statistics.median(r['cpu'] for r in results):>6.2f} "
        f"{statistics.median(r['node'] for r in results):>8.2f} {'':>10} "
        f"{statistics.median(r['rss_mb'] for r in results):>11.0f} "
        f"{statistics.median(loads):>8.2f}",
        flush=True,
    )


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def synthetic(projects: int, servers: int, seed: int) -> dict[str, list[dict[str, object]]]:
    """Inventory file data: ``servers`` hosts, every project mastered on one, replicated on one."""
    rnd = random.Random(seed)
    sids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(servers)]
    now = 1_780_000_000
    data: dict[str, list[dict[str, object]]] = {
        "servers": [
            {
                "server_id": sid,
                "name": f"bup{i:03d}",
                "host": f"10.0.{i // 250}.{i % 250 + 1}",
                "port": 6000,
                "dc": i % 3,
                "experimental": False,
                "ssh_host": f"10.0.{i // 250}.{i % 250 + 1}",
                "ssh_port": 22,
                "ssh_user": "root",
                "bup_root": "/bup",
                "projects_root": "/projects",
            }
            for i, sid in enumerate(sids)
        ],
        "projects": [],
    }
    for _ in range(projects):
        master, replica = rnd.sample(sids, 2)
        saved = datetime.fromtimestamp(now - rnd.randrange(86400 * 30), UTC)
        data["projects"].append(
            {
                "project_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "master": master,
                "replicas": [replica],
                "disk_mb": rnd.randrange(100, 20_000),
                "last_edited": datetime.fromtimestamp(saved.timestamp() + 3600, UTC),
                "bup_last_save": {master: saved, replica: saved},
            }
        )
    return data


def write(data: dict[str, list[dict[str, object]]], path: Path) -> None:
    if path.suffix == ".json":

        def default(o: object) -> str:
            assert isinstance(o, datetime)
            return o.strftime("%Y-%m-%dT%H:%M:%SZ")

        path.write_text(json.dumps(data, default=default), encoding="utf-8")
        return
    lines = []
    for key in ("servers", "projects"):
        for entry in data[key]:
            lines += [f"[[{key}]]", *(f"{k} = {_toml(v)}" for k, v in entry.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--projects", type=int, nargs="+", default=[100_000])
    ap.add_argument("--servers", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="loads per size and format (default: 3)")
    ap.add_argument(
        "--formats", nargs="+", default=["toml", "json"], choices=["toml", "json", "cassandra"]
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--read-ranges",
        type=int,
        nargs="+",
        default=[4],
        help="Cassandra: [inventory.cassandra] read_ranges settings to time, interleaved run by "
        "run (default: 4, the default; `1 4` for one scan beside it); rows labelled cass.N",
    )
    ap.add_argument(
        "--code",
        type=Path,
        help="a folder holding a bup_watchdog package to load instead of this checkout's, for "
        "figures before a change, e.g. `git archive OLD watchdog | tar -x -C D` then mv D/watchdog "
        "D/bup_watchdog",
    )
    args = ap.parse_args()
    python = sys.executable
    code = [str(args.code.resolve())] if args.code else []
    env = {**os.environ, "PYTHONPATH": ":".join([*code, str(Path(__file__).resolve().parents[1])])}
    print(
        f"{'projects':>9} {'format':>6} {'MB':>6} {'load s (median; runs)':>30} {'CPU s':>6} "
        f"{'parse s':>8} {'validate s':>10} {'peak RSS MB':>11} {'load avg':>8}"
    )
    node = None
    if "cassandra" in args.formats:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from support.cassandra.node import CassandraNode  # type: ignore[import-not-found]

        node = CassandraNode(Path(tempfile.mkdtemp(prefix="bupwatch-bench-cassandra-node-")))
        node.start()
    try:
        run_all(args, python, env, node)
    finally:
        if node is not None:
            node.stop()
            shutil.rmtree(node.workdir, ignore_errors=True)
    return 0


def run_all(args: argparse.Namespace, python: str, env: dict[str, str], node: object) -> None:
    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-inventory-") as tmp:
        for n in args.projects:
            data = synthetic(n, args.servers, args.seed)
            for fmt in args.formats:
                if fmt == "cassandra":
                    cassandra_runs(node, data, n, args.runs, env, args.read_ranges)
                    continue
                path = Path(tmp) / f"inventory-{n}.{fmt}"
                write(data, path)
                runs = []
                loads = []
                for _ in range(args.runs):
                    loads.append(os.getloadavg()[0])
                    out = subprocess.run(
                        [python, "-c", CHILD, str(path)],
                        capture_output=True,
                        text=True,
                        env=env,
                        check=True,
                    )
                    runs.append(json.loads(out.stdout))
                    assert runs[-1]["n"] == n, runs[-1]
                med = statistics.median(r["total"] for r in runs)
                every = ", ".join(f"{r['total']:.2f}" for r in runs)
                print(
                    f"{n:>9} {fmt:>6} {path.stat().st_size / 1e6:>6.1f} "
                    f"{f'{med:.2f} ({every})':>30} "
                    f"{statistics.median(r['cpu'] for r in runs):>6.2f} "
                    f"{statistics.median(r['parse'] for r in runs):>8.2f} "
                    f"{statistics.median(r['validate'] for r in runs):>10.2f} "
                    f"{statistics.median(r['rss_mb'] for r in runs):>11.0f} "
                    f"{statistics.median(loads):>8.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
