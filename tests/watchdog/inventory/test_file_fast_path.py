"""The file inventory's fast path: the same projects and the same errors as validating every entry
with the model, and TOML read in pieces into the same data as ``tomllib`` reads."""

from __future__ import annotations

import copy
import itertools
import tomllib
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import toml_rs

from bup_watchdog.errors import ConfigError
from bup_watchdog.inventory import file
from bup_watchdog.inventory.file import FileInventory, loads_toml, parse_inventory
from bup_watchdog.model import Inventory
from support.facts import P1, P2, S1, S2, host_facts, host_records, repo

P3 = "6f1c2f5e-8f0e-4b8e-9d6a-2f2a5c1e7b10"
P4 = "0e5d3c1a-2b4f-4c6d-8e7f-9a0b1c2d3e4f"
UNKNOWN = "99999999-9999-4999-8999-999999999999"

SERVERS = [
    {"server_id": S1, "name": "h1", "host": "127.0.1.2", "port": 6000},
    {"server_id": S2, "host": "127.0.1.3", "port": 6000, "dc": 1},
]

EVERY_FORM: list[dict[str, Any]] = [
    # the usual form, as the fleet's file and a JSON file hold it
    {
        "project_id": P1,
        "master": S1,
        "replicas": [S2],
        "disk_mb": 3000,
        "last_edited": datetime.fromisoformat("2026-11-28T01:00:00+00:00"),
        "bup_last_save": {S1: datetime.fromisoformat("2026-11-28T00:00:00+00:00")},
    },
    {
        "project_id": P2,
        "master": S2,
        "last_edited": "2026-11-28T01:00:00.25Z",
        "bup_last_save": {S2: "2026-11-28T03:00:00+02:00"},
        "deleted": True,
    },
    # naive times (taken as UTC), an upper-case id, a save on a server not in the list
    {
        "project_id": P3.upper(),
        "master": S1.upper(),
        "replicas": [S2.upper()],
        "disk_mb": None,
        "last_edited": datetime(2026, 11, 28, 1),
        "bup_last_save": {S1.upper(): datetime(2026, 11, 28), UNKNOWN: "2026-11-27T00:00:00"},
    },
    {"project_id": P4, "master": S1, "replicas": [], "last_edited": "2026-11-28 01:00:00Z"},
]

BAD: list[dict[str, Any]] = [
    {"project_id": P1, "master": S1, "disk_mb": -1},
    {"project_id": P2, "master": S1, "disk_mb": "lots"},
    {"project_id": "6f1c2f5e-8f0e-1b8e-9d6a-2f2a5c1e7b10", "master": S1},
    {"project_id": P3, "master": UNKNOWN},
    {"project_id": P4, "master": S1, "replicas": S2},
    {"project_id": P1, "master": S1, "colour": "blue"},
    {"project_id": P2, "master": S1, "deleted": "maybe"},
    {"project_id": P3, "master": S1, "last_edited": "yesterday"},
    {"project_id": P4, "master": S1, "bup_last_save": {S1: "2026-13-01T00:00:00Z"}},
    {"project_id": P4, "master": S2},
    {"project_id": P4, "master": S1},
    "not a table",
]


def _parse(projects: list[Any]) -> Inventory:
    return parse_inventory(
        {"servers": copy.deepcopy(SERVERS), "projects": copy.deepcopy(projects)}, source="t"
    )


def _parse_with_the_model_only(projects: list[Any], monkeypatch: pytest.MonkeyPatch) -> Inventory:
    with monkeypatch.context() as m:
        m.setattr(file, "_fast_project", lambda raw, ids, tuples: None)
        return _parse(projects)


