"""What a sandbox fleet should look like: hosts, projects and the faults planted in them.

Plain frozen dataclasses, so a spec can be written in a test in one line and compared or hashed.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One storage host and the host-level faults planted on it.

    ``projects_mounted=False`` leaves ``/projects`` a plain directory on the root disk (the boot
    race); ``port_mismatch`` makes the inventory record a port one above the real one.
    ``ssh_gate`` lets the watchdog's key run only ``bupwatch-ssh-gate`` (authorized_keys
    ``restrict,command=``), logging to the host's ``ssh-gate.log``.
    """

    name: str
    dc: int = 0
    projects_mounted: bool = True
    bup_server_running: bool = True
    experimental: bool = False
    port_mismatch: bool = False
    ssh_gate: bool = False


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """One project: where it lives (host names) and the repository faults planted in it.

    ``corrupt_on``: on those hosts the ``.pack`` holding the newest commit is deleted, its ``.idx``
    kept. ``stale_on``: those replica copies were made after save N-1, so they lack the newest save.
    ``used_after_save_hours``: the project's saves stopped, its use did not: every save is this much
    older than another project's, and ``conf/touch`` is this long after the newest save
    (save_freshness; real-bup fleets only, a big fleet's template saves are not moved).
    """

    project_id: str
    master: str
    replicas: tuple[str, ...]
    saves: int = 2
    disk_mb: int = 3000
    save_log_bytes: int = 2000
    corrupt_on: tuple[str, ...] = ()
    stale_on: tuple[str, ...] = ()
    files: int = 5
    used_after_save_hours: float = 0.0

    @property
    def locations(self) -> tuple[str, ...]:
        """Every host holding a copy, the master first."""
        return (self.master, *[r for r in self.replicas if r != self.master])


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """A whole fleet; validated on creation so a typo fails here, not half-way through a build."""

    hosts: tuple[HostSpec, ...]
    projects: tuple[ProjectSpec, ...]

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        if not names:
            raise ValueError("a fleet needs at least one host")
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        if len(names) > 250:
            raise ValueError("a fleet has at most 250 hosts (one loopback /24)")
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"host name {name!r} must be 1-31 letters, digits, '_' or '-'")
        ids = [p.project_id for p in self.projects]
        if len(set(ids)) != len(ids):
            raise ValueError("project ids must be unique")
        known = set(names)
        for p in self.projects:
            if str(uuid.UUID(p.project_id)) != p.project_id or uuid.UUID(p.project_id).version != 4:
                raise ValueError(f"{p.project_id!r} is not a lower-case version-4 UUID")
            unknown = {p.master, *p.replicas, *p.corrupt_on, *p.stale_on} - known
            if unknown:
                raise ValueError(f"project {p.project_id} names unknown hosts {sorted(unknown)}")
            if not set(p.corrupt_on) <= set(p.locations):
                raise ValueError(f"project {p.project_id}: corrupt_on must be among its locations")
            if not set(p.stale_on) <= set(p.replicas) - {p.master}:
                raise ValueError(f"project {p.project_id}: stale_on must be among its replicas")
            if p.saves < 1 or p.files < 1 or p.save_log_bytes < 0 or p.disk_mb < 0:
                raise ValueError(f"project {p.project_id}: saves, files >= 1 and sizes >= 0 needed")
            if p.used_after_save_hours < 0:
                raise ValueError(f"project {p.project_id}: used_after_save_hours must be >= 0")

    def host(self, name: str) -> HostSpec:
        """The host spec called ``name``."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


# Fixed ids so that the demo's output is the same on every run.
DEMO_PROJECTS = {
    "P1": "a4a71774-64be-477b-8e6d-cd80755840ca",
    "P2": "5d3f95a7-09f1-47fa-85ba-751ebce73594",
    "P3": "62b1b37f-ed5c-4bd1-be30-5b6c0887efba",
    "P4": "295b0cbd-11fb-4257-8183-0863b0444d92",
    "P5": "f0053122-90b2-47bc-88a4-5c65d260a499",
    "P6": "2a4664a1-f7d5-412e-a4cb-55454a7c15da",
}


def demo_spec() -> FleetSpec:
    """The demo fleet: 4 hosts in 2 data centres, 6 projects, one fault of each kind.

    Hosts: h1, h2 (dc 0) are healthy. h3 (dc 1) booted without /projects mounted (mount_sanity on
    h3; its live files are absent). h4 (dc 1) has no bup_server running (reachability on h4).
    Projects (ids in ``DEMO_PROJECTS``), all with 2 saves, newest save 10 minutes ago but P6's:
      P1 master h1, replica h3: h1's copy lost the pack holding the newest commit (repo_integrity
         on h1 — ``bup ls master`` fails; h3's replica is intact).
      P2 master h2, replica h4: save_log.json is 62 MB on both copies (save_log_size warning,
         over 50 MB).
      P3 master h1, replica h4: h4's copy is one save (6 hours) behind (replication_lag warning;
         ``bup_last_save`` in the inventory says the same).
      P4 master h2, replica h3: healthy repos (but h3's live files are missing with /projects).
      P5 master h3, replica h1: healthy repos (master on the host with the unmounted /projects).
      P6 master h4, replica h2: its saves stopped 30 hours before its last use, 10 minutes ago
         (save_freshness warning on h4, the host without bup_server).
    """
    p = DEMO_PROJECTS
    return FleetSpec(
        hosts=(
            HostSpec("h1", dc=0),
            HostSpec("h2", dc=0),
            HostSpec("h3", dc=1, projects_mounted=False),
            HostSpec("h4", dc=1, bup_server_running=False),
        ),
        projects=(
            ProjectSpec(p["P1"], "h1", ("h3",), corrupt_on=("h1",)),
            ProjectSpec(p["P2"], "h2", ("h4",), save_log_bytes=62 * 10**6),
            ProjectSpec(p["P3"], "h1", ("h4",), stale_on=("h4",)),
            ProjectSpec(p["P4"], "h2", ("h3",)),
            ProjectSpec(p["P5"], "h3", ("h1",)),
            ProjectSpec(p["P6"], "h4", ("h2",), used_after_save_hours=30),
        ),
    )


def scaled_spec(hosts: int, repos_per_host: int, seed: int = 0) -> FleetSpec:
    """A healthy fleet for benchmarks: each host holds about ``repos_per_host`` repositories.

    Hosts ``s01, s02, …`` alternate between dc 0 and 1. There are ``hosts * repos_per_host // 2``
    projects (one master and one replica each, on different hosts; a 1-host fleet has no replicas),
    so every host masters about half of its repos and replicates the other half. Project ids are
    version-4 UUIDs drawn from ``random.Random(seed)``: the same arguments give the same fleet.
    Such fleets are not built with a ``bup`` run per repository: a few template repositories are
    made with real ``bup`` and every repository is a hard-link copy of one (see ``repos``).
    """
    if hosts < 1 or repos_per_host < 0:
        raise ValueError("need at least one host and a non-negative repository count")
    rng = random.Random(seed)  # noqa: S311 - reproducible ids, not secrets
    host_specs = tuple(HostSpec(f"s{i + 1:02d}", dc=i % 2) for i in range(hosts))
    count = hosts * repos_per_host // 2 if hosts > 1 else repos_per_host
    projects = []
    for k in range(count):
        project_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        m = k % hosts
        replicas: tuple[str, ...] = ()
        if hosts > 1:
            # Each round of ``hosts`` projects shifts the replica by a different offset, so the
            # replicas of one round land on every host exactly once.
            r = (m + 1 + (k // hosts) % (hosts - 1)) % hosts
            replicas = (host_specs[r].name,)
        projects.append(ProjectSpec(project_id, host_specs[m].name, replicas, files=1))
    return FleetSpec(hosts=host_specs, projects=tuple(projects))
