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
from bup_watchdog.live_dirs import ProjectDirFacts
from bup_watchdog.model import Finding, Inventory, Severity, project_uid_unchecked


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


def _owned(d: ProjectDirFacts, uid: int) -> bool:
    """Whether a live directory's sample (or its top, without one) has no entry of another owner:
    almost every project, so the check decides it without building anything."""
    owners = d.owners
    if d.sampled > 0 and owners:
        return len(owners) == 1 and uid in owners
    return d.uid is None or d.uid == uid


class Ownership(Check[OwnershipSettings]):
    name = "ownership"
    Settings = OwnershipSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: OwnershipSettings
    ) -> Iterator[Finding]:
        placed: dict[str, list[str]] = {}
        for p in inventory.projects.values():
            if not p.deleted:
                for sid in {p.master, *p.replicas}:
                    placed.setdefault(sid, []).append(p.project_id)
        for host in probed_hosts(facts):
            server = inventory.servers.get(host.server_id)
            if server is None:
                continue
            mount = host.mounts.get(server.projects_root)
            if mount is None or not mount.is_mount_point:
                continue  # mount_sanity's finding; live files on the root disk mean nothing
            dirs = host.project_dirs
            for pid in placed.get(host.server_id, ()):
                d = dirs.get(pid)
                if d is not None and (
                    d.usual or (not d.is_symlink and _owned(d, project_uid_unchecked(pid)))
                ):
                    continue
                found = self._judge(host.server_id, server.projects_root, pid, d, settings)
                if found is not None:
                    yield found

    def _judge(
        self,
        server_id: str,
        projects_root: str,
        pid: str,
        d: ProjectDirFacts | None,
        settings: OwnershipSettings,
    ) -> Finding | None:
        """The finding on one project's live directory on one host, if any."""
        live = f"{projects_root.rstrip('/')}/{pid}"

        def finding(
            severity: Severity, code: str, message: str, value: float | None = None
        ) -> Finding:
            return Finding(
                check=self.name,
                server_id=server_id,
                project_id=pid,
                severity=severity,
                code=code,
                message=message,
                value=value,
            )

        if d is None:
            if not settings.report_missing:
                return None
            return finding(
                Severity.WARNING,
                "missing_live_dir",
                f"{live} is missing on a host that holds the project",
            )
        if d.is_symlink:
            return finding(
                Severity.CRITICAL,
                "symlink",
                f"{live} is a symlink; not followed (a chown or rsync through it would "
                "act elsewhere)",
            )
        uid = project_uid_unchecked(pid)
        owners, sampled = _owner_counts(d)
        wrong = {u: n for u, n in owners.items() if u != uid}
        count = sum(wrong.values())
        if not count:
            return None
        examples = [p for u in sorted(wrong) for p in d.examples.get(u, ())][:3]
        if not examples and d.uid is not None and d.uid != uid:
            examples = ["."]
        shown = ", ".join(examples) or "none recorded"
        owners_text = ", ".join(f"uid {u}: {n}" for u, n in sorted(wrong.items()))
        of = f"the first {sampled}" if d.sample_truncated else f"{sampled}"
        critical = count > settings.critical_fraction * sampled
        return finding(
            Severity.CRITICAL if critical else Severity.WARNING,
            "wrong_owner",
            f"{count} of {of} sampled entries under {live} are not owned by the "
            f"project's uid {uid} ({owners_text}); e.g. {shown}",
            float(count),
        )


check = Ownership()
