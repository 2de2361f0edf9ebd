"""archive audit on an archive of real bup repositories with planted faults, here and over SSH.

The archive is made the way an offsite copy is (``cp -a`` of each project's repository) on host
s1's ``/bup/archive`` (not in the inventory), then four copies get one of FACTS.md's corruptions
each; one copy comes from a replica that lacks the newest save (6 h behind its master), one is of a
project the inventory does not know, and three entries are not repositories.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog.archive import Progress, RepoAudit
from bup_watchdog.archive_report import render
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.repos import (
    SAVE_INTERVAL,
    copy_repo,
    corrupt_newest_pack,
    idx_contains,
    master_sha,
)
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from support.terminal import drain

CLI = [sys.executable, "-m", "bup_watchdog.cli"]

HEALTHY = "0a5e0000-0000-4000-8000-000000000001"  # first in the archive's order
NEWEST_PACK_GONE = "1b5e0000-0000-4000-8000-000000000002"
OLD_PACK_GONE = "2c5e0000-0000-4000-8000-000000000003"
IDX_TRUNCATED = "3d5e0000-0000-4000-8000-000000000004"
MASTER_MISSING = "4e5e0000-0000-4000-8000-000000000005"
STALE = "5f5e0000-0000-4000-8000-000000000006"  # copied from the replica lacking the newest save
UNKNOWN = "6a5e0000-0000-4000-8000-000000000007"  # a project the inventory does not know
BROKEN = {NEWEST_PACK_GONE, OLD_PACK_GONE, IDX_TRUNCATED, MASTER_MISSING}
REPOS = {HEALTHY, STALE, UNKNOWN} | BROKEN
NOT_REPOS = {"lost+found", "notes.txt", "ABCDEF00-0000-4000-8000-000000000008"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    ids = (HEALTHY, NEWEST_PACK_GONE, OLD_PACK_GONE, IDX_TRUNCATED, MASTER_MISSING)
    spec = FleetSpec(
        hosts=(HostSpec("s1", dc=0), HostSpec("s2", dc=1)),
        projects=(
            *(ProjectSpec(pid, "s1", ("s2",), saves=3) for pid in ids),
            ProjectSpec(STALE, "s2", ("s1",), saves=3, stale_on=("s1",)),
        ),
    )
    with SandboxFleet(tmp_path_factory.mktemp("archive-fleet"), spec) as f:
        build_archive(f, f.hosts["s1"].bup_dir / "archive")
        yield f


def build_archive(fleet: SandboxFleet, archive: Path) -> None:
    """Copy every project's repository into ``archive`` and plant the faults."""
    for p in fleet.spec.projects:
        source = "s1" if p.project_id == STALE else p.master  # s1 holds the stale replica
        copy_repo(fleet.repo_path(source, p.project_id), archive / p.project_id)
    copy_repo(fleet.repo_path("s1", HEALTHY), archive / UNKNOWN)
    corrupt_newest_pack(archive / NEWEST_PACK_GONE)
    repo = archive / OLD_PACK_GONE
    head = bytes.fromhex(master_sha(repo))
    older = [i for i in sorted((repo / "objects/pack").glob("*.idx")) if not idx_contains(i, head)]
    assert older, "a repository of three saves has packs without its newest commit"
    older[0].with_suffix(".pack").unlink()
    idx = sorted((archive / IDX_TRUNCATED / "objects/pack").glob("*.idx"))[0]
    idx.write_bytes(idx.read_bytes()[:600])
    (archive / MASTER_MISSING / "refs/heads/master").write_text("0123456789" * 4 + "\n")
    (archive / "lost+found").mkdir()
    (archive / "notes.txt").write_text("copied 2014-06-01\n")
    copy_repo(fleet.repo_path("s1", HEALTHY), archive / "ABCDEF00-0000-4000-8000-000000000008")


