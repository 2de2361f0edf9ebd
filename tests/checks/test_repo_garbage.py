"""repo_garbage, from recorded facts."""

from __future__ import annotations

from bup_watchdog.checks.repo_garbage import check
from bup_watchdog.checks.repo_integrity import check as repo_integrity
from bup_watchdog.model import Finding, Severity
from support.facts import P1, P2, S1, host_facts, host_records, inventory, repo

SETTINGS = check.Settings()


def evaluate(*repos: dict[str, object]) -> list[Finding]:
    facts = {S1: host_facts(S1, host_records(*repos))}
    return list(check.evaluate(facts, inventory(), SETTINGS))


def codes(**kw: object) -> list[tuple[Severity, str]]:
    return [(f.severity, f.code) for f in evaluate(repo(P1, **kw))]


def test_a_clean_repo_yields_no_finding() -> None:
    assert codes() == []


def test_leftover_tmp_objects_are_a_warning_counted_in_the_value() -> None:
    [f] = evaluate(repo(P1, tmp_count=3))
    assert (f.severity, f.code, f.value, f.project_id) == (Severity.WARNING, "tmp_objects", 3, P1)


def test_a_few_midx_files_are_normal_and_many_are_a_warning() -> None:
    assert codes(midx_count=10) == []
    assert codes(midx_count=11) == [(Severity.WARNING, "midx")]


def test_a_huge_bupindex_is_a_warning() -> None:
    assert codes(bupindex_bytes=100_000_000) == []
    assert codes(bupindex_bytes=250_000_000) == [(Severity.WARNING, "bupindex")]


def test_too_many_packs_is_a_warning() -> None:
    assert codes(pack_count=500) == []
    assert codes(pack_count=501) == [(Severity.WARNING, "too_many_packs")]


def test_an_idx_without_its_pack_in_a_readable_repo_is_garbage() -> None:
    assert codes(idx_without_pack=2) == [(Severity.WARNING, "orphan_idx")]


def test_a_corrupt_repo_gets_its_finding_from_repo_integrity_not_orphan_idx_noise() -> None:
    lost_pack = repo(P1, idx_without_pack=1, master_in_pack=False)
    assert evaluate(lost_pack) == []
    facts = {S1: host_facts(S1, host_records(lost_pack))}
    integrity = list(repo_integrity.evaluate(facts, inventory(), repo_integrity.Settings()))
    assert [f.code for f in integrity] == ["master_not_in_pack"]


def test_a_symlink_leading_out_of_the_repo_is_critical_and_all_are_counted() -> None:
    [f] = evaluate(repo(P1, symlinks_outside=["objects/evil", "refs/x"], symlinks_outside_count=7))
    assert (f.severity, f.code, f.value) == (Severity.CRITICAL, "symlink_outside", 7)
    assert "objects/evil" in f.message


def test_each_kind_of_garbage_gives_one_finding_per_repo() -> None:
    messy = repo(P1, tmp_count=4, midx_count=30, pack_count=900, bupindex_bytes=10**9)
    found = evaluate(messy, repo(P2, tmp_count=1))
    assert sorted((f.project_id, f.code) for f in found) == [
        (P1, "bupindex"),
        (P1, "midx"),
        (P1, "tmp_objects"),
        (P1, "too_many_packs"),
        (P2, "tmp_objects"),
    ]


def test_a_symlinked_repository_is_left_to_repo_integrity() -> None:
    assert codes(is_symlink=True, tmp_count=5) == []


def test_thresholds_are_settings() -> None:
    facts = {S1: host_facts(S1, host_records(repo(P1, tmp_count=3, pack_count=20)))}
    strict = check.Settings(max_tmp_objects=5, max_packs=10)
    assert [f.code for f in check.evaluate(facts, inventory(), strict)] == ["too_many_packs"]
