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
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        no_progress: float | None = None,
    ) -> CommandResult:
        """Run to completion within ``timeout``; with ``no_progress``, the command and what it
        started are killed when for that long they printed nothing and used no CPU time."""
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
        deadline = started + limit
        step = min(no_progress / 3, 5.0) if no_progress else limit
        seen: tuple[int, int] = (-1, -1)
        moved_at = time.monotonic()
        try:
            while True:
                try:
                    wait = max(0.01, min(step, deadline - time.monotonic()))
                    out, err = proc.communicate(stdin or b"", timeout=wait)
                    break
                except subprocess.TimeoutExpired as exc:
                    now = time.monotonic()
                    if now >= deadline:
                        _kill_group(proc)
                        raise CommandTimeout(
                            f"{self.label}: {argv[0]} did not finish within {limit:g} s"
                        ) from None
                    if not no_progress:
                        continue
                    printed = len(exc.stdout or b"") + len(exc.stderr or b"")
                    now_seen = (printed, _session_cpu_ticks(proc.pid))
                    if now_seen != seen:
                        seen, moved_at = now_seen, now
                    elif now - moved_at >= no_progress:
                        _kill_group(proc)
                        raise CommandTimeout(
                            f"{self.label}: {argv[0]} made no progress for "
                            f"{now - moved_at:.0f} s (no output, no CPU time used); killed "
                            f"before its {limit:g} s limit"
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


def _session_cpu_ticks(sid: int) -> int:
    """CPU time (clock ticks, user + system) of every process in session ``sid`` now."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 12 and int(fields[3]) == sid:  # fields[3]: the session id
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


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
