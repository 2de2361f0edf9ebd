"""The guard: every repair request passes here, whoever asked, and every decision is journaled.

In order: the request is validated (known repair, server in the inventory, a version-4 project id
that lives on that server); the repair's mode (off, dry-run, approve, auto); the circuit breaker
(too much of the fleet unreachable: the fault is likely our own view); maintenance windows; a stop
after repeated failures on the target; rate limits per repair and per host; one repair per target
(a lease); the repair's own preconditions, checked against facts taken at that moment. Only then is
the intent journaled and ``execute`` called; ``verify`` decides success.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bup_watchdog.config import AlertsConfig, Config, MaintenanceWindow
from bup_watchdog.errors import WatchdogError
from bup_watchdog.journal import (
    ALERT_REQUESTER,
    CONFLICT,
    DENIED,
    DRY_RUN,
    FAILED,
    PENDING,
    REFUSED,
    RUNNING,
    SUCCEEDED,
    Entry,
    Journal,
    refusal_code,
)
from bup_watchdog.leases import LeaseBackend, lease_backend
from bup_watchdog.model import Finding, Inventory, Severity, is_v4_uuid
from bup_watchdog.repair_context import Context
from bup_watchdog.repair_request import RepairRequest as RepairRequest  # faces use it from here
from bup_watchdog.repairs import registry as repair_registry
from bup_watchdog.repairs.base import Repair, RepairSettings, Step
from bup_watchdog.state import State
from bup_watchdog.transport.base import CommandResult

log = logging.getLogger(__name__)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: Refusals whose cause clears by itself within minutes: an alert may ask again after
#: ``[alerts] transient_cooldown_seconds`` instead of the full cooldown.
TRANSIENT_REFUSALS = frozenset({"lease", "circuit_breaker", "duplicate"})
#: Refusals of an approved request that leave it pending (the approval is not used up): they
#: pass by themselves. A batch's rows are the batch's to retry.
WAIT_AND_APPROVE_AGAIN = frozenset({"lease", "circuit_breaker", "maintenance", "rate_limited"})

#: A failed row keeps the output of every step run before the failure: the last this many
#: characters of each step, and at most this many characters in all (the oldest steps go first).
STEP_OUTPUT_CHARS = 4000
FAILED_OUTPUT_CHARS = 64_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guard did with a request: the journal row, its status, and why."""

    entry_id: int
    status: str
    message: str
    plan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.status in (SUCCEEDED, FAILED, CONFLICT)


def _clean(value: object) -> str:
    """An untrusted value, safe to journal and print: repr, truncated."""
    text = value if isinstance(value, str) else repr(value)
    return text if text.isprintable() and len(text) <= 100 else repr(text)[:100]


def log_decision(
    level: int, entry: int, req: RepairRequest, decision: str, reason: str, *, exc: bool = False
) -> None:
    """The one log line of a repair decision: repair, target, decision, reason (and as ``extra=``
    fields, for ``--log-format json``)."""
    repair, target = _clean(req.repair), _clean(req.target)
    log.log(
        level,
        "repair #%d %s on %s: %s — %s",
        entry,
        repair,
        target,
        decision,
        reason,
        exc_info=exc,
        extra={
            "repair_id": entry,
            "repair": repair,
            "target": target,
            "server": _clean(req.server_id),
            "project": _clean(req.project_id) if req.project_id else None,
            "decision": decision,
            "reason": reason,
            "requested_by": _clean(req.requested_by),
        },
    )


def breaker(state: State, limit: float) -> tuple[bool, str]:
    """The circuit breaker from the last sweep's hosts: (open?, why)."""
    rows = state.query("SELECT COUNT(*), SUM(probed = 0) FROM hosts")
    total, down = int(rows[0][0] or 0), int(rows[0][1] or 0)
    if total and down / total > limit:
        return True, (
            f"{down} of {total} hosts were unreachable in the last sweep "
            f"({down / total:.0%} > {limit:.0%}); the fault is more likely the watchdog's own "
            "view (network, DNS) — all repairs are suspended until it clears"
        )
    return False, ""


