"""The commands that change storage, all through the guard: ``repair``, ``rebuild``,
``evacuate``, and the ``repairs`` journal (list, approve, deny, acknowledge).

Each command that would run a repair asks the guard (``bup_watchdog.guard``), which journals its
decision, and prints it; none runs a repair routine itself (``repairs list`` and ``pending`` read
the journal, ``repairs ack`` writes an acknowledgement into it). Registered on the group in ``cli``.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from bup_watchdog.cli_options import (
    BadUsage,
    BadUsageExits3,
    config_option,
    deprecated,
    existing_state,
    fail,
    format_option,
    load,
    log,
)
from bup_watchdog.errors import WatchdogError

if TYPE_CHECKING:
    from bup_watchdog.config import Config
    from bup_watchdog.guard import Decision, Guard
    from bup_watchdog.model import Inventory


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _guard(config: Config) -> Guard:
    """The guard on the configured state. Leases left by this host's watchdog processes that are
    gone (a killed ``repair --execute``) are released first, as the daemon does at start: an
    interrupted repair must not block its retry for ``lease_seconds``."""
    from bup_watchdog.guard import Guard
    from bup_watchdog.runner import inventory_source, load_inventory, open_state

    state = open_state(config)
    inventory = load_inventory(inventory_source(config), state)
    guard = Guard(config, state, inventory)
    try:
        for target, holder in guard.leases.release_dead():
            log.warning("released the lease on %s of %s, a process that is gone", target, holder)
    except WatchdogError as exc:
        log.warning("cannot release the leases of dead processes: %s", exc)
    return guard


def _exit_with(work: Callable[[], int], usage_error: type[Exception]) -> NoReturn:
    """Exit with the code ``work`` returns: 2 (and its one line) for its usage errors, 3 for
    anything else the watchdog could not do."""
    try:
        code = work()
    except usage_error as exc:
        fail(str(exc), 2)
    except WatchdogError as exc:
        fail(str(exc))
    sys.exit(code)


def _parse_target(inventory: Inventory, target: str) -> tuple[str, str | None]:
    """'SERVER' or 'SERVER/PROJECT', the server by id or name."""
    server, _, project = target.partition("/")
    by_name = {s.name: s.server_id for s in inventory.servers.values() if s.name}
    sid = by_name.get(server, server.lower())
    return sid, (project.lower() if project else None)


def _print_decision_and_exit(decision: Decision, fmt: str) -> NoReturn:
    """Print the guard's decision, then exit with its code (``_DECISION_EXIT``)."""
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "id": decision.entry_id,
                    "status": decision.status,
                    "message": decision.message,
                    "plan": decision.plan,
                }
            )
        )
    else:
        click.echo(f"repair #{decision.entry_id}: {decision.status} — {decision.message}")
        for i, step in enumerate(decision.plan, 1):
            click.echo(f"  {i}. on {step['on']}: {step['command']}")
            click.echo(f"     ({step['description']})")
    sys.exit(_DECISION_EXIT.get(decision.status, 1))


_DECISION_EXIT = {"succeeded": 0, "dry_run": 0, "pending": 0, "conflict": 1, "refused": 2}


@click.command("repair", cls=BadUsageExits3)
@config_option
@click.argument("name")
@click.argument("target")
@click.option("--dry-run", is_flag=True, help="Plan only (the default).")
@click.option("--execute", is_flag=True, help="Run it now (counts as approval).")
@click.option("--why", default="", help="Why, for the journal.")
@click.option("--reason", hidden=True, default="", callback=deprecated("--why"))
@click.option(
    "--unfence", is_flag=True, help="fence_host only: lift the fence (host healthy again)."
)
@click.option("--to", "move_to", metavar="SERVER", help="move_project only: the new master.")
@click.option(
    "--allow-experimental",
    is_flag=True,
    help="move_project only: the new master may be an experimental server.",
)
@format_option
def repair_cmd(
    config_path: Path,
    name: str,
    target: str,
    dry_run: bool,
    execute: bool,
    why: str,
    reason: str,
    unfence: bool,
    move_to: str | None,
    allow_experimental: bool,
    fmt: str,
) -> None:
    """Plan or run one repair by hand, through the guard.

    TARGET is SERVER (for server repairs) or SERVER/PROJECT_ID; SERVER is an id or a name.
    Exit code: 0 done (or planned), 1 failed or stopped on a conflict, 2 refused, 3 could not run
    (a command line it cannot use included: 2 is the guard's refusal only).
    """
    from bup_watchdog.guard import RepairRequest

    if dry_run and execute:
        raise BadUsage("--dry-run and --execute contradict each other: give one")
    if unfence and name != "fence_host":
        raise BadUsage(f"--unfence goes with fence_host only, not {name}")
    if why and reason:
        raise BadUsage("--why and --reason (its old name) both given: give --why")
    if (move_to or allow_experimental) and name != "move_project":
        raise BadUsage(f"--to and --allow-experimental go with move_project only, not {name}")
    if name == "move_project" and not move_to:
        raise BadUsage("move_project needs --to SERVER (the new master)")
    extra: dict[str, object] = {"unfence": True} if unfence else {}
    if move_to:
        extra["target"] = move_to
    if allow_experimental:
        extra["allow_experimental"] = True
    mode = "execute" if execute else "dry-run"
    reason = why or reason
    config = load(config_path)
    try:
        guard = _guard(config)
        sid, pid = _parse_target(guard.inventory, target)
        req = RepairRequest(
            name,
            sid,
            pid,
            requested_by=_who(),
            reason=reason,
            params={"dry_run": mode != "execute", **extra},
        )
        decision = guard.submit(req, execute=mode == "execute")
    except WatchdogError as exc:
        fail(str(exc))
    _print_decision_and_exit(decision, fmt)


