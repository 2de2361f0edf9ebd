"""Gather: one probe run per host (one SSH session, however many projects), bounded parallelism.

Turns the probe's JSON lines into HostFacts. Anything a host answers that is not the probe's facts
(garbage, a truncated stream, a flood) becomes a GatherFailure with one sentence, never a traceback,
and the other hosts go on.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cache
from pathlib import Path

from watchdog.config import DeepConfig, SshConfig
from watchdog.deep import run_deep
from watchdog.errors import (
    CommandTimeout,
    HostKeyError,
    HostUnreachable,
    ProbeError,
    WatchdogError,
)
from watchdog.model import (
    GatherFailure,
    HostFacts,
    MountFacts,
    ProcessFacts,
    ProjectDirFacts,
    RepoFacts,
    Server,
    TcpProbe,
)
from watchdog.transport.base import Transport
from watchdog.transport.local import LocalTransport
from watchdog.transport.ssh import SshTransport

log = logging.getLogger(__name__)

PROBE_PATH = Path(__file__).with_name("probe.py")
MAX_STRAYS_KEPT = 100


@cache
def probe_source() -> bytes:
    """The probe program, sent to each host on stdin."""
    return PROBE_PATH.read_bytes()


def probe_argv(server: Server, python: str) -> list[str]:
    """The probe's command line on a host; every value comes from the validated inventory."""
    return [
        python,
        "-S",
        "-",
        "--bup-root",
        server.bup_root,
        "--projects-root",
        server.projects_root,
    ]


