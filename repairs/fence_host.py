"""fence_host: a host failing mount_sanity takes no new projects and is no replication target.

The fence is the watchdog's own ``fenced`` override (``watchdog/journal.py::apply_overrides``
then treats the host as experimental; resync_replica refuses fenced targets). Nothing runs on
the host and nothing is ever mounted: after a boot race, an operator must look at the host before
``/projects`` is trusted again. The plan's one step is therefore a pseudo-step ``on watchdog``
that describes the record; execute() writes it, and the journal's output says what was written.

Un-fencing is the same repair with ``params={"unfence": True}`` (an operator's request: alerts
and the schedule never set it): it refuses unless the host is fenced and passes mount_sanity now.
"""

from __future__ import annotations

from datetime import UTC, datetime

from repairs.base import (
    Mode,
    Outcome,
    Repair,
    RepairContext,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)
from watchdog.model import Finding

#: The pseudo host of plan steps that only change the watchdog's own records.
WATCHDOG = "watchdog"


def _unfence(req: RepairRequest) -> bool:
    return req.params.get("unfence") is True


class FenceHostSettings(RepairSettings):
    """fence_host: mark a host failing mount_sanity as fenced; never mounts anything."""

    mode: Mode = mode_field("auto")


class FenceHost(Repair[FenceHostSettings]):
    name = "fence_host"
    Settings = FenceHostSettings
    needs_project = False
    check = "mount_sanity"
    codes = (
        "missing",
        "not_mounted",
        "wrong_fstype",
        "wrong_source",
        "read_only",
        "no_mount_facts",
    )

    def _mount_findings(self, req: RepairRequest, ctx: RepairContext) -> list[Finding]:
        return [
            f for f in ctx.evaluate(self.check, (req.server_id,)) if f.server_id == req.server_id
        ]

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: FenceHostSettings
    ) -> list[str]:
        server = ctx.server(req.server_id)
        facts = ctx.facts(req.server_id)
        if not facts.probed:
            return [
                f"unreachable: cannot probe {server.label} now, so its mounts are unknown "
                f"({facts.failure_message}); reachability is the finding to act on"
            ]
        failing = self._mount_findings(req, ctx)
        if _unfence(req):
            if not ctx.fenced(req.server_id):
                return [f"not_fenced: {server.label} is not fenced"]
            if failing:
                return [
                    f"still_failing: {server.label} still fails mount_sanity: "
                    + "; ".join(f"{f.code}: {f.message}" for f in failing)
                ]
            return []
        if not failing:
            return [f"healthy: {server.label} passes mount_sanity now; nothing to fence"]
        if ctx.fenced(req.server_id):
            return [f"already_fenced: {server.label} is already fenced by the watchdog"]
        return []

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: FenceHostSettings
    ) -> list[Step]:
        label = ctx.server(req.server_id).label
        if _unfence(req):
            return [
                Step(
                    WATCHDOG,
                    ("clear-override", req.server_id, "fenced"),
                    f"remove the watchdog's fence on {label}: it takes new projects and "
                    "replicas again (no command runs on the host)",
                )
            ]
        return [
            Step(
                WATCHDOG,
                ("set-override", req.server_id, "fenced"),
                f"record {label} as fenced in the watchdog: no new projects, no replication "
                "target (no command runs on the host; nothing is mounted)",
            )
        ]

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: FenceHostSettings
    ) -> Outcome:
        label = ctx.server(req.server_id).label
        if _unfence(req):
            ctx.clear_override(req.server_id, "fenced")
            return Outcome(output=[f"watchdog: the fence on {label} is removed"])
        failing = self._mount_findings(req, ctx)
        reason = "; ".join(f"mount_sanity/{f.code}: {f.message}" for f in failing)
        value = {
            "reason": reason or req.reason or "mount_sanity failed",
            "codes": sorted({f.code for f in failing}),
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        ctx.set_override(req.server_id, "fenced", value)
        return Outcome(
            output=[
                f"watchdog: {label} is fenced (override fenced = {value}); it takes no new "
                "projects and is no replication target. Nothing was run on the host."
            ]
        )

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: FenceHostSettings
    ) -> tuple[bool, str]:
        """The fence is in place (or gone, for un-fence). The mount_sanity finding itself stays
        until a human fixes the mount: fencing only stops the damage from spreading."""
        label = ctx.server(req.server_id).label
        fenced = ctx.fenced(req.server_id)
        if _unfence(req):
            return (not fenced), f"{label} is {'still' if fenced else 'no longer'} fenced"
        return fenced, f"{label} is {'' if fenced else 'not '}fenced in the watchdog's overrides"


repair = FenceHost()
