"""``bench/README.md``'s generated part, from the JSON ``bench/compare.py`` writes: the last run's
side-by-side table (every run shown with the load average before it), the daemon's RSS after N
sweeps and issue 20's targets with the figure now and whether it is met.

The part sits between ``<!-- generated:start -->`` and ``<!-- generated:end -->``; the
hand-written sections after it are left alone. Re-render without measuring again:

    .venv/bin/python bench/render.py bench/last-run.json --readme bench/README.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

START = "<!-- generated:start: bench/compare.py writes this part from its JSON; do not edit -->"
END = "<!-- generated:end -->"
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


def runs(rows: list[dict[str, Any]], key: str = "wall") -> str:
    """Every run's figure with the 1-minute load average before it: ``2.31 ‹4.1›``."""
    return ", ".join(
        f"{r[key]:.2f} ‹{r['load_before']:.1f}›" if key in r else f"failed ‹{r['load_before']:.1f}›"
        for r in rows
        if key in r or "error" in r
    )


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


def table(sums: list[dict[str, Any]]) -> str:
    """The side-by-side table: one column per fleet size."""
    cols = [f"{s['repos']:,} repos ({s['projects']:,} projects, {s['hosts']} hosts)" for s in sums]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for s in sums:
            try:
                cells.append(f(s))
            except (KeyError, TypeError, ZeroDivisionError, ValueError):
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def contender(name: str, label: str, note: str, correct: str) -> None:
        def wall(s: dict[str, Any]) -> str:
            if f"{name}_wall" not in s:
                return str(s[f"{name}_note"])
            bad = "" if s[f"{name}_ok"] else " **WRONG**"
            if s[f"{name}_failed"]:
                bad += f" **{s[f'{name}_failed']} failed**"
            return f"**{fmt_s(s[f'{name}_wall'])}**{bad} ({runs(s[f'{name}_rows'])})"

        row(f"**{label}** ({note}): wall, median (every run ‹load before›)", wall)
        row(
            "… CPU: here / on the hosts (medians)",
            lambda s: f"{fmt_s(s[f'{name}_cpu'])} / {fmt_s(s[f'{name}_host_cpu'])}",
        )
        row(
            f"… {correct}",
            lambda s: "yes" if s[f"{name}_ok"] and not s[f"{name}_failed"] else "**NO**",
        )

    contender(
        "watchdog_e2e",
        "watchdog end to end",
        "`bup-watchdog check`, a fresh process: start-up, config, inventory, sweep, checks, state",
        "planted faults found exactly",
    )
    contender(
        "watchdog_sweep",
        "watchdog sweep only",
        "`sweep()` in a fresh process, inventory loaded before",
        "planted faults found exactly",
    )
    for peer, label in PEERS:
        contender(peer, label, "every host, 1 connection per host", "output correct")

    def ratio(peer: str) -> Callable[[dict[str, Any]], str]:
        return lambda s: (
            f"**{s[f'watchdog_e2e_vs_{peer}']:.1f}×** ({s[f'watchdog_sweep_vs_{peer}']:.1f}×)"
        )

    for peer, label in PEERS:
        row(f"**end to end vs {label}** (wall; sweep only)", ratio(peer))
    row(
        "watchdog CPU / host CPU per repository (full sweep)",
        lambda s: f"{s['cpu_us_per_repo']:.0f} µs / {s['host_us_per_repo']:.0f} µs",
    )
    row("probe output per repository", lambda s: f"{s['probe_bytes']:.0f} bytes")
    row(
        "inventory load (file), median (runs)",
        lambda s: (
            f"{fmt_s(s['inventory_s'])} ({', '.join(f'{x:.2f}' for x in s['inventory_runs'])})"
        ),
    )
    row(
        "**incremental sweep**, 1 % changed: wall (runs); repositories re-walked",
        lambda s: (
            f"{fmt_s(s['inc_wall'])} ({', '.join(f'{x:.2f}' for x in s['inc_walls'])}); "
            f"{s['inc_walked']:,.0f}"
        ),
    )
    row(
        "… share of a full sweep: wall / total CPU",
        lambda s: f"**{100 * s['inc_share_wall']:.0f} %** / {100 * s['inc_share_cpu']:.0f} %",
    )
    row("… facts equal to a full sweep's", lambda s: "{:,} of {:,}".format(*s["inc_equal"]))
    row(
        "peak RSS: full sweep / incremental sweeps (cache and inventory included)",
        lambda s: f"{s['rss_full']:.0f} MB / **{s['rss_inc']:.0f} MB**",
    )
    row(
        "/metrics from this sweep's state: median / first scrape after a change",
        lambda s: f"{s['metrics']['median']:.1f} ms / {s['metrics']['first']:.1f} ms",
    )
    row("fleet build (not in any figure)", lambda s: fmt_s(s["build_s"]))
    return "\n".join(lines)


