"""Prometheus metrics rendered at scrape time from the state.

A custom collector (no import-time registration; the registry is injected). It reads what the
state holds, and the state writes each sweep in one transaction, so a scrape sees a whole sweep or
the one before it, never half. Labels are bounded — server, check, severity — never one series per
project, except an explicit top-N of the worst projects.

Every family is emitted once, with one type and one label set, so ``promtool check metrics`` passes
(a test runs it on the daemon's scrape). Lifetime counts are counters (``_total``); what a sweep
saw is a gauge, the snapshot lag histogram included (``replication_lag_replicas``: one gauge per
bucket). Families labelled by ``server_id`` only join ``server_info`` for the host's name and dc.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bup_watchdog import __version__
from bup_watchdog.batches import METRICS_WINDOW_SECONDS, batch_progress
from bup_watchdog.checks.save_freshness import AGE_BUCKETS, NEVER_SAVED, age_bucket
from bup_watchdog.errors import LOCAL_FAULT_KINDS
from bup_watchdog.guard import breaker
from bup_watchdog.journal import FINISHED, INTERRUPTED, Journal
from bup_watchdog.model import Server, Severity
from bup_watchdog.state import State
from bup_watchdog.suspicion import suspicion

if TYPE_CHECKING:
    from bup_watchdog.config import Config

PREFIX = "bupwatch_"
SEVERITIES = (Severity.WARNING, Severity.CRITICAL)

log = logging.getLogger(__name__)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    """A lifetime count; exposed as ``bupwatch_<name>_total``."""
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _bound(seconds: float) -> str:
    """A bucket's upper bound as a label value, as a selector types it: ``3600``, ``+Inf``."""
    if math.isinf(seconds):
        return "+Inf"
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


def _inventory_age(loaded: float | None) -> Iterator[Metric]:
    age = _gauge("inventory_age_seconds", "Seconds since the inventory source last answered.")
    if loaded is not None:
        age.add_metric([], max(0.0, time.time() - float(loaded)))
    yield age


#: A family as built, or what builds it again at every scrape (it moves with the clock).
_Part = Metric | Callable[[], Iterable[Metric]]


#: Open findings are counted from this index alone (SQLite's planner, without statistics, takes
#: another one and looks each finding up in the table: 16 ms instead of 7 at 6,000 findings).
_OPEN_COUNTS = " FROM findings INDEXED BY findings_open_counts "


