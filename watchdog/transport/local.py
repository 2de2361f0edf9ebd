"""Commands on the machine the watchdog runs on, with the same limits as the SSH seam."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

from watchdog.errors import CommandTimeout, ProbeError, TransportError
from watchdog.transport.base import CommandResult


class LocalTransport:
    """Runs argument lists locally (no shell), for a storage host that is this machine."""

    def __init__(
        self, label: str = "localhost", *, timeout: float = 300.0, max_output_bytes: int = 256 << 20
    ) -> None:
        self.label = label
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self.sessions_opened = 0

    def run(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        limit = timeout or self.timeout
        started = time.monotonic()
        self.sessions_opened += 1
        try:
            proc = subprocess.run(
                argv, input=stdin or b"", capture_output=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"{self.label}: {argv[0]} did not finish within {limit:g} s"
            ) from None
        except OSError as exc:
            raise TransportError(f"{self.label}: cannot run {argv[0]}: {exc.strerror}") from None
        if len(proc.stdout) > self.max_output_bytes:
            raise ProbeError(
                f"{self.label}: {argv[0]} printed more than {self.max_output_bytes} bytes"
            )
        return CommandResult(
            proc.returncode, proc.stdout, proc.stderr[-65536:], time.monotonic() - started
        )

    def stream_lines(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Iterator[bytes]:
        result = self.run(argv, stdin=stdin, timeout=timeout)
        if not result.ok:
            tail = result.stderr.decode("utf-8", "replace").strip().splitlines()
            last = tail[-1] if tail else "no error output"
            raise TransportError(
                f"{self.label}: {argv[0]} exited with status {result.returncode}: {last}"
            )
        yield from result.stdout.splitlines()

    def close(self) -> None:
        return None
