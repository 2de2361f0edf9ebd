"""Interrupted repairs are acknowledged (``repairs ack``, ``POST /api/repairs/{id}/ack``) or
resolved by a later success of the same repair on the same target: they stop counting in
``bupwatch_repairs_open`` (BupWatchInterruptedRepair resolves) while ``bupwatch_repairs_total``
keeps them, and the journal keeps who, why and when."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import SCRATCH_P1
from prometheus_client import CollectorRegistry

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.journal import Journal
from bup_watchdog.metrics import StateCollector
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import DEMO_PROJECTS
from bup_watchdog.state import MIGRATIONS, State
from support.prometheus import WatchdogDaemon, poll, watchdog_config
from support.scrape import Samples, metrics, sample

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(config)], capture_output=True, text=True, timeout=180
    )


def running_intent(state: State, repair: str, server_id: str, project_id: str) -> int:
    """The row the guard writes before a repair's first command (journal first)."""
    journal = Journal(state)
    entry = journal.write(
        repair=repair,
        target=f"{server_id}/{project_id}",
        server_id=server_id,
        project_id=project_id,
        requested_by="schedule",
        reason="test: the watchdog is killed while this runs",
        fingerprint=None,
        mode="auto",
        status="running",
    )
    journal.update(entry, started_at=time.time() - 7200)  # two hours ago: outside rate limits
    return entry


def open_interrupted(found: Samples, repair: str) -> float | None:
    return sample(found, "bupwatch_repairs_open", repair=repair, status="interrupted")


def total_interrupted(found: Samples, repair: str) -> float | None:
    return sample(found, "bupwatch_repairs_total", repair=repair, outcome="interrupted")


