"""Repairs: one module per repair (preconditions, plan, execute, verify), run only by the guard."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from bup_watchdog.repairs.base import Repair, RepairSettings


class RegistryError(Exception):
    """A repair module is broken (no ``repair`` object, or a duplicate name)."""


@cache
def registry() -> dict[str, Repair[RepairSettings]]:
    """Every repair by name. Each module in this package defines one module-level ``repair``."""
    found: dict[str, Repair[RepairSettings]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        repair = getattr(module, "repair", None)
        if not isinstance(repair, Repair):
            raise RegistryError(f"repairs/{info.name}.py defines no module-level `repair` object")
        if repair.name != info.name:
            raise RegistryError(
                f"repairs/{info.name}.py defines a repair named {repair.name!r}; "
                "the module and the repair must share one name"
            )
        found[repair.name] = repair
    return found


def settings_models() -> dict[str, type[RepairSettings]]:
    return {name: r.Settings for name, r in registry().items()}
