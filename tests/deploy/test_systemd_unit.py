"""deploy/bup-watchdog.service: valid for systemd, hardened, and the watchdog runs under its limits.

``systemd-analyze`` (Debian's systemd package) checks the unit offline: no systemd needs to run.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bup_watchdog.config import GuardConfig
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.prometheus import watchdog_config

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "bup-watchdog.service"
CONSOLE_SCRIPT = Path(sys.executable).with_name("bup-watchdog")
SAFE_LEVELS = ("SAFE", "OK")


def directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture()
def unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's console script (verify wants it)."""
    text = UNIT.read_text().replace("/usr/local/bin/bup-watchdog", str(CONSOLE_SCRIPT))
    path = tmp_path / "bup-watchdog.service"
    path.write_text(text)
    return path


def test_the_unit_passes_systemd_analyze_verify(unit: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "bup-watchdog.service" not in proc.stderr, proc.stderr


def test_the_units_security_exposure_is_ok_or_better(unit: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr
    print(f"systemd-analyze security --offline=yes: {match.group(1)} {match.group(2)}")
    assert match.group(2) in SAFE_LEVELS, proc.stdout


def test_the_unit_has_the_hardening_the_operators_asked_for() -> None:
    d = directives(UNIT.read_text())
    assert d["User"] == ["bupwatch"] and d["StateDirectory"] == ["bup-watchdog"]
    assert d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"]
    assert d["PrivateTmp"] == ["yes"] and d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in d["SystemCallFilter"]
    assert int(d["LimitNOFILE"][0]) >= 65536
    assert d["Restart"] == ["on-failure"] and d["KillSignal"] == ["SIGTERM"]
    assert d["ExecStart"][0].split()[1] == "run"


def test_systemd_waits_for_the_running_repairs_and_a_sweep_before_it_kills() -> None:
    """At SIGTERM the daemon finishes its sweep, then waits [guard] stop_wait_seconds for the
    running repairs: systemd's TimeoutStopSec must leave room for both (a sweep: ~2 min at
    200,000 repositories, bench/README.md)."""
    value = directives(UNIT.read_text())["TimeoutStopSec"][0]
    m = re.fullmatch(r"(\d+)(min|s)?", value)
    assert m, value
    seconds = int(m.group(1)) * (60 if m.group(2) == "min" else 1)
    assert seconds >= GuardConfig().stop_wait_seconds + 120, value


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _deny_write_execute() -> None:
    """What MemoryDenyWriteExecute=yes does, for this process and what it execs (Linux ≥ 6.3)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_the_daemon_sweeps_under_memory_deny_write_execute(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: a sweep (paramiko, cryptography) must work."""
    config, _ = watchdog_config(demo_fleet, tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], preexec_fn=_deny_write_execute, capture_output=True
    )
    assert probe.returncode == 0, "this kernel has no PR_SET_MDWE (Linux 6.3 or later needed)"
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "run", "--once", "--config", str(config)],
        preexec_fn=_deny_write_execute,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # Exit 2: the demo fleet's planted critical faults were found.
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
