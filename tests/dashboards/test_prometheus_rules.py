"""The shipped Prometheus rules and Alertmanager example: valid, unit-tested, and naming only
metrics the watchdog really exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from bup_watchdog.config import Config
from bup_watchdog.metrics import StateCollector
from bup_watchdog.model import Inventory
from bup_watchdog.state import State
from bup_watchdog.sweep import record, sweep

ROOT = Path(__file__).parents[2] / "dashboards"
PROM = ROOT / "prometheus"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=PROM)


def test_promtool_accepts_the_alerting_and_recording_rules() -> None:
    proc = run("promtool", "check", "rules", "alerts.yml", "recording.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    proc = run("promtool", "test", "rules", "tests.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_amtool_accepts_the_alertmanager_example() -> None:
    proc = run("amtool", "check-config", str(ROOT / "alertmanager" / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def rule_expressions() -> list[str]:
    exprs = []
    for name in ("alerts.yml", "recording.yml"):
        for group in yaml.safe_load((PROM / name).read_text())["groups"]:
            exprs.extend(rule["expr"] for rule in group["rules"])
    return exprs


def exported_names(config: Config, inventory: Inventory, tmp_path: Path) -> set[str]:
    state = State(tmp_path / "state.db")
    record(state, sweep(config, inventory, state=state))
    reg = CollectorRegistry()
    reg.register(StateCollector.for_config(config, state, lambda: inventory.servers))
    return {s.name for family in reg.collect() for s in family.samples} | {
        family.name for family in reg.collect()
    }


def test_every_metric_a_rule_uses_is_exported_by_the_watchdog(
    demo_config: Config, demo_inventory: Inventory, tmp_path: Path
) -> None:
    used = {m for e in rule_expressions() for m in re.findall(r"\bbupwatch_[a-z0-9_]+", e)}
    exported = exported_names(demo_config, demo_inventory, tmp_path)
    assert used, "no metric found in the rules"
    assert used - exported == set()


def test_every_alert_the_webhook_maps_to_a_repair_is_defined_and_keeps_server_id() -> None:
    alerts = {
        rule["alert"]: rule
        for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    mapped = {r.alertname for r in Config.model_validate({}).alerts.rules}
    assert mapped <= set(alerts)
    for name in mapped:
        assert alerts[name]["labels"].get("auto_repair") == "true"
        assert "server_id" in alerts[name]["expr"]


def test_every_alert_has_promtool_cases_where_it_fires_and_where_it_does_not() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = [
        case
        for test in yaml.safe_load((PROM / "tests.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts no promtool test sees firing"
    assert alerts - silent == set(), "alerts no promtool test sees staying silent"


def test_the_host_key_alert_reaches_the_security_receiver_and_the_storage_on_call() -> None:
    proc = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ROOT / 'alertmanager' / 'alertmanager.yml'}",
        "alertname=BupWatchHostKeyRejected",
        "category=security",
        "severity=critical",
        "server_id=0b7d4e2a-1111-4c1d-9a0b-000000000001",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["security-oncall,storage-oncall"]
