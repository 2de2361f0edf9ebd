"""/metrics after a sweep: the daemon's sweep thread builds the families from the new state, so
the first scrape renders what is built instead of reading the state (~60 ms at 100,000 projects)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.daemon import Daemon, build_http
from bup_watchdog.metrics import StateCollector, exposition
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.prometheus import watchdog_config


def test_the_first_scrape_after_a_sweep_reuses_the_families_the_sweep_built(
    demo_fleet: SandboxFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = watchdog_config(demo_fleet, tmp_path)
    config = load_config(path, settings_models())
    daemon = Daemon(config)
    build_http(config, daemon.state, daemon)  # not started: only its registry is used
    builds: list[int] = []
    original = StateCollector._sweep

    def counted(self: StateCollector) -> Iterator[Metric]:
        builds.append(1)
        return original(self)

    monkeypatch.setattr(StateCollector, "_sweep", counted)
    try:
        daemon.sweep_job()
        assert len(builds) == 1, "the sweep thread built the families"
        assert daemon.metrics_registry is not None
        text = exposition(daemon.metrics_registry).decode()
    finally:
        daemon.state.close()

    assert len(builds) == 1, "the scrape reused them"
    assert "bupwatch_sweeps_total 1.0" in text
