"""rotate_save_log: the old log archived gzipped, the newest lines kept, not one record lost."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import SCRATCH_P1

from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.repairs.rotate_save_log import PROGRAM
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import make_guard, repo_inside

MB = 1_000_000


def save_log_lines(size: int, first: int = 1_300_000_000) -> bytes:
    """Records like the fleet's save log, one JSON object per line, about ``size`` bytes."""
    out: list[bytes] = []
    total = 0
    k = 0
    while total < size:
        chunk = "".join(
            f'{{"timestamp": {first + 30 * i}, "files": {100 + i % 997}, '
            f'"size_kb": {50000 + i % 49999}}}\n'
            for i in range(k, k + 20000)
        ).encode()
        out.append(chunk)
        total += len(chunk)
        k += 20000
    return b"".join(out)


def test_rotate_save_log_archives_a_60_mb_log_and_keeps_the_newest_lines_losing_none(
    scratch_fleet: SandboxFleet,
) -> None:
    conf = scratch_fleet.repo_path("s1", SCRATCH_P1) / "conf"
    log = conf / "save_log.json"
    original = save_log_lines(60 * MB)
    log.write_bytes(original)
    os.chown(log, 1234, 1234)
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")

    decision = guard.submit(RepairRequest("rotate_save_log", s1, SCRATCH_P1), execute=True)

    assert decision.status == "succeeded", decision.message
    [archive] = conf.glob("save_log-*.json.gz")
    tail = log.read_bytes()
    assert gzip.decompress(archive.read_bytes()) + tail == original
    assert 0 < len(tail) <= guard.config.repair("rotate_save_log").keep_bytes
    assert tail.endswith(b"\n") and original[: -len(tail)].endswith(b"\n")
    assert (log.stat().st_uid, archive.stat().st_uid) == (1234, 1234)
    [entry] = guard.journal.entries(status="succeeded")
    assert archive.name in (entry.output or "")
    assert "save_log_size passes" in (entry.verification or "")


def test_rotate_save_log_never_reads_or_moves_a_save_log_that_is_a_symlink_to_etc_shadow(
    scratch_fleet: SandboxFleet,
) -> None:
    conf = scratch_fleet.repo_path("s1", SCRATCH_P1) / "conf"
    log = conf / "save_log.json"
    log.unlink()
    log.symlink_to("/etc/shadow")
    shadow = os.stat("/etc/shadow")
    shadow_sum = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")

    decision = guard.submit(RepairRequest("rotate_save_log", s1, SCRATCH_P1), execute=True)
    # The program on its own refuses too (a symlink planted after the guard's probe).
    direct = scratch_fleet.hosts["s1"].run(
        ["python3", "-S", "-", repo_inside(scratch_fleet, "s1", SCRATCH_P1), "10", "0"],
        input=PROGRAM,
    )

    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert "symlink" in (entry.refusal or "") and "save_log.json" in (entry.refusal or "")
    assert direct.returncode == 2 and "is a symlink" in direct.stderr
    assert os.readlink(log) == "/etc/shadow"
    after = os.stat("/etc/shadow")
    assert (after.st_ino, after.st_mtime_ns, after.st_size, after.st_nlink) == (
        shadow.st_ino,
        shadow.st_mtime_ns,
        shadow.st_size,
        shadow.st_nlink,
    )
    assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == shadow_sum
    assert sorted(p.name for p in conf.iterdir() if "save_log" in p.name) == ["save_log.json"]


def test_the_rotation_program_keeps_every_line_a_writer_appends_while_it_runs(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "repo" / "conf"
    conf.mkdir(parents=True)
    log = conf / "save_log.json"
    original = save_log_lines(20 * MB)
    log.write_bytes(original)
    appended: list[bytes] = []
    stop = threading.Event()

    def writer() -> None:  # as the fleet's tooling does: open, append one line, close
        n = 0
        while not stop.is_set():
            line = b'{"timestamp": %d, "files": 1, "size_kb": 1, "writer": true}\n' % n
            with open(log, "ab") as f:
                f.write(line)
            appended.append(line)
            n += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        done = subprocess.run(
            ["python3", "-S", "-", str(tmp_path / "repo"), str(MB), "0.3"],
            input=PROGRAM.encode(),
            capture_output=True,
        )
    finally:
        stop.set()
        thread.join()

    assert done.returncode == 0, done.stderr
    [archive] = conf.glob("save_log-*.json.gz")
    archived = gzip.decompress(archive.read_bytes())
    assert original.startswith(archived)
    rotated = (archived + log.read_bytes()).splitlines(keepends=True)
    expected = (original + b"".join(appended)).splitlines(keepends=True)
    assert len(appended) > 100
    assert Counter(rotated) == Counter(expected)
