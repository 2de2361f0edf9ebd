"""Generate the Grafana dashboards of bup-watchdog as provisionable JSON.

Plain Python and the standard library (no dashboard SDK to install): one function per dashboard,
small helpers for panels, targets and template variables, and a grid that lays panels out left to
right. Every panel queries the data source chosen in the ``$datasource`` variable (no data source
UID is written into a dashboard), and server-level panels honour the ``$dc`` and ``$server_id``
variables. The JSON files beside this script are its output and are committed; the tests fail when
they are not up to date.

    python dashboards/grafana/generate.py          # rewrite the JSON files
    python dashboards/grafana/generate.py --check  # exit 1 when a file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
TAG = "bup-watchdog"
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# Label selectors for the template variables. Host-level series carry server_id, host and dc.
HOSTS = 'dc=~"$dc", server_id=~"$server_id"'
# Series labelled by server_id only (findings, projects_failing) get the host's name and dc by
# joining on a host-level series; the join also applies the dc/server filters.
SCOPE = f"group by (server_id, host, dc) (bupwatch_host_probe_success{{{HOSTS}}})"


def scoped(expr: str) -> str:
    """``expr`` (labelled by server_id) restricted to the chosen hosts, with host and dc labels."""
    return f"({expr}) * on (server_id) group_left (host, dc) {SCOPE}"


def lag_buckets(selector: str) -> str:
    """The replication lag buckets of the selected hosts, le_seconds copied to le so that
    histogram_quantile and heatmaps read them (a snapshot gauge per bucket, not a histogram)."""
    return (
        f"label_replace(bupwatch_replication_lag_replicas{{{selector}}}, "
        '"le", "$1", "le_seconds", "(.+)")'
    )


def lag_over(bound: str, selector: str, by: str) -> str:
    """Replicas of the selected hosts more than ``bound`` seconds behind, summed ``by``."""
    return (
        f'sum{by} (bupwatch_replication_lag_replicas{{le_seconds="+Inf", {selector}}}) - '
        f'sum{by} (bupwatch_replication_lag_replicas{{le_seconds="{bound}", {selector}}})'
    )


# ---------------------------------------------------------------- template variables


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_var(
    name: str, label: str, query: str, *, multi: bool = True, hide: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "current": {},
        "hide": hide,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "multi": multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


def dc_var() -> dict[str, Any]:
    return query_var("dc", "Data centre", "label_values(bupwatch_host_probe_success, dc)")


def server_var(*, multi: bool = True) -> dict[str, Any]:
    return query_var(
        "server_id",
        "Server",
        'label_values(bupwatch_host_probe_success{dc=~"$dc"}, server_id)',
        multi=multi,
    )


# ---------------------------------------------------------------- panels


def target(
    expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series"
) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant,
        "range": not instant,
        "format": fmt,
        "editorMode": "code",
    }


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


GOOD_BAD = thresholds((None, "red"), (1, "green"))
BAD_GOOD = thresholds((None, "green"), (1, "red"))
COUNT_BAD = thresholds((None, "green"), (1, "orange"))
COVERAGE = thresholds((None, "red"), (0.5, "orange"), (0.9, "green"))


def value_map(*entries: tuple[int, str, str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                str(v): {"text": text, "color": color, "index": i}
                for i, (v, text, color) in enumerate(entries)
            },
        }
    ]


UP_DOWN = value_map((0, "down", "red"), (1, "up", "green"))
YES_NO_BAD = value_map((0, "no", "green"), (1, "YES", "red"))
BREAKER = value_map((0, "closed", "green"), (1, "OPEN: repairs suspended", "red"))
STATUS_COLORS = {
    "succeeded": "green",
    "failed": "red",
    "interrupted": "dark-red",
    "refused": "orange",
    "pending": "blue",
    "running": "purple",
    "conflict": "yellow",
    "dry_run": "text",
    "denied": "#8e8e8e",
    "critical": "red",
    "warning": "orange",
}


def color_overrides(label_values: dict[str, str]) -> list[dict[str, Any]]:
    """Fixed colours for series whose display name is a status or severity."""
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
        }
        for name, color in label_values.items()
    ]


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str | None = None,
    defaults: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    links: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    field: dict[str, Any] = {"color": {"mode": "palette-classic"}, **(defaults or {})}
    if unit:
        field["unit"] = unit
    if custom:
        field["custom"] = custom
    refs = "ABCDEFGHIJ"
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [{**t, "refId": refs[i]} for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": field, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        p["transformations"] = transformations
    if links:
        p["links"] = links
    return p


def stat(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str | None = None,
    steps: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "value",
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}}
    if steps:
        defaults["thresholds"] = steps
    if mappings:
        defaults["mappings"] = mappings
    return panel(
        "stat",
        title,
        targets,
        description=description,
        unit=unit,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area" if text_mode == "value" else "none",
            "justifyMode": "center",
            "textMode": text_mode,
            "orientation": "auto",
        },
    )


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str | None = None,
    stack: bool = False,
    bars: bool = False,
    log_scale: bool = False,
    steps: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    min_zero: bool = True,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 70 if bars else (25 if stack else 10),
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": 0 if min_zero else None,
    }
    if log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {}
    if steps:
        defaults["thresholds"] = steps
        custom["thresholdsStyle"] = {"mode": "line+area"}
    return panel(
        "timeseries",
        title,
        targets,
        description=description,
        unit=unit,
        defaults=defaults,
        custom=custom,
        overrides=overrides,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def state_timeline(
    title: str,
    expr: str,
    legend: str,
    *,
    description: str,
    mappings: list[dict[str, Any]],
) -> dict[str, Any]:
    return panel(
        "state-timeline",
        title,
        [target(expr, legend)],
        description=description,
        defaults={
            "color": {"mode": "thresholds"},
            "mappings": mappings,
            "thresholds": thresholds((None, "green")),
        },
        custom={"fillOpacity": 80, "lineWidth": 0},
        options={
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.8,
            "legend": {"showLegend": False},
        },
    )


def bargauge(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str | None = None,
    steps: dict[str, Any] | None = None,
    min_max: tuple[float, float] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}}
    if steps:
        defaults["thresholds"] = steps
    if min_max:
        defaults["min"], defaults["max"] = min_max
    return panel(
        "bargauge",
        title,
        [{**t, "instant": True, "range": False} for t in targets],
        description=description,
        unit=unit,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "left",
            "sizing": "auto",
        },
    )


def table(
    title: str,
    expr: str,
    *,
    description: str,
    columns: dict[str, str],
    unit: str | None = None,
    links: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An instant query as a table; ``columns`` maps label names to headers (others hidden)."""
    order = {name: i for i, name in enumerate([*columns, "Value"])}
    return panel(
        "table",
        title,
        [target(expr, instant=True, fmt="table")],
        description=description,
        unit=unit,
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": order,
                    "renameByName": {**columns, "Value": "count"},
                },
            },
            {"id": "filterFieldsByName", "options": {"include": {"names": [*columns, "Value"]}}},
            {"id": "sortBy", "options": {"sort": [{"field": "Value", "desc": True}]}},
        ],
        overrides=[
            {
                "matcher": {"id": "byName", "options": "host"},
                "properties": [{"id": "links", "value": links}],
            }
        ]
        if links
        else None,
    )


