"""The progress book of batch operations, on a real state database (and a real full disk)."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bup_watchdog.batches import BatchItem, batch_progress, finish_batch, item_done, start_batch
from bup_watchdog.metrics import StateCollector
from bup_watchdog.report import build_report, render
from bup_watchdog.state import State
from support.scrape import promtool_check_metrics

A, B, C, D = (f"5b7e2a10-000{i}-4c3d-8e9f-00000000000{i}" for i in range(1, 5))


def started(state: State, batch_id: str = "rebuild-b-1", at: float = 1000.0) -> None:
    items = [BatchItem(A, 100), BatchItem(B, 50), BatchItem(C, 30), BatchItem(D, 400)]
    start_batch(state, batch_id=batch_id, kind="rebuild", host="b", items=items, now=at)


def test_a_batch_counts_copies_and_bytes_and_its_eta_comes_from_the_bytes_per_second_so_far(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    started(state)

    fresh = batch_progress(state, now=1001.0)
    item_done(state, "rebuild-b-1", A, status="succeeded", now=1010.0)
    item_done(state, "rebuild-b-1", B, status="refused", reason="mode_off: off", now=1011.0)
    item_done(state, "rebuild-b-1", C, status="pending_approval", now=1012.0)
    [running] = batch_progress(state, now=1013.0)
    finish_batch(state, "rebuild-b-1", stopped="--max-copies 3 reached", now=1014.0)
    [ended] = batch_progress(state, now=1015.0)

    assert [(p.total, p.left, p.done, p.eta_seconds) for p in fresh] == [(4, 4, 0, None)]
    assert fresh[0].running and fresh[0].bytes_total == 580
    assert (running.done, running.failed, running.pending, running.left) == (1, 1, 1, 1)
    assert (running.bytes_done, running.bytes_total) == (100, 580)
    assert running.eta_seconds == pytest.approx(40.0)  # 400 bytes left at 100 bytes / 10 s
    assert running.failures == ((B, "mode_off: off"),)
    assert running.running and running.finished is None and running.updated == 1012.0
    assert not ended.running and ended.finished == 1014.0 and ended.eta_seconds is None
    assert ended.stopped == "--max-copies 3 reached" and ended.left == 1


def test_only_batches_that_recorded_something_since_the_window_or_still_run_are_listed(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    started(state, "rebuild-b-old", at=1000.0)
    finish_batch(state, "rebuild-b-old", now=1100.0)
    started(state, "rebuild-b-live", at=1200.0)  # unfinished, and this process is alive
    started(state, "rebuild-b-new", at=5000.0)
    finish_batch(state, "rebuild-b-new", now=5100.0)

    listed = [p.batch_id for p in batch_progress(state, since=4000.0, now=6000.0)]

    assert listed == ["rebuild-b-new", "rebuild-b-live"]


def test_a_batch_whose_process_was_killed_is_not_running_and_says_it_was_interrupted(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    State(db).close()
    code = (
        "import sys, os; from pathlib import Path; from bup_watchdog.state import State; "
        "from bup_watchdog.batches import BatchItem, start_batch; "
        "start_batch(State(Path(sys.argv[1])), batch_id='rebuild-b-9', kind='rebuild', "
        "host='b', items=[BatchItem(sys.argv[2], 10)]); os.kill(os.getpid(), 9)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(db), A], check=False)

    [p] = batch_progress(State(db))

    assert killed.returncode == -9
    assert not p.running and p.finished is None and p.left == 1
    assert p.stopped.startswith("interrupted: its process (") and p.stopped.endswith(") is gone")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (mounted as root, unmounted after)."""
    where = tmp_path / "state"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "batches", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_on_a_full_state_disk_the_book_is_kept_in_memory_and_written_once_space_returns(
    small_disk: Path,
) -> None:
    state = State(small_disk / "state.db", retry_seconds=0.2)
    with (small_disk / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 16384)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    items = [BatchItem(f"5b7e2a10-0000-4c3d-8e9f-{i:012x}", 10) for i in range(5000)]

    start_batch(state, batch_id="rebuild-b-2", kind="rebuild", host="b", items=items)
    item_done(state, "rebuild-b-2", items[0].project_id, status="succeeded")
    in_memory = (state.writable, batch_progress(state)[0].done)
    (small_disk / "filler").unlink()
    deadline = time.monotonic() + 10
    while not state.writable and time.monotonic() < deadline:
        time.sleep(0.05)
    state.close()

    [p] = batch_progress(State(small_disk / "state.db"))
    assert in_memory == (False, 1)
    assert (p.total, p.done, p.left) == (5000, 1, 4999)


