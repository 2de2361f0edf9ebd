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
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository's root on the path, as compare.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.summary import PEERS, fmt_s, size_label, summarise
from bench.targets import targets, targets_table

START = "<!-- generated:start: bench/compare.py writes this part from its JSON; do not edit -->"
END = "<!-- generated:end -->"


def runs(rows: list[dict[str, Any]], key: str = "wall") -> str:
    """Every run's figure with the 1-minute load average before it: ``2.31 ‹4.1›``."""
    return ", ".join(
        f"{r[key]:.2f} ‹{r['load_before']:.1f}›" if key in r else f"failed ‹{r['load_before']:.1f}›"
        for r in rows
        if key in r or "error" in r
    )


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
        "/metrics from this sweep's state: median / first scrape after a sweep (after one "
        "with a deep pass)",
        lambda s: (
            f"{s['metrics']['median']:.1f} ms / {s['metrics']['first']:.1f} ms"
            + (f" ({s['metrics']['first_deep']:.1f} ms)" if "first_deep" in s["metrics"] else "")
        ),
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


def settle_sentence(data: dict[str, Any]) -> str:
    """How every figure was started (``bench/settle.py``): the walks' shortest and longest time,
    and how many figures were taken without the machine going quiet; empty for runs made before
    it existed."""
    settles = [
        row["settle"]
        for size in data["results"]
        for name, rows in size.get("rounds", {}).items()
        if name != "warmup"
        for row in rows
        if "settle" in row
    ]
    if not settles:
        return ""
    walks = [s["warm_seconds"] for s in settles]
    loud = sum(1 for s in settles if not s["quiet"])
    digits = 0 if max(walks) >= 10 else 1
    return (
        " Before every figure every host's repositories were walked once, untimed (`find`, every"
        f" entry lstat-ed: {min(walks):.{digits}f}–{max(walks):.{digits}f} s; the peers' process"
        " churn had left the next contender a cold cache), and the run waited for no open"
        " session and idle CPUs (`bench/settle.py`)"
        + (
            f"; {loud} of {len(settles)} figures were taken without that quiet (their rows in"
            " the JSON say how busy it was)."
            if loud
            else "."
        )
    )


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
        "extrapolated: the peers run on every host of the fleet." + settle_sentence(data),
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
            f"{d['interval_seconds']:g} s, {size_label(dm)} repositories): its RSS after sweep N; "
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
    """Put ``generated`` between the markers of ``readme`` (which must have them); a file that
    does not exist yet is written with the generated part alone (a trial's ``--readme /tmp/…``)."""
    if not readme.exists():
        readme.write_text(generated + "\n", encoding="utf-8")
        return
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
    sys.exit(main())
