"""How sweep results look on a terminal (a table) or to a script (JSON)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from bup_watchdog.model import Severity

# rich is imported where a table is printed: `check --format json` runs without it (issue 20:
# the end-to-end `check` pays its start-up every time).
if TYPE_CHECKING:
    from rich.console import Console

    from bup_watchdog.sweep import SweepResult


def make_console(*, json_output: bool = False) -> Console:
    """A console for our output: wide tables when piped (rich would fold them at 80 columns)."""
    from rich.console import Console

    probe = Console()
    if json_output:
        return Console(soft_wrap=True)
    return probe if probe.is_terminal else Console(width=200)


_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.UNKNOWN: "magenta"}


def result_as_dict(result: SweepResult) -> dict[str, Any]:
    """The sweep as JSON-ready data: summary, per-host status, findings."""
    servers = result.inventory.servers
    return {
        "status": result.worst.label,
        "exit_code": int(result.worst),
        "started": result.started,
        "seconds": round(result.seconds, 3),
        "ssh_sessions": result.ssh_sessions,
        "inventory": {"source": result.inventory.source, "stale": result.inventory.stale},
        "hosts": {
            sid: {
                "name": servers[sid].label if sid in servers else sid,
                "probed": f.probed,
                "failure": f.failure.value if f.failure else None,
                "repos": len(f.repos),
                "seconds": round(f.duration_seconds, 3),
                "ssh_sessions": f.ssh_sessions,
            }
            for sid, f in sorted(result.facts.items())
        },
        "checks": {
            name: {"seconds": round(run.seconds, 4), "findings": run.findings, "error": run.error}
            for name, run in sorted(result.checks.items())
        },
        "findings": [f.as_dict() for f in result.findings],
        "watchdog_problems": dict(result.local_faults),
        "not_judged": list(result.not_judged),
    }


def print_json(result: SweepResult, console: Console) -> None:
    console.print_json(json.dumps(result_as_dict(result)), highlight=False)


def write_json(result: SweepResult) -> None:
    """The sweep as JSON on stdout, byte for byte what ``print_json`` prints, without rich."""
    sys.stdout.write(json.dumps(result_as_dict(result), indent=2, ensure_ascii=False) + "\n")


def print_table(result: SweepResult, console: Console) -> None:
    """Findings as a table, then a one-line summary an operator can read at a glance."""
    from rich.markup import escape
    from rich.table import Table

    servers = result.inventory.servers
    if result.findings:
        table = Table(title="Findings", title_justify="left", expand=False)
        for col in ("severity", "check", "server", "project", "message"):
            table.add_column(col, overflow="fold")
        for f in result.findings:
            server = servers.get(f.server_id)
            table.add_row(
                f"[{_STYLE.get(f.severity, '')}]{f.severity.label}[/]",
                f.check + (f"/{f.code}" if f.code else ""),
                server.label if server else f.server_id,
                f.project_id or "",
                f.message,
            )
        console.print(table)
    for name, run in sorted(result.checks.items()):
        if run.error:
            console.print(f"[magenta]check {name} failed: {run.error}[/]")
    counts = {s: sum(1 for f in result.findings if f.severity is s) for s in Severity}
    hosts = len(result.facts) + result.unswept
    probed = sum(1 for f in result.facts.values() if f.probed)
    repos = sum(len(f.repos) for f in result.facts.values())
    console.print(
        f"{result.worst.label.upper()}: {counts[Severity.CRITICAL]} critical, "
        f"{counts[Severity.WARNING]} warning; {probed}/{hosts} hosts probed, {repos} repositories, "
        f"{result.ssh_sessions} SSH sessions, {result.seconds:.2f} s"
    )
    # After the status line (a scheduler reads the first line): why the status is UNKNOWN.
    for kind, message in sorted(result.local_faults.items()):
        console.print(f"[magenta]watchdog problem ({kind}): {escape(message)}[/]", highlight=False)
    for reason in result.not_judged:
        console.print(f"[magenta]not judged: {escape(reason)}[/]", highlight=False)
