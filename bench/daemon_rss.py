"""The daemon's own memory: ``bup-watchdog run`` on a sandbox fleet, its RSS read after sweep N.

The daemon runs as an operator runs it (the console script, its own process, incremental sweeps,
``/metrics`` served), on a copy of the fleet's config with a short sweep interval, no jitter and
a state of its own. Its sweeps are counted from ``bupwatch_sweeps_total`` on ``/metrics`` (a
scrape between sweeps costs ~0.1 ms, and the scrapes' times are kept: they are the ``/metrics``
figure of a real daemon on that fleet); after each sweep in ``marks`` its ``VmRSS`` is read from
``/proc/PID/status``. Growth is judged from the 10th sweep on (the first sweeps fill the caches:
the first is a full walk that takes the fingerprints).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

SWEEPS = re.compile(rb"^bupwatch_sweeps_total (\S+)$", re.M)


def watchdog_cli() -> list[str]:
    """The ``bup-watchdog`` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "bup-watchdog"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: install the package (./dev setup) first")
    return [str(script)]


def daemon_config(config_path: Path, interval: float) -> Path:
    """A copy of the fleet's config beside it: sweep every ``interval`` s, its own state."""
    text = config_path.read_text(encoding="utf-8")
    if "[schedule]\n" not in text or 'directory = "state"' not in text:
        raise RuntimeError(f"{config_path}: no [schedule] or state directory to adapt")
    text = text.replace(
        "[schedule]\n",
        f"[schedule]\nsweep_interval_seconds = {interval}\njitter_seconds = 0\n",
        1,
    )
    text = text.replace('directory = "state"', 'directory = "state-daemon"', 1)
    out = config_path.with_name("config-daemon.toml")
    out.write_text(text, encoding="utf-8")
    return out


def listen_address(config_path: Path) -> str:
    """The ``[http] listen`` address of a config (host:port)."""
    m = re.search(r'^listen = "([^"]+)"', config_path.read_text(encoding="utf-8"), re.M)
    if m is None:
        raise RuntimeError(f"{config_path}: no [http] listen address")
    return m.group(1)


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def scrape(url: str) -> tuple[int | None, float]:
    """The daemon's sweep count from /metrics (None before the first) and the scrape's ms."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
    except OSError:
        return None, float("nan")
    ms = 1000 * (time.perf_counter() - t0)
    m = SWEEPS.search(body)
    return (int(float(m.group(1))) if m else None), ms


def growth(rss: dict[int, float], base: int = 10) -> float | None:
    """RSS growth from sweep ``base`` (or the first mark after it) to the last mark, in %."""
    after = sorted(n for n in rss if n >= base) or sorted(rss)
    if len(after) < 2:
        return None
    first, last = rss[after[0]], rss[after[-1]]
    return 100 * (last - first) / first


def run_daemon(
    config_path: Path,
    sweeps: int,
    *,
    interval: float = 5.0,
    marks: tuple[int, ...] = (1, 10, 50, 100),
    stall: float = 900.0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the daemon until ``sweeps`` sweeps are recorded; its RSS after each mark."""
    config = daemon_config(config_path, interval)
    url = f"http://{listen_address(config)}/metrics"
    marks = tuple(sorted({m for m in marks if m <= sweeps} | {sweeps}))
    log = config.with_name("daemon.log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*watchdog_cli(), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    rss: dict[int, float] = {}
    load: dict[int, float] = {}
    at: dict[int, float] = {}
    scrapes: list[float] = []
    started = last_change = time.monotonic()
    seen = 0
    try:
        while seen < sweeps:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"bup-watchdog run exited ({proc.returncode}):\n{tail}")
            count, ms = scrape(url)
            if count is not None:
                scrapes.append(ms)
            if count is not None and count > seen:
                seen, last_change = count, time.monotonic()
                for m in marks:
                    if m <= seen and m not in rss:
                        rss[m] = status_kb(proc.pid, "VmRSS") / 1024
                        load[m] = os.getloadavg()[0]
                        at[m] = time.monotonic() - started
                        progress(
                            f"daemon: sweep {seen} of {sweeps}, RSS {rss[m]:.0f} MB "
                            f"({at[m]:.0f} s, load {load[m]:.1f})"
                        )
            if time.monotonic() - last_change > stall:
                raise RuntimeError(f"bup-watchdog run recorded no sweep for {stall:.0f} s")
            time.sleep(0.5)
        peak = status_kb(proc.pid, "VmHWM") / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    g = growth(rss)
    return {
        "sweeps": seen,
        "interval_seconds": interval,
        "rss_mb": {str(k): v for k, v in rss.items()},
        "load_avg": {str(k): v for k, v in load.items()},
        "seconds": {str(k): v for k, v in at.items()},
        "peak_rss_mb": peak,
        "growth_pct": g,
        "flat": g is not None and abs(g) <= 5.0,
        "exit_code": proc.returncode,
        "scrape_ms_median": statistics.median(scrapes) if scrapes else None,
        "scrape_ms_max": max(scrapes) if scrapes else None,
        "scrapes": len(scrapes),
    }
