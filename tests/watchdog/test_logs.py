"""Logs an operator can use: JSON lines with the fields to filter on, one line per sweep at the
default level, and a failure loop that cannot fill the disk."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bup_watchdog import logs
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.prometheus import watchdog_config

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line as JSON (fails the test on a line that is not one object)."""
    out = []
    for line in stderr.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


# -------------------------------------------------------------------- the daemon and the CLI


def test_run_once_with_json_logs_writes_only_json_lines_and_one_sweep_line_with_its_figures(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(demo_fleet, tmp_path)
    proc = cli("--log-format", "json", "run", "--once", "--config", str(config))
    assert proc.returncode == 2, proc.stderr

    records = json_lines(proc.stderr)
    sweeps = [r for r in records if str(r["event"]).startswith("sweep done")]
    assert len(sweeps) == 1, proc.stderr
    line = sweeps[0]
    assert line["level"] == "INFO" and line["logger"] == "bup_watchdog.daemon"
    stamp = str(line["time"])
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp).tzinfo == UTC
    assert line["hosts"] == line["hosts_probed"] == len(demo_fleet.hosts)
    assert line["hosts_failed"] == []
    # A fresh state: everything found is opened, nothing was open to resolve.
    assert line["opened"] == line["findings"] and isinstance(line["opened"], int)
    assert line["opened"] >= 4 and line["resolved"] == 0
    assert line["critical"] >= 2 and line["status"] == "critical"
    assert isinstance(line["duration_s"], float) and line["duration_s"] > 0
    assert isinstance(line["sweep_id"], int)
    assert f"{line['hosts']} hosts probed, 0 failed" in str(line["event"])


