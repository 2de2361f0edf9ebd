"""bup_quota: a project's bup repository has grown far beyond the project's disk quota.

A repository holds every save of the project, so it may well exceed the quota; one at many times
its quota is usually a project that saves churning data (build trees, databases), and it costs
that much on every replica. The quota is the inventory's ``disk_mb`` or, when the inventory
has none, the repository's own ``conf/settings.json`` ``disk`` (MB, as the fleet's tooling hands it
to ``zfs set userquota``, i.e. MiB). A quota of 0 or one that is not a number counts as none:
no quota known, no finding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import Finding, Inventory, Severity

MIB = 1 << 20


class BupQuotaSettings(CheckSettings):
    """bup_quota: how many times its disk quota a project's bup repository may hold."""

    factor: float = Field(
        3.0, gt=0, description="Repository size, as a multiple of the quota, that is a warning."
    )
    critical_factor: float = Field(
        5.0, gt=0, description="Repository size, as a multiple of the quota, that is critical."
    )

    @model_validator(mode="after")
    def _ordered(self) -> BupQuotaSettings:
        if self.critical_factor < self.factor:
            raise ValueError("critical_factor must be at least factor")
        return self


def settings_quota_mb(settings: Mapping[str, Any] | None) -> float | None:
    """The ``disk`` quota of a repository's conf/settings.json, when it is a positive number."""
    if not settings:
        return None
    disk = settings.get("disk")
    if isinstance(disk, bool):
        return None
    if isinstance(disk, str):  # the database keeps settings as text; so may old conf files
        try:
            disk = float(disk)
        except ValueError:
            return None
    if not isinstance(disk, int | float) or not math.isfinite(disk) or disk <= 0:
        return None
    return float(disk)


class BupQuota(Check[BupQuotaSettings]):
    name = "bup_quota"
    Settings = BupQuotaSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: BupQuotaSettings
    ) -> Iterator[Finding]:
        for host in probed_hosts(facts):
            for pid, repo in host.repos.items():
                project = inventory.projects.get(pid)
                if project is not None and project.deleted:
                    continue
                if project is not None and project.disk_mb:
                    quota_mb: float | None = float(project.disk_mb)
                    source = "inventory"
                else:
                    quota_mb = settings_quota_mb(repo.settings)
                    source = "conf/settings.json"
                if quota_mb is None:
                    continue  # no quota known: nothing to compare with
                ratio = repo.repo_bytes / (quota_mb * MIB)
                if ratio <= settings.factor:
                    continue
                critical = ratio > settings.critical_factor
                limit = settings.critical_factor if critical else settings.factor
                yield Finding(
                    check=self.name,
                    server_id=host.server_id,
                    project_id=pid,
                    severity=Severity.CRITICAL if critical else Severity.WARNING,
                    code="over_quota",
                    value=float(repo.repo_bytes),
                    message=(
                        f"bup repository is {repo.repo_bytes / MIB:.0f} MiB, {ratio:.1f} × the "
                        f"disk quota of {quota_mb:.0f} MiB from the {source} "
                        f"(limit {limit:g} ×)"
                    ),
                    details={"quota_mb": quota_mb, "quota_source": source, "ratio": ratio},
                )


check = BupQuota()
