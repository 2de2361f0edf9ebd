"""The guard's rules on a real fleet: every refusal journaled with its reason, nothing run."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard, requests_for
from bup_watchdog.model import Finding, Severity
from bup_watchdog.repairs.base import (
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    Step,
)
from bup_watchdog.repairs.chown_project import ChownProject
from bup_watchdog.repairs.restart_bup_server import RestartBupServer, RestartBupServerSettings
from bup_watchdog.runner import Runner, inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import fleet_config, fleet_digest, make_guard


def chown(fleet: SandboxFleet, **kw: object) -> RepairRequest:
    return RepairRequest("chown_project", fleet.server_id("s1"), SCRATCH_P1, **kw)  # type: ignore[arg-type]


def plant_wrong_owner(fleet: SandboxFleet) -> None:
    f = fleet.hosts["s1"].projects_dir_outside / SCRATCH_P1 / "wrong.txt"
    f.write_text("x")
    os.chown(f, 0, 0)


def wrong_owner(fleet: SandboxFleet) -> Finding:
    """The ownership finding plant_wrong_owner's file makes (what the schedule repairs)."""
    return Finding(
        "ownership", fleet.server_id("s1"), Severity.WARNING, "wrong owner",
        project_id=SCRATCH_P1, code="wrong_owner",
    )  # fmt: skip


def refusal(guard: Guard) -> str:
    [entry] = guard.journal.entries(status="refused", limit=1)
    return entry.refusal or ""


def test_a_project_id_that_is_not_a_v4_uuid_is_refused_before_anything_runs(
    scratch_fleet: SandboxFleet,
) -> None:
    guard = make_guard(scratch_fleet)
    before = fleet_digest(scratch_fleet)
    for bad in ("../../etc", "not-a-uuid; rm -rf /", SCRATCH_P1.replace("-4", "-1", 1)):
        decision = guard.submit(
            RepairRequest("chown_project", scratch_fleet.server_id("s1"), bad), execute=True
        )
        assert decision.status == "refused"
        assert decision.message.startswith("invalid:")
    assert fleet_digest(scratch_fleet) == before
    assert len(guard.journal.entries(status="refused")) == 3


def test_an_unknown_server_or_repair_is_refused_with_the_known_names(
    scratch_fleet: SandboxFleet,
) -> None:
    guard = make_guard(scratch_fleet)
    d1 = guard.submit(RepairRequest("chown_project", "nope", SCRATCH_P1), execute=True)
    d2 = guard.submit(RepairRequest("format_disk", scratch_fleet.server_id("s1")), execute=True)
    assert "not in the inventory" in d1.message
    assert "no such repair format_disk" in d2.message and "chown_project" in d2.message


def test_a_repair_switched_off_is_refused(scratch_fleet: SandboxFleet) -> None:
    guard = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "off"\n')
    assert guard.submit(chown(scratch_fleet), execute=True).message.startswith("mode_off:")


def test_in_approve_mode_a_request_waits_and_nothing_changes_until_approved(
    scratch_fleet: SandboxFleet,
) -> None:
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    before = fleet_digest(scratch_fleet)
    pending = guard.submit(chown(scratch_fleet, fingerprint="abc123"))
    assert pending.status == "pending"
    assert fleet_digest(scratch_fleet) == before
    again = guard.submit(chown(scratch_fleet, fingerprint="abc123"))
    assert again.message.startswith("duplicate:"), "one repair per alert fingerprint"
    done = guard.approve(pending.entry_id, "tester")
    assert done.status == "succeeded"
    assert fleet_digest(scratch_fleet) != before
    assert guard.journal.get(done.entry_id).decided_by == "tester"  # type: ignore[union-attr]


def test_approving_a_repair_switched_off_or_to_dry_run_since_it_waited_is_refused(
    scratch_fleet: SandboxFleet,
) -> None:
    """An operator's emergency stop (mode off, dry-run) holds for repairs already waiting."""
    plant_wrong_owner(scratch_fleet)
    waiting = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    before = fleet_digest(scratch_fleet)
    for mode, code in (("off", "mode_off:"), ("dry-run", "mode_dry_run:")):
        entry_id = waiting.submit(chown(scratch_fleet)).entry_id  # one waits at a time
        stopped = make_guard(scratch_fleet, f'[repairs.chown_project]\nmode = "{mode}"\n')
        decision = stopped.approve(entry_id, "tester")
        assert decision.status == "refused" and decision.message.startswith(code), decision
        row = stopped.journal.get(entry_id)
        assert row is not None and row.status == "denied"
        assert f"ran as repair #{decision.entry_id} (refused)" in (row.refusal or "")
    assert fleet_digest(scratch_fleet) == before


