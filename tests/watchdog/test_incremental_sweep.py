"""Incremental sweeps: a repository is skipped only when nothing its cheap facts depend on changed.

The probe runs as in production (its source, with the known state filled in by the gather, on the
standard input of ``python -S -``), through ``gather_host`` with a local transport, on real bup
repositories; then end to end over SSH on the sandbox fleets. Every change a save, a replication,
an operator or a fault makes to a ref, a pack or a conf file must give fresh facts, equal to a full
walk's, at the very next sweep.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config, SshConfig
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import ProbeError
from bup_watchdog.gather import (
    KNOWN_STATE_LINE,
    OwnerSample,
    gather_host,
    parse_probe_lines,
    probe_argv,
    probe_program,
    probe_source,
)
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.live_dirs import ProjectDirFacts
from bup_watchdog.model import (
    Finding,
    GatherFailure,
    HostFacts,
    Inventory,
    RepoFacts,
    Server,
    Severity,
)
from bup_watchdog.probe import (
    DIGEST_HEX,
    FP_HEX,
    PROBE_VERSION,
    WireEncoder,
    bitmap,
    fingerprint,
    parse_known_state,
)
from bup_watchdog.repo_cache import CacheBuilder, CachedDir, CachedRepo, HostCache, RepoCache
from bup_watchdog.sandbox import repos as sandbox_repos
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sweep import sweep
from support.template_repo import two_save_repo

SID = "3f0c5a8e-2b7d-4e61-9c3a-5d8e7f6a1b2c"
PID_A = "0b6f5e2c-1b7f-4c3e-9a6e-1f2e3d4c5b6a"
PID_B = "7d3a9f10-55aa-4b2c-8d11-0123456789ab"
# A fingerprint and a digest of the width the probe makes (the cache keeps no other).
FP = "a" * FP_HEX
DIGEST = "c" * DIGEST_HEX
RACY = 0.05  # the tests' racy window; each waits a little longer before trusting a walk


def settle() -> None:
    time.sleep(RACY * 3)


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bup repository with two saves, conf/ files and a bupindex, as on a storage host."""
    base = tmp_path_factory.mktemp("incremental-template")
    return two_save_repo(base, settings='{"disk": 3000}', replicas='["a", "b"]')


class LocalHost:
    """A storage host that is this machine: BUP_ROOT/bups and PROJECTS_ROOT under tmp_path."""

    def __init__(self, base: Path, template: Path) -> None:
        self.bup_root = base / "bup"
        self.projects = base / "projects"
        (self.bup_root / "bups").mkdir(parents=True)
        self.projects.mkdir()
        self.template = template
        self.server = Server(
            SID,
            "127.0.0.1",
            1,  # nothing listens there: bup_server is not what these tests look at
            bup_root=str(self.bup_root),
            projects_root=str(self.projects),
            name="local",
            transport="local",
        )
        self.ssh = SshConfig.model_validate({"python": sys.executable})

    def add_repo(self, pid: str = PID_A) -> Path:
        repo = self.bup_root / "bups" / pid
        shutil.copytree(self.template, repo, symlinks=True)
        (self.projects / pid).mkdir()
        (self.projects / pid / "notes.txt").write_text("live file\n")
        return repo

    def gather(self, cache: RepoCache | None) -> HostFacts:
        facts = gather_host(self.server, self.ssh, tcp_timeout=0.2, repo_cache=cache)
        assert facts.probed, facts.failure_message
        return facts


@pytest.fixture
def host(tmp_path: Path, template_repo: Path) -> LocalHost:
    return LocalHost(tmp_path, template_repo)


def primed(host: LocalHost, *pids: str) -> RepoCache:
    """A cache after one full walk of freshly made repositories (older than the racy window)."""
    for pid in pids or (PID_A,):
        host.add_repo(pid)
    settle()
    cache = RepoCache(racy_seconds=RACY)
    host.gather(cache)
    assert cache.totals() == (len(pids or (PID_A,)), 0)
    return cache


# ------------------------------------------------------------------------------------------
# the program sent to the host
# ------------------------------------------------------------------------------------------


def test_the_probe_has_exactly_one_known_state_line_to_fill_in() -> None:
    assert probe_source().count(KNOWN_STATE_LINE) == 1
    known = HostCache.of(
        {PID_A: CachedRepo(FP, RepoFacts(PID_A), 0.0)},
        {PID_B: CachedDir(DIGEST, ProjectDirFacts.of(PID_B, uid=0, gid=0))},
    )
    program = probe_program(CacheBuilder(known))
    assert program.count(KNOWN_STATE_LINE) == 0
    compile(program, "probe", "exec")
    assert probe_program(CacheBuilder()) == probe_program() == probe_source()


