"""The ``bup-watchdog`` command line.

Exit codes follow the Nagios convention so existing schedulers can use ``check`` as it is:
0 all ok, 1 warnings, 2 critical, 3 the watchdog itself could not run.
``config check`` exits 2 when the file is invalid.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NoReturn

import click

from bup_watchdog import __version__, logs
from bup_watchdog.errors import ConfigError, WatchdogError
from bup_watchdog.malloc_arenas import tune_malloc

# Every command imports what it uses in its own body: `--help`, `check --help` and shell
# completion load click and little else (issue 15: the web server, paramiko, Cassandra, the
# reports and pydantic took a second before any command ran). bench/startup.py measures it.
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from bup_watchdog.config import Config
    from bup_watchdog.guard import Decision, Guard
    from bup_watchdog.model import HostFacts, Inventory, Server
    from bup_watchdog.state import State
    from bup_watchdog.sweep import SweepResult

EXIT_UNKNOWN = 3
DEFAULT_CONFIG = Path("/etc/bup-watchdog/config.toml")
MEMORY = Path(":memory:")  # an SQLite database that is no file

log = logging.getLogger("bup_watchdog")


def _fail(message: str, code: int = EXIT_UNKNOWN) -> NoReturn:
    """One line for the operator on stderr (a JSON object with --log-format json), then exit."""
    if logs.current_format() == "json":  # stderr stays one JSON object a line
        log.error(message, extra={"exit_code": code})
    else:
        click.echo(f"bup-watchdog: {message}", err=True)
    sys.exit(code)


def _warn(message: str) -> None:
    """One warning line on stderr (a JSON object with --log-format json); the command goes on."""
    if logs.current_format() == "json":
        log.warning(message)
    else:
        click.echo(f"bup-watchdog: {message}", err=True)


def _deprecated(new: str) -> Callable[[click.Context, click.Parameter, object], object]:
    """The callback of a hidden option kept for old command lines: it warns and passes on."""

    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value:
            _warn(f"{param.opts[0]} is deprecated: use {new}")
        return value

    return callback


class _Formats(click.Choice[str]):
    """``--format text|json`` of every command that prints for people or for a program; 'table',
    the old name of text (check, repairs list), is still taken."""

    def __init__(self) -> None:
        super().__init__(["text", "json"])

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        if value == "table":
            _warn("--format table is deprecated: use --format text")
            return "text"
        return str(super().convert(value, param, ctx))


format_option = click.option(
    "--format",
    "fmt",
    type=_Formats(),
    default="text",
    show_default=True,
    help="text for people, json for programs.",
)
server_option = click.option(
    "--server",
    multiple=True,
    metavar="ID|NAME",
    help="Only this server, by id or name (repeatable).",
)
only_option = click.option(
    "--only",
    "checks",
    multiple=True,
    metavar="CHECK",
    help="Only this check (repeatable). Default: every enabled check.",
)


class _NagiosCommand(click.Command):
    """``check``: a command line it cannot use is UNKNOWN (3) to Nagios, not click's 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _UnknownUsage(exc.format_message(), exc.ctx) from None


class _UnknownUsage(click.UsageError):
    exit_code = EXIT_UNKNOWN


def load(config_path: Path) -> Config:
    """Load and validate the config, or exit 3 with every problem listed."""
    from bup_watchdog.checks import settings_models
    from bup_watchdog.config import load_config

    try:
        return load_config(config_path, settings_models())
    except ConfigError as exc:
        _fail(str(exc))


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="BUP_WATCHDOG_CONFIG",
    help="The TOML config file (env: BUP_WATCHDOG_CONFIG).",
)


