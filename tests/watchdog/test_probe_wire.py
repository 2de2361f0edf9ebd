"""The probe's compact records (probe version 2): the same facts as its readable dicts, a fraction
of the bytes, and anything else a host sends refused with a sentence naming the line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bup_watchdog.config import SshConfig
from bup_watchdog.errors import ProbeError
from bup_watchdog.gather import gather_host, parse_probe_lines, probe_source
from bup_watchdog.live_dirs import OwnerCounts, ProjectDirFacts
from bup_watchdog.model import (
    NO_ODDITIES,
    GatherFailure,
    HostFacts,
    RepoFacts,
    Server,
    is_v4_uuid,
    project_uid,
)
from bup_watchdog.probe import (
    DIR_WIRE_FIELDS,
    PROBE_VERSION,
    REPO_WIRE_FIELDS,
    SHARED_MAX,
    WireEncoder,
)
from bup_watchdog.repo_cache import CacheBuilder, HostCache
from bup_watchdog.wire import _V4_ANY_CASE, DirWire, RepoWire, WireReader
from support.facts import project_dir
from support.template_repo import two_save_repo

SID = "3f0c5a8e-2b7d-4e61-9c3a-5d8e7f6a1b2c"
PIDS = [
    "0a7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f60",
    "1b7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f61",
    "2C7C6E58-8D2B-4C3F-9E1A-1B2C3D4E5F62",  # upper case on disk
    "3d7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f63",
    "4e7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f64",
    "5f7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f65",
]
HELLO = {"type": "hello", "probe_version": PROBE_VERSION, "bups": "/bup/bups"}
PID = PIDS[0]


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bup repository with two saves and its conf/ files."""
    base = tmp_path_factory.mktemp("wire-template")
    return two_save_repo(base, settings='{"disk": 3000, "cores": 1}', replicas=f'["{SID}", "b"]')


def varied_host(base: Path, template: Path) -> tuple[Path, Path]:
    """A host whose repositories and live directories take every kind of value the wire has:
    shared and distinct settings, a missing HEAD, a bad index, a symlink out, a repository that
    is a symlink, a live directory with files of other owners."""
    bup_root, projects = base / "bup", base / "projects"
    bups = bup_root / "bups"
    bups.mkdir(parents=True)
    projects.mkdir()
    for pid in PIDS[:5]:
        shutil.copytree(template, bups / pid, symlinks=True)
        live = projects / pid
        live.mkdir()
        (live / "notes.txt").write_text("live file\n")
        os.chown(live, project_uid(pid.lower()), project_uid(pid.lower()))
    odd = bups / PIDS[1]
    (odd / "conf" / "settings.json").write_text('{"disk": 1, "cores": 1.0, "x": [1, true]}\n')
    (odd / "conf" / "replicas.json").write_text("not json")
    (odd / "HEAD").unlink()
    [idx] = list((odd / "objects" / "pack").glob("*.idx"))[:1]
    idx.write_bytes(b"garbage" * 10)
    (odd / "outside").symlink_to("/etc/passwd")
    (bups / PIDS[3] / "conf" / "settings.json").unlink()
    (projects / PIDS[2] / "foreign.txt").write_text("x")
    os.chown(projects / PIDS[2] / "foreign.txt", 12345, 12345)
    (bups / PIDS[5]).symlink_to(template)
    # names that are not UTF-8 (they come as \udcXX escapes, which msgspec does not take)
    os.symlink("/etc/passwd", os.fsencode(odd) + b"/odd-\xff-link")
    foreign = os.fsencode(projects / PIDS[3]) + b"/caf\xe9"
    os.close(os.open(foreign, os.O_CREAT | os.O_WRONLY, 0o644))
    os.chown(foreign, 4242, 4242)
    return bup_root, projects


