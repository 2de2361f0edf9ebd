"""The real daemon (``bup-watchdog run``) as a subprocess against the sandbox fleets.

Each test writes its own copy of the fleet's config into ``tmp_path`` (own state directory, own
HTTP port, a short schedule where it matters, scheduled repairs off) and talks to the daemon over
HTTP, as Prometheus and an operator do.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import SCRATCH_P1

from bup_watchdog.model import Severity
from bup_watchdog.sandbox import repos as sandbox_repos
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from support.prometheus import WatchdogDaemon, free_port, poll, watchdog_config
from support.scrape import Samples, by_label, metrics, sample

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def get(url: str) -> httpx.Response | None:
    """GET, or None while nothing answers."""
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def wait_status(
    daemon: WatchdogDaemon, url: str, status: int, timeout: float = 30.0
) -> httpx.Response:
    def probe() -> httpx.Response | None:
        r = get(url)
        return r if r is not None and r.status_code == status else None

    return poll(
        probe, timeout=timeout, what=f"{url} to answer {status}", interval=0.05, alive=daemon.dead
    )


def wait_for_sweeps(
    daemon: WatchdogDaemon, base: str, count: int, timeout: float = 30.0
) -> Samples:
    """Poll /metrics until the state holds ``count`` sweeps; return that scrape."""

    def probe() -> Samples | None:
        if get(f"{base}/healthz") is None:
            return None
        found = metrics(base)
        return found if (sample(found, "bupwatch_sweeps_total") or 0) >= count else None

    return poll(probe, timeout=timeout, what=f"sweep {count} to be recorded", alive=daemon.dead)


SHORT_SCHEDULE = {"sweep_interval_seconds": 5, "jitter_seconds": 0}


def test_run_once_on_the_demo_fleet_exits_2_and_leaves_the_findings_in_the_state(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(demo_fleet, tmp_path)
    proc = subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr

    state = State(tmp_path / "state" / "state.db")
    try:
        found = {(f.check, f.server_id, f.severity) for f in state.open_findings()}
        assert state.last_sweep() is not None
    finally:
        state.close()
    h3, h4 = demo_fleet.server_id("h3"), demo_fleet.server_id("h4")
    assert ("mount_sanity", h3, Severity.CRITICAL) in found
    assert ("reachability", h4, Severity.CRITICAL) in found
    assert {check for check, _, _ in found} >= {
        "mount_sanity",
        "reachability",
        "repo_integrity",
        "replication_lag",
        "save_log_size",
    }


def test_run_once_runs_the_repairs_its_pass_asked_for_before_it_exits(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    """A cron-driven ``run --once`` with auto repairs: the pass queues them, and the exit must
    not drop them (the stop after a SIGTERM drops queued work; the end of a pass does not)."""
    stray = scratch_fleet.hosts["s1"].projects_dir_outside / SCRATCH_P1 / "stray-owner.txt"
    stray.write_text("owned by root by mistake\n")
    save_log = scratch_fleet.repo_path("s1", SCRATCH_P1) / "conf" / "save_log.json"
    with save_log.open("a") as f:  # over the lowered bound: two repairs in s1's lane, in turn
        f.write(" " * 200_000 + "\n")
    config, _ = watchdog_config(
        scratch_fleet,
        tmp_path,
        auto_repair=True,
        repairs={
            "chown_project": {"mode": "auto"},
            "rotate_save_log": {"mode": "auto", "keep_bytes": 50_000},
        },
        checks={"save_log_size": {"warn_bytes": 100_000, "critical_bytes": 10_000_000}},
    )
    proc = subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in proc.stderr, proc.stderr

    state = State(tmp_path / "state" / "state.db")
    try:
        rows = state.query("SELECT repair, target, status FROM journal")
    finally:
        state.close()
    target = f"{scratch_fleet.server_id('s1')}/{SCRATCH_P1}"
    assert ("chown_project", target, "succeeded") in rows, (rows, proc.stderr[-2000:])
    assert ("rotate_save_log", target, "succeeded") in rows, (rows, proc.stderr[-2000:])
    assert stray.stat().st_uid != 0 and save_log.stat().st_size < 100_000


def test_healthz_answers_at_once_and_ready_only_after_the_first_sweep(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    # A frozen host holds the first sweep for the banner timeout, so "not ready yet" is
    # observable rather than a race against a 0.2 s sweep.
    config, base = watchdog_config(scratch_fleet, tmp_path, ssh={"banner_timeout": 2})
    s1, s2 = scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")
    scratch_fleet.hosts["s2"].freeze()
    try:
        with WatchdogDaemon(config) as daemon:
            first = poll(
                lambda: get(f"{base}/healthz"),
                timeout=30,
                what="the HTTP server",
                interval=0.05,
                alive=daemon.dead,
            )
            assert first.status_code == 200
            not_ready = get(f"{base}/ready")
            assert not_ready is not None and not_ready.status_code == 503
            assert "waiting for the first sweep" in not_ready.text

            wait_status(daemon, f"{base}/ready", 200)
            found = metrics(base)
            assert by_label(found, "bupwatch_host_probe_success", "server_id") == {
                s1: 1.0,
                s2: 0.0,
            }
            assert sample(found, "bupwatch_sweeps_total") == 1
    finally:
        scratch_fleet.hosts["s2"].thaw()


def test_metrics_after_the_first_sweep_carry_the_probe_of_every_demo_host(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, base = watchdog_config(demo_fleet, tmp_path)
    with WatchdogDaemon(config) as daemon:
        wait_status(daemon, f"{base}/ready", 200)
        found = metrics(base)
    probes = by_label(found, "bupwatch_host_probe_success", "host")
    assert probes == {name: 1.0 for name in demo_fleet.hosts}
    assert by_label(found, "bupwatch_bup_server_up", "host")["h4"] == 0.0
    assert sample(found, "bupwatch_state_up") == 1.0


def test_sigterm_stops_the_daemon_within_seconds_with_exit_0_and_no_traceback(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, base = watchdog_config(demo_fleet, tmp_path)
    with WatchdogDaemon(config) as daemon:
        wait_status(daemon, f"{base}/ready", 200)
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(10)
        took = time.monotonic() - sent
    assert code == 0, daemon.log()
    assert took < 5, f"took {took:.1f} s to stop"
    assert "Traceback" not in daemon.log()
    assert "received SIGTERM" in daemon.log()
    assert get(f"{base}/healthz") is None, "the HTTP server is gone"


def test_sigterm_during_a_sweep_lets_it_finish_and_be_recorded_before_exiting_0(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, _ = watchdog_config(scratch_fleet, tmp_path, ssh={"banner_timeout": 2})
    scratch_fleet.hosts["s2"].freeze()  # the sweep now lasts the banner timeout
    try:
        with WatchdogDaemon(config) as daemon:
            poll(
                lambda: "Running job" in daemon.log() or None,
                timeout=30,
                what="the first sweep to start",
                interval=0.02,
                alive=daemon.dead,
            )
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.proc.wait(60)  # finishing the sweep first: slow on a loaded machine
    finally:
        scratch_fleet.hosts["s2"].thaw()
    log = daemon.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert log.index("received SIGTERM") < log.index("sweep done"), "the signal came mid-sweep"
    state = State(tmp_path / "state" / "state.db")
    try:
        assert state.last_sweep() is not None, "the sweep in progress was finished and recorded"
        assert {f.check for f in state.open_findings(server_id=scratch_fleet.server_id("s2"))} == {
            "reachability"
        }
    finally:
        state.close()


def test_sweeps_repeat_on_schedule_and_a_host_frozen_between_them_is_found_while_serving(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, base = watchdog_config(
        scratch_fleet, tmp_path, schedule=SHORT_SCHEDULE, ssh={"banner_timeout": 2}
    )
    s2 = scratch_fleet.server_id("s2")
    with WatchdogDaemon(config) as daemon:
        first = wait_for_sweeps(daemon, base, 1)
        assert sample(first, "bupwatch_sweeps_total") == 1
        assert by_label(first, "bupwatch_host_probe_success", "host") == {"s1": 1.0, "s2": 1.0}
        reach = dict(check="reachability", server_id=s2)
        assert sample(first, "bupwatch_findings", **reach, severity="critical") == 0

        scratch_fleet.hosts["s2"].freeze()
        try:
            second = wait_for_sweeps(daemon, base, 2)
            # still serving while a host hangs, and still running
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            assert daemon.proc.poll() is None
        finally:
            scratch_fleet.hosts["s2"].thaw()

    def started(found: Samples) -> float:
        done = sample(found, "bupwatch_sweep_last_completed_timestamp_seconds")
        took = sample(found, "bupwatch_sweep_duration_seconds")
        assert done is not None and took is not None
        return done - took

    interval = started(second) - started(first)
    assert 4.5 <= interval <= 6.5, f"second sweep started {interval:.2f} s after the first"
    assert by_label(second, "bupwatch_host_probe_success", "host") == {"s1": 1.0, "s2": 0.0}
    frozen = sum(
        sample(second, "bupwatch_findings", **reach, severity=sev) or 0
        for sev in ("warning", "critical")
    )
    assert frozen >= 1


def test_a_garbled_inventory_is_replaced_by_the_cached_one_and_flagged_stale_until_restored(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.toml"
    shutil.copyfile(demo_fleet.inventory_path, inventory)
    good = inventory.read_bytes()
    config, base = watchdog_config(
        demo_fleet, tmp_path, schedule=SHORT_SCHEDULE, inventory={"file": str(inventory)}
    )
    with WatchdogDaemon(config) as daemon:
        first = wait_for_sweeps(daemon, base, 1)
        assert sample(first, "bupwatch_inventory_stale") == 0

        inventory.write_bytes(b"[[servers]\nthis is = not toml \x00\xff")
        second = wait_for_sweeps(daemon, base, 2)
        assert sample(second, "bupwatch_inventory_stale") == 1
        # the sweep ran on the cached inventory: every host was probed again
        assert by_label(second, "bupwatch_host_probe_success", "host") == {
            name: 1.0 for name in demo_fleet.hosts
        }
        gathered = "bupwatch_host_last_gather_timestamp_seconds"
        before, after = by_label(first, gathered, "host"), by_label(second, gathered, "host")
        assert min(after.values()) > max(before.values())

        inventory.write_bytes(good)
        third = wait_for_sweeps(daemon, base, 3)
        assert sample(third, "bupwatch_inventory_stale") == 0
        assert daemon.proc.poll() is None
    assert "using the cached inventory" in daemon.log()


def test_the_daemon_sweeps_incrementally_and_still_finds_a_pack_lost_between_sweeps(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, base = watchdog_config(scratch_fleet, tmp_path, schedule=SHORT_SCHEDULE)
    s1 = scratch_fleet.server_id("s1")
    integrity = dict(check="repo_integrity", server_id=s1, severity="critical")

    def reused_everything(found: Samples) -> bool:
        return sample(found, "bupwatch_sweep_repositories", how="reused") == 2

    with WatchdogDaemon(config) as daemon:
        # the first sweeps walk both copies (and trust their fingerprints once they are 2 s old)
        found = wait_for_sweeps(daemon, base, 1)
        for n in range(2, 5):
            if reused_everything(found):
                break
            found = wait_for_sweeps(daemon, base, n)
        assert reused_everything(found), "no sweep reused the two unchanged repositories"
        assert sample(found, "bupwatch_sweep_repositories", how="walked") == 0
        assert sample(found, "bupwatch_findings", **integrity) == 0
        swept = sample(found, "bupwatch_sweeps_total") or 0

        sandbox_repos.corrupt_newest_pack(scratch_fleet.repo_path("s1", SCRATCH_P1))
        # the pack may go while a sweep is under way: the first sweep that sees it is the one
        for n in range(int(swept) + 1, int(swept) + 4):
            after = wait_for_sweeps(daemon, base, n)
            if sample(after, "bupwatch_findings", **integrity):
                break
    assert sample(after, "bupwatch_sweep_repositories", how="walked") == 1
    assert sample(after, "bupwatch_sweep_repositories", how="reused") == 1
    assert (sample(after, "bupwatch_findings", **integrity) or 0) >= 1


def test_deleting_daemon_lock_does_not_let_a_second_daemon_start_on_the_same_state(
    tmp_path: Path,
) -> None:
    """The single-instance lock is an flock on the state directory itself; daemon.lock only
    holds the pid for the message."""
    (tmp_path / "inventory.toml").write_text("")
    config = tmp_path / "config.toml"
    port = free_port()
    config.write_text(
        '[inventory]\nfile = "inventory.toml"\n[state]\ndirectory = "state"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    twin = tmp_path / "twin.toml"
    twin.write_text(config.read_text().replace(str(port), str(free_port())))
    with WatchdogDaemon(config) as daemon:
        wait_status(daemon, f"http://127.0.0.1:{port}/healthz", 200)
        pid_file = tmp_path / "state" / "daemon.lock"
        pid_written = pid_file.read_text().strip()
        pid_file.unlink()
        second = subprocess.run(
            [*CLI, "run", "--config", str(twin)], capture_output=True, text=True, timeout=60
        )
        first_alive = daemon.proc.poll() is None
        code = daemon.stop()
    third = subprocess.run(
        [*CLI, "run", "--once", "--config", str(twin)], capture_output=True, text=True, timeout=60
    )

    assert pid_written == str(daemon.proc.pid)
    assert second.returncode == 3, second.stderr
    assert "another bup-watchdog daemon" in second.stderr and "Traceback" not in second.stderr
    assert f"(pid {pid_written})" in second.stderr, "the holder is named without its pid file"
    assert first_alive and code == 0
    assert "another bup-watchdog daemon" not in third.stderr, "the lock goes with its daemon"
    assert "sweep done" in third.stderr, third.stderr
