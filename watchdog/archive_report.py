"""The archive audit's report: plain data (the JSON format), rendered as HTML or Markdown.

Split from ``archive.py``, which lists, checks and resumes; this module only presents a finished
``AuditRun``.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bup_watchdog.archive import AuditRun
from bup_watchdog.errors import WatchdogError

_PROBLEMS = re.compile(r"; (?=bup ls master failed)")


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration as an operator reads it: 45 s, 12 min, 6.0 h, 3.2 d."""
    if seconds is None:
        return "—"
    s = abs(seconds)
    text = (
        f"{s:.0f} s"
        if s < 120
        else f"{s / 60:.0f} min"
        if s < 7200
        else f"{s / 3600:.1f} h"
        if s < 172800
        else f"{s / 86400:.1f} d"
    )
    return text if seconds >= 0 else f"-{text}"


def report_data(run: AuditRun, max_lag: float) -> dict[str, Any]:
    """The report as plain data (the JSON format; the HTML and Markdown render it)."""
    broken = sorted(run.broken, key=lambda a: a.project_id)
    not_behind = ("in_step", "ahead", "broken")
    problems = len(broken) + len(run.stale)
    verdict = "problems" if problems else "incomplete" if run.pending else "ok"
    return {
        "format_version": 1,
        "archive": run.target.label,
        "state_file": str(run.state_file),
        "started": _ts(run.started),
        "finished": _ts(run.finished),
        "summary": {
            "verdict": verdict,
            "repositories": len(run.listing.repos),
            "audited": len(run.audits),
            "audited_this_run": run.checked_now,
            "resumed_from_state": run.resumed,
            "ok": sum(1 for a in run.audits.values() if a.ok),
            "broken": len(broken),
            "stale": len(run.stale),
            "not_audited": len(run.pending),
            "skipped": len(run.listing.skipped),
            "max_lag_seconds": max_lag,
            "stopped": run.stopped,
            "inventory": run.inventory_note,
        },
        "broken": [
            {
                "project_id": a.project_id,
                "message": a.message or "deep check failed",
                "problems": _PROBLEMS.split(a.message or "deep check failed"),
                "fsck_rc": a.fsck_rc,
                "bup_rc": a.bup_rc,
                "master_sha": a.master_sha,
                "checked_at": _ts(a.checked_at),
            }
            for a in broken
        ],
        "lag": [
            {
                "project_id": lag.project_id,
                "master": lag.master,
                "status": lag.status,
                "lag_seconds": lag.lag_seconds,
                "lag": age(lag.lag_seconds),
                "archive_newest_save": _ts(lag.archive_save),
                "master_newest_save": _ts(lag.master_save),
                "master_from": lag.source,
            }
            for lag in sorted(
                run.lags,
                key=lambda x: (x.status in not_behind, -(x.lag_seconds or 0), x.project_id),
            )
        ],
        "not_in_inventory": sorted(
            p for p in run.audits if p not in {lag.project_id for lag in run.lags}
        )
        if run.inventory_note is None
        else [],
        # Those not reached yet are only counted (an archive may hold 100,000 repositories).
        "could_not_check": [
            {"project_id": p, "error": run.errors[p]} for p in run.pending if p in run.errors
        ],
        "skipped": [{"name": n, "reason": r} for n, r in run.listing.skipped],
    }


def render(data: dict[str, Any], fmt: str) -> str:
    """The report as JSON, or rendered by the archive_audit templates (HTML, Markdown)."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("bup_watchdog", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    name = "archive_audit.html.j2" if fmt == "html" else "archive_audit.md.j2"
    return env.get_template(name).render(r=data)


def write_report(text: str, output: str | None, fmt: str) -> str | None:
    """Write the report ('-': stdout, returns None); default name in the current directory."""
    if output == "-":
        sys.stdout.write(text)
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(output) if output else Path(f"bupwatch-archive-audit-{stamp}.{fmt}")
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise WatchdogError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return str(path.resolve())
