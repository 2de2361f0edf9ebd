"""The real Prometheus server (Debian's ``/usr/bin/prometheus``) and its scrape target, the real
watchdog daemon, for end-to-end tests.

Prometheus is started on 127.0.0.1 with a free port, a config file and a TSDB directory under a
work directory, validated with ``promtool check config`` first, and stopped with SIGTERM (SIGKILL
if it lingers). The first scrape shows ``up`` only about 6 s after start (see FACTS.md), so callers
poll with ``wait_for_query`` instead of sleeping. The daemon (``bup-watchdog run``) runs as a
subprocess on a copy of a sandbox fleet's config (``watchdog_config``).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from watchdog.sandbox.fleet import SandboxFleet

T = TypeVar("T")

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``address`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


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


def _binary(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise RuntimeError(
            f"{path} is not installed; the scrape tests need the real server "
            "(apt-get install prometheus)"
        )
    return found


class Prometheus:
    """One Prometheus server scraping ``targets`` as job ``job`` every ``scrape_interval``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        job: str = "bupwatch",
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
    ) -> None:
        self.rule_files = [str(p) for p in rule_files]
        self.alertmanagers = list(alertmanagers)
        self.workdir = workdir
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = 0
        self.config_path = workdir / "prometheus.yml"
        self.tsdb = workdir / "tsdb"
        self.log_path = workdir / "prometheus.log"
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        # JSON is YAML, so no YAML library is needed to write the config.
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        if self.rule_files:
            config["rule_files"] = self.rule_files
        if self.alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]
            }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        check = subprocess.run(
            [_binary(PROMTOOL), "check", "config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"promtool rejects {self.config_path}:\n{check.stdout}{check.stderr}"
            )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/-/ready`` answers 200."""
        binary = _binary(PROMETHEUS)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.port = free_port()
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.tsdb}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> bool | None:
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200 or None
            except httpx.HTTPError:
                return None

        poll(ready, timeout=timeout, what="Prometheus to be ready", alive=self._dead)

    def _dead(self) -> str | None:
        if self._proc is None or self._proc.poll() is None:
            return None
        return f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``); raises on an API error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed ({r.status_code}): {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_query(
        self,
        promql: str,
        accept: Callable[[list[dict[str, Any]]], bool],
        *,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until ``accept`` likes its result vector."""

        def probe() -> list[dict[str, Any]] | None:
            result = self.query(promql)
            return result if accept(result) else None

        return poll(
            probe,
            timeout=timeout,
            what=f"the query {promql!r} to give the expected result",
            interval=0.2,
            alive=self._dead,
        )

    def __enter__(self) -> Prometheus:
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


def values(result: list[dict[str, Any]]) -> list[float]:
    """The sample values of a result vector."""
    return [float(r["value"][1]) for r in result]


# ------------------------------------------------------------------ the scrape target


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """TOML text for nested tables of simple values (what a watchdog config holds)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for k, v in tables.items():
        out += _toml(v, f"{prefix}.{k}" if prefix else k)
    return out


def watchdog_config(
    fleet: SandboxFleet, directory: Path, *, auto_repair: bool = False, **sections: dict[str, Any]
) -> tuple[Path, str]:
    """A copy of the fleet's config in ``directory``: state in ``directory/state``, a free port.

    ``sections`` override or add keys per table (``ssh={"banner_timeout": 2}``). Scheduled
    repairs are off unless asked for: the daemon repairs by default, and the session's demo fleet
    must keep its planted faults. Returns the config's path and the daemon's base URL.
    """
    data = tomllib.loads(fleet.config_path.read_text(encoding="utf-8"))
    base = fleet.config_path.parent
    data["inventory"]["file"] = str(base / data["inventory"]["file"])
    for key in ("known_hosts", "key_file"):
        data["ssh"][key] = str(base / data["ssh"][key])
    data["state"] = {"directory": "state"}  # relative to the copy
    data["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    data.setdefault("schedule", {})["auto_repair"] = auto_repair
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = directory / "config.toml"
    path.write_text(_toml(data), encoding="utf-8")
    return path, "http://" + data["http"]["listen"]


class WatchdogDaemon:
    """``bup-watchdog -v run --config CONFIG`` as a subprocess, its log in a file next to the config
    (a pipe could fill up and block it). As a context manager it is stopped on exit."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.parent / "daemon.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchdog.cli", "-v", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def dead(self) -> str | None:
        """A message when the daemon has exited (for ``poll``'s ``alive``), else None."""
        if self.proc.poll() is None:
            return None
        return f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> WatchdogDaemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
