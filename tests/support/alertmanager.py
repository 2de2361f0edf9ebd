"""The real Alertmanager (Debian's ``prometheus-alertmanager``) for end-to-end tests.

Started on 127.0.0.1 with a free port, gossip off (``--cluster.listen-address=``), a config that
routes every alert labelled ``auto_repair="true"`` to the watchdog's webhook with its bearer token
file, and short group timings so a test sees a notification within seconds (FACTS.md: ~1 s with
``group_wait: 1s``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from support.process import ManagedProcess, answers_200, free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


class Alertmanager(ManagedProcess):
    """One Alertmanager routing repairable alerts to ``webhook_url``."""

    def __init__(self, workdir: Path, webhook_url: str, token_file: Path, port: int = 0) -> None:
        super().__init__("Alertmanager", workdir / "alertmanager.log")
        self.workdir = workdir
        self.webhook_url = webhook_url
        self.token_file = token_file
        self.port = port
        self.config_path = workdir / "alertmanager.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        config = {
            "route": {
                "receiver": "humans",
                "group_by": ["alertname", "server_id"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1m",
                "routes": [
                    {
                        "matchers": ['auto_repair="true"'],
                        "receiver": "bupwatch",
                        "continue": True,
                    }
                ],
            },
            "receivers": [
                {
                    "name": "bupwatch",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {
                                    "type": "Bearer",
                                    "credentials_file": str(self.token_file),
                                }
                            },
                        }
                    ],
                },
                {"name": "humans"},
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        check = subprocess.run(
            ["amtool", "check-config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise RuntimeError(f"amtool rejects {self.config_path}:\n{check.stdout}{check.stderr}")

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.port = self.port or free_port()
        self.spawn(
            [
                ALERTMANAGER,
                f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ]
        )
        self.wait_ready(lambda: answers_200(f"{self.url}/-/ready"), timeout)

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()
        return result

    def silences(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v2/silences", timeout=5)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()
        return result