class _Commands(click.Group):
    """The command group; the commands in ``lazy`` are imported only when they run (``demo``
    builds on the daemon and the sandbox), their help line kept here for ``--help``."""

    #: name -> (module, attribute, the command's short help, as ``--help`` lists it)
    lazy: ClassVar[dict[str, tuple[str, str, str]]] = {
        "demo": (
            "bup_watchdog.demo",
            "demo",
            "Build a sandbox fleet with planted faults, sweep it, print findings, serve /metrics.",
        ),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, attr, _ = self.lazy[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command), f"{module}.{attr} is no click command"
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a lazy command not loaded yet is listed with its help line here."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.lazy and name not in self.commands:
                stand_in = click.Command(name, help=self.lazy[name][2])
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bup-watchdog")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output: -v info from every part, -vv debug and SSH details. Without it: "
    "warnings and errors, and `run` writes one line per sweep and per repair decision.",
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    envvar="BUP_WATCHDOG_LOG_FORMAT",
    help="Log lines on stderr: text, or one JSON object a line (time, level, logger, event, "
    "server, project, repair_id…) (env: BUP_WATCHDOG_LOG_FORMAT).",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, log_format: str) -> None:
    """Watch a bup/ZFS project-storage fleet: gather facts over SSH, check them, report.

    Start with `bup-watchdog demo` to see it work on a sandbox fleet built on this machine.
    Shell completion: eval "$(_BUP_WATCHDOG_COMPLETE=bash_source bup-watchdog)" (zsh_source,
    fish_source for the other shells).
    """
    tune_malloc()  # before any thread starts
    logs.setup(log_format, verbose, daemon=ctx.invoked_subcommand == "run")
    # The Cassandra driver logs a traceback per attempt when no node answers (two for one
    # refused connection); CassandraSession says it in one line. Its own lines are for -vv.
    logging.getLogger("cassandra").setLevel(logging.CRITICAL if verbose < 2 else logging.NOTSET)


@main.command("check", cls=_NagiosCommand)
@config_option
@only_option
@server_option
@format_option
@click.option(
    "--deep",
    is_flag=True,
    help="Also deep-check a budget of repositories per host (git fsck + bup ls master).",
)
@click.option(
    "--no-state",
    is_flag=True,
    help="Do not read or write the state (no history, no inventory cache, no deep-check book).",
)
def check_cmd(
    config_path: Path,
    checks: tuple[str, ...],
    server: tuple[str, ...],
    fmt: str,
    deep: bool,
    no_state: bool,
) -> None:
    """Run one sweep now and print the findings.

    Exit code: 0 ok, 1 warnings, 2 critical, 3 the watchdog could not run or judge, or a
    command line it cannot use (Nagios convention). The sweep is recorded in the state.
    """
    from bup_watchdog.checks import registry
    from bup_watchdog.runner import Runner, inventory_source, open_state

    only = checks
    config = load(config_path)
    unknown = [c for c in only if c not in registry()]
    if unknown:
        _fail(f"no such check: {', '.join(unknown)} (known: {', '.join(sorted(registry()))})")
    try:
        state = None if no_state else open_state(config)
        runner = Runner(config, state, inventory_source(config))
        result = runner.run_once(only=only, servers=server, deep=deep, force=True)
    except ValueError as exc:
        _fail(str(exc))
    except WatchdogError as exc:
        _fail(str(exc))
    if result is None:
        _fail("no check is enabled in the config; nothing to do")
    show(result, fmt)
    sys.exit(int(result.worst))


@main.command("run")
@config_option
@click.option("--once", is_flag=True, help="Do one sweep (deep pass if due), then exit.")
def run_cmd(config_path: Path, once: bool) -> None:
    """Run the daemon: sweep on the configured schedule and serve /metrics, /healthz, /ready.

    SIGTERM or Ctrl-C lets the current sweep finish, then exits 0. With --once, the exit code is
    the sweep's Nagios status (3 when it could not run).
    """
    from bup_watchdog.daemon import Daemon

    config = load(config_path)
    try:
        daemon = Daemon(config)
        code = daemon.run(once=once)
    except (WatchdogError, RuntimeError) as exc:
        _fail(str(exc))
    sys.exit(code)


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


def _parse_target(inventory: Inventory, target: str) -> tuple[str, str | None]:
    """'SERVER' or 'SERVER/PROJECT', the server by id or name."""
    server, _, project = target.partition("/")
    by_name = {s.name: s.server_id for s in inventory.servers.values() if s.name}
    sid = by_name.get(server, server.lower())
    return sid, (project.lower() if project else None)


def _print_decision(decision: Decision, fmt: str) -> None:
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
        return
    click.echo(f"repair #{decision.entry_id}: {decision.status} — {decision.message}")
    for i, step in enumerate(decision.plan, 1):
        click.echo(f"  {i}. on {step['on']}: {step['command']}")
        click.echo(f"     ({step['description']})")


