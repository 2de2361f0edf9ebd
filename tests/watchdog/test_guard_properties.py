"""The guard's promises as properties: random interleavings of requests, approvals, denials,
outcomes, crashes and restarts, breaker trips, maintenance windows and lease expiry, with the
invariants checked after every step (issue 17, item 6).

The guard, journal, state (a real SQLite file) and leases (the local backend, renewing) are the
real ones; time is a clock the state machine moves. The repairs are FAKES registered only here:
each stands in for a repair's ``execute()`` whose outcome (success, a failing step, a failed
verification, a conflict, a bug, a hang) the state machine chooses, with preconditions it
controls likewise. Real hosts are not what this test is about (the guard's promises are); the
repairs themselves are tested on the sandbox fleet elsewhere.

A watchdog crash is a process that dies: its stand-in process (whose pid is in its lease holder
name) is killed, the Guard is dropped with repairs still hung in ``execute`` (they never return
to it), and a new Guard on the same state file runs the daemon's start-up path (running rows
marked interrupted, dead holders' leases released).
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bup_watchdog.config import Config
from bup_watchdog.config_load import parse_config
from bup_watchdog.guard import WAIT_AND_APPROVE_AGAIN, Decision, Guard
from bup_watchdog.journal import ALERT_REQUESTER, DENIED, PENDING, REFUSED, RUNNING, Entry
from bup_watchdog.leases import LocalLeases
from bup_watchdog.model import (
    Finding,
    GatherFailure,
    HostFacts,
    Inventory,
    Server,
    Severity,
)
from bup_watchdog.repairs.base import (
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    RepairSettings,
    Step,
)
from bup_watchdog.state import State

#: The fake repairs, one per mode.
MODES = {
    "fake_off": "off",
    "fake_dry_run": "dry-run",
    "fake_approve": "approve",
    "fake_auto": "auto",
}
HOSTS = [f"0000000{i}-0000-4000-8000-000000000000" for i in range(10)]
TARGETS = HOSTS[:3]  # repairs aim at three of the ten hosts: they contend for leases and limits
MAX_PER_HOUR = 2  # per fake repair
MAX_PER_HOST = 3
MAX_FAILURES = 2  # low, so that the guard giving up is reached within an example
TTL = 600.0
BREAKER = 0.3  # 3 of 10 unreachable is not more than 30 %; 4 is
MONDAY = datetime(2030, 1, 7, tzinfo=UTC).timestamp()  # 00:00 UTC
START = MONDAY + 6 * 3600  # outside the maintenance windows
#: Maintenance windows every day, UTC: 02:00-03:00, and 23:30-00:30 across midnight.
WINDOWS = [("02:00", "03:00"), ("23:30", "00:30")]


def in_maintenance(when: float) -> bool:
    """The model's own reading of WINDOWS (not the guard's)."""
    t = datetime.fromtimestamp(when, UTC)
    minute = t.hour * 60 + t.minute
    return 120 <= minute < 180 or minute >= 23 * 60 + 30 or minute < 30


OUTCOMES = ["succeeded", "step_fails", "verify_fails", "conflict", "bug"]
SOURCES = ["schedule", "cli", "cli_execute", "api", "alertmanager"]
CODE = re.compile(r"^([a-z_]+): \S")
STEPS = 30
OTHER = "other-watchdog.example:1"  # a lease holder on another host: never released as dead
EXAMPLES = 200


class FakeClock:
    """The time the guard and its leases see; the state machine moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Start:
    """One call of a fake execute(): what ran, when, and what the model knew at that moment."""

    repair: str
    target: str
    at: float
    incarnation: int
    via: str | None
    dry_run: bool
    breaker_open: bool
    foreign_lease: bool


@dataclass
class Gate:
    """A hung execute(): it waits for the state machine to choose its outcome."""

    entered: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    outcome: str = "succeeded"


