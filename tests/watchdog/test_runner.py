"""The runner: its inventory cache and its incremental-sweep cache."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import parse_config
from bup_watchdog.inventory.file import RACY_SECONDS, FileInventory
from bup_watchdog.model import Finding, Severity
from bup_watchdog.runner import Runner, load_inventory
from bup_watchdog.state import State
from support.facts import P1, S1, S2, local_inventory

TEXT = f"""
[[servers]]
server_id = "{S1}"
host = "127.0.1.2"
port = 6000

[[projects]]
project_id = "{P1}"
master = "{S1}"
disk_mb = 1
"""


def _saved_at(state: State) -> float:
    return float(state.query("SELECT saved_at FROM inventory_cache WHERE id=1")[0][0])


def test_the_cache_is_written_again_only_when_the_inventory_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(TEXT)
    time.sleep(RACY_SECONDS + 0.1)
    state = State(tmp_path / "state.db")
    source = FileInventory(path)
    load_inventory(source, state)
    first = _saved_at(state)
    load_inventory(source, state)
    assert _saved_at(state) == first
    path.write_text(TEXT.replace("disk_mb = 1", "disk_mb = 2"))
    inventory = load_inventory(source, state)
    assert inventory.projects[P1].disk_mb == 2
    assert _saved_at(state) > first
    cached = state.cached_inventory()
    assert cached is not None and cached[2]["projects"][0]["disk_mb"] == 2


def test_a_new_process_on_an_unchanged_file_keeps_the_cached_copy_and_marks_it_current(
    tmp_path: Path,
) -> None:
    # Each `bup-watchdog check` is a new process: it must not rewrite the whole cached inventory
    # (~2 s of CPU at 100,000 projects) when the file did not change; SQLite counts the writes.
    path = tmp_path / "inventory.toml"
    path.write_text(TEXT)
    time.sleep(RACY_SECONDS + 0.1)
    load_inventory(FileInventory(path), State(tmp_path / "state.db"))
    state = State(tmp_path / "state.db")
    for sql in (
        "CREATE TABLE saves (n INTEGER)",
        "INSERT INTO saves VALUES (0)",
        "CREATE TRIGGER counted AFTER INSERT ON inventory_cache "
        "BEGIN UPDATE saves SET n = n + 1; END",
    ):
        state.write(lambda db, sql=sql: db.execute(sql))
    first = _saved_at(state)
    time.sleep(0.01)
    load_inventory(FileInventory(path), state)  # as the next process would
    assert state.query("SELECT n FROM saves")[0][0] == 0
    assert _saved_at(state) > first
    path.write_text(TEXT.replace("disk_mb = 1", "disk_mb = 3"))
    time.sleep(RACY_SECONDS + 0.1)
    load_inventory(FileInventory(path), State(tmp_path / "state.db"))
    assert state.query("SELECT n FROM saves")[0][0] == 1
    cached = state.cached_inventory()
    assert cached is not None and cached[2]["projects"][0]["disk_mb"] == 3


def _config(tmp_path: Path, incremental: dict[str, object]) -> Config:
    data = {
        "inventory": {"file": str(tmp_path / "inventory.toml")},
        "state": {"directory": str(tmp_path)},
        "incremental": incremental,
    }
    return parse_config(data, settings_models(), source="test", base=tmp_path)


def test_only_a_runner_asked_to_be_incremental_keeps_a_repo_cache(tmp_path: Path) -> None:
    source = FileInventory(tmp_path / "inventory.toml")
    on = _config(tmp_path, {"full_walk_seconds": 600})
    assert Runner(on, None, source).repo_cache is None  # one-shot commands walk everything
    cache = Runner(on, None, source, incremental=True).repo_cache
    assert cache is not None and cache.max_age == 600
    off = _config(tmp_path, {"enabled": False})
    assert Runner(off, None, source, incremental=True).repo_cache is None


def test_a_sweep_after_a_server_left_the_inventory_resolves_its_findings(tmp_path: Path) -> None:
    path = local_inventory(tmp_path)
    state = State(tmp_path / "state.db")
    gone = Finding("reachability", S2, Severity.CRITICAL, "down", code="ssh_unreachable")
    state.raise_finding(gone)
    config = _config(tmp_path, {})
    config.ssh.python = sys.executable
    assert [f.server_id for f in state.open_findings()] == [S2]
    Runner(config, state, FileInventory(path)).run_once(force=True, only=["reachability"])
    assert S2 not in {f.server_id for f in state.open_findings()}  # S1's own findings may stay