@click.command("rebuild")
@config_option
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="Print the plan only (the default).")
@click.option(
    "--execute", is_flag=True, help="Submit every copy to the guard now (counts as approval)."
)
@click.option("--touched-within", metavar="DURATION", help="Only projects used within (7d).")
@click.option(
    "--parallel", type=click.IntRange(1, 8), default=1, show_default=True, help="Copies at once."
)
@click.option("--bwlimit", metavar="RATE", help="The host's bandwidth: KiB/s, or 500K, 20M.")
@click.option("--until", metavar="HH:MM", help="Start no copy after this time (UTC).")
@click.option("--max-duration", metavar="DURATION", help="Start no copy after this long.")
@click.option("--max-copies", type=click.IntRange(1), help="Submit at most this many copies.")
@click.option("--why", default="", help="Why, for the journal.")
@format_option
def rebuild_cmd(config_path: Path, host: str, **opts: str | int | bool | None) -> None:
    """Bring every copy HOST should hold back in step with its master (resync_replica through
    the guard), most recently used first, within a budget; a second run continues.

    Exit code: 0 every copy in step, 1 some failed, refused, left or need a human, 2 bad usage,
    3 could not run.
    """
    from bup_watchdog.rebuild import RebuildUsageError, parse_command, run_command

    if opts["dry_run"] and opts["execute"]:
        raise click.UsageError("--dry-run and --execute contradict each other: give one")
    config = load(config_path)
    _exit_with(
        lambda: run_command(config, host, parse_command(opts, who=_who()), _guard(config)),
        RebuildUsageError,
    )


@click.command("evacuate")
@config_option
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="Print the plan only (the default).")
@click.option("--execute", is_flag=True, help="Submit one move_project request per project.")
@click.option(
    "--approve", is_flag=True, help="With --execute: approve the whole batch now (one approval)."
)
@click.option("--allow-experimental", is_flag=True, help="Experimental hosts may take projects.")
@click.option(
    "--parallel",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Target hosts receiving at once (one move at a time each).",
)
@click.option("--why", default="", help="Why, for the journal.")
@format_option
def evacuate_cmd(config_path: Path, host: str, **opts: str | int | bool | None) -> None:
    """Move every project mastered on HOST to other hosts (same data centre first, room, load):
    the full list first, then move_project requests for one approval of the batch.

    Exit code: 0 every project placed (and moved or waiting), 1 some cannot be placed, failed or
    were refused, 2 bad usage, 3 could not run.
    """
    from bup_watchdog.evacuate import EvacuateOptions, EvacuateUsageError, run_command

    if opts["dry_run"] and opts["execute"]:
        raise click.UsageError("--dry-run and --execute contradict each other: give one")
    if opts["approve"] and not opts["execute"]:
        raise click.UsageError("--approve goes with --execute (it approves the moves submitted)")
    options = EvacuateOptions(
        execute=bool(opts["execute"]),
        approve=bool(opts["approve"]),
        allow_experimental=bool(opts["allow_experimental"]),
        parallel=int(str(opts["parallel"])),
        fmt=str(opts["fmt"]),
        why=str(opts["why"] or ""),
        who=_who(),
    )
    config = load(config_path)
    _exit_with(lambda: run_command(config, host, options, _guard(config)), EvacuateUsageError)


@click.group("repairs")
def repairs_group() -> None:
    """List the repair journal; approve or deny pending repairs; acknowledge interrupted ones."""


