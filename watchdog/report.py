"""Audit reports: the state and the repair journal gathered into one JSON-ready report.

``build_report`` (here) reads the state once into plain data; ``report_render.render`` turns that
same data into HTML, Markdown or JSON (Jinja2 templates in ``templates/``, chart geometry in
``report_charts``, display strings in ``report_format``), so the three formats say the same thing.
The HTML is one self-contained file: inline CSS and inline SVG charts, no script, no external
asset, every value autoescaped.

Bounded for a fleet of 100,000 projects: the worst ``max_projects`` failing projects are listed
with every finding, the rest are counted per check; the journal lists the newest ``max_repairs``
rows of the window and counts all of them; charts aggregate per host and per data centre.

``--since`` is the window of *history*: repairs journaled, findings opened and resolved in it. The
state of the fleet now (open findings, hosts, coverage) is always shown whole.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import pairwise
from typing import Any

from bup_watchdog import __version__
from bup_watchdog.checks import registry as check_registry
from bup_watchdog.config import Config
from bup_watchdog.errors import WatchdogError
from bup_watchdog.guard import breaker, requests_for
from bup_watchdog.inventory.file import parse_inventory
from bup_watchdog.journal import INTERRUPTED, PENDING, RUNNING
from bup_watchdog.model import Finding, Server, Severity
from bup_watchdog.repairs import registry as repair_registry
from bup_watchdog.repairs.base import Repair, RepairSettings
from bup_watchdog.report_batches import batches_view
from bup_watchdog.report_format import _human_age
from bup_watchdog.report_links import (
    WATCHDOG_ALERTS,
    alertmanager_alert,
    finding_alert,
    grafana_host,
    runbook,
)
from bup_watchdog.report_members import members_view
from bup_watchdog.report_render import render
from bup_watchdog.report_save_freshness import stale_saves
from bup_watchdog.state import State, StoredFinding, _stored
from bup_watchdog.suspicion import suspicion
from bup_watchdog.sweep import LAG_BUCKETS

__all__ = ["ReportSettings", "Scope", "build_report", "parse_duration", "render"]

MB = 1_000_000
# The JSON report's format: 2 holds numbers as numbers (lag quantiles in seconds), links and alert
# names; 1 (unversioned) had display strings such as hosts[].lag_p95 = "≤ 1 min".
FORMAT_VERSION = 2
# Checks that are not in checks/ but raise findings: the guard (interrupted repairs, gave up).
EXTRA_CHECKS = ("guard",)
# The section of the report each check feeds, to leave out sections a --check filter excludes.
SECTION_CHECK = {
    "lag": "replication_lag",
    "save_logs": "save_log_size",
    "save_freshness": "save_freshness",
    "deep": "repo_integrity",
}
# What to do about findings no repair answers.
MANUAL = {
    "repo_integrity": "No automatic repair: restore the repository from an intact copy by hand, "
    "then deep-check it again.",
    "bup_quota": "No automatic repair: ask the project's owner to prune, or raise its quota.",
    "placement": "No automatic repair: move or re-replicate the project with the storage tools.",
    "save_freshness": "No automatic repair: read the project's conf/save_log.json on its master, "
    "fix what stops its saves (a full disk, a stale lock, a crash), then save it by hand.",
    "reachability": "Look at the host: network, sshd, host key, power.",
    "guard": "A repair was interrupted or gave up: check the target by hand, then repair again.",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """'90s', '30m', '24h', '7d', '2w' (or plain seconds) as seconds; ValueError otherwise."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) < 0 or (float(m.group(1)) == 0 and not allow_zero):
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def history_window(text: str) -> float:
    """A report's history window in seconds; ValueError for one that is not a duration or reaches
    back before 1970 (no history is older, and dates before it cannot be printed)."""
    seconds = parse_duration(text)
    now = time.time()
    if seconds > now:
        raise ValueError(
            f"since {text!r} reaches back before 1970; at most {int(now // 86400)}d is possible"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """What the report needs from the config, and its bounds."""

    max_projects: int = 200
    max_repairs: int = 100
    max_resolved: int = 50
    since_seconds: float = 7 * 86400
    deep_window_seconds: float = 7 * 86400
    save_log_warn_bytes: int = 50 * MB
    save_log_critical_bytes: int = 200 * MB
    lag_warn_seconds: float = 3600.0
    lag_critical_seconds: float = 86400.0
    breaker_fraction: float = 0.3
    max_patience: int = 3
    sweep_stale_seconds: float = 1800.0
    #: Base URLs of [report]: Grafana, Alertmanager, the runbooks ("": no link).
    grafana_url: str = ""
    alertmanager_url: str = ""
    runbook_url: str = ""
    #: Mode per repair (off, dry-run, approve, auto); a repair not named here has its default.
    repair_modes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, **bounds: Any) -> ReportSettings:
        checks = config.check_settings
        save_log = checks.get("save_log_size")
        lag = checks.get("replication_lag")
        reach = checks.get("reachability")
        values: dict[str, Any] = {
            "deep_window_seconds": config.deep.window_days * 86400,
            "breaker_fraction": config.guard.breaker_unreachable_fraction,
            "sweep_stale_seconds": max(1800.0, 3 * config.schedule.sweep_interval_seconds),
            "repair_modes": {n: s.mode for n, s in config.repair_settings.items()},
            "grafana_url": config.report.grafana_url,
            "alertmanager_url": config.report.alertmanager_url,
            "runbook_url": config.report.runbook_url,
        }
        if save_log is not None:
            values["save_log_warn_bytes"] = save_log.warn_bytes
            values["save_log_critical_bytes"] = save_log.critical_bytes
        if lag is not None:
            values["lag_warn_seconds"] = getattr(lag, "warn_seconds", 3600.0)
            values["lag_critical_seconds"] = getattr(lag, "critical_seconds", 86400.0)
        if reach is not None:
            values["max_patience"] = reach.max_patience
        values.update(bounds)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which part of the fleet the report covers: server ids and checks (empty: all)."""

    servers: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


# ---------------------------------------------------------------- helpers


def _plural(n: int, word: str) -> str:
    """'1 host', '2 hosts', '0 hosts' (a count with its noun)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with a Z, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def known_checks() -> list[str]:
    return sorted([*check_registry(), *EXTRA_CHECKS])


