"""Geometry of the audit report's inline SVG charts: plain numbers the HTML template draws.

Each function turns the report's data into coordinates in a fixed viewBox; the template scales the
SVG to its box (and keeps a readable minimum width, scrolling inside its own frame on a phone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bup_watchdog.report_format import LAG_LABELS, human_bytes, human_duration


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    exp = float(10 ** math.floor(math.log10(value)))
    for m in (1.0, 2.0, 2.5, 5.0):
        if value <= m * exp:
            return m * exp
    return 10.0 * exp


def compact(n: float) -> str:
    """A count in at most four characters: 950, 2.6k, 27k, 1.2M."""
    n = float(n)
    if abs(n) < 999.5:
        return f"{n:.0f}"
    if abs(n) < 9950:
        return f"{n / 1e3:.1f}k"
    if abs(n) < 999_500:
        return f"{n / 1e3:.0f}k"
    if abs(n) < 9_950_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e6:.0f}M"


DC_COLORS = ("#2563eb", "#0d9488", "#9333ea", "#db2777", "#ea580c", "#65a30d")


def lag_chart(lag: dict[str, Any]) -> dict[str, Any] | None:
    """Geometry of the replication lag chart: grouped bars per dc on a log scale."""
    if not lag or not lag["dcs"]:
        return None
    width, height = 880, 300
    left, right, top, bottom = 64, 16, 34, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    dcs = lag["dcs"][: len(DC_COLORS)]
    n_buckets = len(LAG_LABELS)
    peak = max(max(d["counts"]) for d in dcs)
    smallest = min(c for d in dcs for c in d["counts"] if c)
    # A log scale only when a few stragglers would vanish beside the bulk of in-sync replicas.
    log_scale = peak / smallest >= 20
    decades = max(1, math.ceil(math.log10(peak + 1)))
    top_value = _nice_max(peak * 1.1)

    def y(count: float) -> float:
        if log_scale:
            return top + plot_h - plot_h * math.log10(count + 1) / decades
        return top + plot_h - plot_h * count / top_value

    slot = plot_w / n_buckets
    bar_w = min(28.0, (slot - 10) / len(dcs))
    warn_from = next(
        (i for i, b in enumerate([0.0, *lag["buckets"]]) if b >= lag["warn_seconds"]), n_buckets
    )
    crit_from = next(
        (i for i, b in enumerate([0.0, *lag["buckets"]]) if b >= lag["critical_seconds"]),
        n_buckets,
    )
    bars, labels = [], []
    for i, label in enumerate(LAG_LABELS):
        x0 = left + i * slot + (slot - bar_w * len(dcs)) / 2
        labels.append({"x": left + i * slot + slot / 2, "text": label})
        for j, d in enumerate(dcs):
            c = d["counts"][i]
            if not c:
                continue
            bars.append(
                {
                    "x": round(x0 + j * bar_w, 1),
                    "y": round(y(c), 1),
                    "w": round(bar_w - 2, 1),
                    "h": round(top + plot_h - y(c), 1),
                    "color": DC_COLORS[j],
                    "count": compact(c),
                    "title": f"dc {d['dc']}: {c:,} replicas {label}",
                }
            )
    if log_scale:
        ticks = [{"y": round(y(10**k - 1), 1), "text": compact(10**k)} for k in range(decades + 1)]
        ticks[0]["text"] = "0"
    else:
        step = top_value / 5 if top_value >= 5 else 1.0
        ticks = [
            {"y": round(y(v), 1), "text": compact(v)}
            for v in (step * k for k in range(int(top_value / step) + 1))
        ]
    zones: list[dict[str, Any]] = [
        {
            "x": round(left + warn_from * slot, 1),
            "w": round((crit_from - warn_from) * slot, 1),
            "cls": "zone-warn",
            "text": f"warning ≥ {human_duration(lag['warn_seconds'])}",
        },
        {
            "x": round(left + crit_from * slot, 1),
            "w": round((n_buckets - crit_from) * slot, 1),
            "cls": "zone-crit",
            "text": f"critical ≥ {human_duration(lag['critical_seconds'])}",
        },
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "bars": bars,
        "labels": labels,
        "ticks": ticks,
        "zones": [z for z in zones if z["w"] > 0],
        "legend": [{"dc": d["dc"], "color": DC_COLORS[j]} for j, d in enumerate(dcs)],
        "scale": "log" if log_scale else "linear",
    }


def hbar_chart(
    rows: Sequence[tuple[str, float, str]],
    *,
    limits: Sequence[tuple[float, str, str]] = (),
    fmt: str = "bytes",
) -> dict[str, Any] | None:
    """Geometry of a horizontal bar chart: (label, value, css class) rows, optional limit lines."""
    if not rows:
        return None
    width, label_w, right = 880, 150, 80
    row_h, top = 22, 24
    plot_w = width - label_w - right
    peak = _nice_max(max([v for _, v, _ in rows] + [v for v, _, _ in limits] + [1]))
    out_rows = []
    for i, (label, value, cls) in enumerate(rows):
        out_rows.append(
            {
                "y": top + i * row_h,
                "label": label,
                "w": round(plot_w * value / peak, 1),
                "cls": cls,
                "text": human_bytes(value) if fmt == "bytes" else f"{value:,.0f}",
            }
        )
    height = top + len(rows) * row_h + 10
    return {
        "width": width,
        "height": height,
        "label_w": label_w,
        "plot_w": plot_w,
        "top": top,
        "row_h": row_h,
        "rows": out_rows,
        "limits": [
            {"x": round(label_w + plot_w * v / peak, 1), "cls": cls, "text": text}
            for v, cls, text in limits
        ],
    }


def outcome_bar(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """Segments of a 100% bar of journal outcomes."""
    total = sum(counts.values())
    if not total:
        return []
    x = 0.0
    out = []
    for status, n in counts.items():
        w = 100.0 * n / total
        out.append({"status": status, "n": n, "x": round(x, 2), "w": round(w, 2)})
        x += w
    return out
