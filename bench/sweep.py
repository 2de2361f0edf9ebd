"""Benchmark: one full cheap sweep of a sandbox fleet of H hosts × P repositories.

Prints the build time, the sweep's wall and CPU time, SSH sessions opened and the watchdog's peak
RSS. Run as root from the repository:  .venv/bin/python bench/sweep.py --hosts 3 --repos 1000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import demo_spec, scaled_spec
from bup_watchdog.sweep import sweep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--repos", type=int, default=1000, help="repositories per host")
    ap.add_argument("--demo", action="store_true", help="measure the demo fleet instead")
    ap.add_argument("--sweeps", type=int, default=3, help="sweeps to run (best and median shown)")
    args = ap.parse_args()
    spec = demo_spec() if args.demo else scaled_spec(args.hosts, args.repos)
    with tempfile.TemporaryDirectory(prefix="bupwatch-bench-") as tmp:
        t0 = time.monotonic()
        with SandboxFleet(Path(tmp), spec) as fleet:
            built = time.monotonic() - t0
            config = load_config(fleet.config_path, settings_models())
            assert config.inventory.file is not None
            inventory = FileInventory(config.inventory.file).load()
            rows = []
            for _ in range(args.sweeps):
                c0 = time.process_time()
                result = sweep(config, inventory)
                rows.append((result.seconds, time.process_time() - c0, result))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    walls = sorted(r[0] for r in rows)
    last = rows[-1][2]
    repos = sum(len(f.repos) for f in last.facts.values())
    print(f"fleet: {len(spec.hosts)} hosts, {repos} repositories (built in {built:.1f} s)")
    print(
        f"sweeps: {args.sweeps}; wall best {walls[0]:.3f} s, median {walls[len(walls) // 2]:.3f} s"
    )
    print(
        f"watchdog CPU per sweep: {rows[-1][1]:.3f} s; per repository: "
        f"{1000 * walls[0] / max(repos, 1):.3f} ms wall"
    )
    per_host = last.ssh_sessions / len(spec.hosts)
    print(f"SSH sessions per sweep: {last.ssh_sessions} ({per_host:.1f} per host)")
    print(f"findings: {len(last.findings)}; peak RSS of the watchdog process: {rss_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
