"""reachability: can we reach the host, and does ``bup_server`` run where the inventory says?"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from checks.base import Check, CheckSettings, FleetFacts
from watchdog.model import Finding, GatherFailure, Inventory, Severity


class ReachabilitySettings(CheckSettings):
    """reachability: SSH to each host, TCP connect to its bup_server, process and port present."""

    connect_timeout: float = Field(
        3.0, gt=0, le=60, description="Seconds allowed for the TCP connect to bup_server."
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
            if host.failure is not None:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL,
                    code=_FAILURE_CODE[host.failure],
                    message=host.failure_message or host.failure.value,
                    details={"security": host.failure is GatherFailure.HOST_KEY},
                )
            tcp = host.bup_server_tcp
            if tcp is not None and not tcp.ok:
                yield Finding(
                    check=self.name,
                    server_id=sid,
                    severity=Severity.CRITICAL,
                    code="bup_server_unreachable",
                    message=f"bup_server at {tcp.address}:{tcp.port} (from the inventory) "
                    f"does not accept connections: {tcp.error}",
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
