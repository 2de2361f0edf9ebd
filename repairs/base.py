"""What a repair is: preconditions, an exact plan, execute, verify — run only by the guard.

A repair never decides on its own that it may run: the guard (``watchdog/guard.py``) checks mode,
leases, limits, the circuit breaker and the repair's preconditions, journals the intent, and only
then calls ``execute``. A repair reaches hosts only through the context's transports, with
argument lists built from validated values.
"""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from bup_watchdog.errors import WatchdogError
from bup_watchdog.model import Finding, HostFacts, Inventory, Project, Server
from bup_watchdog.repair_request import RepairRequest as RepairRequest  # the guard's type
from bup_watchdog.transport.base import CommandResult, Transport

Mode = Literal["off", "dry-run", "approve", "auto"]


def mode_field(default: Mode) -> Any:
    """The ``mode`` setting with a repair's own default (DESIGN §4)."""
    return Field(
        default,
        description="off: never; dry-run: plan shown and journaled, nothing run; approve: "
        "queued until an operator approves; auto: run when asked.",
    )


def exit_status(returncode: int) -> str:
    """An exit status as an operator reads it: a signal named, SSH's "none came" said so."""
    if returncode == -1:  # SSH: the channel closed without an exit status (OpenSSH sends a
        # signal's name instead, which paramiko drops): killed, or the connection ended
        return "-1 (no exit status: killed by a signal, or its connection closed)"
    if returncode < 0:  # a local subprocess: minus the signal's number
        try:
            return f"{returncode} (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f"{returncode} (killed by signal {-returncode})"
    return str(returncode)


def step_failed(step: Step, result: CommandResult, why: str) -> str:
    """The sentence a failed step leaves in the journal: which step, its status, the last word."""
    status = exit_status(result.returncode)
    return f"step '{step.description[:200]}' failed with status {status}: {why}"


class RepairSettings(BaseModel):
    """Settings every repair has."""

    # inf and nan (TOML has both) pass every ge= bound and crash later: refused here
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    mode: Mode = mode_field("approve")
    max_per_hour: int = Field(
        10, ge=0, description="At most this many runs of this repair per hour, fleet-wide."
    )


class RepairError(WatchdogError):
    """A repair step failed; the message is what the journal and the operator see."""


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a plan: where it runs and its exact argument list."""

    server_id: str
    argv: tuple[str, ...]
    description: str
    stdin: bytes | None = None
    timeout: float = 300.0

    def as_dict(self, servers: dict[str, Server] | None = None) -> dict[str, Any]:
        where = (
            servers[self.server_id].label
            if servers and self.server_id in servers
            else self.server_id
        )
        return {
            "on": where,
            "server_id": self.server_id,
            "command": shlex.join(self.argv),
            "description": self.description,
        }


@dataclass(slots=True)
class Outcome:
    """What ``execute`` reports: ``status`` is 'succeeded' or 'conflict' (a deliberate stop)."""

    status: Literal["succeeded", "conflict"] = "succeeded"
    output: list[str] = field(default_factory=list)


class RepairContext(Protocol):
    """What a repair may use: the inventory, fresh facts, transports, the watchdog's overrides."""

    inventory: Inventory
    python: str

    def server(self, server_id: str) -> Server: ...

    def project(self, project_id: str) -> Project | None: ...

    def transport(self, server_id: str) -> Transport: ...

    def run(self, step: Step) -> CommandResult: ...

    def facts(
        self, server_id: str, deep_ids: tuple[str, ...] = (), *, focus: str | None = None
    ) -> HostFacts: ...

    def evaluate(
        self, check: str, server_ids: tuple[str, ...], *, focus: str | None = None
    ) -> list[Finding]: ...

    def fenced(self, server_id: str) -> bool: ...

    def set_override(self, server_id: str, key: str, value: Any) -> None: ...

    def clear_override(self, server_id: str, key: str) -> None: ...


S = TypeVar("S", bound=RepairSettings)


class Repair(Generic[S]):
    """Base class of a repair. Subclasses set the class attributes and the four methods."""

    name: ClassVar[str]
    Settings: ClassVar[type[RepairSettings]]
    #: True when the target is a project's copy on a server, False when it is a server.
    needs_project: ClassVar[bool] = True
    #: The check whose findings this repair clears; verify() runs it again.
    check: ClassVar[str] = ""
    #: The finding codes of that check this repair answers (for schedule and alert mapping).
    codes: ClassVar[tuple[str, ...]] = ()

    def leased(self, req: RepairRequest, inventory: Inventory) -> tuple[str, ...]:
        """The targets this repair may write to, each leased for its run (one repair at a time on
        each): its own; a repair that also writes to another copy adds that copy's target."""
        return (req.target,)

    def preconditions(self, req: RepairRequest, ctx: RepairContext, settings: S) -> list[str]:
        """Reasons to refuse, each 'code: sentence'. Empty: the repair may run now."""
        return []

    def plan(self, req: RepairRequest, ctx: RepairContext, settings: S) -> list[Step]:
        """The exact commands execute() would run (shown in dry-run and journaled)."""
        raise NotImplementedError

    def execute(
        self, req: RepairRequest, plan: list[Step], ctx: RepairContext, settings: S
    ) -> Outcome:
        """Run the plan step by step; stop at the first failing step (RepairError)."""
        out = Outcome()
        for step in plan:
            result = ctx.run(step)
            text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
            out.output.append(f"$ {shlex.join(step.argv)}  # rc={result.returncode}")
            if text:
                out.output.append(text[-2000:])
            if not result.ok:
                raise RepairError(
                    step_failed(step, result, text.splitlines()[-1] if text else "no output")
                )
        return out

    def verify(self, req: RepairRequest, ctx: RepairContext, settings: S) -> tuple[bool, str]:
        """Run the triggering check again on the target: success only when it passes."""
        findings = [
            f
            for f in ctx.evaluate(self.check, (req.server_id,), focus=req.project_id)
            if f.server_id == req.server_id
            and (not self.needs_project or f.project_id == req.project_id)
            and (not self.codes or f.code in self.codes)
        ]
        if findings:
            return False, "; ".join(f"{f.check}/{f.code}: {f.message}" for f in findings)
        return True, f"{self.check} passes on {req.target}"
