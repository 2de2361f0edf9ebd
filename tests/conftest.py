"""Fixtures for real components: the sandbox fleet of sshd hosts with real bup repositories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import Inventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec, demo_spec
from support.cassandra_fixture import cassandra  # noqa: F401 - the session fixture: a real Cassandra
from support.fleet_template import CopiedReposFleet, RepoTemplates


@pytest.fixture(scope="session")
def demo_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    """The demo's fleet (4 hosts, 6 projects, planted faults), built once per test run.

    Tests must not change it; tests that break hosts use ``scratch_fleet``.
    """
    with SandboxFleet(tmp_path_factory.mktemp("demo-fleet"), demo_spec()) as fleet:
        yield fleet


@pytest.fixture(scope="session")
def demo_config(demo_fleet: SandboxFleet) -> Config:
    return load_config(demo_fleet.config_path, settings_models())


@pytest.fixture(scope="session")
def demo_inventory(demo_config: Config) -> Inventory:
    assert demo_config.inventory.file is not None
    return FileInventory(demo_config.inventory.file).load()


SCRATCH_P1 = "5c7a2f1e-1111-4c1d-9a0b-000000000001"


def scratch_spec() -> FleetSpec:
    """Two healthy hosts and one project: for tests that freeze, kill or re-key a host."""
    return FleetSpec(
        hosts=(HostSpec("s1", dc=0), HostSpec("s2", dc=1)),
        projects=(ProjectSpec(SCRATCH_P1, master="s1", replicas=("s2",)),),
    )


@pytest.fixture(scope="session")
def repo_templates(tmp_path_factory: pytest.TempPathFactory) -> RepoTemplates:
    """Real-bup repositories that per-test fleets copy instead of saving them again each time."""
    return RepoTemplates(tmp_path_factory.mktemp("repo-templates"))


@pytest.fixture()
def scratch_fleet(tmp_path: Path, repo_templates: RepoTemplates) -> Iterator[SandboxFleet]:
    """A fresh small fleet per test, torn down after it whatever the test did to it (its
    repositories copies of real-bup ones built at most a few minutes earlier)."""
    with CopiedReposFleet(tmp_path / "fleet", scratch_spec(), repo_templates) as fleet:
        yield fleet
