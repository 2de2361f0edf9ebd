"""The side-by-side rounds: the watchdog (end to end and sweep only), Ansible and parallel-ssh on
one fleet, in an order rotated each round, the load average read before and after every figure.

- **watchdog end to end** is ``bup-watchdog check --format json`` as a user runs it: a fresh
  process, its start-up, config, inventory load, sweep, checks and state recording, timed from
  the outside as the peers are;
- **watchdog sweep only** is one full cheap sweep in a fresh process of its own
  (``bench/watchdog_run.py --sweeps 1``), timed around ``sweep()`` alone: start-up and inventory
  load left out (the inventory load is its own figure);
- **Ansible** and **parallel-ssh**: ``bench/peers.py``, on every host of the fleet.

Every watchdog figure is checked against the planted faults, every peer's output line by line.
Before the rounds ``bup-watchdog check`` runs once untimed, so that its state exists as it does
for a user who ran it before. Before every figure ``bench/settle.py`` walks every host's
repositories (untimed, the same walk whatever comes next: the peers' process churn had left the
next contender a cold cache) and waits until no session is open and the CPUs are idle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.daemon_rss import watchdog_cli
from bench.hostcpu import hosts_cpu
from bench.peers import children_cpu, run_ansible, run_pssh
from bench.settle import settle
from bup_watchdog.sandbox.expected import compare, expected_findings
from bup_watchdog.sandbox.fleet import SandboxFleet

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("watchdog_e2e", "watchdog_sweep", "ansible", "pssh")


def load1() -> float:
    """The 1-minute load average (/proc/loadavg)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def rotation(names: tuple[str, ...] | list[str], rounds: int) -> list[list[str]]:
    """Round i runs ``names`` rotated by i: each goes first, second, … as often as rounds allow."""
    n = len(names)
    return [[names[(i + k) % n] for k in range(n)] for i in range(rounds)]


def planted_check(
    fleet: SandboxFleet, observed: set[tuple[str, str, str, str | None]]
) -> dict[str, Any]:
    """Findings (check, code, host name, project) against the faults planted in the fleet."""
    exp = {(e.check, e.code, e.host, e.project_id) for e in expected_findings(fleet.spec)}
    cmp = compare(exp, observed)  # type: ignore[arg-type]
    return {
        "planted": len(exp),
        "missed": sorted(map(str, cmp.missed))[:10],
        "unexpected": sorted(map(str, cmp.unexpected))[:10],
        "exact": cmp.exact,
    }


def run_watchdog_child(fleet: SandboxFleet, pids: list[int], *extra: str) -> dict[str, Any]:
    """``bench/watchdog_run.py`` on the fleet (a process of its own); planted faults checked."""
    bups = {n: str(h.bups_dir) for n, h in fleet.hosts.items()}
    argv = [
        sys.executable,
        str(ROOT / "bench" / "watchdog_run.py"),
        "--config",
        str(fleet.config_path),
        "--sshd-pids",
        ",".join(map(str, pids)),
        "--bups",
        json.dumps(bups),
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/watchdog_run.py failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    seen = {(c, code, host, pid or None) for c, code, host, pid in out.pop("observed")}
    out.update(planted_check(fleet, seen))
    return out


def watchdog_sweep(fleet: SandboxFleet, pids: list[int]) -> dict[str, Any]:
    """One full cheap sweep in a fresh process, timed around the sweep alone."""
    out = run_watchdog_child(
        fleet, pids, "--sweeps", "1", "--incremental", "0", "--metrics-runs", "0"
    )
    row = out["full"][0]
    return {
        "wall": row["wall"],
        "cpu": row["cpu"],
        "host_cpu": row["host_cpu"],
        "repos": row["repos"],
        "ssh_sessions": row["ssh_sessions"],
        "findings": row["findings"],
        "inventory_load_seconds": out["inventory_load_seconds"],
        "peak_rss_mb": out["peak_rss_full_mb"],
        "exact": out["exact"],
        "missed": out["missed"],
        "unexpected": out["unexpected"],
    }


def watchdog_e2e(fleet: SandboxFleet, pids: list[int]) -> dict[str, Any]:
    """``bup-watchdog check --format json`` as a user runs it, timed from the outside."""
    argv = [*watchdog_cli(), "check", "--config", str(fleet.config_path), "--format", "json"]
    h0 = hosts_cpu(pids, settle=0)
    c0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - c0
    host = hosts_cpu(pids) - h0
    if proc.returncode not in (0, 1, 2):
        raise RuntimeError(f"bup-watchdog check exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    names = {h.server_id: n for n, h in fleet.hosts.items()}
    findings = json.loads(proc.stdout)["findings"]
    seen = {
        (f["check"], f["code"], names.get(f["server_id"], f["server_id"]), f["project_id"] or None)
        for f in findings
    }
    return {
        "wall": wall,
        "cpu": cpu,
        "host_cpu": host,
        "exit_code": proc.returncode,
        "findings": len(findings),
        **planted_check(fleet, seen),
    }


def contender(
    name: str, fleet: SandboxFleet, pids: list[int], work: Path
) -> Callable[[], dict[str, Any]]:
    """The measurement called ``name``, ready to run."""
    names = list(fleet.hosts)
    return {
        "watchdog_e2e": lambda: watchdog_e2e(fleet, pids),
        "watchdog_sweep": lambda: watchdog_sweep(fleet, pids),
        "ansible": lambda: run_ansible(fleet, names, work, pids),
        "pssh": lambda: run_pssh(fleet, names, work, pids),
    }[name]


def run_rounds(
    fleet: SandboxFleet,
    pids: list[int],
    work: Path,
    rounds: int,
    names: tuple[str, ...] = CONTENDERS,
    progress: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Every contender once per round, rotated; each figure with its round, position and load."""
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    if "watchdog_e2e" in names:
        # Untimed: the state (and its inventory cache) exists, as for a user who ran it before;
        # otherwise whichever round runs it first pays for creating the database.
        out["warmup"] = [watchdog_e2e(fleet, pids)]
        progress(f"warm-up: bup-watchdog check once, {out['warmup'][0]['wall']:.2f} s (untimed)")
    bups_dirs = [h.bups_dir for h in fleet.hosts.values()]
    for i, order in enumerate(rotation(names, rounds)):
        for pos, name in enumerate(order):
            settled = settle(bups_dirs, pids)
            before = load1()
            try:
                row = contender(name, fleet, pids, work)()
            except (RuntimeError, ValueError, KeyError) as exc:  # the other contenders still run
                row = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            row.update(round=i + 1, position=pos + 1, load_before=before, load_after=load1())
            row["settle"] = settled
            out[name].append(row)
            wall = f"{row['wall']:.2f} s" if "wall" in row else row.get("skipped", row.get("error"))
            progress(
                f"round {i + 1}/{rounds}, {pos + 1}. {name}: {wall} "
                f"(load {before:.1f} -> {row['load_after']:.1f}; before it a walk of "
                f"{settled['warm_seconds']:.1f} s and {settled['waited']:.0f} s of waiting)"
            )
    return out
