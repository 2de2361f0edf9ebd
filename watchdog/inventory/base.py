"""The interface every inventory source implements."""

from __future__ import annotations

from typing import Protocol

from bup_watchdog.model import Inventory


class InventorySource(Protocol):
    """Loads the current inventory; raises InventoryError (or ConfigError) when it cannot."""

    name: str

    def load(self) -> Inventory: ...
