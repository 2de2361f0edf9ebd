"""Load on the real daemon: an alert storm of 10,000 alerts within a minute at its webhook, and a
third of a 3-host fleet vanishing at once (the circuit breaker opens, then closes)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bup_watchdog.journal import Journal
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from faults.harness import AtStake, Daemon, get, sample, sweeps, wait_metric, write_config
from faults.recorder import Reliability, short
from support.alerts import bup_server_down

ALERTS = 10_000
PER_PAYLOAD = 10
TARGETS = 100  # distinct alert fingerprints


def test_an_alert_storm_of_10000_alerts_in_a_minute_keeps_memory_repairs_and_journal_bounded(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    config, url, token = write_config(
        fleet, tmp_path, repairs={"restart_bup_server": {"max_per_hour": 1}}
    )
    for host in ("s1", "s2"):
        fleet.hosts[host].stop_bup_server()
    servers = [fleet.server_id("s1"), fleet.server_id("s2")]
    alerts = [(f"{i % TARGETS:04x}", servers[i % TARGETS % 2]) for i in range(ALERTS)]
    bodies = [
        bup_server_down(*alerts[i : i + PER_PAYLOAD], summary="storm")
        for i in range(0, ALERTS, PER_PAYLOAD)
    ]
    headers = {"Authorization": f"Bearer {token}"}
    with Daemon(config, url) as daemon:
        wait_metric(daemon, lambda f: sweeps(f) >= 1, what="the first sweep")
        rss_before = daemon.status("VmRSS")
        with httpx.Client(timeout=30, headers=headers) as client:

            def post(body: dict[str, object]) -> tuple[int, int]:
                r = client.post(f"{url}/alertmanager", json=body)
                return r.status_code, r.json().get("queued", 0) if r.status_code == 200 else 0

            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(post, bodies))
            storm = time.monotonic() - t0
        journal = Journal(State(tmp_path / "state" / "state.db"))

        def settled() -> bool:
            before = len(journal.entries(limit=100_000))
            time.sleep(1.5)
            return len(journal.entries(limit=100_000)) == before

        deadline = time.monotonic() + 120
        while not settled():
            assert time.monotonic() < deadline, "the repair queue did not drain"
        rss_after = daemon.status("VmRSS")
        peak = daemon.status("VmHWM")
        healthy = get(f"{url}/healthz")
        code = daemon.stop()
    entries = journal.entries(limit=100_000)
    journal.state.close()
    started = [e for e in entries if e.started_at is not None]
    runs = Counter(e.fingerprint for e in started)
    refusals = Counter((e.refusal or "").split(":")[0] for e in entries if e.status == "refused")
    codes = Counter(c for c, _ in answers)
    queued = sum(q for _, q in answers)

    assert storm < 60, f"the storm took {storm:.0f} s to deliver"
    assert codes == {200: len(bodies)}, codes
    assert healthy is not None and healthy.status_code == 200
    assert code == 0 and not daemon.crashed
    assert len(started) == 1, "restart_bup_server's max_per_hour = 1: one run, no more"
    assert all(n == 1 for n in runs.values()), "no alert acted on twice"
    assert len(entries) <= queued <= ALERTS
    growth_mb = (rss_after - rss_before) / 1024
    assert growth_mb < 64, f"RSS grew {growth_mb:.0f} MB"
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="load",
        what=f"alert storm: {ALERTS} firing alerts ({len(bodies)} webhook payloads of "
        f"{PER_PAYLOAD}, {TARGETS} fingerprints) at the real daemon, both bup_servers down",
        expected="every payload answered; memory bounded; repairs bounded by the guard "
        "(restart_bup_server max_per_hour = 1); no alert acted on twice",
        observed=f"delivered in {storm:.1f} s, all 200; {queued} queued, the rest deduplicated "
        f"(fingerprint already queued/being repaired); {len(entries)} journal rows, "
        f"{len(started)} repair run, refusals {dict(refusals)}; RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MB (peak {peak // 1024} MB)",
        loss=lost,
    )


def test_a_third_of_the_fleet_vanishing_opens_the_circuit_breaker_and_its_return_closes_it(
    reliability: Reliability, tmp_path: Path
) -> None:
    spec = FleetSpec(
        hosts=(HostSpec("t1"), HostSpec("t2"), HostSpec("t3", dc=1)),
        projects=(ProjectSpec("7e0c4a52-3f51-4c8e-9b3a-2d5f6e7a8b90", "t1", ("t3",)),),
    )
    with SandboxFleet(tmp_path / "trio", spec) as fleet:
        stake = AtStake(fleet)
        config, url, token = write_config(fleet, tmp_path / "watchdog")
        with Daemon(config, url) as daemon:
            closed = wait_metric(daemon, lambda f: sweeps(f) >= 1, what="the first sweep")
            fleet.hosts["t3"].kill_sshd()
            opened = wait_metric(
                daemon,
                lambda f: sample(f, "bupwatch_circuit_breaker_open") == 1,
                what="the breaker to open",
            )
            r = httpx.post(
                f"{url}/api/repairs",
                json={"repair": "restart_bup_server", "server_id": fleet.server_id("t1")},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert r.status_code == 202, r.text
            state = State(tmp_path / "watchdog" / "state" / "state.db")
            journal = Journal(state)
            deadline = time.monotonic() + 30
            while not journal.entries(status="refused"):
                assert time.monotonic() < deadline, "the request was never decided"
                time.sleep(0.1)
            [refused] = journal.entries(status="refused")
            state.close()
            fleet.hosts["t3"].start_sshd()
            back = wait_metric(
                daemon,
                lambda f: (
                    sample(f, "bupwatch_circuit_breaker_open") == 0 and sweeps(f) > sweeps(opened)
                ),
                what="the breaker to close",
            )
            code = daemon.stop()
        lost = stake.loss()

    assert sample(closed, "bupwatch_circuit_breaker_open") == 0
    assert (refused.refusal or "").startswith("circuit_breaker:"), refused.refusal
    assert code == 0 and not daemon.crashed
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="load",
        what="a third of the hosts vanish (sshd killed on 1 of 3), then come back",
        expected="bupwatch_circuit_breaker_open 1 after the next sweep (1/3 > 30 %) and every "
        "repair refused; 0 again once the host answers",
        observed=f"breaker 0 at sweep {sweeps(closed):g}, 1 at sweep {sweeps(opened):g}, 0 at "
        f"sweep {sweeps(back):g}; meanwhile: {short(refused.refusal or '', 110)}",
        loss=lost,
    )
