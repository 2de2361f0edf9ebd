"""How the audit report writes values for people: durations, sizes, times, Markdown-safe text.

Display strings live here and in the templates only; the report's data (and its JSON) holds
numbers, ISO times and identifiers.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from bup_watchdog.sweep import LAG_BUCKETS

# The replication lag buckets (sweep.LAG_BUCKETS) as an operator reads them; the last is open.
LAG_LABELS = (
    "≤ 1 min",
    "1–5 min",
    "5–15 min",
    "15 min–1 h",
    "1–4 h",
    "4–12 h",
    "12 h–1 d",
    "1–3 d",
    "3–7 d",
    "> 7 d",
)


def anchor(name: str) -> str:
    """A host name as the tail of its HTML id, #host-h4 (what an id or URL would mangle: -)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "-"


def md_link(text: Any, url: str | None) -> str:
    """A Markdown link (or the escaped text alone when there is no URL)."""
    label = _md(text)
    if not url:
        return label
    return f"[{label}]({url.replace('(', '%28').replace(')', '%29').replace(' ', '%20')})"


def lag_bucket(le_seconds: float | None, beyond: bool = False) -> str:
    """A lag quantile (its bucket's upper bound in seconds) as the bucket it is in: "1–4 h"."""
    if le_seconds is None:
        return "–"
    if beyond:
        return LAG_LABELS[-1]
    return LAG_LABELS[min(bisect_left(LAG_BUCKETS, le_seconds), len(LAG_LABELS) - 1)]


def _human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f} {unit}"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def human_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    return _human_age(float(seconds))


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _md(value: Any) -> str:
    """Text safe inside a Markdown table cell: no HTML, no pipes, no line breaks."""
    text = "" if value is None else str(value)
    for a, b in (
        ("\\", "\\\\"),
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ("|", "\\|"),
        ("`", "\\`"),
        ("*", "\\*"),
        ("[", "\\["),
        ("]", "\\]"),
    ):
        text = text.replace(a, b)
    return " ".join(text.split())
