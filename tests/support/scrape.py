"""The daemon's ``/metrics`` as the tests read it: one scrape parsed into samples, keyed by
name and label set, with the official parser rather than by hand."""

from __future__ import annotations

import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics(base: str) -> Samples:
    """Scrape ``base``/metrics (it must answer 200) into its samples."""
    r = httpx.get(f"{base}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def sample(found: Samples, name: str, **labels: str) -> float | None:
    """The value of ``name`` with exactly these ``labels``, or None when the scrape lacks it."""
    return found.get((name, frozenset(labels.items())))


def by_label(found: Samples, name: str, label: str) -> dict[str, float]:
    """Every sample of ``name``, keyed by one of its labels."""
    return {dict(lv)[label]: v for (n, lv), v in found.items() if n == name}


def promtool_check_metrics(exposition: str) -> str:
    """What ``promtool check metrics`` says about an exposition — errors and lint warnings (a
    counter without ``_total``, a family twice, …) — or "" when it has nothing to say."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (proc.stdout + proc.stderr).strip()
    return said if proc.returncode == 0 else f"{said} (exit {proc.returncode})".strip()
