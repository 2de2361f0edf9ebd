"""The audit report's data rendered as one self-contained HTML page, Markdown or JSON.

Jinja2 templates beside this package (``templates/``): HTML autoescaped, Markdown escaped by its
``md`` filter; the JSON is the data as ``build_report`` made it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from bup_watchdog.report_charts import hbar_chart, lag_chart, outcome_bar
from bup_watchdog.report_format import (
    LAG_LABELS,
    _human_age,
    _md,
    _ts,
    anchor,
    human_bytes,
    human_duration,
    lag_bucket,
    md_link,
)
from bup_watchdog.report_save_freshness import BUCKET_LABELS


@cache
def _environment() -> Environment:
    """Templates beside this module; HTML autoescaped, Markdown escaped by its ``md`` filter."""
    env = Environment(
        loader=PackageLoader("bup_watchdog", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        anchor=anchor,
        bytes=human_bytes,
        freshness_bucket=lambda v: BUCKET_LABELS.get(v, v),
        lag_bucket=lag_bucket,
        duration=human_duration,
        md=_md,
        md_link=md_link,
        pct=lambda v, digits=0: "–" if v is None else f"{100 * v:.{digits}f}%",
        num=lambda v: f"{v:,}",
        short_id=lambda v: (v or "")[:8],
        when=lambda v: (v or "–").replace("T", " ").replace("Z", " UTC"),
    )
    env.globals.update(lag_labels=LAG_LABELS)
    return env


def render(report: dict[str, Any], fmt: str = "html") -> str:
    """The report as HTML (one self-contained page), Markdown or JSON."""
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if fmt not in ("html", "md"):
        raise ValueError(f"unknown report format {fmt!r} (html, md or json)")
    now = _ts(report["report"]["generated_at"]) or time.time()

    def ago(value: str | None) -> str:
        ts = _ts(value)
        return "never" if ts is None else f"{_human_age(now - ts)} ago"

    template = _environment().get_template(f"report.{fmt}.j2")
    context: dict[str, Any] = {"r": report, "ago": ago}
    if fmt == "html":
        by_dc: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for h in sorted(report["hosts"], key=lambda h: (str(h["dc"]), h["name"])):
            by_dc["?" if h["dc"] is None else str(h["dc"])].append(h)
        context["tiles"] = sorted(by_dc.items())
        context["lag_chart"] = lag_chart(report["lag"]) if report["lag"] else None
        save = report["save_logs"]
        context["save_chart"] = (
            hbar_chart(
                [
                    (
                        h["host"],
                        h["bytes"],
                        "crit"
                        if h["bytes"] >= save["critical_bytes"]
                        else "warn"
                        if h["bytes"] >= save["warn_bytes"]
                        else "ok",
                    )
                    for h in save["hosts"]
                ],
                limits=[
                    (save["warn_bytes"], "warn", f"warn {human_bytes(save['warn_bytes'])}"),
                    (
                        save["critical_bytes"],
                        "crit",
                        f"critical {human_bytes(save['critical_bytes'])}",
                    ),
                ],
            )
            if save
            else None
        )
        by_check = report["projects"]["by_check"]
        context["check_chart"] = hbar_chart(
            [
                (c, v["projects"], "crit" if v["worst"] == "critical" else "warn")
                for c, v in by_check.items()
            ],
            fmt="count",
        )
        context["outcomes"] = outcome_bar(report["repairs"]["counts"])
    return template.render(**context)
