"""What every ``bup-watchdog`` command shares: the options, the config, one-line errors.

Imported by ``--help`` and shell completion too, so it imports click and little else (each
command imports what it uses in its own body; see ``cli``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from bup_watchdog import logs
from bup_watchdog.errors import ConfigError

if TYPE_CHECKING:
    from bup_watchdog.config import Config
    from bup_watchdog.state import State

EXIT_UNKNOWN = 3
DEFAULT_CONFIG = Path("/etc/bup-watchdog/config.toml")

log = logging.getLogger("bup_watchdog")


def fail(message: str, code: int = EXIT_UNKNOWN) -> NoReturn:
    """One line for the operator on stderr (a JSON object with --log-format json), then exit."""
    if logs.current_format() == "json":  # stderr stays one JSON object a line
        log.error(message, extra={"exit_code": code})
    else:
        click.echo(f"bup-watchdog: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    """One warning line on stderr (a JSON object with --log-format json); the command goes on."""
    if logs.current_format() == "json":
        log.warning(message)
    else:
        click.echo(f"bup-watchdog: {message}", err=True)


def deprecated(new: str) -> Callable[[click.Context, click.Parameter, object], object]:
    """The callback of a hidden option kept for old command lines: it warns and passes on."""

    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value:
            warn(f"{param.opts[0]} is deprecated: use {new}")
        return value

    return callback


class BadUsage(click.UsageError):
    """A command line the command cannot use, for a command whose 2 means something else."""

    exit_code = EXIT_UNKNOWN


class BadUsageExits3(click.Command):
    """A command whose exit 2 is an answer (``check``: CRITICAL to Nagios; ``repair``: the guard
    refused): a command line it cannot use exits 3 (UNKNOWN, could not run), not click's 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise BadUsage(exc.format_message(), exc.ctx) from None


class _Formats(click.Choice[str]):
    """``--format text|json`` of every command that prints for people or for a program; 'table',
    the old name of text (check, repairs list), is still taken."""

    def __init__(self) -> None:
        super().__init__(["text", "json"])

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        if value == "table":
            warn("--format table is deprecated: use --format text")
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


def load(config_path: Path) -> Config:
    """Load and validate the config, or exit 3 with every problem listed."""
    from bup_watchdog.checks import settings_models
    from bup_watchdog.config_load import load_config

    try:
        return load_config(config_path, settings_models())
    except ConfigError as exc:
        fail(str(exc))


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


def existing_state(config: Config) -> State | None:
    """The state database if there is one (None: nothing was recorded yet). Read-only commands
    use it so that they do not create one (an empty state directory in the wrong place)."""
    from bup_watchdog.runner import open_state

    if not (config.state.directory / "state.db").exists():
        return None
    return open_state(config)
