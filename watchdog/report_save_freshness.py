"""The audit report's save_freshness section: the stalest projects, from the open findings.

A module of its own beside ``report.py``, which calls ``stale_saves``: projects used long after
their newest save (saves failing silently), never-saved ones first, then the longest used since;
counted per age bucket (the same buckets as ``bupwatch_save_age_projects``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from bup_watchdog.checks.save_freshness import AGE_BUCKETS, NEVER_SAVED, age_bucket
from bup_watchdog.model import Severity
from bup_watchdog.state import State

BUCKET_LABELS = {
    "under_1d": "under 1 d",
    "1d_to_3d": "1–3 d",
    "3d_to_7d": "3–7 d",
    "7d_to_30d": "7–30 d",
    "over_30d": "over 30 d",
    NEVER_SAVED: "never saved",
}


def stale_saves(
    state: State,
    where: str,
    params: Sequence[Any],
    *,
    label: Callable[[str], str],
    iso: Callable[[float | None], str | None],
    limit: int = 20,
) -> dict[str, Any]:
    """The section's data. ``where``/``params``: the report's server scope (SQL with a leading
    AND); ``label`` names a server, ``iso`` writes a Unix time."""
    rows = state.query(
        "SELECT project_id, server_id, severity, value, details FROM findings "  # noqa: S608
        f"WHERE resolved_at IS NULL AND check_name = 'save_freshness'{where}",
        list(params),
    )
    # Never saved first (no value), then the longest used since the newest save.
    rows.sort(key=lambda r: (r[3] is not None, -(r[3] or 0.0), label(r[1]), r[0]))
    counts = dict.fromkeys([name for name, _ in AGE_BUCKETS] + [NEVER_SAVED], 0)
    for row in rows:
        counts[age_bucket(row[3])] += 1
    projects = []
    for pid, sid, severity, value, details_json in rows[:limit]:
        details = json.loads(details_json or "{}")
        projects.append(
            {
                "project_id": pid,
                "host": label(sid),
                "server_id": sid,
                "severity": Severity(severity).label,
                "used_after_seconds": value,
                "newest_save": iso(details.get("newest_save")),
                "last_used": iso(details.get("last_used")),
            }
        )
    return {
        "stale": len(rows),
        "buckets": [{"bucket": name, "projects": n} for name, n in counts.items()],
        "projects": projects,
        "not_listed": max(0, len(rows) - limit),
    }
