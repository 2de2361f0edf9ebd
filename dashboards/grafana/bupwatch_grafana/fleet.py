"""The fleet overview: hosts, failing projects, stale saves, replication lag, save logs, deep checks
and repairs. Every panel links to the host dashboard: per-host series by their ``name`` label,
fleet-wide figures with the chosen host preset."""

from __future__ import annotations

from bupwatch_grafana.common import (
    BAD_GOOD,
    BREAKER,
    BYTES,
    COUNT,
    COUNT_BAD,
    COVERAGE,
    RATIO,
    SAVE_LOG_LINES,
    SECONDS,
    STATE,
    STATUS_COLORS,
    UP_DOWN,
    Board,
    Links,
    bargauge_panel,
    datasource_var,
    dc_var,
    fixed_color,
    heatmap_panel,
    host_var,
    lag_buckets,
    lag_over,
    on_hosts,
    panel_link,
    row_link,
    series_link,
    stat_panel,
    state_timeline_panel,
    table_panel,
    target,
    timeseries_panel,
)
from grafana_foundation_sdk.models.common import BigValueTextMode

PER_HOST: Links = {"links": [series_link()]}
FLEET: Links = {"panel_links": [panel_link()]}
SAVE_AGE_COLORS = {
    "under_1d": "yellow",
    "1d_to_3d": "orange",
    "3d_to_7d": "red",
    "7d_to_30d": "dark-red",
    "over_30d": "purple",
    "never_saved": "#8e8e8e",
}


def fleet_now(b: Board) -> None:
    b.row("Fleet now")
    for p in (
        stat_panel(
            "Hosts probed",
            [
                target(f"sum({on_hosts('bupwatch_host_probe_success')})", "probed"),
                target(f"count({on_hosts('bupwatch_host_probe_success')})", "in inventory"),
            ],
            description="Storage hosts whose probe answered completely in the last sweep, of "
            "those in the inventory.",
            unit=COUNT,
            text_mode=BigValueTextMode.VALUE_AND_NAME,
            **FLEET,
        ),
        stat_panel(
            "bup_server up",
            [
                target(f"sum({on_hosts('bupwatch_bup_server_up')})", "up"),
                target(f"count({on_hosts('bupwatch_bup_server_up')})", "hosts"),
            ],
            description="Hosts whose bup_server accepted a TCP connection at the inventory's "
            "address.",
            unit=COUNT,
            text_mode=BigValueTextMode.VALUE_AND_NAME,
            **FLEET,
        ),
        stat_panel(
            "Failing projects",
            [target(f"sum({on_hosts('bupwatch_projects_failing')})", "failing")],
            description="Projects with an open finding, counted once per check and host (a "
            "project failing two checks counts twice).",
            unit=COUNT,
            steps=COUNT_BAD,
            **FLEET,
        ),
        stat_panel(
            "Open findings",
            [target(f"sum by (severity) ({on_hosts('bupwatch_findings')})", "{{severity}}")],
            description="Open findings of every check on the chosen hosts, by severity.",
            unit=COUNT,
            text_mode=BigValueTextMode.VALUE_AND_NAME,
            steps=COUNT_BAD,
            **FLEET,
        ),
        stat_panel(
            "Repositories",
            [target(f"sum({on_hosts('bupwatch_host_repositories')})", "repositories")],
            description="bup repositories on the chosen hosts (probed hosts only).",
            unit=COUNT,
            **FLEET,
        ),
        stat_panel(
            "Deep-check coverage",
            [target(f"avg({on_hosts('bupwatch_deep_check_coverage_ratio')})", "coverage")],
            description="Mean share of each host's repositories deep-checked (git fsck + bup ls) "
            "within the deep-check window.",
            unit=RATIO,
            steps=COVERAGE,
            **FLEET,
        ),
        stat_panel(
            "Circuit breaker",
            [target("max(bupwatch_circuit_breaker_open)", "breaker")],
            description="Open when too much of the fleet looked unreachable in the last sweep: "
            "the watchdog then distrusts its own view and suspends every repair.",
            unit=STATE,
            mappings=BREAKER,
            steps=BAD_GOOD,
            **FLEET,
        ),
        stat_panel(
            "Last sweep",
            [target("time() - max(bupwatch_sweep_last_completed_timestamp_seconds)", "age")],
            description="Time since the last sweep finished. Over 30 min: nobody is watching.",
            unit=SECONDS,
            steps=((None, "green"), (900, "orange"), (1800, "red")),
            **FLEET,
        ),
    ):
        b.add(p, 3, 4)