class World:
    """What the fake repairs read and record, shared with the state machine."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.local = threading.local()
        self.blocked: set[str] = set()  # targets whose preconditions refuse
        self.running: dict[tuple[int, str], int] = {}  # (incarnation, target) -> executions
        self.incarnation = 0
        self.starts: list[Start] = []
        self.overlaps: list[str] = []
        self.breaker_open = False
        self.foreign: dict[str, float] = {}  # target -> expiry of another watchdog's lease


class FakeRepair(Repair[RepairSettings]):
    """A FAKE repair: a stand-in for a repair's execute() whose outcome the test chooses."""

    Settings = RepairSettings
    needs_project = False
    check: ClassVar[str] = "fake_check"
    world: World

    def __init__(self, world: World) -> None:
        self.world = world

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: RepairSettings
    ) -> list[str]:
        if req.target in self.world.blocked:
            return ["fake_blocked: the test says this target is not ready"]
        return []

    def plan(self, req: RepairRequest, ctx: RepairContext, settings: RepairSettings) -> list[Step]:
        return [Step(req.server_id, ("true",), "a fake step (never run)")]

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: RepairSettings
    ) -> Outcome:
        w = self.world
        outcome: str = getattr(w.local, "outcome", "succeeded")
        gate: Gate | None = getattr(w.local, "gate", None)
        with w.lock:
            incarnation = w.incarnation
            key = (incarnation, req.target)
            w.running[key] = w.running.get(key, 0) + 1
            if w.running[key] > 1:
                w.overlaps.append(f"{req.target} ran twice at once")
            w.starts.append(
                Start(
                    self.name,
                    req.target,
                    w.clock(),
                    incarnation,
                    getattr(w.local, "via", None),
                    bool(req.params.get("dry_run")),
                    w.breaker_open,
                    w.foreign.get(req.target, 0.0) >= w.clock(),
                )
            )
        try:
            if gate is not None:
                gate.entered.set()
                gate.wake.wait()
                outcome = gate.outcome
            w.local.verify = outcome != "verify_fails"
            if outcome == "step_fails":
                raise RepairError("fake step failed with status 1: no space left (fake)")
            if outcome == "bug":
                raise KeyError("fake bug")
            if outcome == "conflict":
                return Outcome("conflict", ["fake: newer data on the target"])
            return Outcome("succeeded", ["fake: done"])
        finally:
            with w.lock:
                w.running[key] -= 1

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: RepairSettings
    ) -> tuple[bool, str]:
        if getattr(self.world.local, "verify", True):
            return True, "fake_check passes (fake)"
        return False, "fake_check/fake: still broken (fake)"


class FakeOff(FakeRepair):
    name = "fake_off"


class FakeDryRun(FakeRepair):
    name = "fake_dry_run"


class FakeApprove(FakeRepair):
    name = "fake_approve"


class FakeAuto(FakeRepair):
    name = "fake_auto"


FAKES: list[type[FakeRepair]] = [FakeOff, FakeDryRun, FakeApprove, FakeAuto]


def make_config(directory: Path, maintenance: list[dict[str, Any]] | None = None) -> Config:
    data: dict[str, Any] = {
        "inventory": {"source": "file", "file": "inventory.toml"},
        "state": {"directory": str(directory)},
        "alerts": {"rules": []},  # the default rules name the real repairs
        "guard": {
            "breaker_unreachable_fraction": BREAKER,
            "max_per_hour_per_host": MAX_PER_HOST,
            "max_failures": MAX_FAILURES,
            "failure_window_hours": 24,
            "lease_seconds": TTL,
            "maintenance": [{"start": start, "end": end} for start, end in WINDOWS]
            if maintenance is None
            else maintenance,
        },
        "repairs": {
            name: {"mode": mode, "max_per_hour": MAX_PER_HOUR} for name, mode in MODES.items()
        },
    }
    return parse_config(
        data, {}, base=directory, repair_models={name: RepairSettings for name in MODES}
    )


