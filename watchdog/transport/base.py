"""What every transport offers: run an argument list on a host, with limits; stream its lines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Exit status and (capped) output of one command."""

    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(Protocol):
    """Runs commands on one host. Argument lists only: a transport quotes, callers never do."""

    label: str
    sessions_opened: int

    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        no_progress: float | None = None,
    ) -> CommandResult:
        """Run to completion within ``timeout``; with ``no_progress``, give up sooner when the
        command shows no sign of progress (no output, and the host silent or the command idle)
        for that long."""
        ...

    def stream_lines(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Iterator[bytes]: ...

    def close(self) -> None: ...
