"""Tests of watchdog/probe.py against real bup repositories.

The probe is run the way the watchdog runs it on a host: its source on the standard input of
``python3 -S -``, options after the ``-``, JSON lines back. Pure helpers (idx lookup, mountinfo
parsing) are also tested in process, on a module loaded from the file so that the test does not
depend on how the ``watchdog`` package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bup_watchdog.model import RepoFacts

PROBE_PATH = Path(__file__).resolve().parents[2] / "watchdog" / "probe.py"
PROBE_SOURCE = PROBE_PATH.read_bytes()

PID_A = "0b6f5e2c-1b7f-4c3e-9a6e-1f2e3d4c5b6a"
PID_B = "7d3a9f10-55aa-4b2c-8d11-0123456789ab"


def _load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bupwatch_probe_under_test", PROBE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_probe()


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(
        ["git", f"--git-dir={repo}", *args], input=input, capture_output=True, check=True
    )
    return out.stdout.decode()


def show_index(idx: Path) -> list[str]:
    out = subprocess.run(
        ["git", "show-index"], stdin=idx.open("rb"), capture_output=True, check=True
    ).stdout.decode()
    return [line.split()[1] for line in out.splitlines()]


def run_probe(
    bup_root: Path, projects_root: Path, *extra: str, user: int | None = None
) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            sys.executable if user is None else "/usr/bin/python3",  # root's venv is root's
            "-S",
            "-",
            "--bup-root",
            str(bup_root),
            "--projects-root",
            str(projects_root),
            "--readable",  # every field, as dicts (the compact form: test_probe_wire.py)
            *extra,
        ],
        input=PROBE_SOURCE,
        capture_output=True,
        timeout=120,
        user=user,
        cwd="/" if user is not None else None,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    return [json.loads(line) for line in proc.stdout.decode("ascii").splitlines()]


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def repo_record(records: list[dict[str, Any]], project_id: str) -> dict[str, Any]:
    (rec,) = [r for r in of_type(records, "repo") if r["project_id"] == project_id]
    return rec


def regular_file_sizes(root: Path) -> tuple[int, int]:
    """(count, total bytes) of the regular files under root, not following symlinks."""
    count = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                count += 1
                total += os.lstat(path).st_size
    return count, total


def idx_holding(repo: Path, sha: str) -> Path:
    (idx,) = [i for i in (repo / "objects" / "pack").glob("*.idx") if sha in show_index(i)]
    return idx


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bup repository with two saves of a small tree."""
    if shutil.which("bup") is None:
        pytest.fail("bup is not installed (apt-get install bup)")
    base = tmp_path_factory.mktemp("template")
    repo = base / "repo"
    data = base / "data"
    data.mkdir()
    (data / "a.txt").write_text("first file\n")
    env = {**os.environ, "BUP_DIR": str(repo)}
    subprocess.run(["bup", "init"], env=env, check=True, capture_output=True)
    for round_ in range(2):
        (data / f"round-{round_}.txt").write_text(f"round {round_}\n" * 100)
        subprocess.run(["bup", "index", str(data)], env=env, check=True, capture_output=True)
        subprocess.run(
            ["bup", "save", "-n", "master", str(data)], env=env, check=True, capture_output=True
        )
        time.sleep(0.01)  # distinct pack mtimes
    assert len(list((repo / "objects" / "pack").glob("*.pack"))) == 2
    return repo


class Host:
    """A fake storage host: BUP_ROOT with bups/ and conf/, and PROJECTS_ROOT."""

    def __init__(self, base: Path, template: Path) -> None:
        self.bup_root = base / "bup"
        self.bups = self.bup_root / "bups"
        self.projects = base / "projects"
        self.template = template
        self.bups.mkdir(parents=True)
        (self.bup_root / "conf").mkdir()
        self.projects.mkdir()

    def add_repo(self, project_id: str = PID_A) -> Path:
        repo = self.bups / project_id
        shutil.copytree(self.template, repo, symlinks=True)
        return repo

    def probe(self, *extra: str) -> list[dict[str, Any]]:
        return run_probe(self.bup_root, self.projects, *extra)


@pytest.fixture
def host(tmp_path: Path, template_repo: Path) -> Host:
    return Host(tmp_path, template_repo)


# ------------------------------------------------------------------------------------------
# the stream as a whole
# ------------------------------------------------------------------------------------------


def test_the_stream_starts_with_hello_mounts_and_process_and_ends_with_done(host: Host) -> None:
    (host.bup_root / "conf" / "bup_server_id").write_text("  server-7\n")
    host.add_repo(PID_A)
    host.add_repo(PID_B)
    (host.projects / PID_A).mkdir()
    records = host.probe()
    kinds = [r["type"] for r in records]
    assert kinds == ["hello", "mount", "mount", "process", "repo", "repo", "project_dir", "done"]
    hello = records[0]
    assert hello["probe_version"] == probe.PROBE_VERSION == 2
    assert hello["bups"] == str(host.bups)
    assert hello["server_id"] == "server-7"
    assert hello["bup_root"] == str(host.bup_root)
    assert hello["projects_root"] == str(host.projects)
    assert [m["path"] for m in of_type(records, "mount")] == [
        str(host.projects),
        str(host.bups),
    ]
    assert [r["project_id"] for r in of_type(records, "repo")] == sorted([PID_A, PID_B])
    done = records[-1]
    assert done["repos"] == 2 and done["project_dirs"] == 1 and done["strays"] == 0
    assert done["errors"] == []
    assert done["elapsed_seconds"] >= 0


