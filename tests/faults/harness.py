"""What the fault tests share: the real daemon as a process, a host's processes, data at stake."""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx

from bup_watchdog.sandbox.fleet import SandboxFleet
from faults.harm import Loss, Snapshot, loss
from support.prometheus import WatchdogDaemon, poll, watchdog_config
from support.scrape import Samples, metrics
from support.scrape import sample as sample  # the fault tests import it from here too

CLI = [sys.executable, "-m", "bup_watchdog.cli"]
ROOT_PROJECTS = Path("/projects")  # the root disk's /projects: a host whose tmpfs is gone sees it


# ------------------------------------------------------------------ data at stake


def fleet_roots(fleet: SandboxFleet) -> dict[str, Path]:
    """Every host's repositories and live files, and the root disk's /projects (where writes
    land when a host's /projects is not mounted)."""
    roots: dict[str, Path] = {"rootdisk:/projects": ROOT_PROJECTS}
    for name, host in fleet.hosts.items():
        roots[f"{name}:bups"] = host.bups_dir
        if host.spec.projects_mounted:
            roots[f"{name}:projects"] = host.projects_dir_outside
    return roots


class AtStake:
    """A snapshot of a fleet's data taken now; ``loss()`` compares with the fleet later."""

    def __init__(self, fleet: SandboxFleet, extra: dict[str, Path] | None = None) -> None:
        self.fleet = fleet
        self.extra = extra or {}
        self.before = Snapshot.of(self.roots())

    def roots(self) -> dict[str, Path]:
        # Recomputed each time: a host's /projects is reached through one of its live processes.
        return {**fleet_roots(self.fleet), **self.extra}

    def loss(
        self,
        where: str = "fleet",
        roots: dict[str, Path] | None = None,
        moved: frozenset[str] = frozenset(),
    ) -> Loss:
        return loss(self.before, Snapshot.of(roots or self.roots()), where, moved=moved)

    def added(self, roots: dict[str, Path] | None = None) -> list[str]:
        """Files that appeared since (for 'nothing was written there' checks)."""
        after = Snapshot.of(roots or self.roots())
        return sorted(set(after.files) - set(self.before.files))


def bup_ls(fleet: SandboxFleet, host: str, project_id: str) -> subprocess.CompletedProcess[str]:
    """``bup ls master`` on a host's copy, run inside the host."""
    bups = f"{fleet.hosts[host].bup_root}/bups/{project_id}"
    return fleet.hosts[host].run(["bup", "-d", bups, "ls", "master"])


# ------------------------------------------------------------------ a host's processes


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _mnt_ns(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def host_pids(fleet: SandboxFleet, host: str, match: Callable[[list[bytes]], bool]) -> list[int]:
    """Processes in a host's mount namespace whose argv ``match`` likes."""
    ns = _mnt_ns(fleet.hosts[host].sshd_pid)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        if _mnt_ns(d) != ns:
            continue
        argv = _cmdline(int(d)).split(b"\0")
        if argv and argv[0] and match(argv):
            out.append(int(d))
    return out


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def plant_fake_python(fleet: SandboxFleet, host: str, script: str) -> None:
    """FAKE: a shell script named python3, first on PATH inside one host's namespace only."""
    shell = (
        "mount -t tmpfs fakebin /usr/local/bin && "
        f"printf '%s\\n' '#!/bin/sh' {shlex.quote(script)} > /usr/local/bin/python3 && "
        "chmod 755 /usr/local/bin/python3"
    )
    result = fleet.hosts[host].run(["/bin/sh", "-c", shell])
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ the real daemon


def write_config(
    fleet: SandboxFleet, workdir: Path, *, token: bool = True, **sections: dict[str, Any]
) -> tuple[Path, str, str | None]:
    """A daemon config for the fleet in ``workdir``: state in ``workdir/state``, a free port, a
    5 s schedule without jitter, an API token unless ``token=False``. Returns (config, base URL,
    token)."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = None
    schedule = {"sweep_interval_seconds": 5, "jitter_seconds": 0, **sections.pop("schedule", {})}
    if token:
        secret = secrets.token_hex(24)
        (workdir / "api-token").write_text(secret + "\n")
        sections.setdefault("guard", {})["api_token_file"] = str(workdir / "api-token")
    path, url = watchdog_config(fleet, workdir, schedule=schedule, **sections)
    return path, url, secret


class Daemon(WatchdogDaemon):
    """``bup-watchdog -v run`` as a real process (optionally behind a ``prefix`` such as
    ``unshare``), its log in a file (appended to). Stopped on exit; a death the test did not
    cause is a crash."""

    #: Every daemon the suite started: the table's daemon count and crash count come from here.
    started: ClassVar[list[Daemon]] = []
    stop_timeout = 20.0

    def __init__(
        self, config: Path, url: str, *, prefix: Sequence[str] = (), log_name: str = "daemon.log"
    ) -> None:
        self.config = config
        self.url = url
        self.stopped_by_test = False
        super().__init__(config, prefix=prefix, log_name=log_name, append=True)
        Daemon.started.append(self)

    @property
    def crashed(self) -> bool:
        """Exited without the test stopping it."""
        return self.proc.poll() is not None and not self.stopped_by_test

    def wait_up(self, timeout: float = 30.0) -> None:
        self.wait_ready(
            lambda: get(f"{self.url}/healthz") is not None,
            timeout,
            what="answer on its HTTP server",
            interval=0.05,
        )

    def status(self, key: str) -> int:
        """A line of /proc/PID/status in kB (VmRSS: now, VmHWM: the peak)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would."""
        self.stopped_by_test = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM (a clean stop), SIGKILL after ``timeout``; the exit code."""
        if self.running:
            self.stopped_by_test = True
        return super().stop(timeout)


def get(url: str, **kwargs: Any) -> httpx.Response | None:
    """GET, or None while nothing answers."""
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.HTTPError:
        return None


def wait_metric(
    daemon: Daemon,
    accept: Callable[[Samples], bool],
    *,
    what: str,
    timeout: float = 40.0,
) -> Samples:
    """Poll /metrics until ``accept`` likes a scrape; return it."""

    def probe() -> Samples | None:
        if get(f"{daemon.url}/healthz") is None:
            return None
        found = metrics(daemon.url)
        return found if accept(found) else None

    return poll(probe, timeout=timeout, what=what, interval=0.2, alive=daemon.dead)


def sweeps(found: Samples) -> float:
    return sample(found, "bupwatch_sweeps_total") or 0.0


def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)
