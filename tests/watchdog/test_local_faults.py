"""The watchdog's own faults are not host findings (issue 14, item 4).

A missing known_hosts, an unreadable key file, no file descriptor left: each is the watchdog's
problem. ``check`` exits 3 naming it, the daemon says so on ``/ready`` and in
``bupwatch_watchdog_problem``, no host gets a finding and the circuit breaker stays closed.
Every test runs the real command on the demo fleet with the DEFAULT ``[ssh]`` settings (the
known_hosts and keys of ``~/.ssh``, with HOME pointed at a directory the test controls).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog.guard import breaker
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from support.process import free_port

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def default_config(fleet: SandboxFleet, workdir: Path, extra: str = "") -> Path:
    """A config with nothing but the fleet's inventory and a state directory: [ssh] defaults."""
    inventory = fleet.config_path.parent / "inventory.toml"
    path = workdir / "config.toml"
    path.write_text(
        f'[inventory]\nfile = "{inventory}"\n[state]\ndirectory = "state"\n{extra}',
        encoding="utf-8",
    )
    return path


def home(workdir: Path, fleet: SandboxFleet | None = None) -> Path:
    """A HOME whose ~/.ssh holds the fleet's known_hosts and key (none without a fleet)."""
    path = workdir / "home"
    (path / ".ssh").mkdir(parents=True, exist_ok=True)
    if fleet is not None:
        shutil.copyfile(fleet.known_hosts, path / ".ssh" / "known_hosts")
        shutil.copyfile(fleet.client_key, path / ".ssh" / "id_ed25519")
        (path / ".ssh" / "id_ed25519").chmod(0o600)
    return path


def check(
    config: Path, home_dir: Path, *args: str, nofile: int | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run ``check --format json``; with ``nofile``, under that RLIMIT_NOFILE."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.run(
        [*CLI, "check", "-c", str(config), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home_dir)},
        preexec_fn=limit,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_a_missing_known_hosts_exits_3_with_no_host_finding_and_the_breaker_closed(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = default_config(demo_fleet, tmp_path)
    bare = home(tmp_path)

    rc, out, _ = check(config, bare)

    assert rc == 3
    assert out["findings"] == []
    problem = out["watchdog_problems"]["known_hosts"]
    assert str(bare / ".ssh" / "known_hosts") in problem and "does not exist" in problem
    state = State(tmp_path / "state" / "state.db")
    assert state.query("SELECT COUNT(*) FROM hosts WHERE probed = 0")[0][0] == 0
    assert breaker(state, 0.3)[0] is False
    assert state.open_findings() == []


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "does not exist"), ("not a key\n", "is not a private key paramiko can read")],
)
def test_a_missing_or_unusable_key_file_exits_3_naming_it_with_no_host_finding(
    demo_fleet: SandboxFleet, tmp_path: Path, content: str | None, why: str
) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_text(content)
        key.chmod(0o600)
    config = default_config(demo_fleet, tmp_path, '[ssh]\nkey_file = "key"\n')

    rc, out, _ = check(config, home(tmp_path, demo_fleet))

    assert rc == 3
    assert out["findings"] == []
    assert f"SSH key file {key} {why}" in out["watchdog_problems"]["key_file"]


def test_running_out_of_file_descriptors_during_a_sweep_is_a_watchdog_problem_not_findings(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = default_config(demo_fleet, tmp_path)
    home_dir = home(tmp_path, demo_fleet)
    rc, healthy, _ = check(config, home_dir, "--no-state")
    assert rc == 2 and healthy["watchdog_problems"] == {}  # the demo's planted faults
    planted = {(f["check"], f["code"], f["target"]) for f in healthy["findings"]}

    # From "not one host" up to "most hosts" swept before the descriptors ran out.
    for nofile in (6, 9, 12, 15):
        rc, out, stderr = check(config, home_dir, "--no-state", nofile=nofile)

        assert rc == 3, (nofile, stderr)
        assert "no file descriptor left" in out["watchdog_problems"]["file_descriptors"]
        found = {(f["check"], f["code"], f["target"]) for f in out["findings"]}
        assert found <= planted, (nofile, found - planted)
        if nofile == 6:
            assert found == set()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_daemon_answers_ready_503_and_exports_the_problem_without_opening_the_breaker(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = default_config(demo_fleet, tmp_path, f'[http]\nlisten = "{listen}"\n')
    daemon = subprocess.Popen(
        [*CLI, "run", "-c", str(config)],
        env={**os.environ, "HOME": str(home(tmp_path))},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                status, body = get(f"http://{listen}/ready")
            except OSError:
                status, body = 0, ""
            if "watchdog problem" in body:
                break
            time.sleep(0.2)
        assert status == 503, body
        assert "known_hosts" in json.loads(body)["status"]
        _, metrics = get(f"http://{listen}/metrics")
        assert 'bupwatch_watchdog_problem{kind="known_hosts"} 1.0' in metrics
        assert 'bupwatch_watchdog_problem{kind="file_descriptors"} 0.0' in metrics
        assert "bupwatch_circuit_breaker_open 0.0" in metrics
        _, findings = get(f"http://{listen}/api/findings")
        assert json.loads(findings)["findings"] == []
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
