"""The watchdog's dependencies failing for real: Prometheus killed, Alertmanager frozen and then
killed while an alert-driven repair wants a silence, Cassandra (the inventory) down and frozen.
The watchdog keeps sweeping and repairing; a stale inventory stops the repairs that depend on it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from pathlib import Path

import httpx
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.inventory.cassandra import CassandraSession, write_inventory
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.journal import Journal
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import Runner, inventory_source
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harness import AtStake, Daemon, sweeps, wait_metric, wait_until, write_config
from faults.recorder import Reliability, short
from support.alertmanager import Alertmanager
from support.alerts import bup_server_down
from support.cassandra.node import CassandraNode
from support.cassandra_fixture import cassandra_toml
from support.prometheus import Prometheus, free_port, values


def answers(address: str, port: int | None) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_prometheus_killed_and_alertmanager_frozen_then_killed_never_stop_sweeps_or_repairs(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    am_port = free_port()
    silence = {"silence": True, "alertmanager_url": f"http://127.0.0.1:{am_port}"}
    config, url, token = write_config(fleet, tmp_path, alerts=silence)
    headers = {"Authorization": f"Bearer {token}"}
    db = tmp_path / "state" / "state.db"
    repaired: dict[str, tuple[float, str]] = {}
    with (
        Daemon(config, url) as daemon,
        Alertmanager(
            tmp_path / "am", f"{url}/alertmanager", tmp_path / "api-token", port=am_port
        ) as am,
        Prometheus(tmp_path / "prom", [url.removeprefix("http://")]) as prom,
    ):
        prom.wait_for_query('up{job="bupwatch"}', lambda r: values(r) == [1.0], timeout=30)
        assert am._proc is not None and prom._proc is not None
        prom._proc.send_signal(signal.SIGKILL)  # Prometheus dies: nobody scrapes any more
        prom._proc.wait(10)
        at_death = sweeps(wait_metric(daemon, lambda f: sweeps(f) >= 1, what="a sweep"))
        journal = Journal(State(db))

        for host, fault in (("s1", "frozen"), ("s2", "killed")):
            if fault == "frozen":
                am._proc.send_signal(signal.SIGSTOP)
            else:
                am._proc.send_signal(signal.SIGKILL)
                am._proc.wait(10)
            fleet.hosts[host].stop_bup_server()
            sid = fleet.server_id(host)
            posted = time.monotonic()
            r = httpx.post(
                f"{url}/alertmanager",
                json=bup_server_down((f"a{host[1]}", sid), summary="bup_server down"),
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 200 and r.json()["queued"] == 1, r.text
            [entry] = wait_until(
                lambda sid=sid: [
                    e
                    for e in journal.entries(status="succeeded")
                    if e.server_id == sid and e.repair == "restart_bup_server"
                ],
                timeout=40,
                what=f"the restart on {host}",
                interval=0.2,
            )
            repaired[fault] = (time.monotonic() - posted, entry.verification or "")
        later = wait_metric(daemon, lambda f: sweeps(f) >= at_death + 2, what="2 more sweeps")
        alive = daemon.proc.poll() is None
        log = daemon.log()
        code = daemon.stop()
        journal.state.close()

    assert alive and code == 0 and not daemon.crashed
    assert log.count("could not silence the alert in Alertmanager") == 2, log[-3000:]
    # The silence call's 5 s timeout, plus the restart itself (slack for a loaded machine).
    assert repaired["frozen"][0] < 5 + 30, "the frozen Alertmanager holds a repair 5 s at most"
    for host in ("s1", "s2"):
        assert answers(fleet.hosts[host].address, fleet.hosts[host].read_bup_server_port())
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="dependency",
        what="Prometheus killed (SIGKILL) while scraping the daemon",
        expected="the watchdog does not care: it keeps sweeping and serving",
        observed=f"sweeps went on: {at_death:g} -> {sweeps(later):g} after Prometheus died; "
        "daemon alive, exit 0 on SIGTERM",
        loss=lost,
    )
    reliability.record(
        area="dependency",
        what="Alertmanager frozen (SIGSTOP) while an alert-driven repair asks for a silence",
        expected="the silence call gives up after its timeout (5 s); the repair runs anyway",
        observed=f"restart_bup_server on s1 succeeded {repaired['frozen'][0]:.1f} s after the "
        "alert; 'could not silence the alert in Alertmanager … repairing anyway' logged",
        loss=lost,
    )
    reliability.record(
        area="dependency",
        what="Alertmanager down (SIGKILL) while an alert-driven repair asks for a silence",
        expected="connection refused at once; the repair runs anyway",
        observed=f"restart_bup_server on s2 succeeded {repaired['killed'][0]:.1f} s after the "
        "alert; warning logged; both bup_servers answer again",
        loss=lost,
    )


def test_cassandra_down_or_frozen_means_a_bounded_wait_the_cached_inventory_and_no_resync(
    scratch_fleet: SandboxFleet, cassandra: CassandraNode, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    keyspace = f"faults_{secrets.token_hex(4)}"
    text = fleet.config_path.read_text().replace('source = "file"', 'source = "cassandra"', 1)
    text = text.replace('directory = "state"', f'directory = "{tmp_path / "state"}"', 1)
    limits = {"connect_timeout": 2.0, "request_timeout": 2.0}

    def config_with(name: str, **cassandra_settings: float) -> Config:
        path = fleet.config_path.with_name(f"config-{name}.toml")
        path.write_text(text + "\n" + cassandra_toml(cassandra, keyspace, **cassandra_settings))
        config = load_config(path, settings_models())
        config.repair("resync_replica").mode = "auto"
        return config

    healthy = config_with("cassandra")  # the fixture's timeouts: a loaded machine is no fault
    with CassandraSession(healthy.inventory.cassandra) as db:
        write_inventory(db, FileInventory(fleet.inventory_path).load(), replication_factor=1)
    state = State(tmp_path / "state" / "state.db")
    up = Runner(healthy, state, inventory_source(healthy)).run_once(
        only=("reachability",), force=True
    )
    assert up is not None and not up.inventory.stale
    config = config_with("cassandra-short", **limits)  # the same node, short timeouts
    runner = Runner(config, state, inventory_source(config))

    def faulted_sweep() -> tuple[float, bool, int, str]:
        started = time.monotonic()
        result = runner.run_once(only=("reachability",), force=True)
        took = time.monotonic() - started
        assert result is not None
        guard = Guard(config, state, result.inventory)
        d = guard.submit(RepairRequest("resync_replica", fleet.server_id("s2"), SCRATCH_P1))
        probed = sum(1 for f in result.facts.values() if f.probed)
        return took, result.inventory.stale, probed, d.message

    assert cassandra.pid is not None
    os.kill(cassandra.pid, signal.SIGSTOP)
    try:
        frozen = faulted_sweep()
    finally:
        os.kill(cassandra.pid, signal.SIGCONT)
    config.inventory.cassandra.port = free_port()  # nothing listens there: Cassandra down
    runner = Runner(config, state, inventory_source(config))
    down = faulted_sweep()
    error = state.meta()["inventory_error"]
    state.close()

    for _took, stale, probed, message in (frozen, down):
        assert stale and probed == 2
        assert message.startswith("precondition: inventory_stale"), message
    # Bounded by the timeouts (plus slack for a loaded machine), not by Cassandra coming back.
    assert frozen[0] < 2 * (limits["connect_timeout"] + limits["request_timeout"]) + 15
    assert "\n" not in error
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    for (took, _, probed, message), what in (
        (frozen, "Cassandra frozen (SIGSTOP of the node's JVM): the inventory source hangs"),
        (down, "Cassandra down (nothing listens at the configured address)"),
    ):
        reliability.record(
            area="dependency",
            what=what,
            expected="a bounded wait (connect/request timeouts 2 s), then the cached inventory "
            "flagged stale; the sweep goes on; resync_replica refused while stale",
            observed=f"sweep on the cache in {took:.1f} s, {probed} hosts probed; resync "
            f"refused: {short(message, 100)}",
            loss=lost,
        )