#: Journal statuses, as ``repairs list --status`` takes them (a test holds them to the journal's).
STATUSES = (
    "refused",
    "dry_run",
    "pending",
    "denied",
    "running",
    "succeeded",
    "failed",
    "interrupted",
    "conflict",
)


def _list(config_path: Path, status: str | None, limit: int, fmt: str) -> None:
    from rich.table import Table

    from bup_watchdog.journal import Journal
    from bup_watchdog.output import make_console

    config = load(config_path)
    try:
        state = existing_state(config)
        entries = Journal(state).entries(status=status, limit=limit) if state else []
    except WatchdogError as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([e.as_dict() for e in entries]))
        return
    if not entries:
        none = "no repairs" + (f" with status {status}" if status else "")
        if state is None:
            none += f" (no state at {config.state.directory} yet: nothing was journaled)"
        click.echo(none)
        return
    console = make_console()
    table = Table(title_justify="left")
    for col in ("id", "when (UTC)", "repair", "target", "status", "by", "why / outcome"):
        table.add_column(col, overflow="fold")
    for e in entries:
        when = datetime.fromtimestamp(e.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            str(e.id),
            when,
            e.repair,
            e.target,
            e.status + (" (acked)" if e.acked_at is not None else ""),
            e.decided_by or e.requested_by,
            (f"acked by {e.acked_by}: {e.ack_reason}" if e.acked_at is not None else "")
            or e.refusal
            or e.verification
            or (e.output or "")[-200:],
        )
    console.print(table)


@repairs_group.command("list")
@config_option
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@format_option
def repairs_list(config_path: Path, status: str | None, limit: int, fmt: str) -> None:
    """The journal, newest first: every decision, refusals with their reason."""
    _list(config_path, status, limit, fmt)


@repairs_group.command("pending")
@config_option
@format_option
def repairs_pending(config_path: Path, fmt: str) -> None:
    """Repairs waiting for an operator's approval."""
    _list(config_path, "pending", 1000, fmt)


@repairs_group.command("approve")
@config_option
@click.argument("entry_id", type=int, required=False)
@click.option("--batch", metavar="BATCH_ID", help="Every pending repair of a batch (evacuate).")
@format_option
def repairs_approve(config_path: Path, entry_id: int | None, batch: str | None, fmt: str) -> None:
    """Approve a pending repair (or a whole batch): the guard checks everything again, then
    runs it."""
    if (entry_id is None) == (batch is None):
        raise click.UsageError("give a repair id or --batch BATCH_ID (one of them)")
    config = load(config_path)
    if batch is not None:
        from bup_watchdog.evacuate import EvacuateUsageError, approve_batch

        try:
            code = approve_batch(_guard(config), batch, who=_who(), fmt=fmt)
        except EvacuateUsageError as exc:
            fail(str(exc), 2)
        except WatchdogError as exc:
            fail(str(exc))
        sys.exit(code)
    assert entry_id is not None
    try:
        decision = _guard(config).approve(entry_id, _who())
    except WatchdogError as exc:
        fail(str(exc))
    _print_decision_and_exit(decision, fmt)


@repairs_group.command("deny")
@config_option
@click.argument("entry_id", type=int)
@click.option("--why", default="", help="Why, for the journal.")
@format_option
def repairs_deny(config_path: Path, entry_id: int, why: str, fmt: str) -> None:
    """Deny a pending repair; it will not run."""
    config = load(config_path)
    try:
        decision = _guard(config).deny(entry_id, _who(), why)
    except WatchdogError as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps({"id": decision.entry_id, "status": decision.status}))
        return
    click.echo(f"repair #{decision.entry_id}: {decision.status}")


@repairs_group.command("ack")
@config_option
@click.argument("entry_id", type=int)
@click.option("--why", required=True, help="What was checked on the target, for the journal.")
@format_option
def repairs_ack(config_path: Path, entry_id: int, why: str, fmt: str) -> None:
    """Acknowledge an interrupted repair once its target was checked by hand.

    Its status stays interrupted (the journal keeps what happened); it no longer counts in
    bupwatch_repairs_open, so BupWatchInterruptedRepair resolves. A later successful run of the
    same repair on the same target acknowledges it by itself.
    """
    from bup_watchdog.journal import Journal
    from bup_watchdog.runner import open_state

    config = load(config_path)
    try:
        entry = Journal(open_state(config)).ack(entry_id, _who(), why)
    except WatchdogError as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(entry.as_dict()))
        return
    click.echo(
        f"repair #{entry.id} {entry.repair} on {entry.target}: interrupted, acknowledged by "
        f"{entry.acked_by}: {entry.ack_reason}"
    )
