"""rebuild HOST: bring every copy a host should hold in step with its master, through the guard.

After a disk replacement or a long outage. The plan is computed from the inventory and fresh
facts (one probe of the host and of each master host, one SSH session each: the filesystem, not
the database), most recently used first (the master's ``conf/touch``, else its last save), and
each copy is submitted as an ordinary ``resync_replica`` request to the guard (modes, breaker,
leases, limits, journal as for any repair). ``--execute`` counts as the operator's approval of
each copy, as ``repair --execute`` does; without it nothing is submitted and the plan is printed.

Resumable by construction: a copy a run finished is in step on the next run's fresh facts and
is skipped; one left half-done is still behind (resync moves the ref last) and is done again,
its objects already copied not sent twice (``--ignore-existing``). Every journal row of a run
carries the run's rebuild id in its reason and params.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from bup_watchdog.errors import WatchdogError
from bup_watchdog.journal import FAILED, INTERRUPTED, RUNNING
from bup_watchdog.model import HostFacts, Inventory, RepoFacts, Server
from bup_watchdog.progress_bar import ItemProgress

if TYPE_CHECKING:
    from bup_watchdog.config import Config
    from bup_watchdog.guard import Decision, Guard
    from bup_watchdog.state import State

log = logging.getLogger(__name__)

REPAIR = "resync_replica"
#: Copies the rebuild submits; the others are in step or need a human.
TODO = ("missing", "behind")
#: Refusals that hold for every copy alike: the rebuild stops submitting (run it again later).
STOPPING = frozenset({"mode_off", "mode_dry_run", "circuit_breaker", "maintenance", "rate_limited"})
MAX_PARALLEL = 8
# The probe's master_error for a repository without the ref (watchdog/probe.py, _master_ref).
_MISSING_REF = "refs/heads/master is missing"


class RebuildUsageError(WatchdogError):
    """A command line the rebuild cannot use (exit 2)."""


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy the host should hold: its state against the master, and how big it is."""

    project_id: str
    master_id: str
    state: str  # missing | behind | in_step | blocked
    master_bytes: int = 0
    replica_bytes: int = 0
    used_at: float | None = None
    why: str = ""

    @property
    def bytes_to_copy(self) -> int:
        """At most this much travels: the master's size less what the replica already holds."""
        return max(0, self.master_bytes - self.replica_bytes)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rebuild of ``host`` would do: ``todo`` in the order it runs (most recently used
    first), ``blocked`` copies that resync cannot bring in step (a human must look)."""

    host: Server
    todo: tuple[Copy, ...]
    blocked: tuple[Copy, ...]
    in_step: int
    outside_window: int

    @property
    def bytes_to_copy(self) -> int:
        return sum(c.bytes_to_copy for c in self.todo)


def _used_at(repo: RepoFacts) -> float | None:
    """When the project was last used: the master's conf/touch, else its last save."""
    if repo.touch_mtime is not None:
        return repo.touch_mtime
    return float(repo.reflog_last_time) if repo.reflog_last_time is not None else None


