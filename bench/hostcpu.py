"""CPU time spent on the sandbox hosts, read from their listening sshd processes.

Every SSH connection to a sandbox host is served by a child of that host's listening sshd; when the
connection ends the child (and everything it ran: the shell, the probe, ``bup``, ``git``…) is
reaped, and its CPU time is added to the listener's ``cutime``/``cstime`` in ``/proc/PID/stat``.
So the change of ``utime+stime+cutime+cstime`` of the listeners across a measurement is the CPU the
measured work cost on the hosts (SSH encryption included), whatever else runs on the machine.
Resolution: one clock tick (10 ms).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, in seconds (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    # fields[0] is the state (field 3); utime is field 14, so index 11.
    return sum(int(x) for x in fields[11:15]) / TICK


def hosts_cpu(pids: Iterable[int], settle: float = 0.3) -> float:
    """Total CPU seconds of the given listening sshd processes and their reaped children.

    ``settle`` gives sshd a moment to reap connections that just ended.
    """
    if settle:
        time.sleep(settle)
    return sum(process_cpu(p) for p in pids)
