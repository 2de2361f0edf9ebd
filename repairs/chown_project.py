"""chown_project: give a project's live files back to the project's uid, ``.snapshots`` skipped.

``.snapshots`` is a FUSE mount of bup history; walking or chowning it is slow at best and harmful
at worst, so ``find`` prunes it, and ``-xdev`` keeps the walk on the project's filesystem.
The tree's directories are the tenant's: ``chown`` runs with ``-execdir`` (from the directory
``find`` holds open, on ``./name``), so a directory swapped for a symlink between ``find``
listing a path and ``chown`` acting on it cannot steer root's chown out of the tree, which a
full path with ``-exec`` could (``--no-dereference`` guards only the last component).
"""

from __future__ import annotations

from pydantic import Field

from bup_watchdog.model import project_uid
from bup_watchdog.repairs.base import (
    Mode,
    Repair,
    RepairContext,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)


class ChownProjectSettings(RepairSettings):
    """chown_project: chown the project's live tree to its uid (.snapshots skipped)."""

    mode: Mode = mode_field("auto")
    timeout: float = Field(1800.0, gt=0, description="Seconds the chown of one project may take.")


class ChownProject(Repair[ChownProjectSettings]):
    name = "chown_project"
    Settings = ChownProjectSettings
    check = "ownership"
    codes = ("wrong_owner",)

    def _root(self, req: RepairRequest, ctx: RepairContext) -> str:
        assert req.project_id is not None
        return f"{ctx.server(req.server_id).projects_root.rstrip('/')}/{req.project_id}"

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: ChownProjectSettings
    ) -> list[str]:
        facts = ctx.facts(req.server_id, focus=req.project_id)
        if not facts.probed:
            return [f"unreachable: cannot probe the host now ({facts.failure_message})"]
        server = ctx.server(req.server_id)
        mount = facts.mounts.get(server.projects_root)
        if mount is None or not mount.is_mount_point:
            return [f"mount_sanity: {server.projects_root} is not mounted on {server.label}"]
        assert req.project_id is not None
        d = facts.project_dirs.get(req.project_id)
        if d is None:
            return [f"missing: {self._root(req, ctx)} does not exist"]
        if d.is_symlink:
            return [f"symlink: {self._root(req, ctx)} is a symlink; refusing to chown through it"]
        return []

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: ChownProjectSettings
    ) -> list[Step]:
        assert req.project_id is not None
        uid = project_uid(req.project_id)
        root = self._root(req, ctx)
        argv = (
            "find", root, "-xdev",
            "-path", f"{root}/.snapshots", "-prune", "-o",
            "!", "-uid", str(uid),
            "-execdir", "chown", "--no-dereference", f"{uid}:{uid}", "{}", "+",
        )  # fmt: skip
        return [Step(req.server_id, argv, f"chown {root} to {uid}:{uid}", timeout=settings.timeout)]


repair = ChownProject()
