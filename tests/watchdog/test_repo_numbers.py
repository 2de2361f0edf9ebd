"""RepoFacts' sizes, times and commit id, packed in one bytes object, read back as given."""

from __future__ import annotations

import itertools

import pytest

from bup_watchdog.model import NO_ODDITIES, RepoFacts

PID = "8b1f6d7e-3c2a-4b5d-9e8f-0a1b2c3d4e5f"
SHA = "0123456789abcdef0123456789abcdef01234567"
NUMBERS = ("bupindex_bytes", "repo_bytes", "reflog_last_time", "save_log_bytes", "touch_mtime")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"repo_bytes": 0, "bupindex_bytes": 0, "reflog_last_time": 0, "save_log_bytes": 0},
        {"touch_mtime": 0.0},
        {"repo_bytes": 2**63 - 1, "bupindex_bytes": 2**62, "save_log_bytes": 50 * 2**20},
        {"reflog_last_time": -86400, "touch_mtime": -1.5},  # before 1970: a clock gone wrong
        {"reflog_last_time": 1_780_000_000, "touch_mtime": 1_780_000_000.123456789},
        {"bupindex_bytes": None, "save_log_bytes": 7, "touch_mtime": None},
    ],
)
def test_every_number_reads_back_as_given_and_none_stays_none(values: dict[str, object]) -> None:
    facts = RepoFacts.of(PID, master_sha=SHA, **values)
    for name in NUMBERS:
        want = values.get(name, 0 if name == "repo_bytes" else None)
        got = getattr(facts, name)
        assert got == want and type(got) is type(want), name
    assert facts.master_sha == SHA and facts.master_known
    assert facts.odd is NO_ODDITIES


@pytest.mark.parametrize(
    "sha",
    [None, "", "abc", SHA.upper(), SHA[:-1] + "g", SHA + "0", " " + SHA[1:], "é" * 40],
)
def test_a_commit_text_git_would_not_write_is_kept_as_it_came(sha: str | None) -> None:
    facts = RepoFacts.of(PID, master_sha=sha, repo_bytes=5)
    assert facts.master_sha == sha
    assert facts.master_known is (sha is not None)
    assert facts.repo_bytes == 5
    assert (facts.odd is NO_ODDITIES) is (sha is None)


def test_same_master_agrees_with_comparing_the_texts() -> None:
    shas = [None, SHA, "f" * 40, SHA.upper(), "not a sha"]
    for a, b in itertools.product(shas, repeat=2):
        x, y = RepoFacts.of(PID, master_sha=a), RepoFacts.of(PID, master_sha=b)
        assert x.same_master(y) is (a == b), (a, b)


def test_facts_compare_by_value_and_replace_changes_only_what_it_is_given() -> None:
    facts = RepoFacts.of(
        PID, master_sha=SHA, repo_bytes=10, reflog_last_time=100, tmp_count=2, pack_count=3
    )
    assert facts == RepoFacts.of(
        PID, pack_count=3, tmp_count=2, reflog_last_time=100, repo_bytes=10, master_sha=SHA
    )
    later = facts.replace(reflog_last_time=160, master_sha="f" * 40)
    assert (later.reflog_last_time, later.master_sha) == (160, "f" * 40)
    assert (later.repo_bytes, later.pack_count, later.tmp_count) == (10, 3, 2)
    assert later != facts and facts.reflog_last_time == 100
    assert facts.replace() == facts
    text = repr(facts)
    assert f"master_sha='{SHA}'" in text and "reflog_last_time=100" in text


@pytest.mark.parametrize(
    "values",
    [{"repo_bytes": 2**63}, {"bupindex_bytes": -(2**63) - 1}, {"reflog_last_time": 1.5}],
)
def test_a_number_that_is_no_64_bit_integer_is_refused_in_words(values: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="a size or time that is not a 64-bit number"):
        RepoFacts.of(PID, **values)
