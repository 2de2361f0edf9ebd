"""The probes on the hosts' older Pythons: storage hosts are not upgraded with the watchdog, and
Debian 11 has 3.9, Ubuntu 20.04 3.8. The probe and the deep probe, sent to each Python found on
this machine (pyenv's builds or ``python3.X`` on PATH) through ``ssh.python``, give the same facts
as this machine's Python, on a real fleet."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import MountFacts
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep

OLDER = ("3.7", "3.8", "3.9", "3.10")  # the oldest the probes run on: 3.7 (README)


def python(version: str) -> str | None:
    """A Python ``version`` on this machine, if any."""
    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else shutil.which(f"python{version}")


def steady(mounts: dict[str, MountFacts]) -> dict[str, MountFacts]:
    """The mounts' facts but the free space, which moves between two sweeps."""
    return {path: dataclasses.replace(m, bytes_free=0) for path, m in mounts.items()}


def install_on_hosts(fleet: SandboxFleet, interpreter: str) -> None:
    """A host has its own /root (a clean home): a pyenv build is put at the same path in each
    host's home (hard links; its shared libpython is found by that absolute path)."""
    path = Path(interpreter)
    if not path.is_relative_to("/root"):
        return  # /usr/bin and the like: the hosts see this machine's
    build = path.parents[1]  # /root/.pyenv/versions/3.X.Y
    for host in fleet.hosts.values():
        inside = host.home / build.relative_to("/root")
        if not inside.exists():
            try:
                shutil.copytree(build, inside, symlinks=True, copy_function=os.link)
            except OSError:  # another file system
                shutil.rmtree(inside, ignore_errors=True)
                shutil.copytree(build, inside, symlinks=True)


@pytest.mark.parametrize("version", OLDER)
def test_the_probes_on_an_older_python_give_the_same_facts(
    scratch_fleet: SandboxFleet, tmp_path: Path, version: str
) -> None:
    older = python(version)
    if older is None:  # not a setup step: Debian 12 packages no other Python; pyenv has them
        pytest.skip(f"no Python {version} on this machine (pyenv or python{version} on PATH)")
    config = load_config(scratch_fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    here = sweep(config, inventory, state=State(tmp_path / "here.db"), deep=True)
    install_on_hosts(scratch_fleet, older)
    config.ssh.python = older
    there = sweep(config, inventory, state=State(tmp_path / "there.db"), deep=True)
    assert here.facts and set(here.facts) == set(there.facts)
    for sid, facts in there.facts.items():
        assert facts.probed, facts.failure_message
        assert facts.hello["python"].startswith(version + "."), facts.hello["python"]
        mine = here.facts[sid]
        assert facts.repos and facts.repos == mine.repos
        assert facts.project_dirs == mine.project_dirs
        assert steady(facts.mounts) == steady(mine.mounts) and facts.process == mine.process
        assert facts.deep_checked_now == mine.deep_checked_now > 0
        assert {p: d.ok for p, d in facts.deep.items()} == {p: d.ok for p, d in mine.deep.items()}
    assert [f.code for f in there.findings] == [f.code for f in here.findings]