def run_probe(bup_root: Path, projects: Path, *extra: str) -> list[bytes]:
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-",
            "--bup-root",
            str(bup_root),
            "--projects-root",
            str(projects),
            *extra,
        ],
        input=probe_source(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    return proc.stdout.splitlines(keepends=True)


def parsed(lines: list[bytes]) -> tuple[HostFacts, HostCache]:
    facts, fresh = HostFacts(SID, 0.0), CacheBuilder()
    parse_probe_lines(SID, lines, facts, fresh=fresh)
    return facts, fresh.build()


def test_the_compact_records_give_the_same_facts_as_the_readable_ones(
    tmp_path: Path, template_repo: Path
) -> None:
    bup_root, projects = varied_host(tmp_path, template_repo)
    compact = run_probe(bup_root, projects, "--fingerprint")
    readable = run_probe(bup_root, projects, "--fingerprint", "--readable")
    assert sum(line.startswith(b"[") for line in compact) == 11  # 6 repositories, 5 directories
    (new, new_cache), (old, old_cache) = parsed(compact), parsed(readable)
    assert len(new.repos) == 6 and len(new.project_dirs) == 5
    assert new.repos == old.repos
    assert new.project_dirs == old.project_dirs
    assert new.project_dirs[PIDS[2].lower()].examples == {
        0: ("notes.txt",),
        12345: ("foreign.txt",),
    }
    odd = new.repos[PIDS[1]]
    assert odd.head is None and odd.bad_idx
    assert odd.symlinks_outside == ("odd-\udcff-link", "outside")
    assert new.project_dirs[PIDS[3]].examples[4242] == ("caf\udce9",)
    assert odd.settings == {"disk": 1, "cores": 1.0, "x": [1, True]}
    assert isinstance(odd.settings["cores"], float)
    assert new.repos[PIDS[5]].is_symlink and new.repos[PIDS[5]].errors
    # An upper-case directory keeps its own name; the usual lower-case one stores none.
    assert PIDS[2] != PIDS[2].lower() and new.repos[PIDS[2].lower()].dir_name == PIDS[2]
    assert new.repos[PIDS[0]].dir_name is None
    # A repository with none of the rare facts points at the one shared empty RepoOddities.
    assert new.repos[PIDS[0]].odd is NO_ODDITIES and old.repos[PIDS[0]].odd is NO_ODDITIES
    assert odd.odd is not NO_ODDITIES
    assert {p: c.fingerprint for p, c in new_cache.repos.items()} == {
        p: c.fingerprint for p, c in old_cache.repos.items()
    }
    assert {p: c.digest for p, c in new_cache.dirs.items()} == {
        p: c.digest for p, c in old_cache.dirs.items()
    }
    [later] = [line for line in compact if line.startswith(f'[0,"{PIDS[4]}"'.encode())]
    assert len(later) < 160  # head, replicas and settings by number; readable: about 1,100
    # repositories with equal values share one object, as they did when decoded from dicts
    assert new.repos[PIDS[0]].settings is new.repos[PIDS[4]].settings
    assert new.repos[PIDS[0]].replicas is new.repos[PIDS[4]].replicas


def test_a_live_directorys_owner_counts_read_and_compare_as_the_dict_they_were_made_from() -> None:
    counts = {1000: 18, 0: 2}
    owners = OwnerCounts.of(counts)
    assert owners == counts and counts == owners and owners != {1000: 18} and owners != {}
    assert dict(owners) == counts and list(owners.items()) == [(1000, 18), (0, 2)]
    assert owners[0] == 2 and 0 in owners and 4242 not in owners and owners.get(4242) is None
    assert len(owners) == 2 and list(owners) == [1000, 0] and repr(owners) == repr(counts)
    assert isinstance(owners, Mapping) and OwnerCounts.of({7: 1}) == {7: 1}
    with pytest.raises(KeyError):
        owners[4242]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"gid": 0},
        {"uid": 4242},
        {"is_symlink": True},
        {"sample_truncated": True},
        {"sample_skipped": True},
        {"owners": "one other"},
        {"owners": "none"},
    ],
    ids=repr,
)
def test_a_usual_live_directory_is_held_as_its_id_and_sample_size_and_reads_as_its_full_facts(
    change: dict[str, Any],
) -> None:
    """Either decoder: the usual directory (not a symlink, owner and group the project's uid, every
    sampled entry its, the sample whole) is 40 bytes; every other keeps what it was told."""
    pid = PIDS[1]
    own = project_uid(pid)
    facts: dict[str, Any] = {
        "is_symlink": False,
        "uid": own,
        "gid": own,
        "owners": {own: 20},
        "sampled": 20,
        "sample_truncated": False,
        "sample_skipped": False,
    }
    facts.update(change)
    if change.get("owners") == "one other":
        facts["owners"] = {own: 19, 0: 1}
    elif change.get("owners") == "none":
        facts["owners"] = {}
    others = {u: [f"f-{u}"] for u in facts["owners"] if u != own}
    record = project_dir(
        pid,
        owners=facts["owners"],
        examples=others,
        **{k: v for k, v in facts.items() if k != "owners"},
    )
    read = ProjectDirFacts.from_record(record)
    wire = DirWire(
        pid,
        facts["uid"],
        facts["gid"],
        facts["owners"],
        facts["sampled"],
        None,
        facts["sample_truncated"],
        facts["sample_skipped"],
        facts["is_symlink"],
        others,
    )
    decoded = WireReader.project_dir(wire)
    assert read == decoded
    assert decoded.usual is (change == {})
    if decoded.usual:
        assert decoded.odd is None and sys.getsizeof(decoded) <= 40
    for name, value in facts.items():
        assert getattr(decoded, name) == value, name
    assert decoded.examples == {u: tuple(p) for u, p in others.items()}