def heatmap(title: str, expr: str, *, description: str) -> dict[str, Any]:
    return panel(
        "heatmap",
        title,
        [target(expr, "{{le}}", fmt="heatmap")],
        description=description,
        options={
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
            "rowsFrame": {"layout": "le"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
            "cellValues": {"unit": "short"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
    )


HOST_LINK = [
    {
        "title": "Host detail of ${__data.fields.host}",
        "url": "/d/bupwatch-host/bup-watchdog-host-detail?var-server_id=${__data.fields.server_id}"
        "&${datasource:queryparam}&${__url_time_range}",
    }
]


# ---------------------------------------------------------------- layout


class Grid:
    """Lays panels out on Grafana's 24-column grid, left to right, row by row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, p: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        p["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = self.row_h = 0

    def numbered(self) -> list[dict[str, Any]]:
        for i, p in enumerate(self.panels, 1):
            p["id"] = i
        return self.panels


def dashboard(
    uid: str, title: str, description: str, grid: Grid, variables: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "utc",
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "bup-watchdog",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": grid.numbered(),
    }


# ---------------------------------------------------------------- the dashboards


def fleet_overview() -> dict[str, Any]:
    g = Grid()
    g.row("Fleet now")
    for p in (
        stat(
            "Hosts probed",
            [
                target(f"sum(bupwatch_host_probe_success{{{HOSTS}}})", "probed"),
                target(f"count(bupwatch_host_probe_success{{{HOSTS}}})", "in inventory"),
            ],
            description="Storage hosts whose probe answered completely in the last sweep, of "
            "those in the inventory.",
            text_mode="value_and_name",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "bup_server up",
            [
                target(f"sum(bupwatch_bup_server_up{{{HOSTS}}})", "up"),
                target(f"count(bupwatch_bup_server_up{{{HOSTS}}})", "hosts"),
            ],
            description="Hosts whose bup_server accepted a TCP connection at the inventory's "
            "address.",
            text_mode="value_and_name",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Failing projects",
            [target(f"sum({scoped('bupwatch_projects_failing')})", "failing")],
            description="Projects with an open finding, counted once per check and host (a "
            "project failing two checks counts twice).",
            steps=COUNT_BAD,
        ),
        stat(
            "Open findings",
            [target(f"sum by (severity) ({scoped('bupwatch_findings')})", "{{severity}}")],
            description="Open findings of every check on the chosen hosts, by severity.",
            text_mode="value_and_name",
            steps=COUNT_BAD,
        ),
        stat(
            "Repositories",
            [target(f"sum(bupwatch_host_repositories{{{HOSTS}}})", "repositories")],
            description="bup repositories on the chosen hosts (probed hosts only).",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Deep-check coverage",
            [target(f"avg(bupwatch_deep_check_coverage_ratio{{{HOSTS}}})", "coverage")],
            description="Mean share of each host's repositories deep-checked (git fsck + bup ls) "
            "within the deep-check window.",
            unit="percentunit",
            steps=COVERAGE,
        ),
        stat(
            "Circuit breaker",
            [target("max(bupwatch_circuit_breaker_open)", "breaker")],
            description="Open when too much of the fleet looked unreachable in the last sweep: "
            "the watchdog then distrusts its own view and suspends every repair.",
            mappings=BREAKER,
            steps=BAD_GOOD,
        ),
        stat(
            "Last sweep",
            [target("time() - max(bupwatch_sweep_last_completed_timestamp_seconds)", "age")],
            description="Time since the last sweep finished. Over 30 min: nobody is watching.",
            unit="s",
            steps=thresholds((None, "green"), (900, "orange"), (1800, "red")),
        ),
    ):
        g.add(p, 3, 4)

    g.row("Hosts")
    g.add(
        state_timeline(
            "bup_server up, per host",
            f"bupwatch_bup_server_up{{{HOSTS}}}",
            "{{host}}",
            description="Whether each host's bup_server accepted a TCP connection, over time.",
            mappings=UP_DOWN,
        ),
        12,
        8,
    )
    g.add(
        state_timeline(
            "Probe answered, per host",
            f"bupwatch_host_probe_success{{{HOSTS}}}",
            "{{host}}",
            description="Whether each host's probe (one SSH session) answered completely.",
            mappings=UP_DOWN,
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Fleet-wide ratios (recording rules)",
            [
                target("bupwatch:hosts_probed:ratio", "hosts probed"),
                target("bupwatch:bup_servers_up:ratio", "bup_server up"),
                target("bupwatch:deep_check_coverage:ratio", "deep-check coverage"),
            ],
            description="From dashboards/prometheus/recording.yml; fleet-wide, so the dc and "
            "server filters do not apply.",
            unit="percentunit",
        ),
        24,
        7,
    )

    g.row("Failing projects")
    g.add(
        timeseries(
            "Failing projects per check",
            [
                target(
                    f"sum by (check) ({scoped('bupwatch_projects_failing')})",
                    "{{check}}",
                )
            ],
            description="Projects with an open finding, per check, on the chosen hosts.",
            stack=True,
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Failing projects per host",
            [target(f"sum by (host) ({scoped('bupwatch_projects_failing')})", "{{host}}")],
            description="Projects with an open finding on each host (all checks added up).",
            stack=True,
        ),
        12,
        8,
    )
    g.add(
        table(
            "Failing projects per check and host, now",
            f"sum by (host, dc, server_id, check) ({scoped('bupwatch_projects_failing')}) > 0",
            description="Click a host for its detail dashboard. The projects themselves are in "
            "`bup-watchdog audit` and the daemon's /report page.",
            columns={"host": "host", "dc": "dc", "check": "check", "server_id": "server_id"},
            links=HOST_LINK,
        ),
        14,
        9,
    )
    g.add(
        table(
            "Worst projects (top N exported)",
            "sum by (project_id) (bupwatch_worst_project_findings) > 0",
            description="The few projects with the most open findings (metrics.top_projects); "
            "every other project is only counted.",
            columns={"project_id": "project"},
        ),
        10,
        9,
    )
    ages = scoped("bupwatch_save_age_projects")
    g.add(
        timeseries(
            "Projects used long after their newest save, by how long",
            [target(f"sum by (bucket) ({ages})", "{{bucket}}")],
            description="save_freshness: master copies whose conf/touch is a day or more newer "
            "than their newest save (saves failing silently), by how much; never_saved: live "
            "files and no save at all. Their projects are in `bup-watchdog audit`.",
            stack=True,
            bars=True,
            overrides=color_overrides(
                {
                    "under_1d": "yellow",
                    "1d_to_3d": "orange",
                    "3d_to_7d": "red",
                    "7d_to_30d": "dark-red",
                    "over_30d": "purple",
                    "never_saved": "#8e8e8e",
                }
            ),
        ),
        14,
        8,
    )
    g.add(
        table(
            "Stale saves per host and age, now",
            f"sum by (host, dc, server_id, bucket) ({ages}) > 0",
            description="Projects on each host used long after their newest save, per age bucket. "
            "Click a host for its detail dashboard.",
            columns={"host": "host", "dc": "dc", "bucket": "bucket", "server_id": "server_id"},
            links=HOST_LINK,
        ),
        10,
        8,
    )

    g.row("Replication")
    g.add(
        heatmap(
            "Replication lag distribution",
            f"sum by (le) ({lag_buckets(HOSTS)})",
            description="How far the replicas on the chosen hosts are behind their masters, at "
            "each sweep (the buckets are a snapshot, not a rate).",
        ),
        12,
        9,
    )
    g.add(
        timeseries(
            "Replication lag percentiles per dc",
            [
                target(
                    'bupwatch:replication_lag_seconds:p50_by_dc{dc=~"$dc"}',
                    "p50 dc {{dc}}",
                ),
                target(
                    'bupwatch:replication_lag_seconds:p95_by_dc{dc=~"$dc"}',
                    "p95 dc {{dc}}",
                ),
                target(
                    f"histogram_quantile(0.99, sum by (dc, le) ({lag_buckets(HOSTS)}))",
                    "p99 dc {{dc}}",
                ),
            ],
            description="p50 and p95 from the recording rules (all servers of the dc), p99 for "
            "the chosen servers. Interpolated within histogram buckets.",
            unit="s",
            log_scale=True,
            min_zero=False,
        ),
        12,
        9,
    )
    g.add(
        bargauge(
            "Replicas more than 1 h behind, per host",
            [target(lag_over("3600", HOSTS, " by (host)"), "{{host}}")],
            description="Replica copies on each host whose newest save is over an hour older "
            "than the master's.",
            steps=COUNT_BAD,
        ),
        12,
        7,
    )
    g.add(
        bargauge(
            "Median replication lag, per host",
            [
                target(
                    f"histogram_quantile(0.5, sum by (host, le) ({lag_buckets(HOSTS)}))",
                    "{{host}}",
                )
            ],
            description="Median lag of the replica copies on each host, interpolated within "
            "the buckets (1 min … 7 days).",
            unit="s",
            steps=thresholds((None, "green"), (3600, "orange"), (86400, "red")),
        ),
        12,
        7,
    )

    g.row("Storage and deep checks")
    g.add(
        timeseries(
            "Largest save_log.json, per host",
            [target(f"bupwatch_host_save_log_max_bytes{{{HOSTS}}}", "{{host}}")],
            description="The largest conf/save_log.json on each host; the lines mark the "
            "save_log_size check's default warning (50 MB) and critical (200 MB) sizes.",
            unit="decbytes",
            steps=thresholds((None, "transparent"), (50e6, "orange"), (200e6, "red")),
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "save_log.json growth per day (6 h trend)",
            [target(f"deriv(bupwatch_host_save_log_max_bytes{{{HOSTS}}}[6h]) * 86400", "{{host}}")],
            description="How fast each host's largest save log grows, extrapolated to a day.",
            unit="decbytes",
            min_zero=False,
        ),
        12,
        8,
    )
    g.add(
        bargauge(
            "Deep-check coverage, per host",
            [target(f"bupwatch_deep_check_coverage_ratio{{{HOSTS}}}", "{{host}}")],
            description="Share of each host's repositories deep-checked within the window. Under "
            "90% for a day raises BupWatchDeepCheckBehind.",
            unit="percentunit",
            steps=COVERAGE,
            min_max=(0, 1),
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Repository bytes, per host",
            [target(f"bupwatch_host_repository_bytes{{{HOSTS}}}", "{{host}}")],
            description="Total size of the bup repositories on each host.",
            unit="decbytes",
        ),
        12,
        8,
    )

    g.row("Repairs")
    g.add(
        timeseries(
            "Repair outcomes per hour",
            [target("sum by (outcome) (increase(bupwatch_repairs_total[1h]))", "{{outcome}}")],
            description="Repair requests decided or run to an end in each hour, by outcome: "
            "succeeded, failed, refused, dry_run, denied, conflict, interrupted. Fleet-wide.",
            stack=True,
            overrides=color_overrides(STATUS_COLORS),
        ),
        12,
        8,
    )
    g.add(
        table(
            "Repairs per repair and outcome, since the state began",
            "sum by (repair, outcome) (bupwatch_repairs_total)",
            description="The journal's counts; `bup-watchdog repairs list` shows the rows.",
            columns={"repair": "repair", "outcome": "outcome"},
        ),
        12,
        8,
    )
    g.add(
        bargauge(
            "Refusals by reason, in the time range",
            [
                target(
                    "sum by (reason) (increase(bupwatch_repairs_refused_total[$__range]))",
                    "{{reason}}",
                )
            ],
            description="Why the guard refused repair requests: circuit_breaker, rate_limited, "
            "precondition, lease, gave_up, maintenance, alert_cooldown, …",
            steps=thresholds((None, "orange")),
        ),
        8,
        8,
    )
    g.add(
        bargauge(
            "Repairs waiting, now",
            [target("sum by (status) (bupwatch_repairs_open)", "{{status}}")],
            description="Journal entries without an outcome: pending (waits for `bup-watchdog "
            "repairs approve`), running, interrupted (outcome unknown: check the target by hand).",
            steps=thresholds((None, "blue")),
        ),
        8,
        8,
    )
    g.add(
        state_timeline(
            "Circuit breaker",
            "max(bupwatch_circuit_breaker_open)",
            "breaker",
            description="Open: repairs are suspended because too much of the fleet looked "
            "unreachable at once.",
            mappings=BREAKER,
        ),
        8,
        8,
    )
    return dashboard(
        "bupwatch-fleet",
        "bup-watchdog / Fleet overview",
        "The storage fleet as the watchdog sees it: hosts, failing projects, replication lag, "
        "save logs, deep checks and repairs.",
        g,
        [datasource_var(), dc_var(), server_var()],
    )


def host_detail() -> dict[str, Any]:
    one = 'server_id=~"$server_id"'
    g = Grid()
    g.row("$host (server $server_id)")
    for p in (
        stat(
            "Probe",
            [target(f"bupwatch_host_probe_success{{{one}}}", "probe")],
            description="1 when the host's probe answered completely in the last sweep.",
            mappings=UP_DOWN,
            steps=GOOD_BAD,
        ),
        stat(
            "bup_server",
            [target(f"bupwatch_bup_server_up{{{one}}}", "bup_server")],
            description="1 when bup_server accepted a TCP connection at the inventory's address.",
            mappings=UP_DOWN,
            steps=GOOD_BAD,
        ),
        stat(
            "Suspicion",
            [target(f"bupwatch_host_suspicion{{{one}}}", "suspicion")],
            description="Failed sweeps in a row divided by the host's patience; 1 or more: the "
            "host is declared down.",
            steps=thresholds((None, "green"), (0.01, "orange"), (1, "red")),
        ),
        stat(
            "Repositories",
            [target(f"bupwatch_host_repositories{{{one}}}", "repositories")],
            description="bup repositories on the host.",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Repository bytes",
            [target(f"bupwatch_host_repository_bytes{{{one}}}", "bytes")],
            description="Total size of the host's bup repositories.",
            unit="decbytes",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Largest save_log.json",
            [target(f"bupwatch_host_save_log_max_bytes{{{one}}}", "save_log")],
            description="The largest conf/save_log.json on the host.",
            unit="decbytes",
            steps=thresholds((None, "green"), (50e6, "orange"), (200e6, "red")),
        ),
        stat(
            "Deep-check coverage",
            [target(f"bupwatch_deep_check_coverage_ratio{{{one}}}", "coverage")],
            description="Share of the host's repositories deep-checked within the window.",
            unit="percentunit",
            steps=COVERAGE,
        ),
        stat(
            "Last gathered",
            [target(f"time() - bupwatch_host_last_gather_timestamp_seconds{{{one}}}", "age")],
            description="Time since the host's facts were last gathered.",
            unit="s",
            steps=thresholds((None, "green"), (900, "orange"), (1800, "red")),
        ),
    ):
        g.add(p, 3, 4)

    g.row("Findings")
    g.add(
        timeseries(
            "Open findings by check and severity",
            [
                target(
                    f"sum by (check, severity) (bupwatch_findings{{{one}}}) > 0",
                    "{{check}} {{severity}}",
                )
            ],
            description="Open findings on this host over time.",
            stack=True,
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Failing projects by check",
            [target(f"sum by (check) (bupwatch_projects_failing{{{one}}}) > 0", "{{check}}")],
            description="Projects on this host with an open finding, per check.",
            stack=True,
        ),
        12,
        8,
    )
    g.add(
        table(
            "Open findings now",
            f"sum by (check, severity) (bupwatch_findings{{{one}}}) > 0",
            description="`bup-watchdog audit --server <host>` lists each finding with the "
            "repair that answers it.",
            columns={"check": "check", "severity": "severity"},
        ),
        24,
        7,
    )

    g.row("Replication")
    g.add(
        heatmap(
            "Replication lag distribution",
            f"sum by (le) ({lag_buckets(one)})",
            description="Lag of the replica copies on this host behind their masters.",
        ),
        12,
        9,
    )
    g.add(
        timeseries(
            "Replication lag percentiles",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) ({lag_buckets(one)}))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            description="Interpolated within the histogram's buckets (1 min … 7 days).",
            unit="s",
            log_scale=True,
            min_zero=False,
        ),
        12,
        9,
    )
    g.add(
        timeseries(
            "Replica copies, and those over 1 h behind",
            [
                target(
                    f'sum(bupwatch_replication_lag_replicas{{le_seconds="+Inf", {one}}})',
                    "replicas",
                ),
                target(lag_over("3600", one, ""), "over 1 h behind"),
            ],
            description="Replica copies on this host and how many lag by more than an hour.",
        ),
        24,
        7,
    )

    g.row("Gather and storage")
    g.add(
        timeseries(
            "Gather duration",
            [target(f"bupwatch_host_gather_duration_seconds{{{one}}}", "gather")],
            description="Time the probe of this host took (one SSH session).",
            unit="s",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "Suspicion",
            [target(f"bupwatch_host_suspicion{{{one}}}", "suspicion")],
            description="Adaptive reachability: 1 or more means down.",
            steps=thresholds((None, "transparent"), (1, "red")),
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "Deep-check coverage",
            [target(f"bupwatch_deep_check_coverage_ratio{{{one}}}", "coverage")],
            description="Share of the repositories deep-checked within the window.",
            unit="percentunit",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "Largest save_log.json",
            [target(f"bupwatch_host_save_log_max_bytes{{{one}}}", "largest")],
            description="The lines mark the default warning (50 MB) and critical (200 MB) sizes.",
            unit="decbytes",
            steps=thresholds((None, "transparent"), (50e6, "orange"), (200e6, "red")),
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Repositories and their bytes",
            [
                target(f"bupwatch_host_repository_bytes{{{one}}}", "bytes"),
                target(f"bupwatch_host_repositories{{{one}}}", "repositories"),
            ],
            description="Total size and count of the host's bup repositories.",
            unit="decbytes",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "repositories"},
                    "properties": [
                        {"id": "unit", "value": "short"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
        12,
        8,
    )
    host = query_var(
        "host",
        "Host",
        'label_values(bupwatch_host_probe_success{server_id=~"$server_id"}, host)',
        multi=False,
        hide=2,
    )
    return dashboard(
        "bupwatch-host",
        "bup-watchdog / Host detail",
        "One storage host: probe, bup_server, findings, replication lag, save logs, deep checks.",
        g,
        [datasource_var(), dc_var(), server_var(multi=False), host],
    )


def watchdog_health() -> dict[str, Any]:
    g = Grid()
    g.row("The watchdog now")
    for p in (
        stat(
            "State readable",
            [target("min(bupwatch_state_up)", "state")],
            description="0: the watchdog cannot read its SQLite state; its metrics are empty.",
            mappings=value_map((0, "NO", "red"), (1, "yes", "green")),
            steps=GOOD_BAD,
        ),
        stat(
            "Last sweep",
            [target("time() - max(bupwatch_sweep_last_completed_timestamp_seconds)", "age")],
            description="Time since the last sweep finished.",
            unit="s",
            steps=thresholds((None, "green"), (900, "orange"), (1800, "red")),
        ),
        stat(
            "Sweep duration",
            [target("max(bupwatch_sweep_duration_seconds)", "duration")],
            description="Wall time of the last sweep.",
            unit="s",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "SSH sessions",
            [target("sum(bupwatch_sweep_ssh_sessions)", "sessions")],
            description="SSH sessions the last sweep opened (one per host is the design).",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Checks failing",
            [target("count(bupwatch_check_success == 0) or vector(0)", "failing")],
            description="Checks whose last run raised (a watchdog bug, not the fleet).",
            steps=COUNT_BAD,
        ),
        stat(
            "Inventory stale",
            [target("max(bupwatch_inventory_stale)", "stale")],
            description="YES: the inventory source is down and the last sweep used the cache.",
            mappings=YES_NO_BAD,
            steps=BAD_GOOD,
        ),
        stat(
            "Inventory age",
            [target("max(bupwatch_inventory_age_seconds)", "age")],
            description="Time since the inventory source last answered.",
            unit="s",
            steps=thresholds((None, "green"), (3600, "orange"), (86400, "red")),
        ),
        stat(
            "Version",
            [target("bupwatch_build_info", "{{version}}")],
            description="Version of the running watchdog(s).",
            text_mode="name",
            steps=thresholds((None, "blue")),
        ),
    ):
        g.add(p, 3, 4)

    g.row("Checks")
    g.add(
        timeseries(
            "Check durations",
            [target("bupwatch_check_duration_seconds", "{{check}}")],
            description="Time each check took when it last ran (checks are pure: this is CPU).",
            unit="s",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Time since each check last succeeded",
            [target("time() - bupwatch_check_last_success_timestamp_seconds", "{{check}}")],
            description="Grows while a check keeps failing or is not run.",
            unit="s",
        ),
        12,
        8,
    )
    g.add(
        state_timeline(
            "Check succeeded",
            "bupwatch_check_success",
            "{{check}}",
            description="Whether each check's last run finished without error.",
            mappings=value_map((0, "error", "red"), (1, "ok", "green")),
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Check errors",
            [target("increase(bupwatch_check_errors_total[$__rate_interval])", "{{check}}")],
            description="Runs that raised, per interval. The check backs off after an error.",
            bars=True,
        ),
        12,
        8,
    )

    g.row("Sweeps and gathering")
    g.add(
        timeseries(
            "Sweep duration",
            [target("bupwatch_sweep_duration_seconds", "sweep")],
            description="Wall time of each sweep: one gather per host, then the checks.",
            unit="s",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "SSH sessions and repositories per sweep",
            [
                target("bupwatch_sweep_ssh_sessions", "SSH sessions"),
                target("sum(bupwatch_sweep_repositories)", "repositories"),
            ],
            description="Cost per sweep is O(hosts) sessions, never O(projects).",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "Sweeps per hour",
            [target("increase(bupwatch_sweeps_total[1h])", "sweeps")],
            description="How many sweeps the watchdog completed in each hour.",
        ),
        8,
        8,
    )
    g.add(
        bargauge(
            "Slowest hosts to gather",
            [target(f"topk(10, bupwatch_host_gather_duration_seconds{{{HOSTS}}})", "{{host}}")],
            description="The ten hosts whose probe took longest in the last sweep.",
            unit="s",
            steps=thresholds((None, "green"), (30, "orange"), (120, "red")),
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Time since each host was gathered",
            [
                target(
                    f"time() - bupwatch_host_last_gather_timestamp_seconds{{{HOSTS}}}", "{{host}}"
                )
            ],
            description="A host not gathered for long is missing from the sweeps.",
            unit="s",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Repositories walked and reused per sweep",
            [target("sum by (how) (bupwatch_sweep_repositories)", "{{how}}")],
            description="Incremental sweeps ([incremental]): repositories walked in full, and "
            "reused because their host found their fingerprint unchanged. Walked stays near the "
            "repositories saved since the last sweep plus those due for their periodic full walk; "
            "all walked after a restart, and always when incremental sweeps are off.",
            stack=True,
        ),
        24,
        8,
    )

    g.row("Inventory and scrape")
    g.add(
        timeseries(
            "Inventory age",
            [target("bupwatch_inventory_age_seconds", "age")],
            description="Time since the inventory source last answered.",
            unit="s",
        ),
        8,
        8,
    )
    g.add(
        state_timeline(
            "Inventory stale",
            "max(bupwatch_inventory_stale)",
            "stale",
            description="Periods when sweeps ran on the cached inventory.",
            mappings=YES_NO_BAD,
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "Scrape size and time",
            [
                target('scrape_samples_scraped{job=~"$job"}', "samples {{instance}}"),
                target('scrape_duration_seconds{job=~"$job"}', "seconds {{instance}}"),
            ],
            description="Series Prometheus adds to every scrape of the watchdog: samples per "
            "scrape (bounded by design: per host and check, never per project) and scrape time.",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "seconds.*"},
                    "properties": [
                        {"id": "unit", "value": "s"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
        8,
        8,
    )
    job = query_var("job", "Scrape job", "label_values(bupwatch_build_info, job)")
    return dashboard(
        "bupwatch-health",
        "bup-watchdog / Watchdog health",
        "The watchdog itself: checks, sweeps, SSH sessions, inventory, state and scrape size.",
        g,
        [datasource_var(), dc_var(), server_var(), job],
    )


DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "host-detail.json": host_detail,
    "watchdog-health.json": watchdog_health,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when a file is out of date")
    args = ap.parse_args()
    stale = []
    for name in DASHBOARDS:
        path = HERE / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
