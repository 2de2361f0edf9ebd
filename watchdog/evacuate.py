"""evacuate HOST: move every project mastered on a host to the others, as move_project requests.

For a host being fenced or retired. The plan (``evacuate_plan``: placement rules on the inventory
and one fresh probe of the host and of each candidate) lists every project with its target; a
project no host fits is listed with the reason and not submitted.

``--execute`` shows the whole list, then submits one ``move_project`` request per project
through the guard (approve mode: each waits as a pending journal row carrying the batch id in
its reason and ``params["batch"]``). One approval for the batch (``--approve``, or yes to the
prompt on a terminal, or ``repairs approve --batch ID`` later) approves every pending row through
the guard's own approve path, which checks every rule again; the moves then run one at a time per
target host, ``--parallel`` target hosts at once.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bup_watchdog.errors import WatchdogError
from bup_watchdog.evacuate_plan import (
    REPAIR,
    Move,
    Plan,
    gather_plan,
    plan_dict,
    print_plan,
)
from bup_watchdog.model import Inventory, Server
from bup_watchdog.progress_bar import ItemProgress
from bup_watchdog.rebuild import STOPPING

if TYPE_CHECKING:
    from bup_watchdog.config import Config
    from bup_watchdog.guard import Guard

log = logging.getLogger(__name__)

MAX_PARALLEL = 8


class EvacuateUsageError(WatchdogError):
    """A command line the evacuation cannot use (exit 2)."""


# ---------------------------------------------------------------- submitting and running


def batch_id(host: Server, now: float) -> str:
    """The id every journal row of an evacuation carries: the host and the start (UTC)."""
    return f"evacuate-{host.label}-{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}"


@dataclass(frozen=True, slots=True)
class Done:
    """What the guard did with one move: submitted (pending) or run after the approval."""

    move: Move
    status: str
    message: str
    entry_id: int
    seconds: float = 0.0


@dataclass(slots=True)
class RunResult:
    batch_id: str
    submitted: list[Done] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)
    stopped: str = ""

    @property
    def pending(self) -> list[Done]:
        return [d for d in self.submitted if d.status == "pending"]


def submit_plan(
    guard: Guard,
    plan: Plan,
    *,
    batch: str,
    who: str,
    why: str = "",
    allow_experimental: bool = False,
) -> list[Done]:
    """One move_project request per placed move, through the guard, without ``execute``: in
    approve mode each waits as a pending row. A move already waiting for approval (an earlier
    evacuation, or ``repair move_project``) is not asked for twice: its row joins this batch's
    list as it is. A refusal that holds for every move stops it."""
    from bup_watchdog.guard import RepairRequest

    waiting = {
        (e.server_id, e.project_id): e
        for e in reversed(guard.journal.entries(status="pending", limit=100_000))
        if e.repair == REPAIR
    }
    out: list[Done] = []
    for m in plan.moves:
        assert m.target_id is not None
        old = waiting.get((m.source_id, m.project_id))
        if old is not None:
            target = str(old.params.get("target") or m.target_id)
            first = old.params.get("batch") or "asked for by hand"
            out.append(
                Done(
                    replace(m, target_id=target),
                    "pending",
                    f"already waiting for approval as repair #{old.id} ({first}, to {target}); "
                    "not asked for twice",
                    old.id,
                )
            )
            continue
        params: dict[str, Any] = {"target": m.target_id, "batch": batch}
        if allow_experimental:
            params["allow_experimental"] = True
        reason = f"{batch}: evacuate {plan.host.label} ({m.why})" + (f"; {why}" if why else "")
        req = RepairRequest(REPAIR, m.source_id, m.project_id, who, reason, params=params)
        started = time.monotonic()
        try:
            d = guard.submit(req)
            done = Done(m, d.status, d.message, d.entry_id, time.monotonic() - started)
        except WatchdogError as exc:
            done = Done(m, "failed", str(exc), 0, time.monotonic() - started)
        out.append(done)
        if done.status == "refused" and done.message.split(":", 1)[0] in STOPPING | {"mode_off"}:
            break
    return out


def approve_lanes(
    guard: Guard,
    pending: list[Done],
    *,
    who: str,
    why: str,
    parallel: int = 2,
    on_done: Callable[[Done], None] | None = None,
) -> tuple[list[Done], str]:
    """Approve each pending move through the guard's approve path (it checks every rule again
    and runs the move), one at a time per target host, ``parallel`` hosts at once. A refusal
    that holds for every move stops the approvals: the rest stay pending. (done, stopped)."""
    lanes: dict[str, list[Done]] = {}
    for d in pending:
        lanes.setdefault(d.move.target_id or "", []).append(d)
    queue = [lanes[k] for k in sorted(lanes)]
    lock = threading.Lock()
    done: list[Done] = []
    stopped = ""

    def next_lane() -> list[Done] | None:
        with lock:
            return queue.pop(0) if queue else None

    def approve(p: Done) -> None:
        nonlocal stopped
        started = time.monotonic()
        try:
            d = guard.approve(p.entry_id, who, why=why)
            status, message, entry = d.status, d.message, d.entry_id
        except WatchdogError as exc:
            status, message, entry = "failed", str(exc), p.entry_id
        result = Done(p.move, status, message, entry, time.monotonic() - started)
        with lock:
            done.append(result)
            code = message.split(":", 1)[0] if status == "refused" else ""
            if code in STOPPING and not stopped:
                stopped = (
                    f"the guard refused for a reason that holds for every move: "
                    f"{message}; the moves not approved stay pending"
                )
        if on_done is not None:
            on_done(result)

    def worker() -> None:
        while (lane := next_lane()) is not None:
            for p in lane:
                with lock:
                    if stopped:
                        return
                approve(p)

    # The first move alone: a refusal that holds for every move (maintenance, breaker) then
    # costs one approval, not one per lane.
    if queue:
        approve(queue[0].pop(0))
        queue = [lane for lane in queue if lane]
        if stopped:
            return done, stopped
    workers = max(1, min(parallel, MAX_PARALLEL, len(queue) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evacuate") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:  # the running moves finish (the guard journals them)
            with lock:
                stopped = "interrupted (Ctrl-C); the running moves were let finish"
            for f in futures:
                f.result()
    return done, stopped


# ---------------------------------------------------------------- printing


# ---------------------------------------------------------------- the progress book


class _Book:
    """The evacuation in the progress book of batches (watchdog/batches.py): the report and
    /metrics show it. Its failures are warnings: the book never stops an evacuation."""

    def __init__(self, guard: Guard, batch: str) -> None:
        self.state, self.batch = guard.state, batch

    def _call(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except WatchdogError as exc:
            log.warning("the progress book of %s (%s): %s", self.batch, what, exc)

    def start(self, plan: Plan) -> None:
        from bup_watchdog.batches import BatchItem, start_batch

        items = [BatchItem(m.project_id, m.bytes_to_copy) for m in plan.moves]
        self._call(
            "start",
            lambda: start_batch(
                self.state,
                batch_id=self.batch,
                kind="evacuation",
                host=plan.host.label,
                items=items,
            ),
        )

    def item(self, d: Done) -> None:
        from bup_watchdog.batches import item_done

        status = "pending_approval" if d.status == "pending" else d.status
        if status not in ("succeeded", "failed", "refused", "pending_approval"):
            status = "failed"  # conflict, dry_run, denied: not moved
        reason = "" if status == "succeeded" else f"repair #{d.entry_id}: {d.message}"[:500]
        self._call(
            f"item {d.move.project_id}",
            lambda: item_done(
                self.state, self.batch, d.move.project_id, status=status, reason=reason
            ),
        )

    def finish(self, stopped: str) -> None:
        from bup_watchdog.batches import finish_batch

        self._call("finish", lambda: finish_batch(self.state, self.batch, stopped=stopped))


# ---------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class EvacuateOptions:
    """The command line of ``evacuate``, parsed."""

    execute: bool = False
    approve: bool = False
    allow_experimental: bool = False
    parallel: int = 2
    fmt: str = "text"
    why: str = ""
    who: str = "cli"


def resolve_host(inventory: Inventory, host: str) -> str:
    """The server id of HOST (an id or a name); EvacuateUsageError (exit 2) if none."""
    by_name = {s.name: s.server_id for s in inventory.servers.values() if s.name}
    sid = by_name.get(host, host.lower())
    if sid not in inventory.servers:
        known = ", ".join(sorted(s.label for s in inventory.servers.values())[:20])
        raise EvacuateUsageError(
            f"no server {host!r} in the inventory (give a name or an id; known: {known})"
        )
    return sid


def rate_note(config: Config, moves: int) -> str:
    """What the operator should know before approving more moves than the guard runs an hour."""
    per_host = config.guard.max_per_hour_per_host
    per_repair = int(getattr(config.repair(REPAIR), "max_per_hour", per_host))
    limit = min(per_host, per_repair)
    if moves <= limit:
        return ""
    return (
        f"the guard runs at most {limit} moves an hour from one host ([guard] "
        f"max_per_hour_per_host {per_host}, [repairs.move_project] max_per_hour {per_repair}); "
        f"after {limit} of these {moves} the approvals stop (raise the limits for the "
        "evacuation, or run evacuate --execute again an hour later: a move still pending is not "
        "asked for twice)"
    )


def _ask(question: str) -> bool:
    """Yes or no on the terminal; anything but y/yes is no."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def run_command(
    config: Config,
    host: str,
    options: EvacuateOptions,
    guard: Guard,
    *,
    ask: Callable[[str], bool] | None = None,
) -> int:
    """``bup-watchdog evacuate``: plan, print, and with ``execute`` submit (and with one
    approval run) the moves; the exit code.

    0 every project placed (and, run, every move succeeded or waits for approval), 1 some cannot
    be placed, failed or were refused, 3 could not run. ``ask``: the terminal's yes/no (None:
    ask only when stdin and stdout are terminals)."""
    inventory = guard.inventory
    sid = resolve_host(inventory, host)
    fenced = {s for s, v in guard.journal.overrides().items() if v.get("fenced")}
    plan = gather_plan(
        config, inventory, sid, fenced=fenced, allow_experimental=options.allow_experimental
    )
    json_out = options.fmt == "json"
    note = rate_note(config, len(plan.moves))
    if not options.execute:
        if json_out:
            print(json.dumps({**plan_dict(plan), "note": note}))
        else:
            print_plan(plan, inventory, sys.stdout)
            if note:
                print(f"note: {note}")
            print("(dry run: nothing submitted; --execute submits the moves for approval)")
        return 1 if plan.unplaced else 0
    if not json_out:
        print_plan(plan, inventory, sys.stdout)
        if note:
            print(f"note: {note}")
    batch = batch_id(plan.host, time.time())
    book = _Book(guard, batch)
    book.start(plan)
    submitted = submit_plan(
        guard,
        plan,
        batch=batch,
        who=options.who,
        why=options.why,
        allow_experimental=options.allow_experimental,
    )
    for d in submitted:
        book.item(d)
    result = RunResult(batch, submitted=submitted)
    pending = result.pending
    if len(submitted) < len(plan.moves):
        result.stopped = "the guard refused for a reason that holds for every move: " + (
            submitted[-1].message if submitted else "?"
        )
    approved = options.approve
    if pending and not approved and not json_out:
        if ask is None and sys.stdin.isatty() and sys.stdout.isatty():
            ask = _ask
        if ask is not None:
            approved = ask(f"approve all {len(pending)} moves of {batch}?")
    if pending and approved:
        parallel = options.parallel
        if not json_out:
            print(f"{batch}: {len(pending)} moves approved by {options.who}; running")
        progress = ItemProgress(
            "evacuate", plan.host.label, len(pending), plan.bytes_to_copy, json_out
        )

        def on_done(d: Done) -> None:
            progress.done(
                d.move.project_id, d.status, d.seconds, d.entry_id, d.message, d.move.bytes_to_copy
            )
            book.item(d)

        try:
            result.done, stopped = approve_lanes(
                guard,
                pending,
                who=options.who,
                why=f"one approval for the {len(pending)} moves of {batch}"
                + (f": {options.why}" if options.why else ""),
                parallel=parallel,
                on_done=on_done,
            )
        finally:
            progress.close()
        result.stopped = result.stopped or stopped
    book.finish(result.stopped)
    return _report(plan, result, approved, json_out)