def test_repo_facts_built_from_keywords_keep_rare_facts_apart_and_compare_by_value() -> None:
    plain = RepoFacts.of(PID, master_sha="a" * 40, pack_count=3)
    assert plain.odd is NO_ODDITIES and plain.pack_count == 3 and plain.errors == ()
    broken = RepoFacts.of(PID, master_sha="a" * 40, master_error="bad ref", tmp_count=2)
    assert broken.master_error == "bad ref" and broken.tmp_count == 2 and not broken.is_symlink
    assert broken != plain
    assert broken == RepoFacts.of(PID, tmp_count=2, master_error="bad ref", master_sha="a" * 40)
    # Rare facts given at their empty values are no rare facts at all.
    assert RepoFacts.of(PID, errors=(), is_symlink=False).odd is NO_ODDITIES


def test_the_decoders_project_id_check_accepts_exactly_what_is_v4_uuid_accepts() -> None:
    good = PIDS[0]
    texts = [*PIDS, good.upper(), good + "\n", good[:-1], good + "0", good.replace("4c3f", "5c3f")]
    texts += [
        good.replace("9e1a", "ce1a"),
        good.replace("a", "\u212a"),
        good.replace("a", "\uff41"),
    ]
    texts += [good.replace("a", "\u0130"), "", "-" * 36, good.replace("-", "_")]
    for text in texts:
        assert (_V4_ANY_CASE(text) is not None) == is_v4_uuid(text), repr(text)
    assert sum(_V4_ANY_CASE(t) is not None for t in texts) == len(PIDS) + 1


def test_the_probe_and_the_decoder_agree_on_the_fields_and_their_defaults() -> None:
    for struct, fields in ((RepoWire, REPO_WIRE_FIELDS), (DirWire, DIR_WIRE_FIELDS)):
        assert struct.__struct_fields__ == ("name", *(name for name, _ in fields))
        defaults = dict(zip(struct.__struct_fields__[1:], struct.__struct_defaults__, strict=True))
        for name, default in fields:
            wire_default = defaults[name]
            if isinstance(wire_default, msgspec._core.Factory):
                wire_default = wire_default.factory()
            assert wire_default == default and type(wire_default) is type(default), name


def test_values_past_the_shared_tables_size_are_sent_inline_and_still_decoded() -> None:
    encode = WireEncoder().line
    records = [
        {"type": "repo", "project_id": f"{n:08x}-8d2b-4c3f-9e1a-1b2c3d4e5f60", "settings": {"n": n}}
        for n in range(SHARED_MAX + 5)
    ]
    records.append({**records[0], "project_id": PID})  # a value from the table: by number
    lines = [json.dumps(HELLO).encode()] + [encode(r).encode() for r in records]
    assert lines[-1].endswith(b",0]\n")
    facts = HostFacts(SID, 0.0)
    parse_probe_lines(SID, [*lines, b'{"type": "done"}'], facts)
    assert facts.repos[PID].settings == {"n": 0}
    assert facts.repos[records[-2]["project_id"]].settings == {"n": SHARED_MAX + 4}


