"""One contender of the lease contention test: a process with its own state and guard that fires
N repair requests for one target at once, at an agreed wall-clock time.

    PYTHONPATH=.:tests python -m support.lease_contender CONFIG REPAIR SERVER_ID THREADS

Everything slow (imports, loading the inventory, connecting to Cassandra) happens first; then it
prints ``ready`` and waits for a line on stdin with the wall-clock time to fire at, so that the
requests of all processes meet at the lease. Then it prints one JSON line: this process's
decisions and the lease renewals it made. (Run with ``-m``: as a script, ``tests/support`` would
be first on the path and its ``cassandra`` package would hide the driver.)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.guard import Decision, Guard
from bup_watchdog.journal import Journal
from bup_watchdog.leases import lease_backend
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory, open_state


def main(argv: list[str]) -> int:
    config_path, repair, server_id, threads = argv
    config = load_config(Path(config_path), settings_models())
    state = open_state(config)
    inventory = load_inventory(inventory_source(config), state)
    leases = lease_backend(config, Journal(state))
    leases.holder("warm-up")  # connect and prepare now, not at the start line
    decisions: list[Decision] = []
    lock = threading.Lock()
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())

    def contend(i: int) -> None:
        guard = Guard(config, state, inventory, leases=leases)
        req = RepairRequest(repair, server_id, requested_by=f"contender {os.getpid()}/{i}")
        time.sleep(max(0.0, start_at - time.time()))
        decision = guard.submit(req, execute=True)
        with lock:
            decisions.append(decision)

    workers = [threading.Thread(target=contend, args=(i,)) for i in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "decisions": [[d.status, d.message] for d in decisions],
                "renewals": leases.renewals,
            }
        )
    )
    leases.close()
    state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