_DECISION_EXIT = {"succeeded": 0, "dry_run": 0, "pending": 0, "conflict": 1, "refused": 2}


@main.command("repair")
@config_option
@click.argument("name")
@click.argument("target")
@click.option("--dry-run", is_flag=True, help="Plan only (the default).")
@click.option("--execute", is_flag=True, help="Run it now (counts as approval).")
@click.option("--why", default="", help="Why, for the journal.")
@click.option("--reason", hidden=True, default="", callback=_deprecated("--why"))
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
    Exit code: 0 done (or planned), 1 failed or stopped on a conflict, 2 refused, 3 could not run.
    """
    from bup_watchdog.repairs.base import RepairRequest

    if dry_run and execute:
        raise click.UsageError("--dry-run and --execute contradict each other: give one")
    if unfence and name != "fence_host":
        raise click.UsageError(f"--unfence goes with fence_host only, not {name}")
    if why and reason:
        raise click.UsageError("--why and --reason (its old name) both given: give --why")
    if (move_to or allow_experimental) and name != "move_project":
        raise click.UsageError(
            f"--to and --allow-experimental go with move_project only, not {name}"
        )
    if name == "move_project" and not move_to:
        raise click.UsageError("move_project needs --to SERVER (the new master)")
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
        _fail(str(exc))
    _print_decision(decision, fmt)
    sys.exit(_DECISION_EXIT.get(decision.status, 1))


@main.command("rebuild")
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
    try:
        options = parse_command(opts, who=_who())
        code = run_command(config, host, options, _guard(config))
    except RebuildUsageError as exc:
        _fail(str(exc), 2)
    except WatchdogError as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command("evacuate")
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
    try:
        code = run_command(config, host, options, _guard(config))
    except EvacuateUsageError as exc:
        _fail(str(exc), 2)
    except WatchdogError as exc:
        _fail(str(exc))
    sys.exit(code)


@main.group("repairs")
def repairs_group() -> None:
    """List the repair journal; approve or deny pending repairs; acknowledge interrupted ones."""


def _existing_state(config: Config) -> State | None:
    """The state database if there is one (None: nothing was recorded yet). Read-only commands
    use it so that they do not create one (an empty state directory in the wrong place)."""
    from bup_watchdog.runner import open_state

    if not (config.state.directory / "state.db").exists():
        return None
    return open_state(config)


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
        state = _existing_state(config)
        entries = Journal(state).entries(status=status, limit=limit) if state else []
    except WatchdogError as exc:
        _fail(str(exc))
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
            _fail(str(exc), 2)
        except WatchdogError as exc:
            _fail(str(exc))
        sys.exit(code)
    assert entry_id is not None
    try:
        decision = _guard(config).approve(entry_id, _who())
    except WatchdogError as exc:
        _fail(str(exc))
    _print_decision(decision, fmt)
    sys.exit(_DECISION_EXIT.get(decision.status, 1))


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
        _fail(str(exc))
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
        _fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(entry.as_dict()))
        return
    click.echo(
        f"repair #{entry.id} {entry.repair} on {entry.target}: interrupted, acknowledged by "
        f"{entry.acked_by}: {entry.ack_reason}"
    )


_AUDIT_EXT = {"html": "html", "md": "md", "json": "json"}


class _SweepProgress:
    """Progress of an audit's fresh sweep on stderr: a bar on a terminal, log lines otherwise."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.total = total
        self.done = 0
        self.progress: Progress | None = None
        if self.console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]sweeping[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task: TaskID = self.progress.add_task(f"{total} hosts", total=total)

    def __enter__(self) -> _SweepProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def host_done(self, server: Server, facts: HostFacts) -> None:
        from rich.markup import escape

        self.done += 1
        if facts.probed:
            what = f"{len(facts.repos)} repositories in {facts.duration_seconds:.2f} s"
        else:
            failure = facts.failure.value if facts.failure else "incomplete"
            what = f"FAILED ({failure}): {facts.failure_message or 'no facts'}"
        if self.progress is not None:
            mark = "[green]✓[/]" if facts.probed else "[red]✗[/]"
            self.progress.console.print(
                f"{mark} {escape(server.label)}: {escape(what)}", highlight=False
            )
            self.progress.update(self.task, advance=1, description=escape(server.label))
        else:
            click.echo(f"audit: [{self.done}/{self.total}] {server.label}: {what}", err=True)


def _fresh_sweep(
    config: Config, state: State, servers: tuple[str, ...], checks: tuple[str, ...]
) -> SweepResult | None:
    """Sweep now (every enabled check due) with progress per host, and record it."""
    from bup_watchdog.checks import registry
    from bup_watchdog.runner import Runner, inventory_source, load_inventory
    from bup_watchdog.sweep import select_servers

    runner = Runner(config, state, inventory_source(config))
    inventory = load_inventory(runner.source, state)
    total = len(select_servers(inventory, servers))
    only = tuple(c for c in checks if c in registry())
    with _SweepProgress(total) as progress:
        return runner.run_once(
            only=only, servers=servers, on_host_done=progress.host_done, force=True
        )


@main.command("audit")
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(_AUDIT_EXT)),
    default="html",
    show_default=True,
    help="html: one self-contained page; md: Markdown; json: the data.",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Where to write the report ('-': stdout). Default: bupwatch-audit-<UTC time>.<ext> "
    "in the current directory.",
)
@server_option
@only_option
@click.option("--check", "old_checks", multiple=True, hidden=True, callback=_deprecated("--only"))
@click.option(
    "--since",
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="Window of history: repairs journaled and findings opened or resolved in it (30m, 24h, "
    "7d, 2w). Open findings are always shown.",
)
@click.option("--fresh", is_flag=True, help="Sweep the fleet first (every enabled check).")
@click.option(
    "--max-projects",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="List at most this many failing projects one by one (the worst); count the rest.",
)
def audit_cmd(
    config_path: Path,
    fmt: str,
    output: str | None,
    server: tuple[str, ...],
    checks: tuple[str, ...],
    old_checks: tuple[str, ...],
    since: str,
    fresh: bool,
    max_projects: int,
) -> None:
    """Write an audit report of the fleet (or part of it) from the watchdog's state.

    Summary verdict, hosts, every failing project with the repair that answers it, replication
    lag, save logs, deep-check coverage, the repair journal and the watchdog's own errors.
    Prints the path written. Exit code: 0 written, 3 the report could not be made.
    """
    import sqlite3

    from bup_watchdog.report import (
        ReportSettings,
        Scope,
        build_report,
        check_names,
        history_window,
        render,
        resolve_servers,
        servers_from_state,
    )
    from bup_watchdog.runner import inventory_source, open_state
    from bup_watchdog.state import State

    config = load(config_path)
    try:
        since_seconds = history_window(since)
        wanted_checks = check_names((*checks, *old_checks))
        # Without --fresh the report only reads: no state yet is an empty one, not a new file.
        state = open_state(config) if fresh else _existing_state(config) or State(MEMORY)
        servers = servers_from_state(state)
        if not servers and not fresh:  # nothing cached yet: names from the source, if it answers
            try:
                servers = dict(inventory_source(config).load().servers)
            except WatchdogError:
                servers = {}
        if fresh:
            result = _fresh_sweep(config, state, tuple(server), wanted_checks)
            if result is None:
                _fail("no check is enabled in the config; nothing to sweep")
            servers = dict(result.inventory.servers)
        scope = Scope(resolve_servers(server, servers, state), wanted_checks)
        settings = ReportSettings.from_config(config, max_projects=max_projects)
        report = build_report(
            state, servers=servers, settings=settings, scope=scope, since_seconds=since_seconds
        )
        text = render(report, fmt)
    except ValueError as exc:
        _fail(str(exc))
    except WatchdogError as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:
        _fail(f"cannot read the state database: {exc}")
    if output == "-":
        click.echo(text, nl=False)
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(output) if output else Path(f"bupwatch-audit-{stamp}.{_AUDIT_EXT[fmt]}")
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        _fail(f"cannot write the report to {path}: {exc.strerror or exc}")
    summary = report["summary"]
    click.echo(
        f"audit: {summary['verdict'].upper()}, {summary['failing_projects']} failing projects, "
        f"{summary['watchdog_errors']} watchdog problems; {len(text) / 1000:.0f} kB",
        err=True,
    )
    click.echo(str(path.resolve()))


