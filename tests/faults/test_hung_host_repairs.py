"""A host frozen in the middle of a repair holds up only its own repairs: the real daemon, a
chown of a big tree on s1, every process of s1 stopped (SIGSTOP) once the chown runs; a repair
asked for s2 meanwhile is decided at once, and s1's fails with a no-progress message after
``[guard] no_progress_seconds``, long before its step's own time limit."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from bup_watchdog.journal import Journal
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harness import AtStake, Daemon, host_pids, sweeps, wait_metric, write_config
from faults.recorder import Reliability, short
from support.scrape import metrics

FILES = 150_000
NO_PROGRESS = 3.0
CHOWN_LIMIT = 600.0
P1 = "5c7a2f1e-1111-4c1d-9a0b-000000000001"  # SCRATCH_P1: master s1, replica s2


def _big_tree(root: Path) -> None:
    """FILES files owned by root under the project's live tree: all of them need a chown."""
    for d in range(FILES // 1000):
        sub = root / "big" / f"d{d:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            (sub / f"f{i:04d}").touch()


def _freeze_host_when_chown_runs(
    fleet: SandboxFleet, host: str, frozen: list[int], stop: threading.Event
) -> None:
    """Once the chown's ``find`` runs on the host, SIGSTOP every process of the host."""
    while not stop.is_set():
        if host_pids(fleet, host, lambda a: a[0].endswith(b"find") and b"chown" in a):
            pids = host_pids(fleet, host, lambda a: True)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                frozen.append(pid)
            return
        time.sleep(0.002)


def test_a_host_frozen_mid_repair_fails_on_no_progress_while_another_hosts_repair_is_decided(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    _big_tree(fleet.hosts["s1"].projects_dir_outside / P1)
    config, url, token = write_config(
        fleet,
        tmp_path,
        guard={"no_progress_seconds": NO_PROGRESS, "max_parallel_repairs": 2},
        repairs={"chown_project": {"mode": "auto", "timeout": CHOWN_LIMIT}},
    )
    s1, s2 = fleet.server_id("s1"), fleet.server_id("s2")
    headers = {"Authorization": f"Bearer {token}"}
    frozen: list[int] = []
    stop = threading.Event()
    freezer = threading.Thread(
        target=_freeze_host_when_chown_runs, args=(fleet, "s1", frozen, stop)
    )
    try:
        with Daemon(config, url) as daemon:
            wait_metric(daemon, lambda f: sweeps(f) >= 1, what="the first sweep")
            journal = Journal(State(tmp_path / "state" / "state.db"))
            freezer.start()
            requested_at = time.monotonic()
            r = httpx.post(
                f"{url}/api/repairs",
                json={"repair": "chown_project", "server_id": s1, "project_id": P1},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while not frozen:
                assert time.monotonic() < deadline, "the chown was never caught running on s1"
                time.sleep(0.01)
            frozen_at = time.monotonic()
            r = httpx.post(
                f"{url}/api/repairs",
                json={
                    "repair": "chown_project",
                    "server_id": s2,
                    "project_id": P1,
                    "dry_run": True,
                },
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 202, r.text
            asked_at = time.monotonic()

            def row(server_id: str, status: str) -> object:
                rows = [e for e in journal.entries(status=status) if e.server_id == server_id]
                return rows[0] if rows else None

            while row(s2, "dry_run") is None:
                assert time.monotonic() < asked_at + 30, "s2's request was not decided"
                time.sleep(0.02)
            other_took = time.monotonic() - asked_at
            s1_running_then = row(s1, "running") is not None
            while (failed := row(s1, "failed")) is None:
                assert time.monotonic() < frozen_at + 60, "s1's repair did not fail"
                time.sleep(0.05)
            failed_at = time.monotonic()
            failed_after = failed_at - frozen_at
            journal.state.close()
            healthy = metrics(url)
            code = daemon.stop()
    finally:
        stop.set()
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if freezer.is_alive():
            freezer.join()
    output = getattr(failed, "output", "") or ""
    lost = stake.loss()

    assert s1_running_then, "s1's repair had already ended when s2's was decided"
    assert other_took < 10, f"s2's dry run waited {other_took:.1f} s behind the frozen host"
    assert "made no progress" in output, output[-500:]
    # Not too early: the no-progress clock runs from the chown's last output, which may come a
    # little before the test sees the host frozen (2.994 s after it, once), but never before the
    # repair was asked for. Not late: well before the chown's own limit.
    assert failed_at - requested_at >= NO_PROGRESS, failed_at - requested_at
    assert failed_after < NO_PROGRESS + 15, failed_after
    assert healthy and code == 0 and not daemon.crashed
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="repair",
        what=f"s1 frozen (SIGSTOP of its {len(frozen)} processes) in the middle of a chown of "
        f"{FILES:,} files; a dry run asked for s2 meanwhile",
        expected=f"s2's request decided at once (a worker per host); s1's repair fails with a "
        f"no-progress message after [guard] no_progress_seconds = {NO_PROGRESS:g} s, not after "
        f"the chown's {CHOWN_LIMIT:g} s limit",
        observed=f"s2's dry run journaled {other_took:.2f} s after it was asked, s1 still "
        f"running; s1 failed {failed_after:.1f} s after the freeze: "
        f"{short(output.splitlines()[-1] if output else '', 150)}",
        loss=lost,
    )
