"""glibc malloc settings for a long-lived watchdog: fewer arenas, an mmap threshold that stays put.

**Arenas.** glibc gives each thread that allocates while another holds an arena an arena of its
own, up to 8 per core. A sweep's SSH transport and reader threads (two per host) each leave their
arena holding freed memory that the next sweep's threads do not reuse, so the process grows by a
few MB per sweep before it levels off. Capped at 2 arenas, 6 incremental sweeps of 50,000
repositories on 20 hosts peaked at 163 MB instead of 193 MB and stayed flat (the threads spend
their time waiting on sockets; they do not contend for malloc).

**The mmap threshold.** A block of at least the threshold gets a mapping of its own, returned to
the system when freed; smaller ones come from the heap, whose free gaps stay in the process. glibc
starts at 128 KiB but raises the threshold each time a mapped block is freed (up to 32 MB), so
after the first sweep the per-host tables made anew every sweep (the facts' dicts, cache columns:
100-600 KB each) all came from the heap, and ~23 MB of it sat free between sweeps at 200,000
repositories. Kept at 128 KiB, those of 128 KiB and more are mapped and given back: the peak RSS
of the incremental sweeps (kept 200,000-repository sandbox fleet, ``bench/watchdog_run.py
--sweeps 1 --incremental 3``) fell from 238-244 MB to 226-228 MB with the same CPU time (heap
54 MB, 23 free -> 34 MB, 8 free: smaller tables are reused there). 64 KiB saved ~1.5 MB more but
cost the incremental sweeps ~5-10 % more CPU in two of three pairings (page faults of fresh
mappings), 32 KiB ~20 % more.

An operator's own ``MALLOC_ARENA_MAX`` or ``MALLOC_MMAP_THRESHOLD_`` (read by glibc at start)
wins: then that setting is left alone. Other C libraries (musl) have no ``mallopt``: nothing to
do there.
"""

from __future__ import annotations

import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, no longer raised


def _mallopt(param: int, value: int) -> bool:
    import ctypes  # here: `--help` and completion do not pay for it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); whether the cap was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (no longer raised as mapped blocks are freed); whether set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def tune_malloc() -> None:
    """Both settings, as every bup-watchdog command starts (before any thread)."""
    limit_malloc_arenas()
    fix_mmap_threshold()
