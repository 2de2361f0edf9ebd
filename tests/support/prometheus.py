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
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from bup_watchdog.sandbox.fleet import SandboxFleet
from support.process import ManagedProcess, answers_200
from support.process import free_port as free_port  # the tests import these from here too
from support.process import poll as poll

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def _binary(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise RuntimeError(
            f"{path} is not installed; the scrape tests need the real server "
            "(apt-get install prometheus)"
        )
    return found


class Prometheus(ManagedProcess):
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
        super().__init__("Prometheus", workdir / "prometheus.log")
        self.rule_files = [str(p) for p in rule_files]
        self.alertmanagers = list(alertmanagers)
        self.workdir = workdir
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = 0
        self.config_path = workdir / "prometheus.yml"
        self.tsdb = workdir / "tsdb"
        self.started_at = 0.0

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
        self.started_at = time.monotonic()
        self.spawn(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.tsdb}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        self.wait_ready(lambda: answers_200(f"{self.url}/-/ready"), timeout)

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
            alive=self.dead,
        )


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


class WatchdogDaemon(ManagedProcess):
    """``bup-watchdog -v run --config CONFIG`` as a subprocess, started at once (behind ``prefix``,
    such as ``unshare``, if given), its log in ``log_name`` next to the config (appended to with
    ``append``). As a context manager it is stopped on exit."""

    log_tail_lines = 40
    stop_timeout = 15.0

    def __init__(
        self,
        config: Path,
        *,
        prefix: Sequence[str] = (),
        log_name: str = "daemon.log",
        append: bool = False,
    ) -> None:
        super().__init__("the daemon", config.parent / log_name)
        self.spawn(
            [
                *prefix,
                sys.executable,
                "-m",
                "bup_watchdog.cli",
                "-v",
                "run",
                "--config",
                str(config),
            ],
            append=append,
        )

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None  # started in __init__
        return self._proc

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code."""
        code = super().stop(timeout)
        assert code is not None  # started in __init__
        return code

    def __enter__(self) -> Self:
        return self
