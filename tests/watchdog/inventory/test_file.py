"""The file inventory: bad entries are named, bad project ids never get through."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bup_watchdog.errors import ConfigError
from bup_watchdog.inventory.file import RACY_SECONDS as FILE_RACY_SECONDS
from bup_watchdog.inventory.file import FileInventory, dump_inventory
from support.facts import P1, P2, S1, S2

SERVERS = f"""
[[servers]]
server_id = "{S1}"
name = "h1"
host = "127.0.1.2"
port = 6000

[[servers]]
server_id = "{S2}"
host = "127.0.1.3"
port = 6000
dc = 1
ssh_port = 2222
"""


def load(tmp_path: Path, text: str, suffix: str = ".toml") -> FileInventory:
    p = tmp_path / f"inventory{suffix}"
    p.write_text(text)
    return FileInventory(p)


def test_servers_and_projects_are_read_with_defaults(tmp_path: Path) -> None:
    text = (
        SERVERS
        + f"""
[[projects]]
project_id = "{P1.upper()}"
master = "{S1}"
replicas = ["{S2}"]
disk_mb = 3000
last_edited = 2026-11-28T01:00:00Z
[projects.bup_last_save]
"{S1}" = 2026-11-28T01:00:00Z
"""
    )
    inv = load(tmp_path, text).load()
    assert inv.servers[S1].ssh_host == "127.0.1.2"
    assert inv.servers[S1].label == "h1"
    assert inv.servers[S2].ssh_port == 2222
    project = inv.projects[P1]
    assert project.locations == (S1, S2)
    assert project.bup_last_save[S1].tzinfo is not None


def test_a_project_id_that_is_not_a_v4_uuid_is_rejected_naming_the_entry(tmp_path: Path) -> None:
    text = (
        SERVERS
        + f"""
[[projects]]
project_id = "../../etc"
master = "{S1}"

[[projects]]
project_id = "{P1.replace("-4aaa-", "-1aaa-")}"
master = "{S1}"
"""
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text).load()
    problems = err.value.problems
    assert any(
        "projects[0].project_id ('../../etc')" in p and "version-4 UUID" in p for p in problems
    )
    assert any(p.startswith("At 'projects[1].project_id") for p in problems)


def test_a_project_on_an_unknown_server_is_rejected(tmp_path: Path) -> None:
    text = (
        SERVERS
        + f"""
[[projects]]
project_id = "{P1}"
master = "{S1}"
replicas = ["33333333-3333-4333-8333-333333333333"]
"""
    )
    with pytest.raises(ConfigError, match="is not in the servers list"):
        load(tmp_path, text).load()


def test_a_host_name_with_shell_characters_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"servers\[0\].host"):
        load(tmp_path, SERVERS.replace("127.0.1.2", "x;rm -rf /")).load()


def test_a_json_inventory_round_trips_through_dump(tmp_path: Path) -> None:
    inv = load(tmp_path, SERVERS).load()
    again = load(tmp_path, json.dumps(dump_inventory(inv)), ".json").load()
    assert again.servers == inv.servers


def test_garbage_in_the_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(tmp_path, "{nope", ".json").load()


PROJECT = f"""
[[projects]]
project_id = "{P1}"
master = "{S1}"
replicas = ["{S2}"]
"""


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    source = load(tmp_path, SERVERS + PROJECT)
    time.sleep(FILE_RACY_SECONDS + 0.1)  # the ctime (which utime cannot set back) must settle too
    first = source.load()
    assert source.load() is first


def test_a_changed_file_is_read_again_at_the_next_load(tmp_path: Path) -> None:
    source = load(tmp_path, SERVERS + PROJECT)
    time.sleep(FILE_RACY_SECONDS + 0.1)
    first = source.load()
    assert first.projects[P1].replicas == (S2,)
    source.path.write_text(SERVERS + PROJECT.replace(f'replicas = ["{S2}"]', "replicas = []"))
    second = source.load()
    assert second is not first
    assert second.projects[P1].replicas == ()


def test_a_file_written_just_now_is_read_again_even_with_the_same_stat(tmp_path: Path) -> None:
    source = load(tmp_path, SERVERS + PROJECT)
    first = source.load()  # written less than the racy window ago: not kept
    assert source.load() is not first


def test_projects_that_are_not_a_list_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, 'projects = "all of them"\nextra = 1\n' + SERVERS).load()
    text = str(err.value)
    assert "At 'projects': must be a list of tables ([[projects]])" in text
    assert "At 'extra': unknown key" in text


def test_server_ids_are_shared_by_every_project_naming_them(tmp_path: Path) -> None:
    inv = load(tmp_path, SERVERS + PROJECT + PROJECT.replace(P1, P2)).load()
    assert inv.projects[P1].master is inv.projects[P2].master is inv.servers[S1].server_id
    assert inv.projects[P1].replicas[0] is inv.projects[P2].replicas[0]
