"""fence_host: a host failing mount_sanity takes no new projects and is no replication target.

The fence is the watchdog's own ``fenced`` override (``watchdog/journal.py::apply_overrides``
then treats the host as experimental; resync_replica refuses fenced targets). Nothing runs on
the host and nothing is ever mounted: after a boot race, an operator must look at the host before
``/projects`` is trusted again. The plan's one step is therefore a pseudo-step ``on watchdog``
that describes the record; execute() writes it, and the journal's output says what was written.

Un-fencing is the same repair with ``params={"unfence": True}`` (an operator's request: alerts
and the schedule never set it): it refuses unless the host is fenced and passes mount_sanity now.

With the Cassandra inventory the fence is also written through to the fleet's database
(``watchdog/fences.py``): ``storage_servers.experimental = true``, its previous value recorded
in ``bupwatch_fences`` and written back by un-fencing. The local override stays either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bup_watchdog.errors import WatchdogError
from bup_watchdog.model import Finding
from bup_watchdog.repairs.base import (
    Mode,
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)

# fences.py builds on the Cassandra inventory (and ssl): every config load imports this module
# (the repairs' settings are validated), a fence is written only when the repair runs.
if TYPE_CHECKING:
    from bup_watchdog.fences import FenceRecord

#: The pseudo host of plan steps that only change the watchdog's own records.
WATCHDOG = "watchdog"


def _unfence(req: RepairRequest) -> bool:
    return req.params.get("unfence") is True


def _recorded(ctx: RepairContext, server_id: str) -> tuple[bool, FenceRecord | None]:
    """(writes through?, the fence recorded in Cassandra)."""
    from bup_watchdog.fences import write_through

    store = write_through(ctx)
    if store is None:
        return False, None
    with store:
        return True, store.record(server_id)


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
        through, recorded = _recorded(ctx, req.server_id)
        if _unfence(req):
            if not ctx.fenced(req.server_id) and recorded is None:
                return [f"not_fenced: {server.label} is not fenced"]
            if failing:
                return [
                    f"still_failing: {server.label} still fails mount_sanity: "
                    + "; ".join(f"{f.code}: {f.message}" for f in failing)
                ]
            return []
        if not failing:
            return [f"healthy: {server.label} passes mount_sanity now; nothing to fence"]
        if ctx.fenced(req.server_id) and (not through or recorded is not None):
            return [f"already_fenced: {server.label} is already fenced by the watchdog"]
        return []

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: FenceHostSettings
    ) -> list[Step]:
        from bup_watchdog.fences import writes_through

        label = ctx.server(req.server_id).label
        through = writes_through(ctx)
        if _unfence(req):
            steps = [
                Step(
                    WATCHDOG,
                    ("clear-override", req.server_id, "fenced"),
                    f"remove the watchdog's fence on {label}: it takes new projects and "
                    "replicas again (no command runs on the host)",
                )
            ]
            if through:
                steps.append(
                    Step(
                        WATCHDOG,
                        ("cassandra-restore", "storage_servers.experimental", req.server_id),
                        f"write back {label}'s storage_servers.experimental as recorded in "
                        "bupwatch_fences, and delete the record",
                    )
                )
            return steps
        steps = [
            Step(
                WATCHDOG,
                ("set-override", req.server_id, "fenced"),
                f"record {label} as fenced in the watchdog: no new projects, no replication "
                "target (no command runs on the host; nothing is mounted)",
            )
        ]
        if through:
            steps.append(
                Step(
                    WATCHDOG,
                    ("cassandra-set", "storage_servers.experimental", req.server_id, "true"),
                    f"set {label}'s storage_servers.experimental = true in Cassandra, its "
                    "previous value recorded in bupwatch_fences",
                )
            )
        return steps

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: FenceHostSettings
    ) -> Outcome:
        from bup_watchdog.fences import write_through

        label = ctx.server(req.server_id).label
        store = write_through(ctx)
        if _unfence(req):
            ctx.clear_override(req.server_id, "fenced")
            output = [f"watchdog: the fence on {label} is removed"]
            if store is not None:
                with store:
                    try:
                        output.append(store.unfence(req.server_id))
                    except WatchdogError as exc:
                        raise RepairError(
                            f"the watchdog's fence on {label} is removed, but Cassandra's "
                            f"experimental flag is not restored: {exc}"
                        ) from None
            return Outcome(output=output)
        failing = self._mount_findings(req, ctx)
        reason = "; ".join(f"mount_sanity/{f.code}: {f.message}" for f in failing)
        why = reason or req.reason or "mount_sanity failed"
        value = {
            "reason": why,
            "codes": sorted({f.code for f in failing}),
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        ctx.set_override(req.server_id, "fenced", value)
        output = [
            f"watchdog: {label} is fenced (override fenced = {value}); it takes no new "
            "projects and is no replication target. Nothing was run on the host."
        ]
        if store is not None:
            with store:
                try:
                    output.append(store.fence(req.server_id, by=req.requested_by, reason=why))
                except WatchdogError as exc:
                    raise RepairError(
                        f"{label} is fenced in the watchdog, but not in Cassandra: {exc}"
                    ) from None
        return Outcome(output=output)

    def verify(
        self, req: RepairRequest, ctx: RepairContext, settings: FenceHostSettings
    ) -> tuple[bool, str]:
        """The fence is in place (or gone, for un-fence). The mount_sanity finding itself stays
        until a human fixes the mount: fencing only stops the damage from spreading."""
        from bup_watchdog.fences import write_through

        label = ctx.server(req.server_id).label
        fenced = ctx.fenced(req.server_id)
        store = write_through(ctx)
        if store is None:
            if _unfence(req):
                return (not fenced), f"{label} is {'still' if fenced else 'no longer'} fenced"
            where = "fenced in the watchdog's overrides"
            return fenced, f"{label} is {'' if fenced else 'not '}{where}"
        with store:
            recorded = store.record(req.server_id)
            _, flag = store.experimental(req.server_id)
        if _unfence(req):
            ok = not fenced and recorded is None
            return ok, (
                f"{label} is {'still' if fenced else 'no longer'} fenced in the watchdog; "
                f"{'a' if recorded else 'no'} fence is recorded in Cassandra; "
                f"storage_servers.experimental is {flag}"
            )
        ok = fenced and recorded is not None and flag is True
        return ok, (
            f"{label} is {'' if fenced else 'not '}fenced in the watchdog's overrides; "
            f"storage_servers.experimental is {flag} in Cassandra "
            f"({'previous value recorded' if recorded else 'no fence recorded'})"
        )


repair = FenceHost()
