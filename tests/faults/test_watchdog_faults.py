"""Faults of the watchdog itself, on the real daemon process: SIGKILL mid-sweep and mid-repair,
a second daemon on the same state, the state's filesystem full, a damaged state database."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SCRATCH_P1

from bup_watchdog.journal import FINISHED, Journal
from bup_watchdog.model import Finding, Severity
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harm import Loss, Snapshot, loss, state_loss, state_query, state_rows
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
    """One slow resync (rsync --bwlimit on a ~1.6 MB pack) carries the faults: a second daemon
    started on the same state (with and without daemon.lock), an operator's CLI repair of the same
    target, then SIGKILL; after the restart, an immediate retry through the API."""
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
        # 1b. the same after daemon.lock was deleted: the lock is on the directory itself
        (db.parent / "daemon.lock").unlink()
        unlocked = subprocess.run(
            [*CLI, "run", "--config", str(twin_config)], capture_output=True, text=True, timeout=60
        )
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
        ref_after_restart = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
        ls_after_restart = {h: bup_ls(fleet, h, P) for h in ("s1", "s2")}
        # 4. an immediate retry through the guard (the API): the dead daemon's lease is gone
        last_id = journal.entries(limit=1)[0].id
        asked = time.monotonic()
        r = httpx.post(
            f"{url}/api/repairs",
            json={"repair": "resync_replica", "server_id": fleet.server_id("s2"), "project_id": P},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 202, r.text
        [retry] = wait_until(
            lambda: [
                e for e in journal.entries(limit=1000) if e.id > last_id and e.status in FINISHED
            ],
            timeout=120,
            what="the retry's outcome",
        )
        retry_seconds = time.monotonic() - asked
        code = second.stop()
    state.close()

    assert twin_proc.returncode == 3, twin_err
    assert "another bup-watchdog daemon" in twin_err and "Traceback" not in twin_err
    assert len(twin_err.strip().splitlines()) == 1, twin_err
    assert unlocked.returncode == 3, unlocked.stderr
    assert "another bup-watchdog daemon" in unlocked.stderr, unlocked.stderr
    assert cli_proc.returncode == 2, cli_out + cli_err
    assert "lease" in cli_out
    assert interrupted is not None and interrupted.status == "interrupted"
    assert [f.code for f in findings] == ["interrupted"]
    assert findings[0].severity is Severity.CRITICAL
    assert later == [], "nothing was re-run"
    assert "was interrupted" in second.log()
    assert "released the lease on" in second.log()
    assert code == 0 and not second.crashed
    assert ref_after_restart == old
    for h, ls in ls_after_restart.items():
        assert ls.returncode == 0, f"bup ls master on {h}: {ls.stderr}"
    assert retry.status == "succeeded", (retry.status, retry.refusal, retry.output)
    new = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    assert new == git_out(fleet, "s1", P, "rev-parse", "refs/heads/master")
    git_out(fleet, "s2", P, "merge-base", "--is-ancestor", old, new)  # raises unless forward
    assert bup_ls(fleet, "s2", P).returncode == 0
    # The retry fast-forwarded the replica's ref (checked above): not a loss.
    lost = stake.loss(moved=frozenset({f"s2:bups:{P}/refs/heads/master"}))
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
        what="daemon.lock deleted, then a second daemon started on the same state directory",
        expected="still refused, exit 3: the lock is an flock on the state directory itself, "
        "which a deleted file cannot undo",
        observed=f"exit {unlocked.returncode}: {short(unlocked.stderr, 130)}",
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
    reliability.record(
        what="an immediate retry through the API after SIGKILL mid-repair and a restart",
        expected="the dead daemon's lease is released at start (the journal keeps the "
        "interrupted row and the finding); the retry goes through the guard and is not "
        "refused by the lease",
        observed=f"lease released at start; retry repair #{retry.id} {retry.status} "
        f"{retry_seconds:.1f} s after it was asked; the replica's ref fast-forwarded to the "
        "master's; bup ls master ok on s2",
        **common,
    )


def _repairs(url: str) -> list[dict[str, Any]]:
    """The journal as the daemon serves it (from memory while its state cannot be written)."""
    r = get(f"{url}/api/repairs")
    return list(r.json()["repairs"]) if r is not None and r.status_code == 200 else []


def _entry(url: str, entry_id: int) -> dict[str, Any] | None:
    return next((e for e in _repairs(url) if e["id"] == entry_id), None)


def test_a_full_state_filesystem_during_a_resync_keeps_its_outcome_and_sweeps_and_writes_them_back(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    """The state directory is a 16 MB tmpfs, filled while a slow resync runs: the resync's outcome
    and its lease's release cannot reach the file, sweeps go on and a fault planted meanwhile is
    served; once the filler is removed everything kept reaches the file."""
    fleet = scratch_fleet
    # A 1 MB save at --bwlimit 100 KiB/s: the resync runs ~17 s, the disk is full ~3 s after
    # its rsync starts. (3 MB ran 50 s, all of it waiting for the resync to end.)
    bup_save_on(fleet, "s1", P, int(time.time()), {"big.txt": os.urandom(500_000).hex()})
    old = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    stake = AtStake(fleet)
    resync = {"resync_replica": {"mode": "auto", "bwlimit_kib": 100}}
    config, url, token = write_config(
        fleet, tmp_path, repairs=resync, schedule={"auto_repair": False}
    )
    auth = {"Authorization": f"Bearer {token}"}
    body = {"repair": "resync_replica", "server_id": fleet.server_id("s2"), "project_id": P}
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # The daemon in a mount namespace of its own where its state directory is a 16 MB tmpfs.
    mount = 'mount -t tmpfs -o size=16m faults-state "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", mount]
    rsync = lambda a: a[0].endswith(b"rsync") and b"--ignore-existing" in a  # noqa: E731
    garbage = fleet.hosts["s1"].bups_dir / P / "objects" / "tmp_obj_planted"
    with Daemon(config, url, prefix=[*prefix, str(state_dir)]) as d:
        first = wait_metric(d, lambda f: sweeps(f) >= 1, what="the first sweep")
        inside = Path(f"/proc/{d.pid}/root") / state_dir.relative_to("/")
        db = inside / "state.db"
        r = httpx.post(f"{url}/api/repairs", json=body, headers=auth, timeout=10)
        assert r.status_code == 202, r.text
        [entry] = wait_until(
            lambda: [e for e in _repairs(url) if e["status"] == "running"],
            timeout=60,
            what="the resync to start",
        )
        wait_until(lambda: host_pids(fleet, "s2", rsync), timeout=30, what="the rsync on s2")
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
        running_when_full = (_entry(url, entry["id"]) or {}).get("status")
        ended = wait_until(
            lambda: (e := _entry(url, entry["id"])) and e["status"] != "running" and e,
            timeout=120,
            what="the resync to end",
        )
        on_file_after_end = (
            state_query(db, "SELECT status FROM journal WHERE id=?", (entry["id"],)),
            state_query(db, "SELECT target FROM leases"),
        )
        garbage.write_bytes(b"left by an interrupted save")
        planted = wait_until(
            lambda: [
                f
                for f in (get(f"{url}/api/findings?check=repo_garbage") or httpx.Response(503))
                .json()
                .get("findings", [])
                if f["project_id"] == P
            ],
            timeout=40,
            what="the planted fault on /api/findings",
        )
        while_full = wait_metric(
            d,
            lambda f: sweeps(f) >= sweeps(full) + 2,
            what="two more sweeps on /metrics while the disk is full",
        )
        healthz = get(f"{url}/healthz")
        alive_while_full = d.proc.poll() is None
        (inside / "filler").unlink()
        freed = time.monotonic()
        wait_metric(
            d,
            lambda f: sample(f, "bupwatch_state_writable") == 1,
            what="the kept writes to reach the file",
        )
        written_after = time.monotonic() - freed
        on_file = state_query(
            db, "SELECT status, finished_at, output FROM journal WHERE id=?", (entry["id"],)
        )
        leases_on_file = state_query(db, "SELECT target, holder FROM leases")
        sweeps_on_file = state_query(db, "SELECT COUNT(*) FROM sweeps")[0][0]
        garbage_on_file = state_query(
            db,
            "SELECT code FROM findings WHERE check_name='repo_garbage' AND project_id=? "
            "AND resolved_at IS NULL",
            (P,),
        )
        again = httpx.post(f"{url}/api/repairs", json=body, headers=auth, timeout=10)
        retry = wait_until(
            lambda: [e for e in _repairs(url) if e["id"] > entry["id"]],
            timeout=60,
            what="the retry's decision",
        )[0]
        # The resync fast-forwarded the replica's ref (checked below): not a loss.
        lost = stake.loss(moved=frozenset({f"s2:bups:{P}/refs/heads/master"}))
        lost += state_loss(db, rows)
        code = d.stop()

    new = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    git_out(fleet, "s2", P, "merge-base", "--is-ancestor", old, new)  # raises unless forward
    assert new == git_out(fleet, "s1", P, "rev-parse", "refs/heads/master")
    assert bup_ls(fleet, "s2", P).returncode == 0
    assert sample(first, "bupwatch_state_writable") == 1
    assert running_when_full == "running", "the resync ended before the disk was full: slow it"
    assert ended["status"] == "succeeded", ended
    assert on_file_after_end == ([("running",)], [(f"{fleet.server_id('s2')}/{P}",)]), (
        "the outcome and the release were kept in memory, not on the full file"
    )
    assert sample(while_full, "bupwatch_state_writable") == 0, "the sweeps came from memory"
    assert sample(full, "bupwatch_state_up") == 1, "the state is still readable"
    errors = sample(full, "bupwatch_state_write_errors_total") or 0
    assert errors >= 1
    assert healthz is not None and healthz.status_code == 200 and alive_while_full
    assert on_file[0][0] == "succeeded" and on_file[0][1] is not None, on_file
    assert leases_on_file == [], "the lease was released on the file too"
    assert sweeps_on_file >= sweeps(while_full), "no sweep row lost: the counter never goes back"
    assert garbage_on_file, "the fault found while the disk was full reached the file"
    assert again.status_code == 202
    assert not (retry["refusal"] or "").startswith("lease"), retry
    assert code == 0 and not d.crashed
    assert "cannot be written" in d.log() and "can be written again" in d.log()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="watchdog",
        what=f"the state directory's filesystem full (a 16 MB tmpfs, filled with "
        f"{filled // 1024} KiB) while resync_replica runs (--bwlimit)",
        expected="the outcome and the lease's release are kept in memory; sweeps go on and "
        "reach /metrics and /api/findings from memory with bupwatch_state_writable 0; once "
        "space is back all of it reaches the file in order; the target can be repaired again",
        observed=f"resync {ended['status']} while full (the file still said running, lease "
        f"held); {int(sweeps(while_full) - sweeps(full))} sweeps on /metrics while full, the "
        f"planted {planted[0]['code']} on /api/findings; write errors {errors:g}, /healthz 200; "
        f"{written_after:.1f} s after the filler went: writable 1, row succeeded, no lease, "
        f"{sweeps_on_file} sweep rows; a new request: {retry['status']} "
        f"({(retry['refusal'] or 'ran').split(':')[0]}), not refused by a lease",
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
