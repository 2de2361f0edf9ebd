"""Figures beside the comparison, each optional: deep checks on a sample, the probe's unit costs
on real bup repositories, and ``/metrics`` rendered from a synthetic state of N projects."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.hostcpu import hosts_cpu
from bench.real_repo import build_real_repo
from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.deep import run_deep
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.transport.ssh import SshTransport


def run_deep_sample(fleet: SandboxFleet, sample: int, pids: list[int]) -> dict[str, Any]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    name = next(iter(fleet.hosts))
    server = inventory.servers[fleet.server_id(name)]
    on_host = sorted(p.project_id for p in fleet.spec.projects if name in p.locations)
    corrupt = {p.project_id for p in fleet.spec.projects if name in p.corrupt_on}
    rng = random.Random(3)
    ids = sorted(set(rng.sample(on_host, min(sample, len(on_host)))) | (corrupt & set(on_host)))
    transport = SshTransport(server, config.ssh)
    h0 = hosts_cpu(pids, settle=0)
    t0 = time.perf_counter()
    try:
        results = run_deep(transport, server, ids, config.deep, config.ssh.python)
    finally:
        transport.close()
    wall = time.perf_counter() - t0
    host = hosts_cpu(pids) - h0
    wrong = sum(1 for r in results if r.ok == (r.project_id in corrupt))
    rate = len(results) / wall
    return {
        "host": name,
        "repos": len(results),
        "corrupt_in_sample": len(corrupt & set(ids)),
        "wrong": wrong,
        "wall": wall,
        "repos_per_s": rate,
        "host_cpu_ms_per_repo": 1000 * host / max(1, len(results)),
        "per_host_default": config.deep.per_host,
        "interval_s": config.schedule.deep_interval_seconds,
        "window_days": config.deep.window_days,
    }


# ---------------------------------------------------------------- the probe on real repositories


def per_repo(pairs: list[tuple[str, str]], fn: Any) -> float:
    """Median over 5 runs of the microseconds ``fn(path, project_id)`` takes per repository."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for path, pid in pairs:
            fn(path, pid)
        runs.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(runs) / len(pairs)


def probe_unit_costs(work: Path, saves: int, copies: int = 200) -> dict[str, Any]:
    """Per repository: the probe's full walk vs its fingerprint, on real (not template) repos.

    The benchmark fleet's repositories are hard-link copies of stripped templates (no hooks/,
    info/, branches/; 1-6 packs); a real bup repository has those, and one pack per save until it
    is repacked. Measured in this process on ``copies`` copies of a real repository with 2 and
    with ``saves`` saves.
    """
    from bup_watchdog import probe

    out: dict[str, Any] = {}
    for n in sorted({2, saves}):
        base = work / f"real-{n}"
        tpl = base / "template"
        build_real_repo(tpl, base / "data", n)
        bups = base / "bups"
        bups.mkdir()
        rng = random.Random(n)
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(copies)]
        for pid in ids:
            shutil.copytree(tpl, bups / pid, symlinks=True)
        pairs = [(str(bups / pid), pid) for pid in ids]
        files = sum(len(f) for _, _, f in os.walk(tpl))
        out[str(n)] = {
            "saves": n,
            "files": files,
            "packs": len(list((tpl / "objects" / "pack").glob("*.pack"))),
            "full_us": per_repo(pairs, lambda p, i: probe.repo_facts(p, i)),
            "fingerprint_us": per_repo(pairs, lambda p, i: probe.fingerprint(p)),
        }
        known = {p: probe.fingerprint(p)[0] for p, _ in pairs}
        out[str(n)]["unchanged_us"] = per_repo(
            pairs, lambda p, i, known=known: probe._unchanged(p, known[p])
        )
        shutil.rmtree(base)
    return out


def metrics_at(projects: int, runs: int) -> dict[str, Any]:
    """/metrics rendered from bench/metrics.py's synthetic state of ``projects`` projects."""
    from bench.metrics import build_state, measure
    from bup_watchdog.model import Server

    with tempfile.TemporaryDirectory(prefix="bupwatch-compare-metrics-") as tmp:
        state = build_state(Path(tmp) / "state.db", projects, 20, 0.05, 1)
        servers = {
            sid: Server(sid, "x", 6000, name=f"bup{n:03d}")
            for n, (sid,) in enumerate(state.query("SELECT server_id FROM hosts"))
        }
        m = measure(state, servers, runs, 10)
        state.close()
    return {"projects": projects, **m}