class DecisionLog(logging.Handler):
    """Every decision line the guard logs: (repair id, decision)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "decision") and hasattr(record, "repair_id"):
            self.lines.append((int(record.repair_id), str(record.decision)))


@dataclass
class Hung:
    """A repair hung in execute(), on a thread of the watchdog that runs it."""

    gate: Gate
    thread: threading.Thread
    target: str
    result: list[Decision] = field(default_factory=list)
    #: The alert it answers, when it runs as the approval of an alert's pending request.
    fingerprint: str | None = None


class GuardMachine(RuleBasedStateMachine):
    """One watchdog (restarted at will) on one state file, driven at random."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="guard-props-"))
        self.clock = FakeClock()
        self.world = World(self.clock)
        self.config = make_config(self.tmp)
        self.inventory = Inventory(
            servers={
                sid: Server(sid, f"10.0.0.{i}", 4000, name=f"s{i}") for i, sid in enumerate(HOSTS)
            },
            projects={},
        )
        self.repairs = {cls.name: cls(self.world) for cls in FAKES}
        self.log = DecisionLog()
        guard_log = logging.getLogger("bup_watchdog.guard")
        self.log_was = (guard_log.level, guard_log.propagate)
        guard_log.addHandler(self.log)
        guard_log.setLevel(logging.INFO)  # every decision line, and none of them printed
        guard_log.propagate = False
        self.states: list[State] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hung: dict[str, Hung] = {}  # target -> a repair hung in the live watchdog
        self.zombies: list[Hung] = []  # repairs hung in watchdogs that died
        self.decisions: dict[int, Decision] = {}
        self.denied: set[int] = set()
        self.rows_made = 0  # journal rows the calls made: one per submit or approve
        self.fingerprints = 0
        self.limits_checked = 0
        self.alerts: list[RepairRequest] = []  # alerts sent so far
        self.start_watchdog()

    # -- the watchdog process ---------------------------------------------------------------

    def start_watchdog(self) -> None:
        """A new watchdog process on the same state: the daemon's start-up path."""
        process = subprocess.Popen(["sleep", "3600"])  # stands in for the watchdog's process
        self.processes.append(process)
        state = State(self.tmp / "state.db")
        self.states.append(state)
        self.guard = Guard(
            self.config,
            state,
            self.inventory,
            holder=f"{socket.gethostname()}:{process.pid}",
            repairs=self.repairs,
            clock=self.clock,
        )
        self.guard.journal.mark_interrupted()
        self.guard.leases.release_dead()

    def call(self, via: str, outcome: str, fn: Callable[[], Decision]) -> Decision | None:
        """Run a guard call as a worker of the watchdog would; a 'hang' outcome leaves it hung
        in execute() on its own thread (None then)."""
        hang = outcome == "hang"
        gate = Gate() if hang else None
        box: list[Decision] = []

        def work() -> None:
            self.world.local.via = via
            self.world.local.outcome = outcome
            self.world.local.gate = gate
            try:
                box.append(fn())
            finally:
                self.world.local.__dict__.clear()

        self.rows_made += 1
        if gate is None:
            work()
            return self.decided(box[0])
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while not gate.entered.is_set() and thread.is_alive():
            thread.join(0.002)
        if not gate.entered.is_set():
            thread.join()
            return self.decided(box[0])
        target = self.world.starts[-1].target
        self.hung[target] = Hung(gate, thread, target, box)
        return None

    def decided(self, d: Decision) -> Decision:
        """Check one decision as it is returned: its own row, its status, a reason."""
        assert d.entry_id not in self.decisions, f"row #{d.entry_id} reused by two decisions"
        self.decisions[d.entry_id] = d
        entry = self.guard.journal.get(d.entry_id)
        assert entry is not None, f"decision {d} has no journal row"
        assert entry.status == d.status, (entry.status, d)
        assert d.message.strip(), f"decision {d} says no reason"
        if d.status == REFUSED:
            m = CODE.match(entry.refusal or "")
            assert m, f"refusal without a code and reason: {entry.refusal!r}"
            self.refusal_is_justified(entry, m.group(1))
        elif d.ran:
            assert entry.started_at is not None and entry.finished_at is not None, entry
            said = entry.verification if d.status == "succeeded" else entry.output
            assert (said or "").strip(), f"repair #{entry.id} ({d.status}) journaled no reason"
        return d

    def failures_before(self, repair: str, target: str, entry_id: int, at: float) -> int:
        """Failed (or interrupted) runs of a repair on a target in the failure window before a
        row, back to the last success: the model's count for the guard's max_failures."""
        rows = self.guard.journal.state.query(
            "SELECT status FROM journal WHERE repair=? AND target=? AND id < ? AND started_at >= ? "
            "ORDER BY id DESC",
            (repair, target, entry_id, at - 24 * 3600),
        )
        n = 0
        for (status,) in rows:
            if status == "succeeded":
                break
            n += status in ("failed", "interrupted")
        return n

    def refusal_is_justified(self, entry: Entry, code: str) -> None:
        """A refusal's code matches what the model knows (no repair refused for nothing)."""
        mode = MODES[entry.repair]
        if code == "mode_off":
            assert mode == "off"
        elif code == "mode_dry_run":
            assert mode == "dry-run"
        elif code == "circuit_breaker":
            assert self.world.breaker_open
        elif code == "maintenance":
            assert self.in_window()
        elif code == "precondition":
            assert entry.target in self.world.blocked
        elif code == "duplicate":  # its alert's repair waits or runs, or its target's waits
            fingerprint = entry.fingerprint or ""
            assert (
                any(e.fingerprint == fingerprint for e in self.pending())
                or any(
                    e.repair == entry.repair and e.target == entry.target for e in self.pending()
                )
                or any(h.fingerprint == fingerprint for h in self.hung.values())
                or self.guard.journal.active_fingerprint(fingerprint)
            ), entry.refusal
        elif code == "gave_up":
            failures = self.failures_before(entry.repair, entry.target, entry.id, self.clock())
            assert failures >= MAX_FAILURES, (failures, entry.refusal)
        elif code == "lease":
            assert self.world.foreign.get(entry.target, 0.0) >= self.clock() or (
                entry.target in self.hung
            ), f"refused for a lease nobody holds: {entry.refusal}"

    def in_window(self) -> bool:
        return in_maintenance(self.clock())

    # -- requests from every source ----------------------------------------------------------

    def request(self, repair: str, target: str, **kw: Any) -> RepairRequest:
        return RepairRequest(repair, target, None, reason="property test", **kw)

    @rule(
        source=st.sampled_from(SOURCES),
        repair=st.sampled_from(list(MODES)),
        host=st.sampled_from(TARGETS),
        outcome=st.sampled_from([*OUTCOMES, "hang"]),
        dry_run=st.booleans(),
    )
    def someone_asks_for_a_repair(
        self, source: str, repair: str, host: str, outcome: str, dry_run: bool
    ) -> None:
        if host in self.hung and outcome == "hang":
            outcome = "succeeded"  # one hung repair per host is enough to hold its lease
        g = self.guard
        if source == "schedule":
            finding = Finding("fake_check", host, Severity.WARNING, "broken (fake)", code="x")
            for req in g.scheduled_requests([finding], cooldown=0):
                assert req.requested_by == "schedule"
                self.call("queue", outcome, functools.partial(g.submit, req))
                outcome = "succeeded" if outcome == "hang" else outcome
        elif source in ("cli", "cli_execute"):
            req = self.request(repair, host, requested_by="cli:tester")
            if source == "cli":
                req = self.request(
                    repair, host, requested_by="cli:tester", params={"dry_run": True}
                )
            execute = source == "cli_execute"
            self.call(
                "execute" if execute else "queue", outcome, lambda: g.submit(req, execute=execute)
            )
        elif source == "api":
            req = self.request(repair, host, requested_by="api", params={"dry_run": dry_run})
            self.call("queue", outcome, lambda: g.submit(req))
        else:
            self.fingerprints += 1
            fingerprint = f"alert-{repair}-{host[:8]}-{self.fingerprints % 2}"
            req = self.request(
                repair, host, requested_by=f"{ALERT_REQUESTER}ops", fingerprint=fingerprint
            )
            self.alerts.append(req)
            if g.alert_cooldown(req) is None:
                self.call("queue", outcome, lambda: g.submit(req))

    @precondition(lambda self: bool(self.alerts))
    @rule(pick=st.integers(0, 999))
    def an_alert_fires_again(self, pick: int) -> None:
        req = self.alerts[pick % len(self.alerts)]  # Alertmanager's repeat_interval
        if self.guard.alert_cooldown(req) is None:
            self.call("queue", "succeeded", lambda: self.guard.submit(req))

    # Requests are most of what a watchdog sees: two more rules ask (for what may run), so
    # requests are drawn more often than the other steps.
    @rule(
        source=st.sampled_from(SOURCES),
        repair=st.sampled_from(["fake_approve", "fake_auto"]),
        host=st.sampled_from(TARGETS),
        outcome=st.sampled_from([*OUTCOMES, "hang"]),
    )
    def someone_asks_again(self, source: str, repair: str, host: str, outcome: str) -> None:
        self.someone_asks_for_a_repair(source, repair, host, outcome, False)

    @rule(
        source=st.sampled_from(["cli_execute", "schedule", "alertmanager"]),
        repair=st.sampled_from(["fake_approve", "fake_auto"]),
        host=st.sampled_from(TARGETS),
        outcome=st.sampled_from(OUTCOMES),
    )
    def someone_asks_once_more(self, source: str, repair: str, host: str, outcome: str) -> None:
        self.someone_asks_for_a_repair(source, repair, host, outcome, False)

    @rule(
        source=st.sampled_from(["cli_execute", "api"]),
        repair=st.sampled_from(["fake_approve", "fake_auto"]),
        host=st.sampled_from(TARGETS),
    )
    def someone_asks_for_a_repair_that_hangs(self, source: str, repair: str, host: str) -> None:
        self.someone_asks_for_a_repair(source, repair, host, "hang", False)

    def pending(self) -> list[Entry]:
        return self.guard.journal.entries(status=PENDING, limit=1000)

    @precondition(lambda self: bool(self.pending()))
    @rule(pick=st.integers(0, 999), outcome=st.sampled_from([*OUTCOMES, "hang"]))
    def an_operator_approves(self, pick: int, outcome: str) -> None:
        rows = self.pending()
        entry = rows[pick % len(rows)]
        if entry.target in self.hung and outcome == "hang":
            outcome = "succeeded"
        ran = self.call("approve", outcome, lambda: self.guard.approve(entry.id, "cli:operator"))
        if ran is None:
            self.hung[entry.target].fingerprint = entry.fingerprint
        after = self.guard.journal.get(entry.id)
        assert after is not None
        code = ran.message.split(":", 1)[0] if ran is not None and ran.status == "refused" else ""
        if code in WAIT_AND_APPROVE_AGAIN:  # refused for now: the request still waits
            assert after.status == PENDING and "refused for now" in (after.refusal or "")
            return
        assert after.status == DENIED
        assert (after.refusal or "").startswith("approved by cli:operator; ran as repair #") or (
            entry.target in self.hung  # still running: the note is written when it returns
        )

    @precondition(lambda self: bool(self.pending()))
    @rule(pick=st.integers(0, 999))
    def an_operator_denies(self, pick: int) -> None:
        rows = self.pending()
        entry = rows[pick % len(rows)]
        d = self.guard.deny(entry.id, "cli:operator", "not now")
        assert d.status == DENIED and d.entry_id == entry.id
        self.denied.add(entry.id)
        after = self.guard.journal.get(entry.id)
        assert after is not None and after.refusal == "denied: not now"

    # -- outcomes, crashes, the world --------------------------------------------------------

    @precondition(lambda self: bool(self.hung))
    @rule(pick=st.integers(0, 999), outcome=st.sampled_from(OUTCOMES))
    def a_hung_repair_ends(self, pick: int, outcome: str) -> None:
        target = sorted(self.hung)[pick % len(self.hung)]
        hung = self.hung.pop(target)
        hung.gate.outcome = outcome
        hung.gate.wake.set()
        hung.thread.join(10)
        assert not hung.thread.is_alive(), "a repair did not return after its execute() did"
        self.decided(hung.result[0])

    @rule(later=st.sampled_from([0.0, 30.0, 700.0, 3 * 3600.0]))
    def the_watchdog_crashes_and_restarts(self, later: float) -> None:
        self.processes[-1].kill()
        self.processes[-1].wait()
        self.zombies.extend(self.hung.values())  # they never return to a live watchdog
        self.hung.clear()
        with self.world.lock:
            self.world.incarnation += 1
        self.advance(later)
        running = self.guard.journal.entries(status=RUNNING, limit=1000)
        self.start_watchdog()
        for e in running:
            after = self.guard.journal.get(e.id)
            assert after is not None and after.status == "interrupted"
        held = [t for t, h, _ in self.guard.journal.leases() if h != OTHER]
        assert not held, f"leases of the dead watchdog survived its restart: {held}"

    @precondition(lambda self: bool(self.hung))
    @rule(later=st.sampled_from([0.0, 700.0]))
    def the_watchdog_crashes_mid_repair(self, later: float) -> None:
        self.the_watchdog_crashes_and_restarts(later)

    @rule(unreachable=st.sampled_from([0, 0, 1, 3, 4, 10]))  # 3 of 10 is not > 30 %
    def a_sweep_finishes(self, unreachable: int) -> None:
        now = self.clock()
        facts = {
            sid: (
                HostFacts(
                    sid,
                    now,
                    failure=GatherFailure.UNREACHABLE,
                    failure_message="connection timed out (fake sweep)",
                )
                if i < unreachable
                else HostFacts(sid, now, complete=True)
            )
            for i, sid in enumerate(HOSTS)
        }
        self.guard.state.record_sweep(
            started=now,
            seconds=1.0,
            facts=facts,
            findings=[],
            checks_run={},
            evaluated_servers={},
            ssh_sessions=0,
        )
        self.world.breaker_open = unreachable / len(HOSTS) > BREAKER
        assert self.guard.breaker()[0] == self.world.breaker_open

    @rule(host=st.sampled_from(TARGETS), blocked=st.booleans())
    def a_target_becomes_ready_or_not(self, host: str, blocked: bool) -> None:
        (self.world.blocked.add if blocked else self.world.blocked.discard)(host)

    @rule(host=st.sampled_from(TARGETS))
    def another_watchdog_takes_a_lease(self, host: str) -> None:
        other = LocalLeases(self.guard.journal, self.clock)  # another watchdog's backend
        if other.acquire(host, OTHER, TTL):
            self.world.foreign[host] = self.clock() + TTL

    @rule(seconds=st.sampled_from([1.0, 59.0, 199.0, 601.0, 1800.0, 3600.0, 7 * 3600.0]))
    def time_passes(self, seconds: float) -> None:
        self.advance(seconds)

    @rule(minute=st.sampled_from([2 * 60 + 1, 23 * 60 + 45, 10]))
    def time_passes_into_a_maintenance_window(self, minute: int) -> None:
        into = (MONDAY + minute * 60 - self.clock()) % 86400.0
        self.advance(into)
        assert self.in_window()

    def advance(self, seconds: float) -> None:
        """Move the clock; each live hung repair's lease is renewed every third of its TTL on
        the way, as its keeper thread does (its timer runs on real time, so the test does it)."""
        while seconds > 0:
            step = min(seconds, TTL / 3)
            self.clock.now += step
            seconds -= step
            for target in self.hung:
                assert self.guard.leases.renew(target, self.guard.holder, TTL), (
                    f"the lease of the repair running on {target} was lost"
                )

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def count_the_steps(self) -> None:
        RUN.steps += 1  # also once before the first step

    @invariant()
    def at_most_one_repair_runs_per_target(self) -> None:
        assert not self.world.overlaps, self.world.overlaps
        running = self.guard.journal.entries(status=RUNNING, limit=1000)
        targets = [e.target for e in running]
        assert len(targets) == len(set(targets)), targets
        assert set(targets) == set(self.hung), (targets, sorted(self.hung))

    @invariant()
    def nothing_runs_in_off_dry_run_unapproved_approve_or_when_blocked(self) -> None:
        for s in self.world.starts:
            mode = MODES[s.repair]
            assert mode in ("approve", "auto"), f"{s.repair} ran in mode {mode}"
            assert not s.dry_run, f"a dry run of {s.repair} ran"
            if mode == "approve":
                assert s.via in ("approve", "execute"), f"{s.repair} ran unapproved ({s.via})"
            assert not s.breaker_open, "a repair ran with the circuit breaker open"
            assert not in_maintenance(s.at), "a repair ran inside a maintenance window"
            assert not s.foreign_lease, "a repair ran on a target another watchdog holds"

    @invariant()
    def every_decision_is_journaled_once_with_its_reason(self) -> None:
        rows = self.guard.journal.entries(limit=100_000)
        assert len(rows) == self.rows_made, (len(rows), self.rows_made)
        for e in rows:
            if e.status == REFUSED:
                assert CODE.match(e.refusal or ""), e
        logged: dict[tuple[int, str], int] = {}
        for line in self.log.lines:
            logged[line] = logged.get(line, 0) + 1
        for d in self.decisions.values():
            assert logged.get((d.entry_id, d.status)) == 1, (d, logged.get((d.entry_id, d.status)))
        for entry_id in self.denied:
            assert logged.get((entry_id, DENIED)) == 1
        assert len(self.log.lines) == len(self.decisions) + len(self.denied)

    @invariant()
    def one_open_repair_per_alert_fingerprint(self) -> None:
        open_rows = [
            *self.pending(),
            *self.guard.journal.entries(status=RUNNING, limit=1000),
        ]
        answered = [e.fingerprint for e in open_rows if e.fingerprint]
        said = {e.target for e in open_rows if e.status == RUNNING and e.fingerprint}
        answered += [
            h.fingerprint for h in self.hung.values() if h.target not in said if h.fingerprint
        ]
        assert len(answered) == len(set(answered)), f"one alert, two open repairs: {answered}"

    @invariant()
    def no_lease_outlives_its_repair_by_more_than_its_ttl(self) -> None:
        now = self.clock()
        for target, holder, expires in self.guard.journal.leases():
            if expires < now:
                continue  # expired: no one holds it
            if holder == OTHER:
                assert expires <= self.world.foreign[target], (target, expires)
                continue
            assert holder == self.guard.holder and target in self.hung, (
                f"a lease on {target} by {holder} outlives its repair"
            )
            assert expires <= now + TTL

    @invariant()
    def rate_limits_and_the_stop_after_failures_are_never_exceeded(self) -> None:
        rows = self.guard.journal.state.query(
            "SELECT repair, server_id, started_at, id, target FROM journal "
            "WHERE started_at IS NOT NULL ORDER BY id"
        )
        assert len(rows) == len(self.world.starts), "every execute() has its journal row"
        for repair, server, at, entry_id, target in rows[self.limits_checked :]:  # each once
            hour = [r for r in rows if at - 3600 <= r[2] <= at]
            assert sum(r[0] == repair for r in hour) <= MAX_PER_HOUR, (repair, at)
            assert sum(r[1] == server for r in hour) <= MAX_PER_HOST, (server, at)
            failures = self.failures_before(repair, target, entry_id, at)
            assert failures < MAX_FAILURES, f"#{entry_id} ran after {failures} failures"
        self.limits_checked = len(rows)

    def teardown(self) -> None:
        for hung in [*self.hung.values(), *self.zombies]:
            hung.gate.wake.set()
            hung.thread.join(10)
        for p in self.processes:
            p.kill()
            p.wait()
        for state in self.states:
            state.close()
        guard_log = logging.getLogger("bup_watchdog.guard")
        guard_log.removeHandler(self.log)
        guard_log.setLevel(self.log_was[0])
        guard_log.propagate = self.log_was[1]
        shutil.rmtree(self.tmp, ignore_errors=True)
        RUN.examples += 1
        RUN.steps -= 1
        RUN.executed += len(self.world.starts)