@main.group("archive")
def archive_group() -> None:
    """Audit offline archives of bup repositories (copies that are in no inventory)."""


@archive_group.command("audit")
@config_option
@click.argument("path")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Repositories checked at once.",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The progress journal (default: one per archive in the state directory).",
)
@click.option("--restart", is_flag=True, help="Forget earlier runs' results; check everything.")
@click.option(
    "--format", "fmt", type=click.Choice(["html", "md", "json"]), default="html", show_default=True
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Report file ('-': stdout). Default: "
    "bupwatch-archive-audit-<UTC time>.<ext> in the current directory.",
)
@click.option(
    "--max-lag",
    default="48h",
    show_default=True,
    metavar="DURATION",
    help="An archived copy further behind its master than this is stale.",
)
@click.option(
    "--budget",
    metavar="DURATION",
    help="Start no repository after this long (at least one per run); the next run resumes.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Probe the masters for their newest save now (default: the inventory's bup_last_save).",
)
def archive_audit(config_path: Path, path: str, **opts: object) -> None:
    """Deep-check every repository of an archive at PATH or HOST:PATH (HOST: an inventory server
    or an SSH host), resumably; report the broken ones and how far each copy lags its master.

    Exit code: 0 all good, 1 broken or stale copies, 2 bad usage, 3 could not run (or not done).
    """
    from bup_watchdog.archive import ArchiveUsageError, AuditOptions, parse_duration, run_command

    config = load(config_path)
    try:
        budget, max_lag = opts.pop("budget"), parse_duration(str(opts.pop("max_lag")))
        options = AuditOptions(
            **opts,  # type: ignore[arg-type]
            max_lag=max_lag,
            budget=parse_duration(str(budget)) if budget is not None else None,
        )
        code = run_command(config, path, options)
    except ArchiveUsageError as exc:
        _fail(str(exc), 2)
    except WatchdogError as exc:
        _fail(str(exc))
    sys.exit(code)


