"""Prometheus metrics built at scrape time from the latest complete sweep.

A custom collector (no import-time registration, registry injected): a scrape sees one whole sweep
or the one before it, never half of one. Labels are bounded: per server and check, never per
project.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchdog.model import Severity
from watchdog.sweep import SweepResult

PREFIX = "bupwatch_"


class SweepCollector(Collector):
    """Renders the latest sweep (from ``latest()``) as metric families."""

    def __init__(self, latest: Callable[[], SweepResult | None], check_names: list[str]) -> None:
        self._latest = latest
        self._check_names = check_names

    def collect(self) -> Iterator[Metric]:
        result = self._latest()
        up = GaugeMetricFamily(
            PREFIX + "sweep_available", "1 when at least one sweep has completed, else 0."
        )
        up.add_metric([], 1.0 if result is not None else 0.0)
        yield up
        if result is None:
            return
        yield from self._sweep(result)
        yield from self._hosts(result)
        yield from self._findings(result)

    def _sweep(self, r: SweepResult) -> Iterator[Metric]:
        g = GaugeMetricFamily(PREFIX + "sweep_duration_seconds", "Wall time of the last sweep.")
        g.add_metric([], r.seconds)
        yield g
        g = GaugeMetricFamily(
            PREFIX + "sweep_last_completed_timestamp_seconds",
            "When the last sweep finished (Unix time).",
        )
        g.add_metric([], r.started + r.seconds)
        yield g
        g = GaugeMetricFamily(
            PREFIX + "sweep_ssh_sessions", "SSH sessions the last sweep opened (all hosts)."
        )
        g.add_metric([], float(r.ssh_sessions))
        yield g
        dur = GaugeMetricFamily(
            PREFIX + "check_duration_seconds",
            "Time the check took in the last sweep.",
            labels=["check"],
        )
        ok = GaugeMetricFamily(
            PREFIX + "check_success",
            "1 when the check ran without error in the last sweep.",
            labels=["check"],
        )
        last = GaugeMetricFamily(
            PREFIX + "check_last_run_timestamp_seconds",
            "When the check last ran (Unix time).",
            labels=["check"],
        )
        for name, run in sorted(r.checks.items()):
            dur.add_metric([name], run.seconds)
            ok.add_metric([name], 0.0 if run.error else 1.0)
            last.add_metric([name], r.started + r.seconds)
        yield dur
        yield ok
        yield last
        inv = GaugeMetricFamily(
            PREFIX + "inventory_stale",
            "1 when the sweep ran on a cached inventory because the source was down.",
            labels=["source"],
        )
        inv.add_metric([r.inventory.source], 1.0 if r.inventory.stale else 0.0)
        yield inv

    def _hosts(self, r: SweepResult) -> Iterator[Metric]:
        labels = ["server_id", "host", "dc"]
        probe = GaugeMetricFamily(
            PREFIX + "host_probe_success",
            "1 when the host's probe answered completely over SSH.",
            labels=labels,
        )
        bup = GaugeMetricFamily(
            PREFIX + "bup_server_up",
            "1 when bup_server accepted a TCP connection at the inventory's address.",
            labels=labels,
        )
        gdur = GaugeMetricFamily(
            PREFIX + "host_gather_duration_seconds",
            "Time to gather the host's facts in the last sweep.",
            labels=labels,
        )
        repos = GaugeMetricFamily(
            PREFIX + "host_repositories", "bup repositories the probe found.", labels=labels
        )
        repo_bytes = GaugeMetricFamily(
            PREFIX + "host_repository_bytes",
            "Total size of the host's bup repositories.",
            labels=labels,
        )
        save_log = GaugeMetricFamily(
            PREFIX + "host_save_log_max_bytes",
            "Largest conf/save_log.json on the host.",
            labels=labels,
        )
        for sid, facts in sorted(r.facts.items()):
            server = r.inventory.servers.get(sid)
            if server is None:
                continue
            lv = [sid, server.label, str(server.dc)]
            probe.add_metric(lv, 1.0 if facts.probed else 0.0)
            tcp = facts.bup_server_tcp
            bup.add_metric(lv, 1.0 if tcp is not None and tcp.ok else 0.0)
            gdur.add_metric(lv, facts.duration_seconds)
            if facts.probed:
                repos.add_metric(lv, float(len(facts.repos)))
                repo_bytes.add_metric(lv, float(sum(x.repo_bytes for x in facts.repos.values())))
                sizes = [x.save_log_bytes or 0 for x in facts.repos.values()]
                save_log.add_metric(lv, float(max(sizes, default=0)))
        yield from (probe, bup, gdur, repos, repo_bytes, save_log)

    def _findings(self, r: SweepResult) -> Iterator[Metric]:
        counts: Counter[tuple[str, str, str]] = Counter()
        failing: dict[tuple[str, str], set[str]] = {}
        for f in r.findings:
            counts[(f.check, f.server_id, f.severity.label)] += 1
            if f.project_id:
                failing.setdefault((f.check, f.server_id), set()).add(f.project_id)
        g = GaugeMetricFamily(
            PREFIX + "findings",
            "Open findings of the last sweep, per check, server and severity.",
            labels=["check", "server_id", "severity"],
        )
        for sid in sorted(r.facts):
            for name in self._check_names:
                for sev in (Severity.WARNING, Severity.CRITICAL):
                    g.add_metric([name, sid, sev.label], float(counts[(name, sid, sev.label)]))
        yield g
        p = GaugeMetricFamily(
            PREFIX + "projects_failing",
            "Projects with at least one finding, per check and server.",
            labels=["check", "server_id"],
        )
        for (name, sid), projects in sorted(failing.items()):
            p.add_metric([name, sid], float(len(projects)))
        yield p
