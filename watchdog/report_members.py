"""The watchdogs sharing the fleet (``[membership]``) and who owns which host: one view for
``GET /api/members`` and the audit report's "Watchdogs" section.

Built from what the last sweep read (``State.meta()["membership"]``, written by the runner):
heartbeat ages are as of that read, so an operator sees a member that stopped heartbeating, and
the hosts it still owns (owned by nobody alive until the others' next sweep takes them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def members_view(
    view: dict[str, Any] | None, now: float, label: Callable[[str], str] = str
) -> dict[str, Any]:
    """The member list with heartbeat ages, each host's owner, and the hosts owned by none."""
    if not view:
        return {"enabled": False, "members": [], "owners": {}, "owned_by_none": []}
    ttl = float(view.get("ttl_seconds") or 0)
    at = float(view.get("at") or now)
    members = []
    stale = set()
    owners: dict[str, str] = view.get("owners") or {}
    for m in view.get("members", []):
        beat = m.get("heartbeat")
        age = None if beat is None else round(max(0.0, at - float(beat)), 1)
        if age is None or age > ttl:
            stale.add(m["id"])
        hosts = sorted(label(sid) for sid, who in owners.items() if who == m["id"])
        members.append({**m, "heartbeat_age_seconds": age, "hosts": hosts})
    return {
        "enabled": True,
        "member": view.get("member"),
        "as_of": at,
        "age_seconds": round(max(0.0, now - at), 1),
        "ttl_seconds": ttl,
        "members": members,
        "owners": owners,
        "owned_by_none": sorted(label(sid) for sid, who in owners.items() if who in stale),
    }
