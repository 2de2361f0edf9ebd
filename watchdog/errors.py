"""The watchdog's exception tree: every message is written for an operator, not a developer."""

from __future__ import annotations


class WatchdogError(Exception):
    """Base of every error the watchdog raises on purpose.

    ``permanent`` says whether retrying can help (a bad host key will not fix itself; a
    timeout may).
    """

    permanent: bool = False

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(WatchdogError):
    """The configuration (or an inventory file) is invalid; carries every problem found."""

    permanent = True

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source} is not valid:\n{lines}")


class InventoryError(WatchdogError):
    """The inventory could not be read or holds entries that cannot be used."""


class TransportError(WatchdogError):
    """Talking to a host failed; the message says how in one line."""


class HostUnreachable(TransportError):
    """The host did not answer (refused, timed out, unresolvable)."""


class HostKeyError(TransportError):
    """The host's key is unknown or changed: a security problem, never retried or accepted."""

    permanent = True


class CommandTimeout(TransportError):
    """A command on a host did not finish within its time limit."""


class ProbeError(WatchdogError):
    """The host answered, but not with the probe's facts (garbage, truncated, too large)."""


class RepairRefused(WatchdogError):
    """The guard refused a repair; the message is the reason that goes into the journal."""

    permanent = True


#: The kinds of LocalFault, as the ``kind`` label of ``bupwatch_watchdog_problem``.
LOCAL_FAULT_KINDS = ("file_descriptors", "key_file", "known_hosts", "ssh_config")


class LocalFault(WatchdogError):
    """The watchdog's own machine is at fault, not a host: a missing known_hosts, an unreadable
    key file, no file descriptors left. Never a host finding and never counted by the breaker:
    the sweep says so (``check`` exits 3, ``/ready`` answers 503) and judges nothing it could not
    see. ``kind`` names the fault for the metric: known_hosts, key_file, file_descriptors."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
