"""The whole loop, all real: sandbox fleet → watchdog daemon → Prometheus (shipped rules) → an alert
fires → Alertmanager posts to the webhook → the guard runs the repair (the alert silenced in
Alertmanager meanwhile) → the check passes → the alert resolves. And the same with the repair in
approve mode: nothing changes until approval.

The shipped alert rules are used as they are, except that every ``for:`` is set to 0s in the copy
Prometheus loads, so the test does not wait minutes for a rule's pending period.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bup_watchdog.journal import Journal
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from support.alertmanager import Alertmanager
from support.daemon import daemon_config
from support.prometheus import Prometheus, WatchdogDaemon, free_port, poll

RULES = Path(__file__).parents[2] / "dashboards" / "prometheus" / "alerts.yml"


def quick_rules(workdir: Path) -> Path:
    path = workdir / "alerts.yml"
    path.write_text(re.sub(r"for: \S+", "for: 0s", RULES.read_text()))
    return path


def bup_server_answers(fleet: SandboxFleet, host: str, state: State) -> bool:
    port = fleet.hosts[host].read_bup_server_port()
    if port is None:
        return False
    try:
        with socket.create_connection((fleet.hosts[host].address, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture()
def loop(
    scratch_fleet: SandboxFleet, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    mode = request.param
    am_port = free_port()
    silence = {"silence": True, "alertmanager_url": f"http://127.0.0.1:{am_port}"}
    config, url, token = daemon_config(
        scratch_fleet, tmp_path, mode, alerts=silence if mode == "auto" else None
    )
    scratch_fleet.hosts["s1"].stop_bup_server()
    faulted = time.monotonic()
    with (
        WatchdogDaemon(config) as daemon,
        Alertmanager(tmp_path / "am", f"{url}/alertmanager", token, port=am_port) as am,
        Prometheus(
            tmp_path / "prom",
            [url.removeprefix("http://")],
            rule_files=[quick_rules(tmp_path)],
            alertmanagers=[f"127.0.0.1:{am.port}"],
        ) as prom,
    ):
        yield {
            "fleet": scratch_fleet,
            "daemon": daemon,
            "am": am,
            "prom": prom,
            "url": url,
            "token": token.read_text().strip(),
            "state": State(tmp_path / "state" / "state.db"),
            "faulted": faulted,
        }


def journal_entry(state: State, status: str) -> Any:
    entries = [
        e
        for e in Journal(state).entries(status=status)
        if e.repair == "restart_bup_server" and e.requested_by.startswith("alertmanager:")
    ]
    return entries[0] if entries else None


@pytest.mark.parametrize("loop", ["auto"], indirect=True)
def test_an_alert_for_a_stopped_bup_server_gets_it_restarted_and_then_resolves(
    loop: dict[str, Any],
) -> None:
    state, daemon, prom = loop["state"], loop["daemon"], loop["prom"]
    entry = poll(
        lambda: journal_entry(state, "succeeded"),
        timeout=90,
        what="the alert-driven restart_bup_server to succeed",
        interval=0.5,
        alive=daemon.dead,
    )
    repaired = time.monotonic()
    assert bup_server_answers(loop["fleet"], "s1", state)
    prom.wait_for_query(
        'ALERTS{alertname="BupWatchBupServerDown", alertstate="firing"}',
        lambda r: r == [],
        timeout=60,
    )
    resolved = time.monotonic()
    ours = [s for s in loop["am"].silences() if s["createdBy"] == "bup-watchdog"]
    assert ours, "the alert was silenced while its repair ran"
    assert all(s["status"]["state"] == "expired" for s in ours), "and unsilenced after it"
    print(
        f"fault -> repaired: {repaired - loop['faulted']:.1f} s; "
        f"fault -> alert resolved: {resolved - loop['faulted']:.1f} s (repair #{entry.id})"
    )


@pytest.mark.parametrize("loop", ["approve"], indirect=True)
def test_in_approve_mode_the_alert_leaves_a_pending_repair_and_nothing_changes_until_approved(
    loop: dict[str, Any],
) -> None:
    state, daemon, fleet = loop["state"], loop["daemon"], loop["fleet"]
    pending = poll(
        lambda: journal_entry(state, "pending"),
        timeout=90,
        what="the alert to leave a pending restart_bup_server",
        interval=0.5,
        alive=daemon.dead,
    )
    time.sleep(3)  # a few more alert notifications and sweeps: still nothing may run
    assert not bup_server_answers(fleet, "s1", state)
    r = httpx.post(
        f"{loop['url']}/api/repairs/{pending.id}/approve",
        headers={"Authorization": f"Bearer {loop['token']}"},
        timeout=5,
    )
    assert r.status_code == 202, r.text
    poll(
        lambda: journal_entry(state, "succeeded"),
        timeout=60,
        what="the approved repair to succeed",
        interval=0.5,
        alive=daemon.dead,
    )
    assert bup_server_answers(fleet, "s1", state)
