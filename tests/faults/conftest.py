"""The fault suite's recorder: rows from every test, a one-line summary at the end.

A test run writes nothing under version control. ``./dev reliability`` regenerates the committed
``docs/RELIABILITY.md``: it runs the whole fault suite with ``BUPWATCH_RELIABILITY_MD`` naming that
file, which is written only when the run executed every test module of ``tests/faults`` with
nothing deselected and nothing failed, so it never shows a partial table. With
``BUPWATCH_RELIABILITY_PARTIAL=1`` the named file is written whatever ran (a partial run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.harness import Daemon
from faults.recorder import Recorder, Reliability, render

HERE = Path(__file__).parent

_failed: set[str] = set()
_deselected: set[str] = set()
_seconds: list[float] = []


def _ours(path: Path | str) -> bool:
    return Path(path).resolve().is_relative_to(HERE)


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.update(i.nodeid for i in items if _ours(i.path))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/" not in report.nodeid:
        return
    _seconds.append(report.duration)  # setup, call and teardown of our tests only
    if report.failed:
        _failed.add(report.nodeid)


@pytest.fixture(scope="session")
def _recorder(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    session = request.session
    ran = {Path(i.path).name for i in session.items if _ours(i.path)}
    modules = {p.name for p in HERE.glob("test_*.py")}
    tests = sum(1 for i in session.items if _ours(i.path))
    complete = ran == modules and not _deselected and not _failed and recorder.rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    asked = os.environ.get("BUPWATCH_RELIABILITY_MD")
    partial_ok = os.environ.get("BUPWATCH_RELIABILITY_PARTIAL") == "1"
    if not asked:
        if reporter is not None and recorder.rows:
            t = recorder.totals()
            reporter.write_line(
                f"faults: {t['faults']} faults, {t['inputs']} hostile inputs, "
                f"{t['bytes_lost']} bytes lost (./dev reliability writes docs/RELIABILITY.md)"
            )
        return
    out = Path(asked)
    if not complete and not (partial_ok and recorder.rows):
        why = (
            f"{len(_failed)} failed"
            if _failed
            else f"partial run ({len(ran)} of {len(modules)} modules, "
            f"{len(_deselected)} deselected)"
        )
        if reporter is not None:
            reporter.write_line(f"faults: {out} not written: {why}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    crashes = sum(1 for d in Daemon.started if d.crashed)
    out.write_text(
        render(
            recorder,
            tests=tests,
            seconds=sum(_seconds),
            daemons=len(Daemon.started),
            crashes=crashes,
        )
    )
    if reporter is not None:
        t = recorder.totals()
        reporter.write_line(
            f"faults: wrote {out}: {t['faults']} faults, {t['inputs']} hostile inputs, "
            f"{crashes} daemon crashes, {t['bytes_lost']} bytes lost"
        )


@pytest.fixture()
def reliability(_recorder: Recorder, request: pytest.FixtureRequest) -> Reliability:
    return Reliability(_recorder, request.node.nodeid)
