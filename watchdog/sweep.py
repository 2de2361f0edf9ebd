"""One sweep: inventory -> gather (one probe per host) -> checks (pure) -> findings.

Checks run only on the facts; a check that raises is recorded as a watchdog error for that check
and the others still run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from bup_watchdog.checks import registry
from bup_watchdog.checks.base import Check, CheckSettings
from bup_watchdog.checks.replication_lag import Head, replica_lags, with_heads
from bup_watchdog.config import Config
from bup_watchdog.deep import select as select_for_deep
from bup_watchdog.gather import gather, owner_sample
from bup_watchdog.model import Finding, HostFacts, Inventory, Server, Severity
from bup_watchdog.repo_cache import RepoCache
from bup_watchdog.state import State
from bup_watchdog.suspicion import HostRecord, connect_timeout, patience
from bup_watchdog.suspicion import update as update_record

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckRun:
    """How one check went in one sweep."""

    name: str
    seconds: float
    findings: int
    error: str | None = None
    #: (server id, project id) the check could not judge in this sweep (see Check.unjudged).
    unjudged: frozenset[tuple[str, str]] = frozenset()


@dataclass(slots=True)
class SweepResult:
    """Everything one sweep produced."""

    inventory: Inventory
    facts: dict[str, HostFacts]
    findings: list[Finding]
    checks: dict[str, CheckRun]
    started: float
    seconds: float
    ssh_sessions: int = 0
    errors: list[str] = field(default_factory=list)
    #: The watchdog's own faults (errors.LocalFault), kind -> sentence; the hosts they hid are
    #: left out of ``facts`` (not judged, not blamed, not counted by the breaker).
    local_faults: dict[str, str] = field(default_factory=dict)
    #: How many selected hosts a local fault kept out of ``facts``.
    unswept: int = 0
    #: What the sweep was asked to judge and could not, one sentence each (see ``not_judged``).
    not_judged: list[str] = field(default_factory=list)
    #: replication_lag's facts: ``facts`` plus the masters other watchdogs published heads of.
    lag_facts: dict[str, HostFacts] | None = None

    @property
    def worst(self) -> Severity:
        """The Nagios status of the sweep: the worst finding; UNKNOWN if a check failed, the
        watchdog had a fault of its own, or a check judged less than it was asked to (a check
        that judged nothing is no "OK")."""
        worst = max((f.severity for f in self.findings), default=Severity.OK)
        if any(c.error for c in self.checks.values()) or self.local_faults or self.not_judged:
            worst = max(worst, Severity.UNKNOWN)
        return worst


def select_servers(inventory: Inventory, wanted: Collection[str] = ()) -> list[Server]:
    """Servers to sweep: all, or those named by id or name (an unknown name, or one that two
    servers share, raises ValueError)."""
    if not wanted:
        return sorted(inventory.servers.values(), key=lambda s: (s.dc, s.label))
    by_key: dict[str, Server] = {}
    by_name: dict[str, list[Server]] = {}
    for s in inventory.servers.values():
        by_key[s.server_id] = s
        if s.name:
            by_name.setdefault(s.name, []).append(s)
    for name, named in by_name.items():
        if len(named) > 1 and name in wanted and name not in by_key:
            ids = ", ".join(sorted(s.server_id for s in named))
            raise ValueError(f"server name {name!r} is ambiguous ({ids}): name one by its id")
        by_key.setdefault(name, named[0])
    missing = [w for w in wanted if w not in by_key]
    if missing:
        raise ValueError(f"no such server in the inventory: {', '.join(missing)}")
    return sorted({by_key[w].server_id: by_key[w] for w in wanted}.values(), key=lambda s: s.label)


def run_checks(
    facts: Mapping[str, HostFacts],
    inventory: Inventory,
    config: Config,
    only: Collection[str] = (),
    checks: Mapping[str, Check[CheckSettings]] | None = None,
    facts_for: Mapping[str, Mapping[str, HostFacts]] | None = None,
) -> tuple[list[Finding], dict[str, CheckRun]]:
    """Run the enabled checks on gathered facts; a failing check is isolated and recorded.

    ``facts_for`` gives a check other facts than the gathered ones (replication_lag: with the
    heads other watchdogs published)."""
    checks = registry() if checks is None else checks
    findings: list[Finding] = []
    runs: dict[str, CheckRun] = {}
    for name, check in checks.items():
        settings = config.check(name)
        if (only and name not in only) or not settings.enabled:
            continue
        started = time.monotonic()
        seen = (facts_for or {}).get(name, facts)
        try:
            found = list(check.evaluate(seen, inventory, settings))
            unjudged = frozenset(check.unjudged(seen, inventory, settings))
        except Exception as exc:
            log.exception("check %s failed", name)
            runs[name] = CheckRun(
                name, time.monotonic() - started, 0, f"{type(exc).__name__}: {exc}"
            )
            continue
        findings.extend(found)
        runs[name] = CheckRun(name, time.monotonic() - started, len(found), None, unjudged)
    return findings, runs


def sweep(
    config: Config,
    inventory: Inventory,
    *,
    only: Collection[str] = (),
    servers: Collection[str] = (),
    on_host_done: Callable[[Server, HostFacts], None] | None = None,
    state: State | None = None,
    deep: bool = False,
    repo_cache: RepoCache | None = None,
    heads: Collection[Head] = (),
    heads_max_age: float = 0.0,
) -> SweepResult:
    """Gather every selected host once, then run the selected checks on what came back.

    ``heads``: master heads other watchdogs published (``watchdog/shared_heads.py``), believed
    by replication_lag when at most ``heads_max_age`` seconds old.

    With ``deep``, each host also deep-checks a budget of repositories over the same connection;
    with ``state``, deep results are kept and the latest result of every repository is judged.
    With ``repo_cache`` (kept by the caller from one sweep to the next) the hosts' walks are
    incremental: only repositories whose fingerprint changed are walked, the others' facts are
    reused from the cache (see ``watchdog.gather``); findings are the same as a full sweep's.
    """
    started_wall = time.time()
    started = time.monotonic()
    chosen = select_servers(inventory, servers)
    reach = config.check("reachability")
    tcp_timeout = reach.connect_timeout
    records = state.host_records() if state else {}
    timeouts = {
        s.server_id: connect_timeout(
            records.get(s.server_id, HostRecord(s.server_id)),
            reach.connect_timeout,
            reach.max_connect_timeout,
        )
        for s in chosen
    }
    books = {s.server_id: state.deep_book(s.server_id) for s in chosen} if state else {}
    deep_select = None
    if deep and config.deep.enabled and (not only or "repo_integrity" in only):
        every = max(config.schedule.deep_interval_seconds, config.schedule.sweep_interval_seconds)

        def deep_select(f: HostFacts) -> list[str]:
            book = books.get(f.server_id, {})
            return select_for_deep(f.repos, book, config.deep, pass_seconds=every)

    facts = {
        f.server_id: f
        for f in gather(
            chosen,
            config.ssh,
            tcp_timeout=tcp_timeout,
            on_host_done=on_host_done,
            deep_select=deep_select,
            deep=config.deep,
            timeouts=timeouts,
            repo_cache=repo_cache,
            owner_sample=owner_sample(config),
            live_dirs=judges_live_dirs(config, only),
        )
    }
    local_faults: dict[str, str] = {}
    hidden: dict[str, int] = {}
    for sid in [sid for sid, f in facts.items() if f.local_fault]:
        f = facts.pop(sid)
        kind = f.local_fault or ""
        local_faults.setdefault(kind, f.failure_message or kind)
        hidden[kind] = hidden.get(kind, 0) + 1
    for kind, n in hidden.items():
        local_faults[kind] += f" ({n} of {len(chosen)} hosts not swept)"
        log.error("watchdog problem (%s): %s", kind, local_faults[kind])
    updated = []
    for sid, f in facts.items():
        tcp = f.bup_server_tcp
        ok = f.probed and tcp is not None and tcp.ok
        rec = update_record(
            records.get(sid, HostRecord(sid)), ok, tcp.seconds if tcp and tcp.ok else None
        )
        updated.append(rec)
        f.fail_streak = rec.fail_streak
        f.patience = patience(rec, reach.max_patience)
    if state is not None:
        state.save_host_records(updated)
    if state is not None:
        for sid, f in facts.items():
            if f.deep:
                state.record_deep(sid, f.deep.values())
            f.deep = {**books.get(sid, {}), **f.deep}
    lag_facts = with_heads(facts, heads, time.time(), heads_max_age) if heads else None
    findings, runs = run_checks(
        facts, inventory, config, only, facts_for={"replication_lag": lag_facts or facts}
    )
    findings.sort(key=Finding.order)
    result = SweepResult(
        inventory=inventory,
        facts=facts,
        findings=findings,
        checks=runs,
        started=started_wall,
        seconds=time.monotonic() - started,
        ssh_sessions=sum(f.ssh_sessions for f in facts.values()),
        local_faults=local_faults,
        unswept=sum(hidden.values()),
        lag_facts=lag_facts,
    )
    result.not_judged = not_judged(result, chosen)
    return result


def not_judged(result: SweepResult, chosen: Collection[Server]) -> list[str]:
    """What the sweep was asked to judge and could not, one sentence each: no server at all;
    a check that could not judge a host nothing else reported (a host that could not be probed
    is reachability's finding when it runs; with ``--only mount_sanity`` nothing would say so).
    Hosts hidden by a local fault are that fault's to explain."""
    if not chosen:
        return ["no server to check: the inventory lists none"]
    swept = set(result.facts)
    reported = {f.server_id for f in result.findings if f.check == "reachability"}
    judged = evaluated_servers(result)
    out = []
    for name, run in sorted(result.checks.items()):
        if run.error is not None:
            continue  # said already, as the check's error
        missing = sorted(swept - judged.get(name, set()) - reported)
        if not missing:
            continue
        first = result.facts[missing[0]]
        why = first.failure_message or f"{missing[0]}: not probed"
        more = f" (and {len(missing) - 1} more hosts not probed)" if len(missing) > 1 else ""
        out.append(f"{name} judged {len(swept) - len(missing)} of {len(swept)} hosts: {why}{more}")
    return out


def judges_live_dirs(config: Config, only: Collection[str] = ()) -> bool:
    """Whether this sweep runs the one check that reads the live directories (ownership): when it
    is not due, the hosts do not list /projects nor sample owners (the costliest part of a walk on
    a real fleet, where live trees are large)."""
    return config.check("ownership").enabled and (not only or "ownership" in only)


# Checks that judge a host even when its probe failed (they read the gather's own outcome).
HOST_LEVEL_CHECKS = frozenset({"reachability"})


def evaluated_servers(result: SweepResult) -> dict[str, set[str]]:
    """Per check, the servers whose findings this sweep could confirm or clear."""
    probed = {sid for sid, f in result.facts.items() if f.probed}
    every = set(result.facts)
    return {name: every if name in HOST_LEVEL_CHECKS else probed for name in result.checks}


LAG_BUCKETS = (
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    86400.0,
    3 * 86400.0,
    7 * 86400.0,
)


def lag_histograms(result: SweepResult) -> dict[str, dict[str, Any]]:
    """Per replica server: cumulative bucket counts, sum and count of replication lag."""
    out: dict[str, dict[str, Any]] = {}
    for sid, lags in replica_lags(result.lag_facts or result.facts, result.inventory).items():
        buckets = [sum(1 for lag in lags if lag <= b) for b in LAG_BUCKETS]
        out[sid] = {"buckets": buckets, "sum": sum(lags), "count": len(lags)}
    return out


def record(state: State, result: SweepResult) -> int:
    """Write a sweep to the state in one transaction; return its id."""
    return state.record_sweep(
        lag_seconds=lag_histograms(result),
        started=result.started,
        seconds=result.seconds,
        facts=result.facts,
        findings=result.findings,
        checks_run={n: (r.seconds, r.error) for n, r in result.checks.items()},
        evaluated_servers=evaluated_servers(result),
        ssh_sessions=result.ssh_sessions,
        unjudged={n: set(r.unjudged) for n, r in result.checks.items() if r.unjudged},
    )
