"""LocalTransport: commands on the watchdog's own machine, with the SSH seam's limits."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bup_watchdog.errors import CommandTimeout, TransportError
from bup_watchdog.transport.local import LocalTransport


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie waiting for its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def test_a_timeout_kills_what_the_command_started_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s"):
        LocalTransport("here").run(["sh", "-c", script], timeout=0.5)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the command's own child must not outlive the timeout"


def test_output_status_and_stdin_come_back() -> None:
    result = LocalTransport("here").run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"in\n", b"err\n")


def test_a_missing_program_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="cannot run"):
        LocalTransport("here").run([os.devnull + "-not-a-program"])
