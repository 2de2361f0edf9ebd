"""Sandbox fleets whose bup repositories are ``cp -a`` copies of ones built with real bup for the
same spec a little earlier in the run: a fresh scratch fleet per test without paying for its
``bup index`` (which sleeps to the next whole second) and saves every time (~1.5 s a fleet, 120
tests)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bup_watchdog.sandbox import repos
from bup_watchdog.sandbox.fleet import REAL_BUP_LIMIT, SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec

#: A template older than this is built again, so the newest save of a copied fleet is at most
#: this much older than a freshly built one's (``repos.NEWEST_SAVE_AGE``, 10 min, before the build).
MAX_AGE = 300.0


@dataclass
class _Built:
    """The repositories of one spec, built with real bup at ``at``: one folder per location."""

    at: float
    root: Path
    save_times: dict[str, list[int]] = field(default_factory=dict)
    held: dict[tuple[str, str], int] = field(default_factory=dict)

    def repo(self, host: str, project_id: str) -> Path:
        return self.root / host / project_id


class RepoTemplates:
    """Real-bup repositories per fleet spec, built on first use (and again once ``MAX_AGE`` old)
    under ``base``, exactly as ``SandboxFleet`` builds them (``repos.build_project``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._built: dict[FleetSpec, _Built] = {}

    def for_spec(self, spec: FleetSpec) -> _Built:
        built = self._built.get(spec)
        if built is None or time.time() - built.at > MAX_AGE:
            built = self._build(spec)
            self._built[spec] = built
        return built

    def _build(self, spec: FleetSpec) -> _Built:
        self.base.mkdir(parents=True, exist_ok=True)
        built = _Built(time.time(), Path(tempfile.mkdtemp(prefix="repos-", dir=self.base)))
        for p in spec.projects:
            moved = p.used_after_save_hours * 3600
            times = repos.save_times(p.saves, built.at - moved)
            paths = {h: built.repo(h, p.project_id) for h in p.locations}
            staging = built.root / "staging" / p.project_id
            held = repos.build_project(p, staging, paths, times)
            built.save_times[p.project_id] = times
            built.held.update({(p.project_id, h): n for h, n in held.items()})
        return built


class CopiedReposFleet(SandboxFleet):
    """A ``SandboxFleet`` whose repositories are copied (``cp -a``, as its replicas are) from a
    template built with real bup; conf/ files and planted faults are written per fleet as ever.
    A fleet too big to be built with real bup (``REAL_BUP_LIMIT``) is built as ``SandboxFleet``
    builds it."""

    def __init__(self, root: Path, spec: FleetSpec, templates: RepoTemplates) -> None:
        super().__init__(root, spec)
        self._templates = templates

    def _build_repos(self) -> None:
        if len(self.spec.projects) > REAL_BUP_LIMIT:  # built from hard-linked templates anyway
            super()._build_repos()
            return
        built = self._templates.for_spec(self.spec)
        for p in self.spec.projects:
            self.save_times[p.project_id] = list(built.save_times[p.project_id])
            for h in p.locations:
                repos.copy_repo(built.repo(h, p.project_id), self.repo_path(h, p.project_id))
                self.saves_held[(p.project_id, h)] = built.held[(p.project_id, h)]
        for p in self.spec.projects:
            self._finish_project(p)