def test_every_line_is_json_sorted_and_repositories_are_compact_arrays(host: Host) -> None:
    host.add_repo()
    (host.projects / PID_A).mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-",
            "--bup-root",
            str(host.bup_root),
            "--projects-root",
            str(host.projects),
        ],
        input=PROBE_SOURCE,
        capture_output=True,
        check=True,
    )
    arrays = 0
    for line in proc.stdout.decode("ascii").splitlines():
        value = json.loads(line)
        if isinstance(value, list):
            arrays += 1
            assert line == json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            assert line == json.dumps(value, sort_keys=True)
    assert arrays == 2  # the repository and the live directory


def test_a_missing_server_id_and_missing_roots_give_nulls_and_no_entries(tmp_path: Path) -> None:
    records = run_probe(tmp_path / "nobup", tmp_path / "noprojects")
    assert [r["type"] for r in records] == ["hello", "mount", "mount", "process", "done"]
    assert records[0]["server_id"] is None
    for mount in of_type(records, "mount"):
        assert mount["exists"] is False
        assert mount["is_mount_point"] is False
        assert mount["mount_point"] is not None  # the mount that would hold it
        assert mount["bytes_total"] is None
    assert records[-1]["repos"] == 0 and records[-1]["project_dirs"] == 0


# ------------------------------------------------------------------------------------------
# repositories
# ------------------------------------------------------------------------------------------


def test_a_healthy_repo_reports_master_sha_counts_reflog_and_conf_files(host: Host) -> None:
    repo = host.add_repo()
    conf = repo / "conf"
    conf.mkdir()
    (conf / "replicas.json").write_text(json.dumps(["server-1", "server-2"]))
    (conf / "settings.json").write_text(json.dumps({"disk": 3000, "cores": 1}))
    (conf / "save_log.json").write_text('{"t": 1}\n' * 10)
    (conf / "touch").write_text("")
    os.utime(conf / "touch", (1_400_000_000, 1_400_000_000))

    rec = repo_record(host.probe(), PID_A)

    assert rec["errors"] == []
    assert rec["is_symlink"] is False
    assert rec["path"] == str(repo)
    assert rec["head"] == "ref: refs/heads/master"
    assert rec["master_sha"] == git(repo, "rev-parse", "master").strip()
    assert rec["master_source"] == "loose"
    assert rec["master_error"] is None
    assert rec["master_in_pack"] is True
    assert rec["master_object_where"] == "pack"
    assert rec["pack_count"] == 2 and rec["idx_count"] == 2
    assert rec["idx_without_pack"] == 0 and rec["bad_idx"] == []
    assert rec["midx_count"] == 0 and rec["tmp_count"] == 0
    count, total = regular_file_sizes(repo)
    assert rec["file_count"] == count and rec["repo_bytes"] == total
    bupindex = sum(
        (repo / n).stat().st_size
        for n in ("bupindex", "bupindex.meta", "bupindex.hlink")
        if (repo / n).exists()
    )
    assert rec["bupindex_bytes"] == bupindex > 0
    reflog_time = git(repo, "log", "-g", "-1", "--date=unix", "--format=%gd", "master")
    assert f"master@{{{rec['reflog_last_time']}}}" == reflog_time.strip()
    assert rec["reflog_entries"] == 2
    assert rec["reflog_last_sha"] == rec["master_sha"]
    assert rec["replicas"] == ["server-1", "server-2"] and rec["replicas_error"] is None
    assert rec["settings"] == {"disk": 3000, "cores": 1} and rec["settings_error"] is None
    assert rec["save_log_bytes"] == 90 and rec["save_log_is_symlink"] is False
    assert rec["save_log_mtime"] == pytest.approx((conf / "save_log.json").stat().st_mtime)
    assert rec["touch_mtime"] == 1_400_000_000
    assert rec["symlinks_outside"] == []


def test_master_in_pack_is_false_when_the_pack_holding_the_newest_commit_is_deleted(
    host: Host,
) -> None:
    repo = host.add_repo()
    idx = idx_holding(repo, git(repo, "rev-parse", "master").strip())
    idx.with_suffix(".pack").unlink()

    rec = repo_record(host.probe(), PID_A)

    assert rec["master_in_pack"] is False
    assert rec["master_object_where"] is None
    assert rec["pack_count"] == 1 and rec["idx_count"] == 2
    assert rec["idx_without_pack"] == 1
    assert rec["bad_idx"] == []


