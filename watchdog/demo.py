"""``bup-watchdog demo``: build a sandbox fleet here, sweep it, show and serve the results.

The sandbox is a handful of real sshd hosts in their own mount namespaces with real bup repositories
and planted faults (see ``watchdog.sandbox.spec.demo_spec``). Everything is torn down at the end.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import click

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.daemon import build_http
from bup_watchdog.http.app import HttpServer
from bup_watchdog.output import make_console, print_table
from bup_watchdog.runner import Runner, inventory_source, open_state
from bup_watchdog.sandbox.expected import compare, expected_findings, observed
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import demo_spec


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@click.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Build the fleet here and keep the directory afterwards (default: a temporary one).",
)
@click.option(
    "--serve",
    "serve_seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Serve /metrics this many seconds after the sweep (0: don't serve; Ctrl-C ends early).",
)
def demo(workdir: Path | None, serve_seconds: float) -> None:
    """Build a sandbox fleet with planted faults, sweep it, print findings, serve /metrics.

    Needs root (mount namespaces, sshd) and the Debian packages bup, openssh-server and rsync.
    Exit code: 0 when exactly the planted faults were found, 1 otherwise, 3 when it could not run.
    """
    console = make_console()
    signal.signal(signal.SIGTERM, _raise_exit)
    root = workdir or Path(tempfile.mkdtemp(prefix="bup-watchdog-demo-"))
    spec = demo_spec()
    fleet = SandboxFleet(root, spec, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    server: HttpServer | None = None
    code = 3
    try:
        t0 = time.monotonic()
        console.print(f"Building the sandbox fleet in {root} …")
        fleet.start()
        console.print(
            f"{len(spec.hosts)} hosts, {len(spec.projects)} projects ready in "
            f"{time.monotonic() - t0:.1f} s; config: {fleet.config_path}"
        )
        config = load_config(fleet.config_path, settings_models())
        state = open_state(config)
        runner = Runner(config, state, inventory_source(config))
        result = runner.run_once(deep=True, force=True)
        if result is None:
            raise RuntimeError("the demo config enables no check")
        inventory = result.inventory
        print_table(result, console)
        names = {s.server_id: s.label for s in inventory.servers.values()}
        warn = config.check("save_log_size").warn_bytes
        fresh = config.check("save_freshness").warn_seconds
        cmp = compare(expected_findings(spec, warn, fresh), observed(result.findings, names))
        total = len(cmp.found) + len(cmp.missed)
        console.print(
            f"Planted faults found: {len(cmp.found)}/{total}; findings on healthy targets: "
            f"{len(cmp.unexpected)}"
        )
        for e in sorted(cmp.missed):
            console.print(f"[red]  missed: {e}[/]")
        for e in sorted(cmp.unexpected):
            console.print(f"[red]  unexpected: {e}[/]")
        code = 0 if cmp.exact else 1
        if serve_seconds > 0:
            server = build_http(config, state)
            server.start()
            console.print(
                f"Serving http://{config.http.listen}/metrics for {serve_seconds:g} s "
                "(Ctrl-C to stop) …"
            )
            time.sleep(serve_seconds)
    except KeyboardInterrupt:
        console.print("Interrupted.")
    except Exception as exc:
        console.print(f"[red]demo failed: {type(exc).__name__}: {exc}[/]")
        code = 3
    finally:
        if server is not None:
            server.stop()
        console.print("Tearing the sandbox fleet down …")
        fleet.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(code)
