"""Benchmark: the probe's output on the wire and the watchdog's decode of it, per repository.

Builds a ``bench.fleet.bench_spec`` sandbox fleet (planted faults included), runs the probe on
each host over the real SSH transport exactly as a sweep does (with and without
``--fingerprint``; in its compact form and with ``--readable``, the dicts of probe version 1,
which the gather still reads the old way: ``json`` and ``RepoFacts.from_record``) and keeps its
lines; then times ``gather.parse_probe_lines`` alone over those lines (no transport, no checks),
median of ``--runs``, and checks that both forms give equal facts. Prints one JSON object: bytes
of probe output per repository (whole stream, and repository and live-directory records alone)
and decode µs per repository. Run as root from the repository:

    .venv/bin/python bench/probe_wire.py --hosts 4 --repos 2500
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import bench_spec
from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.gather import make_transport, parse_probe_lines, probe_argv, probe_source
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import HostFacts
from bup_watchdog.sandbox.fleet import SandboxFleet


def _is_repo_line(line: bytes) -> bool:
    """A repository or live-directory record in either form (a dict, or an array)."""
    return line.startswith(b"[") or b'"type": "repo"' in line or b'"type": "project_dir"' in line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--repos", type=int, default=2500, help="repositories per host")
    ap.add_argument("--runs", type=int, default=5, help="decode runs (median shown)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    spec = bench_spec(args.hosts, args.repos, seed=args.seed)
    out: dict[str, Any] = {"hosts": args.hosts, "load_avg": os.getloadavg()}
    reference: dict[str, HostFacts] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bupwatch-wire-") as tmp,
        SandboxFleet(Path(tmp), spec) as fleet,
    ):
        config = load_config(fleet.config_path, settings_models())
        assert config.inventory.file is not None
        inventory = FileInventory(config.inventory.file).load()
        modes = [
            (f"{form}{'+fingerprint' if fp else ''}", fp, form == "readable")
            for fp in (False, True)
            for form in ("readable", "compact")
        ]
        for mode, fp, readable in modes:
            streams: list[tuple[str, list[bytes]]] = []
            for server in inventory.servers.values():
                transport = make_transport(server, config.ssh)
                try:
                    argv = probe_argv(server, config.ssh.python, fingerprint=fp)
                    argv += ["--readable"] if readable else []
                    lines = list(transport.stream_lines(argv, stdin=probe_source()))
                finally:
                    transport.close()
                streams.append((server.server_id, lines))
            total = sum(len(x) for _, lines in streams for x in lines)
            repo_bytes = sum(len(x) for _, ls in streams for x in ls if _is_repo_line(x))
            repos = 0
            times = []
            last: dict[str, HostFacts] = {}
            for _ in range(args.runs):
                gc.collect()
                t0 = time.process_time()
                repos = 0
                for sid, lines in streams:
                    facts = HostFacts(server_id=sid, gathered_at=0.0)
                    parse_probe_lines(sid, lines, facts)
                    repos += len(facts.repos)
                    last[sid] = facts
                times.append(time.process_time() - t0)
            if readable:
                reference = last
            out[mode] = {
                "facts_equal_to_readable": all(
                    (f.repos, f.project_dirs) == (reference[s].repos, reference[s].project_dirs)
                    for s, f in last.items()
                ),
                "repos": repos,
                "bytes_per_repo_stream": round(total / repos, 1),
                "bytes_per_repo_records": round(repo_bytes / repos, 1),
                "decode_us_per_repo_median": round(1e6 * statistics.median(times) / repos, 2),
                "decode_us_per_repo_runs": [round(1e6 * t / repos, 2) for t in times],
            }
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