def test_a_known_state_of_several_compression_batches_reaches_the_probe_whole() -> None:
    # 2,500 ids: more than two of the batches the state is compressed in, one not full.
    rnd = random.Random(5)
    ids = sorted(str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(2500))
    fps = {pid: f"{rnd.getrandbits(4 * FP_HEX):0{FP_HEX}x}" for pid in ids[::2]}
    digests = {pid: f"{rnd.getrandbits(4 * DIGEST_HEX):0{DIGEST_HEX}x}" for pid in ids[::3]}
    known = HostCache.of(
        {pid: CachedRepo(fp, RepoFacts(pid), 0.0) for pid, fp in fps.items()},
        {pid: CachedDir(d, ProjectDirFacts.of(pid, uid=0, gid=0)) for pid, d in digests.items()},
    )
    program = probe_program(CacheBuilder(known))
    blob = program.split(b'\nKNOWN_STATE = "', 1)[1].split(b'"', 1)[0]
    assert parse_known_state(blob) == (fps, digests)


def test_a_probe_given_an_unreadable_known_state_walks_everything(
    host: LocalHost, tmp_path: Path
) -> None:
    host.add_repo()
    bad = tmp_path / "known"
    bad.write_text("this is not base64 zlib!")
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-",
            "--bup-root",
            str(host.bup_root),
            "--known-state",
            str(bad),
            "--readable",
        ],
        input=probe_source(),
        capture_output=True,
        check=True,
    )
    kinds = [json.loads(line)["type"] for line in proc.stdout.splitlines()]
    assert "repo" in kinds and "unchanged" not in kinds
    assert b"walking every repository" in proc.stderr


# ------------------------------------------------------------------------------------------
# what is skipped, and what is not
# ------------------------------------------------------------------------------------------


def test_an_unchanged_repository_is_not_walked_and_its_facts_are_those_of_a_full_walk(
    host: LocalHost,
) -> None:
    cache = primed(host, PID_A, PID_B)
    facts = host.gather(cache)
    assert cache.totals() == (0, 2)
    full = host.gather(None)
    assert facts.repos == full.repos
    assert facts.project_dirs == full.project_dirs
    assert facts.repos[PID_A].master_in_pack is True


def first_pack(repo: Path) -> Path:
    return sorted((repo / "objects" / "pack").glob("*.pack"))[0]


def rewrite_ref_in_place(repo: Path) -> None:
    with open(repo / "refs" / "heads" / "master", "r+") as f:
        f.write("1" * 40 + "\n")  # same length, same inode: only its ctime and mtime say so


