"""prune_repo's swap program around its exchange, on real bup repositories in a temporary
directory: what lands on the original just before the exchange is swapped back; what lands on
the pruned repository just after it is its own and stays.

FAKE timing: the program's ``exchange`` is wrapped to write at a chosen moment (a race that real
processes would hit only by chance); the exchange itself, git and the files are real.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bup_watchdog.repairs.prune_repo import PROGRAM
from bup_watchdog.sandbox.repos import bup_init, bup_save, write_tree


def program() -> dict[str, Any]:
    """The swap program's functions, without running its command line."""
    namespace: dict[str, Any] = {"__name__": "prune_swap"}
    exec(PROGRAM.split("\naction, args = ")[0], namespace)  # the program as the host runs it
    return namespace


def master(repo: Path) -> str:
    out = subprocess.run(
        ["git", f"--git-dir={repo}", "rev-parse", "refs/heads/master"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with one save, and its copy (what the prune works on) beside it."""
    repo = tmp_path / "bups" / "7e3b1c2d-5a6f-4b7c-8d9e-0000000000ab"
    bup_init(repo)
    (repo / "conf").mkdir()
    (repo / "conf" / "settings.json").write_text('{"disk": 3000}\n')
    write_tree(tmp_path / "staging", {"notes.txt": b"one save\n"})
    bup_save(repo, tmp_path / "staging", int(time.time()) - 60)
    work = repo.with_name(repo.name + ".prune-new")
    subprocess.run(["cp", "-a", "-T", str(repo), str(work)], check=True)
    return repo, work


def swap_with(
    pair: tuple[Path, Path], before: Callable[[], None], after: Callable[[], None]
) -> tuple[int | None, Path]:
    """Run the swap, calling ``before`` just before the exchange and ``after`` just after it;
    the program's exit status (None: done) and the aside path."""
    repo, work = pair
    ns = program()
    real_exchange = ns["exchange"]
    calls: list[tuple[str, str]] = []

    def exchange(a: str, b: str) -> None:
        if not calls:
            before()
        real_exchange(a, b)
        calls.append((a, b))
        if len(calls) == 1:
            after()

    ns["exchange"] = exchange
    aside = repo.with_name(repo.name + ".pruned-20261206T090000Z")
    try:
        ns["swap"](str(repo), str(work), str(aside), master(repo), int(time.time()) + 3600)
    except SystemExit as exc:
        return int(exc.code or 0), aside
    return None, aside


def test_a_conf_write_on_the_original_just_before_the_exchange_is_swapped_back(
    pair: tuple[Path, Path],
) -> None:
    repo, work = pair

    def edit_the_original() -> None:
        (repo / "conf" / "settings.json").write_text('{"disk": 6000}\n')

    status, aside = swap_with(pair, edit_the_original, lambda: None)

    assert status == 2  # refused: nothing changed
    assert (repo / "conf" / "settings.json").read_text() == '{"disk": 6000}\n'
    assert work.is_dir() and not aside.exists()


def test_a_write_to_the_pruned_repository_just_after_the_exchange_stays(
    pair: tuple[Path, Path],
) -> None:
    """Regression: the check after the exchange compared the live (pruned) repository with the
    original, so a save's conf write landing there right after the exchange swapped the pruned
    repository back out; the repair then deleted it, and the write with it."""
    repo, work = pair

    def a_save_writes_the_new_repository() -> None:
        (repo / "conf" / "save_log.json").write_text('[{"saved": "just now"}]\n')

    status, aside = swap_with(pair, lambda: None, a_save_writes_the_new_repository)

    assert status is None, "the swap was undone"
    assert (repo / "conf" / "save_log.json").read_text() == '[{"saved": "just now"}]\n'
    assert aside.is_dir() and not work.exists()
    assert "Remove this copy after" in (aside / "BUPWATCH-PRUNED.txt").read_text()
