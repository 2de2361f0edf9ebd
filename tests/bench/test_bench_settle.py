"""bench/settle.py: what it counts as an open session, and that its walk sees every entry once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.settle import sessions, settle, warm


def test_a_child_of_a_listener_counts_as_an_open_session_until_it_is_reaped() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert sessions([os.getpid()]) == 1
    finally:
        child.communicate(b"")
    assert sessions([os.getpid()]) == 0
    assert sessions([2**22 + 1]) == 0  # a listener that is gone has none


def test_the_walk_sees_every_entry_of_every_host_and_follows_no_symlink(tmp_path: Path) -> None:
    hosts = []
    for name in ("s01", "s02"):
        repo = tmp_path / name / "bups" / "a"
        (repo / "objects" / "pack").mkdir(parents=True)
        (repo / "HEAD").write_text("ref: refs/heads/master\n")
        (repo / "elsewhere").symlink_to(tmp_path)  # followed, it would count the other host
        hosts.append(tmp_path / name / "bups")
    seconds, entries = warm(hosts)
    assert seconds >= 0
    assert entries == 2 * 6  # bups, a, objects, pack, HEAD, elsewhere


def test_settle_gives_up_waiting_after_max_wait_and_says_so(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        row = settle([tmp_path], [os.getpid()], max_wait=0.5)  # the busy loop is a session
    finally:
        busy.kill()
        busy.wait()
    assert row["quiet"] is False
    assert row["sessions_before"] == 1 and row["sessions"] == 1
    assert row["warm_entries"] == 1 and row["waited"] >= 0.5
