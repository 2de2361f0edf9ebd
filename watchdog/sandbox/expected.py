"""The findings a sandbox fleet's planted faults must produce — and nothing else.

Derived from the FleetSpec, so the demo and the tests compare a sweep against the same truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bup_watchdog.model import Finding
from bup_watchdog.sandbox.spec import FleetSpec

SAVE_LOG_WARN_BYTES = 50_000_000
SAVE_FRESHNESS_WARN_SECONDS = 86400.0


@dataclass(frozen=True, slots=True, order=True)
class Expected:
    """One finding a planted fault must cause: check, code, host name, project (if any)."""

    check: str
    code: str
    host: str
    project_id: str | None = None

    def __str__(self) -> str:
        where = self.host + (f"/{self.project_id}" if self.project_id else "")
        return f"{self.check}/{self.code} on {where}"


def expected_findings(
    spec: FleetSpec,
    save_log_warn_bytes: int = SAVE_LOG_WARN_BYTES,
    save_freshness_warn_seconds: float = SAVE_FRESHNESS_WARN_SECONDS,
) -> set[Expected]:
    """Every finding the spec's planted faults should produce."""
    out: set[Expected] = set()
    for h in spec.hosts:
        if not h.projects_mounted:
            out.add(Expected("mount_sanity", "not_mounted", h.name))
        if not h.bup_server_running:
            out.add(Expected("reachability", "bup_server_unreachable", h.name))
            out.add(Expected("reachability", "bup_server_not_running", h.name))
        elif h.port_mismatch:  # one finding naming both ports
            out.add(Expected("reachability", "port_mismatch", h.name))
    for p in spec.projects:
        for host in p.corrupt_on:
            out.add(Expected("repo_integrity", "master_not_in_pack", host, p.project_id))
        if p.save_log_bytes >= save_log_warn_bytes:  # replication copies conf/ too
            for host in p.locations:
                out.add(Expected("save_log_size", "too_large", host, p.project_id))
        for host in p.stale_on:
            out.add(Expected("replication_lag", "behind", host, p.project_id))
        if p.used_after_save_hours * 3600 >= save_freshness_warn_seconds:
            out.add(Expected("save_freshness", "stale", p.master, p.project_id))
    return out


def observed(findings: Iterable[Finding], names: dict[str, str]) -> set[Expected]:
    """Findings as Expected entries; ``names`` maps server id to host name."""
    return {
        Expected(f.check, f.code, names.get(f.server_id, f.server_id), f.project_id)
        for f in findings
    }


@dataclass(frozen=True, slots=True)
class Comparison:
    """Planted faults found, missed, and findings nobody planted (false positives)."""

    found: set[Expected]
    missed: set[Expected]
    unexpected: set[Expected]

    @property
    def exact(self) -> bool:
        return not self.missed and not self.unexpected


def compare(expected: set[Expected], seen: set[Expected]) -> Comparison:
    return Comparison(expected & seen, expected - seen, seen - expected)
