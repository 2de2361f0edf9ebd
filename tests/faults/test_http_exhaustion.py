"""Idle connections against the real daemon under ``ulimit -n 1024``: 2,000 slowloris sockets
that send a request head without its blank line and hold, reopened as fast as the server closes
them, must not slow /metrics, fail a sweep or make a healthy host look broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bup_watchdog.config import HttpConfig
from bup_watchdog.http.limits import HttpLimits
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harness import AtStake, Daemon, sample, sweeps, wait_metric, wait_until, write_config
from faults.recorder import Reliability
from support.scrape import by_label, metrics

CONNECTIONS = 2000
ATTACK_SECONDS = 35.0
#: Scrapes are timed for this long once the daemon holds its connection limit, inside the
#: attack: up to ATTACK_SECONDS - MEASURE_SECONDS - 1 s may go to reaching it (about 1 s here).
MEASURE_SECONDS = 17.0
REOPEN_PER_SECOND = 400.0
OPEN_FILES = 1024
SLOWLORIS = Path(__file__).with_name("slowloris.py")


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def test_two_thousand_slowloris_connections_under_ulimit_1024_leave_metrics_fast_and_sweeps_clean(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    config, url, _ = write_config(fleet, tmp_path)
    prefix = ["prlimit", f"--nofile={OPEN_FILES}:{OPEN_FILES}", "--"]  # soft = hard: no raising
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with Daemon(config, url, prefix=prefix) as daemon:
        before = wait_metric(daemon, lambda f: sweeps(f) >= 1, what="the first sweep")
        # A new connection for every scrape (no keep-alive): a slot has to be found each time.
        scraper = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
        quiet = []
        for _ in range(40):
            t0 = time.monotonic()
            scraper.get(f"{url}/metrics").raise_for_status()
            quiet.append(time.monotonic() - t0)
        quiet.sort()
        log_before = daemon.log_path.stat().st_size
        # The attack has taken hold when the daemon holds as many connections as it allows
        # (a little less: a sweep's descriptors counted now may be gone). It holds no more than
        # that and one burst of accepts, so a fixed count above it may never be seen.
        limit = HttpLimits.from_config(HttpConfig(), OPEN_FILES).max_connections
        held = _fds(daemon.pid) + limit - 16
        seen: list[int] = []

        def holding() -> bool:
            seen.append(_fds(daemon.pid))
            return seen[-1] >= held

        attacker = subprocess.Popen(
            [
                sys.executable,
                str(SLOWLORIS),
                host,
                port,
                str(CONNECTIONS),
                str(ATTACK_SECONDS),
                str(REOPEN_PER_SECOND),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        peak_fds = [0]
        watching = threading.Event()

        def watch_fds() -> None:
            while not watching.wait(0.05):
                peak_fds[0] = max(peak_fds[0], _fds(daemon.pid))

        watcher = threading.Thread(target=watch_fds, daemon=True)
        watcher.start()
        try:
            try:
                wait_until(
                    holding,
                    timeout=ATTACK_SECONDS - MEASURE_SECONDS - 1,
                    what=f"the daemon to hold {held} descriptors",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc} (one in 20 counts seen: {seen[::20]})") from None
            start_sweeps = sweeps(metrics(url))
            latencies: list[float] = []
            failures: list[str] = []
            end = time.monotonic() + MEASURE_SECONDS
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    r = scraper.get(f"{url}/metrics")
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
            during = metrics(url)
        finally:
            out, _ = attacker.communicate(timeout=ATTACK_SECONDS + 30)
            watching.set()
            watcher.join()
            scraper.close()
        stats = json.loads(out.strip().splitlines()[-1])
        after = wait_metric(
            daemon, lambda f: sweeps(f) > sweeps(during), what="a sweep after the attack"
        )
        log_growth = daemon.log_path.stat().st_size - log_before
        code = daemon.stop()
    state = State(tmp_path / "state" / "state.db")
    open_findings = state.open_findings()
    state.close()
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    p50 = latencies[len(latencies) // 2]
    problems = by_label(after, "bupwatch_watchdog_problem", "kind")
    lost = stake.loss()

    assert stats["opened"] >= CONNECTIONS, stats
    assert peak_fds[0] < OPEN_FILES, f"the daemon held {peak_fds[0]} descriptors"
    assert not failures, f"{len(failures)} of {len(latencies)} scrapes failed: {failures[:5]}"
    # Starved, a scrape waits for a free slot: for the 10 s request timeout, or until the
    # scraper's own 5 s timeout fails it. One second apart from that tells starvation from a
    # machine merely busy with other work (p99 up to ~0.4 s on 2 loaded cores, ~20 ms quiet);
    # the figure itself goes into the reliability record below.
    assert p99 < 1.0, (
        f"/metrics p99 {p99 * 1000:.0f} ms (p50 {p50 * 1000:.0f} ms; before the attack p50 "
        f"{quiet[20] * 1000:.0f} ms, max {quiet[-1] * 1000:.0f} ms)"
    )
    assert sweeps(during) >= start_sweeps + 2, "fewer than two sweeps ran during the attack"
    assert not any(problems.values()), problems
    assert open_findings == [], [f"{f.check}/{f.code}: {f.message}" for f in open_findings]
    assert log_growth < 1 << 20, f"the log grew {log_growth} bytes"
    assert code == 0 and not daemon.crashed
    assert lost.bytes_lost == 0, lost.lost
    assert sample(before, "bupwatch_sweeps_total")
    reliability.record(
        area="load",
        what=f"{CONNECTIONS} slowloris connections (request head without its blank line, held; "
        f"reopened when closed) at the daemon under ulimit -n {OPEN_FILES}, {ATTACK_SECONDS:g} s",
        expected="/metrics from a new connection within 1 s p99 (no wait for a slot); sweeps go "
        "on with no host finding and no watchdog problem; the daemon stays under its open-file "
        "limit; log under 1 MB",
        observed=f"{stats['opened']} connections opened, {stats['closed_by_server']} closed by "
        f"the daemon ({stats['answered_503']} with 503); daemon peak {peak_fds[0]} descriptors; "
        f"/metrics p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(latencies)} "
        f"scrapes (before: p50 {quiet[20] * 1000:.1f} ms), 0 failed; sweeps "
        f"{start_sweeps:g} -> {sweeps(during):g} during the attack, "
        f"0 findings; log +{log_growth // 1024} KiB",
        loss=lost,
    )
