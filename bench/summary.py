"""One fleet size's figures as the README's tables print them, from ``bench/compare.py``'s JSON:
medians of the side-by-side rounds, the ratios to the peers, the watchdog's details."""

from __future__ import annotations

import statistics
from typing import Any

PEERS = (("ansible", "Ansible ad-hoc"), ("pssh", "parallel-ssh"))


def median(xs: list[float]) -> float:
    """The median, NaN for no value."""
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float | None) -> str:
    """Seconds the way a reader takes them in: 0.42 s, 132 s, 1.2 h."""
    if x is None or x != x:
        return "–"
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 100:
        return f"{x:.0f} s"
    return f"{x:.2f} s"


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that measured something (a skipped or failed peer has no wall)."""
    return [r for r in rows if "wall" in r]


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one fleet size that the tables print."""
    rounds = r["rounds"]
    s: dict[str, Any] = {k: r[k] for k in ("repos", "projects", "hosts")}
    s["build_s"] = r.get("build_seconds")
    for name, rows in rounds.items():
        if name == "warmup":
            continue
        done = ok_rows(rows)
        s[f"{name}_rows"] = rows
        if not done:
            s[f"{name}_note"] = next(
                (x.get("skipped") or x.get("error") for x in rows), "not measured"
            )
            continue
        s[f"{name}_wall"] = median([x["wall"] for x in done])
        local = "cpu" if "cpu" in done[0] else "local_cpu"
        s[f"{name}_cpu"] = median([x[local] for x in done])
        s[f"{name}_host_cpu"] = median([x["host_cpu"] for x in done])
        s[f"{name}_failed"] = len(rows) - len(done)
        s[f"{name}_ok"] = all(
            x.get("exact", True)
            and not x.get("failed_hosts")
            and x.get("wrong", 0) == 0
            and x.get("lines", x.get("repos")) == x.get("repos")
            for x in done
        )
    for base in ("watchdog_e2e", "watchdog_sweep"):
        for peer, _ in PEERS:
            if f"{base}_wall" in s and f"{peer}_wall" in s:
                s[f"{base}_vs_{peer}"] = s[f"{peer}_wall"] / s[f"{base}_wall"]
    sweeps = ok_rows(rounds.get("watchdog_sweep", []))
    d = r.get("detail") or {}
    loads = [x["inventory_load_seconds"] for x in sweeps]
    if "inventory_load_seconds" in d:
        loads.append(d["inventory_load_seconds"])
    s["inventory_s"] = median(loads)
    s["inventory_runs"] = loads
    if sweeps:
        s["cpu_us_per_repo"] = 1e6 * s["watchdog_sweep_cpu"] / s["repos"]
        s["host_us_per_repo"] = 1e6 * s["watchdog_sweep_host_cpu"] / s["repos"]
        s["rss_full"] = max(x["peak_rss_mb"] for x in sweeps)
    inc = d.get("incremental")
    if inc and sweeps:
        rows = inc["rounds"]
        full_walls = [x["wall"] for x in sweeps] + [x["wall"] for x in d.get("full", [])]
        full_cpu = [x["cpu"] + x["host_cpu"] for x in sweeps + d.get("full", [])]
        s["inc_wall"] = median([x["wall"] for x in rows])
        s["inc_walls"] = [x["wall"] for x in rows]
        s["inc_cpu"] = median([x["cpu"] + x["host_cpu"] for x in rows])
        s["inc_share_wall"] = s["inc_wall"] / median(full_walls)
        s["inc_share_cpu"] = s["inc_cpu"] / median(full_cpu)
        s["inc_walked"] = median([x["walked"] for x in rows])
        s["inc_equal"] = (inc["compared"] - inc["mismatched"], inc["compared"])
        s["rss_inc"] = d.get("peak_rss_incremental_window_mb")
    if d.get("probe_output"):
        s["probe_bytes"] = d["probe_output"]["bytes_per_repo"]
    if d.get("metrics"):
        s["metrics"] = d["metrics"]
    if r.get("daemon"):
        s["daemon"] = r["daemon"]
    if r.get("daemon_error"):
        s["daemon_error"] = r["daemon_error"]
    return s


def size_label(s: dict[str, Any]) -> str:
    """10k, 100k: a fleet size as the targets name it."""
    return f"{s['repos'] // 1000:,}k"