def test_interrupted_repairs_acknowledged_by_api_and_cli_leave_the_open_gauge_not_the_total(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    token = "t0k3n-" + "a" * 24
    (tmp_path / "api-token").write_text(token + "\n")
    config, url = watchdog_config(
        demo_fleet, tmp_path, guard={"api_token_file": str(tmp_path / "api-token")}
    )
    h1, h2 = demo_fleet.server_id("h1"), demo_fleet.server_id("h2")
    p1, p4 = DEMO_PROJECTS["P1"], DEMO_PROJECTS["P4"]
    state = State(tmp_path / "state" / "state.db")
    first = running_intent(state, "chown_project", h1, p1)
    second = running_intent(state, "chown_project", h2, p4)
    state.close()
    auth = {"Authorization": f"Bearer {token}"}

    with WatchdogDaemon(config) as daemon:  # at start it finds both rows running: interrupted

        def scrape(accept: Callable[[Samples], bool]) -> Samples:
            def probe() -> Samples | None:
                try:
                    found = metrics(url)
                except httpx.HTTPError:
                    return None
                return found if accept(found) else None

            return poll(probe, timeout=60, what="a scrape", interval=0.2, alive=daemon.dead)

        before = scrape(lambda f: open_interrupted(f, "chown_project") is not None)
        no_token = httpx.post(f"{url}/api/repairs/{first}/ack", json={"why": "x"}, timeout=10)
        blank = httpx.post(
            f"{url}/api/repairs/{first}/ack", json={"why": "  "}, headers=auth, timeout=10
        )
        acked = httpx.post(
            f"{url}/api/repairs/{first}/ack",
            json={"why": "chown checked by hand: ls -ln /projects/P1 shows its uid"},
            headers=auth,
            timeout=10,
        )
        again = httpx.post(
            f"{url}/api/repairs/{first}/ack", json={"why": "twice"}, headers=auth, timeout=10
        )
        missing = httpx.post(
            f"{url}/api/repairs/999999/ack", json={"why": "x"}, headers=auth, timeout=10
        )
        # Approving or denying what is not a pending repair is answered now, with the reason
        # (it was "queued", and the worker only logged why nothing happened).
        approve_missing = httpx.post(f"{url}/api/repairs/999999/approve", headers=auth, timeout=10)
        deny_interrupted = httpx.post(
            f"{url}/api/repairs/{second}/deny", json={"why": "x"}, headers=auth, timeout=10
        )
        half = scrape(lambda f: open_interrupted(f, "chown_project") == 1)
        by_cli = cli(config, "repairs", "ack", str(second), "--why", "checked on h2 by hand")
        after = scrape(lambda f: open_interrupted(f, "chown_project") == 0)
        listed = cli(config, "repairs", "list", "--format", "json")

    assert open_interrupted(before, "chown_project") == 2
    assert total_interrupted(before, "chown_project") == 2
    assert no_token.status_code == 401, no_token.text
    assert blank.status_code == 400, blank.text
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert (body["status"], body["acked_by"]) == ("interrupted", "api")
    assert body["ack_reason"].startswith("chown checked by hand")
    assert again.status_code == 409 and "already acknowledged by api" in again.json()["error"]
    assert missing.status_code == 404, missing.text
    assert approve_missing.status_code == 404, approve_missing.text
    assert approve_missing.json()["error"] == "no repair #999999 in the journal"
    assert deny_interrupted.status_code == 409, deny_interrupted.text
    assert deny_interrupted.json()["error"] == f"repair #{second} is interrupted, not pending"
    assert open_interrupted(half, "chown_project") == 1
    assert by_cli.returncode == 0, by_cli.stderr
    assert f"repair #{second} chown_project" in by_cli.stdout and "acknowledged" in by_cli.stdout
    assert open_interrupted(after, "chown_project") == 0
    assert total_interrupted(after, "chown_project") == 2, "an outcome count never falls"
    rows = {e["id"]: e for e in json.loads(listed.stdout)}
    assert rows[second]["status"] == "interrupted"
    assert rows[second]["acked_by"].startswith("cli:")
    assert rows[second]["ack_reason"] == "checked on h2 by hand"
    assert rows[second]["acked_at"] is not None
    state = State(tmp_path / "state" / "state.db")
    try:
        assert state.open_findings(check="guard") == [], "the guard's findings resolve with them"
    finally:
        state.close()


def test_acknowledging_needs_a_reason_and_an_interrupted_repair(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(demo_fleet, tmp_path)
    state = State(tmp_path / "state" / "state.db")
    h1, p1 = demo_fleet.server_id("h1"), DEMO_PROJECTS["P1"]
    still_running = running_intent(state, "chown_project", h1, p1)
    state.close()

    no_why = cli(config, "repairs", "ack", str(still_running))
    not_interrupted = cli(config, "repairs", "ack", str(still_running), "--why", "looked")
    unknown = cli(config, "repairs", "ack", "424242", "--why", "looked")

    assert no_why.returncode == 2 and "--why" in no_why.stderr
    assert not_interrupted.returncode == 3
    assert "is running, not interrupted" in not_interrupted.stderr
    assert unknown.returncode == 3 and "no repair #424242" in unknown.stderr
    assert "Traceback" not in not_interrupted.stderr + unknown.stderr


def test_a_later_success_of_the_same_repair_on_the_same_target_resolves_an_interrupted_one(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(scratch_fleet, tmp_path)
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    state = State(tmp_path / "state" / "state.db")
    same = running_intent(state, "chown_project", s1, SCRATCH_P1)
    other_target = running_intent(state, "chown_project", s2, SCRATCH_P1)
    other_repair = running_intent(state, "rotate_save_log", s1, SCRATCH_P1)
    state.close()
    once = cli(config, "run", "--once")  # the daemon's start marks the three interrupted
    repaired = cli(config, "repair", "chown_project", f"s1/{SCRATCH_P1}", "--execute")

    state = State(tmp_path / "state" / "state.db")
    try:
        journal = Journal(state)
        rows = {i: journal.get(i) for i in (same, other_target, other_repair)}
        reg = CollectorRegistry()
        reg.register(StateCollector(state, lambda: {}, sorted(check_registry())))
        open_ = {
            (s.labels["repair"], s.labels["status"]): s.value
            for fam in reg.collect()
            if fam.name == "bupwatch_repairs_open"
            for s in fam.samples
        }
        guard = {(f.server_id, f.code) for f in state.open_findings(check="guard")}
    finally:
        state.close()
    assert once.returncode in (0, 1, 2), once.stderr
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    ran = int(repaired.stdout.split("#", 1)[1].split(":", 1)[0])
    first = rows[same]
    assert first is not None and first.status == "interrupted"
    assert first.acked_by == "watchdog"
    assert first.ack_reason == (
        f"resolved: repair #{ran} (chown_project on the same target) succeeded afterwards"
    )
    assert rows[other_target] is not None and rows[other_target].acked_at is None
    assert rows[other_repair] is not None and rows[other_repair].acked_at is None
    assert open_[("chown_project", "interrupted")] == 1  # s2's copy: still open
    assert open_[("rotate_save_log", "interrupted")] == 1  # another repair proves nothing
    assert guard == {(s1, "interrupted"), (s2, "interrupted")}  # both still have one open


def test_upgrading_the_state_resolves_interrupted_repairs_a_later_success_already_covered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:  # a state file written before acknowledgements existed
        db.executescript(script)
    db.execute("PRAGMA user_version = 6")
    row = (
        "INSERT INTO journal(repair, target, server_id, project_id, requested_by, mode, status, "
        "created_at, finished_at) VALUES (?, ?, 's1', 'p', 'schedule', 'auto', ?, ?, ?)"
    )
    db.execute(row, ("chown_project", "s1/p", "interrupted", 10.0, 11.0))  # 1: resolved by 3
    db.execute(row, ("chown_project", "s2/p", "interrupted", 12.0, 13.0))  # 2: nothing later
    db.execute(row, ("chown_project", "s1/p", "succeeded", 20.0, 21.0))  # 3
    db.commit()
    db.close()

    state = State(path)
    try:
        journal = Journal(state)
        resolved, still = journal.get(1), journal.get(2)
        open_ = journal.open_by()
    finally:
        state.close()
    assert resolved is not None and (resolved.status, resolved.acked_by) == (
        "interrupted",
        "watchdog",
    )
    assert resolved.acked_at == 21.0
    assert resolved.ack_reason == (
        "resolved: repair #3 (chown_project on the same target) succeeded afterwards"
    )
    assert still is not None and still.acked_at is None
    assert open_ == {("chown_project", "interrupted"): 1}