def in_window(windows: list[MaintenanceWindow], now: datetime) -> MaintenanceWindow | None:
    """The maintenance window ``now`` (UTC) falls in, if any. A window whose end is before its
    start runs across midnight: from its start on one of its days to its end the next day."""
    day = _DAYS[now.weekday()]
    yesterday = _DAYS[now.weekday() - 1]
    hhmm = now.strftime("%H:%M")
    for w in windows:
        if w.start <= w.end:
            if day in w.days and w.start <= hhmm < w.end:
                return w
        elif (day in w.days and hhmm >= w.start) or (yesterday in w.days and hhmm < w.end):
            return w
    return None


def alert_cooldown(
    journal: Journal, req: RepairRequest, alerts: AlertsConfig, now: float
) -> str | None:
    """Why an alert's request is not submitted now, or None. An alert asks again for a repair on a
    target only ``cooldown_seconds`` after the last decision on an alert's request for it
    (``transient_cooldown_seconds`` after a refusal in TRANSIENT_REFUSALS)."""
    longest = max(alerts.cooldown_seconds, alerts.transient_cooldown_seconds)
    if longest <= 0:
        return None
    last = journal.last_alert_decision(req.repair, req.target, now - longest)
    if last is None:
        return None
    code = refusal_code(last.refusal) if last.status == REFUSED else ""
    transient = code in TRANSIENT_REFUSALS
    cooldown = alerts.transient_cooldown_seconds if transient else alerts.cooldown_seconds
    age = max(0.0, now - (last.finished_at or last.created_at))
    if age >= cooldown:
        return None
    what = f"{last.status} ({code})" if code else last.status
    return (
        f"cooldown: repair #{last.id} of this target was {what} {age:.0f} s ago; alerts ask "
        f"again after {cooldown:g} s{' (transient refusal)' if transient else ''}"
    )


#: Held while a repair's limits are checked again and its start journaled (see ``Guard._run``).
_STARTING = threading.Lock()


class _StepLog:
    """What each command run through the context printed while ``execute`` ran, bounded."""

    def __init__(self) -> None:
        self.records: list[str] = []

    def add(self, where: str, argv: Any, result: CommandResult | None, error: str = "") -> None:
        command = shlex.join(str(a) for a in argv)
        if len(command) > 500:
            command = command[:500] + " …"
        if result is None:
            self.records.append(f"[{where}] $ {command}  # did not complete: {error}")
            return
        head = f"[{where}] $ {command}  # rc={result.returncode}, {result.seconds:.1f} s"
        text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
        if len(text) > STEP_OUTPUT_CHARS:
            cut = len(text) - STEP_OUTPUT_CHARS
            text = f"[… {cut} earlier characters left out …]\n" + text[-STEP_OUTPUT_CHARS:]
        self.records.append(f"{head}\n{text}" if text else head)

    def text(self, error: str) -> str:
        """Every step's record, then the error; the oldest steps are left out past the bound."""
        tail = f"error: {error[-STEP_OUTPUT_CHARS:]}"
        kept: list[str] = []
        size = len(tail)
        for record in reversed(self.records):
            if size + len(record) + 1 > FAILED_OUTPUT_CHARS:
                break
            kept.append(record)
            size += len(record) + 1
        left_out = len(self.records) - len(kept)
        lines = [f"[… {left_out} earlier steps left out …]"] if left_out else []
        return "\n".join([*lines, *reversed(kept), tail])


class _RecordingContext(Context):
    """The repair context; while ``steps`` is set, every command's output is kept in it (a
    repair that fails mid-plan raises, and its own Outcome with the earlier output is lost)."""

    steps: _StepLog | None = None

    def run(self, step: Any) -> CommandResult:
        if self.steps is None:
            return super().run(step)
        server = self.inventory.servers.get(step.server_id)
        where = server.label if server is not None else str(step.server_id)
        try:
            result = super().run(step)
        except WatchdogError as exc:
            self.steps.add(where, step.argv, None, str(exc))
            raise
        self.steps.add(where, step.argv, result)
        return result


