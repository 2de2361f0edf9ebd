"""ownership: a project's live files under ``/projects/<id>`` belong to the project's uid.

Judged from the probe's bounded sample of each live tree (``.snapshots`` skipped, symlinks never
followed); the expected uid comes from the project id (``watchdog.model.project_uid``). A file
the project cannot write (left by a root rsync or restore) breaks the project for its user; the
``chown_project`` repair fixes it. Hosts whose ``/projects`` is not a mount point are left out:
what lies there is the root disk, and mount_sanity reports the host.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import (
    Finding,
    Inventory,
    Project,
    ProjectDirFacts,
    Severity,
    project_uid,
)


class OwnershipSettings(CheckSettings):
    """ownership: live files under /projects/<id> owned by the project's uid (sampled)."""

    interval_seconds: float = Field(
        3600.0,
        ge=0,
        description="Run at most this often (0: in every sweep). The live trees are listed and "
        "their owners sampled only in the sweeps that run this check: on a real fleet that is "
        "most of a walk's disk work, and a wrong owner is rarely urgent.",
    )
    critical_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the sampled entries with a wrong owner above which it is critical.",
    )
    sample_per_project: int = Field(
        200,
        ge=0,
        description="Entries of each project's live tree whose owner the probe samples (0: only "
        "the top directory's).",
    )
    sample_per_host: int = Field(
        50_000,
        ge=0,
        description="Entries sampled on one host per sweep; projects past it are not sampled in "
        "that sweep. The daemon starts each host's next sample where this one ran out, so every "
        "project is sampled in turn, and keeps a project's last sample until its next one.",
    )
    report_missing: bool = Field(
        True,
        description="Report a project the inventory places on a host (with /projects mounted) "
        "whose live directory is missing there.",
    )


def _owner_counts(d: ProjectDirFacts) -> tuple[dict[int, int], int]:
    """(owners, sampled): the probe's sample, or just the top when the sample was skipped."""
    if d.sampled > 0 and d.owners:
        return dict(d.owners), d.sampled
    if d.uid is not None:
        return {d.uid: 1}, 1
    return {}, 0


class Ownership(Check[OwnershipSettings]):
    name = "ownership"
    Settings = OwnershipSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: OwnershipSettings
    ) -> Iterator[Finding]:
        placed: dict[str, list[Project]] = {}
        for p in inventory.projects.values():
            if not p.deleted:
                for sid in set(p.locations):
                    placed.setdefault(sid, []).append(p)
        for host in probed_hosts(facts):
            server = inventory.servers.get(host.server_id)
            if server is None:
                continue
            mount = host.mounts.get(server.projects_root)
            if mount is None or not mount.is_mount_point:
                continue  # mount_sanity's finding; live files on the root disk mean nothing
            for project in placed.get(host.server_id, []):
                pid = project.project_id
                live = f"{server.projects_root.rstrip('/')}/{pid}"

                def finding(
                    severity: Severity, code: str, message: str, value: float | None = None
                ) -> Finding:
                    return Finding(
                        check=self.name,
                        server_id=host.server_id,  # noqa: B023 - used at once, inside the loop
                        project_id=pid,  # noqa: B023
                        severity=severity,
                        code=code,
                        message=message,
                        value=value,
                    )

                d = host.project_dirs.get(pid)
                if d is None:
                    if settings.report_missing:
                        yield finding(
                            Severity.WARNING,
                            "missing_live_dir",
                            f"{live} is missing on a host that holds the project",
                        )
                    continue
                if d.is_symlink:
                    yield finding(
                        Severity.CRITICAL,
                        "symlink",
                        f"{live} is a symlink; not followed (a chown or rsync through it would "
                        "act elsewhere)",
                    )
                    continue
                uid = project_uid(pid)
                owners, sampled = _owner_counts(d)
                wrong = {u: n for u, n in owners.items() if u != uid}
                count = sum(wrong.values())
                if not count:
                    continue
                examples = [p for u in sorted(wrong) for p in d.examples.get(u, ())][:3]
                if not examples and d.uid is not None and d.uid != uid:
                    examples = ["."]
                shown = ", ".join(examples) or "none recorded"
                owners_text = ", ".join(f"uid {u}: {n}" for u, n in sorted(wrong.items()))
                of = f"the first {sampled}" if d.sample_truncated else f"{sampled}"
                critical = count > settings.critical_fraction * sampled
                yield finding(
                    Severity.CRITICAL if critical else Severity.WARNING,
                    "wrong_owner",
                    f"{count} of {of} sampled entries under {live} are not owned by the "
                    f"project's uid {uid} ({owners_text}); e.g. {shown}",
                    float(count),
                )


check = Ownership()
