"""repo_integrity (cheap tier): the master ref is readable and its commit is in a pack index.

This is the tier every sweep can afford (FACTS.md: a pure-Python .idx lookup costs ~30 µs). It is
not a full integrity check: an older deleted pack or a damaged .idx table slip through; the deep
tier (``git fsck --connectivity-only`` + ``bup ls master``) catches those.
"""

from __future__ import annotations

from collections.abc import Iterator

from checks.base import Check, CheckSettings, FleetFacts
from watchdog.model import Finding, Inventory, RepoFacts, Severity


class RepoIntegritySettings(CheckSettings):
    """repo_integrity: master ref readable, its commit in a pack, the master copy present."""


def _problems(repo: RepoFacts) -> Iterator[tuple[Severity, str, str]]:
    if repo.is_symlink:
        yield Severity.CRITICAL, "symlink", "the repository directory is a symlink; not followed"
        return
    if repo.master_error:
        yield Severity.CRITICAL, "master_unreadable", repo.master_error
    elif repo.master_in_pack is False:
        yield (
            Severity.CRITICAL,
            "master_not_in_pack",
            f"master commit {repo.master_sha} is in no pack index with its pack "
            "(a deleted or lost .pack): bup cannot read the newest save",
        )
    for bad in repo.bad_idx:
        yield Severity.CRITICAL, "bad_idx", f"unreadable pack index: {bad}"
    if repo.head is not None and repo.head != "ref: refs/heads/master":
        yield Severity.WARNING, "odd_head", f"HEAD is {repo.head!r}, not refs/heads/master"
    for err in repo.errors:
        yield Severity.WARNING, "probe_error", err


class RepoIntegrity(Check[RepoIntegritySettings]):
    name = "repo_integrity"
    Settings = RepoIntegritySettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: RepoIntegritySettings
    ) -> Iterator[Finding]:
        for sid, host in sorted(facts.items()):
            if not host.probed:
                continue
            for pid, repo in sorted(host.repos.items()):
                for severity, code, message in _problems(repo):
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        project_id=pid,
                        severity=severity,
                        code=code,
                        message=message,
                    )
        for project in sorted(inventory.projects.values(), key=lambda p: p.project_id):
            master = facts.get(project.master)
            if project.deleted or master is None or not master.probed:
                continue
            if project.project_id not in master.repos:
                yield Finding(
                    check=self.name,
                    server_id=project.master,
                    project_id=project.project_id,
                    severity=Severity.CRITICAL,
                    code="master_missing",
                    message="the master copy of the repository is missing on its master server",
                )


check = RepoIntegrity()
