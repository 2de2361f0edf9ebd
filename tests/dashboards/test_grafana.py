"""The Grafana dashboards: generated from generate.py, every query parses (promtool), and every
metric a panel names is exported by a watchdog that swept the sandbox fleet."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.config import Config
from bup_watchdog.journal import REFUSED, Journal
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Inventory
from bup_watchdog.state import State
from bup_watchdog.sweep import LAG_BUCKETS, record, sweep

ROOT = Path(__file__).parents[2] / "dashboards"
GRAFANA = ROOT / "grafana"
RECORDING = ROOT / "prometheus" / "recording.yml"

# Grafana's variables, replaced by values that keep the query valid PromQL.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$server_id": "0b7d4e2a-1111-4c1d-9a0b-000000000001",
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


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}
    assert set(found) == {"fleet-overview.json", "host-detail.json", "watchdog-health.json"}
    return found


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard."""
    return [(p["title"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]


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


@pytest.fixture(scope="module")
def exported(
    demo_config: Config, demo_inventory: Inventory, tmp_path_factory: pytest.TempPathFactory
) -> set[str]:
    """Every metric and sample name a watchdog exports after sweeping the demo fleet."""
    state = State(tmp_path_factory.mktemp("grafana-state") / "state.db")
    record(state, sweep(demo_config, demo_inventory, state=state, deep=True))
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
    reg = CollectorRegistry()
    reg.register(
        StateCollector(
            state,
            lambda: demo_inventory.servers,
            sorted(check_registry()),
            lag_buckets=LAG_BUCKETS,
        )
    )
    families = list(reg.collect())
    state.close()
    return {s.name for f in families for s in f.samples} | {f.name for f in families}


def test_the_committed_json_is_what_generate_py_writes() -> None:
    gen = load_generator()
    for name in dashboards():
        assert gen.render(name) == (GRAFANA / name).read_text(), (
            f"{name} is out of date: run python dashboards/grafana/generate.py"
        )


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [substitute(e) for b in dashboards().values() for _, e in expressions(b)]
    assert len(exprs) > 50
    proc = promtool_check(exprs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_the_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    proc = promtool_check(["sum by (check) (bupwatch_findings"], tmp_path)
    assert proc.returncode != 0


def test_every_metric_a_panel_uses_is_exported_by_the_watchdog(exported: set[str]) -> None:
    boards = dashboards()
    used = {n for b in boards.values() for _, e in expressions(b) for n in metric_names(e)}
    assert {"bupwatch_projects_failing", "bupwatch_replication_lag_replicas"} <= used
    assert {n for n in used if n.startswith("bupwatch:")} <= recorded_names()
    assert unknown_metrics(boards, exported) == {}


def test_the_checker_catches_a_metric_the_watchdog_does_not_export(exported: set[str]) -> None:
    boards = dashboards()
    board = json.loads(json.dumps(boards["fleet-overview.json"]))
    target = next(p for p in board["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = 'sum(bupwatch_invented_bytes{server_id=~"$server_id"}) + bupwatch:made:up'
    boards["fleet-overview.json"] = board
    assert set(unknown_metrics(boards, exported)) == {"bupwatch_invented_bytes", "bupwatch:made:up"}


def test_metric_names_skip_functions_keywords_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (dc, le) (rate(bupwatch_a_bucket{le="1", x=~"y|z"}[5m])))'
        " * on (server_id) group_left (host) group by (server_id, host) (bupwatch_b)"
        " > bool 0 unless bupwatch:c:ratio offset 1h or vector(0) and time() - up"
    )
    assert metric_names(expr) == {"bupwatch_a_bucket", "bupwatch_b", "bupwatch:c:ratio", "up"}


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


def test_each_dashboard_has_the_datasource_dc_and_server_variables() -> None:
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        for var in ("dc", "server_id"):
            assert variables[var]["type"] == "query", name
            assert variables[var]["query"].startswith("label_values("), name
            assert variables[var]["datasource"]["uid"] == "${datasource}", name
        assert board["schemaVersion"] == 39
        assert board["uid"].startswith("bupwatch-")
    host = {v["name"]: v for v in dashboards()["host-detail.json"]["templating"]["list"]}
    assert host["server_id"]["multi"] is False  # the host dashboard shows one server


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


def test_the_provisioning_example_loads_the_dashboards_from_files() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
