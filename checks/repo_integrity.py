"""repo_integrity: the master ref is readable, its commit is in a pack, and deep checks pass.

Cheap tier, every sweep (FACTS.md: a pure-Python .idx lookup costs ~30 µs): master ref readable,
its commit in a pack index whose pack exists. It is not a full integrity check: an older deleted
pack or a damaged .idx table slip through. The deep tier (``git fsck --connectivity-only`` +
``bup ls master``, on a rolling budget, see ``watchdog/deep.py``) catches those; its latest result
for the repository's current master is judged here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts
from bup_watchdog.model import Finding, Inventory, RepoFacts, Severity


class RepoIntegritySettings(CheckSettings):
    """repo_integrity: master ref readable, its commit in a pack, the master copy present."""


def _healthy(repo: RepoFacts) -> bool:
    """No cheap-tier problem at all (what ``_problems`` would find nothing in): most repos."""
    odd = repo.odd  # read directly, not through RepoFacts' properties: once per repository
    return not (
        odd.is_symlink
        or odd.master_error
        or repo.master_in_pack is False
        or odd.bad_idx
        or odd.errors
        or not _head_usable(repo.head)
    )


_SHA = re.compile(r"[0-9a-f]{40}")


# Remembered: a fleet's HEADs are a handful of texts (``ref: refs/heads/master`` in almost every
# repository), and scanning one for whitespace cost ~2 µs per repository per sweep.
@lru_cache(maxsize=1024)
def _head_usable(head: str | None) -> bool:
    """Whether git takes HEAD as a repository's (a symbolic ref under refs/, or a commit id).

    Which branch it names does not matter: bup reads and writes refs/heads/master whatever HEAD
    says, so ``ref: refs/heads/main`` is no finding. Anything else makes git (and so ``git
    fsck``, the deep check) refuse the directory as a repository. A missing HEAD (None) is
    left to the deep check.
    """
    if head is None:
        return True
    ref = head.removeprefix("ref: ")
    if ref != head:
        return ref.startswith("refs/") and not any(c.isspace() for c in ref)
    return _SHA.fullmatch(head) is not None


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
    if not _head_usable(repo.head):
        yield (
            Severity.WARNING,
            "bad_head",
            f"HEAD is {repo.head!r:.80}: neither a ref under refs/ nor a commit id, so git does "
            "not take the directory as a repository",
        )
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
            if host.deep_error:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.WARNING,
                    code="deep_check_error",
                    message=f"deep checks could not run: {host.deep_error}",
                )
            deep_results = host.deep
            for pid, repo in host.repos.items():
                deep = deep_results.get(pid)
                if (deep is None or deep.ok) and _healthy(repo):
                    continue  # nothing to say: most repositories
                problems = list(_problems(repo))
                for severity, code, message in problems:
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        project_id=pid,
                        severity=severity,
                        code=code,
                        message=message,
                    )
                cheap_critical = any(sev is Severity.CRITICAL for sev, _, _ in problems)
                # A result for an older master is stale: the repo is re-checked at once instead.
                if (
                    deep
                    and not deep.ok
                    and deep.master_sha == repo.master_sha
                    and not cheap_critical
                ):
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        project_id=pid,
                        severity=Severity.CRITICAL,
                        code="deep_check_failed",
                        message=deep.message or "deep check failed",
                        details={"checked_at": deep.checked_at},
                    )
        repos = {sid: host.repos for sid, host in facts.items() if host.probed}
        for project in inventory.projects.values():
            held = repos.get(project.master)
            if held is None or project.deleted:
                continue
            if project.project_id not in held:
                yield Finding(
                    check=self.name,
                    server_id=project.master,
                    project_id=project.project_id,
                    severity=Severity.CRITICAL,
                    code="master_missing",
                    message="the master copy of the repository is missing on its master server",
                )


check = RepoIntegrity()
