"""fence_host on a real host with /projects unmounted: fenced, never mounted, un-fenced later."""

from __future__ import annotations

from bup_watchdog.gather import gather_host
from bup_watchdog.guard import Guard
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from support.fleet import make_guard


def unmount_projects(fleet: SandboxFleet, guard: Guard, name: str) -> None:
    """Unmount /projects inside the host, and see it unmounted in a fresh probe."""
    host = fleet.hosts[name]
    done = host.run(["umount", host.projects_root])
    assert done.returncode == 0, done.stderr
    facts = gather_host(guard.inventory.servers[host.server_id], guard.config.ssh)
    assert facts.probed and not facts.mounts[host.projects_root].is_mount_point


def projects_mounted(fleet: SandboxFleet, name: str) -> bool:
    host = fleet.hosts[name]
    return host.run(["findmnt", "--mountpoint", host.projects_root]).returncode == 0


def test_fence_host_fences_a_host_whose_projects_is_unmounted_and_mounts_nothing(
    scratch_fleet: SandboxFleet,
) -> None:
    guard = make_guard(scratch_fleet)
    s2 = scratch_fleet.server_id("s2")
    unmount_projects(scratch_fleet, guard, "s2")

    decision = guard.submit(RepairRequest("fence_host", s2), execute=True)

    assert decision.status == "succeeded", decision.message
    fence = guard.journal.overrides()[s2]["fenced"]
    assert "not_mounted" in fence["reason"] and fence["codes"] == ["not_mounted"]
    assert fence["time"].endswith("Z")
    inventory = load_inventory(inventory_source(guard.config), guard.state)
    assert inventory.servers[s2].experimental
    assert not inventory.servers[scratch_fleet.server_id("s1")].experimental
    assert not projects_mounted(scratch_fleet, "s2")
    [step] = decision.plan
    assert step["on"] == "watchdog" and "nothing is mounted" in step["description"]
    entry = guard.journal.get(decision.entry_id)
    assert entry is not None and "is fenced" in (entry.output or "")


def test_fence_host_refuses_to_fence_a_healthy_host(scratch_fleet: SandboxFleet) -> None:
    guard = make_guard(scratch_fleet)
    s1 = scratch_fleet.server_id("s1")

    decision = guard.submit(RepairRequest("fence_host", s1), execute=True)

    assert decision.status == "refused"
    [entry] = guard.journal.entries(status="refused")
    assert (entry.refusal or "").startswith("precondition: healthy:")
    assert "passes mount_sanity" in (entry.refusal or "")
    assert guard.journal.overrides() == {}


def test_unfence_lifts_the_fence_only_once_the_mounts_are_sane_again(
    scratch_fleet: SandboxFleet,
) -> None:
    guard = make_guard(scratch_fleet)
    s2 = scratch_fleet.server_id("s2")
    host = scratch_fleet.hosts["s2"]
    unfence = RepairRequest("fence_host", s2, params={"unfence": True})
    not_fenced = guard.submit(unfence, execute=True)
    unmount_projects(scratch_fleet, guard, "s2")
    assert guard.submit(RepairRequest("fence_host", s2), execute=True).status == "succeeded"

    still_failing = guard.submit(unfence, execute=True)
    host.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=64m,mode=755",
            "sandbox-projects-s2",
            host.projects_root,
        ],
        check=True,
    )
    lifted = guard.submit(unfence, execute=True)

    assert not_fenced.status == still_failing.status == "refused"
    refusals = [e.refusal or "" for e in guard.journal.entries(status="refused")]
    assert any(r.startswith("precondition: not_fenced:") for r in refusals)
    assert any(r.startswith("precondition: still_failing:") for r in refusals)
    assert lifted.status == "succeeded", lifted.message
    assert "fenced" not in guard.journal.overrides().get(s2, {})
    inventory = load_inventory(inventory_source(guard.config), guard.state)
    assert not inventory.servers[s2].experimental