class _Families:
    """Families in the form generate_latest renders."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(registry: Collector) -> bytes:
    """What ``generate_latest(registry)`` renders, byte for byte, with each family's text kept
    on the family: StateCollector yields the same family objects until the state changes, so a
    scrape between sweeps renders only the few families built anew (at 100,000 projects the
    text of the rest was 20 ms a scrape)."""
    out = []
    for family in registry.collect():
        text = getattr(family, "_bupwatch_text", None)
        if text is None:
            text = generate_latest(_Families([family]))
            setattr(family, "_bupwatch_text", text)  # noqa: B010 - not an attribute of Metric
        out.append(text)
    return b"".join(out)


class StateCollector(Collector):
    """Renders the watchdog's state as metric families."""

    def __init__(
        self,
        state: State,
        servers: Callable[[], Mapping[str, Server]],
        check_names: list[str],
        *,
        top_projects: int = 10,
        deep_window_seconds: float = 7 * 86400,
        lag_buckets: tuple[float, ...] = (),
        max_patience: int = 3,
        breaker_fraction: float = 0.3,
        sweep_interval_seconds: float | None = None,
    ) -> None:
        self.sweep_interval_seconds = sweep_interval_seconds
        self.breaker_fraction = breaker_fraction
        self.max_patience = max_patience
        self.state = state
        self.servers = servers
        self.check_names = check_names
        self.top_projects = top_projects
        self.deep_window_seconds = deep_window_seconds
        self.lag_buckets = lag_buckets
        #: The state's families as of the key they were built at (see _from_state), with the
        #: servers they were labelled from and the time they hold until; a lock per build.
        self._kept: tuple[tuple[Any, ...], Mapping[str, Server], float, list[_Part]] | None = None
        self._build_lock = threading.Lock()
        self._holds_until = math.inf
        #: The deep-check counts, the generation they were counted at and the time they hold until.
        self._deep_kept: tuple[int, float, dict[str, int]] | None = None

    @classmethod
    def for_config(
        cls, config: Config, state: State, servers: Callable[[], Mapping[str, Server]]
    ) -> StateCollector:
        """The collector ``bup-watchdog run`` and ``serve`` export, set from the config."""
        from bup_watchdog.checks import registry as check_registry
        from bup_watchdog.sweep import LAG_BUCKETS  # (the sweep's modules: only when serving)

        return cls(
            state,
            servers,
            sorted(check_registry()),
            top_projects=config.metrics.top_projects,
            deep_window_seconds=config.deep.window_days * 86400,
            lag_buckets=LAG_BUCKETS,
            max_patience=config.check("reachability").max_patience,
            breaker_fraction=config.guard.breaker_unreachable_fraction,
            sweep_interval_seconds=config.schedule.sweep_interval_seconds,
        )

    def collect(self) -> Iterator[Metric]:
        info = _gauge("build_info", "Version of the running watchdog.", ["version"])
        info.add_metric([__version__], 1.0)
        yield info
        ok = _gauge("state_up", "1 when the state database could be read for this scrape.")
        try:
            families = list(self._from_state())
        except Exception as exc:  # a broken state must look broken, not empty
            log.error("cannot render metrics from the state: %s", exc)
            ok.add_metric([], 0.0)
            yield ok
            return
        ok.add_metric([], 1.0)
        yield ok
        writable = _gauge(
            "state_writable",
            "1 when the last write to the state database succeeded (0: disk full, read-only).",
        )
        writable.add_metric([], 1.0 if self.state.writable else 0.0)
        yield writable
        errors = _counter("state_write_errors", "Writes to the state database that failed.")
        errors.add_metric([], float(self.state.write_errors))
        yield errors
        yield from families

    def _from_state(self) -> Iterator[Metric]:
        """The state's families, built again only when the state or the servers changed: a
        scrape between two sweeps (at 100,000 projects, a 25 ms read of the findings and deep
        checks) reuses them, and ``exposition`` their text. Families that move with the clock
        (the inventory's age, the batches) are built at every scrape."""
        servers = self.servers()
        # Any write through this connection (total_changes) or another process's commit
        # (data_version) changes the key: https://sqlite.org/pragma.html#pragma_data_version
        key = (
            *self.state.query("SELECT total_changes()")[0],
            *self.state.query("PRAGMA data_version")[0],
            self.state.kept_writes,
        )
        kept = self._kept
        if kept is None or kept[0] != key or kept[1] is not servers or time.time() >= kept[2]:
            with self._build_lock:
                self._holds_until = math.inf
                parts: list[_Part] = [
                    *self._server_info(servers),
                    *self._sweep(),
                    *self._hosts(servers),
                    *self._checks(),
                    *self._findings(servers),
                    *self._save_ages(servers),
                    *self._meta(),
                    *self._repairs(),
                    self._batches,
                ]
                self._kept = kept = (key, servers, self._holds_until, parts)
        for part in kept[3]:
            if isinstance(part, Metric):
                yield part
            else:
                yield from part()

    def _labels(self, servers: Mapping[str, Server], sid: str) -> list[str]:
        s = servers.get(sid)
        return [sid, s.label if s else sid, str(s.dc) if s else ""]

    def _server_info(self, servers: Mapping[str, Server]) -> Iterator[Metric]:
        """One series per server, for joins: ``* on (server_id) group_left (name, dc)``."""
        g = _gauge(
            "server_info",
            "1 per storage server, to join on server_id: name is how operators call it (the "
            "host label of the per-host families), host the address the inventory gives for its "
            "bup_server, dc its data centre. Also for servers known only from open findings.",
            ["server_id", "name", "dc", "host"],
        )
        known = set(servers) | {
            sid
            for (sid,) in self.state.query(
                "SELECT DISTINCT server_id FROM findings WHERE resolved_at IS NULL"
            )
        }
        for sid in sorted(known):
            s = servers.get(sid)
            g.add_metric(
                [sid, s.label if s else sid, str(s.dc) if s else "", s.host if s else ""], 1.0
            )
        yield g

    def _sweep(self) -> Iterator[Metric]:
        last = self.state.last_sweep()
        avail = _gauge("sweep_available", "1 when at least one sweep is in the state.")
        avail.add_metric([], 0.0 if last is None else 1.0)
        yield avail
        standby = _gauge(
            "standby",
            "1 while the other watchdogs own every server ([membership]): this one sweeps "
            "nothing, so its last sweep ages (BupWatchSweepStale does not fire for it).",
        )
        meta = self.state.meta()
        standby.add_metric([], 1.0 if meta.get("standby") else 0.0)
        yield standby
        if self.sweep_interval_seconds is not None:
            every = _gauge(
                "sweep_interval_seconds",
                "How often this watchdog is set to sweep ([schedule] sweep_interval_seconds): "
                "BupWatchSweepStale measures a sweep's age against it.",
            )
            every.add_metric([], float(self.sweep_interval_seconds))
            yield every
        if last is None:
            return
        sweep_id, started, seconds, _hosts, repos, sessions, _worst = last
        for name, doc, value in (
            ("sweep_duration_seconds", "Wall time of the last sweep.", seconds),
            (
                "sweep_last_completed_timestamp_seconds",
                "When the last sweep finished (Unix time).",
                started + seconds,
            ),
            ("sweep_ssh_sessions", "SSH sessions (channels) the last sweep opened.", sessions),
        ):
            g = _gauge(name, doc)
            g.add_metric([], float(value))
            yield g
        by_how = _gauge(
            "sweep_repositories",
            "Repositories the last sweep gathered, by how their facts were had: walked in full, "
            "or reused because the host found their fingerprint unchanged (the daemon's "
            "incremental sweeps; every one walked when they are off). Sum by how for the total.",
            ["how"],
        )
        walked, reused = meta.get("incremental_walked"), meta.get("incremental_reused")
        if walked is None or reused is None:
            walked, reused = repos, 0
        by_how.add_metric(["walked"], float(walked))
        by_how.add_metric(["reused"], float(reused))
        yield by_how
        c = _counter("sweeps", "Sweeps recorded in the state.")
        c.add_metric([], float(sweep_id))
        yield c

    def _hosts(self, servers: Mapping[str, Server]) -> Iterator[Metric]:
        labels = ["server_id", "host", "dc"]
        fams = {
            "probe": _gauge(
                "host_probe_success", "1 when the host's probe answered completely.", labels
            ),
            "bup": _gauge(
                "bup_server_up",
                "1 when bup_server accepted a TCP connection at the inventory's address.",
                labels,
            ),
            "dur": _gauge(
                "host_gather_duration_seconds", "Time to gather the host's facts.", labels
            ),
            "last": _gauge(
                "host_last_gather_timestamp_seconds", "When the host was last gathered.", labels
            ),
            "repos": _gauge("host_repositories", "bup repositories on the host.", labels),
            "bytes": _gauge(
                "host_repository_bytes", "Total size of the host's bup repositories.", labels
            ),
            "savelog": _gauge(
                "host_save_log_max_bytes", "Largest conf/save_log.json on the host.", labels
            ),
        }
        lag = _gauge(
            "replication_lag_replicas",
            "Replica copies on this server whose newest save was at most le_seconds behind their "
            'master\'s, at the last sweep: cumulative buckets (le_seconds="+Inf" counts every '
            "replica), a snapshot that rises and falls between sweeps (a gauge, not a histogram: "
            "never rate() it). For quantiles, rename le_seconds to le for histogram_quantile. "
            "Absent for a host that holds no replica or could not be probed.",
            [*labels, "le_seconds"],
        )
        coverage = _gauge(
            "deep_check_coverage_ratio",
            "Share of the host's repositories deep-checked within the deep-check window.",
            labels,
        )
        suspicion_g = _gauge(
            "host_suspicion",
            "Adaptive reachability: failed sweeps in a row / the host's patience (>= 1: down).",
            labels,
        )
        for sid, rec in sorted(self.state.host_records().items()):
            suspicion_g.add_metric(self._labels(servers, sid), suspicion(rec, self.max_patience))
        covered = self._deep_coverage()
        rows = self.state.query(
            "SELECT server_id, gathered_at, seconds, probed, repos, repo_bytes, "
            "save_log_max_bytes, bup_server_up, lag_seconds FROM hosts ORDER BY server_id"
        )
        for sid, gathered, secs, probed, repos, rbytes, savelog, bup, lag_json in rows:
            lv = self._labels(servers, sid)
            fams["probe"].add_metric(lv, float(probed))
            fams["bup"].add_metric(lv, float(bup))
            fams["dur"].add_metric(lv, float(secs))
            fams["last"].add_metric(lv, float(gathered))
            if probed:
                fams["repos"].add_metric(lv, float(repos))
                fams["bytes"].add_metric(lv, float(rbytes))
                fams["savelog"].add_metric(lv, float(savelog))
                if repos:
                    coverage.add_metric(lv, min(1.0, covered.get(sid, 0) / repos))
            hist = json.loads(lag_json or "{}")
            if hist.get("count") and len(hist.get("buckets", [])) == len(self.lag_buckets):
                for bound, n in zip(
                    (*self.lag_buckets, math.inf), (*hist["buckets"], hist["count"]), strict=True
                ):
                    lag.add_metric([*lv, _bound(bound)], float(n))
        yield from fams.values()
        yield lag
        yield coverage
        yield suspicion_g

    def _deep_coverage(self) -> dict[str, int]:
        """state.deep_coverage's counts, counted again only when deep-check rows were written
        (a sweep without a deep pass writes none: its first scrape is spared a scan of every
        row) or the oldest check counted left the window; the families hold until then (a count
        drops with no write to the state)."""
        generation = self.state.deep_generation()
        kept = self._deep_kept
        if kept is None or kept[0] != generation or time.time() >= kept[1]:
            counts = self.state.deep_counts(time.time() - self.deep_window_seconds)
            until = min(
                (o + self.deep_window_seconds for _, o in counts.values()), default=math.inf
            )
            kept = self._deep_kept = (generation, until, {s: n for s, (n, _) in counts.items()})
        self._holds_until = min(self._holds_until, kept[1])
        return kept[2]

    def _checks(self) -> Iterator[Metric]:
        labels = ["check"]
        last_run = _gauge("check_last_run_timestamp_seconds", "When the check last ran.", labels)
        last_ok = _gauge(
            "check_last_success_timestamp_seconds", "When the check last ran without error.", labels
        )
        dur = _gauge("check_duration_seconds", "Time the check took when it last ran.", labels)
        success = _gauge("check_success", "1 when the check's last run had no error.", labels)
        errors = _counter(
            "check_errors", "Runs of the check that raised (a bug, not the fleet).", labels
        )
        runs = _counter("check_runs", "Runs of the check.", labels)
        for name, lr, ls, secs, err, n_err, n_runs in self.state.query(
            "SELECT check_name, last_run, last_success, seconds, error, errors_total, runs_total "
            "FROM check_runs ORDER BY check_name"
        ):
            last_run.add_metric([name], float(lr))
            if ls is not None:
                last_ok.add_metric([name], float(ls))
            dur.add_metric([name], float(secs))
            success.add_metric([name], 0.0 if err else 1.0)
            errors.add_metric([name], float(n_err))
            runs.add_metric([name], float(n_runs))
        yield from (last_run, last_ok, dur, success, errors, runs)

    def _findings(self, servers: Mapping[str, Server]) -> Iterator[Metric]:
        counts = {
            (c, s, int(sev)): n
            for c, s, sev, n in self.state.query(
                "SELECT check_name, server_id, severity, COUNT(*)"
                + _OPEN_COUNTS
                + "WHERE resolved_at IS NULL GROUP BY check_name, server_id, severity"
            )
        }
        g = _gauge(
            "findings",
            "Open findings per check, server and severity.",
            ["check", "server_id", "severity"],
        )
        server_ids = sorted(set(servers) | {s for _, s, _ in counts})
        for sid in server_ids:
            for name in self.check_names:
                for sev in SEVERITIES:
                    g.add_metric(
                        [name, sid, sev.label], float(counts.get((name, sid, int(sev)), 0))
                    )
        yield g
        p = _gauge(
            "projects_failing",
            "Projects with at least one open finding, per check and server.",
            ["check", "server_id"],
        )
        failing = {
            (c, s): n
            for c, s, n in self.state.query(
                "SELECT check_name, server_id, COUNT(DISTINCT project_id)"
                + _OPEN_COUNTS
                + "WHERE resolved_at IS NULL AND project_id != '' GROUP BY check_name, server_id"
            )
        }
        for sid in server_ids:
            for name in self.check_names:
                p.add_metric([name, sid], float(failing.get((name, sid), 0)))
        yield p
        host_level = _gauge(
            "host_findings",
            "Open findings about a whole host (none about one project), per check, code and "
            "severity; a series only while one is open. code is the check's own bounded "
            "vocabulary, e.g. reachability's host_key: the host's SSH key is not the known one "
            "(a security event, not an outage).",
            ["check", "server_id", "code", "severity"],
        )
        for check, sid, code, sev, n in self.state.query(
            "SELECT check_name, server_id, code, severity, COUNT(*) FROM findings "
            "WHERE resolved_at IS NULL AND project_id = '' "
            "GROUP BY check_name, server_id, code, severity ORDER BY 1, 2, 3, 4"
        ):
            host_level.add_metric([check, sid, code, Severity(sev).label], float(n))
        yield host_level
        top = _gauge(
            "worst_project_findings",
            f"Open findings of the (at most {self.top_projects}) projects with the most.",
            ["project_id", "severity"],
        )
        if self.top_projects:
            for pid, crit, total in self.state.query(
                "SELECT project_id, SUM(severity = 2), COUNT(*)"
                + _OPEN_COUNTS
                + "WHERE resolved_at IS NULL AND project_id != '' GROUP BY project_id "
                "ORDER BY SUM(severity = 2) DESC, COUNT(*) DESC, project_id LIMIT ?",
                (self.top_projects,),
            ):
                top.add_metric([pid, "critical"], float(crit))
                top.add_metric([pid, "warning"], float(total - crit))
        yield top

    def _save_ages(self, servers: Mapping[str, Server]) -> Iterator[Metric]:
        """save_freshness's open findings per master server, by how long the project was used
        after its newest save: bounded buckets, every one present (0 included) on every server."""
        g = _gauge(
            "save_age_projects",
            "Master copies used long after their newest save (open save_freshness findings), per "
            "server and by how long: bucket under_1d, 1d_to_3d, 3d_to_7d, 7d_to_30d, over_30d, "
            "or never_saved (live files and no save at all). Not cumulative.",
            ["server_id", "bucket"],
        )
        counts: dict[tuple[str, str], int] = {}
        for sid, value in self.state.query(
            "SELECT server_id, value FROM findings WHERE resolved_at IS NULL "
            "AND check_name = 'save_freshness'"
        ):
            key = (sid, age_bucket(value))
            counts[key] = counts.get(key, 0) + 1
        buckets = [name for name, _ in AGE_BUCKETS] + [NEVER_SAVED]
        for sid in sorted(set(servers) | {s for s, _ in counts}):
            for bucket in buckets:
                g.add_metric([sid, bucket], float(counts.get((sid, bucket), 0)))
        yield g

    def _repairs(self) -> Iterator[Metric]:
        journal = Journal(self.state)
        counts = sorted(journal.counts_by().items())
        decided = _counter(
            "repairs",
            "Repair requests the guard decided on or ran to an end, per repair and outcome "
            "(succeeded, failed, refused, dry_run, denied, conflict, interrupted).",
            ["repair", "outcome"],
        )
        open_ = _gauge(
            "repairs_open",
            "Repair journal entries that still need someone, per repair and status: pending "
            "(waits for an operator's approval), running, interrupted (the watchdog stopped "
            "while it ran, outcome unknown: check the target by hand; no longer counted once "
            "acknowledged with `repairs ack` or once the same repair on the same target "
            "succeeded later).",
            ["repair", "status"],
        )
        for (repair, status), n in counts:
            if status in FINISHED:
                decided.add_metric([repair, status], float(n))
        open_counts = journal.open_by()
        # An acknowledged interrupted repair goes to 0 rather than vanishing (no stale series).
        acked = {(r, s): 0 for (r, s) in dict(counts) if s == INTERRUPTED}
        for (repair, status), n in sorted({**acked, **open_counts}.items()):
            open_.add_metric([repair, status], float(n))
        yield decided
        yield open_
        refused = _counter(
            "repairs_refused",
            "Repair requests the guard refused, per repair and reason (alert_cooldown: alert "
            "re-deliveries held back without a journal entry).",
            ["repair", "reason"],
        )
        for (repair, reason), n in sorted(journal.refusals_by_reason().items()):
            refused.add_metric([repair, reason], float(n))
        yield refused
        is_open, _ = breaker(self.state, self.breaker_fraction)
        g = _gauge(
            "circuit_breaker_open",
            "1 when repairs are suspended because too much of the fleet looks unreachable.",
        )
        g.add_metric([], 1.0 if is_open else 0.0)
        yield g

    def _batches(self) -> Iterator[Metric]:
        """Rebuilds and evacuations running or finished within the last day (watchdog/batches)."""
        labels = ["batch", "kind", "host"]
        copies = _gauge(
            "rebuild_copies",
            "Copies (rebuild) or moves (evacuation) of a batch by status: done, failed (failed "
            "or refused), pending (waits for an operator's approval), left (not submitted yet, "
            "or left by the budget). For batches running or finished within the last 24 h.",
            [*labels, "status"],
        )
        nbytes = _gauge(
            "rebuild_bytes",
            "Bytes of a batch's copies: what total (planned), done (of the copies done).",
            [*labels, "what"],
        )
        eta = _gauge(
            "rebuild_eta_seconds",
            "Seconds a running batch needs for the bytes left at its rate so far (absent before "
            "its first copy is done, and once it stopped).",
            labels,
        )
        running = _gauge(
            "rebuild_running",
            "1 while the batch's process runs; 0 once finished or interrupted (killed).",
            labels,
        )
        now = time.time()
        since = now - METRICS_WINDOW_SECONDS
        for b in batch_progress(self.state, since=since, now=now, failures=False):
            lv = [b.batch_id, b.kind, b.host]
            for status, n in (
                ("done", b.done),
                ("failed", b.failed),
                ("pending", b.pending),
                ("left", b.left),
            ):
                copies.add_metric([*lv, status], float(n))
            nbytes.add_metric([*lv, "total"], float(b.bytes_total))
            nbytes.add_metric([*lv, "done"], float(b.bytes_done))
            if b.eta_seconds is not None:
                eta.add_metric(lv, b.eta_seconds)
            running.add_metric(lv, 1.0 if b.running else 0.0)
        yield from (copies, nbytes, eta, running)

    def _meta(self) -> Iterator[_Part]:
        meta = self.state.meta()
        problems = meta.get("watchdog_problems") or {}
        fault = _gauge(
            "watchdog_problem",
            "1 while a fault of the watchdog's own (no file descriptor left, its key_file or "
            "known_hosts unreadable) kept the last sweep from some hosts; /ready says which.",
            ["kind"],
        )
        for kind in sorted({*LOCAL_FAULT_KINDS, *problems}):
            fault.add_metric([kind], 1.0 if kind in problems else 0.0)
        yield fault
        stale = _gauge(
            "inventory_stale",
            "1 when the last sweep ran on the cached inventory because the source was down.",
        )
        stale.add_metric([], 1.0 if meta.get("inventory_stale") else 0.0)
        yield stale
        loaded = meta.get("inventory_loaded_at")
        g = _gauge(
            "inventory_last_success_timestamp_seconds", "When the inventory source last answered."
        )
        if loaded is not None:
            g.add_metric([], float(loaded))
        yield g
        yield functools.partial(_inventory_age, loaded)
        view = meta.get("membership") or {}
        owned = _gauge(
            "host_owned",
            "With [membership]: 1 for a host this watchdog sweeps, 0 for one another watchdog "
            "owns (as of the last sweep); /api/members lists the members and their heartbeats.",
            ["server_id"],
        )
        for sid, who in sorted((view.get("owners") or {}).items()):
            owned.add_metric([sid], 1.0 if who == view.get("member") else 0.0)
        yield owned