def audit(fleet: SandboxFleet, target: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``archive audit`` as an operator does; the exit code, the JSON report and stderr."""
    args = ("--format", "json", *args)
    proc = subprocess.run(
        [*CLI, "archive", "audit", "-c", str(fleet.config_path), target, "-o", "-", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, proc.stderr


def broken(report: dict[str, Any]) -> dict[str, str]:
    return {b["project_id"]: b["message"] for b in report["broken"]}


def lag_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["project_id"]: row for row in report["lag"]}


def test_the_audit_finds_exactly_the_broken_copies_and_the_one_behind_its_master(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    archive = fleet.hosts["s1"].bup_dir / "archive"
    state = tmp_path / "audit.jsonl"
    code, report, err = audit(fleet, str(archive), "--state", str(state), "--max-lag", "1h")

    assert code == 1, err
    assert set(broken(report)) == BROKEN
    for pid, message in broken(report).items():
        assert "git fsck --connectivity-only failed" in message, pid  # FACTS.md: catches all four
    # What is wrong, in git's own words: the error lines, not only the last one.
    assert "refs/heads/master: invalid sha1 pointer" in broken(report)[NEWEST_PACK_GONE]
    assert "invalid sha1 pointer 0123456789" in broken(report)[MASTER_MISSING]
    assert ".idx is too small" in broken(report)[IDX_TRUNCATED]
    assert "invalid reflog entry" in broken(report)[OLD_PACK_GONE]
    assert {(b["project_id"], b["bup_rc"]) for b in report["broken"]} >= {
        (NEWEST_PACK_GONE, 1),
        (IDX_TRUNCATED, 1),
        (MASTER_MISSING, 1),
    }
    lags = lag_of(report)
    assert [pid for pid, row in lags.items() if row["status"] == "stale"] == [STALE]
    assert lags[STALE]["lag_seconds"] == SAVE_INTERVAL
    assert lags[STALE]["lag"] == "6.0 h" and lags[STALE]["master_from"] == "database"
    assert lags[HEALTHY]["status"] == "in_step" and lags[HEALTHY]["lag_seconds"] == 0
    assert report["not_in_inventory"] == [UNKNOWN]
    assert {s["name"] for s in report["skipped"]} == NOT_REPOS
    s = report["summary"]
    assert (s["repositories"], s["ok"], s["broken"], s["stale"], s["not_audited"]) == (
        7,
        3,
        4,
        1,
        0,
    )
    assert "7 repositories (7 checked now, 0 from" in err
    lines = [line for line in err.splitlines() if line.startswith("archive audit: [")]
    assert len(lines) == 7 and sum("BROKEN" in line for line in lines) == 4  # no TTY: a line each

    # The same data as an operator reads it: HTML (escaped) and Markdown.
    html = render(report, "html")
    assert "Broken repositories (4)" in html and '<td class="stale">stale</td>' in html
    assert "<code>lost+found</code>" in html and "<script" not in html
    md = render(report, "md")
    assert "## Broken repositories (4)" in md and f"| `{STALE}` | stale | 6.0 h |" in md


def test_an_audit_whose_budget_ran_out_resumes_without_checking_again_what_it_checked(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(fleet.hosts["s1"].bup_dir / "archive", archive, symlinks=True)
    state = tmp_path / "audit.jsonl"

    code, first, err = audit(fleet, str(archive), "--state", str(state), "-j", "1", "--budget", "0")
    assert code == 3, err  # nothing broken among what it checked, but not done
    assert first["summary"]["audited"] == 1 and first["summary"]["not_audited"] == 6
    assert "run again to resume" in err

    # Break the repository the first run found healthy: a run that re-checked it would see it.
    corrupt_newest_pack(archive / HEALTHY)
    code, second, err = audit(fleet, str(archive), "--state", str(state), "--max-lag", "1h")
    assert code == 1, err
    assert second["summary"]["resumed_from_state"] == 1
    assert second["summary"]["audited_this_run"] == 6
    assert set(broken(second)) == BROKEN

    code, third, err = audit(fleet, str(archive), "--state", str(state), "--restart")
    assert code == 1, err
    assert set(broken(third)) == BROKEN | {HEALTHY}
    assert third["summary"]["audited_this_run"] == 7


def journaled(state: Path) -> dict[str, float]:
    out = {}
    for line in state.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "repo":
            out[rec["project_id"]] = rec["checked_at"]
    return out


def test_a_killed_audit_resumes_and_does_not_check_again_what_it_journaled(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    archive = fleet.hosts["s1"].bup_dir / "archive"
    state = tmp_path / "audit.jsonl"
    argv = [*CLI, "archive", "audit", "-c", str(fleet.config_path), str(archive)]
    proc = subprocess.Popen(
        [*argv, "--state", str(state), "-j", "1", "-o", str(tmp_path / "r.html")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (state.exists() and journaled(state)) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)  # freeze it at once, then kill it as a crash would
    assert proc.poll() is None, "the audit finished before it could be killed"
    before = journaled(state)
    proc.kill()
    proc.wait()
    assert 1 <= len(before) < len(REPOS)

    code, report, err = audit(fleet, str(archive), "--state", str(state), "--max-lag", "1h")

    assert code == 1, err
    assert report["summary"]["resumed_from_state"] == len(before)
    assert report["summary"]["audited_this_run"] == len(REPOS) - len(before)
    after = journaled(state)
    assert {pid: after[pid] for pid in before} == before  # not checked again
    assert set(after) == REPOS and set(broken(report)) == BROKEN


def test_the_audit_over_ssh_by_server_name_finds_the_same_and_probes_the_masters(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    inside = f"{fleet.hosts['s1'].bup_root}/archive"
    code, report, err = audit(
        fleet, f"s1:{inside}", "--state", str(tmp_path / "a.jsonl"), "--max-lag", "1h", "--fresh"
    )

    assert code == 1, err
    assert report["archive"] == f"s1:{inside}"
    assert set(broken(report)) == BROKEN
    lags = lag_of(report)
    assert [pid for pid, row in lags.items() if row["status"] == "stale"] == [STALE]
    assert lags[STALE]["master_from"] == "master probed"
    assert lags[STALE]["lag_seconds"] == SAVE_INTERVAL
    assert lags[HEALTHY]["status"] == "in_step"
    assert {s["name"] for s in report["skipped"]} == NOT_REPOS


def test_the_audit_over_ssh_by_address_uses_the_configs_ssh_settings(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    host = fleet.hosts["s1"]
    target = f"root@{host.address}:{host.bup_root}/archive"
    code, report, err = audit(fleet, target, "--state", str(tmp_path / "a.jsonl"), "-j", "3")

    assert code == 1, err
    assert set(broken(report)) == BROKEN
    assert report["summary"]["ok"] == 3


def test_a_healthy_archive_exits_0(fleet: SandboxFleet, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    copy_repo(fleet.repo_path("s1", HEALTHY), archive / HEALTHY)
    code, report, err = audit(fleet, str(archive), "--state", str(tmp_path / "a.jsonl"))

    assert code == 0, err
    assert report["summary"]["verdict"] == "ok" and report["summary"]["ok"] == 1


def test_bad_targets_are_usage_errors_and_an_unreachable_host_could_not_run(
    fleet: SandboxFleet, tmp_path: Path
) -> None:
    def one_line(err: str) -> str:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        return lines[0]

    code, _, err = audit(fleet, str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in one_line(err)
    code, _, err = audit(fleet, "s1:bup/archive")
    assert code == 2 and "must be absolute" in one_line(err)
    code, _, err = audit(fleet, str(tmp_path), "--max-lag", "soon")
    assert code == 2 and "not a duration" in one_line(err)

    state = tmp_path / "other.jsonl"
    state.write_text(json.dumps({"type": "archive_audit", "target": "local:/elsewhere"}) + "\n")
    code, _, err = audit(fleet, str(tmp_path), "--state", str(state))
    assert code == 2 and "belongs to the audit of" in one_line(err)

    code, _, err = audit(fleet, "127.0.0.1:/bup/archive", "--state", str(tmp_path / "x.jsonl"))
    assert code == 3 and "127.0.0.1" in one_line(err)


def test_on_a_terminal_the_progress_is_a_bar_that_still_names_each_broken_repository() -> None:
    master, slave = pty.openpty()
    reader, chunks = drain(master)
    with open(slave, "w", encoding="utf-8", closefd=True) as tty:
        progress = Progress(2, "s1:/bup/archive", tty)
        progress.repo_done(RepoAudit(HEALTHY, True, time.time(), seconds=0.1), HEALTHY)
        bad = RepoAudit(MASTER_MISSING, False, time.time(), "git fsck [rc 2]", seconds=0.1)
        progress.repo_done(bad, MASTER_MISSING)
        progress.close()
    reader.join(10)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "auditing" in text and "2/2" in text
    assert f"{MASTER_MISSING}: BROKEN: git fsck [rc 2]" in text
    assert f"{HEALTHY}: ok" not in text  # healthy ones only move the bar
