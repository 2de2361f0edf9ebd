"""What a check is: a name, a typed settings model with defaults, and a pure ``evaluate``.

A check does no I/O. It reads the facts a sweep gathered (plus the inventory and its settings) and
returns findings, so every check can be tested from recorded facts and all checks share one gather.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from bup_watchdog.model import Finding, HostFacts, Inventory


class CheckSettings(BaseModel):
    """Settings every check has."""

    # inf and nan (TOML has both) pass every ge= bound and crash later: refused here
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    enabled: bool = Field(True, description="Run this check.")
    interval_seconds: float = Field(
        0.0,
        ge=0,
        description="Run at most this often (0: in every sweep). Sweeps share one gather.",
    )


S = TypeVar("S", bound=CheckSettings)

FleetFacts = Mapping[str, HostFacts]
"""The facts of one sweep, by server id."""


class Check(Generic[S]):
    """Base class of a check; subclasses set ``name``, ``Settings`` and implement ``evaluate``."""

    name: ClassVar[str]
    Settings: ClassVar[type[CheckSettings]]
    summary: ClassVar[str] = ""
    #: Whether the check judges a host whose probe did not answer (reachability does: that is
    #: its finding). The others see nothing of such a host, which is no proof that it passes.
    judges_unprobed: ClassVar[bool] = False

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: S
    ) -> Iterable[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def unjudged(
        self, facts: FleetFacts, inventory: Inventory, settings: S
    ) -> Iterable[tuple[str, str]]:
        """(server id, project id) on hosts this sweep probed that the check could not judge,
        because what it compares them with is missing (a peer host down or not swept by this
        watchdog): their open findings stay open instead of being resolved. Most checks judge
        every project of a probed host on its own facts and have none."""
        return ()


def probed_hosts(facts: FleetFacts) -> Iterable[HostFacts]:
    """Hosts whose probe answered completely; others are reachability's business."""
    return (f for f in facts.values() if f.probed)
