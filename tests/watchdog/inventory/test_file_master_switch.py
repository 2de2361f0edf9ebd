"""Switching masters in the file inventory: a compare-and-swap that watchdog processes take turns
at, so concurrent moves of different projects all land and none undoes another."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path

from bup_watchdog.inventory.file import FileInventory, set_master_in_file
from support.facts import S1, S2

MOVES = 12


def inventory_text(projects: list[str]) -> str:
    servers = "".join(
        f'[[servers]]\nserver_id = "{s}"\nhost = "127.0.1.{i}"\nport = 6000\n\n'
        for i, s in enumerate((S1, S2), start=2)
    )
    return servers + "".join(
        f'[[projects]]\nproject_id = "{p}"\nmaster = "{S1}"\nreplicas = ["{S2}"]\n\n'
        for p in projects
    )


def switch(path: Path, project_id: str, start: Barrier) -> None:
    """One watchdog process's switch, started with the others at once; exit 0 when it landed."""
    start.wait()
    raise SystemExit(0 if set_master_in_file(path, project_id, S1, S2) else 1)


def test_concurrent_switches_of_different_projects_all_land(tmp_path: Path) -> None:
    projects = [str(uuid.uuid4()) for _ in range(MOVES)]
    path = tmp_path / "inventory.toml"
    path.write_text(inventory_text(projects))
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(MOVES)
    procs = [ctx.Process(target=switch, args=(path, p, start)) for p in projects]

    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)

    assert [proc.exitcode for proc in procs] == [0] * MOVES
    loaded = FileInventory(path).load().projects
    assert {(loaded[p].master, loaded[p].replicas) for p in projects} == {(S2, (S1,))}


def test_a_switch_whose_master_is_no_longer_the_old_one_changes_nothing(tmp_path: Path) -> None:
    [p] = projects = [str(uuid.uuid4())]
    path = tmp_path / "inventory.toml"
    path.write_text(inventory_text(projects))
    assert set_master_in_file(path, p, S1, S2)
    before = path.read_bytes()

    assert set_master_in_file(path, p, S1, S2) is False
    assert path.read_bytes() == before
