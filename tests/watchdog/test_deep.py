"""The deep tier: budget selection (pure) and real deep checks on the sandbox fleet."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config import DeepConfig
from bup_watchdog.config_load import load_config
from bup_watchdog.deep import select
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import DeepResult, RepoFacts
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep
from support.facts import P1, P2, SHA_A, SHA_B
from support.facts import repo as repo_record

P3 = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
NOW = 1_800_000_000.0


def repos(**overrides: dict[str, object]) -> dict[str, RepoFacts]:
    out = {}
    for pid in (P1, P2, P3):
        out[pid] = RepoFacts.from_record(repo_record(pid, **overrides.get(pid, {})))
    return out


def test_never_checked_repos_come_first_then_the_least_recently_checked() -> None:
    book = {P1: DeepResult(P1, NOW - 100, True, SHA_A), P2: DeepResult(P2, NOW - 900, True, SHA_A)}
    chosen = select(repos(), book, DeepConfig(per_host=2, changed_per_host=0), NOW)
    assert chosen == [P3, P2]


def test_a_repo_whose_master_changed_is_checked_at_once_beyond_the_budget() -> None:
    book = {pid: DeepResult(pid, NOW - 10, True, SHA_A) for pid in (P1, P2, P3)}
    changed = repos(**{P2: {"master_sha": SHA_B}})
    chosen = select(changed, book, DeepConfig(per_host=1, changed_per_host=5), NOW)
    assert chosen[0] == P2 and len(chosen) == 2


def test_a_wrong_looking_repo_is_rechecked_at_most_hourly() -> None:
    wrong = repos(**{P1: {"master_in_pack": False}})
    recent = {P1: DeepResult(P1, NOW - 60, False, SHA_A)}
    old = {P1: DeepResult(P1, NOW - 7200, False, SHA_A)}
    cfg = DeepConfig(per_host=0, changed_per_host=5)
    assert select(wrong, recent, cfg, NOW) == []
    assert select(wrong, old, cfg, NOW) == [P1]


def delete_an_older_pack(repo: Path) -> str:
    """Delete a pack that does NOT hold the newest commit: the cheap tier cannot see this."""
    master = (repo / "refs" / "heads" / "master").read_text().strip()
    for idx in sorted((repo / "objects" / "pack").glob("*.idx")):
        shas = subprocess.run(
            ["git", "show-index"], stdin=idx.open("rb"), capture_output=True, check=True
        ).stdout.decode()
        if master not in shas:
            idx.with_suffix(".pack").unlink()
            return idx.name
    raise AssertionError("no older pack to delete")


@pytest.mark.parametrize("refs", ["loose", "packed"])
def test_a_deleted_older_pack_passes_the_cheap_tier_and_fails_the_deep_one(
    scratch_fleet: SandboxFleet, tmp_path: Path, refs: str
) -> None:
    """``packed``: after a real ``git pack-refs --all`` master has no loose ref; the deep probe
    read only the loose one, so its master never matched the cheap one's and the failed fsck
    was never reported (regression)."""
    repo = scratch_fleet.repo_path("s1", SCRATCH_P1)
    delete_an_older_pack(repo)
    if refs == "packed":
        subprocess.run(["git", "--git-dir", str(repo), "pack-refs", "--all"], check=True)
        assert not (repo / "refs" / "heads" / "master").exists()
    config = load_config(scratch_fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    state = State(tmp_path / "state.db")
    cheap = sweep(config, inventory, only=["repo_integrity"], state=state)
    assert cheap.findings == []
    deep = sweep(config, inventory, only=["repo_integrity"], state=state, deep=True)
    s1 = scratch_fleet.server_id("s1")
    assert [(f.server_id, f.project_id, f.code) for f in deep.findings] == [
        (s1, SCRATCH_P1, "deep_check_failed")
    ]
    assert "git fsck --connectivity-only failed" in deep.findings[0].message
    assert deep.facts[s1].deep_checked_now == 1
    again = sweep(config, inventory, only=["repo_integrity"], state=state)
    assert [f.code for f in again.findings] == ["deep_check_failed"], "kept from the state"


def test_deep_checks_of_healthy_repos_pass_and_are_booked(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = load_config(scratch_fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    state = State(tmp_path / "state.db")
    result = sweep(config, inventory, state=state, deep=True)
    assert result.findings == []
    assert state.deep_coverage(7 * 86400) == {sid: 1 for sid in inventory.servers}
    assert all(f.ssh_sessions == 2 for f in result.facts.values()), "probe + deep, one connection"


def test_a_week_of_hourly_passes_covers_a_host_of_ten_thousand_repositories() -> None:
    """per_host = 50 an hour is 8,400 a week: the budget grows to keep the 7-day window."""
    pids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(10_000)]
    host = {pid: RepoFacts.of(pid, master_sha=SHA_A, reflog_last_time=1) for pid in pids}
    settings = DeepConfig(per_host=50, changed_per_host=50, window_days=7)
    book: dict[str, DeepResult] = {}
    for hour in range(7 * 24):
        now = NOW + hour * 3600
        chosen = select(host, book, settings, now, pass_seconds=3600)
        assert len(chosen) == 72  # ceil(1.2 x 10,000 / 168)
        book.update((pid, DeepResult(pid, now, True, SHA_A)) for pid in chosen)
    assert len(book) == len(host)
    assert select(host, {}, settings, NOW) == pids[:50]  # no schedule given: per_host alone


def test_per_host_zero_keeps_the_rolling_checks_off_whatever_the_window() -> None:
    book = {pid: DeepResult(pid, NOW - 10, True, SHA_A) for pid in (P1, P2, P3)}
    off = DeepConfig(per_host=0, changed_per_host=5, window_days=0.001)
    assert select(repos(), book, off, NOW, pass_seconds=3600) == []
