"""The host dashboard: one storage host, chosen by name (``$host``): probe, bup_server, findings,
replication lag, save logs, deep checks. Its uid ``bupwatch-host`` is what the fleet dashboard and
the audit report link to, with ``var-host=<name>``."""

from __future__ import annotations

from bupwatch_grafana.common import (
    AGE,
    BYTES,
    COUNT,
    COVERAGE,
    GOOD_BAD,
    HOST_UID,
    ONE_HOST,
    RATIO,
    SAVE_LOG,
    SAVE_LOG_LINES,
    SECONDS,
    STATE,
    UP_DOWN,
    Board,
    datasource_var,
    dc_var,
    heatmap_panel,
    host_var,
    lag_buckets,
    lag_over,
    on_hosts,
    on_right,
    query_var,
    stat_panel,
    table_panel,
    target,
    timeseries_panel,
)
from grafana_foundation_sdk.models.dashboard import VariableHide


def one(expr: str) -> str:
    """``expr`` (labelled by server_id) for the chosen host only."""
    return on_hosts(expr, ONE_HOST)


def now(b: Board) -> None:
    b.row("$host (server $server_id)")
    for p in (
        stat_panel(
            "Probe",
            [target(one("bupwatch_host_probe_success"), "probe")],
            description="1 when the host's probe answered completely in the last sweep.",
            unit=STATE,
            mappings=UP_DOWN,
            steps=GOOD_BAD,
        ),
        stat_panel(
            "bup_server",
            [target(one("bupwatch_bup_server_up"), "bup_server")],
            description="1 when bup_server accepted a TCP connection at the inventory's address.",
            unit=STATE,
            mappings=UP_DOWN,
            steps=GOOD_BAD,
        ),
        stat_panel(
            "Suspicion",
            [target(one("bupwatch_host_suspicion"), "suspicion")],
            description="Failed sweeps in a row divided by the host's patience; 1 or more: the "
            "host is declared down.",
            unit=COUNT,
            steps=((None, "green"), (0.01, "orange"), (1, "red")),
        ),
        stat_panel(
            "Repositories",
            [target(one("bupwatch_host_repositories"), "repositories")],
            description="bup repositories on the host.",
            unit=COUNT,
        ),
        stat_panel(
            "Repository bytes",
            [target(one("bupwatch_host_repository_bytes"), "bytes")],
            description="Total size of the host's bup repositories.",
            unit=BYTES,
        ),
        stat_panel(
            "Largest save_log.json",
            [target(one("bupwatch_host_save_log_max_bytes"), "save_log")],
            description="The largest conf/save_log.json on the host.",
            unit=BYTES,
            steps=SAVE_LOG,
        ),
        stat_panel(
            "Deep-check coverage",
            [target(one("bupwatch_deep_check_coverage_ratio"), "coverage")],
            description="Share of the host's repositories deep-checked within the window.",
            unit=RATIO,
            steps=COVERAGE,
        ),
        stat_panel(
            "Last gathered",
            [target(one("time() - bupwatch_host_last_gather_timestamp_seconds"), "age")],
            description="Time since the host's facts were last gathered.",
            unit=SECONDS,
            steps=AGE,
        ),
    ):
        b.add(p, 3, 4)


def findings(b: Board) -> None:
    b.row("Findings")
    b.add(
        timeseries_panel(
            "Open findings by check and severity",
            [
                target(
                    f"sum by (check, severity) ({one('bupwatch_findings')}) > 0",
                    "{{check}} {{severity}}",
                )
            ],
            description="Open findings on this host over time.",
            unit=COUNT,
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Failing projects by check",
            [target(f"sum by (check) ({one('bupwatch_projects_failing')}) > 0", "{{check}}")],
            description="Projects on this host with an open finding, per check.",
            unit=COUNT,
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Projects used long after their newest save, by how long",
            [target(f"sum by (bucket) ({one('bupwatch_save_age_projects')}) > 0", "{{bucket}}")],
            description="save_freshness on this host: master copies used a day or more after "
            "their newest save, by how much; never_saved: live files and no save at all.",
            unit=COUNT,
            stack=True,
            bars=True,
        ),
        12,
        7,
    )
    b.add(
        table_panel(
            "Open findings now",
            f"sum by (check, severity) ({one('bupwatch_findings')}) > 0",
            description="`bup-watchdog audit --server <host>` lists each finding with the "
            "repair that answers it.",
            columns={"check": "check", "severity": "severity"},
        ),
        12,
        7,
    )


def replication(b: Board) -> None:
    b.row("Replication")
    b.add(
        heatmap_panel(
            "Replication lag distribution",
            f"sum by (le) ({lag_buckets(ONE_HOST)})",
            description="Lag of the replica copies on this host behind their masters.",
        ),
        12,
        9,
    )
    b.add(
        timeseries_panel(
            "Replication lag percentiles",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) ({lag_buckets(ONE_HOST)}))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            description="Interpolated within the histogram's buckets (1 min … 7 days).",
            unit=SECONDS,
            log_scale=True,
            min_zero=False,
        ),
        12,
        9,
    )
    every = one('bupwatch_replication_lag_replicas{le_seconds="+Inf"}')
    b.add(
        timeseries_panel(
            "Replica copies, and those over 1 h behind",
            [
                target(f"sum ({every})", "replicas"),
                target(lag_over("3600", "", ONE_HOST), "over 1 h behind"),
            ],
            description="Replica copies on this host and how many lag by more than an hour.",
            unit=COUNT,
        ),
        24,
        7,
    )


def gather_and_storage(b: Board) -> None:
    b.row("Gather and storage")
    b.add(
        timeseries_panel(
            "Gather duration",
            [target(one("bupwatch_host_gather_duration_seconds"), "gather")],
            description="Time the probe of this host took (one SSH session).",
            unit=SECONDS,
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "Suspicion",
            [target(one("bupwatch_host_suspicion"), "suspicion")],
            description="Adaptive reachability: 1 or more means down.",
            unit=COUNT,
            steps=((None, "transparent"), (1, "red")),
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "Deep-check coverage",
            [target(one("bupwatch_deep_check_coverage_ratio"), "coverage")],
            description="Share of the repositories deep-checked within the window.",
            unit=RATIO,
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "Largest save_log.json",
            [target(one("bupwatch_host_save_log_max_bytes"), "largest")],
            description="The lines mark the default warning (50 MB) and critical (200 MB) sizes.",
            unit=BYTES,
            steps=SAVE_LOG_LINES,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Repositories and their bytes",
            [
                target(one("bupwatch_host_repository_bytes"), "bytes"),
                target(one("bupwatch_host_repositories"), "repositories"),
            ],
            description="Total size and count of the host's bup repositories.",
            unit=BYTES,
            by_regexp=[("^repositories$", on_right(COUNT))],
        ),
        12,
        8,
    )


def host_detail() -> Board:
    b = Board(
        HOST_UID,
        "bup-watchdog / Host detail",
        "One storage host, chosen by name: probe, bup_server, findings, stale saves, replication "
        "lag, save logs, deep checks.",
    )
    for section in (now, findings, replication, gather_and_storage):
        section(b)
    server_id = query_var(
        "server_id",
        "Server id",
        'label_values(bupwatch_server_info{name="$host"}, server_id)',
        multi=False,
        hide=VariableHide.HIDE_VARIABLE,
    )
    b.variables(datasource_var(), dc_var(), host_var(multi=False), server_id)
    return b
