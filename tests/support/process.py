"""Real servers the tests run as child processes: Prometheus, Alertmanager, Cassandra, daemons.

``ManagedProcess`` holds what they all do: start with the output in a log file (a pipe could fill
up and block the server), wait until a probe says it is ready while failing at once if it dies,
stop it with SIGTERM (SIGKILL if it lingers), and quote the end of its log when something fails.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TypeVar

import httpx

T = TypeVar("T")


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``address`` a moment ago."""
    return free_ports(1, address)[0]


def free_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``address`` a moment ago: bound all at once, since
    one port asked for twice in a row can come back twice (a Cassandra node once got the same
    port for CQL and storage and failed to start)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((address, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def poll(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout`` s.

    ``alive`` returns a message when whatever is being waited on has died, to fail at once
    with that message rather than at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if alive is not None and (dead := alive()) is not None:
            raise AssertionError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def answers_200(url: str) -> bool:
    """True when a GET of ``url`` answers 200 (a server's ``/-/ready``); False while it does not."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def die_with_parent() -> list[str]:
    """A prefix that has the child sent SIGTERM when the thread that started it dies (even by a
    SIGKILL of the tests), so no server outlives a killed test run (util-linux ``setpriv
    --pdeathsig``; no prefix where it is missing)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class NotReady(Exception):
    """Raised by a readiness probe to say why the process is not ready yet (quoted on timeout)."""


class ManagedProcess:
    """One server process with its output in ``log_path``; ``name`` is what messages call it.

    A subclass builds the command line, calls ``spawn`` and then ``wait_ready`` in its ``start``.
    """

    #: Lines of the log quoted in error messages.
    log_tail_lines: ClassVar[int] = 20
    #: Seconds ``stop`` waits after SIGTERM before it sends SIGKILL.
    stop_timeout: ClassVar[float] = 10.0
    #: What ``wait_ready`` raises.
    failure: ClassVar[type[Exception]] = AssertionError

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not say how to start")

    def spawn(
        self,
        argv: Sequence[str],
        *,
        append: bool = False,
        pdeathsig: bool = False,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr in the log (appended to with ``append``), no
        stdin; ``pdeathsig`` has it killed with the tests, ``new_session`` keeps a Ctrl-C of the
        tests from reaching it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab" if append else "wb") as log:
            self._proc = subprocess.Popen(
                [*(die_with_parent() if pdeathsig else []), *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        return self._proc

    def dead(self) -> str | None:
        """A message quoting the log once the process has exited (for ``poll``'s ``alive``)."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return (
            f"{self.name} exited with status {self._proc.returncode}; the end of "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def wait_ready(
        self,
        ready: Callable[[], bool],
        timeout: float,
        *,
        what: str = "be ready",
        interval: float = 0.1,
    ) -> None:
        """Call ``ready`` until it is true. Fails (``failure``, quoting the log) at once if the
        process exits, or after ``timeout`` s; the process is then stopped."""
        deadline = time.monotonic() + timeout
        why = ""
        try:
            while True:
                try:
                    if ready():
                        return
                except NotReady as exc:
                    why = f" ({exc})"
                if (dead := self.dead()) is not None:
                    raise self.failure(f"gave up waiting for {self.name} to {what}: {dead}")
                if time.monotonic() > deadline:
                    raise self.failure(
                        f"{self.name} did not {what} within {timeout:g} s{why}; the end of "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(interval)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int | None = None) -> str:
        """The last ``lines`` lines of the log (``log_tail_lines`` by default)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-(lines or self.log_tail_lines) :])

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s (``stop_timeout``); the exit status, None if
        it was never started."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            wait = self.stop_timeout if timeout is None else timeout
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(wait)
        return proc.returncode

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
