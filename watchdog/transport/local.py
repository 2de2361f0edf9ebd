"""Commands on the machine the watchdog runs on, with the same limits as the SSH seam."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

from bup_watchdog.errors import CommandTimeout, ProbeError, TransportError
from bup_watchdog.transport.base import CommandResult


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
            # A session of its own: on a timeout the whole process group is killed, not only the
            # direct child (a probe's or a repair's own children would go on otherwise).
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(f"{self.label}: cannot run {argv[0]}: {exc.strerror}") from None
        try:
            out, err = proc.communicate(stdin or b"", timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandTimeout(
                f"{self.label}: {argv[0]} did not finish within {limit:g} s"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        if len(out) > self.max_output_bytes:
            raise ProbeError(
                f"{self.label}: {argv[0]} printed more than {self.max_output_bytes} bytes"
            )
        return CommandResult(proc.returncode, out, err[-65536:], time.monotonic() - started)

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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and everything it started in its session, then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # something left the session and holds the pipes
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
