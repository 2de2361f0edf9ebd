"""The deep tier of repo_integrity: which repositories to deep-check now, and how.

Deep checks cost a process per repository (FACTS.md: ``git fsck --connectivity-only`` ~6 ms,
``bup ls master`` ~51 ms on a small repo), so they run on a rolling budget: per host and pass, the
repositories never or least recently checked, plus at once those whose master changed since their
last deep check or whose cheap facts look wrong. Over ``window_days`` every repository is covered.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from bup_watchdog.config import DeepConfig
from bup_watchdog.errors import ProbeError
from bup_watchdog.model import DeepResult, RepoFacts, Server, is_v4_uuid
from bup_watchdog.transport.base import Transport

DEEP_PROBE_PATH = Path(__file__).with_name("deep_probe.py")


@cache
def deep_probe_source() -> bytes:
    return DEEP_PROBE_PATH.read_bytes()


def looks_wrong(repo: RepoFacts) -> bool:
    """Cheap facts that call for a deep look now."""
    return bool(
        repo.master_in_pack is False or repo.master_error or repo.bad_idx or repo.idx_without_pack
    )


#: A pass takes this much more than its share of the window (passes skipped while a host was
#: down, repositories that failed) so the window is kept, not just reached.
WINDOW_SLACK = 1.2


def rolling_budget(settings: DeepConfig, repositories: int, pass_seconds: float | None) -> int:
    """Repositories a pass checks on a host by age: ``per_host``, or more when that many could
    not cover all of them within ``window_days`` at one pass every ``pass_seconds``."""
    if not pass_seconds or pass_seconds <= 0 or settings.per_host == 0:  # 0: rolling checks off
        return settings.per_host
    share = repositories * pass_seconds / (settings.window_days * 86400)
    return max(settings.per_host, math.ceil(WINDOW_SLACK * share))


def select(
    repos: Mapping[str, RepoFacts],
    book: Mapping[str, DeepResult],
    settings: DeepConfig,
    now: float | None = None,
    *,
    pass_seconds: float | None = None,
) -> list[str]:
    """The project ids to deep-check on one host in this pass, most urgent first.

    ``pass_seconds``: how often deep passes come (the schedule); the rolling budget then grows
    with the host so every repository is checked within the window (see rolling_budget)."""
    now = time.time() if now is None else now
    urgent: list[str] = []
    rolling: list[tuple[float, str]] = []
    for pid, repo in repos.items():
        if repo.is_symlink:
            continue
        last = book.get(pid)
        changed = last is not None and last.master_sha != repo.master_sha
        # Wrong-looking repos are re-checked at most hourly; a changed master at once.
        if changed or (looks_wrong(repo) and (last is None or last.checked_at < now - 3600)):
            urgent.append(pid)
            continue
        rolling.append((last.checked_at if last else 0.0, pid))
    rolling.sort()
    chosen = sorted(urgent)[: settings.changed_per_host]
    chosen += [pid for _, pid in rolling[: rolling_budget(settings, len(repos), pass_seconds)]]
    return chosen


def deep_argv(server: Server, python: str, ids: Iterable[str], timeout: float) -> list[str]:
    ids = list(ids)
    bad = [i for i in ids if not is_v4_uuid(i)]
    if bad:
        raise ValueError(f"refusing to deep-check non-project ids: {bad[:3]}")
    return [python, "-S", "-", "--bup-root", server.bup_root, "--timeout", f"{timeout:g}", *ids]


def deep_records(
    lines: Iterable[bytes], what: str, *, others_allowed: bool = True
) -> Iterator[tuple[str, bool, dict[str, Any]]]:
    """(project id, ok, record) of each ``deep`` record in a deep-check program's JSON lines.
    Garbage, a malformed record, or an output cut before its final ``done`` record raise
    ProbeError naming ``what``; records of other types are skipped when ``others_allowed``."""
    done = False
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past json's depth
            raise ProbeError(f"line {n} of {what}'s output is not JSON") from None
        if not isinstance(rec, dict):
            raise ProbeError(f"line {n} of {what}'s output is not a record")
        kind = rec.get("type")
        if kind == "done":
            done = True
            continue
        if kind != "deep" and others_allowed:
            continue
        pid, ok = rec.get("project_id"), rec.get("ok")
        if kind != "deep" or not is_v4_uuid(pid) or not isinstance(ok, bool):
            raise ProbeError(f"line {n} of {what}'s output is malformed")
        yield str(pid), ok, rec
    if not done:
        raise ProbeError(f"{what}'s output stopped before its final record (truncated)")


def parse_deep_lines(lines: Iterable[bytes], now: float) -> list[DeepResult]:
    """Deep results from the deep probe's JSON lines; garbage raises ProbeError."""
    results: list[DeepResult] = []
    for pid, ok, rec in deep_records(lines, "the deep check"):
        sha, msg = rec.get("master_sha"), rec.get("message")
        results.append(
            DeepResult(
                pid,
                now,
                ok,
                sha if isinstance(sha, str) else None,
                msg if isinstance(msg, str) else None,
            )
        )
    return results


def run_deep(
    transport: Transport, server: Server, ids: list[str], settings: DeepConfig, python: str
) -> list[DeepResult]:
    """Deep-check ``ids`` on one host over its existing connection (one more channel)."""
    if not ids:
        return []
    argv = deep_argv(server, python, ids, settings.command_timeout)
    budget = settings.command_timeout * 2 * len(ids) + 30
    lines = transport.stream_lines(argv, stdin=deep_probe_source(), timeout=budget)
    return parse_deep_lines(lines, time.time())
