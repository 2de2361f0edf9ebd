"""Benchmark: the watchdog's memory per repository (facts, incremental cache) and per project
(inventory), and its own CPU per repository in an incremental sweep, without any host.

Builds a synthetic file inventory of ``--projects`` projects on ``--servers`` hosts (each project
mastered on one, replicated on another: two repositories per project) and loads it with
``FileInventory``; then runs ``gather.gather_host`` per host through a stand-in transport that
answers what the real probe answers (hello, one compact record per repository and live directory
with a fingerprint, and, when given a known state, one ``unchanged`` record naming every known
project except ``--changed`` of them, whose records it sends again), so the watchdog's own code
runs as in a sweep: known state rendered and sent, records decoded, cached facts merged, cache
replaced; and the checks of a steady sweep over the facts. Prints one JSON object: traced Python
memory (tracemalloc) per project of inventory and per repository of facts + cache, the traced
peak during an incremental sweep while the previous sweep's result is still held, VmHWM, and CPU
µs per repository of the full (priming) and incremental gathers and of the checks.

Run from the repository:  .venv/bin/python bench/facts_memory.py --projects 50000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inventory_load import synthetic
from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import parse_config
from bup_watchdog.gather import gather_host
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import HostFacts, Inventory, Server
from bup_watchdog.probe import PROBE_VERSION, WireEncoder, bitmap, known_order, parse_known_state
from bup_watchdog.repo_cache import RepoCache
from bup_watchdog.sweep import run_checks

BUPS = "/bup/bups"


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def repo_record(pid: str, sha: str, replicas: list[str], rnd: random.Random) -> dict[str, Any]:
    """A healthy repository's record, as the probe reports one (its usual fields)."""
    now = 1_780_000_000
    return {
        "type": "repo",
        "project_id": pid,
        "path": f"{BUPS}/{pid}",
        "fingerprint": os.urandom(17).hex()[1:],  # FP_HEX wide, as the probe makes them
        "head": "ref: refs/heads/master",
        "master_sha": sha,
        "master_in_pack": True,
        "pack_count": rnd.randint(1, 40),
        "repo_bytes": rnd.randint(10**5, 10**9),
        "reflog_last_time": now - rnd.randint(0, 86400),
        "save_log_bytes": rnd.randint(10**3, 10**7),
        "touch_mtime": now - rnd.uniform(0, 86400),
        "replicas": replicas,
        "settings": {"keep": 30},
        "bupindex_bytes": rnd.randint(10**3, 10**6),
    }


def dir_record(pid: str, uid: int) -> dict[str, Any]:
    return {
        "type": "project_dir",
        "project_id": pid,
        "uid": uid,
        "gid": uid,
        "owners": {str(uid): 40},
        "sampled": 40,
        "digest": os.urandom(10).hex(),
    }


class StandInTransport:
    """Answers the probe's command as the real probe would for a host's synthetic records (a
    stand-in for SSH: this benchmark measures the watchdog, not the host)."""

    sessions_opened = 1
    label = "stand-in"

    def __init__(self, records: dict[str, dict[str, Any]], changed: set[str], dirs: bool) -> None:
        self.records, self.changed, self.dirs = records, changed, dirs

    #: CPU seconds spent answering (the host's share, left out of the watchdog's figures).
    spent = 0.0

    def stream_lines(self, argv: Sequence[str], stdin: bytes, timeout: float) -> Iterator[bytes]:
        c0 = time.process_time()
        lines = list(self._answer(argv, stdin))
        StandInTransport.spent += time.process_time() - c0
        return iter(lines)

    def _answer(self, argv: Sequence[str], stdin: bytes) -> Iterator[bytes]:
        enc = WireEncoder()
        hello = {"type": "hello", "probe_version": PROBE_VERSION, "bups": BUPS}
        yield enc.line(hello).encode()
        marker = b'\nKNOWN_STATE = "'
        known: tuple[dict[str, str], dict[str, str]] = ({}, {})
        if marker in stdin:
            blob = stdin.split(marker, 1)[1].split(b'"', 1)[0]
            known = parse_known_state(blob)
        dirs = self.dirs and "--no-project-dirs" not in argv
        same_repos = {p for p in known[0] if p not in self.changed}
        same_dirs = {p for p in known[1] if p not in self.changed} if dirs else set()
        for pid, (repo, d) in self.records.items():
            if pid not in same_repos:
                yield enc.line(repo).encode()
            if dirs and pid not in same_dirs:
                yield enc.line(d).encode()
        if known[0] or known[1]:
            order = known_order(*known)
            at = {p: n for n, p in enumerate(order)}
            yield enc.line(
                {
                    "type": "unchanged",
                    "known": len(order),
                    "repos": bitmap([at[p] for p in same_repos], len(order)),
                    "project_dirs": bitmap([at[p] for p in same_dirs], len(order)),
                }
            ).encode()
        yield enc.line({"type": "done"}).encode()

    def close(self) -> None:
        pass