@dataclass
class Run:
    """How much the state machine ran (printed: a property test that ran nothing proves nothing)."""

    examples: int = 0
    steps: int = 0
    executed: int = 0


RUN = Run()


def test_the_guard_keeps_its_promises_under_random_interleavings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = time.monotonic()
    before = Run(RUN.examples, RUN.steps, RUN.executed)
    run_state_machine_as_test(
        GuardMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,  # nothing written into the checkout; a failure prints its blob
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    examples, steps = RUN.examples - before.examples, RUN.steps - before.steps
    with capsys.disabled():  # the figures show in CI's log, not only when the test fails
        print(
            f"\nguard properties: {examples} examples, {steps} steps, "
            f"{RUN.executed - before.executed} fake repairs executed, "
            f"{time.monotonic() - t0:.1f} s"
        )
    assert examples >= EXAMPLES


def test_a_maintenance_window_across_midnight_holds_repairs_on_both_sides_of_midnight(
    tmp_path: Path,
) -> None:
    """Regression: a window like 23:00-01:00 was accepted by the config and never applied."""
    config = make_config(tmp_path, [{"days": ["sat"], "start": "23:00", "end": "01:00"}])
    clock = FakeClock()
    world = World(clock)
    guard = Guard(
        config,
        State(tmp_path / "state.db"),
        Inventory(servers={HOSTS[0]: Server(HOSTS[0], "10.0.0.1", 4000)}, projects={}),
        repairs={"fake_auto": FakeAuto(world)},
        clock=clock,
    )

    def at(when: str) -> str:
        clock.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()
        return guard.submit(RepairRequest("fake_auto", HOSTS[0])).status

    assert at("2030-01-12T23:30") == REFUSED  # Saturday night
    assert at("2030-01-13T00:30") == REFUSED  # the small hours of Sunday: still the window
    assert at("2030-01-12T00:30") == "succeeded"  # Friday night is not in it
    assert at("2030-01-13T01:00") == "succeeded"  # the window has ended
    refusals = guard.journal.entries(status=REFUSED)
    assert [e.refusal for e in refusals] == [
        "maintenance: inside the maintenance window 23:00-01:00 UTC"
    ] * 2


class AlertAgainMidRepair(FakeApprove):
    """The FAKE approve-mode repair; while it runs, its alert fires again (Alertmanager
    re-sends a firing alert every repeat_interval)."""

    guard: Guard
    again: list[Decision]

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: RepairSettings
    ) -> Outcome:
        self.again = [self.guard.submit(alert_request())]
        return super().execute(req, plan, ctx, settings)


def alert_request() -> RepairRequest:
    return RepairRequest(
        "fake_approve", HOSTS[0], requested_by=f"{ALERT_REQUESTER}ops", fingerprint="f1"
    )


def test_an_alert_that_fires_again_while_its_approved_repair_runs_is_a_duplicate(
    tmp_path: Path,
) -> None:
    """Regression: the approved run's row had no fingerprint, so the alert asked again was
    queued as a second pending approval for a repair already running."""
    clock = FakeClock()
    repair = AlertAgainMidRepair(World(clock))
    guard = Guard(
        make_config(tmp_path, []),
        State(tmp_path / "state.db"),
        Inventory(servers={HOSTS[0]: Server(HOSTS[0], "10.0.0.1", 4000)}, projects={}),
        repairs={"fake_approve": repair},
        clock=clock,
    )
    repair.guard = guard
    pending = guard.submit(alert_request())
    assert pending.status == PENDING
    assert guard.approve(pending.entry_id, "cli:operator").status == "succeeded"
    [again] = repair.again
    assert again.status == REFUSED
    assert again.message.startswith("duplicate: alert f1 already has repair #2 (running)")
    assert guard.journal.entries(status=PENDING) == []
