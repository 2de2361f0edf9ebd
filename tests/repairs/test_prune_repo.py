"""prune_repo on a real bup repository with 200 dated saves over two years, on a sandbox host,
through the guard: the dry run names the saves that would go and changes nothing; an integrity
finding or a running save refuses it; the approved run keeps exactly the policy's saves (the
newest among them), every kept save lists, the repository is back under quota, and the old one
is kept aside."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog.repair_context import Context
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.repairs.prune_repo import PruneRepoSettings
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.repos import BUP, bup_env, bup_init, bup_save, run_checked, write_tree
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from support.fleet import fleet_digest, make_guard, repo_inside, start_in_host

PID = "7e3b1c2d-5a6f-4b7c-8d9e-0000000000aa"
SAVES = 200
DAY = 86400
CHURN_BYTES = 40_000  # a file rewritten before every save: what pruning frees
TAG = "refs/tags/conflict-master-20261206T080000Z"  # a resync's conflict tag

# 200 real saves: about a minute on a loaded 2-core machine (see save_dated_trees).
pytestmark = pytest.mark.timeout(900)


def prune_spec() -> FleetSpec:
    return FleetSpec(
        hosts=(HostSpec("q1", dc=0),),
        projects=(ProjectSpec(PID, "q1", (), disk_mb=1),),  # 1 MiB quota: 8 MB of saves is 8 x
    )


def save_times(now: int) -> list[int]:
    """200 saves spread evenly over two years, the newest two minutes ago."""
    newest = now - 120
    return [newest - round(i * 730 * DAY / (SAVES - 1)) for i in reversed(range(SAVES))]


def save_dated_trees(repo: Path, trees: Path, times: list[int]) -> None:
    """One real ``bup save`` per tree ``trees/NNN`` (``--strip``: each save holds notes.txt and
    data/churn.bin), dated ``times[NNN]``, after ONE ``bup index`` of them all. ``bup index``
    sleeps to the next whole second on every run (bup 0.33 cmd/index.py, a FIXME against
    timestamp races), so an index + save per save cost 1 s each, mostly asleep: the fixture took
    203 s, now 54 s (bup save, midx and bloom per save; module 230 s -> 72 s)."""
    run_checked([BUP, "index", str(trees)], env=bup_env(repo))
    for i, when in enumerate(times):
        tree = str(trees / f"{i:03d}")
        run_checked(
            [BUP, "save", "-q", "--strip", "-n", "master", "-d", str(when), tree],
            env=bup_env(repo, when),
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    """One host whose project holds 200 real, dated bup saves (its conf/ kept)."""
    with SandboxFleet(tmp_path_factory.mktemp("prune-fleet"), prune_spec()) as fleet:
        repo = fleet.repo_path("q1", PID)
        conf = fleet.root / "conf-kept"
        shutil.copytree(repo / "conf", conf)
        shutil.rmtree(repo)
        bup_init(repo)
        shutil.copytree(conf, repo / "conf")
        trees = fleet.root / "trees"
        rng = random.Random(18)
        times = save_times(int(time.time()))
        for i in range(len(times)):
            churn = rng.randbytes(CHURN_BYTES)
            tree = {"notes.txt": f"save {i}\n".encode(), "data/churn.bin": churn}
            write_tree(trees / f"{i:03d}", tree)
        save_dated_trees(repo, trees, times)
        yield fleet


def host_ls(fleet: SandboxFleet, repo: str, path: str = "master") -> list[str]:
    ls = fleet.hosts["q1"].run(["bup", "-d", repo, "ls", path])
    assert ls.returncode == 0, ls.stderr
    return ls.stdout.split()


def saves_of(fleet: SandboxFleet) -> list[str]:
    names = host_ls(fleet, repo_inside(fleet, "q1", PID))
    return sorted(n for n in names if n != "latest")


def tree_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def planned(plan: list[dict[str, str]], pattern: str) -> list[str]:
    """The save names a plan step's description lists after ``pattern``."""
    [text] = [m.group(1) for s in plan if (m := re.search(pattern, s["description"]))]
    return text.split(", ")


def test_the_policy_defaults_keep_a_week_then_dailies_then_monthlies() -> None:
    options = PruneRepoSettings().keep_options()
    assert options == (
        "--keep-all-for", "7d", "--keep-dailies-for", "60d", "--keep-monthlies-for", "forever",
    )  # fmt: skip
    with pytest.raises(ValueError, match="at least one keep"):
        PruneRepoSettings(keep_all_for=None, keep_dailies_for=None, keep_monthlies_for=None)
    with pytest.raises(ValueError):
        PruneRepoSettings(keep_all_for="7 days; rm -rf /")


