"""rebuild HOST on a real sandbox fleet: host b lost two replica repositories and holds a third
one save behind; real bup repositories, real rsync over the hosts' own SSH, through the guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from bup_watchdog.batches import batch_progress
from bup_watchdog.cli import main
from bup_watchdog.journal import Journal
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Server
from bup_watchdog.rebuild import (
    Budget,
    Copy,
    Plan,
    RebuildUsageError,
    compute_plan,
    name_half_copies,
    parse_bwlimit,
    parse_command,
)
from bup_watchdog.report import build_report, render
from bup_watchdog.runner import open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from support.fleet import fleet_config, git_digest, git_out
from support.fleet_template import CopiedReposFleet, RepoTemplates

P_RECENT = "7a1b2c3d-0001-4e5f-8a9b-000000000001"  # missing on b, used an hour ago
P_OLDER = "7a1b2c3d-0002-4e5f-8a9b-000000000002"  # missing on b, used two days ago
P_OLD = "7a1b2c3d-0003-4e5f-8a9b-000000000003"  # one save behind on b, used 30 days ago
P_MASTERED = "7a1b2c3d-0004-4e5f-8a9b-000000000004"  # b is its master: in step
TODO = [P_RECENT, P_OLDER, P_OLD]  # most recently used first
# --execute counts as approval (resync_replica's mode stays approve); room in the rate limits.
EXTRA = "[guard]\nmax_per_hour_per_host = 50\n[repairs.resync_replica]\nmax_per_hour = 50\n"


def spec() -> FleetSpec:
    return FleetSpec(
        hosts=(HostSpec("a", dc=0), HostSpec("b", dc=1)),
        projects=(
            ProjectSpec(P_RECENT, master="a", replicas=("b",), files=2),
            ProjectSpec(P_OLDER, master="a", replicas=("b",), files=2),
            ProjectSpec(P_OLD, master="a", replicas=("b",), files=2, stale_on=("b",)),
            ProjectSpec(P_MASTERED, master="b", replicas=("a",), files=2),
        ),
    )


@pytest.fixture()
def fleet(tmp_path: Path, repo_templates: RepoTemplates) -> Iterator[SandboxFleet]:
    """b after a disk replacement: two replica repositories gone, one behind."""
    with CopiedReposFleet(tmp_path / "fleet", spec(), repo_templates) as fleet:
        for pid in (P_RECENT, P_OLDER):
            subprocess.run(["rm", "-rf", str(fleet.repo_path("b", pid))], check=True)
        now = time.time()
        for pid, age in ((P_RECENT, 3600), (P_OLDER, 2 * 86400), (P_OLD, 30 * 86400)):
            touch = fleet.repo_path("a", pid) / "conf" / "touch"
            os.utime(touch, (now - age, now - age))
        fleet_config(fleet, EXTRA)  # writes config-test.toml beside the fleet's config
        yield fleet


def rebuild(fleet: SandboxFleet, *args: str) -> Result:
    config = fleet.config_path.with_name("config-test.toml")
    return CliRunner().invoke(main, ["rebuild", "-c", str(config), "b", *args])


def heads(fleet: SandboxFleet, host: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pid in TODO:
        repo = fleet.repo_path(host, pid)
        out[pid] = (
            git_out(fleet, host, pid, "rev-parse", "refs/heads/master")
            if (repo / "refs/heads/master").exists()
            else None
        )
    return out


def journal(fleet: SandboxFleet) -> Journal:
    return Journal(open_state(fleet_config(fleet, EXTRA)))


def test_a_dry_run_shows_the_plan_most_recently_used_first_with_sizes_and_changes_nothing(
    fleet: SandboxFleet,
) -> None:
    before = {pid: git_digest(fleet.repo_path("a", pid)) for pid in TODO}
    b_before = heads(fleet, "b")

    text = rebuild(fleet, "--dry-run", "--bwlimit", "1M")
    data = rebuild(fleet, "--format", "json")
    week = rebuild(fleet, "--touched-within", "7d", "--format", "json")

    assert text.exit_code == 0, text.output
    lines = [line for line in text.output.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert [line.split()[1] for line in lines] == TODO
    assert "missing" in lines[0] and "behind" in lines[2]
    assert "estimate:" in text.output and "--bwlimit 1024 KiB/s" in text.output
    assert data.exit_code == 0, data.output
    plan = json.loads(data.output)
    assert [c["project_id"] for c in plan["copies"]] == TODO
    assert [c["state"] for c in plan["copies"]] == ["missing", "missing", "behind"]
    sizes = [c["bytes_to_copy"] for c in plan["copies"]]
    assert all(s > 0 for s in sizes[:2]), sizes  # a missing copy: the master's whole repo_size
    assert plan["copies"][0]["master_bytes"] == sizes[0]
    assert plan["in_step"] == 1 and plan["blocked"] == []  # b's own master copy
    # --touched-within 7d: the project last used 30 days ago is left out.
    assert [c["project_id"] for c in json.loads(week.output)["copies"]] == TODO[:2]
    assert json.loads(week.output)["outside_window"] == 1
    assert json.loads(week.output)["in_step"] == 1
    # Nothing changed, nothing journaled.
    assert heads(fleet, "b") == b_before
    assert {pid: git_digest(fleet.repo_path("a", pid)) for pid in TODO} == before
    assert journal(fleet).entries() == []


def test_an_interrupted_rebuild_resumes_without_redoing_copies_and_ends_with_every_head_equal(
    fleet: SandboxFleet,
) -> None:
    masters = {pid: git_digest(fleet.repo_path("a", pid)) for pid in TODO}
    want = heads(fleet, "a")

    first = rebuild(fleet, "--execute", "--max-copies", "1", "--bwlimit", "50M")

    assert first.exit_code == 1, first.output  # copies left for the next run
    assert "1 copies brought in step" in first.output and "2 left" in first.output
    assert heads(fleet, "b")[P_RECENT] == want[P_RECENT]  # the most recently used went first
    assert heads(fleet, "b")[P_OLDER] is None
    [row] = journal(fleet).entries()
    assert row.project_id == P_RECENT and row.status == "succeeded"
    assert row.reason.startswith("rebuild-b-") and row.params["rebuild"] in row.reason
    assert row.params["bwlimit_kib"] == 50 * 1024
    assert any("--bwlimit=51200" in step["command"] for step in row.plan)

    second = rebuild(fleet, "--execute", "--parallel", "2")

    assert second.exit_code == 0, second.output
    assert "2 copies brought in step" in second.output
    assert heads(fleet, "b") == want
    rows = journal(fleet).entries()
    assert sorted(r.project_id or "" for r in rows) == sorted(TODO)  # none done twice
    assert all(r.status == "succeeded" and r.repair == "resync_replica" for r in rows)
    assert {pid: git_digest(fleet.repo_path("a", pid)) for pid in TODO} == masters

    third = rebuild(fleet, "--execute")

    assert third.exit_code == 0, third.output
    assert "0 copies to bring in step" in third.output
    assert len(journal(fleet).entries()) == 3
    # The progress book: both runs finished, with their counts; the third had nothing to do.
    state = open_state(fleet_config(fleet, EXTRA))
    one, two = sorted(batch_progress(state), key=lambda b: b.started)
    assert one.batch_id == row.params["rebuild"] and one.kind == "rebuild" and one.host == "b"
    assert (one.total, one.done, one.left, one.failed) == (3, 1, 2, 0)
    assert one.stopped == "--max-copies 1 reached" and not one.running and one.finished
    assert (two.total, two.done, two.left, two.failed, two.stopped) == (2, 2, 0, 0, "")
    assert two.bytes_done == two.bytes_total > 0 and not two.running
    # ... as the audit report and /metrics show it.
    md = render(build_report(state), "md")
    section = md[md.index("## Rebuilds and evacuations (2)") : md.index("## Repairs")]
    assert f"| `{one.batch_id}` | rebuild | b |" in section
    assert "--max-copies 1 reached | 1 / 3 | 2 | 0 | 0 |" in section
    assert "| 2 / 2 | 0 | 0 | 0 |" in section
    reg = CollectorRegistry()
    reg.register(StateCollector(state, lambda: {}, []))
    labels = {"batch": one.batch_id, "kind": "rebuild", "host": "b"}
    for status, n in (("done", 1), ("left", 2), ("failed", 0), ("pending", 0)):
        assert reg.get_sample_value("bupwatch_rebuild_copies", {**labels, "status": status}) == n
    assert reg.get_sample_value("bupwatch_rebuild_running", labels) == 0
    assert reg.get_sample_value("bupwatch_rebuild_eta_seconds", labels) is None
    assert reg.get_sample_value(
        "bupwatch_rebuild_bytes",
        {"batch": two.batch_id, "kind": "rebuild", "host": "b", "what": "done"},
    ) == float(two.bytes_done)


def test_the_plan_is_pure_and_a_budget_shares_the_bandwidth_among_parallel_copies(
    fleet: SandboxFleet,
) -> None:
    from bup_watchdog.gather import gather
    from bup_watchdog.inventory.file import FileInventory

    config = fleet_config(fleet, EXTRA)
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    facts = {f.server_id: f for f in gather(inventory.servers.values(), config.ssh)}
    b = fleet.server_id("b")

    plan = compute_plan(b, inventory, facts, now=time.time())
    again = compute_plan(b, inventory, facts, now=time.time())

    assert plan == again
    assert [c.project_id for c in plan.todo] == TODO
    budget = Budget(parallel=3, bwlimit_kib=3000)
    assert budget.per_copy_kib == 1000
    assert budget.estimate_seconds(3000 * 1024 * 10) == pytest.approx(10)
    facts[fleet.server_id("a")].failure_message = "frozen"
    facts[fleet.server_id("a")].repos.clear()  # the master's copies unreadable now
    blocked = compute_plan(b, inventory, facts, now=time.time())
    assert blocked.todo == () and len(blocked.blocked) == 3
    assert all(c.why.startswith("master_unreadable") for c in blocked.blocked)


def test_a_refusal_that_holds_for_every_copy_stops_the_rebuild_after_one_journaled_refusal(
    fleet: SandboxFleet,
) -> None:
    fleet_config(fleet, EXTRA + 'mode = "dry-run"\n')  # in [repairs.resync_replica]

    result = rebuild(fleet, "--execute")

    assert result.exit_code == 1, result.output
    assert "stopped: the guard refused for a reason that holds for every copy" in result.output
    assert "2 left for the next run" in result.output
    [row] = Journal(open_state(fleet_config(fleet))).entries()
    assert row.status == "refused" and (row.refusal or "").startswith("mode_dry_run:")
    assert heads(fleet, "b")[P_RECENT] is None
    [batch] = batch_progress(open_state(fleet_config(fleet)))
    assert (batch.failed, batch.left, batch.done) == (1, 2, 0)
    assert batch.stopped.startswith("the guard refused for a reason that holds for every copy")
    [(project, reason)] = batch.failures
    assert project == P_RECENT and reason.startswith(f"repair #{row.id}: mode_dry_run:")


SLOW = ("--execute", "--bwlimit", "1")


def test_a_rebuild_killed_mid_copy_goes_on_and_names_the_half_copy_it_left(
    fleet: SandboxFleet,
) -> None:
    config = fleet.config_path.with_name("config-test.toml")
    want = heads(fleet, "a")
    # 1 KiB/s: the first copy (about 34 kB) takes half a minute: killed with a pack copied.
    killed = subprocess.Popen(
        [sys.executable, "-m", "bup_watchdog.cli", "rebuild", "-c", str(config), "b", *SLOW],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        packs = fleet.repo_path("b", P_RECENT) / "objects" / "pack"
        deadline = time.monotonic() + 60
        while not list(packs.glob("*.pack")):  # the first .pack has arrived: kill mid-copy
            assert killed.poll() is None, "the rebuild ended before it was killed"
            assert time.monotonic() < deadline, "no pack was copied within 60 s"
            time.sleep(0.1)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert heads(fleet, "b")[P_RECENT] is None  # the ref moves last: not in step yet

    resumed = rebuild(fleet, "--execute")

    # The other copies are done; the killed one is a repository with packs and no ref, which
    # resync_replica refuses to write over (it may hold saves): named, with what to do.
    assert resumed.exit_code == 1, resumed.output
    assert "2 copies brought in step" in resumed.output
    assert f"blocked {P_RECENT}: replica_unreadable" in resumed.output
    assert "a half-copy: repair #1 (running) created it" in resumed.output
    assert heads(fleet, "b") == {**want, P_RECENT: None}
    subprocess.run(["rm", "-rf", str(fleet.repo_path("b", P_RECENT))], check=True)  # checked

    finished = rebuild(fleet, "--execute")

    assert finished.exit_code == 0, finished.output
    assert heads(fleet, "b") == want
    rows = journal(fleet).entries()
    assert [r.status for r in rows if r.project_id == P_RECENT] == ["succeeded", "running"]


@pytest.mark.parametrize("status", ["pending", "dry_run", "denied", "failed", "interrupted"])
def test_a_half_copy_is_blamed_on_a_resync_only_when_that_resync_ran(
    tmp_path: Path, status: str
) -> None:
    """Regression: a pending, dry-run or denied resync whose plan starts with ``bup init`` ran
    nothing, yet the operator was told it created the repository, and to remove it."""
    sid, pid = "3f0c5a8e-2b7d-4e61-9c3a-5d8e7f6a1b2c", "0b6f5e2c-1b7f-4c3e-9a6e-1f2e3d4c5b6a"
    state = State(tmp_path / "state.db")
    repo = f"/bup/bups/{pid}"
    Journal(state).write(
        repair="resync_replica", target=f"{sid}/{pid}", server_id=sid, project_id=pid,
        requested_by="cli:test", reason="test", fingerprint=None, mode="approve", status=status,
        plan=[{"on": "b", "command": f"bup -d {repo} init", "description": "init"}],
    )  # fmt: skip
    blocked = Copy(pid, "m", "blocked", why="replica_unreadable: packs and no ref")
    plan = Plan(Server(sid, "b", 1982), todo=(), blocked=(blocked,), in_step=0, outside_window=0)
    [named] = name_half_copies(plan, state).blocked
    state.close()
    assert ("a half-copy" in named.why) == (status in ("failed", "interrupted")), named.why


def test_budget_flags_are_parsed_and_unusable_values_are_usage_errors_with_exit_2() -> None:
    now = datetime(2026, 12, 5, 23, 0, tzinfo=UTC).timestamp()

    options = parse_command(
        {"bwlimit": "20M", "parallel": 4, "until": "01:30", "max_duration": "4h"}, who="t", now=now
    )

    assert options.budget.bwlimit_kib == 20 * 1024 and options.budget.per_copy_kib == 5 * 1024
    assert options.budget.deadline == now + 2.5 * 3600  # 01:30 tomorrow comes before 4 h
    assert parse_bwlimit("500K") == 500 and parse_bwlimit("20000") == 20000
    for bad in ({"bwlimit": "fast"}, {"until": "25:00"}, {"touched_within": "a week"}):
        with pytest.raises(RebuildUsageError):
            parse_command(bad, who="t", now=now)
    both = CliRunner().invoke(main, ["rebuild", "b", "--dry-run", "--execute"])
    assert both.exit_code == 2 and "contradict" in both.output
