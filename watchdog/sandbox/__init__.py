"""A sandbox fleet of storage hosts on this machine: real sshd, real bup, planted faults.

The backbone of the integration tests, the benchmarks and ``bup-watchdog demo``.
"""

from __future__ import annotations

from bup_watchdog.sandbox.fleet import NO_NAMESPACES, SandboxFleet, namespaces_available
from bup_watchdog.sandbox.hosts import HostStartError, SandboxHost
from bup_watchdog.sandbox.repos import BuildError
from bup_watchdog.sandbox.spec import (
    DEMO_PROJECTS,
    FleetSpec,
    HostSpec,
    ProjectSpec,
    demo_spec,
    scaled_spec,
)

__all__ = [
    "DEMO_PROJECTS",
    "NO_NAMESPACES",
    "BuildError",
    "FleetSpec",
    "HostSpec",
    "HostStartError",
    "ProjectSpec",
    "SandboxFleet",
    "SandboxHost",
    "demo_spec",
    "namespaces_available",
    "scaled_spec",
]
