"""Faults of the watchdog itself, on the real daemon process: SIGKILL mid-sweep and mid-repair,
a second daemon on the same state, the state's filesystem full, a damaged state database."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import SCRATCH_P1

from bup_watchdog.journal import Journal
from bup_watchdog.model import Finding, Severity
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harm import Loss, Snapshot, loss, state_loss, state_rows
from faults.harness import (
    CLI,
    AtStake,
    Daemon,
    bup_ls,
    get,
    host_pids,
    sample,
    sweeps,
    wait_metric,
    wait_until,
    write_config,
)
from faults.recorder import Reliability, short
from support.fleet import bup_save_on, git_out
from support.prometheus import free_port

P = SCRATCH_P1


def test_sigkill_mid_sweep_loses_nothing_and_the_restarted_daemon_sweeps_on(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    config, url, _ = write_config(fleet, tmp_path, ssh={"banner_timeout": 3})
    subprocess.run([*CLI, "check", "--config", str(config)], capture_output=True, timeout=60)
    db = tmp_path / "state" / "state.db"
    rows = state_rows(db)
    assert rows["sweeps"] == 1
    stake = AtStake(fleet)
    fleet.hosts["s2"].freeze()  # the sweep now waits 3 s on s2's banner: time to kill it
    try:
        with Daemon(config, url) as first:
            wait_until(lambda: "Running job" in first.log(), timeout=30, what="a sweep to start")
            time.sleep(0.5)
            mid_sweep = "sweep done" not in first.log()
            first.kill()
    finally:
        fleet.hosts["s2"].thaw()
    state_after_kill = state_loss(db, rows)
    with Daemon(config, url, log_name="daemon-restarted.log") as second:
        found = wait_metric(second, lambda f: sweeps(f) >= 2, what="a sweep after the restart")
        ready = get(f"{url}/ready")
        code = second.stop()

    assert mid_sweep, "the kill landed after the sweep had finished"
    assert state_after_kill.bytes_lost == 0, state_after_kill.lost
    assert ready is not None and ready.status_code == 200
    assert code == 0 and not second.crashed, second.log()[-2000:]
    assert "Traceback" not in second.log()
    lost = stake.loss() + state_loss(db, rows)
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="watchdog",
        what="SIGKILL of the daemon mid-sweep (a host frozen so the sweep is in progress)",
        expected="the state keeps every row (one sweep = one transaction, WAL); the restarted "
        "daemon sweeps again and is ready; nothing on the hosts changes",
        observed=f"state integrity ok, {rows['sweeps']} earlier sweep kept; restarted daemon "
        f"recorded sweep {int(sweeps(found))}, /ready 200, stopped with exit 0",
        loss=lost,
    )


def test_while_a_resync_runs_a_second_daemon_and_a_cli_repair_are_refused_and_sigkill_is_reported(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    """One slow resync (rsync --bwlimit on a ~1.6 MB pack) carries three faults: a second daemon
    started on the same state, an operator's CLI repair of the same target, then SIGKILL."""
    fleet = scratch_fleet
    bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(1_500_000).hex()})
    old = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    stake = AtStake(fleet)
    resync = {"resync_replica": {"mode": "auto", "bwlimit_kib": 200}}
    config, url, token = write_config(fleet, tmp_path / "a", repairs=resync)
    db = tmp_path / "a" / "state" / "state.db"
    rsync = lambda a: a[0].endswith(b"rsync") and b"--ignore-existing" in a  # noqa: E731
    with Daemon(config, url) as first:
        first.wait_up()
        r = httpx.post(
            f"{url}/api/repairs",
            json={"repair": "resync_replica", "server_id": fleet.server_id("s2"), "project_id": P},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 202, r.text
        state = State(db)
        journal = Journal(state)
        [entry] = wait_until(
            lambda: journal.entries(status="running"), timeout=60, what="the resync to start"
        )
        wait_until(lambda: host_pids(fleet, "s2", rsync), timeout=30, what="the rsync on s2")

        # 1. a second daemon on the same state, by mistake (its own port)
        twin_config = tmp_path / "a" / "twin.toml"  # beside it: the same state directory
        twin_config.write_text(
            config.read_text().replace(url.removeprefix("http://"), f"127.0.0.1:{free_port()}")
        )
        twin_proc = subprocess.Popen(
            [*CLI, "run", "--config", str(twin_config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # 2. at the same time, an operator runs the same repair by hand
        cli_proc = subprocess.Popen(
            [*CLI, "repair", "resync_replica", f"s2/{P}", "--execute", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, twin_err = twin_proc.communicate(timeout=60)
        cli_out, cli_err = cli_proc.communicate(timeout=60)
        still_running = journal.get(entry.id)
        # 3. SIGKILL, with the rsync half-way
        first.kill()
    assert still_running is not None and still_running.status == "running", (
        "the repair ended before the second daemon and the CLI were refused: slow the rsync more"
    )
    orphan_gone = time.monotonic()
    wait_until(lambda: not host_pids(fleet, "s2", rsync), timeout=60, what="the orphaned rsync")
    orphan_seconds = time.monotonic() - orphan_gone
    with Daemon(config, url, log_name="daemon-restarted.log") as second:
        wait_metric(second, lambda f: sweeps(f) >= 1, what="a sweep after the restart")
        interrupted = journal.get(entry.id)
        findings = state.open_findings(check="guard")
        later = [e for e in journal.entries(limit=1000) if e.id > entry.id and e.started_at]
        code = second.stop()
    state.close()

    assert twin_proc.returncode == 3, twin_err
    assert "another bup-watchdog daemon" in twin_err and "Traceback" not in twin_err
    assert len(twin_err.strip().splitlines()) == 1, twin_err
    assert cli_proc.returncode == 2, cli_out + cli_err
    assert "lease" in cli_out
    assert interrupted is not None and interrupted.status == "interrupted"
    assert [f.code for f in findings] == ["interrupted"]
    assert findings[0].severity is Severity.CRITICAL
    assert later == [], "nothing was re-run"
    assert "was interrupted" in second.log()
    assert code == 0 and not second.crashed
    assert git_out(fleet, "s2", P, "rev-parse", "refs/heads/master") == old
    for h in ("s1", "s2"):
        ls = bup_ls(fleet, h, P)
        assert ls.returncode == 0, f"bup ls master on {h}: {ls.stderr}"
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    common = dict(area="watchdog", loss=lost)
    reliability.record(
        what="a second daemon started on the same state directory by mistake (while the first "
        "runs a repair)",
        expected="refused at start: one line, exit 3 (a lock on the state directory); the "
        "first daemon and its repair go on",
        observed=f"exit {twin_proc.returncode}: {short(twin_err, 130)}; the first daemon's "
        "repair still running",
        **common,
    )
    reliability.record(
        what="an operator's CLI `repair --execute` of the target a daemon is repairing",
        expected="refused by the lease (one repair per target), exit 2; nothing run twice",
        observed=f"exit {cli_proc.returncode}: {short(cli_out, 130)}",
        **common,
    )
    reliability.record(
        what="SIGKILL of the daemon mid-repair (resync_replica's rsync half-way, --bwlimit)",
        expected="restart reports it: journal status interrupted, a critical guard/interrupted "
        "finding; not re-run; the replica's ref unmoved, both copies pass bup ls master",
        observed=f"repair #{entry.id} interrupted, finding guard/interrupted critical, 0 repairs "
        f"started after; the orphaned rsync (objects only, --ignore-existing) ended "
        f"{orphan_seconds:.1f} s later; ref unchanged; bup ls master ok on s1 and s2",
        **common,
    )


def test_a_full_state_filesystem_keeps_the_daemon_serving_with_a_write_error_metric(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    config, url, _ = write_config(fleet, tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # The daemon in a mount namespace of its own where its state directory is a 16 MB tmpfs.
    mount = 'mount -t tmpfs -o size=16m faults-state "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", mount]
    with Daemon(config, url, prefix=[*prefix, str(state_dir)]) as d:
        first = wait_metric(d, lambda f: sweeps(f) >= 1, what="the first sweep")
        inside = Path(f"/proc/{d.pid}/root") / state_dir.relative_to("/")
        db = inside / "state.db"
        rows = state_rows(db)
        filled = 0
        with (inside / "filler").open("wb", buffering=0) as f:
            try:
                while True:
                    filled += f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        full = wait_metric(
            d, lambda f: sample(f, "bupwatch_state_writable") == 0, what="a failed state write"
        )
        healthz = get(f"{url}/healthz")
        alive_while_full = d.proc.poll() is None
        (inside / "filler").unlink()
        back = wait_metric(
            d,
            lambda f: sample(f, "bupwatch_state_writable") == 1 and sweeps(f) > sweeps(full),
            what="a sweep recorded after space came back",
        )
        lost = stake.loss() + state_loss(db, rows)
        code = d.stop()

    assert sample(first, "bupwatch_state_writable") == 1
    assert sample(full, "bupwatch_state_up") == 1, "the state is still readable"
    errors = sample(full, "bupwatch_state_write_errors_total") or 0
    assert errors >= 1
    assert healthz is not None and healthz.status_code == 200 and alive_while_full
    assert code == 0 and not d.crashed
    assert "cannot write the state database" in d.log()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="watchdog",
        what=f"the state directory's filesystem full (a 16 MB tmpfs, filled with "
        f"{filled // 1024} KiB while the daemon runs)",
        expected="the daemon keeps running and serving /metrics with a clear error metric; "
        "sweeps resume once space is back; no state row lost",
        observed=f"bupwatch_state_writable 0, bupwatch_state_write_errors_total {errors:g}, "
        f"state_up 1, /healthz 200; after the filler was removed: writable 1, sweep "
        f"{int(sweeps(back))} recorded; exit 0 on SIGTERM",
        loss=lost,
    )


def _damaged_state(tmp_path: Path, how: str) -> Path:
    """A real state database with some history, then damaged in one way."""
    path = tmp_path / how / "state" / "state.db"
    state = State(path)
    sid = "9d2c0b1e-6a1f-4b57-9d6e-7f2f3c1d0a11"
    for i in range(400):
        state.raise_finding(
            Finding(
                "repo_integrity",
                sid,
                Severity.WARNING,
                "x" * 200,
                project_id=f"1c3a5e7f-0000-4000-8000-{i:012x}",
                code="master_missing",
            )
        )
    state.close()  # the last connection: SQLite checkpoints and removes the -wal and -shm files
    size = path.stat().st_size
    if how == "garbage":
        path.write_bytes(os.urandom(size))
    elif how == "truncated":
        with path.open("r+b") as f:
            f.truncate(size // 2)
    elif how == "page-damaged":
        with path.open("r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(8192))
    return path


@pytest.mark.parametrize("how", ["garbage", "truncated", "page-damaged"])
def test_a_damaged_state_database_stops_the_daemon_at_start_with_one_line_and_exit_3(
    reliability: Reliability, tmp_path: Path, how: str
) -> None:
    db = _damaged_state(tmp_path, how)
    (db.parent.parent / "inventory.toml").write_text("")
    config = db.parent.parent / "config.toml"
    config.write_text(
        '[inventory]\nfile = "inventory.toml"\n[state]\ndirectory = "state"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    before = Snapshot.of({"state": db.parent})
    assert list(before.files) == ["state:state.db"]

    proc = subprocess.run(
        [*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=60
    )

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("bup-watchdog: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(db) in lines[0]
    lost: Loss = loss(before, Snapshot.of({"state": db.parent}), "the damaged file")
    assert lost.bytes_lost == 0, "the damaged file is left as it was"
    reliability.record(
        area="watchdog",
        what=f"state database damaged at start ({how.replace('-', ' ')})",
        expected="one clear line, exit 3, no traceback; the damaged file left untouched",
        observed=f"exit {proc.returncode}: {short(lines[0], 160)}",
        loss=lost,
    )
