"""Before every timed figure of ``bench/rounds.py``: the hosts' repositories back in the kernel's
caches, no SSH session left open, the CPUs idle.

Why: the sandbox runs 20 hosts' repositories on one machine, 5.3 million entries at 200,000
repositories, whose inodes and small files fill most of its memory. Ansible and parallel-ssh
start three processes per repository (600,000 at 200k), and that churn makes the kernel drop a
large part of those caches. Measured on a kept 200k fleet (2026-12-06): a watchdog sweep right
after parallel-ssh took 122 s wall and 805 µs of host CPU per repository, the next two 45 s and
41 s (404 and 367 µs). In the rotated rounds the contender after parallel-ssh was the one that
paid: the watchdog in all three rounds, its end-to-end run twice (so its median was a cold run).
A real storage host holds its own 10,000 repositories' metadata in its own memory, so every
contender is timed on warm caches here: ``warm`` walks every host's repositories first (untimed,
the same walk for every contender).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BUSY_AT_MOST = 0.15  # share of all CPUs' time not idle, over one window
WINDOW_SECONDS = 1.0
MAX_WAIT_SECONDS = 60.0  # past it the figure is taken anyway, the row saying it was not quiet

# The walk: every entry lstat-ed (its size printed, a line each, to count them), nothing read.
# Reading the small files as well (HEAD, refs, conf/*.json, pack indexes: 2 million at 200k) was
# tried and made things worse: at 200k the machine's memory is nearly full of the fleet's inodes
# and directory blocks, and those files' pages pushed them out again. From dropped caches, the
# sweep after that walk took 78 s, after this one 54 s (and the next sweep 30 s).
WARM_FIND = ["-printf", "%s\n"]


def warm(bups_dirs: Iterable[Path]) -> tuple[float, int]:
    """Walk every host's repositories (one ``find`` per host, all at once), every entry lstat-ed.
    Returns the seconds it took and how many entries it saw."""
    dirs = list(bups_dirs)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        outs = [Path(tmp) / f"{i}.out" for i in range(len(dirs))]
        procs = []
        for d, out in zip(dirs, outs, strict=True):
            with out.open("wb") as f:
                procs.append(
                    subprocess.Popen(
                        ["find", str(d), *WARM_FIND], stdout=f, stderr=subprocess.DEVNULL
                    )
                )
        for p in procs:
            p.wait()
        seconds = time.monotonic() - t0
        entries = 0
        for out in outs:
            with out.open("rb") as f:
                while chunk := f.read(1 << 20):
                    entries += chunk.count(b"\n")
    return seconds, entries


def sessions(listeners: Iterable[int]) -> int:
    """How many processes the hosts' listening sshd processes have as children (open sessions)."""
    n = 0
    for pid in listeners:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                n += len(f.read().split())
        except OSError:
            continue
    return n


def _cpu_times() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user time
    return total - idle, total


def busy_share(window: float = WINDOW_SECONDS) -> float:
    """The share of the CPUs' time spent busy over the next ``window`` seconds."""
    b0, t0 = _cpu_times()
    time.sleep(window)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(
    listeners: Iterable[int],
    busy_at_most: float = BUSY_AT_MOST,
    max_wait: float = MAX_WAIT_SECONDS,
) -> dict[str, Any]:
    """Wait until no host has a session open and the CPUs are idle (or ``max_wait`` passes).

    Returns what was seen: ``waited`` seconds, ``sessions`` and ``busy`` at the start and at the
    end, and ``quiet`` (false when ``max_wait`` ran out first: the figure is taken anyway and
    the row says so).
    """
    pids = list(listeners)
    start = time.monotonic()
    first: tuple[int, float] | None = None
    while True:
        open_sessions = sessions(pids)
        busy = busy_share()
        if first is None:
            first = (open_sessions, busy)
        quiet = open_sessions == 0 and busy <= busy_at_most
        waited = time.monotonic() - start
        if quiet or waited >= max_wait:
            return {
                "waited": round(waited, 1),
                "sessions_before": first[0],
                "busy_before": round(first[1], 3),
                "sessions": open_sessions,
                "busy": round(busy, 3),
                "quiet": quiet,
            }


def settle(
    bups_dirs: Iterable[Path], listeners: Iterable[int], max_wait: float = MAX_WAIT_SECONDS
) -> dict[str, Any]:
    """Warm the caches, then wait for quiet; what was done, for the figure's row."""
    seconds, entries = warm(bups_dirs)
    return {
        "warm_seconds": round(seconds, 1),
        "warm_entries": entries,
        **wait_quiet(listeners, max_wait=max_wait),
    }