def test_a_write_that_fails_is_a_warning_and_never_an_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = State(tmp_path / "state.db")
    state.close()  # every write now fails

    with caplog.at_level(logging.WARNING, logger="bup_watchdog.batches"):
        started(state)
        item_done(state, "rebuild-b-1", A, status="failed", reason="rsync: exit 23")
        finish_batch(state, "rebuild-b-1")

    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "cannot record the start of rebuild-b-1 in the state",
        f"cannot record {A} of rebuild-b-1 in the state",
        "cannot record the end of rebuild-b-1 in the state",
    ]


def test_metrics_show_batches_running_or_of_the_last_day_and_promtool_has_nothing_to_say(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    now = time.time()
    started(state, "rebuild-b-now", at=now - 100)
    item_done(state, "rebuild-b-now", A, status="succeeded", now=now - 90)
    item_done(state, "rebuild-b-now", B, status="failed", reason="rsync: exit 23", now=now - 80)
    started(state, "rebuild-b-old", at=now - 3 * 86400)
    finish_batch(state, "rebuild-b-old", now=now - 2 * 86400)
    reg = CollectorRegistry()
    reg.register(StateCollector(state, lambda: {}, []))

    body = generate_latest(reg).decode()

    labels = {"batch": "rebuild-b-now", "kind": "rebuild", "host": "b"}
    copies = {
        s: reg.get_sample_value("bupwatch_rebuild_copies", {**labels, "status": s})
        for s in ("done", "failed", "pending", "left")
    }
    assert copies == {"done": 1, "failed": 1, "pending": 0, "left": 2}
    assert reg.get_sample_value("bupwatch_rebuild_bytes", {**labels, "what": "total"}) == 580
    assert reg.get_sample_value("bupwatch_rebuild_bytes", {**labels, "what": "done"}) == 100
    eta = reg.get_sample_value("bupwatch_rebuild_eta_seconds", labels)
    assert eta == pytest.approx(430 / (100 / 10), rel=0.01)  # C and D left, 100 bytes in 10 s
    assert reg.get_sample_value("bupwatch_rebuild_running", labels) == 1
    assert "rebuild-b-old" not in body  # finished two days ago
    assert promtool_check_metrics(body) == ""


def test_the_report_lists_each_batch_with_eta_and_failures_in_html_markdown_and_json(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.db")
    now = time.time()
    started(state, "rebuild-b-now", at=now - 100)
    item_done(state, "rebuild-b-now", A, status="succeeded", now=now - 90)
    item_done(state, "rebuild-b-now", B, status="failed", reason="rsync <exit 23>", now=now - 80)
    report = build_report(state, now=now)

    html, md = render(report, "html"), render(report, "md")
    data = json.loads(render(report, "json"))

    [b] = data["batches"]["batches"]
    assert data["batches"]["running"] == 1 and b["running"] and b["eta_seconds"] == 43
    assert b["copies"] == {"total": 4, "done": 1, "left": 2, "failed": 1, "pending": 0}
    assert b["failures"] == [{"project_id": B, "reason": "rsync <exit 23>"}]
    assert '<section id="batches">' in html and 'href="#batches"' in html
    assert "rsync &lt;exit 23&gt;" in html and "rsync <exit" not in html
    assert "| `rebuild-b-now` | rebuild | b |" in md and "| 1 / 4 | 2 | 1 | 0 |" in md
    assert f"- `{B}`: rsync &lt;exit 23&gt;" in md  # escaped as every text of the report
    assert "| 43 s |" in md  # the ETA while it runs


def test_a_report_without_batches_has_no_such_section(tmp_path: Path) -> None:
    report = build_report(State(tmp_path / "state.db"))

    assert report["batches"] == {"running": 0, "batches": []}
    assert "Rebuilds and evacuations" not in render(report, "html") + render(report, "md")