def hosts(b: Board) -> None:
    b.row("Hosts")
    b.add(
        state_timeline_panel(
            "bup_server up, per host",
            on_hosts("bupwatch_bup_server_up"),
            "{{name}}",
            description="Whether each host's bup_server accepted a TCP connection, over time.",
            mappings=UP_DOWN,
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        state_timeline_panel(
            "Probe answered, per host",
            on_hosts("bupwatch_host_probe_success"),
            "{{name}}",
            description="Whether each host's probe (one SSH session) answered completely.",
            mappings=UP_DOWN,
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Fleet-wide ratios (recording rules)",
            [
                target("bupwatch:hosts_probed:ratio", "hosts probed"),
                target("bupwatch:bup_servers_up:ratio", "bup_server up"),
                target("bupwatch:deep_check_coverage:ratio", "deep-check coverage"),
            ],
            description="From dashboards/prometheus/recording.yml; fleet-wide, so the dc and "
            "host filters do not apply.",
            unit=RATIO,
            **FLEET,
        ),
        24,
        7,
    )


def failing_projects(b: Board) -> None:
    b.row("Failing projects")
    failing = on_hosts("bupwatch_projects_failing")
    b.add(
        timeseries_panel(
            "Failing projects per check",
            [target(f"sum by (check) ({failing})", "{{check}}")],
            description="Projects with an open finding, per check, on the chosen hosts.",
            unit=COUNT,
            stack=True,
            **FLEET,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Failing projects per host",
            [target(f"sum by (name) ({failing})", "{{name}}")],
            description="Projects with an open finding on each host (all checks added up). "
            "Click a series for the host's detail dashboard.",
            unit=COUNT,
            stack=True,
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        table_panel(
            "Failing projects per check and host, now",
            f"sum by (name, dc, server_id, check) ({failing}) > 0",
            description="Click a host for its detail dashboard. The projects themselves are in "
            "`bup-watchdog audit` and the daemon's /report page.",
            columns={"name": "host", "dc": "dc", "check": "check", "server_id": "server_id"},
            links=[row_link()],
        ),
        14,
        9,
    )
    b.add(
        table_panel(
            "Worst projects (top N exported)",
            "sum by (project_id) (bupwatch_worst_project_findings) > 0",
            description="The few projects with the most open findings (metrics.top_projects); "
            "every other project is only counted.",
            columns={"project_id": "project"},
            **FLEET,
        ),
        10,
        9,
    )
    ages = on_hosts("bupwatch_save_age_projects")
    b.add(
        timeseries_panel(
            "Projects used long after their newest save, by how long",
            [target(f"sum by (bucket) ({ages})", "{{bucket}}")],
            description="save_freshness: master copies whose conf/touch is a day or more newer "
            "than their newest save (saves failing silently), by how much; never_saved: live "
            "files and no save at all. Their projects are in `bup-watchdog audit`.",
            unit=COUNT,
            stack=True,
            bars=True,
            colors=SAVE_AGE_COLORS,
            **FLEET,
        ),
        14,
        8,
    )
    b.add(
        table_panel(
            "Stale saves per host and age, now",
            f"sum by (name, dc, server_id, bucket) ({ages}) > 0",
            description="Projects on each host used long after their newest save, per age bucket. "
            "Click a host for its detail dashboard.",
            columns={"name": "host", "dc": "dc", "bucket": "bucket", "server_id": "server_id"},
            links=[row_link()],
        ),
        10,
        8,
    )


def replication(b: Board) -> None:
    b.row("Replication")
    b.add(
        heatmap_panel(
            "Replication lag distribution",
            f"sum by (le) ({lag_buckets()})",
            description="How far the replicas on the chosen hosts are behind their masters, at "
            "each sweep (the buckets are a snapshot, not a rate).",
            **FLEET,
        ),
        12,
        9,
    )
    b.add(
        timeseries_panel(
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
                    f"histogram_quantile(0.99, sum by (dc, le) ({lag_buckets()}))",
                    "p99 dc {{dc}}",
                ),
            ],
            description="p50 and p95 from the recording rules (all servers of the dc), p99 for "
            "the chosen hosts. Interpolated within histogram buckets.",
            unit=SECONDS,
            log_scale=True,
            min_zero=False,
            **FLEET,
        ),
        12,
        9,
    )
    b.add(
        bargauge_panel(
            "Replicas more than 1 h behind, per host",
            [target(lag_over("3600", " by (name)"), "{{name}}")],
            description="Replica copies on each host whose newest save is over an hour older "
            "than the master's.",
            unit=COUNT,
            steps=COUNT_BAD,
            **PER_HOST,
        ),
        12,
        7,
    )
    b.add(
        bargauge_panel(
            "Median replication lag, per host",
            [
                target(
                    f"histogram_quantile(0.5, sum by (name, le) ({lag_buckets()}))",
                    "{{name}}",
                )
            ],
            description="Median lag of the replica copies on each host, interpolated within "
            "the buckets (1 min … 7 days).",
            unit=SECONDS,
            steps=((None, "green"), (3600, "orange"), (86400, "red")),
            **PER_HOST,
        ),
        12,
        7,
    )