def test_a_truncated_idx_is_reported_in_bad_idx_without_stopping_the_walk(host: Host) -> None:
    repo = host.add_repo(PID_A)
    host.add_repo(PID_B)
    idx = idx_holding(repo, git(repo, "rev-parse", "master").strip())
    data = idx.read_bytes()
    idx.write_bytes(data[: len(data) // 2])

    records = host.probe()
    rec = repo_record(records, PID_A)

    assert [b["name"] for b in rec["bad_idx"]] == [idx.name]
    assert "truncated" in rec["bad_idx"][0]["reason"]
    assert rec["bad_idx_count"] == 1
    assert rec["master_in_pack"] is False
    assert repo_record(records, PID_B)["master_in_pack"] is True
    assert records[-1]["type"] == "done"


def test_an_idx_with_a_bad_magic_or_a_tiny_size_is_reported_as_bad(host: Host) -> None:
    repo = host.add_repo()
    first, second = sorted((repo / "objects" / "pack").glob("*.idx"))
    data = bytearray(first.read_bytes())
    data[0:4] = b"JUNK"
    first.write_bytes(bytes(data))
    second.write_bytes(b"\377tOc")

    rec = repo_record(host.probe(), PID_A)

    reasons = {b["name"]: b["reason"] for b in rec["bad_idx"]}
    assert "bad magic" in reasons[first.name]
    assert "too short" in reasons[second.name]
    assert rec["master_in_pack"] is False


def test_master_pointing_at_a_missing_sha_is_not_in_any_pack(host: Host) -> None:
    repo = host.add_repo()
    (repo / "refs" / "heads" / "master").write_text("1234567890" * 4 + "\n")

    rec = repo_record(host.probe(), PID_A)

    assert rec["master_sha"] == "1234567890" * 4
    assert rec["master_error"] is None
    assert rec["master_in_pack"] is False
    assert rec["master_object_where"] is None
    assert rec["errors"] == []


def test_master_is_found_as_a_loose_object(host: Host) -> None:
    repo = host.add_repo()
    sha = git(repo, "hash-object", "-w", "--stdin", input=b"a loose blob\n").strip()
    (repo / "refs" / "heads" / "master").write_text(sha + "\n")

    rec = repo_record(host.probe(), PID_A)

    assert rec["master_in_pack"] is True
    assert rec["master_object_where"] == "loose"


def test_master_is_read_from_packed_refs_when_there_is_no_loose_ref(host: Host) -> None:
    repo = host.add_repo()
    git(repo, "pack-refs", "--all")
    assert not (repo / "refs" / "heads" / "master").exists()

    rec = repo_record(host.probe(), PID_A)

    assert rec["master_sha"] == git(repo, "rev-parse", "master").strip()
    assert rec["master_source"] == "packed"
    assert rec["master_error"] is None
    assert rec["master_in_pack"] is True


def test_a_master_ref_without_a_sha_or_as_a_symlink_gives_a_master_error(host: Host) -> None:
    repo_a = host.add_repo(PID_A)
    repo_b = host.add_repo(PID_B)
    (repo_a / "refs" / "heads" / "master").write_text("ref: refs/heads/other\n")
    master_b = repo_b / "refs" / "heads" / "master"
    master_b.unlink()
    master_b.symlink_to("/etc/hostname")

    records = host.probe()

    rec_a = repo_record(records, PID_A)
    assert rec_a["master_sha"] is None and rec_a["master_in_pack"] is None
    assert rec_a["master_error"] == "refs/heads/master does not hold a sha"
    rec_b = repo_record(records, PID_B)
    assert rec_b["master_sha"] is None
    assert rec_b["master_error"] == "refs/heads/master is a symlink; not followed"
    assert rec_b["symlinks_outside"] == ["refs/heads/master"]


def test_a_reflog_time_past_64_bits_is_that_repositorys_error_not_the_hosts(host: Host) -> None:
    """Regression: a damaged last reflog line with a 25-digit time went out as a number the
    watchdog packs in 64 bits, and the ProbeError failed every repository of the host."""
    repo = host.add_repo()
    reflog = repo / "logs" / "refs" / "heads" / "master"
    last = reflog.read_bytes().splitlines()[-1]
    head, _, message = last.partition(b"\t")
    who, _when, zone = head.rsplit(b" ", 2)
    reflog.write_bytes(reflog.read_bytes() + b" ".join([who, b"9" * 25, zone]) + b"\t" + message)

    rec = repo_record(host.probe(), PID_A)

    assert rec["errors"] == [f"logs/refs/heads/master: its last entry's time {'9' * 25} is no time"]
    assert rec["reflog_last_time"] is None and rec["reflog_entries"] == 3
    facts = RepoFacts.from_record(rec)  # packs, as the watchdog does
    assert facts.reflog_last_time is None and facts.master_sha == rec["master_sha"]


def test_an_empty_repo_dir_reports_nulls_and_zeros(host: Host) -> None:
    (host.bups / PID_A).mkdir()

    rec = repo_record(host.probe(), PID_A)

    assert rec["head"] is None
    assert rec["master_sha"] is None
    assert rec["master_error"] == "refs/heads/master is missing"
    assert rec["master_in_pack"] is None
    assert rec["pack_count"] == 0 and rec["idx_count"] == 0
    assert rec["repo_bytes"] == 0 and rec["file_count"] == 0
    assert rec["bupindex_bytes"] is None
    assert rec["reflog_last_time"] is None and rec["reflog_entries"] == 0
    assert rec["replicas"] is None
    assert rec["replicas_error"] == "conf/replicas.json is missing"
    assert rec["settings"] is None
    assert rec["settings_error"] == "conf/settings.json is missing"
    assert rec["errors"] == []
    assert set(rec) == set(probe.empty_repo_record(PID_A, "x"))


def test_leftover_midx_and_tmp_files_are_counted(host: Host) -> None:
    repo = host.add_repo()
    pack = repo / "objects" / "pack"
    (pack / "midx-0123.midx").write_bytes(b"MIDX")
    (pack / "tmp-pack-abc.pack").write_bytes(b"")
    (repo / "objects" / "tmp_obj_xyz").write_bytes(b"")

    rec = repo_record(host.probe(), PID_A)

    assert rec["midx_count"] == 1
    assert rec["tmp_count"] == 2
    assert rec["pack_count"] == 3  # tmp-pack-abc.pack is a .pack file too


# ------------------------------------------------------------------------------------------
# names and symlinks
# ------------------------------------------------------------------------------------------


def test_odd_names_in_bups_become_strays_without_breaking_the_walk(host: Host) -> None:
    host.add_repo(PID_A)
    host.add_repo(PID_B.upper())
    odd = [b"has space", b"new\nline", b"\xff\xfe-not-utf8", (PID_A + "\n").encode()]
    odd.append(b"0b6f5e2c-1b7f-1c3e-9a6e-1f2e3d4c5b6a")  # version 1
    for name in odd:
        os.mkdir(os.fsencode(host.bups) + b"/" + name)

    records = host.probe()

    strays = of_type(records, "stray")
    assert sorted(os.fsencode(s["name"]) for s in strays) == sorted(odd)
    assert all(s["root"] == "bups" for s in strays)
    assert all(s["reason"] == "name is not a version-4 UUID" for s in strays)
    repos = of_type(records, "repo")
    assert sorted(r["project_id"] for r in repos) == sorted([PID_A, PID_B])
    assert repo_record(records, PID_B)["path"] == str(host.bups / PID_B.upper())
    assert all(r["master_in_pack"] is True for r in repos)
    assert records[-1] == {**records[-1], "repos": 2, "strays": len(odd)}


def test_strays_are_capped_with_a_truncation_record(host: Host) -> None:
    for i in range(5):
        (host.bups / f"junk-{i}").mkdir()

    records = host.probe("--max-strays", "2")

    strays = of_type(records, "stray")
    assert [s.get("name") for s in strays] == ["junk-0", "junk-1", None]
    assert strays[-1] == {"type": "stray", "root": "bups", "truncated": 3}
    assert records[-1]["strays"] == 5


def test_a_uuid_named_symlink_is_reported_and_not_followed(host: Host, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    shutil.copytree(host.template, real, symlinks=True)
    (host.bups / PID_A).symlink_to(real)

    rec = repo_record(host.probe(), PID_A)

    assert rec["is_symlink"] is True
    assert rec["errors"] == ["repository directory is a symlink; not followed"]
    assert rec["head"] is None and rec["master_sha"] is None and rec["repo_bytes"] is None


def test_a_uuid_named_regular_file_is_not_a_directory(host: Host) -> None:
    (host.bups / PID_A).write_text("not a repo")

    rec = repo_record(host.probe(), PID_A)

    assert rec["is_symlink"] is False
    assert rec["errors"] == ["not a directory"]


def test_a_symlink_to_etc_inside_a_repo_is_listed_and_not_counted(host: Host) -> None:
    repo = host.add_repo()
    before = regular_file_sizes(repo)
    (repo / "objects" / "evil").symlink_to("/etc")
    (repo / "refs" / "escape").symlink_to("../../../../../../../../../etc/passwd")
    (repo / "HEAD.alias").symlink_to("HEAD")  # inside the repo: not reported

    rec = repo_record(host.probe(), PID_A)

    assert rec["symlinks_outside"] == ["objects/evil", "refs/escape"]
    assert rec["symlinks_outside_count"] == 2
    assert (rec["file_count"], rec["repo_bytes"]) == before
    assert rec["master_in_pack"] is True


def test_symlinks_outside_are_capped_but_all_counted(host: Host) -> None:
    repo = host.add_repo()
    for i in range(5):
        (repo / f"link{i}").symlink_to("/etc")

    rec = repo_record(host.probe("--max-symlinks", "2"), PID_A)

    assert rec["symlinks_outside"] == ["link0", "link1"]
    assert rec["symlinks_outside_count"] == 5


def test_a_conf_dir_that_is_a_symlink_is_not_read_through(host: Host, tmp_path: Path) -> None:
    repo = host.add_repo()
    outside = tmp_path / "outside-conf"
    outside.mkdir()
    (outside / "replicas.json").write_text('["stolen"]')
    (repo / "conf").symlink_to(outside)

    rec = repo_record(host.probe(), PID_A)

    assert rec["replicas"] is None
    assert rec["replicas_error"] == "conf/replicas.json is below conf, a symlink; not followed"
    assert "conf is a symlink; not followed" in rec["errors"]
    assert rec["symlinks_outside"] == ["conf"]


def test_a_save_log_symlink_to_etc_shadow_is_flagged_and_not_followed(host: Host) -> None:
    repo = host.add_repo()
    (repo / "conf").mkdir()
    (repo / "conf" / "save_log.json").symlink_to("/etc/shadow")

    rec = repo_record(host.probe(), PID_A)

    assert rec["save_log_is_symlink"] is True
    assert rec["save_log_bytes"] is None
    assert rec["save_log_mtime"] is None
    assert rec["symlinks_outside"] == ["conf/save_log.json"]


# ------------------------------------------------------------------------------------------
# bad conf files
# ------------------------------------------------------------------------------------------


def test_bad_conf_json_becomes_errors_not_crashes(host: Host) -> None:
    repo_a = host.add_repo(PID_A)
    repo_b = host.add_repo(PID_B)
    (repo_a / "conf").mkdir()
    (repo_a / "conf" / "replicas.json").write_text("not json")
    (repo_a / "conf" / "settings.json").write_text("[1, 2]")
    (repo_b / "conf").mkdir()
    (repo_b / "conf" / "replicas.json").write_text("[" * 200_000)
    (repo_b / "conf" / "settings.json").write_bytes(b"{" + b" " * (1 << 20) + b"}")

    records = host.probe()

    rec_a = repo_record(records, PID_A)
    assert rec_a["replicas"] is None
    assert rec_a["replicas_error"].startswith("conf/replicas.json is not valid JSON: ")
    assert rec_a["settings"] is None
    assert rec_a["settings_error"] == "conf/settings.json is not a JSON dict"
    rec_b = repo_record(records, PID_B)
    assert rec_b["replicas_error"].startswith("conf/replicas.json is not valid JSON: ")
    assert rec_b["settings_error"].startswith("conf/settings.json is larger than")
    assert rec_b["master_in_pack"] is True


def test_replicas_that_are_not_a_list_of_strings_are_rejected(host: Host) -> None:
    repo = host.add_repo()
    (repo / "conf").mkdir()
    (repo / "conf" / "replicas.json").write_text("[1, 2]")

    rec = repo_record(host.probe(), PID_A)

    assert rec["replicas"] is None
    assert rec["replicas_error"] == "conf/replicas.json is not a JSON list of strings"


def test_a_fifo_in_place_of_a_conf_file_does_not_hang_the_probe(host: Host) -> None:
    repo = host.add_repo()
    (repo / "conf").mkdir()
    os.mkfifo(repo / "conf" / "settings.json")
    os.mkfifo(repo / "HEAD.fifo")

    rec = repo_record(host.probe(), PID_A)

    assert rec["settings"] is None
    assert rec["settings_error"] == "conf/settings.json is not a regular file"
    assert rec["master_in_pack"] is True


def test_an_unexpected_exception_in_one_repo_becomes_an_error_entry(
    tmp_path: Path, template_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / PID_A
    shutil.copytree(template_repo, repo, symlinks=True)

    def boom(*_args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(probe, "_reflog", boom)
    rec = probe.repo_facts(str(repo), PID_A)

    assert rec["errors"] == ["unexpected error: RuntimeError: disk on fire"]
    assert rec["master_in_pack"] is True  # what was gathered before the failure is kept
    assert set(rec) == set(probe.empty_repo_record(PID_A, str(repo)))


def test_a_file_swapped_for_a_fifo_or_a_directory_after_the_walk_is_read_without_hanging(
    tmp_path: Path, template_repo: Path
) -> None:
    """Files the walk saw as regular are opened without an fstat (its lstat gives the size): one
    replaced in between by a FIFO (no writer) reads as empty at once, never blocks, and one
    replaced by a directory is an error in words, as any unreadable file is."""
    repo = tmp_path / PID_A
    shutil.copytree(template_repo, repo, symlinks=True)
    w = probe._walk(str(repo))
    (repo / "HEAD").unlink()
    os.mkfifo(repo / "HEAD")
    (repo / "refs" / "heads" / "master").unlink()
    (repo / "refs" / "heads" / "master").mkdir()
    started = time.monotonic()
    assert probe._read_in_repo(str(repo), w, "HEAD", 1000) == b""
    with pytest.raises(probe._FileProblem, match=r"^refs/heads/master is unreadable: Is a direc"):
        probe._read_in_repo(str(repo), w, "refs/heads/master", 1000)
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------------
# project directories
# ------------------------------------------------------------------------------------------


def test_project_dirs_are_reported_with_owner_sample_and_strays(host: Host) -> None:
    (host.projects / PID_A).mkdir()
    (host.projects / PID_A / "secret").write_text("x")
    (host.projects / PID_B).symlink_to("/etc")
    (host.projects / "lost+found").mkdir()

    records = host.probe()

    dirs = {d["project_id"]: d for d in of_type(records, "project_dir")}
    st = os.lstat(host.projects / PID_A)
    uid = str(st.st_uid)
    assert dirs[PID_A] == {
        "type": "project_dir",
        "project_id": PID_A,
        "path": str(host.projects / PID_A),
        "is_symlink": False,
        "is_dir": True,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": st.st_mtime,
        "error": None,
        "owners": {uid: 2},
        "examples": {uid: [".", "secret"]},
        "sampled": 2,
        "sample_truncated": False,
        "sample_skipped": False,
        "sample_errors": 0,
    }
    assert dirs[PID_B]["is_symlink"] is True and dirs[PID_B]["is_dir"] is False
    assert dirs[PID_B]["sampled"] == 0 and dirs[PID_B]["owners"] == {}  # never followed
    assert of_type(records, "stray") == [
        {
            "type": "stray",
            "root": "projects",
            "name": "lost+found",
            "reason": "name is not a version-4 UUID",
        }
    ]
    assert records[-1]["project_dirs"] == 2


PID_C = "c0ffee00-0000-4000-8000-00000000000c"


def make_tree(top: Path, files: int, uid: int = 0) -> None:
    """A live tree: ``files`` files spread over the top and one subdirectory, all owned by uid."""
    (top / "sub").mkdir(parents=True)
    for i in range(files):
        where = top if i % 2 else top / "sub"
        (where / f"f{i}").write_text(str(i))
    for path in (top, top / "sub", *top.rglob("*")):
        os.lchown(path, uid, uid)


def project_dirs(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["project_id"]: d for d in of_type(records, "project_dir")}


def test_the_owner_sample_counts_every_uid_and_gives_examples_per_uid(host: Host) -> None:
    top = host.projects / PID_A
    make_tree(top, 10, uid=70001)
    os.chown(top / "f1", 0, 0)
    os.chown(top / "sub" / "f0", 0, 0)
    os.chown(top / "f3", 4242, 4242)
    odd = os.fsencode(top) + b"/caf\xe9"
    with open(odd, "wb"):
        pass
    os.chown(odd, 4242, 4242)

    rec = project_dirs(host.probe())[PID_A]

    # top + sub + 10 files + the oddly named one
    assert rec["sampled"] == 13 and rec["sample_truncated"] is False
    assert rec["owners"] == {"70001": 9, "0": 2, "4242": 2}
    assert sorted(rec["examples"]["0"]) == ["f1", "sub/f0"]
    assert sorted(os.fsencode(p) for p in rec["examples"]["4242"]) == [b"caf\xe9", b"f3"]
    assert rec["examples"]["70001"][0] == "."  # the top comes first
    assert len(rec["examples"]["70001"]) == 5  # at most five paths per uid


def test_the_owner_sample_skips_snapshots_at_the_top_only(host: Host) -> None:
    top = host.projects / PID_A
    make_tree(top, 2, uid=70001)
    snaps = top / ".snapshots"
    (snaps / "2014-05-01").mkdir(parents=True)
    (snaps / "2014-05-01" / "old").write_text("history")
    deeper = top / "sub" / ".snapshots"
    deeper.mkdir()  # a user's own directory of that name, below the top: sampled
    os.chown(deeper, 70001, 70001)

    rec = project_dirs(host.probe())[PID_A]

    assert rec["owners"] == {"70001": 5}  # top, sub, f0, f1, sub/.snapshots
    assert not any(p.startswith(".snapshots") for p in rec["examples"]["70001"])


def test_the_owner_sample_counts_a_symlink_itself_and_never_follows_it(host: Host) -> None:
    top = host.projects / PID_A
    make_tree(top, 0, uid=70001)
    (top / "etc").symlink_to("/etc")
    os.lchown(top / "etc", 4242, 4242)
    (top / "sub" / "up").symlink_to("../../..")
    os.lchown(top / "sub" / "up", 70001, 70001)

    rec = project_dirs(host.probe())[PID_A]

    assert rec["owners"] == {"70001": 3, "4242": 1}  # top, sub, sub/up + etc
    assert rec["examples"]["4242"] == ["etc"]
    assert rec["sampled"] == 4


def test_the_owner_sample_stops_at_the_per_project_cap(host: Host) -> None:
    make_tree(host.projects / PID_A, 30)
    make_tree(host.projects / PID_B, 8)  # top + sub + 8 = exactly 10: not truncated

    dirs = project_dirs(host.probe("--owner-sample", "10"))

    assert (dirs[PID_A]["sampled"], dirs[PID_A]["sample_truncated"]) == (10, True)
    assert sum(dirs[PID_A]["owners"].values()) == 10
    assert (dirs[PID_B]["sampled"], dirs[PID_B]["sample_truncated"]) == (10, False)


def test_the_owner_sample_stops_at_the_hosts_total_and_later_projects_are_skipped(
    host: Host,
) -> None:
    for pid in (PID_A, PID_B, PID_C):  # sorted: A (0b…), B (7d…), C (c0…)
        make_tree(host.projects / pid, 8)  # 10 entries each

    dirs = project_dirs(host.probe("--owner-sample-total", "15"))

    a, b, c = dirs[PID_A], dirs[PID_B], dirs[PID_C]
    assert (a["sampled"], a["sample_truncated"], a["sample_skipped"]) == (10, False, False)
    assert (b["sampled"], b["sample_truncated"], b["sample_skipped"]) == (5, True, False)
    assert (c["sampled"], c["sample_skipped"], c["owners"]) == (0, True, {})
    assert c["uid"] == 0  # the top's own lstat is still reported


def test_owner_sample_from_spends_the_budget_from_that_project_on_wrapping_around(
    host: Host,
) -> None:
    for pid in (PID_A, PID_B, PID_C):  # sorted: A (0b…), B (7d…), C (c0…)
        make_tree(host.projects / pid, 8)  # 10 entries each

    records = host.probe("--owner-sample-total", "15", "--owner-sample-from", PID_C.upper())
    order = [r["project_id"] for r in records if r["type"] == "project_dir"]
    dirs = project_dirs(records)

    assert order == [PID_C, PID_A, PID_B]
    assert (dirs[PID_C]["sampled"], dirs[PID_C]["sample_skipped"]) == (10, False)
    assert (dirs[PID_A]["sampled"], dirs[PID_A]["sample_truncated"]) == (5, True)
    assert dirs[PID_B]["sample_skipped"] is True


def test_owner_sample_from_a_name_past_the_last_project_starts_at_the_first(host: Host) -> None:
    for pid in (PID_A, PID_B):
        make_tree(host.projects / pid, 8)

    records = host.probe("--owner-sample-total", "10", "--owner-sample-from", "ffffffff")

    assert [r["project_id"] for r in records if r["type"] == "project_dir"] == [PID_A, PID_B]
    assert project_dirs(records)[PID_B]["sample_skipped"] is True


def test_an_owner_sample_of_zero_turns_sampling_off(host: Host) -> None:
    make_tree(host.projects / PID_A, 3)

    rec = project_dirs(host.probe("--owner-sample", "0"))[PID_A]

    assert (rec["sampled"], rec["sample_skipped"], rec["owners"]) == (0, True, {})


# ------------------------------------------------------------------------------------------
# pack index helpers
# ------------------------------------------------------------------------------------------


def test_sha_in_idx_agrees_with_git_show_index_for_every_sha_of_a_real_idx(
    template_repo: Path,
) -> None:
    idxs = sorted((template_repo / "objects" / "pack").glob("*.idx"))
    every = {sha for idx in idxs for sha in show_index(idx)}
    for idx in idxs:
        listed = show_index(idx)
        assert probe.read_idx_shas(idx) == listed
        for sha in listed:
            assert probe.sha_in_idx(idx, sha) is True
        for sha in every - set(listed):
            assert probe.sha_in_idx(idx, sha) is False
        for sha in listed:
            near = sha[:-1] + ("0" if sha[-1] != "0" else "1")
            assert probe.sha_in_idx(idx, near) is (near in listed)
        assert probe.sha_in_idx(idx, "0" * 40) is False
        assert probe.sha_in_idx(idx, "f" * 40) is False


def test_idx_helpers_reject_bad_magic_version_and_truncation(
    template_repo: Path, tmp_path: Path
) -> None:
    (idx,) = sorted((template_repo / "objects" / "pack").glob("*.idx"))[:1]
    good = idx.read_bytes()
    sha = show_index(idx)[0]
    cases = {
        "bad magic": b"XXXX" + good[4:],
        "unsupported pack index version 3": good[:4] + b"\0\0\0\3" + good[8:],
        "truncated": good[:-41],
        "too short": good[:100],
        "not monotonic": good[:8] + b"\xff\xff\xff\xff" + good[12:],
    }
    for expected, data in cases.items():
        bad = tmp_path / "bad.idx"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=expected):
            probe.sha_in_idx(bad, sha)
        with pytest.raises(ValueError, match=expected):
            probe.read_idx_shas(bad)
    with pytest.raises(ValueError, match="not a 40-digit"):
        probe.sha_in_idx(idx, "XYZ")


# ------------------------------------------------------------------------------------------
# mounts
# ------------------------------------------------------------------------------------------

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "36 22 0:40 /sub\\040dir /pro\\040jects\\011x rw,noatime shared:9 master:2 - zfs "
    "bup/projects\\134y rw,xattr,noacl\n"
    "37 22 0:41 / /bup ro,relatime - tmpfs tmpfs rw,size=65536k\n"
    "garbage line without separator\n"
    "\n"
)


def test_parse_mountinfo_unescapes_octal_escapes_and_skips_garbage() -> None:
    mounts = probe.parse_mountinfo(MOUNTINFO)
    assert [m["mount_point"] for m in mounts] == ["/", "/pro jects\tx", "/bup"]
    zfs = mounts[1]
    assert zfs == {
        "mount_id": 36,
        "parent_id": 22,
        "major_minor": "0:40",
        "root": "/sub dir",
        "mount_point": "/pro jects\tx",
        "options": ["rw", "noatime"],
        "optional": ["shared:9", "master:2"],
        "fstype": "zfs",
        "source": "bup/projects\\y",
        "super_options": ["rw", "xattr", "noacl"],
    }
    assert mounts[2]["optional"] == []
    assert probe.parse_mountinfo(MOUNTINFO.encode()) == mounts


def test_mount_facts_pick_the_longest_containing_mount_and_see_read_only(
    tmp_path: Path,
) -> None:
    base = str(tmp_path.resolve())
    (tmp_path / "bup" / "bups").mkdir(parents=True)
    mounts = [
        {**m, "mount_point": base + m["mount_point"] if m["mount_point"] != "/" else "/"}
        for m in probe.parse_mountinfo(MOUNTINFO)
    ]
    bups = probe.mount_facts(str(tmp_path / "bup" / "bups"), mounts)
    assert bups["exists"] is True
    assert bups["is_mount_point"] is False
    assert bups["mount_point"] == base + "/bup"
    assert bups["fstype"] == "tmpfs" and bups["read_only"] is True
    assert bups["bytes_total"] is not None and bups["error"] is None

    projects = probe.mount_facts(base + "/pro jects\tx", mounts)
    assert projects["exists"] is False
    assert projects["is_mount_point"] is True
    assert projects["source"] == "bup/projects\\y" and projects["fstype"] == "zfs"
    assert projects["root"] == "/sub dir"
    assert projects["read_only"] is False
    assert projects["bytes_total"] is None

    near = probe.mount_facts(base + "/bupx", mounts)  # a prefix, not a parent
    assert near["mount_point"] == "/" and near["fstype"] == "ext4"

    unknown = probe.mount_facts(base, None)
    assert unknown["error"] == "/proc/self/mountinfo is unreadable"


def test_the_real_mount_table_shows_the_root_mount(tmp_path: Path) -> None:
    rec = probe.mount_facts("/", probe.read_mounts())
    assert rec["is_mount_point"] is True and rec["mount_point"] == "/"
    assert rec["exists"] is True and rec["bytes_total"] > 0


# ------------------------------------------------------------------------------------------
# the bup_server process
# ------------------------------------------------------------------------------------------

SERVER = """\
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


def _start_server(tmp_path: Path, name: str, *prefix: str) -> tuple[subprocess.Popen[str], int]:
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [*prefix, sys.executable, str(script), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def test_the_process_record_finds_the_server_and_its_listening_port(tmp_path: Path) -> None:
    name = f"bup_server_test_{os.getpid()}"
    server, port = _start_server(tmp_path, name)
    try:
        records = run_probe(tmp_path / "b", tmp_path / "p", "--process-name", name)
    finally:
        server.kill()
        server.wait()
    (proc,) = of_type(records, "process")
    assert proc["name"] == name
    assert proc["pids"] == [server.pid]
    assert proc["listen"] == [["127.0.0.1", port]]
    assert proc["port_from"] == "sockets"


NOBODY = 65534


def test_a_probe_that_is_not_root_takes_a_root_servers_port_from_its_port_file_if_it_listens(
    tmp_path: Path,
) -> None:
    """A non-root probe may not read /proc/PID/fd of root's server: the port file names the
    port, believed only while a socket of root's listens on it (/proc/net/tcp, any user)."""
    assert os.geteuid() == 0, "this test starts a server as root and probes as nobody"
    name = f"bup_server_nonroot_{os.getpid()}"
    server, port = _start_server(tmp_path, name)
    bup_root = Path(tempfile.mkdtemp(prefix="probe-nonroot-"))  # tmp_path is root's only
    try:
        bup_root.chmod(0o755)
        port_file = bup_root / "conf" / probe.PORT_FILE
        port_file.parent.mkdir(mode=0o755)

        def probed() -> dict[str, Any]:
            records = run_probe(bup_root, bup_root / "p", "--process-name", name, user=NOBODY)
            (proc,) = of_type(records, "process")
            assert proc["pids"] == [server.pid]
            return proc

        no_file = probed()
        port_file.write_text(f"{port}\n")
        found = probed()
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            nothing_there = closed.getsockname()[1]
        port_file.write_text(f"{nothing_there}\n")
        stale = probed()
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(bup_root)
    assert (no_file["listen"], no_file["port_from"]) == ([], "none")
    assert (found["listen"], found["port_from"]) == ([["127.0.0.1", port]], "port_file")
    assert (stale["listen"], stale["port_from"]) == ([], "none")


def test_a_server_in_a_mount_namespace_of_its_own_is_found_with_its_port(tmp_path: Path) -> None:
    """As systemd runs a unit with PrivateTmp=yes: the process and its port are still seen."""
    unshare = shutil.which("unshare")
    assert unshare is not None and os.geteuid() == 0, "this test needs unshare and root"
    name = f"bup_server_ns_{os.getpid()}"
    server, port = _start_server(tmp_path, name, unshare, "--mount", "--propagation", "slave")
    try:
        assert os.stat(f"/proc/{server.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        records = run_probe(tmp_path / "b", tmp_path / "p", "--process-name", name)
    finally:
        server.kill()
        server.wait()
    (proc,) = of_type(records, "process")
    assert proc["pids"] == [server.pid]
    assert proc["listen"] == [["127.0.0.1", port]]


def test_proc_net_addresses_decode_to_text() -> None:
    assert probe.decode_proc_net_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert probe.decode_proc_net_address("00000000000000000000000001000000:0016") == ("::1", 22)
    assert probe.decode_proc_net_address("0000000000000000FFFF00000100007F:0050") == (
        "::ffff:127.0.0.1",
        80,
    )


def _socket_inode(sock: Any) -> str:
    return os.readlink(f"/proc/self/fd/{sock.fileno()}")[len("socket:[") : -1]


def test_listening_sockets_from_netlink_equal_those_from_proc_net() -> None:
    """sock_diag (one look at the listening table) and /proc/net/tcp{,6} (every bucket of the
    connection table) must name the same sockets: real ones, IPv4 and IPv6, one not asked for."""
    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    other = socket.create_server(("127.0.0.1", 0))
    with v4, v6, other:
        inodes = {_socket_inode(v4), _socket_inode(v6)}

        def want(inode: str, _port: int, _uid: int) -> bool:
            return inode in inodes

        fast = probe._listening_netlink(want)
        slow = probe._listening_proc(want, "/proc")
        assert fast is not None, "sock_diag is available on this kernel"
        assert (
            fast
            == slow
            == sorted([["127.0.0.1", v4.getsockname()[1]], ["::1", v6.getsockname()[1]]])
        )
        assert ["127.0.0.1", other.getsockname()[1]] not in fast
        port = other.getsockname()[1]  # both read the socket's owner the same way

        def mine(_inode: str, p: int, uid: int) -> bool:
            return p == port and uid == os.geteuid()

        def others(_inode: str, p: int, uid: int) -> bool:
            return p == port and uid != os.geteuid()

        assert probe._listening_netlink(mine) == probe._listening_proc(mine, "/proc")
        assert probe._listening_netlink(mine) == [["127.0.0.1", port]]
        assert probe._listening_netlink(others) == probe._listening_proc(others, "/proc") == []


def test_only_walks_just_the_named_projects_and_says_so_while_strays_and_mounts_stay_whole(
    host: Host,
) -> None:
    for pid in (PID_A, PID_B, PID_C):
        host.add_repo(pid)
        make_tree(host.projects / pid, 4)
    (host.bups / "notes.txt").write_text("x")
    (host.projects / "lost+found").mkdir()

    full = host.probe()
    scoped = host.probe("--only", PID_B)

    assert scoped[0]["only"] == [PID_B] and "only" not in full[0]
    assert [r["project_id"] for r in of_type(scoped, "repo")] == [PID_B]
    assert list(project_dirs(scoped)) == [PID_B]
    assert repo_record(scoped, PID_B) == repo_record(full, PID_B)
    assert project_dirs(scoped)[PID_B] == project_dirs(full)[PID_B]
    assert of_type(scoped, "stray") == of_type(full, "stray") != []
    mounts = [(m["path"], m["mount_point"], m["exists"]) for m in of_type(full, "mount")]
    assert [(m["path"], m["mount_point"], m["exists"]) for m in of_type(scoped, "mount")] == mounts
    assert (scoped[-1]["repos"], scoped[-1]["project_dirs"]) == (1, 1)
    assert (full[-1]["repos"], full[-1]["project_dirs"]) == (3, 3)


def test_only_refuses_anything_but_a_lower_case_version_4_uuid(host: Host) -> None:
    for bad in (PID_B.upper(), "../../etc", "12345678-1234-1234-1234-123456789012"):
        proc = subprocess.run(
            [sys.executable, "-S", "-", "--bup-root", str(host.bup_root), "--only", bad],
            input=PROBE_SOURCE,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 2 and b"not a lower-case version-4 UUID" in proc.stderr
        assert proc.stdout == b""
