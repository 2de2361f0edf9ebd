"""Inventory sources: where the watchdog learns which servers and projects exist."""

from bup_watchdog.inventory.base import InventorySource
from bup_watchdog.inventory.file import FileInventory

__all__ = ["FileInventory", "InventorySource"]
