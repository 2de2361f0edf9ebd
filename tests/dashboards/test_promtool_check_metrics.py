"""``promtool check metrics`` on the real daemon's ``/metrics`` after sweeps with findings, a
repair that ran, a refused one and a host whose SSH key changed; and the shipped alert rules,
loaded by the real Prometheus scraping that daemon, naming the host and telling the changed key
(a security alert) from an outage.

The fleet: s1's bup_server is not running (the repair restarts it), s2's host key is replaced after
the build (a security finding; 1 host of 4, so the circuit breaker stays closed), s4's replica of
P1 lacks the newest save (replication_lag). Restarts are capped at one an hour, so the second
request is refused. The demo fleet's scrape is checked the same way in test_prometheus_scrape.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bup_watchdog.journal import REFUSED, SUCCEEDED, Journal
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from support.daemon import daemon_config
from support.prometheus import Prometheus, WatchdogDaemon, poll
from support.scrape import metrics, promtool_check_metrics, sample

RULES = Path(__file__).parents[2] / "dashboards" / "prometheus" / "alerts.yml"
P1 = "7e1f0c2a-1111-4c1d-9a0b-000000000001"
P2 = "7e1f0c2a-1111-4c1d-9a0b-000000000002"
SPEC = FleetSpec(
    hosts=(
        HostSpec("s1", dc=0, bup_server_running=False),
        HostSpec("s2", dc=0),
        HostSpec("s3", dc=1),
        HostSpec("s4", dc=1),
    ),
    projects=(
        ProjectSpec(P1, master="s3", replicas=("s4",), stale_on=("s4",)),
        ProjectSpec(P2, master="s1", replicas=("s3",)),
    ),
)


@dataclass
class Watched:
    fleet: SandboxFleet
    base: str
    state: State
    body: str
    prometheus: Prometheus


def wait_journaled(state: State, status: str, daemon: WatchdogDaemon) -> None:
    """Wait for a restart_bup_server entry with this status in the daemon's journal."""

    def found() -> bool | None:
        entries = Journal(state).entries(status=status)
        return any(e.repair == "restart_bup_server" for e in entries) or None

    poll(found, timeout=90, what=f"a {status} restart_bup_server in the journal", alive=daemon.dead)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    work = tmp_path_factory.mktemp("promtool-metrics")
    with SandboxFleet(work / "fleet", SPEC) as fleet:
        fleet.hosts["s2"].replace_host_key()
        config, base, token_file = daemon_config(fleet, work, "auto", max_per_hour=1)
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        state = State(work / "state" / "state.db")
        rules = work / "alerts.yml"  # the shipped rules with every pending period at 0s
        rules.write_text(re.sub(r"for: \S+", "for: 0s", RULES.read_text()))
        with WatchdogDaemon(config) as daemon:

            def swept(n: int) -> bool | None:
                try:
                    return (sample(metrics(base), "bupwatch_sweeps_total") or 0) >= n or None
                except httpx.HTTPError:
                    return None

            poll(lambda: swept(1), timeout=90, what="the first sweep", alive=daemon.dead)
            repair = {"repair": "restart_bup_server", "server_id": fleet.server_id("s1")}
            for status in (SUCCEEDED, REFUSED):
                r = httpx.post(f"{base}/api/repairs", json=repair, headers=headers, timeout=10)
                assert r.status_code == 202, r.text
                wait_journaled(state, status, daemon)
            done = sample(metrics(base), "bupwatch_sweeps_total") or 0
            poll(lambda: swept(done + 1), timeout=90, what="a sweep after the repairs")
            body = httpx.get(f"{base}/metrics", timeout=10).text
            with Prometheus(
                work / "prometheus", [base.removeprefix("http://")], rule_files=[rules]
            ) as prometheus:
                prometheus.wait_for_query('up{job="bupwatch"} == 1', lambda r: len(r) == 1)
                yield Watched(fleet, base, state, body, prometheus)
        state.close()


def test_promtool_check_metrics_has_nothing_to_say_about_the_daemons_scrape(
    watched: Watched,
) -> None:
    assert promtool_check_metrics(watched.body) == ""


def test_that_scrape_holds_findings_a_repair_a_refusal_and_the_changed_host_key(
    watched: Watched,
) -> None:
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(watched.body)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    restart = "restart_bup_server"
    assert value("bupwatch_repairs_total", repair=restart, outcome="succeeded") == 1
    assert value("bupwatch_repairs_total", repair=restart, outcome="refused") == 1
    assert value("bupwatch_repairs_refused_total", repair=restart, reason="rate_limited") == 1
    s2, s4 = watched.fleet.server_id("s2"), watched.fleet.server_id("s4")
    key = dict(check="reachability", server_id=s2, code="host_key", severity="critical")
    assert value("bupwatch_host_findings", **key) == 1
    lag = dict(check="replication_lag", server_id=s4, severity="warning")
    assert (value("bupwatch_findings", **lag) or 0) >= 1
    names = {n for n, _ in samples}
    assert {n for n in names if n.endswith("_total")} >= {
        "bupwatch_sweeps_total",
        "bupwatch_repairs_total",
        "bupwatch_repairs_refused_total",
        "bupwatch_state_write_errors_total",
    }


def test_the_promtool_check_fails_on_the_old_double_sweep_repositories_family(
    watched: Watched,
) -> None:
    doubled = watched.body + (
        "# HELP bupwatch_sweep_repositories Repositories the last sweep gathered.\n"
        "# TYPE bupwatch_sweep_repositories gauge\nbupwatch_sweep_repositories 2.0\n"
    )
    assert "second HELP line" in promtool_check_metrics(doubled)


def test_a_changed_host_key_fires_the_security_alert_naming_the_host_and_no_outage_alert(
    watched: Watched,
) -> None:
    prom = watched.prometheus
    [alert] = prom.wait_for_query(
        'ALERTS{alertname="BupWatchHostKeyRejected", alertstate="firing"}',
        lambda r: len(r) == 1,
    )
    labels = alert["metric"]
    assert (labels["name"], labels["dc"], labels["category"], labels["severity"]) == (
        "s2",
        "0",
        "security",
        "critical",
    )
    assert labels["server_id"] == watched.fleet.server_id("s2")
    # the probe of s2 fails too, yet BupWatchHostUnreachable (for: 0s here) stays silent for it
    assert prom.query("bupwatch_host_probe_success == 0")
    assert prom.query('ALERTS{alertname="BupWatchHostUnreachable"}') == []
    lag = prom.wait_for_query(
        'ALERTS{alertname="BupWatchReplicaBehind", alertstate="firing"}',
        lambda r: len(r) == 1,
    )
    assert (lag[0]["metric"]["name"], lag[0]["metric"]["dc"]) == ("s4", "1")