def storage(b: Board) -> None:
    b.row("Storage and deep checks")
    b.add(
        timeseries_panel(
            "Largest save_log.json, per host",
            [target(on_hosts("bupwatch_host_save_log_max_bytes"), "{{name}}")],
            description="The largest conf/save_log.json on each host; the lines mark the "
            "save_log_size check's default warning (50 MB) and critical (200 MB) sizes.",
            unit=BYTES,
            steps=SAVE_LOG_LINES,
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "save_log.json growth per day (6 h trend)",
            [
                target(
                    on_hosts("deriv(bupwatch_host_save_log_max_bytes[6h]) * 86400"),
                    "{{name}}",
                )
            ],
            description="How fast each host's largest save log grows, extrapolated to a day.",
            unit=BYTES,
            min_zero=False,
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        bargauge_panel(
            "Deep-check coverage, per host",
            [target(on_hosts("bupwatch_deep_check_coverage_ratio"), "{{name}}")],
            description="Share of each host's repositories deep-checked within the window. Under "
            "90% for a day raises BupWatchDeepCheckBehind.",
            unit=RATIO,
            steps=COVERAGE,
            min_max=(0, 1),
            **PER_HOST,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Repository bytes, per host",
            [target(on_hosts("bupwatch_host_repository_bytes"), "{{name}}")],
            description="Total size of the bup repositories on each host.",
            unit=BYTES,
            **PER_HOST,
        ),
        12,
        8,
    )


def repairs(b: Board) -> None:
    b.row("Repairs")
    b.add(
        timeseries_panel(
            "Repair outcomes per hour",
            [target("sum by (outcome) (increase(bupwatch_repairs_total[1h]))", "{{outcome}}")],
            description="Repair requests decided or run to an end in each hour, by outcome: "
            "succeeded, failed, refused, dry_run, denied, conflict, interrupted. Fleet-wide; "
            "the dashboard's repair annotations mark when each happened.",
            unit=COUNT,
            stack=True,
            colors=STATUS_COLORS,
            **FLEET,
        ),
        12,
        8,
    )
    b.add(
        table_panel(
            "Repairs per repair and outcome, since the state began",
            "sum by (repair, outcome) (bupwatch_repairs_total)",
            description="The journal's counts; `bup-watchdog repairs list` shows the rows.",
            columns={"repair": "repair", "outcome": "outcome"},
            **FLEET,
        ),
        12,
        8,
    )
    b.add(
        bargauge_panel(
            "Refusals by reason, in the time range",
            [
                target(
                    "sum by (reason) (increase(bupwatch_repairs_refused_total[$__range]))",
                    "{{reason}}",
                )
            ],
            description="Why the guard refused repair requests: circuit_breaker, rate_limited, "
            "precondition, lease, gave_up, maintenance, alert_cooldown, …",
            unit=COUNT,
            steps=((None, "orange"),),
            **FLEET,
        ),
        8,
        8,
    )
    b.add(
        bargauge_panel(
            "Repairs waiting, now",
            [target("sum by (status) (bupwatch_repairs_open)", "{{status}}")],
            description="Journal entries without an outcome: pending (waits for `bup-watchdog "
            "repairs approve`), running, interrupted (outcome unknown: check the target by hand).",
            unit=COUNT,
            **FLEET,
        ),
        8,
        8,
    )
    b.add(
        state_timeline_panel(
            "Circuit breaker",
            "max(bupwatch_circuit_breaker_open)",
            "breaker",
            description="Open: repairs are suspended because too much of the fleet looked "
            "unreachable at once.",
            mappings=BREAKER,
            **FLEET,
        ),
        8,
        8,
    )


# A series of the batches whose process runs (ETA and share of bytes are for those only).
RUNNING = "* on (batch, kind, host) group_left () (bupwatch_rebuild_running == 1)"
COPY_COLORS = {"done": "green", "left": "blue", "failed": "red", "pending": "purple"}


def batches(b: Board) -> None:
    b.row("Rebuilds and evacuations")
    b.add(
        timeseries_panel(
            "Copies per batch: done, left, failed, pending",
            [
                target(
                    "sum by (batch, status) (bupwatch_rebuild_copies)",
                    "{{batch}} {{status}}",
                )
            ],
            description="Each `bup-watchdog rebuild` (copies) or `evacuate` (moves) running or "
            "finished within the last 24 h: done, left (not submitted yet, or left by the "
            "budget: run it again), failed (failed or refused; the audit report's section "
            "*Rebuilds and evacuations* gives each reason), pending (waits for approval).",
            unit=COUNT,
            by_regexp=[(f".* {k}$", fixed_color(c)) for k, c in COPY_COLORS.items()],
            **FLEET,
        ),
        12,
        8,
    )
    b.add(
        bargauge_panel(
            "ETA of each running batch",
            [target(f"bupwatch_rebuild_eta_seconds {RUNNING}", "{{kind}} of {{host}}: {{batch}}")],
            description="The bytes left at the batch's rate so far; none before its first copy "
            "is done. Only batches whose process runs (bupwatch_rebuild_running = 1).",
            unit=SECONDS,
            **FLEET,
        ),
        6,
        8,
    )
    b.add(
        bargauge_panel(
            "Bytes done of each running batch",
            [
                target(
                    '(bupwatch_rebuild_bytes{what="done"} / ignoring (what) '
                    f'bupwatch_rebuild_bytes{{what="total"}}) {RUNNING}',
                    "{{kind}} of {{host}}: {{batch}}",
                )
            ],
            description="Share of the planned bytes the batch's done copies hold.",
            unit=RATIO,
            min_max=(0, 1),
            **FLEET,
        ),
        6,
        8,
    )


def fleet_overview() -> Board:
    b = Board(
        "bupwatch-fleet",
        "bup-watchdog / Fleet overview",
        "The storage fleet as the watchdog sees it: hosts, failing projects, replication lag, "
        "save logs, deep checks and repairs. Click a host (or a panel's link) for its detail.",
    )
    for section in (fleet_now, hosts, failing_projects, replication, storage, repairs, batches):
        section(b)
    b.variables(datasource_var(), dc_var(), host_var())
    return b
