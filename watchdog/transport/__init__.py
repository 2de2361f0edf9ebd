"""The one seam to the outside world of hosts: SSH for storage hosts, local for this machine."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

from bup_watchdog.transport.base import CommandResult, Transport


class _DeferredInvoke(types.ModuleType):
    """Stands in for ``invoke`` until one of its names is used, then hands over to the real one.

    paramiko imports invoke at start-up only to run an ssh_config ``Match exec`` (never for our
    sessions); invoke pulls in asyncio and unittest.mock: about a third of paramiko's import, in
    every ``bup-watchdog check`` (issue 20, end to end). Thread-safe, unlike Python 3.11's
    ``importlib.util.LazyLoader``: hosts are gathered in threads.
    """

    _lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        with self._lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
        return getattr(real, name)


def _defer_invoke() -> None:
    """Put the stand-in in place before paramiko is imported (transport/ssh*.py import it)."""
    if "invoke" in sys.modules or "paramiko" in sys.modules:
        return
    spec = importlib.util.find_spec("invoke")
    if spec is None:  # not installed: paramiko copes with the ImportError itself
        return
    stand_in = _DeferredInvoke("invoke")
    stand_in.__spec__ = spec
    sys.modules["invoke"] = stand_in


_defer_invoke()

__all__ = ["CommandResult", "Transport"]
