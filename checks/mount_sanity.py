"""mount_sanity: ``/projects`` and ``/bup/bups`` must be their own mounts of the expected dataset.

If a host boots and ``/projects`` is not mounted yet, writes land on the root disk and replication
can copy an empty tree over real data: the most dangerous fault of this fleet.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

from pydantic import Field

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import Finding, Inventory, MountFacts, Severity


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

    def _problems(
        self, m: MountFacts, fstypes: list[str], source: str
    ) -> Iterator[tuple[str, str]]:
        if not m.exists:
            yield "missing", f"{m.path} does not exist"
            return
        if not m.is_mount_point:
            where = m.mount_point or "?"
            yield (
                "not_mounted",
                f"{m.path} is not mounted: it lies on {where} ({m.source or '?'}, "
                f"{m.fstype or '?'}), so anything written there lands on that disk and "
                "replication from this host could copy an empty tree over real data",
            )
            return
        if fstypes and m.fstype not in fstypes:
            yield "wrong_fstype", f"{m.path} is {m.fstype}, expected {' or '.join(fstypes)}"
        if source and not fnmatch.fnmatchcase(m.source or "", source):
            yield "wrong_source", f"{m.path} is mounted from {m.source}, expected {source}"
        if m.read_only:
            yield "read_only", f"{m.path} is mounted read-only"

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
                for code, message in self._problems(m, fstypes, source):
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        severity=Severity.CRITICAL,
                        code=code,
                        message=message,
                        details={"path": path, "fstype": m.fstype, "source": m.source},
                    )


check = MountSanity()
