"""reachability: can we reach the host, and does ``bup_server`` run where the inventory says?"""

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
            if tcp is not None and not tcp.ok:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL if down else Severity.WARNING,
                    code="bup_server_unreachable",
                    message=f"bup_server at {tcp.address}:{tcp.port} (from the inventory) "
                    f"does not accept connections: {tcp.error}{streak}",
                    value=tcp.seconds,
                )
            if not host.probed or host.process is None:
                continue
            proc = host.process
            if not proc.running:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL,
                    code="bup_server_not_running",
                    message=f"no {proc.name} process runs on {server.label}",
                )
            elif server.port not in proc.ports:
                listening = ", ".join(str(p) for p in sorted(proc.ports)) or "no port"
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.WARNING,
                    code="port_mismatch",
                    message=f"the inventory says bup_server listens on port {server.port}, "
                    f"but it listens on {listening}; clients using the inventory will fail",
                    value=float(server.port),
                    details={"inventory_port": server.port, "listening": sorted(proc.ports)},
                )


check = Reachability()