def test_a_repair_whose_host_stops_answering_before_the_verify_is_failed_not_succeeded(
    scratch_fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a check sees nothing of a host its probe did not reach, and the verify took
    that silence for a pass (journaled succeeded). The real chown runs; then s1's sshd is
    killed, so the verify's probe is refused."""
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet)
    repair = guard.repairs["chown_project"]
    real_execute = repair.execute

    def execute_then_host_down(*args: Any, **kwargs: Any) -> Outcome:
        outcome = real_execute(*args, **kwargs)
        scratch_fleet.hosts["s1"].kill_sshd()
        return outcome

    monkeypatch.setattr(repair, "execute", execute_then_host_down)
    decision = guard.submit(chown(scratch_fleet), execute=True)
    assert decision.status == "failed", decision
    assert decision.message.startswith("could not verify: cannot judge ownership on s1"), decision
    row = guard.journal.get(decision.entry_id)
    assert row is not None and row.verification == decision.message


def test_the_schedule_does_not_ask_again_while_its_request_waits_for_an_operator(
    scratch_fleet: SandboxFleet,
) -> None:
    """Regression: after each cooldown the schedule asked again and the guard journaled a
    "duplicate" refusal, for as long as nobody approved (48 rows a day per waiting target)."""
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    finding = wrong_owner(scratch_fleet)
    [req] = guard.scheduled_requests([finding], cooldown=0)
    assert guard.submit(req).status == "pending"
    assert guard.scheduled_requests([finding], cooldown=0) == []
    assert [e.status for e in guard.journal.entries()] == ["pending"]


def test_one_request_per_target_waits_for_approval_whoever_asked(
    scratch_fleet: SandboxFleet,
) -> None:
    """The schedule and an alert ask for the same repair with different fingerprints: both used
    to wait, and approving both ran the repair twice."""
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    finding = wrong_owner(scratch_fleet)
    from_alert = guard.submit(chown(scratch_fleet, fingerprint="alert-fp", requested_by="alert"))
    assert from_alert.status == "pending"

    assert guard.scheduled_requests([finding], cooldown=0) == []
    [req] = requests_for([finding], guard.repairs, "schedule")
    second = guard.submit(req)

    assert second.status == "refused" and second.message.startswith("duplicate:"), second.message
    assert f"repair #{from_alert.entry_id}" in second.message and "alert" in second.message
    assert [e.status for e in guard.journal.entries(status="pending")] == ["pending"]
    assert guard.approve(from_alert.entry_id, "tester").status == "succeeded"
    assert guard.submit(req).status == "pending"  # none waits any more: it may ask again


def test_a_request_still_waiting_from_approve_mode_does_not_hold_off_the_auto_schedule(
    scratch_fleet: SandboxFleet,
) -> None:
    """The repair was switched from approve to auto while an alert's request waited: the
    schedule asks (and the repair runs) rather than waiting for that row to be decided."""
    plant_wrong_owner(scratch_fleet)
    waiting = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    assert waiting.submit(chown(scratch_fleet, fingerprint="alert-fp")).status == "pending"
    auto = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "auto"\n')
    [req] = auto.scheduled_requests([wrong_owner(scratch_fleet)], cooldown=0)
    assert auto.submit(req).status == "succeeded"


def test_an_approval_refused_for_now_leaves_the_request_waiting_not_used_up(
    scratch_fleet: SandboxFleet,
) -> None:
    """Approved while another watchdog held the target's lease: the run is refused (lease), and
    the request used to be closed with it ('superseded'), so the operator had to ask again."""
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet, '[repairs.chown_project]\nmode = "approve"\n')
    pending = guard.submit(chown(scratch_fleet))
    target = chown(scratch_fleet).target
    assert guard.journal.acquire_lease(target, "other-watchdog:1", 60)

    refused = guard.approve(pending.entry_id, "tester")

    assert refused.status == "refused" and refused.message.startswith("lease:"), refused
    row = guard.journal.get(pending.entry_id)
    assert row is not None and row.status == "pending" and row.decided_by is None
    assert "refused for now" in (row.refusal or "") and "approve again" in (row.refusal or "")
    guard.journal.release_lease(target, "other-watchdog:1")
    assert guard.approve(pending.entry_id, "tester").status == "succeeded"
    assert guard.journal.get(pending.entry_id).status == "denied"  # type: ignore[union-attr]


