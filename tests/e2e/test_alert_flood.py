"""An alert flood against the real daemon: 1,000 alerts in a burst for 50 targets.

Both hosts' bup_server is stopped, so every alert asks for a real restart. The webhook only
enqueues, so it answers fast; the guard's limits (here restart_bup_server's max_per_hour = 1) bound
what runs; no alert fingerprint is acted on twice.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bup_watchdog.journal import Journal
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from support.alerts import bup_server_down
from support.daemon import daemon_config
from support.prometheus import WatchdogDaemon, poll


def test_a_burst_of_1000_alerts_for_50_targets_stays_within_the_guards_limits(
    scratch_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config, url, token_file = daemon_config(scratch_fleet, tmp_path, "auto", max_per_hour=1)
    for host in ("s1", "s2"):
        scratch_fleet.hosts[host].stop_bup_server()
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    servers = [scratch_fleet.server_id("s1"), scratch_fleet.server_id("s2")]
    work = [(f"{i % 50:04x}", servers[i % 50 % 2]) for i in range(1000)]
    with WatchdogDaemon(config) as daemon:

        def up() -> bool | None:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200 or None
            except httpx.HTTPError:
                return None

        poll(
            up,
            timeout=30,
            what="the daemon to answer",
            alive=daemon.dead,
        )
        with httpx.Client(timeout=10) as client:

            def post(item: tuple[str, str]) -> tuple[float, int]:
                started = time.perf_counter()
                r = client.post(
                    f"{url}/alertmanager",
                    json=bup_server_down(item, summary="flood"),
                    headers=headers,
                )
                return time.perf_counter() - started, r.status_code

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(post, work))
            burst = time.perf_counter() - t0
        assert {code for _, code in results} == {200}
        latencies = sorted(s for s, _ in results)
        p99 = latencies[int(0.99 * len(latencies)) - 1]
        print(
            f"1000 alerts in {burst:.2f} s; webhook latency median "
            f"{statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )
        state = State(tmp_path / "state" / "state.db")
        journal = Journal(state)

        def settled() -> bool | None:
            before = len(journal.entries(limit=100_000))
            time.sleep(2)
            return (len(journal.entries(limit=100_000)) == before) or None

        poll(settled, timeout=120, what="the repair queue to drain", alive=daemon.dead)
        assert daemon.dead() is None, "the daemon survived the flood"
    entries = journal.entries(limit=100_000)
    started = [e for e in entries if e.started_at is not None]
    per_host = Counter(e.server_id for e in started)
    assert len(started) == 1, "restart_bup_server's max_per_hour = 1: one runs, no more"
    refusals = Counter((e.refusal or "").split(":")[0] for e in entries if e.status == "refused")
    assert refusals["rate_limited"] >= 1, refusals
    runs_per_fingerprint = Counter(e.fingerprint for e in started)
    assert all(n == 1 for n in runs_per_fingerprint.values()), "no alert acted on twice"
    print(
        f"journal rows: {len(entries)}; repairs started: {len(started)} {dict(per_host)}; "
        f"refusals: {dict(refusals)}"
    )
