"""The Grafana dashboards: generated with grafana-foundation-sdk by generate.py (regenerating gives
the committed JSON), every key known to the SDK's models, every query parses (promtool) and
evaluates on a real Prometheus scraping a watchdog that swept the sandbox fleet, every metric a
panel names is exported, hosts are chosen by name, every panel has a unit, every fleet panel links
to the host dashboard, and repairs are annotated. No Grafana server runs here (see
dashboards/README.md): what Grafana itself would say about the JSON is not tested."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry, start_http_server

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.config import Config
from bup_watchdog.journal import REFUSED, Journal
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Inventory
from bup_watchdog.state import State
from bup_watchdog.sweep import LAG_BUCKETS, record, sweep
from support.prometheus import Prometheus, free_port

ROOT = Path(__file__).parents[2] / "dashboards"
GRAFANA = ROOT / "grafana"
RECORDING = ROOT / "prometheus" / "recording.yml"
BOARDS = ("fleet-overview.json", "host-detail.json", "watchdog-health.json")
HOST_UID = "bupwatch-host"  # the audit report's links name it (bup_watchdog.report_links)

# Grafana's variables, replaced by values that keep the query valid PromQL; the host and dc are
# the demo fleet's, so that the joins on bupwatch_server_info find something.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$dc": "0",
    "$host": "h1",
    "$job": "bupwatch",
}
# Series Prometheus itself adds to every scrape (not exported by the watchdog, always there).
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
# Fields Grafana's Prometheus data source reads from an annotation that the SDK's generic
# AnnotationQuery model lacks (the generator adds them; see PrometheusAnnotation).
ANNOTATION_EXTRAS = {"titleFormat", "tagKeys", "step", "useValueForTime"}


def dashboards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}
    assert set(found) == set(BOARDS)
    return found


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title or annotation name, PromQL) of every query in the dashboard."""
    queries = [(p["title"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    notes = [(f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"]]
    return queries + notes


def substitute(expr: str) -> str:
    """The query with Grafana's variables replaced; fails on a variable we do not know."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    # $1 is label_replace's reference to a regex group, not a variable
    assert not re.search(r"\$(?!\d)", expr) and "[[" not in expr, (
        f"unknown template variable in {expr!r}"
    )
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label names left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RECORDING.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def unknown_metrics(boards: dict[str, dict[str, Any]], exported: set[str]) -> dict[str, str]:
    """Every metric a panel names that neither the watchdog, the recording rules nor Prometheus
    itself provides, mapped to where it was found."""
    known = exported | recorded_names() | PROMETHEUS_SERIES
    out = {}
    for file, board in boards.items():
        for title, expr in expressions(board):
            for name in metric_names(substitute(expr)) - known:
                out[name] = f"{file}: {title}"
    return out


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool check rules on the expressions, each written as a recording rule."""
    rules = [{"record": f"grafana:panel_query:{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana-panels", "rules": rules}]}))
    return subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def links(panel: dict[str, Any]) -> list[str]:
    """The URLs of a panel's links: panel links, data links, and data links of overrides."""
    found = [link["url"] for link in panel.get("links", [])]
    found += [link["url"] for link in panel["fieldConfig"]["defaults"].get("links", [])]
    for override in panel["fieldConfig"]["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "links":
                found += [link["url"] for link in prop["value"]]
    return found


def per_host(panel: dict[str, Any]) -> bool:
    """Whether a panel shows one series (or table row) per host, labelled by its name."""
    targets = panel["targets"]
    return any(t["legendFormat"] == "{{name}}" or "by (name" in t["expr"] for t in targets)


def host_link_missing(board: dict[str, Any]) -> list[str]:
    """Panels of a fleet dashboard without a link to the host dashboard with the host preset;
    a panel of one series per host must link each by its own name."""
    missing = []
    for p in panels(board):
        if p["type"] == "row":
            continue
        to_host = [u for u in links(p) if u.startswith(f"/d/{HOST_UID}?")]
        preset = [u for u in to_host if "var-host=" in u or "${host:queryparam}" in u]
        own = [u for u in preset if re.search(r"var-host=\$\{__(field\.labels\.name|value)", u)]
        if not preset or (per_host(p) and not own):
            missing.append(p["title"])
    return missing


def refuse(state: State) -> None:
    """Journal a repair request the guard refused, as the circuit breaker would."""
    Journal(state).write(
        repair="restart_bup_server",
        target="x",
        server_id="x",
        project_id=None,
        requested_by="test",
        reason="",
        fingerprint=None,
        mode="auto",
        status=REFUSED,
        refusal="circuit_breaker: test",
    )


@pytest.fixture(scope="module")
def demo_state(
    demo_config: Config, demo_inventory: Inventory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[State]:
    """The state of a watchdog that swept the demo fleet and refused a repair."""
    state = State(tmp_path_factory.mktemp("grafana-state") / "state.db")
    record(state, sweep(demo_config, demo_inventory, state=state, deep=True))
    refuse(state)
    yield state
    state.close()


@pytest.fixture(scope="module")
def registry(demo_state: State, demo_inventory: Inventory) -> CollectorRegistry:
    """That watchdog's metrics, rendered from its state at each scrape."""
    reg = CollectorRegistry()
    reg.register(
        StateCollector(
            demo_state,
            lambda: demo_inventory.servers,
            sorted(check_registry()),
            lag_buckets=LAG_BUCKETS,
        )
    )
    return reg


@pytest.fixture(scope="module")
def exported(registry: CollectorRegistry) -> set[str]:
    """Every metric and sample name the watchdog exports."""
    families = list(registry.collect())
    return {s.name for f in families for s in f.samples} | {f.name for f in families}


@pytest.fixture(scope="module")
def prometheus(
    registry: CollectorRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus scraping those metrics every second, with the recording rules."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        work = tmp_path_factory.mktemp("grafana-prometheus")
        with Prometheus(work, [f"127.0.0.1:{port}"], rule_files=[RECORDING]) as prom:
            prom.wait_for_query('up{job="bupwatch"} == 1', lambda r: len(r) == 1)
            prom.wait_for_query("bupwatch:hosts_probed:ratio", lambda r: len(r) == 1)
            yield prom
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_regenerating_into_a_fresh_folder_gives_exactly_the_committed_json(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BOARDS)
    for name in BOARDS:
        assert (tmp_path / name).read_bytes() == (GRAFANA / name).read_bytes(), (
            f"{name} is out of date: run python dashboards/grafana/generate.py"
        )


def test_the_check_mode_of_the_generator_fails_on_a_stale_file(tmp_path: Path) -> None:
    gen = [sys.executable, str(GRAFANA / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(gen, capture_output=True, timeout=120, check=True)
    assert subprocess.run([*gen, "--check"], capture_output=True, timeout=120).returncode == 0
    stale = tmp_path / "host-detail.json"
    stale.write_text(stale.read_text().replace('"bupwatch-host"', '"bupwatch-other"'))
    proc = subprocess.run([*gen, "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "host-detail.json" in proc.stderr


def test_every_key_of_the_dashboards_is_one_the_sdk_models_know() -> None:
    """A key the SDK's models do not know is dropped on a round trip through them; only the
    Prometheus annotation fields the SDK lacks may be."""

    def differences(a: Any, b: Any, path: str) -> Iterator[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a.keys() | b.keys():
                if k not in b and path.startswith(".annotations") and k in ANNOTATION_EXTRAS:
                    continue
                if k not in a or k not in b:
                    yield f"{path}.{k}"
                else:
                    yield from differences(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                yield from differences(x, y, f"{path}[{i}]")
        elif a != b:
            yield f"{path}: {a!r} != {b!r}"

    for name, board in dashboards().items():
        back = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
        assert list(differences(board, back, "")) == [], name
        board["panels"][1]["fieldConfig"]["defaults"]["unitt"] = "s"  # the check can fail
        back = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
        assert list(differences(board, back, "")) == [".panels[1].fieldConfig.defaults.unitt"]


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [substitute(e) for b in dashboards().values() for _, e in expressions(b)]
    assert len(exprs) > 50
    proc = promtool_check(exprs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_the_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    proc = promtool_check(["sum by (check) (bupwatch_findings"], tmp_path)
    assert proc.returncode != 0


def test_every_query_evaluates_on_a_real_prometheus_scraping_the_watchdog(
    prometheus: Prometheus,
) -> None:
    """Catches what parsing cannot: a join that matches many-to-many, a function on the wrong
    type. With $host = h1, the host dashboard's joins on bupwatch_server_info find that host."""
    failed = {}
    for file, board in dashboards().items():
        for title, expr in expressions(board):
            try:
                prometheus.query(substitute(expr))
            except AssertionError as exc:
                failed[f"{file}: {title}"] = str(exc)
    assert failed == {}
    with pytest.raises(AssertionError, match="many-to-many"):
        prometheus.query(
            "bupwatch_host_probe_success * on (dc) group_left () bupwatch_host_probe_success"
        )
    host = dashboards()["host-detail.json"]
    first_row = [p for p in host["panels"] if p["type"] == "stat"]
    assert len(first_row) == 8
    for p in first_row:
        (series,) = prometheus.query(substitute(p["targets"][0]["expr"]))
        assert series["metric"]["name"] == "h1", p["title"]


def test_the_refusal_annotation_marks_a_refusal_journaled_while_prometheus_watches(
    prometheus: Prometheus, demo_state: State
) -> None:
    notes = {a["name"]: a for a in dashboards()["fleet-overview.json"]["annotations"]["list"]}
    refused, run = notes["Repairs refused (guard)"]["expr"], notes["Repairs (watchdog)"]["expr"]
    scraped = prometheus.query("bupwatch_repairs_total")
    assert [s["metric"]["outcome"] for s in scraped] == ["refused"]
    assert prometheus.query(refused) == []  # the refusal journaled before Prometheus started
    refuse(demo_state)
    (marker,) = prometheus.wait_for_query(refused, lambda r: len(r) == 1)
    assert marker["metric"] == {"repair": "restart_bup_server", "outcome": "refused"}
    assert prometheus.query(run) == []


def test_every_metric_a_panel_uses_is_exported_by_the_watchdog(exported: set[str]) -> None:
    boards = dashboards()
    used = {n for b in boards.values() for _, e in expressions(b) for n in metric_names(e)}
    assert {"bupwatch_projects_failing", "bupwatch_replication_lag_replicas"} <= used
    assert {"bupwatch_server_info", "bupwatch_save_age_projects", "bupwatch_repairs_total"} <= used
    assert {n for n in used if n.startswith("bupwatch:")} <= recorded_names()
    assert unknown_metrics(boards, exported) == {}


def test_the_checker_catches_a_metric_the_watchdog_does_not_export(exported: set[str]) -> None:
    boards = dashboards()
    board = json.loads(json.dumps(boards["fleet-overview.json"]))
    target = next(p for p in board["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = 'sum(bupwatch_invented_bytes{name=~"$host"}) + bupwatch:made:up'
    boards["fleet-overview.json"] = board
    assert set(unknown_metrics(boards, exported)) == {"bupwatch_invented_bytes", "bupwatch:made:up"}


def test_metric_names_skip_functions_keywords_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (dc, le) (rate(bupwatch_a_bucket{le="1", x=~"y|z"}[5m])))'
        " * on (server_id) group_left (host) group by (server_id, host) (bupwatch_b)"
        " > bool 0 unless bupwatch:c:ratio offset 1h or vector(0) and time() - up"
    )
    assert metric_names(expr) == {"bupwatch_a_bucket", "bupwatch_b", "bupwatch:c:ratio", "up"}


def test_every_panel_has_a_unit() -> None:
    for name, board in dashboards().items():
        for p in panels(board):
            if p["type"] != "row":
                unit = p["fieldConfig"]["defaults"].get("unit")
                assert isinstance(unit, str) and unit, f"{name}: {p['title']} has no unit"


def test_every_fleet_panel_links_to_the_host_dashboard_with_the_host_preset() -> None:
    boards = dashboards()
    assert boards["host-detail.json"]["uid"] == HOST_UID
    fleet = boards["fleet-overview.json"]
    assert host_link_missing(fleet) == []
    per_host_panels = [p["title"] for p in panels(fleet) if p["type"] != "row" and per_host(p)]
    assert len(per_host_panels) >= 9, per_host_panels
    tables = [
        p for p in panels(fleet) if p["type"] == "table" and "name" in p["targets"][0]["expr"]
    ]
    assert tables and all(re.search(r"var-host=\$\{__value\.raw\}", links(p)[-1]) for p in tables)


def test_the_link_check_catches_a_fleet_panel_without_its_host_link() -> None:
    fleet = dashboards()["fleet-overview.json"]
    p = next(p for p in fleet["panels"] if p.get("title") == "Failing projects per host")
    p["fieldConfig"]["defaults"]["links"] = []
    assert host_link_missing(fleet) == ["Failing projects per host"]
    p["links"] = [{"url": f"/d/{HOST_UID}?${{host:queryparam}}"}]  # the chosen host, not its own
    assert host_link_missing(fleet) == ["Failing projects per host"]


def test_hosts_are_chosen_by_name_from_server_info_and_the_host_dashboard_joins_on_it() -> None:
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        host = variables["host"]
        assert host["type"] == "query", name
        assert re.fullmatch(r"label_values\(bupwatch_server_info(\{.*\})?, name\)", host["query"])
        assert host["datasource"]["uid"] == "${datasource}", name
        assert host["refresh"] == 2, name  # options fetched when the dashboard's time changes
    detail = dashboards()["host-detail.json"]
    assert {v["name"]: v for v in detail["templating"]["list"]}["host"]["multi"] is False
    for title, expr in expressions(detail):
        if not title.startswith("annotation"):
            assert "on (server_id) group_left (name, dc) group by (server_id, name, dc) " in expr
            assert 'bupwatch_server_info{name="$host"}' in expr, title


def test_every_dashboard_marks_repairs_from_the_watchdogs_counters() -> None:
    for name, board in dashboards().items():
        notes = board["annotations"]["list"]
        assert {n["name"] for n in notes} == {"Repairs (watchdog)", "Repairs refused (guard)"}
        for n in notes:
            assert n["enable"] is True and n["datasource"]["uid"] == "${datasource}", name
            assert "changes(bupwatch_repairs_total" in n["expr"] and n["expr"].endswith("> 0")
            assert n["titleFormat"] == "{{repair}}: {{outcome}}", name
            assert n["tagKeys"] == "repair,outcome", name


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_no_data_source_uid_is_hard_coded() -> None:
    for name, board in dashboards().items():
        sources = [(p, v) for p, v in walk(board) if p.endswith(".datasource")]
        assert sources, name
        for path, value in sources:
            assert value == {"type": "prometheus", "uid": "${datasource}"}, f"{name}{path}"
        uids = [(p, v) for p, v in walk(board) if p.endswith(".uid") and p != ".uid"]
        assert all(v == "${datasource}" for _, v in uids), f"{name}: {uids}"
        for p in panels(board):
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", f"{name}: {p['title']}"


def test_each_dashboard_has_the_datasource_dc_and_host_variables() -> None:
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        for var in ("dc", "host"):
            assert variables[var]["type"] == "query", name
            assert variables[var]["query"].startswith("label_values(bupwatch_server_info"), name
            assert variables[var]["datasource"]["uid"] == "${datasource}", name
        assert board["schemaVersion"] == 41  # what the SDK release (Grafana 11.6) writes
        assert board["uid"].startswith("bupwatch-")


def test_panels_fit_the_grid_without_overlapping_and_have_unique_ids() -> None:
    for name, board in dashboards().items():
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for p in panels(board):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{name}: {p['title']}"
            mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
            assert not mine & cells, f"{name}: {p['title']} overlaps another panel"
            cells |= mine
            if p["type"] != "row":
                assert p["description"], f"{name}: {p['title']} has no description"
                refs = [t["refId"] for t in p["targets"]]
                assert refs and len(refs) == len(set(refs)), f"{name}: {p['title']}"
                assert all(refs), f"{name}: {p['title']} has a query without a refId"


def test_the_provisioning_example_loads_the_dashboards_from_files() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
