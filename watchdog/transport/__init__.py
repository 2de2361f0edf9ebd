"""The one seam to the outside world of hosts: SSH for storage hosts, local for this machine."""

from bup_watchdog.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
