"""A real bup repository with two saves and its conf/ files, as on a storage host: the template
that tests copy into many hosts' bups directories instead of running bup per repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def two_save_repo(base: Path, *, settings: str, replicas: str) -> Path:
    """``base/repo``: two real ``bup save``s of a small tree, and conf/ with ``settings``
    (settings.json), ``replicas`` (replicas.json), a save log and ``touch``."""
    if shutil.which("bup") is None:
        pytest.fail("bup is not installed (apt-get install bup)")
    repo, data = base / "repo", base / "data"
    data.mkdir()
    env = {**os.environ, "BUP_DIR": str(repo)}
    subprocess.run(["bup", "init"], env=env, check=True, capture_output=True)
    for n in range(2):
        (data / f"file-{n}.txt").write_text(f"save {n}\n" * 50)
        subprocess.run(["bup", "index", str(data)], env=env, check=True, capture_output=True)
        subprocess.run(
            ["bup", "save", "-n", "master", str(data)], env=env, check=True, capture_output=True
        )
    conf = repo / "conf"
    conf.mkdir()
    (conf / "settings.json").write_text(settings + "\n")
    (conf / "replicas.json").write_text(replicas + "\n")
    (conf / "save_log.json").write_text('{"timestamp": 1}\n')
    (conf / "touch").write_bytes(b"")
    return repo
