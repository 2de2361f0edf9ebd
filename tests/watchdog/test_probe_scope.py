"""The gather's scoped probe (``only``, the probe's ``--only``): the facts say they cover only some
projects, and such facts never reach the incremental cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bup_watchdog.config import SshConfig
from bup_watchdog.errors import ProbeError
from bup_watchdog.gather import gather_host, parse_probe_lines, probe_source
from bup_watchdog.model import GatherFailure, HostFacts, Server
from bup_watchdog.probe import PROBE_VERSION
from bup_watchdog.repo_cache import CacheBuilder, RepoCache

SID = "3f0c5a8e-2b7d-4e61-9c3a-5d8e7f6a1b2c"
PIDS = [
    "0a7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f60",
    "1b7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f61",
    "2c7c6e58-8d2b-4c3f-9e1a-1b2c3d4e5f62",
]
SSH = SshConfig.model_validate({"python": sys.executable})


def local_host(base: Path) -> Server:
    """A host on this machine (local transport) with three repositories and live directories."""
    for pid in PIDS:
        (base / "bup" / "bups" / pid / "objects" / "pack").mkdir(parents=True)
        (base / "projects" / pid).mkdir(parents=True)
    return Server(
        SID,
        "127.0.0.1",
        1,
        name="local",
        transport="local",
        bup_root=str(base / "bup"),
        projects_root=str(base / "projects"),
    )


def test_a_scoped_gather_walks_only_its_projects_and_its_facts_say_so(tmp_path: Path) -> None:
    server = local_host(tmp_path)

    whole = gather_host(server, SSH, tcp_timeout=0.2)
    scoped = gather_host(server, SSH, tcp_timeout=0.2, only=[PIDS[1]])

    assert whole.probed and scoped.probed, scoped.failure_message
    assert (whole.scope, set(whole.repos), set(whole.project_dirs)) == (None, {*PIDS}, {*PIDS})
    assert (scoped.scope, set(scoped.repos)) == ({PIDS[1]}, {PIDS[1]})
    assert set(scoped.project_dirs) == {PIDS[1]}
    assert scoped.repos[PIDS[1]] == whole.repos[PIDS[1]]
    assert scoped.mounts.keys() == whole.mounts.keys()


def test_a_scoped_probe_never_feeds_the_incremental_cache(tmp_path: Path) -> None:
    server = local_host(tmp_path)
    with pytest.raises(ValueError, match="no cache"):
        gather_host(server, SSH, repo_cache=RepoCache(), only=[PIDS[0]])
    argv = [sys.executable, "-S", "-", "--bup-root", server.bup_root, "--only", PIDS[0]]
    out = subprocess.run(argv, input=probe_source(), capture_output=True, check=True, timeout=60)
    lines = out.stdout.splitlines(keepends=True)
    parse_probe_lines(SID, lines, HostFacts(SID, 0.0))  # fine without a cache
    with pytest.raises(ProbeError, match="walked only some projects"):
        parse_probe_lines(SID, lines, HostFacts(SID, 0.0), fresh=CacheBuilder())


def test_a_host_that_ignores_only_is_not_taken_for_the_scoped_walk(tmp_path: Path) -> None:
    # FAKE: a host's python3 that answers a whole, empty walk whatever it is asked (the real
    # probe always keeps to --only, so this cannot be produced with it).
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        f"""echo '{{"type": "hello", "probe_version": {PROBE_VERSION}, "bups": "/b"}}'\n"""
        """echo '{"type": "done"}'\n"""
    )
    fake.chmod(0o755)
    server = Server(SID, "127.0.0.1", 1, name="local", transport="local")
    ssh = SshConfig.model_validate({"python": str(fake)})

    facts = gather_host(server, ssh, tcp_timeout=0.2, only=[PIDS[0]])

    assert facts.failure is GatherFailure.GARBAGE
    assert facts.failure_message is not None and "--only" in facts.failure_message