def _report(plan: Plan, result: RunResult, approved: bool, json_out: bool) -> int:
    """Print the outcome; the exit code."""
    refused = [d for d in result.submitted if d.status not in ("pending", "succeeded")]
    failed = [d for d in result.done if d.status != "succeeded"]
    succeeded = [d for d in result.done if d.status == "succeeded"]
    waiting = len(result.pending) - len(result.done)
    if json_out:
        data = plan_dict(plan)

        def one(d: Done) -> dict[str, Any]:
            return {
                "project_id": d.move.project_id,
                "to": d.move.target_id,
                "status": d.status,
                "repair_id": d.entry_id,
                "seconds": round(d.seconds, 3),
                "message": d.message,
            }

        data.update(
            batch_id=result.batch_id,
            submitted=[one(d) for d in result.submitted],
            results=[one(d) for d in result.done],
            waiting_for_approval=waiting,
            stopped=result.stopped,
        )
        print(json.dumps(data))
    else:
        print(
            f"{result.batch_id}: {len(result.submitted)} moves submitted, {len(succeeded)} moved, "
            f"{len(failed) + len(refused)} failed or refused, {waiting} waiting for approval, "
            f"{len(plan.unplaced)} cannot be placed"
        )
        for d in [*refused, *failed]:
            print(f"  {d.move.project_id}: {d.status} (repair #{d.entry_id}) — {d.message}")
        if waiting:
            print(
                f"approve them all with: bup-watchdog repairs approve --batch {result.batch_id}"
                + ("" if approved else " (or evacuate --execute --approve next time)")
            )
        if result.stopped:
            print(f"stopped: {result.stopped}")
    return 1 if plan.unplaced or refused or failed else 0


