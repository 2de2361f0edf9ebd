"""The watchdog side of ``bench/compare.py``, in a process of its own (its RSS and CPU only).

Given a built sandbox fleet's config, it runs, in order:

1. ``--sweeps`` full cheap sweeps (all checks, no cache): wall, CPU of this process, host CPU
   (see ``hostcpu``), SSH sessions, findings; the peak RSS is read right after them;
2. the last full sweep recorded into a fresh state (``watchdog.sweep.record``), a deep-check row
   added for every repository (the state after a full deep cycle), and ``/metrics`` rendered from it
   (``bench.metrics.measure``);
3. incremental sweeps (``watchdog.gather.RepoCache``): one priming sweep, then ``--incremental``
   rounds of "change ``--changed`` of the repositories the way a save does, wait out the probe's
   racy window, sweep" with the checks the daemon runs in every sweep (``steady_checks``: by
   default all but ownership, which is hourly, so the live directories are left out), then as
   many rounds with every check (the daemon's sweep when ownership is due too); and finally a
   full sweep without cache whose facts must equal the last incremental sweep's, repository by
   repository;
4. with ``--wire``, one more probe per host: the bytes of its output per repository.

``--metrics-runs 0`` leaves step 2 out (the sweep-only rounds of ``bench/rounds.py``).

Prints one JSON object. Run by ``bench/compare.py``; usable alone:
    .venv/bin/python bench/watchdog_run.py --config FLEET/config.toml --bups '{"s01": "…"}'
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hostcpu import hosts_cpu
from bup_watchdog.checks import registry, settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.malloc_arenas import tune_malloc
from bup_watchdog.model import DeepResult
from bup_watchdog.state import State
from bup_watchdog.sweep import SweepResult, record, sweep

try:  # incremental sweeps exist from this change on; the harness also measures older trees
    from bup_watchdog.repo_cache import RepoCache
except ImportError:  # pragma: no cover
    RepoCache = None  # type: ignore[assignment,misc]


def rss_mb() -> float:
    """Peak RSS of this process since it started, in MiB: the high-water mark of its own memory
    (VmHWM, reset by ``main`` before anything is loaded).

    Not ``ru_maxrss``: Linux carries it over an exec from the memory the process had before, and
    a child that ``subprocess`` starts with vfork begins with its parent's peak (the benchmark's
    parent holds the fleet's spec: 250 MB at 100,000 repositories).
    """
    return window_peak_mb()


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()


def traced_mb() -> list[float]:
    """With --trace-memory: [Python objects held now, their peak since reset_peak()] in MiB (what
    RSS holds beyond them is the interpreter, C libraries and memory freed but not returned)."""
    current, peak = tracemalloc.get_traced_memory()
    return [round(current / 2**20, 1), round(peak / 2**20, 1)]


def window_peak_mb() -> float:
    """Peak RSS since the last reset_peak() (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_sweep(
    config: Any, inventory: Any, pids: list[int], **kw: Any
) -> tuple[dict[str, Any], SweepResult]:
    gc.collect()
    h0 = hosts_cpu(pids, settle=0)
    c0 = time.process_time()
    result = sweep(config, inventory, **kw)
    cpu = time.process_time() - c0
    host = hosts_cpu(pids) - h0
    repos = sum(len(f.repos) for f in result.facts.values())
    row = {
        "wall": result.seconds,
        "cpu": cpu,
        "host_cpu": host,
        "ssh_sessions": result.ssh_sessions,
        "hosts": len(result.facts),
        "probed": sum(1 for f in result.facts.values() if f.probed),
        "repos": repos,
        "findings": len(result.findings),
        "slowest_host": max((f.duration_seconds for f in result.facts.values()), default=0.0),
    }
    return row, result


def steady_checks(config: Any) -> list[str]:
    """The checks the daemon runs in every sweep (interval at most the sweep interval): the
    incremental rounds sweep these, as the daemon does between runs of the less frequent ones."""
    every = config.schedule.sweep_interval_seconds
    return [
        name
        for name in registry()
        if config.check(name).enabled and config.check(name).interval_seconds <= every
    ]


def simulate_saves(bups: dict[str, str], inventory: Any, share: float, rng: random.Random) -> int:
    """Change ``share`` of all repositories the way a bup save does; return how many.

    A save adds a pack (here: a copy of an existing pack and its index under a new name; a copy,
    not a hard link, because the fleet's repositories share their pack inodes with each other and
    a new link would change every sharer's ctime), moves ``refs/heads/master`` (written to a lock
    file and renamed; the same sha, so the facts stay healthy), appends to the reflog and to
    ``conf/save_log.json`` and touches ``conf/touch``.
    """
    copies = [
        (name, pid)
        for sid, s in inventory.servers.items()
        if (name := s.name) in bups
        for pid in sorted(p.project_id for p in inventory.projects_on(sid))
    ]
    chosen = rng.sample(copies, max(1, round(share * len(copies))))
    now = time.time()
    for name, pid in chosen:
        repo = Path(bups[name]) / pid
        pack_dir = repo / "objects" / "pack"
        packs = sorted(pack_dir.glob("*.pack"))
        for pack in packs[:1]:
            new = f"pack-{os.urandom(20).hex()}"
            idx = pack.with_suffix(".idx")
            if idx.exists():
                shutil.copyfile(pack, pack_dir / f"{new}.pack")
                shutil.copyfile(idx, pack_dir / f"{new}.idx")
        ref = repo / "refs" / "heads" / "master"
        sha = ref.read_text().strip()
        lock = ref.with_name("master.lock")
        lock.write_text(sha + "\n")
        lock.rename(ref)
        with open(repo / "logs" / "refs" / "heads" / "master", "a") as f:
            f.write(f"{sha} {sha} bench <bench@localhost> {int(now)} +0000\tsave\n")
        with open(repo / "conf" / "save_log.json", "a") as f:
            f.write(json.dumps({"timestamp": int(now), "files": 1, "size_kb": 1}) + "\n")
        os.utime(repo / "conf" / "touch", (now, now))
    return len(chosen)


def metrics_figures(result: SweepResult, runs: int) -> dict[str, Any]:
    """Record the sweep into a fresh state (+ a deep row per repo) and time /metrics renders."""
    from bench.metrics import measure

    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-state-") as tmp:
        state = State(Path(tmp) / "state.db")
        t0 = time.perf_counter()
        record(state, result)
        recorded = time.perf_counter() - t0
        now = time.time()
        rng = random.Random(1)
        for sid, facts in result.facts.items():
            state.record_deep(
                sid,
                [
                    DeepResult(pid, now - rng.uniform(0, 6 * 86400), True, r.master_sha)
                    for pid, r in facts.repos.items()
                ],
            )
        m = measure(state, dict(result.inventory.servers), runs, 10)
        state.close()
    m["record_seconds"] = recorded
    return m


def probe_output(config: Any, inventory: Any) -> dict[str, Any]:
    """Bytes of the probe's output per repository: one full probe per host, as a sweep runs it
    (``bench/probe_wire.py`` has the breakdown by record kind and the decode time)."""
    from bup_watchdog.gather import make_transport, parse_probe_lines, probe_argv, probe_source
    from bup_watchdog.model import HostFacts

    total = repos = 0
    for server in inventory.servers.values():
        transport = make_transport(server, config.ssh)
        try:
            lines = list(
                transport.stream_lines(probe_argv(server, config.ssh.python), stdin=probe_source())
            )
        finally:
            transport.close()
        total += sum(len(x) for x in lines)
        facts = HostFacts(server_id=server.server_id, gathered_at=0.0)
        parse_probe_lines(server.server_id, lines, facts)
        repos += len(facts.repos)
    return {"bytes": total, "repos": repos, "bytes_per_repo": total / max(1, repos)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="the fleet's config.toml")
    ap.add_argument("--sshd-pids", default="", help="comma-separated listening sshd pids")
    ap.add_argument("--bups", default="{}", help="JSON: host name -> its bups dir, seen here")
    ap.add_argument("--sweeps", type=int, default=3, help="full sweeps (default 3)")
    ap.add_argument("--incremental", type=int, default=3, help="incremental rounds (default 3)")
    ap.add_argument("--changed", type=float, default=0.01, help="share changed per round")
    ap.add_argument("--metrics-runs", type=int, default=20, help="/metrics renders (0: none)")
    ap.add_argument("--wire", action="store_true", help="also measure the probe's output bytes")
    ap.add_argument("--racy-wait", type=float, default=2.5, help="seconds between change and sweep")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--trace-memory",
        action="store_true",
        help="also trace Python's allocations (tracemalloc: slower; figures under 'traced')",
    )
    args = ap.parse_args()

    tune_malloc()  # as every bup-watchdog command does at its start
    pids = [int(p) for p in args.sshd_pids.split(",") if p]
    bups = json.loads(args.bups)
    if args.trace_memory:
        tracemalloc.start()
    reset_peak()  # the high-water mark starts here, not at the parent's peak (see rss_mb)
    out: dict[str, Any] = {"rss_start_mb": current_rss_mb()}
    traced: dict[str, list[float]] = {}
    if args.trace_memory:
        out["traced"] = traced
    config = load_config(args.config, settings_models())
    assert config.inventory.file is not None
    t0 = time.perf_counter()
    inventory = FileInventory(config.inventory.file).load()
    out["inventory_load_seconds"] = time.perf_counter() - t0
    out["rss_after_inventory_mb"] = rss_mb()
    traced["after_inventory"] = traced_mb()

    full = []
    result: SweepResult | None = None
    out["rss_before_sweeps_mb"] = current_rss_mb()
    reset_peak()
    for _ in range(args.sweeps):
        result = None  # let the previous sweep's facts go before the next sweep builds its own
        row, result = one_sweep(config, inventory, pids)
        full.append(row)
    out["full"] = full
    out["peak_rss_full_mb"] = max(out["rss_after_inventory_mb"], window_peak_mb())
    out["peak_rss_sweeps_window_mb"] = window_peak_mb()
    traced["full_sweeps"] = traced_mb()
    assert result is not None
    names = {s.server_id: s.label for s in inventory.servers.values()}
    out["observed"] = sorted(
        [f.check, f.code, names.get(f.server_id, f.server_id), f.project_id or ""]
        for f in result.findings
    )
    if args.metrics_runs:
        out["metrics"] = metrics_figures(result, args.metrics_runs)
    out["peak_rss_after_metrics_mb"] = max(out["rss_after_inventory_mb"], window_peak_mb())

    if RepoCache is not None and args.incremental > 0:
        rng = random.Random(args.seed)
        cache = RepoCache()
        result = None
        out["rss_before_incremental_mb"] = current_rss_mb()
        reset_peak()
        traced["before_incremental"] = traced_mb()
        prime, result = one_sweep(config, inventory, pids, repo_cache=cache)
        prime["walked"], prime["reused"] = cache.totals()
        prime["peak_rss_mb"] = window_peak_mb()
        traced["priming_sweep"] = traced_mb()
        steady = steady_checks(config)

        def incremental_round(only: list[str]) -> dict[str, Any]:
            nonlocal result
            result = None
            changed = simulate_saves(bups, inventory, args.changed, rng)
            time.sleep(args.racy_wait)
            row, result = one_sweep(config, inventory, pids, repo_cache=cache, only=only)
            row["changed"] = changed
            row["walked"], row["reused"] = cache.totals()
            row["checks"] = sorted(result.checks)
            row["peak_rss_so_far_mb"] = window_peak_mb()  # which round raised the window's peak
            return row

        rounds = [incremental_round(steady) for _ in range(args.incremental)]
        every = [incremental_round([]) for _ in range(args.incremental)] if args.incremental else []
        out["peak_rss_incremental_window_mb"] = window_peak_mb()
        traced["incremental_window"] = traced_mb()
        last = result
        result = None
        check_row, check = one_sweep(config, inventory, pids)
        assert last is not None
        mismatched = [
            (sid, pid)
            for sid, f in check.facts.items()
            for pid in set(f.repos) | set(last.facts[sid].repos)
            if f.repos.get(pid) != last.facts[sid].repos.get(pid)
        ]
        out["incremental"] = {
            "prime": prime,
            "rounds": rounds,
            "every_check_rounds": every,
            "steady_checks": steady,
            "not_every_sweep": {
                name: config.check(name).interval_seconds
                for name in registry()
                if config.check(name).enabled and name not in steady
            },
            "sweep_interval_seconds": config.schedule.sweep_interval_seconds,
            "check_full": check_row,
            "mismatched": len(mismatched),
            "mismatched_examples": mismatched[:5],
            "compared": sum(len(f.repos) for f in check.facts.values()),
        }
    if args.wire:
        out["probe_output"] = probe_output(config, inventory)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