def _classify(
    pid: str, host: Server, m_label: str, m_facts: HostFacts | None, r_repo: RepoFacts | None
) -> tuple[str, str, RepoFacts | None]:
    """(state, why, the master's repo facts) of one replica copy on ``host``."""
    if m_facts is None or not m_facts.probed:
        why = (m_facts.failure_message if m_facts else None) or "not probed"
        return "blocked", f"master_unreachable: cannot probe the master {m_label}: {why}", None
    m_repo = m_facts.repos.get(pid)
    if m_repo is None or m_repo.master_sha is None:
        err = m_repo.master_error if m_repo else "missing"
        return "blocked", f"master_unreadable: the master's copy on {m_label}: {err}", m_repo
    if r_repo is None:
        return "missing", f"no repository on {host.label}", m_repo
    if r_repo.master_sha == m_repo.master_sha:
        return "in_step", "", m_repo
    if r_repo.master_sha is None:
        if r_repo.master_error == _MISSING_REF and r_repo.pack_count == 0 and not r_repo.errors:
            return "missing", f"an empty repository on {host.label}", m_repo
        return (
            "blocked",
            (
                f"replica_unreadable: the copy on {host.label} has no readable master "
                f"({r_repo.master_error or 'unknown'}) but may hold saves"
            ),
            m_repo,
        )
    m_time, r_time = m_repo.reflog_last_time, r_repo.reflog_last_time
    if m_time is None or r_time is None:
        return "blocked", "age_unknown: no reflog time; which copy is newer cannot be told", m_repo
    if r_time >= m_time:
        return (
            "blocked",
            (
                f"replica_ahead: the copy on {host.label} was saved {r_time - m_time} s after the "
                "master's; resync never overwrites it"
            ),
            m_repo,
        )
    return "behind", f"{_duration(m_time - r_time)} behind the master", m_repo


def compute_plan(
    server_id: str,
    inventory: Inventory,
    facts: Mapping[str, HostFacts],
    *,
    now: float,
    touched_within: float | None = None,
) -> Plan:
    """The rebuild plan of one host from fresh facts (pure: no I/O).

    Copies where the host is a replica are compared with their master; a copy where the host is
    the master is in step when readable, else blocked (resync only copies master -> replica).
    ``touched_within``: only projects used in the last that many seconds (unknown use: left out).
    """
    host = inventory.servers[server_id]
    r_facts = facts.get(server_id)
    if r_facts is None or not r_facts.probed:
        why = (r_facts.failure_message if r_facts else None) or "not probed"
        raise WatchdogError(f"cannot probe {host.label}, the host to rebuild: {why}")
    todo: list[Copy] = []
    blocked: list[Copy] = []
    in_step = outside = 0
    for project in inventory.projects_on(server_id):
        if project.deleted:
            continue
        pid = project.project_id
        r_repo = r_facts.repos.get(pid)
        if project.master == server_id:
            used = _used_at(r_repo) if r_repo else None
            state, why, m_repo = "in_step", "", r_repo
            if r_repo is None or r_repo.master_sha is None:
                state = "blocked"
                why = (
                    f"is_master: {host.label} is the master and its copy is "
                    f"{'missing' if r_repo is None else 'unreadable'}; resync copies master -> "
                    "replica only: restore it from a replica by hand, or move the project"
                )
        else:
            m_server = inventory.servers.get(project.master)
            m_label = m_server.label if m_server else project.master
            state, why, m_repo = _classify(pid, host, m_label, facts.get(project.master), r_repo)
            used = _used_at(m_repo) if m_repo else None
        if used is None and project.last_edited is not None:
            used = project.last_edited.timestamp()
        if touched_within is not None and (used is None or used < now - touched_within):
            outside += 1
            continue
        if state == "in_step":
            in_step += 1
            continue
        copy = Copy(
            pid,
            project.master,
            state,
            master_bytes=m_repo.repo_bytes if m_repo else 0,
            replica_bytes=r_repo.repo_bytes if r_repo and state == "behind" else 0,
            used_at=used,
            why=why,
        )
        (todo if state in TODO else blocked).append(copy)
    todo.sort(
        key=lambda c: (-(c.used_at if c.used_at is not None else float("-inf")), c.project_id)
    )
    blocked.sort(key=lambda c: c.project_id)
    return Plan(host, tuple(todo), tuple(blocked), in_step, outside)


def gather_plan(
    config: Config, inventory: Inventory, server_id: str, *, touched_within: float | None = None
) -> Plan:
    """Probe the host and the masters of its copies now (one session each, in parallel) and
    compute the plan."""
    from bup_watchdog.gather import gather

    masters = {
        p.master
        for p in inventory.projects_on(server_id)
        if not p.deleted and p.master in inventory.servers
    }
    servers = [inventory.servers[s] for s in sorted({server_id, *masters})]
    facts = {
        f.server_id: f
        for f in gather(
            servers,
            config.ssh,
            tcp_timeout=config.check("reachability").connect_timeout,
            live_dirs=False,
        )
    }
    return compute_plan(server_id, inventory, facts, now=time.time(), touched_within=touched_within)


