"""reachability: can we reach the host, and does ``bup_server`` run where the inventory says?

The TCP connect to the inventory's port is the truth clients meet. When it answers, a
``bup_server`` process the probe did not see there (another PID namespace, a renamed process) is
informational only (severity OK, code ``bup_server_not_seen``): it never alerts, never raises the
exit status and never asks for a restart. When it refuses while a ``bup_server`` listens on another
port, one finding (``port_mismatch``) names both ports.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts
from bup_watchdog.model import Finding, GatherFailure, Inventory, Severity


class ReachabilitySettings(CheckSettings):
    """reachability: SSH to each host, TCP connect to its bup_server, process and port present."""

    connect_timeout: float = Field(
        3.0,
        gt=0,
        le=60,
        description="Base seconds allowed for TCP connects (bup_server and sshd); a host with a "
        "good record gets up to twice as long (see watchdog/suspicion.py).",
    )
    max_connect_timeout: float = Field(
        10.0, gt=0, le=120, description="Connect timeout never grows beyond this."
    )
    max_patience: int = Field(
        3,
        ge=1,
        le=20,
        description="Most failed sweeps in a row a host with a long good record gets before it is "
        "declared down (critical); earlier failures are warnings. A flapping host gets 1.",
    )


_FAILURE_CODE = {
    GatherFailure.UNREACHABLE: "ssh_unreachable",
    GatherFailure.TIMEOUT: "ssh_timeout",
    GatherFailure.HOST_KEY: "host_key",
    GatherFailure.GARBAGE: "probe_garbage",
    GatherFailure.TRUNCATED: "probe_truncated",
    GatherFailure.ERROR: "probe_error",
}


class Reachability(Check[ReachabilitySettings]):
    name = "reachability"
    Settings = ReachabilitySettings
    judges_unprobed = True

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: ReachabilitySettings
    ) -> Iterator[Finding]:
        for sid, host in sorted(facts.items()):
            server = inventory.servers.get(sid)
            if server is None:
                continue
            # Adaptive patience: a host with a good record is "down" (critical) only after
            # host.patience failed sweeps in a row; before that it is a warning that says so.
            down = host.fail_streak == 0 or host.fail_streak >= host.patience
            streak = (
                ""
                if down
                else f" (failed sweep {host.fail_streak} of {host.patience} "
                "before it is declared down)"
            )
            if host.failure is not None:
                security = host.failure is GatherFailure.HOST_KEY
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL if down or security else Severity.WARNING,
                    code=_FAILURE_CODE[host.failure],
                    message=(host.failure_message or host.failure.value)
                    + ("" if security else streak),
                    details={"security": security, "fail_streak": host.fail_streak},
                )
            tcp = host.bup_server_tcp
            proc = host.process if host.probed else None
            listening = ", ".join(str(p) for p in sorted(proc.ports)) if proc else ""
            elsewhere = proc is not None and proc.running and server.port not in proc.ports
            if tcp is not None and not tcp.ok:
                if elsewhere and proc is not None and proc.ports:
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        severity=Severity.CRITICAL if down else Severity.WARNING,
                        code="port_mismatch",
                        message=f"bup_server at {tcp.address}:{tcp.port} (from the inventory) "
                        f"does not accept connections ({tcp.error}): bup_server listens on port "
                        f"{listening} instead; clients using the inventory fail{streak}",
                        value=float(server.port),
                        details={"inventory_port": server.port, "listening": sorted(proc.ports)},
                    )
                else:
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        severity=Severity.CRITICAL if down else Severity.WARNING,
                        code="bup_server_unreachable",
                        message=f"bup_server at {tcp.address}:{tcp.port} (from the inventory) "
                        f"does not accept connections: {tcp.error}{streak}",
                        value=tcp.seconds,
                    )
            if proc is None:
                continue
            if tcp is not None and tcp.ok:
                if not proc.running or elsewhere:
                    seen = (
                        f"the {proc.name} process seen listens on {listening or 'no port'}"
                        if proc.running
                        else f"no {proc.name} process was seen"
                    )
                    yield Finding(
                        check=self.name,
                        server_id=sid,
                        severity=Severity.OK,
                        code="bup_server_not_seen",
                        message=f"bup_server answers at {tcp.address}:{tcp.port} as the inventory "
                        f"says, but {seen} on {server.label} (another PID namespace or process "
                        "name?); informational only",
                        details={"inventory_port": server.port, "listening": sorted(proc.ports)},
                    )
            elif not proc.running:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL,
                    code="bup_server_not_running",
                    message=f"no {proc.name} process runs on {server.label}",
                )
            elif elsewhere and tcp is None:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.WARNING,
                    code="port_mismatch",
                    message=f"the inventory says bup_server listens on port {server.port}, "
                    f"but it listens on {listening or 'no port'}; clients using the inventory "
                    "will fail",
                    value=float(server.port),
                    details={"inventory_port": server.port, "listening": sorted(proc.ports)},
                )


check = Reachability()
