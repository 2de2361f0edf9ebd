"""glibc malloc settings: set on glibc, each left alone when the operator chose it, and the
fixed mmap threshold does what it is for (a mid-sized block is mapped, not taken from the heap,
even after glibc would have raised its threshold)."""

from __future__ import annotations

import os
import subprocess
import sys

CALL = "from bup_watchdog.malloc_arenas import {f} as f; print(f())"

# A 200 KB block after a 4 MiB mapped block was freed (which raises glibc's dynamic threshold to
# 4 MiB): how many more blocks glibc holds mapped (mallinfo2's hblks) once it is allocated.
MAPPED_AFTER = """
import ctypes, sys
from bup_watchdog.malloc_arenas import fix_mmap_threshold
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
info = ctypes.CDLL(None).mallinfo2
info.restype = Info
big = bytearray(4 << 20)
del big
if sys.argv[1] == "fix":
    assert fix_mmap_threshold()
before = info().hblks
block = bytearray(200_000)
print(info().hblks - before)
"""


def _run(env: dict[str, str], code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def test_the_arena_cap_is_set_on_this_glibc_machine() -> None:
    env = _env_without("MALLOC_ARENA_MAX")
    assert _run(env, CALL.format(f="limit_malloc_arenas")) == "True"


def test_an_operators_malloc_arena_max_is_left_as_it_is() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert _run(env, CALL.format(f="limit_malloc_arenas")) == "False"


def test_the_mmap_threshold_is_fixed_on_this_glibc_machine() -> None:
    env = _env_without("MALLOC_MMAP_THRESHOLD_")
    assert _run(env, CALL.format(f="fix_mmap_threshold")) == "True"


def test_an_operators_mmap_threshold_is_left_as_it_is() -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert _run(env, CALL.format(f="fix_mmap_threshold")) == "False"


def test_with_the_threshold_fixed_a_mid_sized_block_is_mapped_not_taken_from_the_heap() -> None:
    env = _env_without("MALLOC_MMAP_THRESHOLD_")
    assert _run(env, MAPPED_AFTER, "dynamic") == "0"  # glibc's own threshold: from the heap
    assert _run(env, MAPPED_AFTER, "fix") == "1"