def daemon_table(s: dict[str, Any]) -> str:
    """RSS of ``bup-watchdog run`` after sweep N, with the load and the time since start."""
    d = s["daemon"]
    marks = sorted(d["rss_mb"], key=int)
    lines = [
        "| after sweep | " + " | ".join(marks) + " |",
        "|---|" + "---|" * len(marks),
        "| RSS (VmRSS) | " + " | ".join(f"{d['rss_mb'][m]:.0f} MB" for m in marks) + " |",
        "| load average | " + " | ".join(f"{d['load_avg'][m]:.1f}" for m in marks) + " |",
        "| since start | " + " | ".join(fmt_s(d["seconds"][m]) for m in marks) + " |",
    ]
    return "\n".join(lines)


def _size(s: dict[str, Any]) -> str:
    return f"{s['repos'] // 1000:,}k"


def targets(sums: list[dict[str, Any]], synthetic: dict[str, Any] | None) -> list[list[str]]:
    """Issue 20's targets: figure, at the issue's start, now, target, met."""
    big = max(sums, key=lambda s: s["repos"]) if sums else {}
    at = f" ({_size(big)})" if big else ""
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
            cells.append(f"{_size(s)}: {a:.1f}× / {p:.1f}×")
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
        f"scrape after a change (between sweeps: median)",
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
        now = f"{d['rss_mb'][marks[-1]]:.0f} MB after {marks[-1]} sweeps at {_size(dm)}; " + (
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


def render(data: dict[str, Any]) -> str:
    """The whole generated part, markers included."""
    sums = [summarise(r) for r in data["results"]]
    tgt = targets(sums, data.get("metrics_synthetic"))
    met = [r[0] for r in tgt if r[4] == "yes"]
    missed = [r[0] for r in tgt if r[4] == "no"]
    load = data.get("load_avg", {})
    partial = (
        []
        if data.get("complete", True)
        else [
            "**A partial run**: it stopped before its end; the sizes below are what it measured.",
            "",
        ]
    )
    parts = [
        START,
        "",
        "## Last run",
        "",
        *partial,
        f"{data['date']} at commit {data['commit']}, {data['machine']}; {data['versions']}. "
        f"The run took {data['elapsed_seconds'] / 60:.1f} min (fleet builds included); load "
        f"average {load.get('start', float('nan')):.1f} at the start, "
        f"{load.get('end', float('nan')):.1f} at the end. Command: `{data['command']}`.",
        "",
        f"Each fleet size is one fleet; on it the contenders run side by side, {data['rounds']} "
        "rounds, the order rotated by one each round; every figure is the median, every run is "
        "shown with the 1-minute load average read just before it ‹in angle quotes›. Nothing is "
        "extrapolated: the peers run on every host of the fleet.",
        "",
        table(sums),
    ]
    dm = next((s for s in sums if s.get("daemon")), None)
    if dm:
        d = dm["daemon"]
        g = d["growth_pct"]
        parts += [
            "",
            f"**The daemon** (`bup-watchdog run`, incremental sweeps every "
            f"{d['interval_seconds']:g} s, {_size(dm)} repositories): its RSS after sweep N; "
            f"peak {d['peak_rss_mb']:.0f} MB (VmHWM); growth from sweep 10 on "
            + (f"**{g:+.1f} %**" if g is not None else "not measured")
            + f"; `/metrics` scraped {d['scrapes']} times while it ran, median "
            f"{d['scrape_ms_median']:.1f} ms, slowest {d['scrape_ms_max']:.1f} ms.",
            "",
            daemon_table(dm),
        ]
    parts += [
        "",
        "## Issue 20's targets",
        "",
        "This machine, the largest size measured unless the row says otherwise.",
        "",
        targets_table(tgt),
        "",
        f"Met: {len(met)} of {len(tgt)}"
        + (f". Missed: {'; '.join(missed)}." if missed else ".")
        + (
            " Not measured in this run: " + "; ".join(r[0] for r in tgt if r[4] == "–") + "."
            if any(r[4] == "–" for r in tgt)
            else ""
        ),
        "",
        END,
    ]
    return "\n".join(wrap(p) for p in parts)


def wrap(paragraph: str) -> str:
    """A prose paragraph wrapped at 100 columns as the hand-written text is; tables as they are."""
    if paragraph.startswith(("|", "<!--", "#")) or len(paragraph) <= 100:
        return paragraph
    return textwrap.fill(paragraph, 100, break_long_words=False, break_on_hyphens=False)


def write_readme(readme: Path, generated: str) -> None:
    """Put ``generated`` between the markers of ``readme`` (which must have them)."""
    text = readme.read_text(encoding="utf-8")
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{readme}: the markers {START!r} and {END!r} are missing")
    readme.write_text(head + generated + tail, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("json", type=Path, help="the JSON bench/compare.py wrote")
    ap.add_argument("--readme", type=Path, help="rewrite this README's generated part")
    args = ap.parse_args()
    text = render(json.loads(args.json.read_text()))
    if args.readme:
        write_readme(args.readme, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
