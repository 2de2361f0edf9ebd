"""save_log_size, from recorded facts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from bup_watchdog import probe
from bup_watchdog.checks.repo_integrity import check as integrity
from bup_watchdog.checks.save_log_size import check
from bup_watchdog.model import Severity
from support.facts import P1, S1, host_facts, host_records, inventory, repo

SETTINGS = check.Settings()


def evaluate(**kw: object) -> list[tuple[Severity, str]]:
    facts = {S1: host_facts(S1, host_records(repo(P1, **kw)))}
    return [(f.severity, f.code) for f in check.evaluate(facts, inventory(), SETTINGS)]


def test_a_small_save_log_yields_no_finding() -> None:
    assert evaluate(save_log_bytes=49_999_999) == []


def test_a_save_log_over_the_warning_size_is_a_warning() -> None:
    assert evaluate(save_log_bytes=62_000_000) == [(Severity.WARNING, "too_large")]


def test_a_save_log_over_the_critical_size_is_critical() -> None:
    assert evaluate(save_log_bytes=382_000_000) == [(Severity.CRITICAL, "too_large")]


def test_a_symlinked_save_log_is_reported_not_measured() -> None:
    assert evaluate(save_log_bytes=None, save_log_is_symlink=True) == [
        (Severity.WARNING, "symlink")
    ]


def test_thresholds_out_of_order_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="critical_bytes must be at least warn_bytes"):
        check.Settings(warn_bytes=10, critical_bytes=5)


def test_a_save_log_that_is_no_regular_file_is_a_save_log_finding() -> None:
    [(severity, code)] = evaluate(save_log_bytes=None, save_log_kind="FIFO")
    assert (severity, code) == (Severity.WARNING, "not_regular_file")


@pytest.mark.parametrize("kind", ["FIFO", "socket"])
def test_a_real_fifo_or_socket_save_log_is_save_log_sizes_finding_not_a_probe_error(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_dir = tmp_path / P1
    (repo_dir / "conf").mkdir(parents=True)
    log = repo_dir / "conf" / "save_log.json"
    if kind == "FIFO":
        os.mkfifo(log)
    else:
        monkeypatch.chdir(log.parent)  # a socket path is limited to 108 bytes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(log.name)
        sock.close()
    rec = {"type": "repo", **probe.repo_facts(str(repo_dir), P1)}
    facts = {S1: host_facts(S1, host_records(rec))}

    found = {
        (f.check, f.code)
        for c in (check, integrity)
        for f in c.evaluate(facts, inventory(), c.Settings())
    }

    assert ("save_log_size", "not_regular_file") in found
    assert not any(code == "probe_error" for _, code in found), found
    [f] = [f for f in check.evaluate(facts, inventory(), SETTINGS)]
    assert f"is a {kind}" in f.message
