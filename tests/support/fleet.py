"""Helpers for tests that repair things on a sandbox fleet."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Guard
from bup_watchdog.runner import inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet


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


def repo_inside(fleet: SandboxFleet, name: str, project_id: str) -> str:
    """A project's repository on host ``name``, as the host itself (and the inventory) names it."""
    return f"{fleet.hosts[name].bup_root}/bups/{project_id}"


def git_digest(repo: Path) -> str:
    """A checksum of a repository's packs, pack indexes, refs, packed-refs and HEAD."""
    h = hashlib.sha256()
    files = [
        *sorted((repo / "objects" / "pack").glob("*.pack")),
        *sorted((repo / "objects" / "pack").glob("*.idx")),
        *sorted(p for p in (repo / "refs").rglob("*") if p.is_file()),
        *[p for p in (repo / "packed-refs", repo / "HEAD") if p.exists()],
    ]
    for p in files:
        h.update(f"{p.relative_to(repo)}|".encode() + p.read_bytes())
    return h.hexdigest()


def start_in_host(fleet: SandboxFleet, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a background process inside host ``name`` (its mount and PID namespaces: the host's
    ``/proc`` shows it); the caller kills it."""
    return subprocess.Popen(
        fleet.hosts[name].enter_argv(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pid_in_host(fleet: SandboxFleet, name: str, started: subprocess.Popen[bytes]) -> int:
    """The pid host ``name``'s own ``/proc`` gives the command ``start_in_host`` (or an
    ``enter_argv`` Popen) started: the last NSpid field of the nsenter's child."""
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if d.isdigit() and int(fields.get("PPid", "0")) == started.pid:
            return int(fields["NSpid"].split()[-1]) if fleet.hosts[name].namespaced else int(d)
    raise AssertionError(f"the command started in host {name} (pid {started.pid}) has no child")


def file_digests(root: Path) -> dict[str, str]:
    """The SHA-256 of every regular file under root, by relative path (no symlink follow)."""
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def bup_save_on(
    fleet: SandboxFleet, name: str, project_id: str, when: int, files: dict[str, str]
) -> str:
    """Write ``files`` into the host's live tree, then a real ``bup index`` + ``bup save -n
    master`` inside the host, dated ``when`` (commit and reflog); returns the new master sha."""
    host = fleet.hosts[name]
    live = host.projects_dir_outside / project_id
    for rel, text in files.items():
        (live / rel).parent.mkdir(parents=True, exist_ok=True)
        (live / rel).write_text(text)
    inside = f"{host.projects_root}/{project_id}"
    env = ["env", f"BUP_DIR={host.bup_root}/bups/{project_id}", "LC_ALL=C"]
    for who in ("AUTHOR", "COMMITTER"):
        env += [f"GIT_{who}_NAME=tester", f"GIT_{who}_EMAIL=tester@localhost"]
        env += [f"GIT_{who}_DATE={when} +0000"]
    host.run([*env, "bup", "index", inside], check=True)
    host.run(
        [*env, "bup", "save", "-q", "--strip", "-n", "master", "-d", str(when), inside], check=True
    )
    return git_out(fleet, name, project_id, "rev-parse", "refs/heads/master")


def git_out(fleet: SandboxFleet, name: str, project_id: str, *args: str) -> str:
    """stdout of a git command on a host's copy of a repository (run from outside, read-only)."""
    repo = fleet.repo_path(name, project_id)
    proc = subprocess.run(
        ["git", f"--git-dir={repo}", *args], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()
