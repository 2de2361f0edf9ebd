"""The ``bup-watchdog`` command line.

Exit codes follow the Nagios convention so existing schedulers can use ``check`` as it is:
0 all ok, 1 warnings, 2 critical, 3 the watchdog itself could not run.
``config check`` exits 2 when the file is invalid.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import click

from bup_watchdog import __version__, logs
from bup_watchdog.cli_options import (
    BadUsageExits3,
    config_option,
    deprecated,
    existing_state,
    fail,
    format_option,
    load,
    only_option,
    server_option,
)
from bup_watchdog.cli_repairs import (
    evacuate_cmd,
    rebuild_cmd,
    repair_cmd,
    repairs_group,
)
from bup_watchdog.errors import ConfigError, WatchdogError
from bup_watchdog.malloc_arenas import tune_malloc

# Every command imports what it uses in its own body: `--help`, `check --help` and shell
# completion load click and little else (issue 15: the web server, paramiko, Cassandra, the
# reports and pydantic took a second before any command ran). bench/startup.py measures it.
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from bup_watchdog.config import Config
    from bup_watchdog.model import HostFacts, Server
    from bup_watchdog.state import State
    from bup_watchdog.sweep import SweepResult

MEMORY = Path(":memory:")  # an SQLite database that is no file


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


for _command in (repair_cmd, rebuild_cmd, evacuate_cmd, repairs_group):
    main.add_command(_command)


@main.command("check", cls=BadUsageExits3)
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
        fail(f"no such check: {', '.join(unknown)} (known: {', '.join(sorted(registry()))})")
    try:
        state = None if no_state else open_state(config)
        runner = Runner(config, state, inventory_source(config))
        result = runner.run_once(only=only, servers=server, deep=deep, force=True)
    except ValueError as exc:
        fail(str(exc))
    except WatchdogError as exc:
        fail(str(exc))
    if result is None:
        fail("no check is enabled in the config; nothing to do")
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
        fail(str(exc))
    sys.exit(code)


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
@click.option("--check", "old_checks", multiple=True, hidden=True, callback=deprecated("--only"))
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
        state = open_state(config) if fresh else existing_state(config) or State(MEMORY)
        servers = servers_from_state(state)
        if not servers and not fresh:  # nothing cached yet: names from the source, if it answers
            try:
                servers = dict(inventory_source(config).load().servers)
            except WatchdogError:
                servers = {}
        if fresh:
            result = _fresh_sweep(config, state, tuple(server), wanted_checks)
            if result is None:
                fail("no check is enabled in the config; nothing to sweep")
            servers = dict(result.inventory.servers)
        scope = Scope(resolve_servers(server, servers, state), wanted_checks)
        settings = ReportSettings.from_config(config, max_projects=max_projects)
        report = build_report(
            state, servers=servers, settings=settings, scope=scope, since_seconds=since_seconds
        )
        text = render(report, fmt)
    except ValueError as exc:
        fail(str(exc))
    except WatchdogError as exc:
        fail(str(exc))
    except sqlite3.Error as exc:
        fail(f"cannot read the state database: {exc}")
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
        fail(f"cannot write the report to {path}: {exc.strerror or exc}")
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
        fail(str(exc), 2)
    except WatchdogError as exc:
        fail(str(exc))
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
    from bup_watchdog.config_load import file_problems, load_config
    from bup_watchdog.inventory.file import FileInventory

    given = click.get_current_context().get_parameter_source("config_path")
    named_twice = path is not None and given is not click.core.ParameterSource.DEFAULT
    if named_twice and path is not None and path.resolve() != config_path.resolve():
        fail(f"two configs named: {path} and {config_path} (-c/$BUP_WATCHDOG_CONFIG)", 2)
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
    from bup_watchdog.config_example import example_config

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
        fail("--force goes with --dest", 2)
    if dest is None:
        for f in shipped_files():
            kind = "program" if f.executable else "file"
            click.echo(f"{f.name}\t{kind}\t{f.about}")
        return
    try:
        written = copy_files(dest, force=force)
    except FilesExistError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot copy the files to {dest}: {exc.strerror or exc}", 1)
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
        fail(str(exc))
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
        fail(str(exc))
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    click.echo(f"keyspace {db.keyspace} at {db.where}: schema version {LATEST} ({done})")


if __name__ == "__main__":
    main(prog_name="bup-watchdog")
