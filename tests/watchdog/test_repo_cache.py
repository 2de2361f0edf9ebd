"""The incremental cache's columns hold exactly the entries a plain dict of entries would.

HostCache keeps a host's entries in columns (packed fingerprints and digests, float arrays) and
CacheBuilder makes the next ones by patching the previous columns, or anew by project id when a
project is new to the host. Each scenario here is a random host and a random probe answer; the
entries built must equal those worked out with dicts, entry by entry (what was reported
unchanged, walked, not told, gone).
"""

from __future__ import annotations

import random
import uuid

import pytest

from bup_watchdog.live_dirs import ProjectDirFacts
from bup_watchdog.model import RepoFacts
from bup_watchdog.probe import DIGEST_HEX, FP_HEX
from bup_watchdog.repo_cache import CacheBuilder, CachedDir, CachedRepo, HostCache, RepoCache


def hex_text(rnd: random.Random, width: int) -> str:
    return "".join(rnd.choice("0123456789abcdef") for _ in range(width))


def entries(
    rnd: random.Random, pids: list[str], at: float
) -> tuple[dict[str, CachedRepo], dict[str, CachedDir]]:
    """Entries for some of ``pids``: each id has a repository, a directory or both."""
    repos: dict[str, CachedRepo] = {}
    dirs: dict[str, CachedDir] = {}
    for pid in pids:
        kind = rnd.choice(("repo", "dir", "both", "both"))
        if kind != "dir":
            repos[pid] = CachedRepo(
                hex_text(rnd, FP_HEX), RepoFacts(pid, pack_count=rnd.randint(0, 9)), at
            )
        if kind != "repo":
            skipped = rnd.random() < 0.2
            facts = ProjectDirFacts.of(pid, uid=rnd.randint(0, 9), gid=0, sample_skipped=skipped)
            dirs[pid] = CachedDir(hex_text(rnd, DIGEST_HEX), facts, skipped, 0.0 if skipped else at)
    return repos, dirs


@pytest.mark.parametrize("seed", range(40))
def test_the_built_columns_hold_the_entries_worked_out_by_project_id(seed: int) -> None:
    rnd = random.Random(seed)
    pids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(rnd.randint(0, 30))]
    repos, dirs = entries(rnd, pids, 100.0)
    previous = HostCache.of(repos, dirs)
    assert previous.repos == repos and previous.dirs == dirs
    told = [rnd.random() < 0.8 for _ in previous.ids]  # the others are due for a full walk
    with_dirs = rnd.random() < 0.5
    b = CacheBuilder(previous, told, with_dirs)
    told_repos = {p for p, t in zip(previous.ids, told, strict=True) if t and p in repos}
    told_dirs = set(dirs) if with_dirs else set()
    assert b.known_ids() == sorted(told_repos | told_dirs)
    assert b.told_repos == len(told_repos)
    # The probe's answer: some of what it was told unchanged, some walked again, some gone,
    # and projects new to the host (half the scenarios: the patch and by-id paths both run).
    known = b.known_ids()
    same_repos = {p for p in told_repos if rnd.random() < 0.7}
    same_dirs = {p for p in told_dirs if rnd.random() < 0.7}
    b.unchanged([p in same_repos for p in known], [p in same_dirs for p in known])
    new = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(rnd.choice((0, 3)))]
    walked_repos, walked_dirs = entries(rnd, [p for p in pids + new if rnd.random() < 0.3], 200.0)
    for pid in same_repos:
        walked_repos.pop(pid, None)
    for pid in same_dirs:
        walked_dirs.pop(pid, None)
    if not with_dirs:
        walked_dirs = {}
    # An id walked twice (two directories whose names differ only in case): the last one wins.
    twice_repos, twice_dirs = entries(rnd, [p for p in walked_repos if rnd.random() < 0.3], 150.0)
    for pid, r in twice_repos.items():
        b.walked_repo(pid, r.facts, r.fingerprint, r.walked_at)
    for pid, d in twice_dirs.items():
        if pid in walked_dirs:
            b.walked_dir(pid, d.facts, d.digest, d.skipped, d.sampled_at)
    for pid, r in walked_repos.items():
        b.walked_repo(pid, r.facts, r.fingerprint, r.walked_at)
    for pid, d in walked_dirs.items():
        b.walked_dir(pid, d.facts, d.digest, d.skipped, d.sampled_at)
    built = b.build()
    want_repos = {p: repos[p] for p in same_repos} | walked_repos
    want_dirs = ({p: dirs[p] for p in same_dirs} if with_dirs else dict(dirs)) | walked_dirs
    assert built.repos == want_repos
    assert built.dirs == want_dirs
    assert list(built.ids) == sorted(want_repos.keys() | want_dirs.keys())
    assert built.skipped_dirs() == sorted(p for p, d in want_dirs.items() if d.skipped)
    for pid in pids + new:
        assert built.dir_entry(pid) == want_dirs.get(pid)


def test_a_fingerprint_or_digest_of_another_width_is_not_kept() -> None:
    pid = str(uuid.uuid4())
    b = CacheBuilder()
    b.walked_repo(pid, RepoFacts(pid), "a" * (FP_HEX - 1), 1.0)
    b.walked_repo(pid.upper(), RepoFacts(pid), "A" * FP_HEX, 1.0)
    b.walked_dir(pid, ProjectDirFacts.of(pid, uid=0, gid=0), "c" * (DIGEST_HEX + 2), False, 0.0)
    assert b.build() == HostCache()


def test_the_known_state_names_each_told_entry_once_in_order() -> None:
    a, c = "0" * 8 + "-0000-4000-8000-" + "0" * 12, "f" * 8 + "-0000-4000-8000-" + "0" * 12
    fp, digest = "0" + "9" * (FP_HEX - 1), "0" * (DIGEST_HEX - 1) + "7"
    entry = HostCache.of(
        {c: CachedRepo(fp, RepoFacts(c), 5.0)},
        {
            a: CachedDir(digest, ProjectDirFacts.of(a, uid=0, gid=0)),
            c: CachedDir(digest, ProjectDirFacts.of(c, uid=0, gid=0)),
        },
    )
    assert list(CacheBuilder(entry).known_state()) == [f"{a} - {digest}\n", f"{c} {fp} {digest}\n"]
    assert list(CacheBuilder(entry, with_dirs=False).known_state()) == [f"{c} {fp} -\n"]
    assert list(CacheBuilder(entry, [False, False], with_dirs=False).known_state()) == []


def test_forgetting_a_project_keeps_every_other_entry() -> None:
    rnd = random.Random(3)
    pids = [str(uuid.uuid4()) for _ in range(6)]
    repos, dirs = entries(rnd, pids, 100.0)
    cache = RepoCache()
    cache.replace("s", HostCache.of(repos, dirs), len(repos), 0)
    cache.forget_project("s", pids[2])
    assert cache.entry("s").repos == {p: r for p, r in repos.items() if p != pids[2]}
    assert cache.entry("s").dirs == {p: d for p, d in dirs.items() if p != pids[2]}