def test_the_dry_run_names_the_saves_that_would_go_and_changes_nothing(
    fleet: SandboxFleet,
) -> None:
    before = fleet_digest(fleet)
    names = saves_of(fleet)
    assert len(names) == SAVES
    times = dict(zip(names, save_times(0), strict=True))  # name -> age offset, same order
    guard = make_guard(fleet)

    decision = guard.submit(
        RepairRequest("prune_repo", fleet.server_id("q1"), PID, params={"dry_run": True})
    )

    assert decision.status == "dry_run", decision.message
    assert "preconditions hold now" in decision.message
    dropped = planned(decision.plan, r"remove \d+ of 200 saves: (.*)$")
    kept = planned(decision.plan, r"exactly the \d+ kept saves are listed: (.*)$")
    assert sorted(kept + dropped) == names
    assert names[-1] in kept  # the newest save
    newest = max(times.values())
    for name in names:  # every save of the last 7 days stays
        if newest - times[name] < 7 * DAY:
            assert name in kept
    # then one a day for 60 days, then one a month (names are YYYY-MM-DD-hhmmss)
    for start, end, width in ((7 * DAY, 60 * DAY, 10), (60 * DAY, 10**10, 7)):
        older = [n for n in kept if start <= newest - times[n] < end]
        assert older and len({n[:width] for n in older}) == len(older), older
    assert 30 < len(kept) < 50 and len(dropped) > 150
    assert fleet_digest(fleet) == before
    assert not list(fleet.hosts["q1"].bups_dir.glob(f"{PID}.*"))


def test_prune_is_refused_while_the_repository_has_an_integrity_finding(
    fleet: SandboxFleet,
) -> None:
    repo = fleet.repo_path("q1", PID)
    packs = sorted((repo / "objects" / "pack").glob("*.pack"), key=lambda p: p.stat().st_mtime)
    newest_pack = packs[-1]  # holds the master commit
    hidden = newest_pack.with_name(newest_pack.name + ".hidden")
    guard = make_guard(fleet)
    os.rename(newest_pack, hidden)
    try:
        decision = guard.submit(
            RepairRequest("prune_repo", fleet.server_id("q1"), PID), execute=True
        )
        leftovers = list(fleet.hosts["q1"].bups_dir.glob(f"{PID}.*"))
    finally:
        os.rename(hidden, newest_pack)

    assert decision.status == "refused"
    assert decision.message.startswith("precondition: integrity: repo_integrity/")
    assert leftovers == []


def test_prune_is_refused_while_a_save_works_on_the_repository(fleet: SandboxFleet) -> None:
    inside = repo_inside(fleet, "q1", PID)
    save = start_in_host(fleet, "q1", ["env", f"BUP_DIR={inside}", "sleep", "60"])
    try:
        decision = make_guard(fleet).submit(
            RepairRequest("prune_repo", fleet.server_id("q1"), PID), execute=True
        )
    finally:
        save.kill()
        save.wait()

    assert decision.status == "refused"
    assert "busy: processes work on" in decision.message and "sleep 60" in decision.message
    assert len(saves_of(fleet)) == SAVES


def tag_the_master(fleet: SandboxFleet) -> str:
    """A resync's conflict tag, as resync_replica writes it on a master (real git, on the host)."""
    inside = repo_inside(fleet, "q1", PID)
    made = fleet.hosts["q1"].run(["git", f"--git-dir={inside}", "update-ref", TAG, "master~3"])
    assert made.returncode == 0, made.stderr
    return TAG


def edit_the_conf(fleet: SandboxFleet) -> str:
    settings = fleet.repo_path("q1", PID) / "conf" / "settings.json"
    settings.write_text(settings.read_text() + "\n")
    return "conf/settings.json"