def tcp_probe(address: str, port: int, timeout: float) -> TcpProbe:
    """Connect to ``bup_server`` the way its clients do; report how it went."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
            pass
    except OSError as exc:
        seconds = time.monotonic() - started
        if isinstance(exc, TimeoutError | socket.timeout):
            why = f"no answer within {timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused"
        else:
            why = exc.strerror or str(exc)
        return TcpProbe(address, port, False, seconds, why)
    return TcpProbe(address, port, True, time.monotonic() - started)


def parse_probe_lines(server_id: str, lines: Iterable[bytes], facts: HostFacts) -> None:
    """Fill ``facts`` from the probe's JSON lines; raise ProbeError on anything else."""
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            shown = raw[:80].decode("utf-8", "replace")
            raise ProbeError(f"line {n} of the probe's output is not JSON: {shown!r}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise ProbeError(f"line {n} of the probe's output is not a probe record")
        kind = rec["type"]
        if n == 1 and kind != "hello":
            raise ProbeError("the probe's output does not start with its hello record")
        if kind == "hello":
            facts.hello = rec
        elif kind == "mount":
            m = MountFacts.from_record(rec)
            facts.mounts[m.path] = m
        elif kind == "process":
            facts.process = ProcessFacts.from_record(rec)
        elif kind == "repo":
            r = RepoFacts.from_record(rec)
            facts.repos[r.project_id] = r
        elif kind == "project_dir":
            d = ProjectDirFacts.from_record(rec)
            facts.project_dirs[d.project_id] = d
        elif kind == "stray":
            if len(facts.strays) < MAX_STRAYS_KEPT:
                facts.strays.append(rec)
        elif kind == "done":
            facts.complete = True
        # Unknown record types from a newer probe are ignored on purpose.
    if not facts.complete:
        raise ProbeError("the probe's output stopped before its final record (truncated)")


def _failure_kind(exc: WatchdogError) -> GatherFailure:
    if isinstance(exc, HostKeyError):
        return GatherFailure.HOST_KEY
    if isinstance(exc, CommandTimeout):
        return GatherFailure.TIMEOUT
    if isinstance(exc, HostUnreachable):
        return GatherFailure.UNREACHABLE
    if isinstance(exc, ProbeError):
        return GatherFailure.TRUNCATED if "truncated" in str(exc) else GatherFailure.GARBAGE
    return GatherFailure.ERROR


def make_transport(server: Server, ssh: SshConfig) -> Transport:
    """The transport for a server: SSH, or local for the machine the watchdog runs on."""
    if server.transport == "local":
        return LocalTransport(
            server.label, timeout=ssh.command_timeout, max_output_bytes=ssh.max_output_bytes
        )
    return SshTransport(server, ssh)


DeepSelector = Callable[[HostFacts], list[str]]


def _deep_pass(
    transport: Transport,
    server: Server,
    facts: HostFacts,
    select: DeepSelector,
    ssh: SshConfig,
    deep: DeepConfig,
) -> None:
    """Deep-check the selected repos over the same connection; failures are recorded, not raised."""
    ids = select(facts)
    if not ids:
        return
    try:
        results = run_deep(transport, server, ids, deep, ssh.python)
    except WatchdogError as exc:
        facts.deep_error = str(exc)
        log.warning("deep check on %s: %s", server.label, exc)
        return
    facts.deep.update({r.project_id: r for r in results})
    facts.deep_checked_now = len(results)


def gather_host(
    server: Server,
    ssh: SshConfig,
    *,
    tcp_timeout: float = 3.0,
    transport_factory: Callable[[Server, SshConfig], Transport] = make_transport,
    deep_select: DeepSelector | None = None,
    deep: DeepConfig | None = None,
) -> HostFacts:
    """Probe one host over one connection (and deep-check some repos over the same one).

    Also connects to the host's bup_server as its clients do. Never raises.
    """
    started = time.monotonic()
    facts = HostFacts(server_id=server.server_id, gathered_at=time.time())
    facts.bup_server_tcp = tcp_probe(server.host, server.port, tcp_timeout)
    transport = transport_factory(server, ssh)
    try:
        lines = transport.stream_lines(
            probe_argv(server, ssh.python), stdin=probe_source(), timeout=ssh.command_timeout
        )
        parse_probe_lines(server.server_id, lines, facts)
        if deep_select is not None and deep is not None:
            _deep_pass(transport, server, facts, deep_select, ssh, deep)
    except WatchdogError as exc:
        facts.failure = _failure_kind(exc)
        msg = str(exc)
        facts.failure_message = (
            msg if msg.startswith(transport.label) else f"{transport.label}: {msg}"
        )
        log.warning("gather %s: %s", server.label, facts.failure_message)
    except Exception as exc:  # a bug must not stop the sweep for the other hosts
        facts.failure = GatherFailure.ERROR
        facts.failure_message = f"{transport.label}: unexpected error: {type(exc).__name__}: {exc}"
        log.exception("gather %s failed unexpectedly", server.label)
    finally:
        facts.ssh_sessions = transport.sessions_opened
        transport.close()
        facts.duration_seconds = time.monotonic() - started
    return facts


def gather(
    servers: Iterable[Server],
    ssh: SshConfig,
    *,
    tcp_timeout: float = 3.0,
    on_host_done: Callable[[Server, HostFacts], None] | None = None,
    deep_select: DeepSelector | None = None,
    deep: DeepConfig | None = None,
    timeouts: Mapping[str, float] | None = None,
) -> Iterator[HostFacts]:
    """Gather every server, at most ``ssh.parallel_hosts`` at once; yield facts as hosts finish.

    ``timeouts`` overrides the connect timeout (SSH and bup_server) per server id.
    """
    timeouts = timeouts or {}

    def ssh_for(s: Server) -> SshConfig:
        t = timeouts.get(s.server_id)
        return ssh if t is None else ssh.model_copy(update={"connect_timeout": t})

    servers = list(servers)
    if not servers:
        return
    with ThreadPoolExecutor(max_workers=min(ssh.parallel_hosts, len(servers))) as pool:
        futures = {
            pool.submit(
                gather_host,
                s,
                ssh_for(s),
                tcp_timeout=timeouts.get(s.server_id, tcp_timeout),
                deep_select=deep_select,
                deep=deep,
            ): s
            for s in servers
        }
        for fut in as_completed(futures):
            facts = fut.result()
            if on_host_done is not None:
                on_host_done(futures[fut], facts)
            yield facts
