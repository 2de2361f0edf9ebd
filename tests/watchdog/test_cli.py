"""The command line as a scheduler or an operator uses it: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bup_watchdog.sandbox.fleet import SandboxFleet

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_check_exits_2_on_the_demo_fleet_and_prints_json_findings(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "--config", str(demo_fleet.config_path), "--format", "json")
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "critical"
    assert {f["check"] for f in data["findings"]} >= {"mount_sanity", "reachability"}
    assert data["ssh_sessions"] == len(demo_fleet.hosts)


def test_check_exits_1_when_only_warnings_are_found(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "-c", str(demo_fleet.config_path), "--only", "save_log_size")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "save_log_size" in proc.stdout


def test_check_exits_0_on_a_healthy_host(demo_fleet: SandboxFleet) -> None:
    proc = run(
        "check", "-c", str(demo_fleet.config_path), "--server", "h2", "--only", "mount_sanity"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")


def test_a_missing_config_is_a_one_line_error_and_exit_3(tmp_path: Path) -> None:
    proc = run("check", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 3
    assert "cannot read the file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_check_name_is_refused_with_the_known_names(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "-c", str(demo_fleet.config_path), "--only", "nosuch")
    assert proc.returncode == 3
    assert "no such check: nosuch" in proc.stderr and "mount_sanity" in proc.stderr


def test_config_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[inventory]\nfile = "i.toml"\n[ssh]\nconnect_timeout = 0\nport = 22\n')
    proc = run("config", "check", str(p))
    assert proc.returncode == 2
    assert "At 'ssh.connect_timeout'" in proc.stderr
    assert "At 'ssh.port': unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_accepts_the_demo_fleets_config(demo_fleet: SandboxFleet) -> None:
    proc = run("config", "check", str(demo_fleet.config_path))
    assert proc.returncode == 0, proc.stderr
    assert "OK (4 servers, 6 projects" in proc.stdout
