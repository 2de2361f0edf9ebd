"""The checks: one module per check, discovered from this package and registered strictly."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from bup_watchdog.checks.base import Check, CheckSettings


class RegistryError(Exception):
    """A check module is broken (no ``check`` object, or a duplicate name): fail at start-up."""


@cache
def registry() -> dict[str, Check[CheckSettings]]:
    """Every check by name. Each module in this package defines one module-level ``check``."""
    found: dict[str, Check[CheckSettings]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in {"base"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        check = getattr(module, "check", None)
        if not isinstance(check, Check):
            raise RegistryError(f"checks/{info.name}.py defines no module-level `check` object")
        if check.name in found:
            raise RegistryError(f"two checks are named {check.name!r} (checks/{info.name}.py)")
        if check.name != info.name:
            raise RegistryError(
                f"checks/{info.name}.py defines a check named {check.name!r}; "
                "the module and the check must share one name"
            )
        found[check.name] = check
    return found


def settings_models() -> dict[str, type[CheckSettings]]:
    """The settings model of every check, for the config schema."""
    return {name: c.Settings for name, c in registry().items()}
