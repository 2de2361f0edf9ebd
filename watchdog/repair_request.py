"""What a face (the CLI, the HTTP API, Alertmanager's webhook, the daemon's schedule) hands the
guard: which repair, on which target, asked by whom and why.

The guard's own type; the faces import it from ``bup_watchdog.guard`` and never reach into
``repairs/``. The repairs read it (``repairs.base`` names it for them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """A wish to repair something, from the schedule, the CLI, the API or an alert."""

    repair: str
    server_id: str
    project_id: str | None = None
    requested_by: str = "cli"
    reason: str = ""
    fingerprint: str | None = None
    #: Extra validated parameters (e.g. the master for resync_replica comes from the inventory).
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """What the lease is taken on: a project's copy on a server, or the server."""
        return f"{self.server_id}/{self.project_id}" if self.project_id else self.server_id
