"""evacuate HOST on one real sandbox fleet: src masters three projects; b and c share its data
centre (c masters two others and holds a copy of P1), d is in another one (it holds a copy of
P2). Real bup repositories, real rsync over the hosts' own SSH, through the guard.

The fleet is built once for the module; every test has its own state directory (journal,
fences), and the one that moves the projects runs last.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bup_watchdog.batches import batch_progress
from bup_watchdog.checks import settings_models
from bup_watchdog.cli import main
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.evacuate import EvacuateOptions, run_command
from bup_watchdog.evacuate_plan import compute_plan
from bup_watchdog.guard import Guard
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.journal import Journal
from bup_watchdog.model import HostFacts, Inventory
from bup_watchdog.runner import inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from support.fleet import git_digest, git_out, tree_digest

P1 = "e7ac0a7e-0001-4e5f-8a9b-000000000001"  # the largest; a copy on c (same data centre)
P2 = "e7ac0a7e-0002-4e5f-8a9b-000000000002"  # a copy on d only (another data centre)
P3 = "e7ac0a7e-0003-4e5f-8a9b-000000000003"  # no copy anywhere else
LOAD = ("e7ac0a7e-0004-4e5f-8a9b-000000000004", "e7ac0a7e-0005-4e5f-8a9b-000000000005")
MOVED = (P1, P2, P3)
# By the rules: P1 to c (same data centre, holds a copy, though c masters two projects); P2 and
# P3 to b (same data centre, fewest masters; d is in another data centre though it holds P2).
WANT = {P1: "c", P2: "b", P3: "b"}
MAINTENANCE = '\n[[guard.maintenance]]\nstart = "00:00"\nend = "24:00"\n'


def spec() -> FleetSpec:
    return FleetSpec(
        hosts=(
            HostSpec("src", dc=0),
            HostSpec("b", dc=0),
            HostSpec("c", dc=0),
            HostSpec("d", dc=1),
        ),
        projects=(
            ProjectSpec(P1, master="src", replicas=("c",), files=8, saves=3),
            ProjectSpec(P2, master="src", replicas=("d",), files=4, saves=2),
            ProjectSpec(P3, master="src", replicas=(), files=2, saves=1),
            *(ProjectSpec(p, master="c", replicas=(), files=1, saves=1) for p in LOAD),
        ),
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    with SandboxFleet(tmp_path_factory.mktemp("evacuate") / "fleet", spec()) as fleet:
        yield fleet


def config_file(fleet: SandboxFleet, state: str, extra: str = "", *, name: str = "") -> Path:
    """A config of the fleet with its own state directory (``state-STATE``) and extra TOML."""
    text = fleet.config_path.read_text()
    assert text.count('directory = "state"') == 1
    path = fleet.config_path.with_name(f"config-{name or state}.toml")
    path.write_text(text.replace('directory = "state"', f'directory = "state-{state}"') + extra)
    return path


def config(path: Path) -> Config:
    return load_config(path, settings_models())


def make_guard_at(cfg: Config) -> Guard:
    state = open_state(cfg)
    return Guard(cfg, state, load_inventory(inventory_source(cfg), state))


def evacuate(path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["evacuate", "-c", str(path), *args])


def inventory(fleet: SandboxFleet) -> Inventory:
    return FileInventory(fleet.inventory_path).load()


def names(fleet: SandboxFleet) -> dict[str, str]:
    return {fleet.server_id(n): n for n in fleet.hosts}


def source_digests(fleet: SandboxFleet) -> dict[str, str]:
    """The source's repositories (packs, indexes, refs) and live trees, per project."""
    out = {}
    for pid in MOVED:
        out[f"repo {pid}"] = git_digest(fleet.repo_path("src", pid))
        out[f"live {pid}"] = tree_digest(fleet.hosts["src"].projects_dir_outside / pid)
    return out


def test_an_unknown_host_exits_2_with_a_message_naming_it(fleet: SandboxFleet) -> None:
    path = config_file(fleet, "unknown")

    result = evacuate(path, "no-such-host")
    approve = CliRunner().invoke(
        main, ["repairs", "approve", "-c", str(path), "--batch", "evacuate-nothing"]
    )

    assert result.exit_code == 2, result.output
    assert "no server 'no-such-host' in the inventory" in result.output
    assert approve.exit_code == 2, approve.output
    assert "no pending repair carries the batch id 'evacuate-nothing'" in approve.output


