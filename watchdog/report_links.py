"""Links from the audit report to Grafana, Alertmanager and the runbooks ([report] in the config).

A finding names the alert of ``dashboards/prometheus/alerts.yml`` that fires on it; that name is the
runbook's anchor (``docs/runbooks.md`` has one section per alert, anchored by GitHub's rule: the
heading in lower case) and the Alertmanager filter. A host links to the Grafana host dashboard with
its ``host`` variable (the host's name) preset. With no base URL configured there is no link, and
the page stays one self-contained file.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from urllib.parse import quote

# The Grafana host dashboard (dashboards/grafana/) and its variable that picks a host by name.
HOST_DASHBOARD = "grafana/host-detail.json"
HOST_DASHBOARD_UID = "bupwatch-host"  # when the packaged dashboard cannot be read
HOST_VARIABLE = "host"
# The alert that fires on the findings of a check, when its code and severity do not decide it.
CHECK_ALERTS = {
    "mount_sanity": "BupWatchProjectsNotMounted",
    "repo_integrity": "BupWatchRepoCorrupt",
    "replication_lag": "BupWatchReplicaBehind",
    "save_log_size": "BupWatchSaveLogTooLarge",
    "ownership": "BupWatchWrongOwner",
    "repo_garbage": "BupWatchRepoGarbage",
    "bup_quota": "BupWatchOverQuota",
    "placement": "BupWatchPlacement",
}
# Checks whose alert fires on critical findings only (a warning of them has no alert).
CRITICAL_ONLY = frozenset({"mount_sanity", "repo_integrity"})
# The alert of each kind of the watchdog's own problems (report.watchdog.errors[].kind).
WATCHDOG_ALERTS = {
    "no_sweep": "BupWatchSweepStale",
    "sweep_stale": "BupWatchSweepStale",
    "sweep_failed": "BupWatchSweepStale",
    "inventory_stale": "BupWatchInventoryStale",
    "circuit_breaker": "BupWatchCircuitBreakerOpen",
    "repair_interrupted": "BupWatchInterruptedRepair",
    "check_failed": "BupWatchCheckFailing",
}


def finding_alert(check: str, code: str, severity: str) -> str | None:
    """The alert that fires on a finding (None: no alert watches it)."""
    if check == "reachability":
        if code == "host_key":
            return "BupWatchHostKeyRejected"
        if code.startswith(("ssh_", "probe_")):
            return "BupWatchHostUnreachable"
        if code.startswith("bup_server_"):
            return "BupWatchBupServerDown"
        return None
    if check == "save_freshness":
        return "BupWatchSavesFailing" if severity == "critical" else "BupWatchSavesStale"
    if check == "guard":
        return "BupWatchInterruptedRepair" if code == "interrupted" else None
    if check in CRITICAL_ONLY and severity != "critical":
        return None
    return CHECK_ALERTS.get(check)


@cache
def host_dashboard_uid() -> str:
    """The uid of the packaged Grafana host dashboard (so a link follows a regenerated one)."""
    try:
        text = files("bup_watchdog.dashboards").joinpath(HOST_DASHBOARD).read_text("utf-8")
        uid = json.loads(text).get("uid")
    except (OSError, ValueError, ModuleNotFoundError, AttributeError):
        return HOST_DASHBOARD_UID
    return uid if isinstance(uid, str) and uid else HOST_DASHBOARD_UID


def grafana_host(base: str, name: str) -> str | None:
    """The Grafana host dashboard with this host preset (None without a base URL)."""
    if not base:
        return None
    return f"{base.rstrip('/')}/d/{quote(host_dashboard_uid())}?var-{HOST_VARIABLE}={quote(name)}"


def alertmanager_alert(base: str, alert: str | None, server_id: str | None = None) -> str | None:
    """Alertmanager's alert list filtered to this alert (and server) (None without one of them)."""
    if not base or not alert:
        return None
    matchers = [f'alertname="{alert}"'] + ([f'server_id="{server_id}"'] if server_id else [])
    return f"{base.rstrip('/')}/#/alerts?filter={quote('{' + ','.join(matchers) + '}', safe='')}"


def runbook(base: str, alert: str | None) -> str | None:
    """The runbook section of an alert: GitHub's anchor of its heading (None without either)."""
    if not base or not alert:
        return None
    return f"{base}#{alert.lower()}"