def name_half_copies(plan: Plan, state: State) -> Plan:
    """Say which blocked copies are a half-copy an interrupted resync of this target created.

    A repository with packs and no ref is refused by resync_replica (it may hold saves); when the
    journal's last resync_replica of the target created it (its plan's ``bup init``: the row
    started running) and never finished, nothing in it is the replica's own: the operator may
    remove it and run again. A row that never ran (pending, dry run, denied) created nothing.
    """
    out = []
    for c in plan.blocked:
        rows = state.query(
            "SELECT id, status, plan FROM journal WHERE repair=? AND target=? "
            "ORDER BY id DESC LIMIT 1",
            (REPAIR, f"{plan.host.server_id}/{c.project_id}"),
        )
        ran = rows and rows[0][1] in (RUNNING, FAILED, INTERRUPTED)
        if c.why.startswith("replica_unreadable") and ran:
            entry, status, steps = rows[0]
            try:
                first = json.loads(steps or "[]")[0]["command"]
            except (ValueError, LookupError, TypeError):
                first = ""
            if first.startswith("bup -d ") and first.endswith(" init"):
                repo = first.removeprefix("bup -d ").removesuffix(" init")
                c = replace(
                    c,
                    why=f"{c.why} — a half-copy: repair #{entry} ({status}) created it and "
                    f"stopped before its last step; check it, remove {repo} on "
                    f"{plan.host.label}, and run rebuild again",
                )
        out.append(c)
    return replace(plan, blocked=tuple(out))


# ---------------------------------------------------------------- the budget and the run