def previous_save(repo: Path) -> str:
    """The commit before master's (the repositories here have two saves)."""
    return subprocess.run(
        ["git", f"--git-dir={repo}", "rev-parse", "master~1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def move_ref_like_git(repo: Path) -> None:
    subprocess.run(
        ["git", f"--git-dir={repo}", "update-ref", "refs/heads/master", previous_save(repo)],
        check=True,
    )


def delete_pack_of_master(repo: Path) -> None:
    sandbox_repos.corrupt_newest_pack(repo)


def add_pack(repo: Path) -> None:
    pack = first_pack(repo)
    shutil.copyfile(pack, pack.with_name("pack-" + "9" * 40 + ".pack"))
    shutil.copyfile(pack.with_suffix(".idx"), pack.with_name("pack-" + "9" * 40 + ".idx"))


def leave_tmp_pack(repo: Path) -> None:
    (repo / "objects" / "pack" / "tmp_pack_abc123").write_bytes(b"PACK")


def rewrite_settings_in_place(repo: Path) -> None:
    (repo / "conf" / "settings.json").write_text('{"disk": 9000}\n')


def replace_replicas_by_rename(repo: Path) -> None:
    tmp = repo / "conf" / ".replicas.json.tmp"
    tmp.write_text('["c"]\n')
    tmp.rename(repo / "conf" / "replicas.json")


def append_save_log(repo: Path) -> None:
    with open(repo / "conf" / "save_log.json", "a") as f:
        f.write('{"timestamp": 2}\n')


def touch_touch(repo: Path) -> None:
    os.utime(repo / "conf" / "touch", (1_700_000_000, 1_700_000_000))


def append_reflog(repo: Path) -> None:
    sha = (repo / "refs" / "heads" / "master").read_text().strip()
    with open(repo / "logs" / "refs" / "heads" / "master", "a") as f:
        f.write(f"{sha} {sha} x <x@y> 1800000000 +0000\tsave\n")


def edit_head(repo: Path) -> None:
    (repo / "HEAD").write_text("ref: refs/heads/main\n")


def plant_symlink_in_refs_heads(repo: Path) -> None:
    (repo / "refs" / "heads" / "escape").symlink_to("/etc")


def grow_bupindex_in_place(repo: Path) -> None:
    with open(repo / "bupindex", "ab") as f:
        f.write(b"\0" * 4096)


def pack_refs_at_the_previous_save(repo: Path) -> None:
    """packed-refs (absent until now: see the mask) names master~1; the loose ref is gone."""
    parent = previous_save(repo)
    (repo / "packed-refs").write_text(f"# pack-refs with: peeled\n{parent} refs/heads/master\n")
    (repo / "refs" / "heads" / "master").unlink()


def write_bupindex_hlink(repo: Path) -> None:
    (repo / "bupindex.hlink").write_bytes(b"\0" * 64)  # absent until now: see the mask


def replace_repo_by_symlink(repo: Path) -> None:
    moved = repo.with_name(repo.name + ".moved")
    repo.rename(moved)
    repo.symlink_to(moved)


def replace_settings_by_symlink(repo: Path) -> None:
    (repo / "conf" / "settings.json").unlink()
    (repo / "conf" / "settings.json").symlink_to("/etc/passwd")


CHANGES: dict[str, tuple[Callable[[Path], None], Callable[[RepoFacts], object]]] = {
    "ref rewritten in place": (rewrite_ref_in_place, lambda r: (r.master_sha, r.master_in_pack)),
    "ref moved by git update-ref": (move_ref_like_git, lambda r: r.master_sha),
    "pack of master deleted": (delete_pack_of_master, lambda r: r.idx_without_pack),
    "pack added": (add_pack, lambda r: r.pack_count),
    "tmp pack left behind": (leave_tmp_pack, lambda r: r.tmp_count),
    "settings.json rewritten in place": (rewrite_settings_in_place, lambda r: r.settings),
    "replicas.json replaced by rename": (replace_replicas_by_rename, lambda r: r.replicas),
    "save log appended": (append_save_log, lambda r: r.save_log_bytes),
    "conf/touch touched": (touch_touch, lambda r: r.touch_mtime),
    "reflog appended": (append_reflog, lambda r: r.reflog_last_time),
    "HEAD edited in place": (edit_head, lambda r: r.head),
    "symlink planted in refs/heads/": (plant_symlink_in_refs_heads, lambda r: r.symlinks_outside),
    "bupindex grown in place": (grow_bupindex_in_place, lambda r: r.bupindex_bytes),
    "bupindex.hlink created": (write_bupindex_hlink, lambda r: r.bupindex_bytes),
    "master moved to packed-refs": (pack_refs_at_the_previous_save, lambda r: r.master_sha),
    "repository replaced by a symlink": (replace_repo_by_symlink, lambda r: r.is_symlink),
    "settings.json replaced by a symlink": (replace_settings_by_symlink, lambda r: r.settings),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_repository_is_walked_again_and_reported_with_fresh_facts(
    host: LocalHost, change: str
) -> None:
    make, field = CHANGES[change]
    cache = primed(host, PID_A, PID_B)
    before = host.gather(cache)
    assert cache.totals() == (0, 2)
    make(host.bup_root / "bups" / PID_A)
    after = host.gather(cache)
    assert cache.last_counts[SID] == (1, 1), "the changed repository must be walked, only it"
    full = host.gather(None)
    assert after.repos == full.repos, "incremental facts must equal a full walk's"
    assert field(after.repos[PID_A]) != field(before.repos[PID_A])
    assert after.repos[PID_B] is before.repos[PID_B]


def test_a_repository_changed_just_before_its_walk_is_walked_again_at_the_next_sweep(
    host: LocalHost,
) -> None:
    host.add_repo(PID_A)
    cache = RepoCache(racy_seconds=60)  # everything here changed less than a minute ago
    host.gather(cache)
    host.gather(cache)
    assert cache.totals() == (1, 0)


def truncate_idx_in_place(repo: Path) -> None:
    with open(first_pack(repo).with_suffix(".idx"), "r+b") as f:
        f.truncate(100)


UNSEEN: dict[str, tuple[Callable[[Path], None], Callable[[RepoFacts], object]]] = {
    "an .idx truncated in place": (truncate_idx_in_place, lambda r: r.bad_idx),
    "a symlink planted in refs/": (
        lambda repo: (repo / "refs" / "escape").symlink_to("/etc"),
        lambda r: r.symlinks_outside,
    ),
    "a symlink planted in conf/": (
        lambda repo: (repo / "conf" / "escape").symlink_to("/etc"),
        lambda r: r.symlinks_outside,
    ),
    "a file dropped in logs/": (
        lambda repo: (repo / "logs" / "big").write_bytes(b"x" * 100_000),
        lambda r: r.repo_bytes,
    ),
}


@pytest.mark.parametrize("change", sorted(UNSEEN))
def test_what_the_fingerprint_cannot_see_is_reported_at_the_next_full_walk(
    host: LocalHost, change: str
) -> None:
    """An .idx overwritten in place (git never does that; a tool or an operator might) keeps its
    directory's mtime, and entries added to refs/, logs/ or conf/ change only those directories,
    which an incremental check does not stat (no fact reads their listing): such changes show up
    once the repository is due for its full walk again (``max_age``, 6 h by default; here 8 s,
    so this one's own limit is ~4.2 s: room for a slow gather on a loaded machine)."""
    make, field = UNSEEN[change]
    host.add_repo(PID_A)
    settle()
    cache = RepoCache(max_age=8.0, racy_seconds=RACY)
    before = host.gather(cache)
    walked = time.time()
    make(host.bup_root / "bups" / PID_A)
    stale = host.gather(cache)
    assert cache.totals() == (0, 1) and field(stale.repos[PID_A]) == field(before.repos[PID_A])
    time.sleep(max(0.0, walked + cache._limit(PID_A) + 0.05 - time.time()))
    fresh = host.gather(cache)
    assert cache.totals() == (1, 0)
    assert field(fresh.repos[PID_A]) != field(before.repos[PID_A])
    assert fresh.repos == host.gather(None).repos


def test_a_changed_project_directory_record_is_sent_again_and_an_unchanged_one_is_reused(
    host: LocalHost,
) -> None:
    cache = primed(host, PID_A)
    same = host.gather(cache)
    os.chown(host.projects / PID_A / "notes.txt", 4242, 4242)
    changed = host.gather(cache)
    assert changed.project_dirs[PID_A] != same.project_dirs[PID_A]
    assert 4242 in changed.project_dirs[PID_A].owners
    assert changed.project_dirs == host.gather(None).project_dirs


def test_a_removed_repository_leaves_the_cache_and_a_new_one_is_walked(host: LocalHost) -> None:
    cache = primed(host, PID_A)
    shutil.rmtree(host.bup_root / "bups" / PID_A)
    host.add_repo(PID_B)
    facts = host.gather(cache)
    assert set(facts.repos) == {PID_B}
    assert cache.last_counts[SID] == (1, 0)
    assert set(cache.entry(SID).repos) <= {PID_B}


# ------------------------------------------------------------------------------------------
# the gather's side
# ------------------------------------------------------------------------------------------


HELLO = {"type": "hello", "probe_version": PROBE_VERSION, "bups": "/bup/bups"}


def lines(*records: dict[str, Any]) -> list[bytes]:
    """The lines the probe prints for these records (a bare hello gets its version)."""
    encode = WireEncoder().line
    return [encode(HELLO if r == {"type": "hello"} else r).encode() for r in records]


def unchanged(known: int, repos: list[int], dirs: list[int] = []) -> dict[str, object]:  # noqa: B006
    return {
        "type": "unchanged",
        "known": known,
        "repos": bitmap(repos, known),
        "project_dirs": bitmap(dirs, known),
    }


def test_an_unchanged_report_for_a_repository_the_probe_was_not_told_about_is_refused() -> None:
    # PID_A was given with a project_dir digest only (no repository fingerprint).
    kept_dir = CachedDir(DIGEST, ProjectDirFacts.of(PID_A, uid=0, gid=0))
    with pytest.raises(ProbeError, match="not given that repository's fingerprint"):
        parse_probe_lines(
            SID,
            lines({"type": "hello"}, unchanged(1, [0]), {"type": "done"}),
            HostFacts(SID, time.time()),
            fresh=CacheBuilder(HostCache.of(dirs={PID_A: kept_dir})),
        )


@pytest.mark.parametrize(
    "record",
    [
        unchanged(2, [0]),  # the probe knew two projects, it was given one
        {**unchanged(1, [0]), "repos": "AAAA"},  # three bytes for one known project
        unchanged(8, [7]) | {"known": 1},  # bit 7 of one known project
        {**unchanged(1, [0]), "repos": "not base64!"},
    ],
    ids=["count", "length", "bit-past-the-end", "not-base64"],
)
def test_an_unchanged_report_that_does_not_fit_the_known_state_is_refused(
    record: dict[str, object],
) -> None:
    kept = CachedRepo(FP, RepoFacts(PID_A), time.time())
    facts = HostFacts(SID, time.time())
    with pytest.raises(ProbeError):
        parse_probe_lines(
            SID,
            lines({"type": "hello"}, record, {"type": "done"}),
            facts,
            previous=HostCache.of({PID_A: kept}),
        )
    assert facts.repos == {}


def test_an_unchanged_report_reuses_exactly_the_named_facts() -> None:
    kept = {pid: CachedRepo(FP, RepoFacts(pid), time.time()) for pid in (PID_A, PID_B)}
    facts, fresh = HostFacts(SID, time.time()), CacheBuilder(HostCache.of(kept))
    order = sorted(kept)
    walked, reused = parse_probe_lines(
        SID,
        lines({"type": "hello"}, unchanged(2, [order.index(PID_B)]), {"type": "done"}),
        facts,
        fresh=fresh,
    )
    assert (walked, reused) == (0, 1)
    assert set(facts.repos) == set(fresh.build().repos) == {PID_B}


def test_a_failed_gather_keeps_the_cache_as_it_was(host: LocalHost) -> None:
    cache = primed(host, PID_A)
    kept = cache.entry(SID)
    broken = Server(SID, "127.0.0.1", 1, bup_root=str(host.bup_root), transport="local")
    ssh = SshConfig.model_validate({"python": "/nonexistent/python3"})
    facts = gather_host(broken, ssh, tcp_timeout=0.2, repo_cache=cache)
    assert facts.failure is GatherFailure.ERROR
    assert cache.entry(SID) == kept


def test_full_walks_are_spread_between_half_and_all_of_max_age() -> None:
    cache = RepoCache(max_age=1000.0)
    now = 1_000_000.0
    entries = {
        pid: CachedRepo(FP, RepoFacts(pid), now)
        for pid in ("00000000-0000-4000-8000-000000000000", "ffffffff-0000-4000-8000-000000000000")
    }
    cache.replace(SID, HostCache.of(entries), 2, 0)
    assert cache.builder(SID, now=now + 499).told_repos == 2
    assert cache.builder(SID, now=now + 501).told_repos == 1
    assert cache.builder(SID, now=now + 1001).told_repos == 0
    with pytest.raises(ValueError):
        RepoCache(max_age=0)


# ------------------------------------------------------------------------------------------
# end to end over SSH
# ------------------------------------------------------------------------------------------


def load(fleet: SandboxFleet) -> tuple[Config, Inventory]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    return config, FileInventory(config.inventory.file).load()


def what(findings: list[Finding]) -> list[tuple[str, str, str, str | None, Severity]]:
    """Findings without their measured values (a TCP connect time differs from sweep to sweep)."""
    return [(f.check, f.code, f.server_id, f.project_id, f.severity) for f in findings]


def test_an_incremental_sweep_of_the_demo_fleet_equals_a_full_one(
    demo_config: Config, demo_inventory: Inventory
) -> None:
    cache = RepoCache(racy_seconds=RACY)
    sweep(demo_config, demo_inventory, repo_cache=cache)
    settle()
    sweep(demo_config, demo_inventory, repo_cache=cache)  # trusts what is older than RACY now
    incremental = sweep(demo_config, demo_inventory, repo_cache=cache)
    walked, reused = cache.totals()
    assert reused > 0 and walked == 0
    full = sweep(demo_config, demo_inventory)
    assert {s: f.repos for s, f in incremental.facts.items()} == {
        s: f.repos for s, f in full.facts.items()
    }
    assert what(incremental.findings) == what(full.findings)
    assert incremental.ssh_sessions == len(demo_inventory.servers)


def test_a_pack_lost_between_two_incremental_sweeps_is_found_at_once(
    scratch_fleet: SandboxFleet,
) -> None:
    config, inventory = load(scratch_fleet)
    settle()
    cache = RepoCache(racy_seconds=RACY)
    sweep(config, inventory, repo_cache=cache)
    quiet = sweep(config, inventory, repo_cache=cache)
    assert cache.totals() == (0, 2)
    assert not [f for f in quiet.findings if f.check == "repo_integrity"]
    sandbox_repos.corrupt_newest_pack(scratch_fleet.repo_path("s1", SCRATCH_P1))
    result = sweep(config, inventory, repo_cache=cache)
    assert cache.last_counts[scratch_fleet.server_id("s1")] == (1, 0)
    found = {(f.server_id, f.code) for f in result.findings if f.check == "repo_integrity"}
    assert (scratch_fleet.server_id("s1"), "master_not_in_pack") in found
    assert what(result.findings) == what(sweep(config, inventory).findings)


def test_retain_drops_the_hosts_no_longer_swept_and_keeps_the_others() -> None:
    cache = RepoCache()
    entry = HostCache.of({PID_A: CachedRepo(FP, RepoFacts(PID_A), time.time())})
    cache.replace(SID, entry, 1, 0)
    cache.replace("other", HostCache(), 0, 0)
    cache.retain([SID])
    assert cache.entry(SID).repos == entry.repos
    assert cache.entry("other") == HostCache()
    assert set(cache.last_counts) == {SID}


# ------------------------------------------------------------------------------------------
# the owner sample's budget, spread over sweeps
# ------------------------------------------------------------------------------------------

PID_C = "c0ffee00-1234-4abc-8def-00000000000c"
ONE_PROJECT = OwnerSample(per_project=200, per_host=2)  # a live dir here is its top + notes.txt


def owners(facts: HostFacts, pid: str) -> dict[int, int]:
    return dict(facts.project_dirs[pid].owners)


def test_the_owner_sample_starts_where_the_last_one_ran_out_and_wraps_around(
    host: LocalHost,
) -> None:
    for pid in (PID_A, PID_B, PID_C):
        host.add_repo(pid)
    cache = RepoCache(racy_seconds=RACY)
    sampled = []
    for _ in range(4):
        facts = gather_host(
            host.server, host.ssh, tcp_timeout=0.2, repo_cache=cache, owner_sample=ONE_PROJECT
        )
        assert facts.probed, facts.failure_message
        sampled.append(cache.sample_start(SID))
    assert sampled == [PID_B, PID_C, PID_A, PID_B]


def test_a_wrong_owner_past_the_budget_is_found_in_turn_and_stays_reported_until_resampled(
    host: LocalHost,
) -> None:
    for pid in (PID_A, PID_B, PID_C):
        host.add_repo(pid)
    os.chown(host.projects / PID_C / "notes.txt", 4242, 4242)  # e.g. left by a root restore
    cache = RepoCache(racy_seconds=RACY)

    def sweep_once() -> HostFacts:
        facts = gather_host(
            host.server, host.ssh, tcp_timeout=0.2, repo_cache=cache, owner_sample=ONE_PROJECT
        )
        assert facts.probed, facts.failure_message
        return facts

    first, second, third = sweep_once(), sweep_once(), sweep_once()
    assert first.project_dirs[PID_C].sample_skipped  # never sampled yet: only its top is known
    assert 4242 not in owners(second, PID_C)
    assert owners(third, PID_C)[4242] == 1  # its turn came
    fourth = sweep_once()  # A sampled again, C skipped: its last sample is kept
    assert owners(fourth, PID_C)[4242] == 1
    assert fourth.project_dirs[PID_C].sample_skipped is False

    os.chown(host.projects / PID_C, 4343, 4343)  # the top changed: the old sample is not kept
    changed = sweep_once()  # B sampled, C skipped
    assert changed.project_dirs[PID_C].sample_skipped
    assert owners(changed, PID_C) == {}
    assert changed.project_dirs[PID_C].uid == 4343


def test_a_gather_without_live_dirs_skips_them_and_keeps_their_entries(host: LocalHost) -> None:
    """Sweeps where the ownership check is not due leave the live directories out; the next
    sweep that runs it still gets only the changed records sent, and facts equal a full walk's."""
    for pid in (PID_A, PID_B):
        host.add_repo(pid)
    settle()
    cache = RepoCache(racy_seconds=RACY)
    host.gather(cache)
    kept = cache.entry(SID).dirs
    assert set(kept) == {PID_A, PID_B}
    os.chown(host.projects / PID_B / "notes.txt", 4242, 4242)
    without = gather_host(host.server, host.ssh, tcp_timeout=0.2, repo_cache=cache, live_dirs=False)
    assert without.probed, without.failure_message
    assert without.project_dirs == {}
    assert cache.totals() == (0, 2), "the repositories are still reused"
    assert cache.entry(SID).dirs == kept, "the directories' entries carry over untouched"
    with_dirs = host.gather(cache)
    assert with_dirs.project_dirs == host.gather(None).project_dirs
    assert owners(with_dirs, PID_B)[4242] == 1
    assert with_dirs.project_dirs[PID_A] is kept[PID_A].facts, "an unchanged record is reused"


def test_the_probe_is_told_to_leave_live_dirs_out_only_when_asked() -> None:
    server = Server(SID, "127.0.0.1", 1, name="h")
    assert "--no-project-dirs" in probe_argv(server, "python3", live_dirs=False)
    assert "--owner-sample" not in probe_argv(server, "python3", live_dirs=False)
    assert "--no-project-dirs" not in probe_argv(server, "python3", owner_sample=OwnerSample())


def test_a_sweep_lists_live_dirs_only_when_the_ownership_check_runs(tmp_path: Path) -> None:
    from bup_watchdog.sweep import judges_live_dirs

    def config(extra: str = "") -> Config:
        path = tmp_path / "config.toml"
        path.write_text(f'[inventory]\nfile = "{tmp_path / "i.toml"}"\n{extra}')
        return load_config(path, settings_models())

    on = config()
    assert on.check("ownership").interval_seconds == 3600  # the default: hourly
    assert judges_live_dirs(on)
    assert judges_live_dirs(on, ("ownership", "repo_integrity"))
    assert not judges_live_dirs(on, ("repo_integrity", "replication_lag"))
    assert not judges_live_dirs(config("[checks.ownership]\nenabled = false\n"))


def test_without_a_cache_every_gather_samples_from_the_first_project(host: LocalHost) -> None:
    for pid in (PID_A, PID_B, PID_C):
        host.add_repo(pid)
    for _ in range(2):
        facts = gather_host(host.server, host.ssh, tcp_timeout=0.2, owner_sample=ONE_PROJECT)
        skipped = {pid for pid, d in facts.project_dirs.items() if d.sample_skipped}
        assert skipped == {PID_B, PID_C}


def test_the_owner_sample_reaches_the_probe_and_its_start_must_be_a_project_id() -> None:
    server = Server(SID, "127.0.0.1", 1)
    argv = probe_argv(server, "python3", owner_sample=OwnerSample(10, 20, PID_C))
    assert argv[argv.index("--owner-sample") + 1] == "10"
    assert argv[argv.index("--owner-sample-total") + 1] == "20"
    assert argv[argv.index("--owner-sample-from") + 1] == PID_C
    for bad in ("--bup-root=/etc", "../x", "c0ffee00"):
        with pytest.raises(ValueError):
            probe_argv(server, "python3", owner_sample=OwnerSample(10, 20, bad))


def test_a_kept_owner_sample_is_dropped_once_older_than_keep_samples() -> None:
    sampled = ProjectDirFacts.of(PID_A, uid=1000, gid=1000, owners={1000: 3, 4242: 1}, sampled=4)
    now_skipped = {
        "type": "project_dir",
        "project_id": PID_A,
        "uid": 1000,
        "gid": 1000,
        "sample_skipped": True,
    }

    def parse(sampled_at: float) -> ProjectDirFacts:
        facts = HostFacts(SID, time.time())
        before = HostCache.of(dirs={PID_A: CachedDir(DIGEST, sampled, False, sampled_at)})
        parse_probe_lines(
            SID,
            lines({"type": "hello"}, now_skipped, {"type": "done"}),
            facts,
            fresh=CacheBuilder(before),
            keep_samples=3600,
        )
        return facts.project_dirs[PID_A]

    assert parse(time.time() - 60) == sampled  # kept
    assert parse(time.time() - 7200).sample_skipped  # too old: only the top is known


def test_fingerprints_and_digests_that_are_not_lowercase_hex_are_not_kept() -> None:
    fresh = CacheBuilder()
    parse_probe_lines(
        SID,
        lines(
            {"type": "hello"},
            {"type": "repo", "project_id": PID_A, "path": "x", "fingerprint": "é x\n-"},
            {"type": "project_dir", "project_id": PID_A, "uid": 0, "gid": 0, "digest": "AB CD"},
            {"type": "done"},
        ),
        HostFacts(SID, time.time()),
        fresh=fresh,
    )
    assert fresh.build() == HostCache()  # they would corrupt the next known state


def test_forget_project_drops_one_project_on_one_host() -> None:
    cache = RepoCache()
    entry = HostCache.of({p: CachedRepo(FP, RepoFacts(p), time.time()) for p in (PID_A, PID_B)})
    cache.replace(SID, entry, 2, 0)
    cache.forget_project(SID, PID_A)
    assert set(cache.entry(SID).repos) == {PID_B}


def test_fingerprint_numbers_past_a_signed_64_bit_word_still_hash() -> None:
    from bup_watchdog.probe import FP_HEX, _fingerprint_text

    top = [2**63 + 5, -1, 0]  # an NFS/FUSE inode; the error marker
    text = _fingerprint_text(top, top, 0b101)
    assert len(text) == FP_HEX and text.endswith("05")
    assert text != _fingerprint_text([5, -1, 0], [5, -1, 0], 0b101)


def _missing(fp: str) -> set[bytes]:
    from bup_watchdog.probe import _FP_RELS, FP_DIGEST_HEX, FP_TOP_HEX

    mask = int(fp[FP_TOP_HEX + FP_DIGEST_HEX :], 16)
    return {_FP_RELS[n] for n in range(len(_FP_RELS)) if mask >> n & 1}


def test_paths_missing_at_the_last_walk_are_not_looked_up_and_nothing_is_lost(
    host: LocalHost,
) -> None:
    """The mask of a trusted fingerprint names the missing paths (here packed-refs and
    bupindex.hlink); given it back, the probe skips their lstat and gets the same fingerprint, and
    creating one of them still changes it (its parent directory's lstat is in the digest)."""
    repo = host.add_repo()
    settle()
    full, _ = fingerprint(str(repo))
    missing = _missing(full)
    assert {b"packed-refs", b"bupindex.hlink"} <= missing
    assert not missing & {b"HEAD", b"refs/heads/master", b"conf/save_log.json", b"conf"}
    assert fingerprint(str(repo), full)[0] == full
    (repo / "bupindex.hlink").write_bytes(b"")
    assert fingerprint(str(repo), full)[0] != full


def test_a_changed_repository_top_stops_the_fingerprint_before_any_lookup_below_it(
    host: LocalHost, tmp_path: Path
) -> None:
    """conf/ is not stat'ed by an incremental check: the repository's own lstat vouches for it.
    Swapping conf/ for a symlink changes that lstat, so the check stops there (it never looks
    through the symlink) and the repository is walked; the walk's fingerprint marks conf/ as no
    real directory and never looks below it either."""
    repo = host.add_repo()
    settle()
    known, _ = fingerprint(str(repo))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(repo / "conf", elsewhere)
    (repo / "conf").symlink_to(elsewhere)
    assert fingerprint(str(repo), known)[0] != known
    walked, _ = fingerprint(str(repo))
    assert b"conf" in _missing(walked)
    with open(elsewhere / "save_log.json", "a") as f:  # outside the repository
        f.write('{"timestamp": 2}\n')
    assert fingerprint(str(repo), walked)[0] == walked == fingerprint(str(repo))[0]


def test_the_fingerprint_never_looks_through_a_symlinked_directory(
    host: LocalHost, tmp_path: Path
) -> None:
    repo = host.add_repo()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(repo / "conf", elsewhere)
    (repo / "conf").symlink_to(elsewhere)
    before = fingerprint(str(repo))[0]
    with open(elsewhere / "save_log.json", "a") as f:  # outside the repository
        f.write('{"timestamp": 2}\n')
    assert fingerprint(str(repo))[0] == before


def _no_logs(repo: Path) -> None:
    shutil.rmtree(repo / "logs")


def _conf_symlinked(repo: Path) -> None:
    moved = repo.with_name(repo.name + ".conf")
    shutil.move(repo / "conf", moved)
    (repo / "conf").symlink_to(moved)


def _master_only_packed(repo: Path) -> None:
    pack_refs_at_the_previous_save(repo)
    (repo / "refs" / "heads").rmdir()


def _pack_dir_a_file(repo: Path) -> None:
    shutil.rmtree(repo / "objects" / "pack")
    (repo / "objects" / "pack").write_bytes(b"")


SHAPES: dict[str, Callable[[Path], None]] = {
    "as made by bup": lambda repo: None,
    "without logs/": _no_logs,
    "conf/ a symlink": _conf_symlinked,
    "master only in packed-refs, no refs/heads/": _master_only_packed,
    "objects/pack a file": _pack_dir_a_file,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_quick_unchanged_check_answers_as_the_full_fingerprint_does(
    host: LocalHost, shape: str
) -> None:
    """``_unchanged`` follows a plan made from the mask; on every repository shape, before and
    after every change the tests know, it must answer exactly as comparing ``fingerprint``."""
    from bup_watchdog.probe import _unchanged

    changes = {**{k: v[0] for k, v in CHANGES.items()}, **{k: v[0] for k, v in UNSEEN.items()}}
    for n, (name, change) in enumerate(sorted(changes.items())):
        pid = f"{n:08x}-0000-4000-8000-000000000000"
        repo = host.add_repo(pid)
        SHAPES[shape](repo)
        known, _ = fingerprint(str(repo))
        assert _unchanged(str(repo), known), f"{shape}: unchanged right after the walk"
        try:
            change(repo)
        except (OSError, IndexError, subprocess.CalledProcessError, sandbox_repos.BuildError):
            continue  # a change this shape cannot take (no logs/ to append to, no pack, …)
        full = fingerprint(str(repo), known)[0] == known
        assert _unchanged(str(repo), known) == full, f"{shape}, then {name}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_fingerprint_a_walk_takes_from_its_own_lstats_is_the_fingerprint_of_the_repository(
    host: LocalHost, shape: str
) -> None:
    """A walk builds its fingerprint from the lstats and listings it already has instead of
    looking every path up again; on every shape, after every change the tests know (symlinks,
    paths gone, a FIFO where a file was), it must be exactly ``fingerprint``'s."""
    from bup_watchdog.probe import repo_facts

    changes = {**{k: v[0] for k, v in CHANGES.items()}, **{k: v[0] for k, v in UNSEEN.items()}}
    changes["conf/touch a FIFO"] = lambda repo: (
        (repo / "conf" / "touch").unlink(),
        os.mkfifo(repo / "conf" / "touch"),
    )
    changes["HEAD a directory"] = lambda repo: ((repo / "HEAD").unlink(), (repo / "HEAD").mkdir())
    checked = 0
    for n, (name, change) in enumerate(sorted(changes.items())):
        pid = f"{n:08x}-0000-4000-8000-000000000000"
        repo = host.add_repo(pid)
        SHAPES[shape](repo)
        try:
            change(repo)
        except (OSError, IndexError, subprocess.CalledProcessError, sandbox_repos.BuildError):
            continue
        rec = repo_facts(str(repo), pid, with_fingerprint=True, racy_seconds=0.0)
        if rec["file_count"] is None:
            continue  # not walked (a symlink): no fingerprint to compare
        assert rec["fingerprint"] == fingerprint(str(repo))[0], f"{shape}, then {name}"
        checked += 1
    assert checked >= len(changes) // 2