class ChownFailingTwice(ChownProject):
    """FAKE: chown_project failing its first two runs (a failure on demand); then the real one."""

    failures = 2

    def execute(self, *args: Any, **kwargs: Any) -> Outcome:
        if self.failures:
            self.failures -= 1
            raise RepairError("failed on purpose (fake)")
        return super().execute(*args, **kwargs)


def test_a_later_success_resolves_the_guards_gave_up_finding(scratch_fleet: SandboxFleet) -> None:
    """Regression: gave_up stayed open (critical in the report and /api/findings) after the
    target was fixed and the repair succeeded: no sweep resolves the guard's findings."""
    plant_wrong_owner(scratch_fleet)
    config = fleet_config(scratch_fleet, "[guard]\nmax_failures = 2\nfailure_window_hours = 1\n")
    state = open_state(config)
    now = [time.time()]
    guard = Guard(
        config, state, load_inventory(inventory_source(config), state),
        repairs={"chown_project": ChownFailingTwice()}, clock=lambda: now[0],
    )  # fmt: skip
    assert [guard.submit(chown(scratch_fleet), execute=True).status for _ in range(3)] == [
        "failed", "failed", "refused"
    ]  # fmt: skip
    [gave_up] = state.open_findings(check="guard")
    assert gave_up.code == "gave_up" and gave_up.message.startswith("chown_project failed 2")
    now[0] += 2 * 3600  # the failures are out of the window: the guard tries again
    assert guard.submit(chown(scratch_fleet), execute=True).status == "succeeded"
    assert state.open_findings(check="guard") == []


def test_a_target_under_lease_is_refused(scratch_fleet: SandboxFleet) -> None:
    guard = make_guard(scratch_fleet)
    req = chown(scratch_fleet)
    assert guard.journal.acquire_lease(req.target, "other-watchdog:1", 60)
    assert guard.submit(req, execute=True).message.startswith("lease:")
    assert "other-watchdog:1" in refusal(guard)


def test_the_rate_limit_per_repair_refuses_the_next_run_within_the_hour(
    scratch_fleet: SandboxFleet,
) -> None:
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet, "[repairs.chown_project]\nmax_per_hour = 1\n")
    assert guard.submit(chown(scratch_fleet), execute=True).status == "succeeded"
    assert guard.submit(chown(scratch_fleet), execute=True).message.startswith("rate_limited:")


def test_repairs_are_refused_inside_a_maintenance_window(scratch_fleet: SandboxFleet) -> None:
    guard = make_guard(scratch_fleet, '[[guard.maintenance]]\nstart = "00:00"\nend = "24:00"\n')
    assert guard.submit(chown(scratch_fleet), execute=True).message.startswith("maintenance:")


def test_the_circuit_breaker_suspends_repairs_when_half_the_fleet_is_unreachable(
    scratch_fleet: SandboxFleet,
) -> None:
    config = fleet_config(scratch_fleet)
    state = open_state(config)
    scratch_fleet.hosts["s2"].kill_sshd()
    result = Runner(config, state, inventory_source(config)).run_once(force=True)
    assert result is not None
    guard = Guard(config, state, result.inventory)
    is_open, why = guard.breaker()
    assert is_open and "1 of 2 hosts were unreachable" in why
    decision = guard.submit(chown(scratch_fleet), execute=True)
    assert decision.message.startswith("circuit_breaker:")


def test_a_dry_run_journals_the_plan_and_changes_nothing(scratch_fleet: SandboxFleet) -> None:
    plant_wrong_owner(scratch_fleet)
    guard = make_guard(scratch_fleet)
    before = fleet_digest(scratch_fleet)
    decision = guard.submit(chown(scratch_fleet, params={"dry_run": True}), execute=True)
    assert decision.status == "dry_run"
    [entry] = guard.journal.entries(status="dry_run")
    assert entry.plan and "find" in entry.plan[0]["command"]
    assert fleet_digest(scratch_fleet) == before


