"""replication_lag: every replica holds the master's newest save, within bounds.

Filesystem truth: the master ref and the time of its last reflog entry on each copy. A replica
whose ref differs from the master's lags by the difference of those times; one that is newer than
the master is a conflict (replicating over it would destroy its saves).

With several watchdogs, a master copy may be on a host another watchdog sweeps: its newest save
comes from the head that watchdog published (``watchdog/shared_heads.py``), fed in by
``with_heads`` as a host of master copies only. A head older than its bound is left out, so its
replicas are unjudged (their findings stay as they were), never "in step".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts
from bup_watchdog.model import Finding, HostFacts, Inventory, RepoFacts, Severity

#: ``HostFacts.hello`` key of a host made of published heads (who published them): its master
#: copies are compared with, its replicas are not judged here (it was not swept here).
PUBLISHED = "published_heads_by"


@dataclass(frozen=True, slots=True)
class Head:
    """A master copy's newest save as a watchdog published it (``bupwatch_heads``)."""

    server_id: str
    project_id: str
    master_sha: str
    saved_at: int | None
    swept_at: float
    published_by: str


def with_heads(
    facts: FleetFacts, heads: Iterable[Head], now: float, max_age: float
) -> dict[str, HostFacts]:
    """The sweep's facts plus, for each master host it did not sweep, a host of the heads
    published for it at most ``max_age`` seconds ago (older ones are left out: unjudged)."""
    out = dict(facts)
    remote: dict[str, HostFacts] = {}
    for h in heads:
        if h.server_id in facts or now - h.swept_at > max_age:
            continue
        host = remote.get(h.server_id)
        if host is None:
            host = remote[h.server_id] = HostFacts(
                h.server_id, gathered_at=h.swept_at, complete=True, hello={PUBLISHED: []}
            )
        host.gathered_at = min(host.gathered_at, h.swept_at)
        if h.published_by not in host.hello[PUBLISHED]:
            host.hello[PUBLISHED].append(h.published_by)
        host.repos[h.project_id] = RepoFacts.of(
            h.project_id, master_sha=h.master_sha, reflog_last_time=h.saved_at
        )
    out.update(remote)
    return out


def _swept(facts: FleetFacts, server_id: str) -> HostFacts | None:
    """A host this sweep probed itself (not one made of published heads)."""
    host = facts.get(server_id)
    if host is None or not host.probed or PUBLISHED in host.hello:
        return None
    return host


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
        probed = {sid: h for sid, h in facts.items() if h.probed}
        swept = {sid: h for sid in facts if (h := _swept(facts, sid)) is not None}
        for project in inventory.projects.values():
            master_host = probed.get(project.master)
            if project.deleted or master_host is None:
                continue
            master = master_host.repos.get(project.project_id)
            if master is None or not master.master_known:
                continue  # repo_integrity reports a missing or unreadable master
            for replica_id in project.replicas:
                if replica_id == project.master:
                    continue
                host = swept.get(replica_id)
                if host is None:
                    continue
                replica = host.repos.get(project.project_id)
                if replica is not None and replica.same_master(master):
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
                        f"{(master.master_sha or '?')[:12]})",
                        lag,
                    )

    def unjudged(
        self, facts: FleetFacts, inventory: Inventory, settings: ReplicationLagSettings
    ) -> Iterator[tuple[str, str]]:
        """Replicas on probed hosts whose master copy this sweep cannot read: its host was not
        probed (down, or another watchdog's), or its repository or master ref is missing."""
        probed = {sid: h.repos for sid, h in facts.items() if h.probed}
        for project in inventory.projects.values():
            if project.deleted:
                continue
            repos = probed.get(project.master)
            master = repos.get(project.project_id) if repos is not None else None
            if master is not None and master.master_known:  # evaluate judged its replicas
                continue
            for replica_id in project.replicas:
                if replica_id != project.master and _swept(facts, replica_id) is not None:
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
        if master is None or not master.master_known or master.reflog_last_time is None:
            continue
        for rid in project.replicas:
            r_host = _swept(facts, rid)
            if rid == project.master or r_host is None:
                continue
            replica = r_host.repos.get(project.project_id)
            if replica is None or replica.reflog_last_time is None:
                continue
            lag = 0.0
            if not replica.same_master(master):
                lag = max(0.0, float(master.reflog_last_time - replica.reflog_last_time))
            out.setdefault(rid, []).append(lag)
    return out
