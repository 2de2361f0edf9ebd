"""mount_sanity: ``/projects`` and ``/bup/bups`` must be their own mounts of the expected dataset.

If a host boots and ``/projects`` is not mounted yet, writes land on the root disk and replication
can copy an empty tree over real data: the most dangerous fault of this fleet. The rules are the
boot gate's (``watchdog/hostside/preflight.py``): the check and ``bupwatch-preflight`` judge alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.hostside.preflight import mount_problems
from bup_watchdog.model import Finding, Inventory, Severity


class MountSanitySettings(CheckSettings):
    """mount_sanity: /projects and /bup/bups are separate, writable mounts of the right dataset."""

    projects_fstypes: list[str] = Field(
        ["zfs"], description="Filesystem types /projects may have.", examples=[["zfs"]]
    )
    projects_source: str = Field(
        "bup/projects", description="Expected mount source of /projects (a glob pattern)."
    )
    bups_fstypes: list[str] = Field(["zfs"], description="Filesystem types /bup/bups may have.")
    bups_source: str = Field(
        "bup/bups", description="Expected mount source of /bup/bups (a glob pattern)."
    )


class MountSanity(Check[MountSanitySettings]):
    name = "mount_sanity"
    Settings = MountSanitySettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: MountSanitySettings
    ) -> Iterator[Finding]:
        for host in probed_hosts(facts):
            server = inventory.servers.get(host.server_id)
            if server is None:
                continue
            wanted = (
                (server.projects_root, settings.projects_fstypes, settings.projects_source),
                (server.bups_root, settings.bups_fstypes, settings.bups_source),
            )
            for path, fstypes, source in wanted:
                m = host.mounts.get(path)
                if m is None:
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        severity=Severity.CRITICAL,
                        code="no_mount_facts",
                        message=f"the probe reported nothing about {path}",
                    )
                    continue
                problems = mount_problems(
                    m.path,
                    exists=m.exists,
                    is_mount_point=m.is_mount_point,
                    mount_point=m.mount_point,
                    source=m.source,
                    fstype=m.fstype,
                    writable=not m.read_only,
                    fstypes=fstypes,
                    source_pattern=source,
                )
                for code, message in problems:
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        severity=Severity.CRITICAL,
                        code=code,
                        message=message,
                        details={"path": path, "fstype": m.fstype, "source": m.source},
                    )


check = MountSanity()
