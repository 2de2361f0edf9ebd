"""A daemon config for end-to-end tests: fast schedule, an API token, no scheduled repairs."""

from __future__ import annotations

import secrets
import tomllib
from pathlib import Path
from typing import Any

from bup_watchdog.sandbox.fleet import SandboxFleet
from support.prometheus import _toml, free_port


def daemon_config(
    fleet: SandboxFleet,
    workdir: Path,
    mode: str,
    alerts: dict[str, Any] | None = None,
    **restart_settings: Any,
) -> tuple[Path, str, Path]:
    """The fleet's config for a daemon: fast schedule, token file, no scheduled repairs."""
    data: dict[str, Any] = tomllib.loads(fleet.config_path.read_text())
    base = fleet.config_path.parent
    data["inventory"]["file"] = str(base / data["inventory"]["file"])
    for key in ("known_hosts", "key_file"):
        data["ssh"][key] = str(base / data["ssh"][key])
    token = workdir / "api-token"
    token.write_text(secrets.token_hex(24) + "\n")
    listen = f"127.0.0.1:{free_port()}"
    data["state"] = {"directory": str(workdir / "state")}
    data["http"] = {"listen": listen}
    data["schedule"] = {"sweep_interval_seconds": 5, "jitter_seconds": 0, "auto_repair": False}
    data["guard"] = {"api_token_file": str(token)}
    restart = data.setdefault("repairs", {}).setdefault("restart_bup_server", {})
    restart.update(mode=mode, **restart_settings)
    if alerts:
        data["alerts"] = alerts
    path = workdir / "config.toml"
    path.write_text(_toml(data))
    return path, f"http://{listen}", token
