"""save_freshness: a project used long after its newest save, its saves failing silently.

Judges the master copy only (replicas are replication_lag's). Used: the mtime of ``conf/touch``.
Newest save: the time of the last entry of the master reflog (bup writes it on every save; the
probe reads no commit object). Both times come from the host's own clock, so the watchdog's does
not matter. A master with neither master ref nor reflog has never been saved: critical when the
project has live files, i.e. its live directory on the master holds entries (listed only in the
sweeps that run ``ownership``) or ``conf/touch`` exists (it was used); with neither known, the
project is unjudged and an open finding stays open. A master ref without reflog: age unknown,
no finding. A missing or unreadable master is repo_integrity's.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import Finding, HostFacts, Inventory, RepoFacts, Severity


class SaveFreshnessSettings(CheckSettings):
    """save_freshness: how long a project may be used after its newest save."""

    warn_seconds: float = Field(
        86400, ge=0, description="Use this long after the newest save is a warning."
    )
    critical_seconds: float = Field(
        259200, ge=0, description="Use this long after the newest save is critical."
    )

    @model_validator(mode="after")
    def _ordered(self) -> SaveFreshnessSettings:
        if self.critical_seconds < self.warn_seconds:
            raise ValueError("critical_seconds must be at least warn_seconds")
        return self


#: How long a project was used after its newest save, in bounded buckets (metrics, report):
#: a bucket holds gaps from the previous bound (included) up to its own.
AGE_BUCKETS = (
    ("under_1d", 86400.0),
    ("1d_to_3d", 3 * 86400.0),
    ("3d_to_7d", 7 * 86400.0),
    ("7d_to_30d", 30 * 86400.0),
    ("over_30d", float("inf")),
)
NEVER_SAVED = "never_saved"


def age_bucket(gap: float | None) -> str:
    """The bucket of a finding's value; None (no save at all) is ``never_saved``."""
    if gap is None:
        return NEVER_SAVED
    return next(name for name, bound in AGE_BUCKETS if gap < bound)


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 4 * 86400 else f"{seconds / 86400:.1f} days"


def _is_master(host: HostFacts, repo: RepoFacts, inventory: Inventory) -> bool:
    """Whether this copy is its live project's master copy."""
    project = inventory.projects.get(repo.project_id)
    return project is not None and project.master == host.server_id and not project.deleted


def _never_saved(repo: RepoFacts) -> bool:
    return not repo.master_known and repo.reflog_last_time is None


def _live_files(host: HostFacts, inventory: Inventory, project_id: str) -> bool | None:
    """Whether the master's live directory holds entries; None when this sweep did not list it."""
    server = inventory.servers.get(host.server_id)
    if server is None or (not host.project_dirs and host.scope is None):
        return None  # (a scoped probe always lists its projects' live directories)
    mount = host.mounts.get(server.projects_root)
    if mount is None or not mount.is_mount_point:
        return None  # the root disk under an unmounted /projects says nothing
    d = host.project_dirs.get(project_id)
    return d is not None and not d.is_symlink and (d.sampled > 1 or d.sample_truncated)


class SaveFreshness(Check[SaveFreshnessSettings]):
    name = "save_freshness"
    Settings = SaveFreshnessSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: SaveFreshnessSettings
    ) -> Iterator[Finding]:
        warn = settings.warn_seconds
        for host in probed_hosts(facts):
            for repo in host.repos.values():
                used, newest = repo.touch_mtime, repo.reflog_last_time
                if used is not None and newest is not None and used - newest < warn:
                    continue  # most copies: saved after (or soon before) their last use
                if not _is_master(host, repo, inventory):
                    continue
                pid = repo.project_id
                if _never_saved(repo):
                    if used is None and not _live_files(host, inventory, pid):
                        continue
                    why = "its live directory holds files" if used is None else "conf/touch exists"
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        project_id=pid,
                        severity=Severity.CRITICAL,
                        code="never_saved",
                        message=f"no save at all (no master ref, no reflog) although {why}: "
                        "nothing of this project can be restored",
                        details={"last_used": used},
                    )
                    continue
                if used is None or newest is None:
                    continue
                gap = used - newest
                critical = gap >= settings.critical_seconds
                when = datetime.fromtimestamp(newest, UTC)
                yield Finding(
                    check=self.name,
                    server_id=host.server_id,
                    project_id=pid,
                    severity=Severity.CRITICAL if critical else Severity.WARNING,
                    code="stale",
                    value=gap,
                    message=f"used {_age(gap)} after its newest save ({when:%Y-%m-%d %H:%M} "
                    "UTC): saves are failing or not running; see conf/save_log.json",
                    details={"newest_save": newest, "last_used": used},
                )

    def unjudged(
        self, facts: FleetFacts, inventory: Inventory, settings: SaveFreshnessSettings
    ) -> Iterator[tuple[str, str]]:
        """Never-saved masters without conf/touch in a sweep that did not list live directories:
        whether they hold files is unknown, so an open finding stays open."""
        for host in probed_hosts(facts):
            for repo in host.repos.values():
                if (  # _never_saved, inline: this runs for every copy
                    not repo.master_known
                    and repo.reflog_last_time is None
                    and repo.touch_mtime is None
                    and _is_master(host, repo, inventory)
                    and _live_files(host, inventory, repo.project_id) is None
                ):
                    yield host.server_id, repo.project_id


check = SaveFreshness()
