"""repo_integrity (cheap tier), from recorded facts."""

from __future__ import annotations

from bup_watchdog.checks.repo_integrity import check
from bup_watchdog.model import Severity
from support.facts import P1, P2, S1, host_facts, host_records, inventory, project, repo

SETTINGS = check.Settings()


def codes(*repos: dict[str, object], projects: tuple[str, ...] = ()) -> set[tuple[str, str]]:
    facts = {S1: host_facts(S1, host_records(*repos))}
    inv = inventory(*(project(p) for p in projects))
    return {(f.project_id or "", f.code) for f in check.evaluate(facts, inv, SETTINGS)}


def test_a_healthy_repo_yields_no_finding() -> None:
    assert codes(repo(P1), projects=(P1,)) == set()


def test_a_master_commit_in_no_pack_is_critical() -> None:
    facts = {S1: host_facts(S1, host_records(repo(P1, master_in_pack=False)))}
    [f] = list(check.evaluate(facts, inventory(), SETTINGS))
    assert (f.code, f.severity) == ("master_not_in_pack", Severity.CRITICAL)
    assert "a" * 40 in f.message


def test_an_unreadable_master_ref_is_reported_with_the_probes_sentence() -> None:
    bad = repo(
        P1, master_sha=None, master_in_pack=None, master_error="refs/heads/master is missing"
    )
    assert codes(bad) == {(P1, "master_unreadable")}


def test_a_symlinked_repository_is_reported_and_nothing_else_read() -> None:
    assert codes(repo(P1, is_symlink=True, master_in_pack=False)) == {(P1, "symlink")}


def test_a_master_copy_missing_from_its_master_server_is_critical() -> None:
    assert codes(repo(P1), projects=(P1, P2)) == {(P2, "master_missing")}


def test_head_naming_another_branch_is_no_finding_since_bup_reads_refs_heads_master() -> None:
    assert codes(repo(P1, head="ref: refs/heads/main"), projects=(P1,)) == set()


def test_a_detached_head_is_no_finding() -> None:
    assert codes(repo(P1, head="c" * 40), projects=(P1,)) == set()


def test_a_head_git_would_not_accept_is_a_warning() -> None:
    facts = {S1: host_facts(S1, host_records(repo(P1, head="garbage")))}
    [f] = list(check.evaluate(facts, inventory(project(P1)), SETTINGS))
    assert (f.code, f.severity) == ("bad_head", Severity.WARNING)
