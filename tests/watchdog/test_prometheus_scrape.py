"""End to end: the real Prometheus scrapes the real daemon watching the demo fleet.

The daemon runs on a copy of the demo fleet's config (own state and port, scheduled repairs off so
the planted faults stay); Prometheus is Debian's binary, scraping every second. What the tests
query is what an operator's dashboards and alert rules would see.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.prometheus import Prometheus, WatchdogDaemon, poll, values, watchdog_config
from support.scrape import promtool_check_metrics

# histogram_quantile over the lag buckets, which are gauges labelled le_seconds (see metrics.py)
LAG_AS_LE = 'label_replace(bupwatch_replication_lag_replicas, "le", "$1", "le_seconds", "(.+)")'


@dataclass
class Scraped:
    prometheus: Prometheus
    fleet: SandboxFleet
    seconds_to_first_up: float
    base: str


@pytest.fixture(scope="module")
def scraped(
    demo_fleet: SandboxFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    work = tmp_path_factory.mktemp("scrape")
    config, base = watchdog_config(demo_fleet, work)
    with WatchdogDaemon(config) as daemon:

        def ready() -> bool | None:
            try:
                return httpx.get(f"{base}/ready", timeout=5).status_code == 200 or None
            except httpx.HTTPError:
                return None

        poll(ready, timeout=60, what="the daemon's first sweep", alive=daemon.dead)
        with Prometheus(work / "prometheus", [base.removeprefix("http://")]) as prometheus:
            prometheus.wait_for_query('up{job="bupwatch"} == 1', lambda r: len(r) == 1)
            first_up = time.monotonic() - prometheus.started_at
            print(f"\nPrometheus start to first up == 1: {first_up:.2f} s")
            yield Scraped(prometheus, demo_fleet, first_up, base)


def test_prometheus_scrapes_the_daemon_as_an_up_target(scraped: Scraped) -> None:
    [up] = scraped.prometheus.query('up{job="bupwatch"}')
    assert up["value"][1] == "1"
    assert scraped.seconds_to_first_up < 30


def test_every_demo_host_has_exactly_one_probe_series(scraped: Scraped) -> None:
    result = scraped.prometheus.query("bupwatch_host_probe_success")
    hosts = [r["metric"]["host"] for r in result]
    assert sorted(hosts) == sorted(scraped.fleet.hosts)
    assert {r["metric"]["server_id"] for r in result} == {
        h.server_id for h in scraped.fleet.hosts.values()
    }


def test_h3_booted_without_projects_mounted_shows_a_critical_mount_sanity_finding(
    scraped: Scraped,
) -> None:
    prom = scraped.prometheus
    [total] = values(prom.query('sum(bupwatch_findings{check="mount_sanity",severity="critical"})'))
    assert total >= 1
    h3 = scraped.fleet.server_id("h3")
    [on_h3] = values(
        prom.query(
            f'bupwatch_findings{{check="mount_sanity",severity="critical",server_id="{h3}"}}'
        )
    )
    assert on_h3 >= 1


def test_h4_whose_bup_server_is_not_running_is_the_only_host_with_bup_server_down(
    scraped: Scraped,
) -> None:
    down = scraped.prometheus.query("bupwatch_bup_server_up == 0")
    assert [r["metric"]["host"] for r in down] == ["h4"]
    assert values(scraped.prometheus.query('bupwatch_bup_server_up{host="h4"}')) == [0.0]


def test_the_replication_lag_buckets_are_queryable_and_usable_by_histogram_quantile(
    scraped: Scraped,
) -> None:
    prom = scraped.prometheus
    buckets = prom.query('bupwatch_replication_lag_replicas{le_seconds="+Inf"}')
    assert {r["metric"]["host"] for r in buckets} == set(scraped.fleet.hosts)  # all hold replicas
    worst = prom.query(f"histogram_quantile(1, sum by (host, le) ({LAG_AS_LE}))")
    by_host = {r["metric"]["host"]: float(r["value"][1]) for r in worst}
    assert all(math.isfinite(v) for v in by_host.values())
    # P3's replica on h4 is one save (6 hours) behind: its bucket is above an hour
    assert by_host["h4"] > 3600


def test_every_check_exports_its_success_and_none_failed(scraped: Scraped) -> None:
    result = scraped.prometheus.query("bupwatch_check_success")
    assert {r["metric"]["check"]: r["value"][1] for r in result} == {
        name: "1" for name in check_registry()
    }


def test_promtool_check_metrics_has_nothing_to_say_about_the_demo_fleets_scrape(
    scraped: Scraped,
) -> None:
    body = httpx.get(f"{scraped.base}/metrics", timeout=10).text
    assert 'bupwatch_findings{check="mount_sanity"' in body  # a scrape with findings
    assert promtool_check_metrics(body) == ""


def test_every_server_has_one_info_series_that_names_it_for_alert_joins(scraped: Scraped) -> None:
    info = scraped.prometheus.query("bupwatch_server_info")
    assert sorted(r["metric"]["name"] for r in info) == sorted(scraped.fleet.hosts)
    joined = scraped.prometheus.query(
        '(sum by (server_id) (bupwatch_findings{check="mount_sanity"}) > 0) '
        "* on (server_id) group_left (name, dc) group by (server_id, name, dc) "
        "(bupwatch_server_info)"
    )
    assert [r["metric"]["name"] for r in joined] == ["h3"]
