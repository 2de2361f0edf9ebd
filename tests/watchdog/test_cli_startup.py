"""`bup-watchdog check` as a scheduler runs it pays its start-up every time (issue 20, end to end):
it loads only what a sweep needs, and what it skips still works when it is needed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from bup_watchdog.config import Config
from bup_watchdog.model import Finding, Severity
from bup_watchdog.output import make_console, print_json, write_json
from bup_watchdog.runner import Runner, inventory_source
from bup_watchdog.sandbox.fleet import SandboxFleet

# Libraries some other command needs, never a sweep: the Cassandra driver (a file inventory
# here), the reports' templates, the daemon's scheduler and web server, rich (JSON is written
# without it), and invoke (paramiko's ssh_config `Match exec` only).
NOT_FOR_A_SWEEP = {
    "cassandra",
    "jinja2",
    "apscheduler",
    "fastapi",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "rich",
}


def test_check_on_a_fleet_loads_no_cassandra_templates_scheduler_web_server_rich_or_invoke(
    demo_fleet: SandboxFleet,
) -> None:
    code = f"""
import atexit, json, sys
import bup_watchdog.cli as cli

def loaded():
    print(json.dumps({{
        "heavy": sorted(m for m in sys.modules if m.split(".")[0] in {sorted(NOT_FOR_A_SWEEP)!r}),
        "invoke": sorted(m for m in sys.modules if m.startswith("invoke.")),
        "paramiko": "paramiko.transport" in sys.modules,
    }}), file=sys.stderr)

atexit.register(loaded)
cli.main(["check", "-c", {str(demo_fleet.config_path)!r}, "--format", "json"], prog_name="x")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2, proc.stderr  # the demo fleet's planted faults: a real sweep
    assert json.loads(proc.stdout)["ssh_sessions"] == len(demo_fleet.hosts)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {
        "heavy": [],
        "invoke": [],
        "paramiko": True,
    }


def test_an_ssh_config_match_exec_still_runs_through_invoke_once_it_is_used() -> None:
    code = """
import sys
import bup_watchdog.transport.ssh
import paramiko
before = "invoke.collection" in sys.modules
config = paramiko.SSHConfig.from_text("Match exec true\\n  User from-exec\\n")
print(before, config.lookup("h").get("user"), "invoke.collection" in sys.modules)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["False", "from-exec", "True"]


@pytest.mark.parametrize("message", ["plain", "ünïcode ✓ ∆ 東京, tab\t, del \x7f, c1 \x85 <b>"])
def test_json_written_without_rich_is_byte_for_byte_what_rich_printed(
    demo_config: Config, capsys: pytest.CaptureFixture[str], message: str
) -> None:
    result = Runner(demo_config, None, inventory_source(demo_config)).run_once(force=True)
    assert result is not None and result.findings
    odd = Finding("save_log_size", result.findings[0].server_id, Severity.WARNING, message)
    result = dataclasses.replace(result, findings=[*result.findings, odd])
    capsys.readouterr()
    print_json(result, make_console(json_output=True))
    by_rich = capsys.readouterr().out
    write_json(result)
    assert capsys.readouterr().out == by_rich
