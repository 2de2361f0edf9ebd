"""The ``bup-watchdog`` command line.

Exit codes follow the Nagios convention so existing schedulers can use ``check`` as it is:
0 all ok, 1 warnings, 2 critical, 3 the watchdog itself could not run.
``config check`` exits 2 when the file is invalid.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

from checks import registry, settings_models
from watchdog import __version__
from watchdog.config import Config, example_config, load_config
from watchdog.daemon import Daemon
from watchdog.errors import ConfigError, WatchdogError
from watchdog.inventory.file import FileInventory
from watchdog.output import make_console, print_json, print_table
from watchdog.runner import Runner, inventory_source, open_state
from watchdog.sweep import SweepResult

EXIT_UNKNOWN = 3
DEFAULT_CONFIG = Path("/etc/bup-watchdog/config.toml")

log = logging.getLogger("watchdog")


def _fail(message: str, code: int = EXIT_UNKNOWN) -> NoReturn:
    click.echo(f"bup-watchdog: {message}", err=True)
    sys.exit(code)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL if verbose < 2 else logging.INFO)


def load(config_path: Path) -> Config:
    """Load and validate the config, or exit 3 with every problem listed."""
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bup-watchdog")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for SSH details).")
def main(verbose: int) -> None:
    """Watch a bup/ZFS project-storage fleet: gather facts over SSH, check them, report.

    Start with `bup-watchdog demo` to see it work on a sandbox fleet built on this machine.
    """
    _setup_logging(verbose)


@main.command("check")
@config_option
@click.option(
    "--only",
    multiple=True,
    metavar="CHECK",
    help="Run only this check (repeatable). Default: every enabled check.",
)
@click.option("--server", multiple=True, metavar="ID", help="Only this server, by id or name.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
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
    only: tuple[str, ...],
    server: tuple[str, ...],
    fmt: str,
    deep: bool,
    no_state: bool,
) -> None:
    """Run one sweep now and print the findings.

    Exit code: 0 ok, 1 warnings, 2 critical, 3 the watchdog could not run (Nagios convention).
    """
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
    config = load(config_path)
    try:
        daemon = Daemon(config)
        code = daemon.run(once=once)
    except (WatchdogError, RuntimeError) as exc:
        _fail(str(exc))
    sys.exit(code)


def show(result: SweepResult, fmt: str) -> None:
    console = make_console(json_output=fmt == "json")
    if fmt == "json":
        print_json(result, console)
    else:
        print_table(result, console)


@main.group("config")
def config_group() -> None:
    """Validate or generate the configuration file."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
def config_check(path: Path | None) -> None:
    """Validate a config file (and its inventory file); list every problem. Exit 2 if invalid."""
    path = path or DEFAULT_CONFIG
    try:
        config = load_config(path, settings_models())
        if config.inventory.source == "file" and config.inventory.file is not None:
            inv = FileInventory(config.inventory.file).load()
            click.echo(
                f"{path}: OK ({len(inv.servers)} servers, {len(inv.projects)} projects in "
                f"{config.inventory.file})"
            )
        else:
            click.echo(f"{path}: OK")
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@config_group.command("example")
def config_example() -> None:
    """Print a commented example config with every key and its default."""
    click.echo(example_config(settings_models()), nl=False)


# The demo lives in its own module; imported here so `--help` lists it.
from watchdog.demo import demo  # noqa: E402

main.add_command(demo)

if __name__ == "__main__":
    main()
