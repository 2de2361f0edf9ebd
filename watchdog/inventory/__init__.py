"""Inventory sources: where the watchdog learns which servers and projects exist."""

from watchdog.inventory.base import InventorySource
from watchdog.inventory.file import FileInventory

__all__ = ["FileInventory", "InventorySource"]