def approve_batch(guard: Guard, batch: str, *, who: str, why: str = "", fmt: str = "text") -> int:
    """``repairs approve --batch ID``: approve every pending row of a batch at once (one at a
    time per target host, as ``evacuate --approve``); the exit code (0 all ran and succeeded,
    1 some failed or were refused)."""
    rows = guard.pending_batch(batch)
    if not rows:
        raise EvacuateUsageError(
            f"no pending repair carries the batch id {batch!r} (bup-watchdog repairs pending "
            "lists them)"
        )
    pending = []
    for e in rows:
        target = e.params.get("target")
        move = Move(e.project_id or "", e.server_id, str(target) if target else None, 0, 0, "")
        pending.append(Done(move, "pending", "", e.id))
    json_out = fmt == "json"
    book = _Book(guard, batch)

    def on_done(d: Done) -> None:
        book.item(d)
        if not json_out:
            print(
                f"{d.move.project_id}: {d.status} (repair #{d.entry_id}) — {d.message}", flush=True
            )

    done, stopped = approve_lanes(
        guard,
        pending,
        who=who,
        why=f"one approval for the {len(rows)} pending moves of {batch}"
        + (f": {why}" if why else ""),
        parallel=2,
        on_done=on_done,
    )
    book.finish(stopped)
    ok = sum(d.status == "succeeded" for d in done)
    if json_out:
        print(
            json.dumps(
                {
                    "batch_id": batch,
                    "results": [
                        {
                            "project_id": d.move.project_id,
                            "status": d.status,
                            "repair_id": d.entry_id,
                            "message": d.message,
                        }
                        for d in done
                    ],
                    "stopped": stopped,
                }
            )
        )
    else:
        print(
            f"{batch}: {ok} of {len(rows)} succeeded" + (f"; stopped: {stopped}" if stopped else "")
        )
    return 0 if ok == len(rows) else 1