@pytest.mark.parametrize("change", [tag_the_master, edit_the_conf])
def test_a_tag_or_conf_edit_landing_between_the_copy_and_the_swap_refuses_the_swap(
    fleet: SandboxFleet, monkeypatch: pytest.MonkeyPatch, change: Callable[[SandboxFleet], str]
) -> None:
    """The pruned copy carries the refs and conf/ of the moment it was copied (minutes before the
    swap on a big repository): swapping it in then would roll back what landed meanwhile."""
    repo = fleet.repo_path("q1", PID)
    inside = repo_inside(fleet, "q1", PID)
    conf = (repo / "conf" / "settings.json").read_bytes()
    refs_before = fleet.hosts["q1"].run(["git", f"--git-dir={inside}", "for-each-ref"]).stdout
    real_run = Context.run
    landed: list[str] = []

    def land_before_the_swap(self: Context, step: Any) -> Any:
        if step.argv[3:4] == ("swap",) and not landed:
            landed.append(change(fleet))
        return real_run(self, step)

    monkeypatch.setattr(Context, "run", land_before_the_swap)
    try:
        decision = make_guard(fleet).submit(
            RepairRequest("prune_repo", fleet.server_id("q1"), PID), execute=True
        )
        refs_after = fleet.hosts["q1"].run(["git", f"--git-dir={inside}", "for-each-ref"]).stdout
        leftovers = list(fleet.hosts["q1"].bups_dir.glob(f"{PID}.*"))
        conf_after = (repo / "conf" / "settings.json").read_bytes()
    finally:
        fleet.hosts["q1"].run(["git", f"--git-dir={inside}", "update-ref", "-d", TAG])
        (repo / "conf" / "settings.json").write_bytes(conf)

    assert landed, "the swap did not run"
    assert decision.status == "failed", decision.message
    assert "changed since the copy outside its master" in decision.message, decision.message
    assert landed[0] in decision.message and "nothing swapped" in decision.message
    assert "unfinished copy" in decision.message and "was deleted" in decision.message
    assert len(saves_of(fleet)) == SAVES
    assert leftovers == []
    if landed[0] == TAG:
        assert TAG in refs_after and refs_after != refs_before
    else:
        assert conf_after == conf + b"\n"


def test_an_approved_prune_keeps_the_policys_saves_every_one_lists_and_the_old_repo_stays_aside(
    fleet: SandboxFleet,
) -> None:
    q1 = fleet.hosts["q1"]
    repo = fleet.repo_path("q1", PID)
    inside = repo_inside(fleet, "q1", PID)
    names = saves_of(fleet)
    size_before = tree_bytes(repo)
    reflog_before = (repo / "logs" / "refs" / "heads" / "master").read_text().splitlines()[-1]
    guard = make_guard(fleet)
    sid = fleet.server_id("q1")
    pending = guard.submit(RepairRequest("prune_repo", sid, PID))
    assert pending.status == "pending", pending.message
    shown_dropped = planned(pending.plan, r"remove \d+ of 200 saves: (.*)$")
    shown_kept = planned(pending.plan, r"exactly the \d+ kept saves are listed: (.*)$")

    decision = guard.approve(pending.entry_id, "tester")

    assert decision.status == "succeeded", decision.message
    assert (
        "bup_quota passes" in decision.message and "bup lists every kept save" in decision.message
    )
    kept = saves_of(fleet)
    assert kept == shown_kept  # exactly what the approved plan showed
    assert sorted(set(names) - set(kept)) == shown_dropped
    assert names[-1] in kept  # the newest save
    for name in kept:
        assert host_ls(fleet, inside, f"master/{name}")
    fsck = q1.run(["git", f"--git-dir={inside}", "fsck", "--connectivity-only", "--no-dangling"])
    assert fsck.returncode == 0, fsck.stderr
    [aside] = list(q1.bups_dir.glob(f"{PID}.pruned-*"))
    assert "Remove this copy after" in (aside / "BUPWATCH-PRUNED.txt").read_text()
    assert len(saves_of_repo(fleet, f"{q1.bup_root}/bups/{aside.name}")) == SAVES
    assert not (q1.bups_dir / f"{PID}.prune-new").exists()
    size_after = tree_bytes(repo)
    assert size_after < size_before / 3
    # The newest save's reflog time is carried over: replication_lag and save_freshness read it.
    reflog_after = (repo / "logs" / "refs" / "heads" / "master").read_text().splitlines()[-1]
    assert reflog_after.split("\t")[0].split()[-2:] == reflog_before.split("\t")[0].split()[-2:]
    assert (repo / "conf" / "settings.json").exists() and (repo / "bupindex").exists()
    print(
        f"\nprune_repo: {len(names)} saves, {size_before} bytes before; kept {len(kept)}, "
        f"{size_after} bytes after; old copy aside as {aside.name}\nkept: {', '.join(kept)}"
    )
    # bup saves on the pruned repository, and it stays whole.
    staging = fleet.root / "staging"
    write_tree(staging, {"notes.txt": b"after the prune\n"})
    bup_save(repo, staging, int(time.time()))
    assert len(saves_of(fleet)) == len(kept) + 1
    fsck = q1.run(["git", f"--git-dir={inside}", "fsck", "--connectivity-only", "--no-dangling"])
    assert fsck.returncode == 0, fsck.stderr


def saves_of_repo(fleet: SandboxFleet, inside: str) -> list[str]:
    return sorted(n for n in host_ls(fleet, inside) if n != "latest")