def test_a_dry_run_lists_every_project_with_its_target_by_the_rules_and_changes_nothing(
    fleet: SandboxFleet,
) -> None:
    path = config_file(fleet, "dry", "[guard]\nmax_per_hour_per_host = 2\n")
    before, placed = source_digests(fleet), fleet.inventory_path.read_bytes()

    text = evacuate(path, "src")
    data = evacuate(path, "src", "--dry-run", "--format", "json")

    assert text.exit_code == 0, text.output
    rows = re.findall(r"^\s+\d+\. (\S+)  src -> (\S+) ", text.output, re.M)
    assert sorted(rows) == sorted((pid, host) for pid, host in WANT.items()), text.output
    assert "3 projects to move" in text.output and "0 cannot be placed" in text.output
    assert "dry run: nothing submitted" in text.output
    # Three moves from one host, two allowed an hour: said before anything is approved.
    assert "note: the guard runs at most 2 moves an hour from one host" in text.output
    assert data.exit_code == 0, data.output
    plan = json.loads(data.output)
    by_id = {m["project_id"]: m for m in plan["moves"]}
    assert {pid: names(fleet)[m["to"]] for pid, m in by_id.items()} == WANT
    assert plan["moves"][0]["project_id"] == P1  # the largest first
    assert all(m["bytes"] > 0 for m in plan["moves"])
    assert "same data centre (dc 0); holds a copy already (in step)" in by_id[P1]["why"]
    assert by_id[P1]["bytes_to_copy"] < by_id[P1]["bytes"]  # c's copy is there already
    assert "no copy there yet" in by_id[P2]["why"]  # d's copy is in another data centre
    assert plan["unplaced"] == [] and plan["excluded"] == {}
    # Nothing changed, nothing journaled.
    assert source_digests(fleet) == before and fleet.inventory_path.read_bytes() == placed
    assert Journal(open_state(config(path))).entries() == []


def test_the_plan_is_pure_and_skips_a_copy_ahead_an_experimental_host_and_a_full_one(
    fleet: SandboxFleet,
) -> None:
    from bup_watchdog.gather import gather

    inv = inventory(fleet)
    cfg = config(config_file(fleet, "pure"))
    facts: dict[str, HostFacts] = {f.server_id: f for f in gather(inv.servers.values(), cfg.ssh)}
    src, b, c = (fleet.server_id(n) for n in ("src", "b", "c"))

    plan = compute_plan(src, inv, facts)

    assert plan == compute_plan(src, inv, facts)
    assert {m.project_id: names(fleet)[m.target_id or ""] for m in plan.moves} == WANT
    # c's copy of P1 saved after the source's: never a target for P1.
    ahead = (
        facts[c]
        .repos[P1]
        .replace(
            master_sha="0" * 40,
            reflog_last_time=(facts[src].repos[P1].reflog_last_time or 0) + 60,
        )
    )
    facts_ahead = {**facts, c: dataclasses.replace(facts[c], repos={**facts[c].repos, P1: ahead})}
    moved = {m.project_id: m.target_id for m in compute_plan(src, inv, facts_ahead).moves}
    assert moved[P1] == b
    # b experimental: not a target unless allowed.
    exp = dataclasses.replace(
        inv, servers={**inv.servers, b: dataclasses.replace(inv.servers[b], experimental=True)}
    )
    no_b = compute_plan(src, exp, facts)
    assert {m.target_id for m in no_b.moves} == {c}
    assert "experimental" in no_b.excluded["b"]
    assert compute_plan(src, exp, facts, allow_experimental=True) == plan
    # No room anywhere: every project listed with the reason, none placed.
    full = compute_plan(src, inv, facts, space_margin=1e15)
    assert full.moves == () and {m.project_id for m in full.unplaced} == set(MOVED)
    assert all("b: space:" in m.why and "needs more than" in m.why for m in full.unplaced)


def test_projects_no_host_fits_are_listed_with_the_reason_and_nothing_is_submitted(
    fleet: SandboxFleet,
) -> None:
    path = config_file(fleet, "fenced")
    journal = Journal(open_state(config(path)))
    for name in ("b", "c", "d"):
        journal.set_override(fleet.server_id(name), "fenced", True, "test")
    placed = fleet.inventory_path.read_bytes()

    result = evacuate(path, "src", "--execute", "--approve", "--format", "json")

    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["moves"] == [] and data["submitted"] == []
    assert sorted(m["project_id"] for m in data["unplaced"]) == sorted(MOVED)
    for m in data["unplaced"]:
        assert (
            m["why"].startswith("no host fits: ") and "b: fenced; c: fenced; d: fenced" in m["why"]
        )
    assert [e.repair for e in journal.entries()] == []
    assert fleet.inventory_path.read_bytes() == placed


