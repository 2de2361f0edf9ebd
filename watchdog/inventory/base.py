"""The interface every inventory source implements."""

from __future__ import annotations

from typing import Protocol

from bup_watchdog.model import Inventory


class InventorySource(Protocol):
    """Loads the current inventory; raises InventoryError (or ConfigError) when it cannot."""

    name: str

    def load(self) -> Inventory: ...


class InventoryWriter(InventorySource, Protocol):
    """An inventory that a repair may change: one compare-and-swap on a project's master."""

    def set_master(self, project_id: str, old: str, new: str) -> bool:
        """Make ``new`` the master (and ``old`` a replica) only while the master is ``old``;
        False when it is not (someone changed it meanwhile): nothing written then."""
        ...
