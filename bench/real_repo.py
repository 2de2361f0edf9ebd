"""A real bup repository (not a template) for the per-repository probe benchmarks.

The benchmark fleet's repositories are hard-link copies of stripped templates; a real one has
hooks/, info/, branches/ and one pack per save until it is repacked.
"""

from __future__ import annotations

import time
from pathlib import Path


def build_real_repo(repo: Path, data: Path, saves: int) -> None:
    """``saves`` real ``bup save``s of small files into ``repo``, and a conf/ as a project's."""
    from bup_watchdog.sandbox import repos as sandbox_repos

    data.mkdir(parents=True)
    sandbox_repos.bup_init(repo)
    now = int(time.time()) - 3600
    for i in range(saves):
        (data / f"file-{i}.txt").write_text(f"save {i}\n" * 20)
        sandbox_repos.bup_save(repo, data, now - (saves - i) * 60)
    conf = repo / "conf"
    conf.mkdir()
    for name, text in (("settings.json", '{"disk": 3000}'), ("replicas.json", "[]")):
        (conf / name).write_text(text + "\n")
    (conf / "save_log.json").write_text('{"timestamp": 1}\n' * 50)
    (conf / "touch").write_bytes(b"")