def test_run_once_at_the_default_level_writes_the_sweep_line_and_no_other_info(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(demo_fleet, tmp_path)
    proc = cli("run", "--once", "--config", str(config))
    assert proc.returncode == 2, proc.stderr

    # Start-up says once what it serves and within which limits; then one line per sweep.
    info = [line for line in proc.stderr.splitlines() if " INFO " in line]
    assert len(info) == 3, proc.stderr
    assert "bup_watchdog.daemon: open-file limit " in info[0]
    assert "bup_watchdog.daemon: serving http://" in info[1]
    assert "bup_watchdog.daemon: sweep done in " in info[2]
    assert f"{len(demo_fleet.hosts)} hosts probed, 0 failed" in info[2]
    assert "Running job" not in proc.stderr  # the scheduler's own chatter needs -v


def test_a_refused_repair_is_one_json_line_with_repair_id_server_project_and_reason(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(demo_fleet, tmp_path)
    h1 = demo_fleet.server_id("h1")
    stranger = str(uuid.uuid4())
    proc = cli(
        "repair", "rotate_save_log", f"h1/{stranger}", "--config", str(config),
        env={"BUP_WATCHDOG_LOG_FORMAT": "json"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr

    (line,) = json_lines(proc.stderr)
    assert line["level"] == "WARNING" and line["decision"] == "refused"
    assert line["repair"] == "rotate_save_log"
    assert line["server"] == h1 and line["project"] == stranger
    assert line["target"] == f"{h1}/{stranger}"
    reason = str(line["reason"])
    assert reason.startswith("invalid: project ") and reason.endswith("not in the inventory")
    assert proc.stdout.startswith(f"repair #{line['repair_id']}: refused — {reason}")


def test_a_command_that_cannot_run_says_why_in_one_json_line_when_asked_for_json(
    tmp_path: Path,
) -> None:
    proc = cli(
        "check", "--config", str(tmp_path / "nope.toml"), env={"BUP_WATCHDOG_LOG_FORMAT": "json"}
    )
    assert proc.returncode == 3
    (line,) = json_lines(proc.stderr)
    assert line["level"] == "ERROR" and line["exit_code"] == 3
    assert "cannot read the file" in str(line["event"])


# -------------------------------------------------------------------- the rate limit


class Clock:
    """A fake clock (the limit's window is a minute; tests do not wait for it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def limited() -> Iterator[tuple[logging.Logger, io.StringIO, Clock, logs.RateLimit]]:
    """A real logger with a real stream handler behind a RateLimit of 3 lines a minute."""
    clock = Clock()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    limit = logs.RateLimit(burst=3, window=60.0, clock=clock)
    limit.attach(handler)
    logger = logging.getLogger(f"test_logs.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, clock, limit
    finally:
        logger.removeHandler(handler)


def test_identical_errors_past_the_burst_are_dropped_then_counted_once_when_they_resume(
    limited: tuple[logging.Logger, io.StringIO, Clock, logs.RateLimit],
) -> None:
    logger, stream, clock, _ = limited
    for i in range(100):
        logger.error("sweep failed: host %d unreachable", i)
    assert stream.getvalue().splitlines() == [
        f"ERROR {logger.name}: sweep failed: host {i} unreachable" for i in range(3)
    ]

    clock.now += 61
    logger.error("sweep failed: host %d unreachable", 100)
    lines = stream.getvalue().splitlines()[3:]
    assert lines == [
        f"ERROR {logger.name}: sweep failed: host 99 unreachable … repeated 97 times "
        "(at most 3 such lines a 60 s are written)",
        f"ERROR {logger.name}: sweep failed: host 100 unreachable",
    ]


def test_the_limit_counts_each_template_and_level_apart_and_lets_info_through(
    limited: tuple[logging.Logger, io.StringIO, Clock, logs.RateLimit],
) -> None:
    logger, stream, _, _ = limited
    for _ in range(10):
        logger.error("gather %s: connection refused", "h1")
        logger.warning("gather %s: connection refused", "h1")
        logger.error("check %s failed", "placement")
        logger.info("sweep done in %.2f s", 1.0)
    lines = stream.getvalue().splitlines()
    assert sum(line.startswith("ERROR") and "gather" in line for line in lines) == 3
    assert sum(line.startswith("WARNING") for line in lines) == 3
    assert sum("check placement failed" in line for line in lines) == 3
    assert sum(line.startswith("INFO") for line in lines) == 10


def test_what_was_dropped_is_said_when_the_handler_flushes_at_exit(
    limited: tuple[logging.Logger, io.StringIO, Clock, logs.RateLimit],
) -> None:
    logger, stream, _, limit = limited
    for _ in range(5):
        logger.error("state database is locked")
    limit.flush()
    assert stream.getvalue().splitlines()[-1] == (
        f"ERROR {logger.name}: state database is locked … repeated 2 times "
        "(at most 3 such lines a 60 s are written)"
    )


def test_a_failure_loop_of_a_hundred_thousand_errors_writes_a_few_kilobytes(
    limited: tuple[logging.Logger, io.StringIO, Clock, logs.RateLimit],
) -> None:
    logger, stream, clock, _ = limited
    for i in range(100_000):
        if i % 10_000 == 0:
            clock.now += 61  # ten minutes' worth of windows
        logger.error("cannot write the state database: %s", "disk full " + "x" * 200)
    written = len(stream.getvalue().encode())
    # 10 windows x (3 lines + 1 "repeated" line), about 250 bytes each: not 25 MB.
    assert written < 15_000, written
    assert stream.getvalue().count("repeated 9997 times") == 9


def test_f_string_messages_cannot_grow_the_limits_memory_without_bound() -> None:
    limit = logs.RateLimit(burst=1, window=60.0, max_keys=50)
    for i in range(1000):
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, f"host {i} down", None, None)
        assert limit.filter(record)
    assert len(limit._slots) <= 50


# -------------------------------------------------------------------- setup: JSON, uvicorn


@pytest.fixture()
def json_logging() -> Iterator[None]:
    logs.setup("json")
    try:
        yield
    finally:
        logs.reset()


def test_json_lines_carry_extra_fields_and_the_exception(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger("bup_watchdog.test_logs")
    try:
        raise OSError("disk full")
    except OSError:
        log.exception("cannot record sweep %d", 7, extra={"server": "s1", "project": None})
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "cannot record sweep 7" and line["level"] == "ERROR"
    assert line["server"] == "s1" and line["project"] is None
    assert "OSError: disk full" in str(line["exception"])


def test_uvicorns_own_loggers_go_through_the_json_format_and_the_rate_limit(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    uvicorn.Config(lambda: None, log_level="warning")  # installs uvicorn's own handlers
    logs.adopt()
    for _ in range(50):
        logging.getLogger("uvicorn.error").error("Exception in ASGI application")
    lines = json_lines(capsys.readouterr().err)
    assert len(lines) == logs.BURST
    assert {line["logger"] for line in lines} == {"uvicorn.error"}