def show(result: SweepResult, fmt: str) -> None:
    """The findings of a sweep on stdout: a table, or JSON (written without rich: start-up)."""
    from bup_watchdog.output import make_console, print_table, write_json

    if fmt == "json":
        write_json(result)
    else:
        print_table(result, make_console())


@main.group("config")
def config_group() -> None:
    """Validate or generate the configuration file."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
@config_option
def config_check(path: Path | None, config_path: Path) -> None:
    """Validate a config file, the files it names (known_hosts, key, API token) and its inventory
    file; list every problem at once. Exit 2 if there is any.

    The file is PATH, or -c/--config, or $BUP_WATCHDOG_CONFIG, like every other command.
    """
    import tomllib

    from bup_watchdog.checks import settings_models
    from bup_watchdog.config import file_problems, load_config
    from bup_watchdog.inventory.file import FileInventory

    given = click.get_current_context().get_parameter_source("config_path")
    named_twice = path is not None and given is not click.core.ParameterSource.DEFAULT
    if named_twice and path is not None and path.resolve() != config_path.resolve():
        _fail(f"two configs named: {path} and {config_path} (-c/$BUP_WATCHDOG_CONFIG)", 2)
    path = path or config_path
    problems: list[str] = []
    inventory: Path | None = None
    try:
        config = load_config(path, settings_models())
        if config.inventory.source == "file":
            inventory = config.inventory.file
    except ConfigError as exc:
        problems += exc.problems
    try:  # the raw data: files named and the inventory are checked even when the schema fails
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = None  # reported by load_config
    if data is not None:
        problems += file_problems(data, path.parent.resolve())
        raw_inventory = data.get("inventory")
        if inventory is None and isinstance(raw_inventory, dict):
            raw_file = raw_inventory.get("file")
            if raw_inventory.get("source", "file") == "file" and isinstance(raw_file, str):
                inventory = (path.parent / Path(raw_file).expanduser()).resolve()
    invalid = [ConfigError(str(path), problems)] if problems else []
    counts = ""
    if inventory is not None:
        try:
            inv = FileInventory(inventory).load()
            counts = f" ({len(inv.servers)} servers, {len(inv.projects)} projects in {inventory})"
        except ConfigError as exc:
            invalid.append(exc)
    if invalid:
        for problem in invalid:
            click.echo(str(problem), err=True)
        sys.exit(2)
    click.echo(f"{path}: OK{counts}")


@config_group.command("example")
def config_example() -> None:
    """Print a commented example config with every key and its default."""
    from bup_watchdog.checks import settings_models
    from bup_watchdog.config import example_config

    click.echo(example_config(settings_models()), nl=False)


@main.command("files")
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Copy the files under this directory (created if needed) instead of listing them.",
)
@click.option("--force", is_flag=True, help="With --dest: overwrite files that differ.")
def files_cmd(dest: Path | None, force: bool) -> None:
    """List or copy the operations files shipped in the package: rules, dashboards, systemd unit,
    sudoers example, config example, and the SSH gate and preflight for the storage hosts."""
    from bup_watchdog.files import FilesExistError, copy_files, shipped_files

    if force and dest is None:
        _fail("--force goes with --dest", 2)
    if dest is None:
        for f in shipped_files():
            kind = "program" if f.executable else "file"
            click.echo(f"{f.name}\t{kind}\t{f.about}")
        return
    try:
        written = copy_files(dest, force=force)
    except FilesExistError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"cannot copy the files to {dest}: {exc.strerror or exc}", 1)
    for path in written:
        click.echo(str(path))
    click.echo(f"{len(written)} files copied to {dest}", err=True)


@main.group("inventory")
def inventory_group() -> None:
    """Move the inventory between a file and Cassandra."""


@inventory_group.command("load")
@config_option
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--replication-factor",
    type=click.IntRange(1, 10),
    default=None,
    help="Create the keyspace when it is missing (SimpleStrategy, N copies): for a test or demo "
    "cluster. Without it a missing keyspace is an error.",
)
def inventory_load(config_path: Path, path: Path, replication_factor: int | None) -> None:
    """Write a file inventory (TOML or JSON) into Cassandra, as [inventory.cassandra] says.

    The keyspace's schema is migrated first (the fleet's tables and the watchdog's, created where
    missing). Servers and projects are upserted; nothing is deleted. Exit 0 done, 3 could not.
    """
    from bup_watchdog.inventory.cassandra import CassandraInventory, write_inventory
    from bup_watchdog.inventory.file import FileInventory

    config = load(config_path)
    try:
        inventory = FileInventory(path, default_user=config.ssh.user).load()
        source = CassandraInventory.from_config(config)
        with source.db as db:
            stats = write_inventory(db, inventory, replication_factor=replication_factor)
    except WatchdogError as exc:
        _fail(str(exc))
    migrated = (
        f"; schema migrations applied: {', '.join(map(str, stats.migrations))}"
        if stats.migrations
        else ""
    )
    click.echo(
        f"{stats.servers} servers and {stats.projects} projects written to keyspace "
        f"{source.db.keyspace} at {source.db.where} in {stats.seconds:.1f} s{migrated}"
    )


@inventory_group.command("migrate")
@config_option
@click.option(
    "--replication-factor",
    type=click.IntRange(1, 10),
    default=None,
    help="Create the keyspace when it is missing (SimpleStrategy, N copies): for a test or demo "
    "cluster. Without it a missing keyspace is an error.",
)
def inventory_migrate(config_path: Path, replication_factor: int | None) -> None:
    """Bring the Cassandra keyspace of [inventory.cassandra] to the latest schema.

    Versioned migrations, each applied once and recorded in bupwatch_schema_migrations: the
    fleet's tables where missing (never altered), then the watchdog's own (bupwatch_servers,
    bupwatch_members, bupwatch_leases, bupwatch_fences). Safe to run again. Run it once, from one
    place, before starting the watchdogs (they never change the schema themselves: concurrent
    schema changes from several nodes are what Cassandra handles worst). Exit 0 done, 3 could not.
    """
    from bup_watchdog.inventory.cassandra import CassandraSession
    from bup_watchdog.inventory.cassandra_schema import LATEST, migrate
    from bup_watchdog.inventory.cassandra_shared import driver_errors

    config = load(config_path)
    base = config.path.parent if config.path is not None else None
    try:
        with CassandraSession(config.inventory.cassandra, base=base) as db:
            try:
                applied = migrate(db.session(), db.keyspace, replication_factor=replication_factor)
            except driver_errors() as exc:
                raise db.failed(exc, "migrating the schema") from None
    except WatchdogError as exc:
        _fail(str(exc))
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    click.echo(f"keyspace {db.keyspace} at {db.where}: schema version {LATEST} ({done})")


if __name__ == "__main__":
    main(prog_name="bup-watchdog")