def servers_from_state(state: State) -> dict[str, Server]:
    """The servers of the inventory cached in the state (empty before the first load).

    SQLite's JSON functions pick the servers out of the cache, so a cache holding 100k projects
    is not parsed in Python for a handful of servers.
    """
    try:
        rows = state.query("SELECT json_extract(data, '$.servers') FROM inventory_cache")
        raw = json.loads(rows[0][0]) if rows and rows[0][0] else []
    except sqlite3.Error:  # an SQLite without JSON functions
        cached = state.cached_inventory()
        raw = cached[2].get("servers", []) if cached else []
    try:
        return dict(parse_inventory({"servers": raw, "projects": []}, source="cache").servers)
    except WatchdogError:  # a report only needs names and dcs: take what can be read
        out = {}
        for s in raw if isinstance(raw, list) else []:
            try:
                sid = str(s["server_id"])
                out[sid] = Server(
                    sid,
                    str(s.get("host", "")),
                    int(s.get("port") or 0),
                    dc=int(s.get("dc") or 0),
                    experimental=bool(s.get("experimental")),
                    disabled=bool(s.get("disabled")),
                    name=str(s.get("name") or ""),
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return out


def resolve_servers(
    wanted: Iterable[str], servers: Mapping[str, Server], state: State
) -> tuple[str, ...]:
    """Server ids for names or ids given by an operator; ValueError names the unknown ones."""
    wanted = [w.strip() for w in wanted if w.strip()]
    if not wanted:
        return ()
    by_key: dict[str, str] = {}
    for sid in [*servers, *(r[0] for r in state.query("SELECT server_id FROM hosts"))]:
        by_key[sid] = sid
        by_key[sid.lower()] = sid
    for s in servers.values():
        if s.name:
            by_key[s.name] = s.server_id
    missing = [w for w in wanted if w not in by_key and w.lower() not in by_key]
    if missing:
        known = sorted(s.name or s.server_id for s in servers.values())
        raise ValueError(
            f"no such server: {', '.join(missing)}"
            + (f" (known: {', '.join(known)})" if known else "")
        )
    return tuple(dict.fromkeys(by_key.get(w) or by_key[w.lower()] for w in wanted))


def check_names(wanted: Iterable[str]) -> tuple[str, ...]:
    """Validated check names; ValueError names the unknown ones."""
    wanted = [w.strip() for w in wanted if w.strip()]
    missing = [w for w in wanted if w not in known_checks()]
    if missing:
        raise ValueError(
            f"no such check: {', '.join(missing)} (known: {', '.join(known_checks())})"
        )
    return tuple(dict.fromkeys(wanted))


def _where(
    scope: Scope, *, server_col: str = "server_id", check_col: str | None = "check_name"
) -> tuple[str, list[Any]]:
    """SQL conditions (with a leading AND) and parameters for the scope."""
    sql, params = "", list[Any]()
    if scope.servers:
        sql += f" AND {server_col} IN ({','.join('?' * len(scope.servers))})"
        params.extend(scope.servers)
    if scope.checks and check_col:
        sql += f" AND {check_col} IN ({','.join('?' * len(scope.checks))})"
        params.extend(scope.checks)
    return sql, params


def _chunks(items: Sequence[str], n: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _quantile_bucket(q: float, cumulative: Sequence[int], count: int) -> int | None:
    """Index of the histogram bucket holding the q-quantile (len(cumulative): the +Inf bucket).

    A report shows the bucket ("4–12 h") rather than a value interpolated inside it, which for
    small counts says more than the data knows.
    """
    if not count:
        return None
    rank = q * count
    for i, c in enumerate(cumulative):
        if c >= rank:
            return i
    return len(cumulative)


def _quantile(q: float, cumulative: Sequence[int], count: int) -> dict[str, Any]:
    """The q-quantile as its bucket's upper bound in seconds (None: no replica).

    Beyond the largest bound the value is that bound, as Prometheus' histogram_quantile gives it,
    and ``beyond_buckets`` is true ("more than 7 d").
    """
    i = _quantile_bucket(q, cumulative, count)
    if i is None:
        return {"le_seconds": None, "beyond_buckets": False}
    return {
        "le_seconds": LAG_BUCKETS[min(i, len(LAG_BUCKETS) - 1)],
        "beyond_buckets": i >= len(LAG_BUCKETS),
    }


def _stored_to_finding(f: StoredFinding) -> Finding:
    return Finding(
        check=f.check,
        server_id=f.server_id,
        severity=f.severity,
        message=f.message,
        project_id=f.project_id,
        value=f.value,
        code=f.code,
        details=f.details,
    )


@cache
def _default_modes() -> dict[str, str]:
    return {
        name: str(r.Settings.model_fields["mode"].default) for name, r in repair_registry().items()
    }


# ---------------------------------------------------------------- the report


class _Builder:
    def __init__(
        self,
        state: State,
        servers: Mapping[str, Server],
        settings: ReportSettings,
        scope: Scope,
        now: float,
        since: float,
    ) -> None:
        self.state = state
        self.servers = servers
        self.settings = settings
        self.scope = scope
        self.now = now
        self.since = since
        self.repairs: Mapping[str, Repair[RepairSettings]] = repair_registry()
        self.modes = {**_default_modes(), **settings.repair_modes}

    # -- helpers ------------------------------------------------------------------------------

    def label(self, sid: str) -> str:
        s = self.servers.get(sid)
        return s.label if s else sid

    def wants(self, section: str) -> bool:
        return not self.scope.checks or SECTION_CHECK[section] in self.scope.checks

    def in_scope(self, sid: str) -> bool:
        return not self.scope.servers or sid in self.scope.servers

    def locations(self, project_ids: Iterable[str]) -> dict[str, tuple[str, list[str]]]:
        """Master and replicas of some projects, from the cached inventory."""
        wanted = list(dict.fromkeys(project_ids))
        if not wanted:
            return {}
        try:
            if len(wanted) > 1000:  # one scan of the cache per chunk: parse it once instead
                raise sqlite3.NotSupportedError("many projects")
            raw = [
                json.loads(value)
                for chunk in _chunks(wanted)
                for (value,) in self.state.query(
                    "SELECT p.value FROM inventory_cache, json_each(inventory_cache.data, "  # noqa: S608
                    "'$.projects') AS p WHERE json_extract(p.value, '$.project_id') IN "
                    f"({','.join('?' * len(chunk))})",
                    list(chunk),
                )
            ]
        except sqlite3.Error:  # many projects, or an SQLite without JSON functions
            cached = self.state.cached_inventory()
            keep = set(wanted)
            raw = [
                p
                for p in (cached[2] if cached else {}).get("projects", [])
                if p.get("project_id") in keep
            ]
        return {
            str(p["project_id"]): (
                str(p.get("master", "")),
                [str(r) for r in p.get("replicas", [])],
            )
            for p in raw
            if isinstance(p, dict) and "project_id" in p
        }

    # -- sections -----------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        hosts = self.hosts()
        findings = self.findings()
        report: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "report": {
                "title": "bup-watchdog audit",
                "generated_at": iso(self.now),
                "watchdog_version": __version__,
                "state": str(self.state.path),
                "scope": {
                    "servers": [self.label(s) for s in self.scope.servers],
                    "server_ids": list(self.scope.servers),
                    "checks": list(self.scope.checks),
                    "since": iso(self.since),
                    "since_seconds": round(self.now - self.since),
                },
                "limits": {
                    "max_projects": self.settings.max_projects,
                    "max_repairs": self.settings.max_repairs,
                },
            },
            "hosts": hosts,
            "host_findings": findings["host_findings"],
            "projects": findings["projects"],
            "lag": self.lag() if self.wants("lag") else None,
            "save_logs": self.save_logs(hosts) if self.wants("save_logs") else None,
            "save_freshness": stale_saves(
                self.state, *_where(Scope(self.scope.servers)), label=self.label, iso=iso
            )
            if self.wants("save_freshness")
            else None,
            "deep": self.deep(hosts) if self.wants("deep") else None,
            "members": members_view(self.state.meta().get("membership"), self.now, self.label),
            "repairs": self.journal(),
            "batches": batches_view(
                self.state,
                self.since,
                self.now,
                iso=iso,
                hosts=[self.label(s) for s in self.scope.servers],
            ),
            "history": self.history(),
        }
        report["watchdog"] = self.watchdog()
        report["summary"] = self.summary(report)
        return report

    def hosts(self) -> list[dict[str, Any]]:
        where, params = _where(self.scope, check_col=None)
        rows = self.state.query(
            "SELECT server_id, gathered_at, seconds, probed, failure, failure_message, repos, "  # noqa: S608
            "repo_bytes, save_log_max_bytes, bup_server_up, lag_seconds FROM hosts "
            f"WHERE 1=1{where}",
            params,
        )
        fw, fp = _where(self.scope)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for sid, sev, n in self.state.query(
            "SELECT server_id, severity, COUNT(*) FROM findings WHERE resolved_at IS NULL"  # noqa: S608
            f"{fw} GROUP BY server_id, severity",
            fp,
        ):
            counts[sid][Severity(sev).label] += int(n)
        failing = {
            sid: int(n)
            for sid, n in self.state.query(
                "SELECT server_id, COUNT(DISTINCT project_id) FROM findings WHERE "  # noqa: S608
                f"resolved_at IS NULL AND project_id != ''{fw} GROUP BY server_id",
                fp,
            )
        }
        deep = dict(self.state.deep_coverage(self.settings.deep_window_seconds, self.now))
        records = self.state.host_records()
        fenced = {
            sid
            for sid, key, value in self.state.query("SELECT server_id, key, value FROM overrides")
            if key == "fenced" and json.loads(value)
        }
        out = []
        seen = set()
        for sid, gathered, secs, probed, failure, fmsg, repos, rbytes, slog, bup, lag in rows:
            seen.add(sid)
            s = self.servers.get(sid)
            hist = json.loads(lag or "{}")
            lag_p95 = {"le_seconds": None, "beyond_buckets": False}
            if hist.get("count") and len(hist.get("buckets", [])) == len(LAG_BUCKETS):
                lag_p95 = _quantile(0.95, hist["buckets"], hist["count"])
            crit, warn = counts[sid]["critical"], counts[sid]["warning"]
            rec = records.get(sid)
            out.append(
                {
                    "server_id": sid,
                    "name": self.label(sid),
                    "dc": s.dc if s else None,
                    "experimental": bool(s and s.experimental),
                    "disabled": bool(s and s.disabled),
                    "fenced": sid in fenced,
                    "probed": bool(probed),
                    "failure": failure,
                    "failure_message": fmsg,
                    "bup_server_up": bool(bup),
                    "repos": int(repos),
                    "repo_bytes": int(rbytes),
                    "save_log_max_bytes": int(slog),
                    "gathered_at": iso(gathered),
                    "gather_seconds": round(float(secs), 3),
                    "findings": {"critical": crit, "warning": warn},
                    "failing_projects": failing.get(sid, 0),
                    "deep_checked": min(int(repos), deep.get(sid, 0)),
                    "deep_coverage": (min(1.0, deep.get(sid, 0) / repos) if repos else None),
                    "replicas": int(hist.get("count") or 0),
                    "lag_p95_seconds": lag_p95["le_seconds"],
                    "lag_p95_beyond_buckets": lag_p95["beyond_buckets"],
                    "suspicion": round(suspicion(rec, self.settings.max_patience), 2)
                    if rec
                    else 0.0,
                    "status": (
                        "down"
                        if not probed
                        else "critical"
                        if crit
                        else "warning"
                        if warn
                        else "ok"
                    ),
                    "links": {"grafana": grafana_host(self.settings.grafana_url, self.label(sid))},
                    "_lag": hist,
                }
            )
        for sid, s in self.servers.items():  # in the inventory, never gathered
            if sid not in seen and self.in_scope(sid):
                out.append(
                    {
                        "server_id": sid,
                        "name": s.label,
                        "dc": s.dc,
                        "experimental": s.experimental,
                        "disabled": s.disabled,
                        "fenced": sid in fenced,
                        "probed": False,
                        "failure": "never_gathered",
                        "failure_message": "not gathered by any sweep recorded in the state",
                        "bup_server_up": False,
                        "repos": 0,
                        "repo_bytes": 0,
                        "save_log_max_bytes": 0,
                        "gathered_at": None,
                        "gather_seconds": None,
                        "findings": {
                            "critical": counts[sid]["critical"],
                            "warning": counts[sid]["warning"],
                        },
                        "failing_projects": failing.get(sid, 0),
                        "deep_checked": 0,
                        "deep_coverage": None,
                        "replicas": 0,
                        "lag_p95_seconds": None,
                        "lag_p95_beyond_buckets": False,
                        "suspicion": 0.0,
                        "status": "unknown",
                        "links": {"grafana": grafana_host(self.settings.grafana_url, s.label)},
                        "_lag": {},
                    }
                )
        rank = {"down": 0, "critical": 1, "warning": 2, "unknown": 3, "ok": 4}
        out.sort(
            key=lambda h: (rank[h["status"]], h["dc"] if h["dc"] is not None else 1e9, h["name"])
        )
        return out

    def _repair_for(
        self, f: StoredFinding, journal: Mapping[tuple[str, str], dict[str, Any]]
    ) -> dict[str, Any]:
        """The repair that answers a finding (see guard.requests_for) and its journal state."""
        target = f"{f.server_id}/{f.project_id}" if f.project_id else f.server_id
        reqs = requests_for([_stored_to_finding(f)], self.repairs, "audit")
        if not reqs:
            hint = MANUAL.get(f.check, "No automatic repair for this finding: look at it by hand.")
            return {"name": None, "status": "manual", "hint": hint}
        name = reqs[0].repair
        out: dict[str, Any] = {
            "name": name,
            "mode": self.modes.get(name, "approve"),
            "status": "suggested",
            "hint": f"bup-watchdog repair {name} {self.label(f.server_id)}"
            + (f"/{f.project_id}" if f.project_id else ""),
        }
        last = journal.get((name, target))
        if last is not None:
            out["journal"] = last
            if last["status"] in (PENDING, RUNNING):
                out["status"] = last["status"]
        if out["mode"] == "off" and out["status"] == "suggested":
            out["status"] = "off"
        return out

    def _journal_for(self, targets: Sequence[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """The newest journal row per (repair, target) for some targets."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(targets))):
            for eid, repair, target, status, created, refusal, by in self.state.query(
                "SELECT id, repair, target, status, created_at, refusal, "  # noqa: S608
                "COALESCE(decided_by, requested_by) FROM journal "
                f"WHERE target IN ({','.join('?' * len(chunk))}) ORDER BY id DESC",
                list(chunk),
            ):
                out.setdefault(
                    (repair, target),
                    {
                        "id": eid,
                        "status": status,
                        "at": iso(created),
                        "by": by,
                        "refusal": refusal,
                    },
                )
        return out

    def _alert_links(self, alert: str | None, server_id: str | None) -> dict[str, str | None]:
        """Where an operator reads about an alert and sees it firing (None: not configured)."""
        return {
            "runbook": runbook(self.settings.runbook_url, alert),
            "alertmanager": alertmanager_alert(self.settings.alertmanager_url, alert, server_id),
        }

    def _finding(self, f: StoredFinding, repair: dict[str, Any]) -> dict[str, Any]:
        alert = finding_alert(f.check, f.code, f.severity.label)
        return {
            "check": f.check,
            "code": f.code,
            "server_id": f.server_id,
            "host": self.label(f.server_id),
            "project_id": f.project_id,
            "severity": f.severity.label,
            "message": f.message,
            "value": f.value,
            "first_seen": iso(f.first_seen),
            "last_seen": iso(f.last_seen),
            "new": f.first_seen >= self.since,
            "repair": repair,
            "alert": alert,
            "links": self._alert_links(alert, f.server_id),
        }

    def findings(self) -> dict[str, Any]:
        fw, fp = _where(self.scope)
        stored = self.state.query(
            "SELECT * FROM findings WHERE resolved_at IS NULL AND project_id = ''"  # noqa: S608
            f"{fw} ORDER BY severity DESC, check_name, server_id",
            fp,
        )
        host_level = [_stored(r) for r in stored]
        worst = self.state.query(
            "SELECT project_id, MAX(severity), COUNT(*) FROM findings WHERE resolved_at IS NULL "  # noqa: S608
            f"AND project_id != ''{fw} GROUP BY project_id "
            "ORDER BY MAX(severity) DESC, COUNT(*) DESC, project_id LIMIT ?",
            [*fp, self.settings.max_projects],
        )
        listed_ids = [r[0] for r in worst]
        project_findings: dict[str, list[StoredFinding]] = defaultdict(list)
        for chunk in _chunks(listed_ids):
            for r in self.state.query(
                "SELECT * FROM findings WHERE resolved_at IS NULL AND project_id IN "  # noqa: S608
                f"({','.join('?' * len(chunk))}){fw} "
                "ORDER BY severity DESC, check_name, server_id",
                [*chunk, *fp],
            ):
                f = _stored(r)
                assert f.project_id is not None
                project_findings[f.project_id].append(f)
        targets = [f.server_id for f in host_level] + [
            f"{f.server_id}/{f.project_id}" for fs in project_findings.values() for f in fs
        ]
        journal = self._journal_for(targets)
        locations = self.locations(listed_ids)
        integrity_bad = {
            (f.server_id, pid)
            for pid, fs in project_findings.items()
            for f in fs
            if f.check == "repo_integrity"
        }
        items = []
        for pid in listed_ids:
            fs = project_findings.get(pid, [])
            master, replicas = locations.get(pid, ("", []))
            entries = []
            for f in fs:
                repair = self._repair_for(f, journal)
                if f.check == "repo_integrity" and repair["name"] is None:
                    intact = [
                        self.label(s)
                        for s in [master, *replicas]
                        if s and s != f.server_id and (s, pid) not in integrity_bad
                    ]
                    if intact:
                        repair["hint"] += f" Copies with no integrity finding: {', '.join(intact)}."
                entries.append(self._finding(f, repair))
            items.append(
                {
                    "project_id": pid,
                    "severity": max((f.severity for f in fs), default=Severity.OK).label,
                    "master": self.label(master) if master else None,
                    "replicas": [self.label(r) for r in replicas],
                    "findings": entries,
                }
            )
        by_check: dict[str, dict[str, Any]] = {}
        for check, sev, n in self.state.query(
            "SELECT check_name, MAX(severity), COUNT(DISTINCT project_id) FROM findings WHERE "  # noqa: S608
            f"resolved_at IS NULL AND project_id != ''{fw} GROUP BY check_name",
            fp,
        ):
            by_check[check] = {"projects": int(n), "worst": Severity(sev).label}
        for check, sev, n in self.state.query(
            "SELECT check_name, severity, COUNT(DISTINCT project_id) FROM findings WHERE "  # noqa: S608
            f"resolved_at IS NULL AND project_id != ''{fw} GROUP BY check_name, severity",
            fp,
        ):
            by_check[check][Severity(sev).label] = int(n)
        total = int(
            self.state.query(
                "SELECT COUNT(DISTINCT project_id) FROM findings WHERE resolved_at IS NULL "  # noqa: S608
                f"AND project_id != ''{fw}",
                fp,
            )[0][0]
        )
        not_listed: dict[str, int] = {}
        if total > len(listed_ids):
            listed_sql = ""
            params: list[Any] = list(fp)
            if listed_ids:
                listed_sql = f" AND project_id NOT IN ({','.join('?' * len(listed_ids))})"
                params.extend(listed_ids)
            not_listed = {
                check: int(n)
                for check, n in self.state.query(
                    "SELECT check_name, COUNT(DISTINCT project_id) FROM findings WHERE "  # noqa: S608
                    f"resolved_at IS NULL AND project_id != ''{fw}{listed_sql} "
                    "GROUP BY check_name ORDER BY 2 DESC",
                    params,
                )
            }
        suggested: Counter[str] = Counter()
        for item in items:
            for f in item["findings"]:
                suggested[f["repair"]["name"] or "by hand"] += 1
        return {
            "host_findings": [self._finding(f, self._repair_for(f, journal)) for f in host_level],
            "projects": {
                "failing": total,
                "listed": len(items),
                "not_listed": total - len(items),
                "not_listed_by_check": not_listed,
                "by_check": dict(sorted(by_check.items(), key=lambda kv: -kv[1]["projects"])),
                "findings_listed": sum(len(i["findings"]) for i in items),
                "repairs_suggested": dict(suggested.most_common()),
                "items": items,
            },
        }

    def lag(self) -> dict[str, Any]:
        """Replication lag per data centre, from the hosts' histograms (cumulative buckets)."""
        where, params = _where(self.scope, check_col=None)
        per_dc: dict[str, dict[str, Any]] = {}
        for sid, lag_json in self.state.query(
            f"SELECT server_id, lag_seconds FROM hosts WHERE 1=1{where}",  # noqa: S608
            params,
        ):
            hist = json.loads(lag_json or "{}")
            if not hist.get("count") or len(hist.get("buckets", [])) != len(LAG_BUCKETS):
                continue
            s = self.servers.get(sid)
            dc = str(s.dc) if s else "?"
            agg = per_dc.setdefault(
                dc, {"cumulative": [0] * len(LAG_BUCKETS), "count": 0, "sum": 0.0}
            )
            agg["cumulative"] = [
                a + b for a, b in zip(agg["cumulative"], hist["buckets"], strict=True)
            ]
            agg["count"] += int(hist["count"])
            agg["sum"] += float(hist["sum"])
        dcs = []
        for dc, agg in sorted(per_dc.items()):
            cum, count = agg["cumulative"], agg["count"]
            counts = [cum[0], *(b - a for a, b in pairwise(cum)), count - cum[-1]]
            behind = count - cum[LAG_BUCKETS.index(3600.0)]
            dcs.append(
                {
                    "dc": dc,
                    "replicas": count,
                    "counts": counts,
                    "mean_seconds": round(agg["sum"] / count, 1),
                    "p50": _quantile(0.5, cum, count),
                    "p95": _quantile(0.95, cum, count),
                    "over_1h": behind,
                    "over_1h_share": round(behind / count, 4),
                }
            )
        return {
            "buckets": list(LAG_BUCKETS),
            "warn_seconds": self.settings.lag_warn_seconds,
            "critical_seconds": self.settings.lag_critical_seconds,
            "replicas": sum(d["replicas"] for d in dcs),
            "dcs": dcs,
        }

    def save_logs(self, hosts: list[dict[str, Any]]) -> dict[str, Any]:
        sw, sp = _where(Scope(self.scope.servers))
        over = self.state.query(
            "SELECT project_id, server_id, value, severity FROM findings WHERE resolved_at IS "  # noqa: S608
            "NULL AND check_name = 'save_log_size' AND code = 'too_large' AND value IS NOT NULL"
            f"{sw} ORDER BY value DESC",
            sp,
        )
        top = 20
        return {
            "warn_bytes": self.settings.save_log_warn_bytes,
            "critical_bytes": self.settings.save_log_critical_bytes,
            "hosts": sorted(
                (
                    {
                        "host": h["name"],
                        "server_id": h["server_id"],
                        "bytes": h["save_log_max_bytes"],
                    }
                    for h in hosts
                    if h["probed"]
                ),
                key=lambda h: -h["bytes"],
            )[:30],
            "over_limit": len(over),
            "projects": [
                {
                    "project_id": pid,
                    "host": self.label(sid),
                    "bytes": int(value),
                    "severity": Severity(sev).label,
                }
                for pid, sid, value, sev in over[:top]
            ],
        }

    def deep(self, hosts: list[dict[str, Any]]) -> dict[str, Any]:
        where, params = _where(self.scope, check_col=None)
        since = self.now - self.settings.deep_window_seconds
        stats = {
            sid: (int(failed or 0), oldest)
            for sid, failed, oldest in self.state.query(
                "SELECT server_id, SUM(ok = 0), MIN(checked_at) FROM deep_checks "  # noqa: S608
                f"WHERE 1=1{where} GROUP BY server_id",
                params,
            )
        }
        failed_rows = self.state.query(
            "SELECT server_id, project_id, checked_at, message FROM deep_checks WHERE ok = 0"  # noqa: S608
            f"{where} ORDER BY checked_at DESC LIMIT 50",
            params,
        )
        rows = []
        for h in hosts:
            if not h["probed"]:
                continue
            failed, oldest = stats.get(h["server_id"], (0, None))
            rows.append(
                {
                    "host": h["name"],
                    "server_id": h["server_id"],
                    "repos": h["repos"],
                    "checked": h["deep_checked"],
                    "coverage": h["deep_coverage"],
                    "failed": failed,
                    "oldest_check": iso(oldest),
                    "overdue": bool(oldest is not None and oldest < since),
                }
            )
        repos = sum(r["repos"] for r in rows)
        checked = sum(r["checked"] for r in rows)
        return {
            "window_days": round(self.settings.deep_window_seconds / 86400, 2),
            "repos": repos,
            "checked": checked,
            "coverage": round(checked / repos, 4) if repos else None,
            "failed": sum(r["failed"] for r in rows),
            "hosts": sorted(rows, key=lambda r: r["coverage"] if r["coverage"] is not None else 2),
            "failures": [
                {
                    "host": self.label(sid),
                    "project_id": pid,
                    "checked_at": iso(at),
                    "message": msg,
                }
                for sid, pid, at, msg in failed_rows
            ],
        }

    def _journal_scope(self) -> tuple[str, list[Any]]:
        sql, params = _where(Scope(self.scope.servers), check_col=None)
        if self.scope.checks:
            names = [n for n, r in self.repairs.items() if r.check in self.scope.checks]
            sql += f" AND repair IN ({','.join('?' * len(names))})" if names else " AND 0"
            params.extend(names)
        return sql, params

    def journal(self) -> dict[str, Any]:
        where, params = self._journal_scope()
        counts = {
            status: int(n)
            for status, n in self.state.query(
                "SELECT status, COUNT(*) FROM journal WHERE created_at >= ?"  # noqa: S608
                f"{where} GROUP BY status ORDER BY 2 DESC",
                [self.since, *params],
            )
        }
        by_repair: dict[str, dict[str, int]] = defaultdict(dict)
        for repair, status, n in self.state.query(
            "SELECT repair, status, COUNT(*) FROM journal WHERE created_at >= ?"  # noqa: S608
            f"{where} GROUP BY repair, status",
            [self.since, *params],
        ):
            by_repair[repair][status] = int(n)
        refusals: Counter[str] = Counter()
        for refusal, n in self.state.query(
            "SELECT refusal, COUNT(*) FROM journal WHERE status = 'refused' AND created_at >= ?"  # noqa: S608
            f"{where} GROUP BY refusal",
            [self.since, *params],
        ):
            refusals[(refusal or "").split(":", 1)[0] or "unknown"] += int(n)
        rows = self.state.query(
            "SELECT id, repair, target, server_id, project_id, requested_by, reason, mode, "  # noqa: S608
            "status, refusal, plan, created_at, decided_by, started_at, finished_at, output, "
            "verification FROM journal WHERE created_at >= ?"
            f"{where} ORDER BY id DESC LIMIT ?",
            [self.since, *params, self.settings.max_repairs],
        )
        items = []
        for (
            eid,
            repair,
            target,
            sid,
            pid,
            by,
            reason,
            mode,
            status,
            refusal,
            plan,
            created,
            decided_by,
            started,
            finished,
            output,
            verification,
        ) in rows:
            items.append(
                {
                    "id": eid,
                    "repair": repair,
                    "target": target,
                    "host": self.label(sid),
                    "project_id": pid or None,
                    "requested_by": by,
                    "decided_by": decided_by,
                    "reason": reason,
                    "mode": mode,
                    "status": status,
                    "refusal": refusal,
                    "steps": len(json.loads(plan or "[]")),
                    "created_at": iso(created),
                    "started_at": iso(started),
                    "finished_at": iso(finished),
                    "seconds": round(finished - started, 1) if started and finished else None,
                    "verification": verification,
                    "output_tail": (output or "").strip()[-300:] or None,
                }
            )
        total = sum(counts.values())
        return {
            "total": total,
            "listed": len(items),
            "counts": counts,
            "by_repair": {k: by_repair[k] for k in sorted(by_repair)},
            "refusals_by_reason": dict(refusals.most_common()),
            "pending": counts.get(PENDING, 0),
            "items": items,
        }

    def history(self) -> dict[str, Any]:
        fw, fp = _where(self.scope)
        opened = int(
            self.state.query(
                f"SELECT COUNT(*) FROM findings WHERE first_seen >= ?{fw}",  # noqa: S608
                [self.since, *fp],
            )[0][0]
        )
        resolved_rows = self.state.query(
            "SELECT check_name, code, server_id, project_id, severity, message, first_seen, "  # noqa: S608
            f"resolved_at FROM findings WHERE resolved_at >= ?{fw} "
            "ORDER BY resolved_at DESC",
            [self.since, *fp],
        )
        return {
            "opened": opened,
            "resolved": len(resolved_rows),
            "resolved_items": [
                {
                    "check": c,
                    "code": code,
                    "host": self.label(sid),
                    "project_id": pid or None,
                    "severity": Severity(sev).label,
                    "message": msg,
                    "first_seen": iso(first),
                    "resolved_at": iso(res),
                }
                for c, code, sid, pid, sev, msg, first, res in resolved_rows[
                    : self.settings.max_resolved
                ]
            ],
        }

    def watchdog(self) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        last = self.state.last_sweep()
        meta = self.state.meta()
        sweep = None
        if last is None:
            errors.append(
                {
                    "kind": "no_sweep",
                    "severity": "critical",
                    "message": "No sweep is recorded in the state: this report knows nothing "
                    "about the fleet. Run `bup-watchdog audit --fresh` or start the daemon.",
                    "at": None,
                }
            )
        else:
            _sid, started, seconds, hosts, repos, sessions, _worst = last
            done = started + seconds
            sweep = {
                "finished_at": iso(done),
                "seconds": round(float(seconds), 2),
                "hosts": int(hosts),
                "repositories": int(repos),
                "ssh_sessions": int(sessions),
                "age_seconds": round(self.now - done),
            }
            if self.now - done > self.settings.sweep_stale_seconds:
                errors.append(
                    {
                        "kind": "sweep_stale",
                        "severity": "warning",
                        "message": f"The last sweep finished {_human_age(self.now - done)} ago: "
                        "this report shows old facts.",
                        "at": iso(done),
                    }
                )
        err_at = meta.get("last_sweep_error_at")
        if meta.get("last_sweep_error") and (last is None or float(err_at or 0) > last[1]):
            errors.append(
                {
                    "kind": "sweep_failed",
                    "severity": "critical",
                    "message": f"The last sweep failed: {meta['last_sweep_error']}",
                    "at": iso(err_at),
                }
            )
        checks = []
        for name, lr, ls, secs, err, n_err, n_runs in self.state.query(
            "SELECT check_name, last_run, last_success, seconds, error, errors_total, runs_total "
            "FROM check_runs ORDER BY check_name"
        ):
            if self.scope.checks and name not in self.scope.checks:
                continue
            checks.append(
                {
                    "check": name,
                    "last_run": iso(lr),
                    "last_success": iso(ls),
                    "seconds": round(float(secs), 4),
                    "error": err,
                    "errors_total": int(n_err),
                    "runs_total": int(n_runs),
                }
            )
            if err:
                errors.append(
                    {
                        "kind": "check_failed",
                        "severity": "critical",
                        "message": f"Check {name} raised in its last run ({n_err} of {n_runs} "
                        f"runs failed): {err}",
                        "at": iso(lr),
                    }
                )
        inventory = {
            "stale": bool(meta.get("inventory_stale")),
            "error": meta.get("inventory_error"),
            "last_success": iso(meta.get("inventory_loaded_at")),
        }
        if inventory["stale"]:
            errors.append(
                {
                    "kind": "inventory_stale",
                    "severity": "warning",
                    "message": "The inventory source is down; sweeps use the cached inventory"
                    + (f" ({inventory['error']})" if inventory["error"] else "")
                    + ".",
                    "at": inventory["last_success"],
                }
            )
        where, params = self._journal_scope()
        for eid, repair, target, sid, finished in self.state.query(
            "SELECT id, repair, target, server_id, finished_at FROM journal WHERE status = ?"  # noqa: S608
            f"{where} ORDER BY id DESC LIMIT 100",
            [INTERRUPTED, *params],
        ):
            errors.append(
                {
                    "kind": "repair_interrupted",
                    "severity": "critical",
                    "message": f"Repair #{eid} {repair} on {self.label(sid)}"
                    + (f" ({target})" if "/" in target else "")
                    + " was interrupted; its outcome is unknown and it was not re-run.",
                    "at": iso(finished),
                }
            )
        is_open, why = breaker(self.state, self.settings.breaker_fraction)
        if is_open:
            errors.append(
                {"kind": "circuit_breaker", "severity": "critical", "message": why, "at": None}
            )
        for e in errors:
            e["alert"] = WATCHDOG_ALERTS.get(e["kind"])
            e["links"] = self._alert_links(e["alert"], None)
        return {
            "sweep": sweep,
            "checks": checks,
            "inventory": inventory,
            "circuit_breaker_open": is_open,
            "errors": errors,
        }

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        hosts = report["hosts"]
        crit = sum(h["findings"]["critical"] for h in hosts)
        warn = sum(h["findings"]["warning"] for h in hosts)
        gathered = [h for h in hosts if h["status"] != "unknown"]
        probed = sum(1 for h in hosts if h["probed"])
        up = sum(1 for h in hosts if h["bup_server_up"])
        failing = report["projects"]["failing"]
        with_findings = sum(
            1 for h in hosts if h["findings"]["critical"] or h["findings"]["warning"]
        )
        errors = report["watchdog"]["errors"]
        if report["watchdog"]["sweep"] is None:
            verdict = "unknown"
        elif crit:
            verdict = "critical"
        elif warn:
            verdict = "warning"
        else:
            verdict = "ok"
        if verdict == "unknown":
            headline = "No sweep is recorded: the fleet's state is unknown."
        elif verdict == "ok":
            headline = f"All {_plural(len(gathered), 'host')} look healthy: no open finding."
        else:
            severities = " and ".join(
                f"{n:,} {label}" for n, label in ((crit, "critical"), (warn, "warning")) if n
            )
            headline = (
                f"{severities} finding{'' if crit + warn == 1 else 's'} on {with_findings} of "
                f"{_plural(len(hosts), 'host')}; {_plural(failing, 'failing project')}."
            )
        if errors:
            headline += f" The watchdog reports {_plural(len(errors), 'problem')} of its own."
        deep = report["deep"]
        return {
            "verdict": verdict,
            "headline": headline,
            "hosts": len(hosts),
            "hosts_probed": probed,
            "bup_servers_up": up,
            "hosts_with_findings": with_findings,
            "findings_critical": crit,
            "findings_warning": warn,
            "findings": crit + warn,
            "host_findings": len(report["host_findings"]),
            "failing_projects": failing,
            "repositories": sum(h["repos"] for h in hosts),
            "deep_coverage": deep["coverage"] if deep else None,
            "repairs": report["repairs"]["total"],
            "repairs_pending": report["repairs"]["pending"],
            "watchdog_errors": len(errors),
            "last_sweep": report["watchdog"]["sweep"],
        }


def build_report(
    state: State,
    *,
    servers: Mapping[str, Server] | None = None,
    settings: ReportSettings | None = None,
    scope: Scope | None = None,
    since_seconds: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The report's data, JSON-ready. ``servers`` defaults to the inventory cached in the state."""
    settings = settings or ReportSettings()
    now = time.time() if now is None else now
    window = settings.since_seconds if since_seconds is None else since_seconds
    builder = _Builder(
        state,
        servers_from_state(state) if servers is None else servers,
        settings,
        scope or Scope(),
        now,
        now - window,
    )
    report = builder.build()
    for h in report["hosts"]:  # the raw histograms are for the chart only
        h.pop("_lag", None)
    return report
