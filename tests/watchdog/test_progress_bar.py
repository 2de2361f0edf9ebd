"""A rebuild's or an evacuation's progress: a bar with each item's line above it on a terminal,
one plain line per item when the output is a file or a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from support.terminal import drain

RUN = """
from bup_watchdog.progress_bar import ItemProgress
p = ItemProgress("rebuild", "s2", 2, 3_000_000, False)
p.done("0a5e0000-0000-4000-8000-000000000001", "succeeded", 1.5, 7, "in step", 1_000_000)
p.done("0a5e0000-0000-4000-8000-000000000002", "failed", 0.2, 8, "unreachable", 2_000_000)
p.close()
"""


def run(on_terminal: bool) -> tuple[str, str]:
    """The snippet's (stdout, stderr), stderr a pseudo-terminal or a pipe."""
    if not on_terminal:
        proc = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True)
        return proc.stdout, proc.stderr
    master, slave = pty.openpty()
    reader, chunks = drain(master)
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN], stdout=subprocess.PIPE, stderr=slave, env=env, text=True
    )
    os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.stdout, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_each_item_is_named_above_a_bar_and_stdout_stays_empty() -> None:
    out, term = run(on_terminal=True)
    assert out == ""
    assert "[1/2] 0a5e0000-0000-4000-8000-000000000001: succeeded in 1.5 s (repair #7)" in term
    assert "[2/2] 0a5e0000-0000-4000-8000-000000000002: failed in 0.2 s (repair #8)" in term
    assert "unreachable" in term and "rebuild" in term and "2/2" in term


def test_without_a_terminal_each_item_is_one_plain_line_on_stdout() -> None:
    out, err = run(on_terminal=False)
    assert out.splitlines() == [
        "[1/2] 0a5e0000-0000-4000-8000-000000000001: succeeded in 1.5 s (repair #7) — in step",
        "[2/2] 0a5e0000-0000-4000-8000-000000000002: failed in 0.2 s (repair #8) — unreachable",
    ]
    assert err == ""