@dataclass(frozen=True, slots=True)
class Budget:
    """How much a run may do: copies at once, the host's bandwidth (KiB/s, shared among the
    copies running at once), no copy started after ``deadline`` (epoch seconds), at most
    ``max_copies`` submitted."""

    parallel: int = 1
    bwlimit_kib: int | None = None
    deadline: float | None = None
    max_copies: int | None = None

    @property
    def per_copy_kib(self) -> int | None:
        """Each rsync's --bwlimit: the host's budget shared among the parallel copies."""
        return max(1, self.bwlimit_kib // self.parallel) if self.bwlimit_kib else None

    def estimate_seconds(self, nbytes: int) -> float | None:
        """How long ``nbytes`` take at the bandwidth budget (None: no budget, no estimate)."""
        return nbytes / (self.bwlimit_kib * 1024) if self.bwlimit_kib else None


@dataclass(frozen=True, slots=True)
class Done:
    """What the guard did with one copy."""

    copy: Copy
    status: str
    message: str
    entry_id: int
    seconds: float


@dataclass(slots=True)
class RunResult:
    rebuild_id: str
    done: list[Done] = field(default_factory=list)
    left: list[Copy] = field(default_factory=list)
    stopped: str = ""

    @property
    def succeeded(self) -> int:
        return sum(d.status == "succeeded" for d in self.done)


def rebuild_id(host: Server, now: float) -> str:
    """The id every journal row of a run carries: the host and the run's start (UTC)."""
    return f"rebuild-{host.label}-{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}"


def run_plan(
    guard: Guard,
    plan: Plan,
    budget: Budget,
    *,
    run_id: str,
    who: str,
    why: str = "",
    on_start: Callable[[Copy], None] | None = None,
    on_done: Callable[[Done], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> RunResult:
    """Submit the plan's copies to the guard in order, ``budget.parallel`` at once; ``execute``
    counts as the operator's approval. A refusal that holds for every copy (STOPPING) stops the
    run: no copy is submitted after it; those not submitted are ``left``."""
    from bup_watchdog.guard import RepairRequest

    result = RunResult(run_id)
    queue = list(plan.todo)
    lock = threading.Lock()
    submitted = 0

    def next_copy() -> Copy | None:
        nonlocal submitted
        with lock:
            if not queue or result.stopped:
                return None
            if budget.max_copies is not None and submitted >= budget.max_copies:
                result.stopped = result.stopped or f"--max-copies {budget.max_copies} reached"
                return None
            if budget.deadline is not None and clock() >= budget.deadline:
                result.stopped = "the time window is over"
                return None
            submitted += 1
            return queue.pop(0)

    def worker() -> None:
        while (copy := next_copy()) is not None:
            params: dict[str, Any] = {"rebuild": run_id}
            if budget.per_copy_kib:
                params["bwlimit_kib"] = budget.per_copy_kib
            reason = f"{run_id}: {copy.state} ({copy.why})" + (f"; {why}" if why else "")
            req = RepairRequest(
                REPAIR, plan.host.server_id, copy.project_id, who, reason, params=params
            )
            if on_start is not None:
                on_start(copy)
            started = time.monotonic()
            try:
                decision: Decision = guard.submit(req, execute=True)
                status, message, entry = decision.status, decision.message, decision.entry_id
            except WatchdogError as exc:
                status, message, entry = "failed", str(exc), 0
            done = Done(copy, status, message, entry, time.monotonic() - started)
            with lock:
                result.done.append(done)
                code = message.split(":", 1)[0] if status == "refused" else ""
                if code in STOPPING and not result.stopped:
                    result.stopped = (
                        f"the guard refused for a reason that holds for every copy: {message}"
                    )
            if on_done is not None:
                on_done(done)

    workers = max(1, min(budget.parallel, MAX_PARALLEL, len(queue) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rebuild") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:  # the running copies finish (the guard journals them)
            with lock:
                result.stopped = "interrupted (Ctrl-C); the running copies were let finish"
            for f in futures:
                f.result()
    result.left = list(queue)
    return result


# ---------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class RebuildOptions:
    """The command line of ``rebuild``, parsed."""

    execute: bool = False
    fmt: str = "text"
    touched_within: float | None = None
    budget: Budget = Budget()
    why: str = ""
    who: str = "cli"


def parse_command(
    opts: Mapping[str, object], *, who: str, now: float | None = None
) -> RebuildOptions:
    """The command line's options (click's values) as RebuildOptions; RebuildUsageError (exit 2)
    for a value it cannot use."""
    from bup_watchdog.report import parse_duration

    now = time.time() if now is None else now

    def duration(flag: str, text: object) -> float | None:
        if text is None:
            return None
        try:
            return parse_duration(str(text))
        except ValueError:
            raise RebuildUsageError(
                f"{flag} {text!r} is not a duration (examples: 90s, 30m, 48h, 7d, 2w)"
            ) from None

    deadlines = []
    if opts.get("until") is not None:
        deadlines.append(parse_until(str(opts["until"]), now))
    longest = duration("--max-duration", opts.get("max_duration"))
    if longest is not None:
        deadlines.append(now + longest)
    bwlimit = opts.get("bwlimit")
    max_copies = opts.get("max_copies")
    return RebuildOptions(
        execute=bool(opts.get("execute")),
        fmt=str(opts.get("fmt") or "text"),
        touched_within=duration("--touched-within", opts.get("touched_within")),
        budget=Budget(
            parallel=int(str(opts.get("parallel") or 1)),
            bwlimit_kib=parse_bwlimit(str(bwlimit)) if bwlimit is not None else None,
            deadline=min(deadlines) if deadlines else None,
            max_copies=int(str(max_copies)) if max_copies is not None else None,
        ),
        why=str(opts.get("why") or ""),
        who=who,
    )


def parse_bwlimit(text: str) -> int:
    """KiB/s from '20000', '500K', '20M', '1G' (units of 1024, as rsync's --bwlimit)."""
    units = {"": 1, "K": 1, "M": 1024, "G": 1024 * 1024}
    t = text.strip().upper().removesuffix("B").removesuffix("/S")
    unit = t[-1:] if t[-1:] in "KMG" and t[-1:] else ""
    digits = t[: len(t) - len(unit)]
    if not digits.isdigit() or int(digits) < 1:
        raise RebuildUsageError(
            f"--bwlimit {text!r} is not a rate (KiB/s, or with a unit: 500K, 20M, 1G)"
        )
    return int(digits) * units[unit]


def parse_until(text: str, now: float) -> float:
    """The next HH:MM (UTC, as the guard's maintenance windows) after ``now``, epoch seconds."""
    try:
        at = datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise RebuildUsageError(f"--until {text!r} is not a time HH:MM (UTC)") from None
    start = datetime.fromtimestamp(now, UTC)
    when = start.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    if when <= start:
        when += timedelta(days=1)
    return when.timestamp()


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "unknown"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_dict(plan: Plan, budget: Budget) -> dict[str, Any]:
    """The plan as data (``--format json``)."""
    estimate = budget.estimate_seconds(plan.bytes_to_copy)

    def one(c: Copy) -> dict[str, Any]:
        return {
            "project_id": c.project_id,
            "master": c.master_id,
            "state": c.state,
            "master_bytes": c.master_bytes,
            "bytes_to_copy": c.bytes_to_copy,
            "used_at": c.used_at,
            "why": c.why,
        }

    return {
        "host": plan.host.label,
        "server_id": plan.host.server_id,
        "copies": [one(c) for c in plan.todo],
        "blocked": [one(c) for c in plan.blocked],
        "in_step": plan.in_step,
        "outside_window": plan.outside_window,
        "bytes_to_copy": plan.bytes_to_copy,
        "estimate_seconds": estimate,
    }


def print_plan(plan: Plan, budget: Budget, out: TextIO) -> None:
    """The plan for people: one line per copy, MRU first, with sizes; then the estimate."""
    print(
        f"rebuild of {plan.host.label}: {len(plan.todo)} copies to bring in step "
        f"({_size(plan.bytes_to_copy)} at most), {plan.in_step} in step, "
        f"{len(plan.blocked)} need a human"
        + (f", {plan.outside_window} not used within the window" if plan.outside_window else ""),
        file=out,
    )
    for i, c in enumerate(plan.todo, 1):
        print(
            f"  {i:>4}. {c.project_id}  {c.state:<7}  {_size(c.bytes_to_copy):>9}  "
            f"used {_when(c.used_at)}  ({c.why})",
            file=out,
        )
    for c in plan.blocked:
        print(f"  blocked {c.project_id}: {c.why}", file=out)
    estimate = budget.estimate_seconds(plan.bytes_to_copy)
    if estimate is not None:
        print(
            f"estimate: {_duration(estimate)} at --bwlimit {budget.bwlimit_kib} KiB/s "
            f"(at most {_size(plan.bytes_to_copy)}; objects already there are not sent)",
            file=out,
        )
    else:
        print("estimate: none without --bwlimit (copies run at the network's speed)", file=out)


def _unused_id(state: State, run_id: str) -> str:
    """The run id, made unique in the progress book (and so in the journal) when a run of the
    same host started within the same second."""
    from bup_watchdog.batches import unused_batch_id

    try:
        return unused_batch_id(state, run_id)
    except (WatchdogError, sqlite3.Error) as exc:
        log.warning("cannot read the progress book of batches: %s", exc)
        return run_id


class _Book:
    """The run in the progress book of batches (watchdog/batches.py): the report and /metrics
    show it; a copy not submitted stays ``left``. A run with nothing to do is not recorded."""

    def __init__(self, state: State, run_id: str, plan: Plan) -> None:
        from bup_watchdog.batches import BatchItem, start_batch

        self.state, self.run_id, self.finished = state, run_id, not plan.todo
        if self.finished:
            return
        start_batch(
            state,
            batch_id=run_id,
            kind="rebuild",
            host=plan.host.label,
            items=[BatchItem(c.project_id, c.bytes_to_copy) for c in plan.todo],
        )

    def done(self, d: Done) -> None:
        from bup_watchdog.batches import item_done

        reason = "" if d.status == "succeeded" else f"repair #{d.entry_id}: {d.message}"
        item_done(self.state, self.run_id, d.copy.project_id, status=d.status, reason=reason)

    def finish(self, stopped: str) -> None:
        from bup_watchdog.batches import finish_batch

        if not self.finished:
            self.finished = True
            finish_batch(self.state, self.run_id, stopped=stopped)


def run_command(config: Config, host: str, options: RebuildOptions, guard: Guard) -> int:
    """``bup-watchdog rebuild``: plan, print, and with ``execute`` run; the exit code.

    0 every copy in step (or, planning only, every copy can be brought in step), 1 some copy
    failed, was refused, left by the budget, or needs a human; 3 could not run."""
    inventory = guard.inventory
    by_name = {s.name: s.server_id for s in inventory.servers.values() if s.name}
    sid = by_name.get(host, host.lower())
    if sid not in inventory.servers:
        raise RebuildUsageError(f"no server {host!r} in the inventory (give a name or an id)")
    plan = gather_plan(config, inventory, sid, touched_within=options.touched_within)
    plan = name_half_copies(plan, guard.state)
    if not options.execute:
        if options.fmt == "json":
            print(json.dumps(plan_dict(plan, options.budget)))
        else:
            print_plan(plan, options.budget, sys.stdout)
            print("(dry run: nothing submitted; --execute runs it through the guard)")
        return 1 if plan.blocked else 0
    if options.fmt != "json":
        print_plan(plan, options.budget, sys.stdout)
    try:  # leases of this host's watchdog processes that were killed (an interrupted rebuild)
        for target, holder in guard.leases.release_dead():
            log.warning("released the lease on %s of %s, a process that is gone", target, holder)
    except WatchdogError as exc:
        log.warning("cannot release the leases of dead processes: %s", exc)
    run_id = _unused_id(guard.state, rebuild_id(plan.host, time.time()))
    progress = ItemProgress(
        "rebuild",
        plan.host.label,
        len(plan.todo),
        plan.bytes_to_copy,
        options.fmt == "json",
    )
    book = _Book(guard.state, run_id, plan)

    def on_done(done: Done) -> None:
        book.done(done)
        progress.done(
            done.copy.project_id,
            done.status,
            done.seconds,
            done.entry_id,
            done.message,
            done.copy.bytes_to_copy,
        )

    try:
        result = run_plan(
            guard,
            plan,
            options.budget,
            run_id=run_id,
            who=options.who,
            why=options.why,
            on_done=on_done,
        )
        book.finish(result.stopped)
    finally:
        book.finish("ended by an error (see the log)")
        progress.close()
    failed = [d for d in result.done if d.status != "succeeded"]
    if options.fmt == "json":
        data = plan_dict(plan, options.budget)
        data.update(
            rebuild_id=run_id,
            results=[
                {
                    "project_id": d.copy.project_id,
                    "status": d.status,
                    "repair_id": d.entry_id,
                    "seconds": round(d.seconds, 3),
                    "message": d.message,
                }
                for d in result.done
            ],
            left=[c.project_id for c in result.left],
            stopped=result.stopped,
        )
        print(json.dumps(data))
    else:
        print(
            f"{run_id}: {result.succeeded} copies brought in step, {len(failed)} failed or "
            f"refused, {len(result.left)} left for the next run, {len(plan.blocked)} need a human"
        )
        if result.stopped:
            print(f"stopped: {result.stopped}")
    return 1 if failed or result.left or plan.blocked else 0