def _problems(parse: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse()
    return list(err.value.problems)


def test_the_usual_entries_are_taken_by_the_fast_path() -> None:
    ids = {S1: S1, S2: S2}
    assert file._fast_project(copy.deepcopy(EVERY_FORM[0]), ids, {}) is not None
    assert file._fast_project(copy.deepcopy(EVERY_FORM[1]), ids, {}) is not None


def test_entries_in_every_form_give_the_projects_the_model_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _parse(EVERY_FORM)
    model = _parse_with_the_model_only(EVERY_FORM, monkeypatch)
    assert fast.projects == model.projects
    assert list(fast.projects) == [P1, P2, P3, P4]
    for project in fast.projects.values():
        times = [project.last_edited, *project.bup_last_save.values()]
        assert all(t is None or t.tzinfo is not None for t in times)
    assert fast.projects[P2].bup_last_save[S2] == datetime.fromisoformat("2026-11-28T01:00Z")


def test_projects_share_equal_server_lists_and_keep_each_time_as_written() -> None:
    edited = "2026-11-28T01:00:00Z"
    entries = [
        {
            "project_id": pid,
            "master": S1,
            "replicas": [S2],
            "last_edited": edited,
            "bup_last_save": {S2: "2026-11-28T02:00:00+01:00", S1: edited},
        }
        for pid in (P1, P2)
    ]
    entries.append({"project_id": P3, "master": S1})
    projects = _parse(entries).projects
    one, two, bare = projects[P1], projects[P2], projects[P3]
    assert one.replicas == (S2,) and one.replicas is two.replicas
    assert one.saved_on == tuple(sorted((S1, S2))) and one.saved_on is two.saved_on
    assert one.bup_last_save[S1] == one.last_edited
    assert one.last_edited is not None
    assert one.last_edited.isoformat() == "2026-11-28T01:00:00+00:00"
    # the same instant in another zone is its own time, as the file wrote it
    same_instant = one.bup_last_save[S2]
    assert same_instant == one.last_edited
    assert same_instant.isoformat() == "2026-11-28T02:00:00+01:00"
    assert bare.bup_last_save == {} and bare.last_edited is None and bare.saved_on == ()
    # the save times read as the dict they came from
    saves = dict(one.bup_last_save)
    assert one.bup_last_save == saves and saves == two.bup_last_save and set(saves) == {S1, S2}
    assert one.bup_last_save.get(S2) == same_instant and S1 in one.bup_last_save
    assert one.bup_last_save.get(UNKNOWN) is None and UNKNOWN not in two.bup_last_save
    assert len(one.bup_last_save) == 2 and one.bup_last_save.keys() is two.bup_last_save.keys()
    with pytest.raises(KeyError):
        one.bup_last_save[UNKNOWN]


@pytest.mark.parametrize("facts_first", [False, True], ids=["inventory-first", "facts-first"])
@pytest.mark.parametrize("model_only", [False, True], ids=["fast", "model"])
def test_the_facts_from_the_hosts_name_a_project_by_the_inventory_s_own_id_string(
    model_only: bool, facts_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ids built at run time (not literals), as a file's parser makes them: one string per
    # project for the inventory's key, its Project and the facts, whichever was read first (a
    # daemon reloads its inventory between sweeps). P3 in upper case takes the model's path.
    p1, p3 = str(uuid.uuid4()), str(uuid.uuid4())
    entries = [{"project_id": "".join(p1), "master": S1}, {"project_id": p3.upper(), "master": S1}]
    records = [repo(pid) for pid in ("".join(p1), p3.upper())]
    facts = host_facts(S1, host_records(*records)) if facts_first else None
    inv = _parse_with_the_model_only(entries, monkeypatch) if model_only else _parse(entries)
    facts = facts or host_facts(S1, host_records(*records))
    for pid in (p1, p3):
        assert facts.repos[pid].project_id is inv.projects[pid].project_id
        assert next(k for k in inv.projects if k == pid) is inv.projects[pid].project_id


def test_bad_entries_get_the_errors_the_model_gives_each_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _problems(lambda: _parse(BAD))
    model = _problems(lambda: _parse_with_the_model_only(BAD, monkeypatch))
    assert fast == model
    assert len(fast) == len(BAD) - 1
    assert all(p.startswith("At 'projects[") for p in fast)
    assert any("projects[0].disk_mb" in p and repr(P1) in p for p in fast)
    assert any(p.startswith("At 'projects[2].project_id") for p in fast)
    assert any(p.startswith("At 'projects[10]") and "appears twice" in p for p in fast)
    assert any(p.startswith("At 'projects[11]': Input should be a valid dict") for p in fast)


def _toml(projects: int, extra: str = "") -> str:
    lines = [f'[[servers]]\nserver_id = "{S1}"\nhost = "127.0.1.2"\nport = 6000\n']
    for n in range(projects):
        lines.append(
            f'[[projects]]\nproject_id = "{n:08x}-0000-4000-8000-000000000000"\nmaster = "{S1}"\n'
            f"last_edited = 2026-11-28T01:00:00Z\n"
            f'[projects.bup_last_save]\n"{S1}" = 2026-11-28T00:00:00+01:00\n'
        )
    return "\n".join(lines) + extra


def _joined(data: dict[str, Any], rest: Iterator[list[Any]]) -> dict[str, Any]:
    for projects in rest:
        data["projects"] += projects
    return data


def test_toml_read_in_pieces_is_the_data_tomllib_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file, "PIECE_PROJECTS", 2)
    calls = []

    def counted(text: str, **kw: Any) -> dict[str, Any]:
        calls.append(len(text))
        return toml_rs.loads(text, **kw)

    text = _toml(7)
    assert _joined(*file.toml_pieces(text, counted)) == tomllib.loads(text)
    assert len(calls) == 4
    assert loads_toml(text) == tomllib.loads(text)
    # a table other than [[projects]] after them, or a multi-line string: the text is read whole
    for tail in (
        '\n[[servers]]\nserver_id = "x"\n',
        '\n[[projects]]\nnote = """\n[[projects]]\n"""\n',
    ):
        assert loads_toml(_toml(7, tail)) == tomllib.loads(_toml(7, tail))


def test_toml_that_only_a_later_piece_makes_invalid_gets_tomllib_s_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file, "PIECE_PROJECTS", 2)
    text = _toml(7, '\n[servers]\nname = "again"\n')  # servers is already an array of tables
    with pytest.raises(tomllib.TOMLDecodeError) as ours:
        loads_toml(text)
    with pytest.raises(tomllib.TOMLDecodeError) as theirs:
        tomllib.loads(text)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "text",
    ["a = {x = 1,\n y = 2}", 'x = "\\e"', "a = 1979-05-27 07:32", "a = 1\na = 2", "[[projects]\n"],
)
def test_text_that_is_not_toml_1_0_gets_tomllib_s_error(text: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as ours:
        loads_toml(text)
    with pytest.raises(tomllib.TOMLDecodeError) as theirs:
        tomllib.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_a_file_read_in_pieces_is_the_inventory_of_the_whole_with_entries_numbered_as_in_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(file, "PIECE_PROJECTS", 2)
    monkeypatch.setattr(file, "READ_CHARS", 5)  # header lines cut across the chunks read
    path = tmp_path / "inventory.toml"
    path.write_text(_toml(7))
    whole = parse_inventory(tomllib.loads(_toml(7)), source="whole")
    assert FileInventory(path).load().projects == whole.projects
    bad = _toml(7).replace("last_edited = 2026-11-28T01:00:00Z", "disk_mb = -1", 6)
    path.write_text(bad)
    with pytest.raises(ConfigError) as err:
        FileInventory(path).load()
    assert err.value.problems == _problems(lambda: parse_inventory(tomllib.loads(bad), source="w"))
    assert [p.split(" (")[0] for p in err.value.problems] == [
        f"At 'projects[{n}].disk_mb" for n in range(6)
    ]
    # not plain pieces (a [[servers]] table after the projects): read whole, same inventory
    path.write_text(_toml(7, f'\n[[servers]]\nserver_id = "{S2}"\nhost = "h2"\nport = 1\n'))
    assert len(FileInventory(path).load().servers) == 2


def _chunked(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 14, 15, 64, 10**6])
def test_text_read_in_chunks_is_cut_where_the_whole_text_is(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(file, "PIECE_PROJECTS", 2)
    text = _toml(7) + "\n[[projects]]\n[[projects]]\n"  # two empty tables, one newline shared
    pieces = list(file.text_pieces(_chunked(text, size)))
    assert "".join(pieces) == text
    # the whole text's cuts: before the 2nd, 4th, 6th and 8th header line
    heads = [i + 1 for i in range(len(text)) if text.startswith("\n[[projects]]\n", i)]
    cuts = [0, *heads[2::2], len(text)]
    assert pieces == [text[a:b] for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_a_multi_line_string_is_found_across_chunks_and_stops_the_cutting(size: int) -> None:
    for quote in ('"""', "'''"):
        text = _toml(3, f"\n[[projects]]\nnote = {quote}\nx\n{quote}\n")
        with pytest.raises(ValueError, match="multi-line string"):
            list(file.text_pieces(_chunked(text, size)))


def test_a_file_that_is_not_utf_8_is_named_not_valid_toml(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(_toml(3).encode() + b"\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid TOML: 'utf-8' codec can't decode"):
        FileInventory(path).load()