def requests_for(
    findings: list[Finding], repairs: Mapping[str, Repair[RepairSettings]], who: str
) -> list[RepairRequest]:
    """The repair each finding points at (a repair answers its check's codes), one per target."""
    out: dict[tuple[str, str], RepairRequest] = {}
    for f in findings:
        for repair in repairs.values():
            if repair.check != f.check or (repair.codes and f.code not in repair.codes):
                continue
            if repair.needs_project != (f.project_id is not None):
                continue
            req = RepairRequest(
                repair.name,
                f.server_id,
                f.project_id,
                requested_by=who,
                reason=f"{f.check}/{f.code}: {f.message}",
                fingerprint=f"finding:{repair.name}:{f.target}",
            )
            out.setdefault((repair.name, req.target), req)
    return list(out.values())


def _mode_bars(repair: str, mode: str, *, execute: bool) -> tuple[str, str] | None:
    """(code, why) when the repair's mode forbids running it: off, or dry-run asked to run."""
    if mode == "off":
        return "mode_off", f"{repair} is switched off in the config"
    if execute and mode == "dry-run":
        return "mode_dry_run", f"{repair} is in dry-run mode; it only plans"
    return None


class Guard:
    """Decides on and runs repair requests for one watchdog."""

    def __init__(
        self,
        config: Config,
        state: State,
        inventory: Inventory,
        *,
        holder: str | None = None,
        repairs: Mapping[str, Repair[RepairSettings]] | None = None,
        clock: Callable[[], float] = time.time,
        leases: LeaseBackend | None = None,
        on_executed: Callable[[RepairRequest], None] | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.journal = Journal(state)
        self.inventory = inventory
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.repairs = repair_registry() if repairs is None else repairs
        self.clock = clock
        #: Where leases live ([guard] leases): the state database, or Cassandra.
        self.leases = leases if leases is not None else lease_backend(config, self.journal, clock)
        #: Told after a repair ran (whatever its outcome): what it touched may have changed.
        self.on_executed = on_executed

    # -- public -------------------------------------------------------------------------------

    def submit(self, req: RepairRequest, *, execute: bool = False) -> Decision:
        """Decide on a request. ``execute``: an operator asks to run it now (counts as approval)."""
        invalid = self._invalid(req)
        if invalid:
            return self._refuse(req, "invalid", invalid, mode="?")
        repair = self.repairs[req.repair]
        settings = self.config.repair(req.repair)
        mode = settings.mode
        barred = _mode_bars(req.repair, mode, execute=execute)
        if barred:
            return self._refuse(req, *barred, mode)
        dry = bool(req.params.get("dry_run")) or mode == "dry-run"
        if req.fingerprint:
            active = self.journal.active_fingerprint(req.fingerprint)
            if active is not None:
                return self._refuse(
                    req,
                    "duplicate",
                    f"alert {req.fingerprint} already has repair #{active.id} ({active.status})",
                    mode,
                )
        if dry:
            return self._dry_run(req, repair, settings, mode)
        if mode == "approve" and not execute:
            waiting = self.journal.pending_for(req.repair, req.target)
            if waiting is not None:  # approving both would run it twice
                return self._refuse(
                    req,
                    "duplicate",
                    f"repair #{waiting.id} ({req.repair} on {req.target}, asked by "
                    f"{waiting.requested_by}) already waits for approval: approve or deny that one",
                    mode,
                )
            ctx = self._context(req.requested_by, req.project_id)
            try:
                plan = self._plan(repair, req, ctx, settings)
            except WatchdogError as exc:
                return self._refuse(req, "cannot_plan", str(exc), mode)
            finally:
                ctx.close()
            entry = self._write(req, mode, PENDING, plan=plan)
            log_decision(logging.INFO, entry, req, PENDING, "waiting for an operator's approval")
            return Decision(entry, PENDING, "waiting for an operator's approval", plan)
        return self._run(
            req, repair, settings, mode, decided_by=req.requested_by if execute else None
        )

    def scheduled_requests(self, findings: list[Finding], cooldown: float) -> list[RepairRequest]:
        """What the schedule should ask for: repairs the findings point at, in auto or approve
        mode, not decided on within the cooldown (so the journal is not flooded each sweep)."""
        now = self.clock()
        out = []
        for req in requests_for(findings, self.repairs, "schedule"):
            mode = self.config.repair(req.repair).mode
            if mode not in ("auto", "approve"):
                continue
            if req.fingerprint and (
                self.journal.decided_since(req.fingerprint, now - cooldown)
                # still waiting for an operator (or running): asking again would only journal
                # a "duplicate" refusal every cooldown, for as long as nobody approves
                or self.journal.active_fingerprint(req.fingerprint) is not None
            ):
                continue
            if mode == "approve" and self.journal.pending_for(req.repair, req.target):
                continue  # an alert's request for it waits (another fingerprint)
            out.append(req)
        return out

    def alert_cooldown(self, req: RepairRequest) -> str | None:
        """Why this request from an alert is not submitted now (``[alerts] cooldown_seconds``)."""
        if not req.requested_by.startswith(ALERT_REQUESTER):
            return None
        return alert_cooldown(self.journal, req, self.config.alerts, self.clock())

    def approve(self, entry_id: int, by: str, why: str = "") -> Decision:
        """Approve a pending repair: every guard rule is checked again, now, then it runs.
        ``why`` (e.g. one approval for a batch) is journaled on the pending row."""
        entry = self.journal.get(entry_id)
        if entry is None:
            raise WatchdogError(f"no repair #{entry_id} in the journal")
        if entry.status != PENDING:
            raise WatchdogError(f"repair #{entry_id} is {entry.status}, not pending")
        req = RepairRequest(
            entry.repair,
            entry.server_id,
            entry.project_id,
            requested_by=entry.requested_by,
            reason=entry.reason,
            # The run's row carries the alert's too: while it runs, the same alert is a duplicate
            # (the pending row, now denied as superseded, no longer says so).
            fingerprint=entry.fingerprint,
            params=dict(entry.params),
        )
        self.journal.update(entry_id, status=DENIED, decided_by=by, refusal="superseded: approved")
        # The config may have changed since the request waited: a repair switched off or put in
        # dry-run as an emergency stop, or a server taken out of the inventory, refuses here too.
        invalid = self._invalid(req)
        if invalid:
            decision = self._refuse(req, "invalid", invalid, mode="?")
        else:
            settings = self.config.repair(req.repair)
            barred = _mode_bars(req.repair, settings.mode, execute=True)
            if barred:
                decision = self._refuse(req, *barred, settings.mode)
            else:
                repair = self.repairs[req.repair]
                decision = self._run(req, repair, settings, settings.mode, decided_by=by)
        code = refusal_code(decision.message) if decision.status == REFUSED else ""
        if code in WAIT_AND_APPROVE_AGAIN and not entry.params.get("batch"):
            # Refused for now (another repair's lease, a rate limit, the breaker, a maintenance
            # window): the approval is not used up; the request waits, saying why.
            self.journal.update(
                entry_id,
                status=PENDING,
                decided_by=None,
                finished_at=None,
                refusal=f"approved by {by}, refused for now (repair #{decision.entry_id}: "
                f"{decision.message[:300]}); still waiting: approve again",
            )
            return decision
        self.journal.update(
            entry_id,
            refusal=f"approved by {by}{f' ({why.splitlines()[0][:200]})' if why else ''}; ran as "
            f"repair #{decision.entry_id} ({decision.status})",
        )
        self._book(entry, decision.status, f"repair #{decision.entry_id}: {decision.message}")
        return decision

    def _book(self, entry: Entry, status: str, reason: str) -> None:
        """A batch's row (rebuild, evacuation) follows its approval or denial, from any face."""
        batch = entry.params.get("batch")
        if not isinstance(batch, str) or not entry.project_id:
            return
        from bup_watchdog.batches import item_done

        status = status if status in ("succeeded", "failed", "refused") else "failed"
        try:
            item_done(
                self.state,
                batch,
                entry.project_id,
                status=status,
                reason="" if status == "succeeded" else reason,
            )
        except WatchdogError as exc:  # the book is a view: the repair's outcome is journaled
            log.warning("cannot record %s in %s: %s", status, batch, exc)

    def pending_batch(self, batch: str) -> list[Entry]:
        """The pending rows of a batch (``params["batch"]``, e.g. an evacuation), oldest first."""
        rows = self.journal.entries(status=PENDING, limit=100_000)
        return sorted((e for e in rows if e.params.get("batch") == batch), key=lambda e: e.id)

    def deny(self, entry_id: int, by: str, why: str = "") -> Decision:
        entry = self.journal.get(entry_id)
        if entry is None:
            raise WatchdogError(f"no repair #{entry_id} in the journal")
        if entry.status != PENDING:
            raise WatchdogError(f"repair #{entry_id} is {entry.status}, not pending")
        self.journal.update(entry_id, status=DENIED, decided_by=by, refusal=f"denied: {why or by}")
        req = RepairRequest(
            entry.repair, entry.server_id, entry.project_id, requested_by=entry.requested_by
        )
        log_decision(logging.INFO, entry_id, req, DENIED, f"denied by {by}: {why or 'no reason'}")
        self._book(entry, "refused", f"repair #{entry_id} denied by {by}: {why or 'no reason'}")
        return Decision(entry_id, DENIED, f"denied by {by}")

    def breaker(self) -> tuple[bool, str]:
        """(open?, why): open when too much of the fleet was unreachable in the last sweep."""
        return breaker(self.state, self.config.guard.breaker_unreachable_fraction)

    # -- internals ----------------------------------------------------------------------------

    def _invalid(self, req: RepairRequest) -> str | None:
        if req.repair not in self.repairs:
            return f"no such repair {_clean(req.repair)} (known: {', '.join(sorted(self.repairs))})"
        repair = self.repairs[req.repair]
        if req.server_id not in self.inventory.servers:
            return f"server {_clean(req.server_id)} is not in the inventory"
        if repair.needs_project:
            if req.project_id is None:
                return f"{req.repair} needs a project id"
            if not is_v4_uuid(req.project_id):
                return f"{_clean(req.project_id)} is not a version-4 UUID, so it is not a project"
            project = self.inventory.projects.get(req.project_id)
            if project is None:
                return f"project {req.project_id} is not in the inventory"
            if req.server_id not in project.locations:
                return f"project {req.project_id} does not live on server {req.server_id}"
        elif req.project_id is not None:
            return f"{req.repair} acts on a server, not on a project"
        return None

    def _write(
        self,
        req: RepairRequest,
        mode: str,
        status: str,
        *,
        refusal: str | None = None,
        plan: list[dict[str, Any]] | None = None,
    ) -> int:
        return self.journal.write(
            repair=_clean(req.repair),
            target=_clean(req.target),
            server_id=_clean(req.server_id),
            project_id=_clean(req.project_id) if req.project_id else None,
            requested_by=_clean(req.requested_by),
            reason=req.reason[:500],
            fingerprint=_clean(req.fingerprint) if req.fingerprint else None,
            mode=mode,
            status=status,
            refusal=refusal,
            plan=plan,
            params={k: v for k, v in req.params.items() if k != "dry_run"},
        )

    def _refuse(self, req: RepairRequest, code: str, why: str, mode: str) -> Decision:
        entry = self._write(req, mode, REFUSED, refusal=f"{code}: {why}")
        log_decision(logging.WARNING, entry, req, REFUSED, f"{code}: {why}")
        return Decision(entry, REFUSED, f"{code}: {why}")

    def _context(self, who: str, project_id: str | None) -> _RecordingContext:
        """A repair's context; a project's repair probes only that project (see Context)."""
        return _RecordingContext(self.config, self.inventory, self.journal, who, project_id)

    def _plan(
        self, repair: Repair[RepairSettings], req: RepairRequest, ctx: Context, settings: Any
    ) -> list[dict[str, Any]]:
        steps: list[Step] = repair.plan(req, ctx, settings)
        return [s.as_dict(dict(self.inventory.servers)) for s in steps]

    def _dry_run(
        self, req: RepairRequest, repair: Repair[RepairSettings], settings: Any, mode: str
    ) -> Decision:
        ctx = self._context(req.requested_by, req.project_id)
        try:
            plan = self._plan(repair, req, ctx, settings)
            blockers = repair.preconditions(req, ctx, settings)
        except WatchdogError as exc:
            plan, blockers = [], [f"cannot plan: {exc}"]
        finally:
            ctx.close()
        note = "; ".join(blockers) if blockers else "preconditions hold now"
        entry = self._write(req, mode, DRY_RUN, refusal=f"dry run (nothing run); {note}", plan=plan)
        log_decision(
            logging.INFO,
            entry,
            req,
            DRY_RUN,
            f"(dry run; not actually repairing) {len(plan)} steps planned; {note}",
        )
        return Decision(entry, DRY_RUN, f"dry run: nothing was run; {note}", plan)

    def _limits(self, req: RepairRequest, settings: Any) -> tuple[str, str] | None:
        now = self.clock()
        is_open, why = self.breaker()
        if is_open:
            return "circuit_breaker", why
        window = in_window(self.config.guard.maintenance, datetime.fromtimestamp(now, UTC))
        if window is not None:
            return "maintenance", f"inside the maintenance window {window.start}-{window.end} UTC"
        g = self.config.guard
        failures = self.journal.recent_failures(
            req.repair, req.target, now - g.failure_window_hours * 3600
        )
        if failures >= g.max_failures:
            self._gave_up_finding(req, failures)
            return "gave_up", (
                f"{failures} failed attempts on {req.target} in the last "
                f"{g.failure_window_hours:g} h; the guard stopped trying — a human has to look"
            )
        hour = now - 3600
        if self.journal.count_started(hour, repair=req.repair) >= settings.max_per_hour:
            return (
                "rate_limited",
                f"{req.repair} already ran {settings.max_per_hour} times this hour",
            )
        if self.journal.count_started(hour, server_id=req.server_id) >= g.max_per_hour_per_host:
            return "rate_limited", (
                f"{g.max_per_hour_per_host} repairs already ran on this host this hour"
            )
        return None

    def _gave_up_finding(self, req: RepairRequest, failures: int) -> None:
        self.state.raise_finding(
            Finding(
                check="guard",
                server_id=req.server_id,
                project_id=req.project_id,
                severity=Severity.CRITICAL,
                code="gave_up",
                value=float(failures),
                message=f"{req.repair} failed {failures} times on this target; automatic "
                "repair stopped",
            )
        )

    def _take_leases(self, req: RepairRequest, targets: tuple[str, ...]) -> str:
        """Lease every target the repair may write to, or none: why not ('' when all taken)."""
        taken: list[str] = []
        why = ""
        for target in targets:
            try:
                acquired = self.leases.acquire(target, self.holder, self.config.guard.lease_seconds)
            except WatchdogError as exc:
                why = f"cannot take the lease on {target}: {exc}"
                break
            if not acquired:
                holder = self.leases.holder(target) or "another repair"
                also = "" if target == req.target else f" ({req.repair} writes there too)"
                why = f"{target} is being repaired by {holder}{also}; one at a time"
                break
            taken.append(target)
        if why:
            self._release_leases(tuple(taken))
        return why

    def _release_leases(self, targets: tuple[str, ...]) -> None:
        for target in targets:
            try:  # kept in memory when the state's disk is full; this is for any other failure
                self.leases.release(target, self.holder)
            except WatchdogError as exc:
                log.error(
                    "cannot release the lease on %s now (%s); it expires within %g s, or at the "
                    "watchdog's next start",
                    _clean(target),
                    exc,
                    self.config.guard.lease_seconds,
                )

    def _run(
        self,
        req: RepairRequest,
        repair: Repair[RepairSettings],
        settings: Any,
        mode: str,
        *,
        decided_by: str | None,
    ) -> Decision:
        limited = self._limits(req, settings)
        if limited:
            return self._refuse(req, limited[0], limited[1], mode)
        leased = repair.leased(req, self.inventory)
        busy = self._take_leases(req, leased)
        if busy:
            return self._refuse(req, "lease", busy, mode)
        ctx = self._context(decided_by or req.requested_by, req.project_id)
        executed = False
        try:
            try:
                blockers = repair.preconditions(req, ctx, settings)
            except WatchdogError as exc:
                blockers = [f"precondition_error: cannot check preconditions: {exc}"]
            if blockers:
                return self._refuse(req, "precondition", "; ".join(blockers), mode)
            try:
                steps = repair.plan(req, ctx, settings)
            except WatchdogError as exc:
                return self._refuse(req, "cannot_plan", str(exc), mode)
            plan = [s.as_dict(dict(self.inventory.servers)) for s in steps]
            with _STARTING:  # repairs on other hosts start in parallel: limits checked and
                # the start recorded at once, so two of them cannot both take the last slot
                limited = self._limits(req, settings)
                if limited:
                    return self._refuse(req, limited[0], limited[1], mode)
                # Journal first: the intent is on disk before any command runs.
                entry = self._write(req, mode, RUNNING, plan=plan)
                self.journal.update(entry, started_at=self.clock(), decided_by=decided_by)
            log.debug(
                "repair #%d %s on %s: running %d steps", entry, req.repair, req.target, len(steps)
            )
            ctx.steps = _StepLog()
            executed = True
            try:
                outcome = repair.execute(req, steps, ctx, settings)
            except WatchdogError as exc:
                self.journal.update(entry, status=FAILED, output=ctx.steps.text(str(exc)))
                log_decision(logging.ERROR, entry, req, FAILED, str(exc))
                return Decision(entry, FAILED, str(exc), plan)
            except Exception as exc:
                # A bug in a repair: the row must not stay 'running' (it would block the alert's
                # fingerprint until a restart), and the queue goes on.
                why = f"unexpected error in {req.repair}: {type(exc).__name__}: {exc}"
                self.journal.update(entry, status=FAILED, output=ctx.steps.text(why))
                log_decision(logging.ERROR, entry, req, FAILED, why, exc=True)
                return Decision(entry, FAILED, why, plan)
            finally:
                ctx.steps = None
            output = "\n".join(outcome.output)[-8000:]
            if outcome.status == CONFLICT:
                self.journal.update(entry, status=CONFLICT, output=output)
                why = outcome.output[-1] if outcome.output else "conflict"
                log_decision(logging.WARNING, entry, req, CONFLICT, why)
                return Decision(entry, CONFLICT, why, plan)
            try:
                ok, verification = repair.verify(req, ctx, settings)
            except WatchdogError as exc:
                ok, verification = False, f"could not verify: {exc}"
            status = SUCCEEDED if ok else FAILED
            self.journal.update(entry, status=status, output=output, verification=verification)
            log_decision(logging.INFO if ok else logging.ERROR, entry, req, status, verification)
            return Decision(entry, status, verification, plan)
        finally:
            ctx.close()
            self._release_leases(leased)
            if executed and self.on_executed is not None:
                try:
                    self.on_executed(req)
                except Exception:  # a listener's bug must not turn the decision into a crash
                    log.exception("after repair %s on %s", req.repair, req.target)