def host_records(inv: Inventory, rnd: random.Random) -> dict[str, dict[str, Any]]:
    """Per server id: project id -> (repo record, dir record)."""
    from bup_watchdog.model import project_uid

    out: dict[str, dict[str, Any]] = {sid: {} for sid in inv.servers}
    for p in inv.projects.values():
        sha = os.urandom(20).hex()
        uid = project_uid(p.project_id)
        for sid in p.locations:
            out[sid][p.project_id] = (
                repo_record(p.project_id, sha, list(p.locations), rnd),
                dir_record(p.project_id, uid),
            )
    return out


def _iso(value: Any) -> str:
    """Times as the inventory file has them (RFC 3339)."""
    return str(value.isoformat())


def traced_mb() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--projects", type=int, default=50_000)
    ap.add_argument("--servers", type=int, default=20)
    ap.add_argument("--changed", type=float, default=0.01, help="share of projects changed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--cpu", action="store_true", help="time CPU without tracemalloc (which slows Python)"
    )
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    out: dict[str, Any] = {"projects": args.projects, "load_avg": os.getloadavg()}
    config = parse_config({"inventory": {"file": "/dev/null"}}, settings_models())
    ssh = config.ssh
    with tempfile.TemporaryDirectory(prefix="bupwatch-mem-") as tmp:
        path = Path(tmp) / "inventory.json"
        path.write_text(json.dumps(synthetic(args.projects, args.servers, args.seed), default=_iso))
        if not args.cpu:
            tracemalloc.start()
        base = traced_mb()
        inv = FileInventory(path).load()
        inv_mb = traced_mb() - base
    tracemalloc.stop()
    out["inventory_mb"] = round(inv_mb, 1)
    out["inventory_bytes_per_project"] = round(inv_mb * 2**20 / args.projects)
    servers: list[Server] = [
        Server(s.server_id, "127.0.0.1", 9, name=s.name, transport="ssh")
        for s in inv.servers.values()
    ]
    records = host_records(inv, rnd)
    repos = sum(len(r) for r in records.values())
    cache = RepoCache()

    def sweep_once(changed: set[str], dirs: bool) -> tuple[dict[str, HostFacts], float]:
        c0 = time.process_time()
        StandInTransport.spent = 0.0
        facts = {
            s.server_id: gather_host(
                s,
                ssh,
                tcp_timeout=0.2,
                transport_factory=lambda s, _c: StandInTransport(  # type: ignore[arg-type,return-value]
                    records[s.server_id], changed, dirs
                ),
                repo_cache=cache,
                live_dirs=dirs,
            )
            for s in servers
        }
        return facts, time.process_time() - c0 - StandInTransport.spent

    if not args.cpu:
        tracemalloc.start()
    base = traced_mb()
    facts, cpu = sweep_once(set(), True)
    assert all(f.probed for f in facts.values()), [f.failure_message for f in facts.values()]
    with_facts = traced_mb() - base
    out["full_gather_us_per_repo"] = round(1e6 * cpu / repos, 2)
    out["facts_and_cache_bytes_per_repo"] = round(with_facts * 2**20 / repos)
    del facts
    cache_only = traced_mb() - base
    out["cache_bytes_per_repo"] = round(cache_only * 2**20 / repos)
    # A steady incremental sweep while the previous sweep's facts are still held (the daemon's
    # runner holds a sweep's result until the next one returns).
    held, _ = sweep_once(set(), False)
    tracemalloc.reset_peak()
    before = traced_mb()
    pids = list(inv.projects)
    changed = set(rnd.sample(pids, max(1, round(args.changed * len(pids)))))
    facts, cpu = sweep_once(changed, False)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    out["incremental_gather_us_per_repo"] = round(1e6 * cpu / repos, 2)
    out["incremental_walked_reused"] = cache.totals()
    out["incremental_peak_over_held_mb"] = round(peak - before, 1)
    out["held_facts_and_cache_mb"] = round(before - base, 1)
    tracemalloc.stop()
    del held
    gc.collect()
    c0 = time.process_time()
    every = [n for n in settings_models() if n != "ownership"]
    findings, _ = run_checks(facts, inv, config, every)
    out["checks_us_per_repo"] = round(1e6 * (time.process_time() - c0) / repos, 2)
    out["findings"] = len(findings)
    out["vm_hwm_mb"] = round(vm_hwm_mb(), 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
