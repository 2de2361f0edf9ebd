"""The watchdog's own health: checks, sweeps, SSH sessions, inventory, state and scrape size."""

from __future__ import annotations

from bupwatch_grafana.common import (
    AGE,
    BAD_GOOD,
    COUNT,
    COUNT_BAD,
    GOOD_BAD,
    SECONDS,
    STATE,
    YES_NO_BAD,
    Board,
    bargauge_panel,
    datasource_var,
    dc_var,
    host_var,
    on_hosts,
    on_right,
    query_var,
    series_link,
    stat_panel,
    state_timeline_panel,
    target,
    timeseries_panel,
    value_map,
)
from grafana_foundation_sdk.models.common import BigValueTextMode


def now(b: Board) -> None:
    b.row("The watchdog now")
    for p in (
        stat_panel(
            "State readable",
            [target("min(bupwatch_state_up)", "state")],
            description="0: the watchdog cannot read its SQLite state; its metrics are empty.",
            unit=STATE,
            mappings=value_map((0, "NO", "red"), (1, "yes", "green")),
            steps=GOOD_BAD,
        ),
        stat_panel(
            "Last sweep",
            [target("time() - max(bupwatch_sweep_last_completed_timestamp_seconds)", "age")],
            description="Time since the last sweep finished.",
            unit=SECONDS,
            steps=AGE,
        ),
        stat_panel(
            "Sweep duration",
            [target("max(bupwatch_sweep_duration_seconds)", "duration")],
            description="Wall time of the last sweep.",
            unit=SECONDS,
        ),
        stat_panel(
            "SSH sessions",
            [target("sum(bupwatch_sweep_ssh_sessions)", "sessions")],
            description="SSH sessions the last sweep opened (one per host is the design).",
            unit=COUNT,
        ),
        stat_panel(
            "Checks failing",
            [target("count(bupwatch_check_success == 0) or vector(0)", "failing")],
            description="Checks whose last run raised (a watchdog bug, not the fleet).",
            unit=COUNT,
            steps=COUNT_BAD,
        ),
        stat_panel(
            "Inventory stale",
            [target("max(bupwatch_inventory_stale)", "stale")],
            description="YES: the inventory source is down and the last sweep used the cache.",
            unit=STATE,
            mappings=YES_NO_BAD,
            steps=BAD_GOOD,
        ),
        stat_panel(
            "Inventory age",
            [target("max(bupwatch_inventory_age_seconds)", "age")],
            description="Time since the inventory source last answered.",
            unit=SECONDS,
            steps=((None, "green"), (3600, "orange"), (86400, "red")),
        ),
        stat_panel(
            "Version",
            [target("bupwatch_build_info", "{{version}}")],
            description="Version of the running watchdog(s).",
            unit=STATE,
            text_mode=BigValueTextMode.NAME,
        ),
    ):
        b.add(p, 3, 4)


def checks(b: Board) -> None:
    b.row("Checks")
    b.add(
        timeseries_panel(
            "Check durations",
            [target("bupwatch_check_duration_seconds", "{{check}}")],
            description="Time each check took when it last ran (checks are pure: this is CPU).",
            unit=SECONDS,
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Time since each check last succeeded",
            [target("time() - bupwatch_check_last_success_timestamp_seconds", "{{check}}")],
            description="Grows while a check keeps failing or is not run.",
            unit=SECONDS,
        ),
        12,
        8,
    )
    b.add(
        state_timeline_panel(
            "Check succeeded",
            "bupwatch_check_success",
            "{{check}}",
            description="Whether each check's last run finished without error.",
            mappings=value_map((0, "error", "red"), (1, "ok", "green")),
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Check errors",
            [target("increase(bupwatch_check_errors_total[$__rate_interval])", "{{check}}")],
            description="Runs that raised, per interval. The check backs off after an error.",
            unit=COUNT,
            bars=True,
        ),
        12,
        8,
    )


def sweeps(b: Board) -> None:
    b.row("Sweeps and gathering")
    b.add(
        timeseries_panel(
            "Sweep duration",
            [target("bupwatch_sweep_duration_seconds", "sweep")],
            description="Wall time of each sweep: one gather per host, then the checks.",
            unit=SECONDS,
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "SSH sessions and repositories per sweep",
            [
                target("bupwatch_sweep_ssh_sessions", "SSH sessions"),
                target("sum(bupwatch_sweep_repositories)", "repositories"),
            ],
            description="Cost per sweep is O(hosts) sessions, never O(projects).",
            unit=COUNT,
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "Sweeps per hour",
            [target("increase(bupwatch_sweeps_total[1h])", "sweeps")],
            description="How many sweeps the watchdog completed in each hour.",
            unit=COUNT,
        ),
        8,
        8,
    )
    b.add(
        bargauge_panel(
            "Slowest hosts to gather",
            [target(f"topk(10, {on_hosts('bupwatch_host_gather_duration_seconds')})", "{{name}}")],
            description="The ten hosts whose probe took longest in the last sweep. Click a host "
            "for its detail dashboard.",
            unit=SECONDS,
            steps=((None, "green"), (30, "orange"), (120, "red")),
            links=[series_link()],
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Time since each host was gathered",
            [target(on_hosts("time() - bupwatch_host_last_gather_timestamp_seconds"), "{{name}}")],
            description="A host not gathered for long is missing from the sweeps.",
            unit=SECONDS,
            links=[series_link()],
        ),
        12,
        8,
    )
    b.add(
        timeseries_panel(
            "Repositories walked and reused per sweep",
            [target("sum by (how) (bupwatch_sweep_repositories)", "{{how}}")],
            description="Incremental sweeps ([incremental]): repositories walked in full, and "
            "reused because their host found their fingerprint unchanged. Walked stays near the "
            "repositories saved since the last sweep plus those due for their periodic full walk; "
            "all walked after a restart, and always when incremental sweeps are off.",
            unit=COUNT,
            stack=True,
        ),
        24,
        8,
    )


def inventory_and_scrape(b: Board) -> None:
    b.row("Inventory and scrape")
    b.add(
        timeseries_panel(
            "Inventory age",
            [target("bupwatch_inventory_age_seconds", "age")],
            description="Time since the inventory source last answered.",
            unit=SECONDS,
        ),
        8,
        8,
    )
    b.add(
        state_timeline_panel(
            "Inventory stale",
            "max(bupwatch_inventory_stale)",
            "stale",
            description="Periods when sweeps ran on the cached inventory.",
            mappings=YES_NO_BAD,
        ),
        8,
        8,
    )
    b.add(
        timeseries_panel(
            "Scrape size and time",
            [
                target('scrape_samples_scraped{job=~"$job"}', "samples {{instance}}"),
                target('scrape_duration_seconds{job=~"$job"}', "seconds {{instance}}"),
            ],
            description="Series Prometheus adds to every scrape of the watchdog: samples per "
            "scrape (bounded by design: per host and check, never per project) and scrape time.",
            unit=COUNT,
            by_regexp=[("seconds.*", on_right(SECONDS))],
        ),
        8,
        8,
    )


def watchdog_health() -> Board:
    b = Board(
        "bupwatch-health",
        "bup-watchdog / Watchdog health",
        "The watchdog itself: checks, sweeps, SSH sessions, inventory, state and scrape size.",
    )
    for section in (now, checks, sweeps, inventory_and_scrape):
        section(b)
    job = query_var("job", "Scrape job", "label_values(bupwatch_build_info, job)")
    b.variables(datasource_var(), dc_var(), host_var(), job)
    return b
