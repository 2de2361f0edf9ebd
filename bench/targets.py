"""Issue 20's targets, each with the figure at the issue's start, this run's figure and whether it
is met (``None``: not measured in this run)."""

from __future__ import annotations

from typing import Any

from bench.summary import fmt_s, size_label


def targets(sums: list[dict[str, Any]], synthetic: dict[str, Any] | None) -> list[list[str]]:
    """Issue 20's targets: figure, at the issue's start, now, target, met."""
    big = max(sums, key=lambda s: s["repos"]) if sums else {}
    at = f" ({size_label(big)})" if big else ""
    out: list[list[str]] = []

    def add(label: str, before: str, now: str, target: str, met: bool | None) -> None:
        out.append([label, before, now, target, "–" if met is None else ("yes" if met else "no")])

    def get(key: str) -> Any:
        return big.get(key)

    cpu = get("cpu_us_per_repo")
    add(
        "watchdog CPU per repository, full sweep" + at,
        "~126 µs",
        f"{cpu:.0f} µs" if cpu else "–",
        "≤ 25 µs",
        cpu <= 25 if cpu else None,
    )
    pb = get("probe_bytes")
    add(
        "probe output per repository" + at,
        "1.48 KB",
        f"{pb:.0f} bytes" if pb else "–",
        "≤ 300 bytes",
        pb <= 300 if pb else None,
    )
    hc = get("host_us_per_repo")
    add(
        "host CPU per repository, full walk" + at,
        "344 µs",
        f"{hc:.0f} µs" if hc else "–",
        "≤ 150 µs",
        hc <= 150 if hc else None,
    )
    rss = get("rss_inc")
    add(
        "peak RSS during incremental sweeps, cache and inventory included" + at,
        "500 MB",
        f"{rss:.0f} MB" if rss else "–",
        "≤ 200 MB",
        rss <= 200 if rss else None,
    )
    inv = get("inventory_s")
    add(
        "inventory load, file" + at + " (Cassandra: `bench/inventory_load.py`, not here)",
        "12.8 s",
        fmt_s(inv),
        "≤ 2 s",
        inv <= 2 if inv == inv and inv is not None else None,
    )
    share = get("inc_share_wall")
    add(
        "incremental sweep, 1 % changed: wall / CPU share of a full one" + at,
        "14 %",
        f"{100 * share:.0f} % / {100 * big['inc_share_cpu']:.0f} %" if share else "–",
        "≤ 8 %",
        share <= 0.08 if share else None,
    )
    cells, met = [], []
    for s in sums:
        if "watchdog_e2e_vs_ansible" in s and "watchdog_e2e_vs_pssh" in s:
            a, p = s["watchdog_e2e_vs_ansible"], s["watchdog_e2e_vs_pssh"]
            cells.append(f"{size_label(s)}: {a:.1f}× / {p:.1f}×")
            met.append(a >= 10 and p >= 10)
    add(
        "end to end vs Ansible / parallel-ssh, side by side, rotated, none extrapolated",
        "2.9× / 3.4× (10k)",
        "; ".join(cells) or "–",
        "≥ 10× / ≥ 10×",
        all(met) if met else None,
    )
    first = (synthetic or {}).get("first")
    add(
        f"`/metrics` at {(synthetic or {}).get('projects', 100_000):,} projects (synthetic): first "
        f"scrape after a sweep (between sweeps: median)",
        "53–61 ms",
        f"{first:.1f} ms ({synthetic['median']:.1f} ms)" if synthetic and first else "–",
        "≤ 25 ms",
        first <= 25 if first else None,
    )
    dm = next((s for s in sums if s.get("daemon")), None)
    if dm:
        d = dm["daemon"]
        g = d["growth_pct"]
        marks = sorted(d["rss_mb"], key=int)
        now = f"{d['rss_mb'][marks[-1]]:.0f} MB after {marks[-1]} sweeps at {size_label(dm)}; " + (
            f"{g:+.1f} % from sweep 10" if g is not None else "growth not measured"
        )
        add(
            "daemon RSS (`bup-watchdog run`), no growth",
            "not measured",
            now,
            "flat within 5 %",
            d["flat"] if g is not None else None,
        )
    else:
        failed = next((s.get("daemon_error") for s in sums if s.get("daemon_error")), None)
        add(
            "daemon RSS (`bup-watchdog run`), no growth",
            "not measured",
            f"failed: {failed.splitlines()[0]}" if failed else "–",
            "flat within 5 %",
            False if failed else None,
        )
    return out


def targets_table(rows: list[list[str]]) -> str:
    """The targets as Markdown."""
    lines = ["| figure | at issue 20's start | now | target | met |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