def restart_guard(
    fleet: SandboxFleet, command: list[str], repairs: dict[str, Any] | None = None
) -> Guard:
    """A guard whose restart_bup_server runs ``command`` and waits 2 s for bup_server, which the
    command never starts: its one step succeeds, then the repair fails."""
    text = re.sub(
        r"^command = \[.*\]$",
        lambda _: f"command = {json.dumps(command)}\nwait_seconds = 2",
        fleet.config_path.read_text(),
        count=1,
        flags=re.MULTILINE,
    )
    path = fleet.config_path.with_name("config-test.toml")
    path.write_text(text)
    config = load_config(path, settings_models())
    state = open_state(config)
    inventory = load_inventory(inventory_source(config), state)
    return Guard(config, state, inventory, repairs=repairs)


def test_a_failed_repair_journals_the_output_of_the_steps_that_ran_before_the_error(
    scratch_fleet: SandboxFleet,
) -> None:
    scratch_fleet.hosts["s1"].stop_bup_server()
    guard = restart_guard(
        scratch_fleet,
        [
            "sh",
            "-c",
            "echo stopping bup_server on {name}; echo unit not found, nothing started >&2",
        ],
    )
    decision = guard.submit(RepairRequest("restart_bup_server", scratch_fleet.server_id("s1")))
    assert decision.status == "failed", decision.message
    output = guard.journal.get(decision.entry_id).output or ""  # type: ignore[union-attr]
    step = output.index("[s1] $ sh -c")
    assert "# rc=0" in output[step:]
    assert output.index("stopping bup_server on s1") > step
    assert "unit not found, nothing started" in output, "stderr is kept too"
    assert output.rstrip().splitlines()[-1].startswith("error: bup_server on s1 did not come up")


def test_each_steps_output_in_a_failed_row_is_bounded_to_its_last_characters(
    scratch_fleet: SandboxFleet,
) -> None:
    scratch_fleet.hosts["s1"].stop_bup_server()
    flood = "yes x | head -c 200000; echo END-OF-STEP"
    guard = restart_guard(scratch_fleet, ["sh", "-c", flood])
    decision = guard.submit(RepairRequest("restart_bup_server", scratch_fleet.server_id("s1")))
    assert decision.status == "failed", decision.message
    output = guard.journal.get(decision.entry_id).output or ""  # type: ignore[union-attr]
    assert "END-OF-STEP" in output, "the end of a step's output is what explains it"
    assert "earlier characters left out" in output
    assert len(output) < 6000


class RestartThatCrashes(RestartBupServer):
    """restart_bup_server with a bug after its first step (not a WatchdogError)."""

    def execute(
        self,
        req: RepairRequest,
        plan: list[Step],
        ctx: RepairContext,
        settings: RestartBupServerSettings,
    ) -> Outcome:
        Repair.execute(self, req, plan, ctx, settings)
        raise KeyError("port")


def test_a_repair_that_crashes_is_journaled_as_failed_with_its_steps_not_left_running(
    scratch_fleet: SandboxFleet,
) -> None:
    scratch_fleet.hosts["s1"].stop_bup_server()
    guard = restart_guard(
        scratch_fleet,
        ["echo", "restart", "requested"],
        repairs={"restart_bup_server": RestartThatCrashes()},
    )
    req = RepairRequest("restart_bup_server", scratch_fleet.server_id("s1"), fingerprint="f00d")
    decision = guard.submit(req)
    assert decision.status == "failed"
    entry = guard.journal.get(decision.entry_id)
    assert entry is not None and entry.status == "failed" and entry.finished_at is not None
    assert "restart requested" in (entry.output or "")
    assert "unexpected error in restart_bup_server: KeyError: 'port'" in (entry.output or "")
    assert guard.journal.active_fingerprint("f00d") is None, "the alert is not blocked"
    assert guard.leases.holder(req.target) is None


def test_listeners_hear_of_a_repair_that_ran_whatever_its_outcome_and_not_of_a_refusal(
    scratch_fleet: SandboxFleet,
) -> None:
    scratch_fleet.hosts["s1"].stop_bup_server()
    guard = restart_guard(scratch_fleet, ["true"])
    heard: list[RepairRequest] = []
    guard.on_executed = heard.append
    ran = RepairRequest("restart_bup_server", scratch_fleet.server_id("s1"))
    assert guard.submit(ran).status == "failed"  # ran: 'true' starts nothing
    refused = RepairRequest("restart_bup_server", scratch_fleet.server_id("s2"))
    assert guard.submit(refused).status == "refused"  # s2's bup_server is up: nothing to do
    assert heard == [ran]
