"""Helpers for tests that repair things on a sandbox fleet."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from checks import settings_models
from watchdog.config import Config, load_config
from watchdog.guard import Guard
from watchdog.runner import inventory_source, load_inventory, open_state
from watchdog.sandbox.fleet import SandboxFleet


def fleet_config(fleet: SandboxFleet, extra: str = "") -> Config:
    """The fleet's config, with extra TOML appended (e.g. repair modes)."""
    if extra:
        path = fleet.config_path.with_name("config-test.toml")
        path.write_text(fleet.config_path.read_text() + "\n" + extra)
    else:
        path = fleet.config_path
    return load_config(path, settings_models())


def make_guard(fleet: SandboxFleet, extra: str = "") -> Guard:
    config = fleet_config(fleet, extra)
    state = open_state(config)
    return Guard(config, state, load_inventory(inventory_source(config), state))


def tree_digest(root: Path) -> str:
    """A checksum of every path, type, owner, mode and content under root (no symlink follow)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(root)}|{st.st_mode}|{st.st_uid}|{st.st_gid}|".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
            elif p.is_symlink():
                h.update(os.readlink(p).encode())
    return h.hexdigest()


def fleet_digest(fleet: SandboxFleet) -> dict[str, str]:
    """A checksum of every host's repos and live files."""
    out = {}
    for name, host in fleet.hosts.items():
        out[f"{name}:bups"] = tree_digest(host.bups_dir)
        projects = host.projects_dir_outside
        if projects.exists():
            out[f"{name}:projects"] = tree_digest(projects)
    return out