P = f'"{PID}"'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[0]", r"line 2: the probe's repo record is malformed: Expected `array` of at least"),
        (b'[0,"not-a-project"]', "bad project id 'not-a-project'"),
        (f'[0,{P},null,null,null,"yes"]'.encode(), r"Expected `bool \| null`.*\(field master_in"),
        (f"[0,{P},null,null,null,null,true]".encode(), r"Expected `int`.*\(field pack_count\)"),
        (f"[0,{P},null,7]".encode(), "names shared HEAD 7, but only 0 were sent"),
        (f"[0,{P},null,null,null,null,0,0,null,null,null,3]".encode(), "shared replica list 3"),
        (
            f"[0,{P},null,null,null,null,0,0,null,null,null,null,-1]".encode(),
            "names shared settings -1, but only 0 were sent",
        ),
        (f"[0,{P}".encode(), "truncated"),
        (
            f"[0,{P},null,null,null,null,0,{2**63}]".encode(),
            "line 2: a size or time that is not a 64-bit number",
        ),
        (f"[9,{P}]".encode(), "Invalid value 9"),
        (b"[" + b"x" * 5_000_000 + b"]", "malformed"),
        (f'[1,{P},0,0,{{"-1":3}}]'.encode(), "owners has a uid or count below 0"),
        (f'[1,{P},0,0,{{"x":3}}]'.encode(), r"Expected `int`.*\(field owners\)"),
        (f"[1,{P},0,0,{{}},-2]".encode(), "sampled is negative"),
        (b"[[],{}]", "malformed"),
        (
            f'[1,{P},0,0,{{}},1,null,false,false,false,{{"7":"\\udcff"}}]'.encode(),
            "project_dir record is",
        ),
        (f'[0,{P},null,null,null,"\\udcff"]'.encode(), "repo record is malformed"),
        (b"[" * 100_000, "nested too deep to be a probe record"),
        (b'{"type": "mount", "x": ' + b"[" * 100_000, "is not JSON"),
    ],
    ids=[
        "empty",
        "bad-id",
        "wrong-type",
        "bool-for-count",
        "shared-head-unsent",
        "shared-replicas-unsent",
        "shared-settings-negative",
        "cut-short",
        "size-past-64-bits",
        "unknown-kind",
        "huge",
        "negative-uid",
        "uid-not-a-number",
        "negative-sample",
        "nonsense",
        "not-utf8-wrong-type",
        "not-utf8-text-for-a-bool",
        "nested-past-msgspecs-depth",
        "nested-past-jsons-depth",
    ],
)
def test_a_compact_record_that_is_not_the_probes_is_refused_with_its_line(
    line: bytes, message: str
) -> None:
    facts = HostFacts(SID, 0.0)
    with pytest.raises(ProbeError, match=message) as caught:
        parse_probe_lines(SID, [json.dumps(HELLO).encode(), line, b'{"type": "done"}'], facts)
    assert len(str(caught.value)) < 600
    assert facts.repos == {}


def test_a_stream_from_another_probe_version_is_refused_naming_both_versions() -> None:
    with pytest.raises(ProbeError, match="ran probe version 1, but this watchdog reads version 2"):
        parse_probe_lines(
            SID, [b'{"type": "hello", "probe_version": 1}', b'{"type": "done"}'], HostFacts(SID, 0)
        )
    with pytest.raises(ProbeError, match="does not name its repositories' directory"):
        parse_probe_lines(
            SID, [b'{"type": "hello", "probe_version": 2}', b'{"type": "done"}'], HostFacts(SID, 0)
        )
    with pytest.raises(ProbeError, match="does not start with its hello record"):
        parse_probe_lines(SID, [f"[0,{P}]".encode()], HostFacts(SID, 0))


def test_a_host_answering_an_older_probes_stream_fails_with_a_sentence(tmp_path: Path) -> None:
    # FAKE: a host's python3 that answers as the previous probe did (a real probe is always
    # the one the watchdog sends, so this cannot be produced with a real one).
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        """echo '{"type": "hello", "probe_version": 1}'\n"""
        f"""echo '{{"type": "repo", "project_id": "{PID}", "path": "/bup/bups/{PID}"}}'\n"""
        """echo '{"type": "done"}'\n"""
    )
    fake.chmod(0o755)
    server = Server(SID, "127.0.0.1", 1, name="local", transport="local")
    started = time.monotonic()
    facts = gather_host(server, SshConfig.model_validate({"python": str(fake)}), tcp_timeout=0.2)
    assert time.monotonic() - started < 30
    assert facts.failure is GatherFailure.GARBAGE
    assert facts.failure_message == (
        "local: the host ran probe version 1, but this watchdog reads version 2 (the watchdog "
        "sends its own probe: something on the host answered in its place)"
    )
