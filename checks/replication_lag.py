"""replication_lag: every replica holds the master's newest save, within bounds.

Filesystem truth: the master ref and the time of its last reflog entry on each copy. A replica
whose ref differs from the master's lags by the difference of those times; one that is newer than
the master is a conflict (replicating over it would destroy its saves).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts
from bup_watchdog.model import Finding, Inventory, Severity


class ReplicationLagSettings(CheckSettings):
    """replication_lag: how far behind the master a replica may fall."""

    warn_seconds: float = Field(3600, ge=0, description="Lag at which a replica is a warning.")
    critical_seconds: float = Field(86400, ge=0, description="Lag at which a replica is critical.")

    @model_validator(mode="after")
    def _ordered(self) -> ReplicationLagSettings:
        if self.critical_seconds < self.warn_seconds:
            raise ValueError("critical_seconds must be at least warn_seconds")
        return self


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ReplicationLag(Check[ReplicationLagSettings]):
    name = "replication_lag"
    Settings = ReplicationLagSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: ReplicationLagSettings
    ) -> Iterator[Finding]:
        for project in inventory.projects.values():
            master_host = facts.get(project.master)
            if project.deleted or master_host is None or not master_host.probed:
                continue
            master = master_host.repos.get(project.project_id)
            if master is None or master.master_sha is None:
                continue  # repo_integrity reports a missing or unreadable master
            for replica_id in project.replicas:
                if replica_id == project.master:
                    continue
                host = facts.get(replica_id)
                if host is None or not host.probed:
                    continue
                replica = host.repos.get(project.project_id)
                if replica is not None and replica.master_sha == master.master_sha:
                    continue  # most replicas: in step

                def finding(
                    severity: Severity, code: str, message: str, value: float | None = None
                ) -> Finding:
                    return Finding(
                        check=self.name,
                        server_id=replica_id,  # noqa: B023 - used at once, inside the loop
                        project_id=project.project_id,  # noqa: B023
                        severity=severity,
                        code=code,
                        message=message,
                        value=value,
                    )

                if replica is None:
                    yield finding(
                        Severity.CRITICAL, "replica_missing", "the replica's repository is missing"
                    )
                    continue
                m_time, r_time = master.reflog_last_time, replica.reflog_last_time
                if m_time is None or r_time is None:
                    yield finding(
                        Severity.WARNING,
                        "differs",
                        f"replica's master {replica.master_sha} differs from the "
                        f"master's {master.master_sha} and its age is unknown",
                    )
                    continue
                lag = float(m_time - r_time)
                if lag < 0:
                    yield finding(
                        Severity.CRITICAL,
                        "replica_ahead",
                        f"the replica is {_age(-lag)} NEWER than the master: a "
                        "conflict; replicating over it would destroy its saves",
                        lag,
                    )
                elif lag >= settings.warn_seconds:
                    critical = lag >= settings.critical_seconds
                    yield finding(
                        Severity.CRITICAL if critical else Severity.WARNING,
                        "behind",
                        f"the replica is {_age(lag)} behind the master "
                        f"(has {(replica.master_sha or '?')[:12]}, master has "
                        f"{master.master_sha[:12]})",
                        lag,
                    )

    def unjudged(
        self, facts: FleetFacts, inventory: Inventory, settings: ReplicationLagSettings
    ) -> Iterator[tuple[str, str]]:
        """Replicas on probed hosts whose master copy this sweep cannot read: its host was not
        probed (down, or another watchdog's), or its repository or master ref is missing."""
        for project in inventory.projects.values():
            if project.deleted:
                continue
            master_host = facts.get(project.master)
            master = master_host.repos.get(project.project_id) if master_host else None
            if master_host is not None and master_host.probed and master and master.master_sha:
                continue
            for replica_id in project.replicas:
                host = facts.get(replica_id)
                if replica_id != project.master and host is not None and host.probed:
                    yield replica_id, project.project_id


check = ReplicationLag()


def replica_lags(facts: FleetFacts, inventory: Inventory) -> dict[str, list[float]]:
    """Lag in seconds of every replica the sweep could compare, by the replica's server.

    0 for a replica with the master's commit; for the metrics histogram, not for findings.
    """
    out: dict[str, list[float]] = {}
    for project in inventory.projects.values():
        m_host = facts.get(project.master)
        if project.deleted or m_host is None or not m_host.probed:
            continue
        master = m_host.repos.get(project.project_id)
        if master is None or master.master_sha is None or master.reflog_last_time is None:
            continue
        for rid in project.replicas:
            r_host = facts.get(rid)
            if rid == project.master or r_host is None or not r_host.probed:
                continue
            replica = r_host.repos.get(project.project_id)
            if replica is None or replica.reflog_last_time is None:
                continue
            lag = 0.0
            if replica.master_sha != master.master_sha:
                lag = max(0.0, float(master.reflog_last_time - replica.reflog_last_time))
            out.setdefault(rid, []).append(lag)
    return out
