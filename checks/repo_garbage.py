"""repo_garbage: leftovers and clutter in a bup repository that the ``clean_repo`` repair removes.

``objects/*tmp*`` files are what an interrupted ``bup save`` or ``git`` leaves behind (a save in
progress has them too, for its duration); ``*.midx`` and ``bupindex`` are bup caches that can grow
stale or huge; thousands of packs make every object lookup slow. A ``.idx`` without its ``.pack``
is git's business to ignore, and garbage only while the master commit is still readable: when it
is not, repo_integrity reports the lost pack and this check stays quiet about its index. A symlink
leading out of the repository is critical: a repair writing through it would write elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import Finding, Inventory, RepoFacts, Severity

MB = 1_000_000


class RepoGarbageSettings(CheckSettings):
    """repo_garbage: how much clutter a bup repository may hold before it is reported."""

    max_tmp_objects: int = Field(
        0, ge=0, description="Leftover objects/*tmp* files a repository may hold."
    )
    max_midx: int = Field(
        10,
        ge=0,
        description="*.midx files a repository may hold (bup makes some itself; many are stale).",
    )
    max_bupindex_bytes: int = Field(
        100 * MB, ge=0, description="Size the bupindex files of a repository may reach."
    )
    max_packs: int = Field(
        500, ge=0, description="Pack files a repository may hold before a repack is due."
    )


def _garbage(repo: RepoFacts, s: RepoGarbageSettings) -> Iterator[tuple[Severity, str, str, float]]:
    if repo.symlinks_outside:
        count = max(repo.symlinks_outside_count, len(repo.symlinks_outside))
        shown = ", ".join(repo.symlinks_outside[:5])
        yield (
            Severity.CRITICAL,
            "symlink_outside",
            f"{count} symlink(s) lead out of the repository ({shown}): "
            "a repair writing through them would write outside it",
            float(count),
        )
    if repo.tmp_count > s.max_tmp_objects:
        yield (
            Severity.WARNING,
            "tmp_objects",
            f"{repo.tmp_count} leftover objects/*tmp* file(s) (an interrupted save, unless one "
            "is running now)",
            float(repo.tmp_count),
        )
    if repo.midx_count > s.max_midx:
        yield (
            Severity.WARNING,
            "midx",
            f"{repo.midx_count} *.midx files (more than {s.max_midx})",
            float(repo.midx_count),
        )
    if repo.bupindex_bytes is not None and repo.bupindex_bytes > s.max_bupindex_bytes:
        yield (
            Severity.WARNING,
            "bupindex",
            f"bupindex is {repo.bupindex_bytes / MB:.0f} MB "
            f"(limit {s.max_bupindex_bytes / MB:.0f} MB)",
            float(repo.bupindex_bytes),
        )
    if repo.pack_count > s.max_packs:
        yield (
            Severity.WARNING,
            "too_many_packs",
            f"{repo.pack_count} packs (more than {s.max_packs}): a repack is due",
            float(repo.pack_count),
        )
    if repo.idx_without_pack > 0 and repo.master_in_pack is not False:
        yield (
            Severity.WARNING,
            "orphan_idx",
            f"{repo.idx_without_pack} pack index(es) without their .pack",
            float(repo.idx_without_pack),
        )


class RepoGarbage(Check[RepoGarbageSettings]):
    name = "repo_garbage"
    Settings = RepoGarbageSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: RepoGarbageSettings
    ) -> Iterator[Finding]:
        tmp, midx, packs = settings.max_tmp_objects, settings.max_midx, settings.max_packs
        bupindex = settings.max_bupindex_bytes
        for host in probed_hosts(facts):
            for pid, repo in host.repos.items():
                odd = repo.odd  # read directly, not through RepoFacts' properties
                if odd.is_symlink:
                    continue  # not walked; repo_integrity reports it
                if (  # nothing for _garbage to say (most repositories): decided without it
                    not odd.symlinks_outside
                    and odd.tmp_count <= tmp
                    and odd.midx_count <= midx
                    and repo.pack_count <= packs
                    and odd.idx_without_pack <= 0
                    and ((index := repo.bupindex_bytes) is None or index <= bupindex)
                ):
                    continue
                for severity, code, message, value in _garbage(repo, settings):
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        project_id=pid,
                        severity=severity,
                        code=code,
                        message=message,
                        value=value,
                    )


check = RepoGarbage()
