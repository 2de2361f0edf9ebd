"""The audit report of the sandbox fleet: every planted fault named with the repair that answers it,
hostile text escaped, the same counts in HTML, Markdown and JSON, filters, the CLI and /report."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from bup_watchdog.config import Config
from bup_watchdog.config_load import parse_config
from bup_watchdog.errors import ConfigError
from bup_watchdog.http.app import create_app
from bup_watchdog.journal import Journal
from bup_watchdog.model import Finding, Inventory, Severity
from bup_watchdog.report import (
    ReportSettings,
    Scope,
    build_report,
    parse_duration,
    render,
    resolve_servers,
)
from bup_watchdog.report_links import (
    CHECK_ALERTS,
    HOST_VARIABLE,
    WATCHDOG_ALERTS,
    finding_alert,
)
from bup_watchdog.runner import Runner, inventory_source
from bup_watchdog.sandbox.expected import expected_findings
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import DEMO_PROJECTS, demo_spec
from bup_watchdog.state import State
from bup_watchdog.sweep import LAG_BUCKETS

CLI = [sys.executable, "-m", "bup_watchdog.cli"]
HOSTILE = '<script>alert("owned")</script> & <img src=x onerror=alert(1)>'
# The repair that answers each planted fault (None: no repair; a human restores the repository).
RIGHT_REPAIR = {
    ("mount_sanity", "not_mounted"): "fence_host",
    ("reachability", "bup_server_unreachable"): "restart_bup_server",
    ("reachability", "bup_server_not_running"): "restart_bup_server",
    ("save_log_size", "too_large"): "rotate_save_log",
    ("replication_lag", "behind"): "resync_replica",
    ("repo_integrity", "master_not_in_pack"): None,
    ("save_freshness", "stale"): None,
}
DAY = 86400.0
ROOT = Path(__file__).parents[2]
LINKS = {
    "grafana_url": "https://grafana.example.org",
    "alertmanager_url": "https://alertmanager.example.org",
    "runbook_url": "https://git.example.org/ops/bup-watchdog/blob/main/docs/runbooks.md",
}
# A value written for people ("≤ 1 min", "62.0 MB", "4–12 h"): in HTML and Markdown, never in JSON.
DISPLAY = re.compile(r"^[≤>]|^\d+(\.\d+)?\s*(s|min|h|d|B|kB|MB|GB|%)$|^\d+\s*(min|h|d)?\s*–")


@dataclass
class Audited:
    state: State
    config: Config
    inventory: Inventory
    ids: dict[str, str]  # host name -> server id
    pending_id: int


def journal_row(state: State, **fields: Any) -> int:
    values = {
        "project_id": None,
        "requested_by": "schedule",
        "reason": "",
        "fingerprint": None,
        "mode": "auto",
        **fields,
    }
    return Journal(state).write(**values)


def seed(state: State, ids: dict[str, str]) -> int:
    """Journal rows of every kind, an old one, a hostile finding and an old resolved finding."""
    p = DEMO_PROJECTS
    j = Journal(state)
    pending = journal_row(
        state,
        repair="resync_replica",
        target=f"{ids['h4']}/{p['P3']}",
        server_id=ids["h4"],
        project_id=p["P3"],
        reason="replication_lag/behind: the replica is 6.0 h behind",
        mode="approve",
        status="pending",
    )
    journal_row(
        state,
        repair="rotate_save_log",
        target=f"{ids['h2']}/{p['P2']}",
        server_id=ids["h2"],
        project_id=p["P2"],
        requested_by="alertmanager",
        status="refused",
        refusal="circuit_breaker: 3 of 4 hosts were unreachable",
    )
    done = journal_row(
        state,
        repair="chown_project",
        target=f"{ids['h2']}/{p['P4']}",
        server_id=ids["h2"],
        project_id=p["P4"],
        requested_by="cli:ops",
        status="running",
    )
    j.update(done, status="succeeded", started_at=time.time() - 4, verification="ownership passes")
    cut = journal_row(
        state, repair="restart_bup_server", target=ids["h4"], server_id=ids["h4"], status="running"
    )
    j.update(cut, status="interrupted", started_at=time.time() - 60)
    old = journal_row(
        state, repair="fence_host", target=ids["h3"], server_id=ids["h3"], status="succeeded"
    )
    with state.transaction() as db:  # a decision a month ago, outside a 7-day window
        db.execute("UPDATE journal SET created_at = ? WHERE id = ?", (time.time() - 30 * DAY, old))
        db.execute(
            "INSERT INTO findings(check_name, code, server_id, project_id, severity, message, "
            "first_seen, last_seen, resolved_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                "repo_garbage",
                "tmp_objects",
                ids["h1"],
                p["P5"],
                1,
                "2 leftover tmp objects",
                time.time() - 5 * DAY,
                time.time() - 3 * DAY,
                time.time() - 3 * DAY,
            ),
        )
    state.raise_finding(
        Finding("ownership", ids["h2"], Severity.WARNING, HOSTILE, p["P4"], code="wrong_owner")
    )
    return pending


@pytest.fixture(scope="module")
def audited(demo_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    """A state in tmp holding a real deep sweep of the demo fleet, plus journal rows."""
    state = State(tmp_path_factory.mktemp("report-state") / "state.db")
    result = Runner(demo_config, state, inventory_source(demo_config)).run_once(
        force=True, deep=True
    )
    assert result is not None
    ids = {s.name: s.server_id for s in result.inventory.servers.values()}
    pending = seed(state, ids)
    yield Audited(state, demo_config, result.inventory, ids, pending)
    state.close()


def report_of(a: Audited, **kwargs: Any) -> dict[str, Any]:
    settings = kwargs.pop("settings", ReportSettings.from_config(a.config))
    return build_report(a.state, settings=settings, **kwargs)


def all_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report["host_findings"] + [f for p in report["projects"]["items"] for f in p["findings"]]


def test_the_report_names_every_planted_fault_with_the_repair_that_answers_it(
    audited: Audited,
) -> None:
    report = report_of(audited)
    seen = {(f["check"], f["code"], f["host"], f["project_id"]): f for f in all_findings(report)}
    expected = expected_findings(demo_spec(), audited.config.check("save_log_size").warn_bytes)
    assert expected
    for e in expected:
        f = seen.get((e.check, e.code, e.host, e.project_id))
        assert f is not None, f"the report misses {e}"
        assert f["repair"]["name"] == RIGHT_REPAIR[(e.check, e.code)], e
    behind = seen[("replication_lag", "behind", "h4", DEMO_PROJECTS["P3"])]["repair"]
    assert behind["status"] == "pending" and behind["journal"]["id"] == audited.pending_id
    corrupt = seen[("repo_integrity", "master_not_in_pack", "h1", DEMO_PROJECTS["P1"])]
    assert corrupt["repair"]["status"] == "manual"
    assert "h3" in corrupt["repair"]["hint"]  # the intact replica to restore from
    assert report["summary"]["verdict"] == "critical"
    html = render(report, "html")
    for e in expected:
        assert e.check in html and e.host in html and (e.project_id or "") in html
    for repair in {"fence_host", "restart_bup_server", "rotate_save_log", "resync_replica"}:
        assert repair in html
    assert f"bup-watchdog repairs approve {audited.pending_id}" in html


def test_hostile_text_from_a_host_is_shown_as_text_never_as_markup(audited: Audited) -> None:
    report = report_of(audited)
    html = render(report, "html")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;img" in html
    md = render(report, "md")
    assert "<script" not in md and "&lt;script&gt;" in md
    data = json.loads(render(report, "json"))  # JSON carries the text as data, unchanged
    assert HOSTILE in {f["message"] for f in all_findings(data)}


class Tags(HTMLParser):
    """Every tag and attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_html_is_one_self_contained_file_without_script(audited: Audited) -> None:
    html = render(report_of(audited), "html")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    page = Tags()
    page.feed(html)
    names = {t for t, _ in page.tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed", "base"}
    for tag, attrs in page.tags:
        assert "src" not in attrs, tag
        assert not any(a.startswith("on") for a in attrs), tag
        assert (attrs.get("href") or "#").startswith("#"), attrs
    style = html[html.index("<style>") : html.index("</style>")]
    assert "@import" not in style and "url(" not in style
    assert sum(1 for t, _ in page.tags if t == "svg") >= 4  # per check, lag, save logs, deep


class Collect(HTMLParser):
    """Text of elements with a data-key, and how many elements carry each class."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, str] = {}
        self.classes: dict[str, int] = {}
        self.open: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for c in (a.get("class") or "").split():
            self.classes[c] = self.classes.get(c, 0) + 1
        if tag not in ("br", "img", "meta", "input", "line", "circle", "rect"):
            self.open.append((tag, a.get("data-key"), []))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            t, key, parts = self.open.pop()
            if key:
                self.keys[key] = " ".join("".join(parts).split())
            if self.open:
                self.open[-1][2].extend(parts)
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][2].append(data)


def test_the_json_has_the_same_counts_as_the_html(audited: Audited) -> None:
    report = report_of(audited)
    data = json.loads(render(report, "json"))
    page = Collect()
    page.feed(render(report, "html"))
    s = data["summary"]
    assert page.keys["failing_projects"].startswith(f"Failing projects {s['failing_projects']}")
    assert page.keys["projects_failing"] == str(s["failing_projects"])
    assert page.keys["findings_critical"] == str(s["findings_critical"])
    assert page.keys["findings_warning"] == str(s["findings_warning"])
    assert f"{s['hosts_probed']} / {s['hosts']}" in page.keys["hosts_probed"]
    assert f"{s['bup_servers_up']} / {s['hosts']}" in page.keys["bup_servers_up"]
    assert page.classes["host-row"] == len(data["hosts"]) == 4
    assert page.classes["finding"] == data["projects"]["findings_listed"]
    assert page.classes["host-finding"] == len(data["host_findings"])
    assert page.classes["journal-entry"] == data["repairs"]["listed"] == 4
    assert page.classes["watchdog-error"] == s["watchdog_errors"] == 1  # the interrupted repair
    assert s["findings"] == sum(
        h["findings"]["critical"] + h["findings"]["warning"] for h in data["hosts"]
    )
    assert s["findings"] == len(all_findings(data))
    md = render(report, "md")
    assert f"| Failing projects | {s['failing_projects']} |" in md
    assert md.count("\n| critical |") + md.count("\n| warning |") == len(all_findings(data))


def test_since_is_the_window_of_the_journal_and_of_the_finding_history(audited: Audited) -> None:
    week = report_of(audited, since_seconds=7 * DAY)
    quarter = report_of(audited, since_seconds=90 * DAY)
    day = report_of(audited, since_seconds=DAY)
    assert quarter["repairs"]["total"] == week["repairs"]["total"] + 1
    assert "fence_host" in quarter["repairs"]["by_repair"]
    assert "fence_host" not in week["repairs"]["by_repair"]
    assert week["history"]["resolved"] == 1 and day["history"]["resolved"] == 0
    assert week["history"]["resolved_items"][0]["check"] == "repo_garbage"
    assert day["summary"]["findings"] == week["summary"]["findings"]  # open findings: always
    assert "in the last 1 d" in render(day, "html")


def test_server_filter_keeps_only_that_host_its_findings_and_its_repairs(audited: Audited) -> None:
    h4 = audited.ids["h4"]
    assert resolve_servers(["h4"], audited.inventory.servers, audited.state) == (h4,)
    assert resolve_servers([h4.upper()], audited.inventory.servers, audited.state) == (h4,)
    with pytest.raises(ValueError, match="no such server: h9"):
        resolve_servers(["h9"], audited.inventory.servers, audited.state)
    report = report_of(audited, scope=Scope(servers=(h4,)))
    assert [h["name"] for h in report["hosts"]] == ["h4"]
    assert {f["host"] for f in all_findings(report)} == {"h4"}
    assert {e["host"] for e in report["repairs"]["items"]} == {"h4"}
    assert report["report"]["scope"]["servers"] == ["h4"]
    assert [d["dc"] for d in report["lag"]["dcs"]] == ["1"]


def test_check_filter_keeps_only_that_checks_findings_sections_and_repairs(
    audited: Audited,
) -> None:
    report = report_of(audited, scope=Scope(checks=("save_log_size",)))
    assert {f["check"] for f in all_findings(report)} == {"save_log_size"}
    assert report["projects"]["failing"] == 1
    assert report["lag"] is None and report["deep"] is None
    assert report["save_logs"]["over_limit"] == 2
    assert set(report["repairs"]["by_repair"]) == {"rotate_save_log"}
    assert 'id="lag"' not in render(report, "html")


def test_only_the_worst_projects_are_listed_and_the_rest_are_counted(audited: Audited) -> None:
    report = report_of(audited, settings=ReportSettings(max_projects=1))
    projects = report["projects"]
    assert projects["listed"] == 1 and projects["failing"] == 5
    assert projects["items"][0]["severity"] == "critical"  # the corrupt repository first
    assert projects["not_listed"] == 4 == sum(projects["not_listed_by_check"].values())
    assert "4 more failing projects" in render(report, "html")


def test_an_empty_state_gives_an_unknown_verdict_and_says_why(tmp_path: Path) -> None:
    report = build_report(State(tmp_path / "empty.db"))
    assert report["summary"]["verdict"] == "unknown"
    assert report["watchdog"]["errors"][0]["kind"] == "no_sweep"
    assert "UNKNOWN" in render(report, "html") and "UNKNOWN" in render(report, "md")


def test_durations_read_like_an_operator_writes_them() -> None:
    assert parse_duration("24h") == DAY and parse_duration("7d") == 7 * DAY
    assert parse_duration("30m") == 1800 and parse_duration("2w") == 14 * DAY
    assert parse_duration("90") == 90
    for bad in ("", "1y", "-1h", "0d", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_daemons_report_page_renders_the_state_at_request_time(audited: Audited) -> None:
    client = TestClient(create_app(CollectorRegistry(), audited.state))
    page = client.get("/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert DEMO_PROJECTS["P1"] in page.text and "<svg" in page.text
    data = client.get("/report", params={"format": "json", "server": "h4", "since": "24h"})
    assert data.status_code == 200
    assert [h["name"] for h in data.json()["hosts"]] == ["h4"]
    md = client.get("/report", params={"format": "md", "check": "replication_lag"})
    assert md.status_code == 200 and md.text.startswith("# bup-watchdog audit")
    assert client.get("/report", params={"server": "h9"}).status_code == 400
    assert client.get("/report", params={"since": "soon"}).status_code == 400
    assert client.get("/report", params={"check": "nosuch"}).status_code == 400
    assert "/report" in client.get("/openapi.json").json()["paths"]


def own_config(fleet: SandboxFleet, tmp_path: Path) -> str:
    """A copy of the fleet's config with its own state directory (the shared one stays as is)."""
    base = fleet.config_path.parent
    text = fleet.config_path.read_text()
    for key in ("file", "known_hosts", "key_file"):
        text = re.sub(
            rf'^{key} = "([^"/][^"]*)"$',
            lambda m, key=key: f'{key} = "{base / m.group(1)}"',
            text,
            flags=re.M,
        )
    text = re.sub(r'^directory = "[^"]*"$', f'directory = "{tmp_path / "state"}"', text, flags=re.M)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_audit_fresh_sweeps_the_demo_fleet_writes_the_report_and_exits_0(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = own_config(demo_fleet, tmp_path)
    proc = run("audit", "--config", config, "--fresh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (written,) = tmp_path.glob("bupwatch-audit-*.html")
    assert proc.stdout.strip() == str(written.resolve())
    html = written.read_text()
    assert "CRITICAL" in html and DEMO_PROJECTS["P3"] in html and 'id="lag-chart"' in html
    # not a terminal: one plain progress line per host, on stderr
    assert sum(1 for line in proc.stderr.splitlines() if line.startswith("audit: [")) == 4
    assert "audit: [" in proc.stderr and "h4" in proc.stderr
    proc = run("audit", "-c", config, "--format", "json", "-o", "-", "--server", "h2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [h["name"] for h in data["hosts"]] == ["h2"]
    out = tmp_path / "r.md"
    proc = run(
        "audit",
        "-c",
        config,
        "--format",
        "md",
        "--output",
        str(out),
        "--only",
        "save_log_size",
        "--since",
        "24h",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("# bup-watchdog audit")


def test_audit_exits_3_with_one_line_when_it_cannot_run(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = own_config(demo_fleet, tmp_path)
    for args, message in (
        (("--server", "h9"), "no such server: h9"),
        (("--since", "soon"), "not a duration"),
        (("--since", "999999999999d"), "reaches back before 1970"),
        (("--output", str(tmp_path / "missing" / "r.html")), "cannot write the report"),
    ):
        proc = run("audit", "-c", config, *args, cwd=tmp_path)
        assert proc.returncode == 3, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in JSON data with its path (hosts[0].name)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def test_the_json_report_has_a_format_version_and_numbers_as_numbers(audited: Audited) -> None:
    data = json.loads(render(report_of(audited), "json"))
    assert data["format_version"] == 2
    display = [(p, v) for p, v in strings(data) if DISPLAY.search(v)]
    assert display == [], f"display strings in the JSON report: {display}"
    hosts = {h["name"]: h for h in data["hosts"]}
    for h in hosts.values():
        assert h["lag_p95_seconds"] is None or h["lag_p95_seconds"] in LAG_BUCKETS, h
        assert isinstance(h["lag_p95_beyond_buckets"], bool)
    # h4 holds P3's replica, 6 h behind its master: the 95th percentile is in the 4–12 h bucket.
    assert hosts["h4"]["lag_p95_seconds"] == 12 * 3600.0
    assert not hosts["h4"]["lag_p95_beyond_buckets"]
    dc1 = next(d for d in data["lag"]["dcs"] if d["dc"] == "1")
    assert dc1["p95"] == {"le_seconds": 12 * 3600.0, "beyond_buckets": False}
    assert "labels" not in data["lag"]
    html, md = render(report_of(audited), "html"), render(report_of(audited), "md")
    row = html[html.index('id="host-h4"') :]
    assert "4–12 h" in row[: row.index("</tr>")]
    assert re.search(r"\| h4 \|.*\| 4–12 h \|", md)


def test_without_base_urls_the_report_links_nowhere_but_itself(audited: Audited) -> None:
    data = report_of(audited)
    assert {h["links"]["grafana"] for h in data["hosts"]} == {None}
    assert {v for f in all_findings(data) for v in f["links"].values()} == {None}
    assert all(f["alert"] for f in all_findings(data))  # the alert is named all the same


def hrefs(html: str) -> list[str]:
    page = Tags()
    page.feed(html)
    return [a["href"] or "" for t, a in page.tags if t == "a"]


def test_configured_urls_link_hosts_to_grafana_findings_to_runbooks_and_alertmanager(
    audited: Audited,
) -> None:
    settings = dataclasses.replace(ReportSettings.from_config(audited.config), **LINKS)
    data = report_of(audited, settings=settings)
    dashboard = json.loads((ROOT / "dashboards/grafana/host-detail.json").read_text())
    assert HOST_VARIABLE in {v["name"] for v in dashboard["templating"]["list"]}
    h4 = next(h for h in data["hosts"] if h["name"] == "h4")
    assert h4["links"]["grafana"] == (
        f"https://grafana.example.org/d/{dashboard['uid']}?var-{HOST_VARIABLE}=h4"
    )
    behind = next(f for f in all_findings(data) if f["check"] == "replication_lag")
    assert behind["alert"] == "BupWatchReplicaBehind"
    assert behind["links"]["runbook"] == LINKS["runbook_url"] + "#bupwatchreplicabehind"
    am = urlsplit(behind["links"]["alertmanager"])
    assert f"{am.scheme}://{am.netloc}" == LINKS["alertmanager_url"]
    assert am.fragment.startswith("/alerts?")
    assert parse_qs(am.fragment.split("?", 1)[1])["filter"] == [
        f'{{alertname="BupWatchReplicaBehind",server_id="{audited.ids["h4"]}"}}'
    ]
    interrupted = next(e for e in data["watchdog"]["errors"] if e["kind"] == "repair_interrupted")
    assert interrupted["links"]["runbook"].endswith("#bupwatchinterruptedrepair")
    html = render(data, "html")
    links = hrefs(html)
    assert h4["links"]["grafana"] in links
    assert behind["links"]["runbook"] in links and behind["links"]["alertmanager"] in links
    for href in links:  # anchors in the page, or one of the configured tools
        assert href.startswith(("#", *LINKS.values())), href
    md = render(data, "md")
    assert f"[h4]({h4['links']['grafana']})" in md
    assert f"[runbook]({behind['links']['runbook']})" in md


def test_every_host_tile_links_to_its_own_row(audited: Audited) -> None:
    html = render(report_of(audited), "html")
    page = Tags()
    page.feed(html)
    ids = {a.get("id") for _, a in page.tags}
    tiles = [a["href"] for t, a in page.tags if t == "a" and "tile" in (a.get("class") or "")]
    assert sorted(tiles) == ["#host-h1", "#host-h2", "#host-h3", "#host-h4"]
    assert all(unquote(t[1:]) in ids for t in tiles)


def test_every_alert_the_report_names_is_a_rule_in_alerts_yml_with_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "dashboards/prometheus/alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    named = {
        finding_alert(check, code, severity)
        for check in [*CHECK_ALERTS, "reachability", "save_freshness", "guard"]
        for code in (
            "host_key",
            "ssh_unreachable",
            "probe_garbage",
            "bup_server_unreachable",
            "interrupted",
            "too_large",
        )
        for severity in ("warning", "critical")
    } - {None}
    named |= set(WATCHDOG_ALERTS.values())
    assert named - alerts == set(), "the report links to alerts that do not exist"
    # GitHub anchors a heading by its text in lower case: "## BupWatchReplicaBehind" is the
    # #bupwatchreplicabehind the report links to.
    runbooks = (ROOT / "docs/runbooks.md").read_text()
    headings = {m.lower() for m in re.findall(r"^#+ +(\S+)\s*$", runbooks, flags=re.M)}
    assert {a.lower() for a in named} - headings == set(), "alerts without a runbook section"
    assert len(named) >= 17


def test_report_urls_are_optional_config_keys_and_must_be_http_urls(tmp_path: Path) -> None:
    base = {
        "inventory": {"file": str(tmp_path / "inventory.toml")},
        "state": {"directory": str(tmp_path)},
    }
    config = parse_config({**base, "report": LINKS}, {})
    assert ReportSettings.from_config(config).runbook_url == LINKS["runbook_url"]
    assert ReportSettings.from_config(parse_config(base, {})).grafana_url == ""
    with pytest.raises(ConfigError, match=r"At 'report\.grafana_url'"):
        parse_config({**base, "report": {"grafana_url": "grafana.example.org"}}, {})
    with pytest.raises(ConfigError, match=r"At 'report\.runbook_url'"):
        parse_config({**base, "report": {"runbook_url": "https://x.org/runbooks.md#top"}}, {})