def test_without_approval_the_moves_wait_pending_in_one_batch_and_nothing_is_copied(
    fleet: SandboxFleet,
) -> None:
    path = config_file(fleet, "pending")
    before, placed = source_digests(fleet), fleet.inventory_path.read_bytes()
    b_repos = sorted(p.name for p in fleet.hosts["b"].bups_dir.iterdir())

    result = evacuate(path, "src", "--execute")  # no terminal: no prompt, no approval

    assert result.exit_code == 0, result.output
    assert "3 moves submitted, 0 moved, 0 failed or refused, 3 waiting for approval" in (
        result.output
    )
    [batch] = re.findall(r"repairs approve --batch (\S+)", result.output)
    rows = Journal(open_state(config(path))).entries()
    assert sorted(r.project_id or "" for r in rows) == sorted(MOVED)
    for r in rows:
        assert (r.repair, r.status) == ("move_project", "pending")
        assert r.requested_by.startswith("cli")
        assert r.params["batch"] == batch and r.reason.startswith(f"{batch}: evacuate src (")
        assert names(fleet)[r.params["target"]] == WANT[r.project_id or ""]
    # Asked again: the moves already waiting are not asked for twice.
    again = evacuate(path, "src", "--execute", "--format", "json")
    assert again.exit_code == 0, again.output
    assert {d["repair_id"] for d in json.loads(again.output)["submitted"]} == {r.id for r in rows}
    assert len(Journal(open_state(config(path))).entries()) == 3
    # One approval for the batch, inside a maintenance window: the guard refuses the first
    # move for a reason that holds for every move, and the approvals stop; the rest wait.
    closed = config_file(fleet, "pending", MAINTENANCE, name="pending-closed")
    approve = CliRunner().invoke(main, ["repairs", "approve", "-c", str(closed), "--batch", batch])
    assert approve.exit_code == 1, approve.output
    assert "refused" in approve.output and "maintenance" in approve.output
    assert "the moves not approved stay pending" in approve.output
    journal = Journal(open_state(config(closed)))
    assert len(journal.entries(status="pending")) == 2
    [book] = [b for b in batch_progress(open_state(config(closed))) if b.batch_id == batch]
    assert (book.batch_id, book.kind, book.host) == (batch, "evacuation", "src")
    assert (book.total, book.pending, book.failed, book.done) == (3, 2, 1, 0)
    [refused] = journal.entries(status="refused")
    assert (refused.refusal or "").startswith("maintenance:")
    # One move denied on its own (not through evacuate): the batch's book follows it.
    denied = journal.entries(status="pending")[0]
    deny = CliRunner().invoke(
        main, ["repairs", "deny", "-c", str(closed), str(denied.id), "--why", "stays put"]
    )
    assert deny.exit_code == 0, deny.output
    [book] = [b for b in batch_progress(open_state(config(closed))) if b.batch_id == batch]
    assert (book.total, book.pending, book.failed, book.done) == (3, 1, 2, 0)
    assert any("stays put" in why for pid, why in book.failures if pid == denied.project_id)
    assert fleet.inventory_path.read_bytes() == placed and source_digests(fleet) == before
    assert sorted(p.name for p in fleet.hosts["b"].bups_dir.iterdir()) == b_repos


def test_on_a_terminal_the_list_comes_first_then_one_question_for_the_whole_batch(
    fleet: SandboxFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(config_file(fleet, "prompt"))
    questions: list[str] = []

    def answer_no(question: str) -> bool:
        questions.append(capsys.readouterr().out)  # what the operator saw before the question
        questions.append(question)
        return False

    code = run_command(
        cfg, "src", EvacuateOptions(execute=True, who="cli:test"), make_guard_at(cfg), ask=answer_no
    )

    assert code == 0
    shown, question = questions
    assert all(pid in shown for pid in MOVED) and "3 projects to move" in shown
    assert re.fullmatch(r"approve all 3 moves of evacuate-src-\S+\?", question)
    assert len(Journal(open_state(cfg)).entries(status="pending")) == 3
    assert "3 waiting for approval" in capsys.readouterr().out


def test_execute_with_approve_moves_all_three_and_keeps_the_source_copies_as_replicas(
    fleet: SandboxFleet,
) -> None:
    path = config_file(fleet, "move")
    before = source_digests(fleet)
    heads = {pid: git_out(fleet, "src", pid, "rev-parse", "refs/heads/master") for pid in MOVED}
    started = time.monotonic()

    result = evacuate(path, "src", "--execute", "--approve", "--why", "retiring src")

    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "3 moves submitted, 3 moved, 0 failed or refused, 0 waiting" in result.output
    assert len(re.findall(r"^\[\d/3\] \S+: succeeded in", result.output, re.M)) == 3
    inv = inventory(fleet)
    src = fleet.server_id("src")
    for pid in MOVED:
        project = inv.projects[pid]
        assert names(fleet)[project.master] == WANT[pid]
        assert src in project.replicas  # demoted to a replica, not dropped
        assert git_out(fleet, WANT[pid], pid, "rev-parse", "refs/heads/master") == heads[pid]
        assert (fleet.repo_path("src", pid) / "refs/heads/master").exists()  # not deleted
    assert source_digests(fleet) == before  # the source copies were only read
    rows = Journal(open_state(config(path))).entries(limit=20)
    runs = [r for r in rows if r.status == "succeeded"]
    assert sorted(r.project_id or "" for r in runs) == sorted(MOVED)
    assert all(r.decided_by and r.decided_by.startswith("cli") for r in runs)
    approvals = [r for r in rows if r.status == "denied"]  # the pending rows, superseded
    assert len(approvals) == 3
    assert all(
        "one approval for the 3 moves of evacuate-src-" in (r.refusal or "") for r in approvals
    )
    assert all("retiring src" in r.reason for r in runs)
    [book] = batch_progress(open_state(config(path)))
    assert (book.kind, book.total, book.done, book.failed, book.pending) == (
        "evacuation",
        3,
        3,
        0,
        0,
    )
    assert book.finished is not None and book.stopped == ""
    print(f"evacuation of 3 projects: {seconds:.1f} s")  # the figure for the note
