"""The malloc arena cap: set on glibc, left alone when the operator chose one."""

from __future__ import annotations

import os
import subprocess
import sys

CALL = "from bup_watchdog.malloc_arenas import limit_malloc_arenas as f; print(f())"


def _run(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_the_arena_cap_is_set_on_this_glibc_machine() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _run(env) == "True"


def test_an_operators_malloc_arena_max_is_left_as_it_is() -> None:
    assert _run({**os.environ, "MALLOC_ARENA_MAX": "4"}) == "False"
