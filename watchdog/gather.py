"""Gather: one probe run per host (one SSH session, however many projects), bounded parallelism.

Turns the probe's JSON lines into HostFacts as they stream in (the host's output is never held
whole); a repository's or live directory's compact record is decoded by ``watchdog.wire``.
Anything a host answers that is not the probe's facts (garbage, a truncated stream, a flood)
becomes a GatherFailure with one sentence, never a traceback, and the other hosts go on.

Incremental sweeps (optional, a ``RepoCache``): the gather sends each host's probe the fingerprints
of the repositories it already knows (see ``probe.fingerprint``); the probe walks only those whose
fingerprint changed and names the others in one ``unchanged`` record (a bitmap over the known
project ids), for which the cached facts are reused. Every repository is still walked in full at
least every ``max_age`` seconds (spread over time per repository), so what the fingerprint does
not cover is late by at most that much.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import socket
import sys
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from bup_watchdog.config import Config, DeepConfig, SshConfig
from bup_watchdog.deep import run_deep
from bup_watchdog.errors import (
    CommandTimeout,
    HostKeyError,
    HostUnreachable,
    LocalFault,
    ProbeError,
    WatchdogError,
)
from bup_watchdog.live_dirs import ProjectDirFacts
from bup_watchdog.model import (
    GatherFailure,
    HostFacts,
    MountFacts,
    ProcessFacts,
    RepoFacts,
    Server,
    TcpProbe,
    is_v4_uuid,
)
from bup_watchdog.probe import PROBE_VERSION
from bup_watchdog.repo_cache import (
    DEFAULT_MAX_AGE,
    CacheBuilder,
    CachedDir,
    HostCache,
    RepoCache,
)
from bup_watchdog.transport.base import Transport
from bup_watchdog.transport.local import LocalTransport
from bup_watchdog.transport.ssh import SshTransport, out_of_descriptors
from bup_watchdog.wire import DirWire, RepoWire, WireReader

log = logging.getLogger(__name__)

PROBE_PATH = Path(__file__).with_name("probe.py")
MAX_STRAYS_KEPT = 100


KNOWN_STATE_LINE = b'\nKNOWN_STATE = ""\n'


@cache
def probe_source() -> bytes:
    """The probe program, sent to each host on stdin."""
    return PROBE_PATH.read_bytes()


def probe_program(known: CacheBuilder | None = None) -> bytes:
    """The probe, with the host's known state filled in if any (see ``probe.KNOWN_STATE``):
    the fingerprints and digests ``known`` tells it."""
    source = probe_source()
    if known is None or not known.positions:
        return source
    if source.count(KNOWN_STATE_LINE) != 1:  # pragma: no cover - guarded by a test
        raise ProbeError("the probe has no single KNOWN_STATE line to fill in")
    blob = base64.b64encode(_compressed(known.known_state()))
    return source.replace(KNOWN_STATE_LINE, b'\nKNOWN_STATE = "' + blob + b'"\n', 1)


def _compressed(lines: Iterable[str], batch: int = 1024) -> bytes:
    """zlib of the lines, compressed a batch at a time: the whole text (about 1 MB at 10,000
    repositories, as many small strings first) is never held, while several hosts render theirs
    at once. Level 1: three times faster than the default, hardly bigger."""
    z = zlib.compressobj(1)
    out = []
    it = iter(lines)
    while chunk := "".join(itertools.islice(it, batch)):
        out.append(z.compress(chunk.encode("ascii")))
    out.append(z.flush())
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class OwnerSample:
    """How the probe samples the owners of live trees (the ownership check's settings), and the
    project to start from (the sample budget reaches it first)."""

    per_project: int = 200
    per_host: int = 50_000
    start: str = ""


def owner_sample(config: Config, start: str = "") -> OwnerSample:
    """The probe's owner sample, sized by the ownership check's settings."""
    own = config.check("ownership")
    return OwnerSample(own.sample_per_project, own.sample_per_host, start)


def probe_argv(
    server: Server,
    python: str,
    *,
    fingerprint: bool = False,
    racy_seconds: float | None = None,
    owner_sample: OwnerSample | None = None,
    live_dirs: bool = True,
    only: Collection[str] | None = None,
) -> list[str]:
    """The probe's command line on a host; every value comes from the validated inventory.

    ``fingerprint`` asks for fingerprints and digests (incremental sweeps), with the probe's
    default racy window unless ``racy_seconds`` is given; ``owner_sample`` sets the owner sample's
    sizes and start (a project id: validated here, it is a command-line argument); without
    ``live_dirs`` the probe leaves the live directories out; ``only`` (project ids, validated
    here) restricts the walk to those projects.
    """
    argv = [
        python,
        "-S",
        "-",
        "--bup-root",
        server.bup_root,
        "--projects-root",
        server.projects_root,
    ]
    if fingerprint:
        argv.append("--fingerprint")
        if racy_seconds is not None:
            argv += ["--racy-seconds", f"{racy_seconds:g}"]
    if not live_dirs:
        argv.append("--no-project-dirs")
    elif owner_sample is not None:
        argv += ["--owner-sample", str(int(owner_sample.per_project))]
        argv += ["--owner-sample-total", str(int(owner_sample.per_host))]
        if owner_sample.start:
            if not is_v4_uuid(owner_sample.start):
                raise ValueError(f"{owner_sample.start!r} is not a project id")
            argv += ["--owner-sample-from", owner_sample.start]
    for pid in sorted(set(only or ())):
        if not is_v4_uuid(pid) or pid != pid.lower():
            raise ValueError(f"{pid!r} is not a project id")
        argv += ["--only", pid]
    return argv


def tcp_probe(address: str, port: int, timeout: float) -> TcpProbe:
    """Connect to ``bup_server`` the way its clients do; report how it went.

    Raises LocalFault when the watchdog has no file descriptor left (not the server's fault).
    """
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
            pass
    except OSError as exc:
        fault = out_of_descriptors(exc)
        if fault is not None:
            raise fault from None
        seconds = time.monotonic() - started
        if isinstance(exc, TimeoutError | socket.timeout):
            why = f"no answer within {timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused"
        else:
            why = exc.strerror or str(exc)
        return TcpProbe(address, port, False, seconds, why)
    return TcpProbe(address, port, True, time.monotonic() - started)


def _share_values(rec: dict[str, Any], shared: dict[object, dict[str, Any]]) -> None:
    """Let repositories with equal ``settings`` (and ``head``) share one object (facts are
    read-only): most projects have the same few settings, and a host has thousands of them."""
    head = rec.get("head")
    if isinstance(head, str) and len(head) < 200:
        rec["head"] = sys.intern(head)
    settings = rec.get("settings")
    if not isinstance(settings, dict) or len(shared) > 10_000:
        return
    try:  # type-exact: 1 and True are equal in Python, not in the settings
        key = tuple(sorted((k, type(v).__name__, v) for k, v in settings.items()))
        rec["settings"] = shared.setdefault(key, settings)
    except TypeError:  # a list or dict value: not shared
        pass


def _last_sample(
    now: ProjectDirFacts, kept: CachedDir | None, oldest: float
) -> tuple[ProjectDirFacts, float]:
    """A directory the probe did not sample this time keeps its last sample while its top (owner,
    group, being a symlink) is the same and the sample was taken after ``oldest``: the ownership
    check then judges that sample instead of the top alone, so a wrong owner found once stays
    reported until the next sample says. Returns the facts and when their sample was taken
    (0: no sample)."""
    if kept is None or kept.facts.sample_skipped or kept.sampled_at < oldest:
        return now, 0.0
    last = kept.facts
    if (last.uid, last.gid, last.is_symlink) != (now.uid, now.gid, now.is_symlink):
        return now, 0.0
    return last, kept.sampled_at


# The 8 bits of each byte value, least significant first (the bitmaps' order, see probe.bitmap).
_BYTE_BITS = [tuple(bool(b >> i & 1) for i in range(8)) for b in range(256)]


def _bits(rec: dict[str, Any], key: str, size: int, line: int) -> list[bool]:
    """One of the ``unchanged`` record's bitmaps, a flag per known project (``size`` of them, in
    the known order); ProbeError if malformed. Unpacked by table lookups, not bit by bit: this
    runs for every repository of every incremental sweep."""
    try:
        data = base64.b64decode(str(rec.get(key, "")), validate=True)
    except ValueError:
        raise ProbeError(f"line {line}: the probe's {key} bitmap is not base64") from None
    if len(data) != (size + 7) // 8:
        raise ProbeError(
            f"line {line}: the probe's {key} bitmap has {len(data)} bytes for {size} known "
            "projects (it was not given this host's known state)"
        )
    flags = list(itertools.chain.from_iterable(map(_BYTE_BITS.__getitem__, data)))
    if any(flags[size:]):
        raise ProbeError(f"line {line}: the probe's {key} bitmap names no known project")
    return flags


def _refuse_unknown(ids: list[str], kept: list[Any], noun: str, line: int) -> None:
    """ProbeError when the probe reported unchanged what it was not told of."""
    if None in kept:
        pid = ids[kept.index(None)]
        vouched_by = "fingerprint" if noun == "repository" else "digest"
        raise ProbeError(
            f"line {line}: the probe reported {noun} {pid} unchanged, "
            f"but it was not given that {noun}'s {vouched_by}"
        )


def _reuse_unchanged(rec: dict[str, Any], line: int, known: CacheBuilder, facts: HostFacts) -> int:
    """Reuse the cached facts of what the probe reports unchanged; returns repositories reused.

    Refuses (ProbeError) a report naming a repository or directory the probe was not given a
    fingerprint or digest for: facts are only ever reused for what the gather vouched for.
    """
    size = len(known.positions)
    if rec.get("known") != size:
        raise ProbeError(
            f"line {line}: the probe knew {str(rec.get('known'))[:40]!r} projects, "
            f"it was given {size}"
        )
    repos = _bits(rec, "repos", size, line)[:size]
    dirs = _bits(rec, "project_dirs", size, line)[:size]
    repo_ids, kept_repos, dir_ids, kept_dirs = known.unchanged(repos, dirs)
    _refuse_unknown(repo_ids, kept_repos, "repository", line)
    _refuse_unknown(dir_ids, kept_dirs, "project directory", line)
    facts.repos.update(zip(repo_ids, kept_repos, strict=True))  # type: ignore[arg-type]
    facts.project_dirs.update(zip(dir_ids, kept_dirs, strict=True))  # type: ignore[arg-type]
    return len(repo_ids)


def _check_hello(rec: dict[str, Any], server_id: str) -> None:
    """A hello record of this watchdog's probe version that names its repositories' directory,
    from the server the inventory puts at this address (when the host names itself)."""
    version = rec.get("probe_version")
    if version != PROBE_VERSION:
        raise ProbeError(
            f"the host ran probe version {str(version)[:20]}, but this watchdog reads version "
            f"{PROBE_VERSION} (the watchdog sends its own probe: something on the host answered "
            "in its place)"
        )
    bups = rec.get("bups")
    if not isinstance(bups, str) or not bups:
        raise ProbeError("the probe's hello record does not name its repositories' directory")
    said = rec.get("server_id")
    if isinstance(said, str) and said.strip() and said.strip().lower() != server_id.lower():
        # Another storage host answers at this address (a reused IP, a wrong ssh_host or
        # HostName): its facts must not be filed, and repaired, under this server.
        raise ProbeError(
            f"the host says it is server {said.strip()[:40]!r} (its {rec.get('bup_root')}"
            f"/conf/bup_server_id), not {server_id}: this address reaches another storage host "
            "(check the inventory's ssh_host and any ssh_config HostName)"
        )


def _hello_scope(rec: dict[str, Any], for_cache: bool) -> frozenset[str] | None:
    """The projects a scoped probe walked (``--only``), None for a whole host's walk; a scoped
    walk never feeds the incremental cache (it would lose every other repository)."""
    only = rec.get("only")
    if only is None:
        return None
    if not isinstance(only, list) or not all(isinstance(p, str) for p in only):
        raise ProbeError("the probe's hello record names its scope in an unknown form")
    if for_cache:
        raise ProbeError("the probe walked only some projects, but a whole host was asked for")
    return frozenset(only)


def _take_dir(
    d: ProjectDirFacts,
    digest: str | None,
    before: CacheBuilder,
    facts: HostFacts,
    fresh: CacheBuilder | None,
    walked_at: float,
    keep_samples: float,
) -> None:
    """Record a live directory's facts (a kept sample when this one was skipped)."""
    skipped = d.sample_skipped
    sampled_at = 0.0 if skipped else walked_at
    if skipped:
        kept = before.previous.dir_entry(d.project_id)
        d, sampled_at = _last_sample(d, kept, walked_at - keep_samples)
    facts.project_dirs[d.project_id] = d
    if fresh is not None:
        fresh.walked_dir(d.project_id, d, digest, skipped, sampled_at)


def parse_probe_lines(
    server_id: str,
    lines: Iterable[bytes],
    facts: HostFacts,
    *,
    previous: HostCache | None = None,
    fresh: CacheBuilder | None = None,
    keep_samples: float = DEFAULT_MAX_AGE,
) -> tuple[int, int]:
    """Fill ``facts`` from the probe's JSON lines; raise ProbeError on anything else.

    Incremental gathers pass ``fresh``, a CacheBuilder over the host's entries (it knows what the
    probe was told it may skip) that receives the entries for the next sweep: a walked repository
    with a fingerprint, a project_dir record with a digest, and the previous entries of those
    reported unchanged (``previous`` instead: entries the probe was told of in full, nothing kept
    for the next sweep). A live directory whose owners were not sampled keeps a previous sample
    at most ``keep_samples`` seconds old. Returns (repositories walked, repositories reused).
    """
    walked = reused = 0
    walked_at = time.time()
    if fresh is not None and previous is not None:
        raise ValueError("previous is fresh's own (CacheBuilder.previous)")
    before = fresh if fresh is not None else CacheBuilder(previous)
    shared: dict[object, dict[str, Any]] = {}
    reader: WireReader | None = None
    for n, raw in enumerate(lines, start=1):
        if raw[:1] == b"[":  # a repository or a live directory (see probe.WireEncoder)
            if reader is None:
                raise ProbeError("the probe's output does not start with its hello record")
            wire = reader.decode(raw, n)
            if type(wire) is RepoWire:
                r = reader.repo(wire, n)
                facts.repos[r.project_id] = r
                walked += 1
                if fresh is not None:
                    fresh.walked_repo(r.project_id, r, wire.fingerprint, walked_at)
            else:
                assert isinstance(wire, DirWire)
                _take_dir(
                    reader.project_dir(wire),
                    wire.digest,
                    before,
                    facts,
                    fresh,
                    walked_at,
                    keep_samples,
                )
            continue
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            shown = raw[:80].decode("utf-8", "replace")
            raise ProbeError(f"line {n} of the probe's output is not JSON: {shown!r}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise ProbeError(f"line {n} of the probe's output is not a probe record")
        kind = rec["type"]
        if n == 1 and kind != "hello":
            raise ProbeError("the probe's output does not start with its hello record")
        if kind == "hello":
            facts.hello = rec
            _check_hello(rec, server_id)
            reader = WireReader()
            facts.scope = _hello_scope(rec, fresh is not None)
        elif kind == "mount":
            m = MountFacts.from_record(rec)
            facts.mounts[m.path] = m
        elif kind == "process":
            facts.process = ProcessFacts.from_record(rec)
        elif kind == "repo":
            _share_values(rec, shared)
            r = RepoFacts.from_record(rec)
            facts.repos[r.project_id] = r
            walked += 1
            if fresh is not None:
                fresh.walked_repo(r.project_id, r, rec.get("fingerprint"), walked_at)
        elif kind == "project_dir":
            d = ProjectDirFacts.from_record(rec)
            digest = rec.get("digest")
            digest = digest if isinstance(digest, str) else None
            _take_dir(d, digest, before, facts, fresh, walked_at, keep_samples)
        elif kind == "unchanged":
            reused += _reuse_unchanged(rec, n, before, facts)
        elif kind == "stray":
            if len(facts.strays) < MAX_STRAYS_KEPT:
                facts.strays.append(rec)
        elif kind == "done":
            facts.complete = True
        # Unknown record types from a newer probe are ignored on purpose.
    if not facts.complete:
        raise ProbeError("the probe's output stopped before its final record (truncated)")
    return walked, reused


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
    except LocalFault:
        raise
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
    repo_cache: RepoCache | None = None,
    owner_sample: OwnerSample | None = None,
    live_dirs: bool = True,
    only: Collection[str] | None = None,
) -> HostFacts:
    """Probe one host over one connection (and deep-check some repos over the same one).

    Also connects to the host's bup_server as its clients do. Never raises. With ``repo_cache``
    the walk is incremental (see the module's docstring), the owner sample starts where the
    host's last one ran out (unless ``owner_sample`` names a start), and the cache is updated
    when the host's facts came back complete. Without ``live_dirs`` the live directories are
    left out (``project_dirs`` stays empty; the cache keeps their entries for the next gather
    that looks at them). ``only`` (project ids) walks just those projects (a repair's probe):
    the facts' ``scope`` says so, and such a gather never uses or updates a ``repo_cache``.
    """
    if only is not None and (repo_cache is not None or not live_dirs):
        # a scoped walk would make the cache lose every other repository; and checks take a
        # scoped host's empty project_dirs for "listed, none there" (save_freshness)
        raise ValueError("a scoped gather (only=...) walks live directories and has no cache")
    started = time.monotonic()
    facts = HostFacts(server_id=server.server_id, gathered_at=time.time())
    transport = transport_factory(server, ssh)
    # Without the live directories, the probe is told of none and reports none: their entries
    # carry over as they are.
    fresh = repo_cache.builder(server.server_id, live_dirs) if repo_cache is not None else None
    if repo_cache is not None and not (owner_sample and owner_sample.start):
        base = owner_sample or OwnerSample()
        owner_sample = dataclasses.replace(base, start=repo_cache.sample_start(server.server_id))
    try:
        facts.bup_server_tcp = tcp_probe(server.host, server.port, tcp_timeout)
        lines = transport.stream_lines(
            probe_argv(
                server,
                ssh.python,
                fingerprint=repo_cache is not None,
                racy_seconds=repo_cache.racy_seconds if repo_cache is not None else None,
                owner_sample=owner_sample,
                live_dirs=live_dirs,
                only=only,
            ),
            stdin=probe_program(fresh),  # held by the stream only until it is sent
            timeout=ssh.command_timeout,
        )
        walked, reused = parse_probe_lines(
            server.server_id,
            lines,
            facts,
            fresh=fresh,
            keep_samples=repo_cache.max_age if repo_cache is not None else DEFAULT_MAX_AGE,
        )
        if only is not None and facts.scope != frozenset(only):
            raise ProbeError("the probe did not keep to the projects it was asked to walk (--only)")
        if repo_cache is not None and fresh is not None:
            repo_cache.replace(server.server_id, fresh.build(), walked, reused)
        if deep_select is not None and deep is not None:
            _deep_pass(transport, server, facts, deep_select, ssh, deep)
    except LocalFault as exc:
        _local_fault(facts, exc)
    except WatchdogError as exc:
        if repo_cache is not None and isinstance(exc, ProbeError):
            # a host that answered garbage is walked in full next time, from no known state
            repo_cache.forget(server.server_id)
        facts.failure = _failure_kind(exc)
        msg = str(exc)
        facts.failure_message = (
            msg if msg.startswith(transport.label) else f"{transport.label}: {msg}"
        )
        log.warning("gather %s: %s", server.label, facts.failure_message)
    except Exception as exc:  # a bug must not stop the sweep for the other hosts
        fault = out_of_descriptors(exc)
        if fault is not None:
            _local_fault(facts, fault)
        else:
            if repo_cache is not None:
                repo_cache.forget(server.server_id)
            facts.failure = GatherFailure.ERROR
            facts.failure_message = (
                f"{transport.label}: unexpected error: {type(exc).__name__}: {exc}"
            )
            log.exception("gather %s failed unexpectedly", server.label)
    finally:
        facts.ssh_sessions = transport.sessions_opened
        transport.close()
        facts.duration_seconds = time.monotonic() - started
    return facts


def _local_fault(facts: HostFacts, fault: LocalFault) -> None:
    """Mark a host's facts as missing through the watchdog's own fault (see LocalFault): the
    sweep judges nothing on it and blames it for nothing."""
    facts.failure = GatherFailure.ERROR  # for whoever does not look at local_fault
    facts.local_fault = fault.kind
    facts.failure_message = str(fault)
    log.debug("gather %s: watchdog problem (%s): %s", facts.server_id, fault.kind, fault)


def gather(
    servers: Iterable[Server],
    ssh: SshConfig,
    *,
    tcp_timeout: float = 3.0,
    on_host_done: Callable[[Server, HostFacts], None] | None = None,
    deep_select: DeepSelector | None = None,
    deep: DeepConfig | None = None,
    timeouts: Mapping[str, float] | None = None,
    repo_cache: RepoCache | None = None,
    owner_sample: OwnerSample | None = None,
    live_dirs: bool = True,
    only: Collection[str] | None = None,
) -> Iterator[HostFacts]:
    """Gather every server, at most ``ssh.parallel_hosts`` at once; yield facts as hosts finish.

    ``timeouts`` overrides the connect timeout (SSH and bup_server) per server id;
    ``repo_cache`` makes the walks incremental; ``owner_sample`` sets the owner sample;
    ``live_dirs=False`` leaves the live directories out; ``only`` scopes the walks to some
    projects (see ``gather_host``).
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
                repo_cache=repo_cache,
                owner_sample=owner_sample,
                live_dirs=live_dirs,
                only=only,
            ): s
            for s in servers
        }
        for fut in as_completed(futures):
            facts = fut.result()
            if on_host_done is not None:
                on_host_done(futures[fut], facts)
            yield facts
