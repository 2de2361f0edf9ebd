"""Hostile input over HTTP: hand-written cases against the real daemon's webhook and API, a
missing or wrong token, and schemathesis fuzzing the app from its own OpenAPI schema.

Never a 5xx, every 4xx carries a sentence, nothing reaches a shell (a canary file that a
``$(touch …)`` would create never appears), the daemon never dies, its memory stays bounded.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import scratch_spec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from schemathesis.generation import GenerationMode

from bup_watchdog.config import AlertsConfig
from bup_watchdog.guard import Guard
from bup_watchdog.http.app import create_app
from bup_watchdog.journal import Journal
from bup_watchdog.model import Inventory
from bup_watchdog.repair_queue import RepairQueue
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.state import State
from faults.harness import AtStake, Daemon, get, write_config
from faults.recorder import Reliability, short
from support import alerts
from support.fleet_template import CopiedReposFleet, RepoTemplates

# Examples schemathesis generates per operation, valid and invalid each (about 1,000 requests).
EXAMPLES = 70
CANARY = Path(f"/tmp/bupwatch-canary-{secrets.token_hex(6)}")
SHELL = [
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"x; touch {CANARY}",
    f"x && touch {CANARY} #",
    f"x | touch {CANARY}",
    "../../../../etc/shadow",
    "..",
    "line\nbreak",
    "nul\x00byte",
    "\u202eevil-rtl",
    "%2e%2e%2f%2e%2e%2fetc",
    "x" * 10_000,
]


@dataclass
class Served:
    fleet: SandboxFleet
    daemon: Daemon
    url: str
    token: str
    stake: AtStake
    tried: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, repo_templates: RepoTemplates
) -> Iterator[Served]:
    """One fleet and one daemon for the module: hostile input must not need a fresh one."""
    tmp = tmp_path_factory.mktemp("hostile-http")
    with CopiedReposFleet(tmp / "fleet", scratch_spec(), repo_templates) as fleet:
        config, url, token = write_config(fleet, tmp / "watchdog")
        assert token is not None
        with Daemon(config, url) as daemon:
            daemon.wait_up()
            yield Served(fleet, daemon, url, token, AtStake(fleet))
            assert not daemon.crashed, daemon.log()[-3000:]
            assert daemon.stop() == 0, "a clean stop after all the hostile input"


def alert(labels: Any, **changes: Any) -> dict[str, Any]:
    """A firing alert (the shape of ``support.alerts``) with ``labels`` as given and any field
    replaced by ``changes``: either may be deliberately malformed."""
    one = alerts.alert("", fp=secrets.token_hex(8), summary="hostile", generator_url="")
    return {**one, "labels": labels, **changes}


def payload(*alerts_: Any, **changes: Any) -> dict[str, Any]:
    """A bare body (no URLs) of ``alerts_`` with any field replaced by ``changes``."""
    return {**alerts.payload(*alerts_, external_url="", group_key="{}"), **changes}


def check_answer(r: httpx.Response, what: str) -> None:
    """No 5xx; a 4xx says why in a sentence."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and str(body.get("error", "")).strip(), f"{what}: {r.text}"


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes httpx refuses to send (a bad Content-Length); the status and the body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


def test_hand_written_hostile_webhook_bodies_get_a_4xx_with_a_reason_and_never_a_5xx(
    served: Served, reliability: Reliability
) -> None:
    url, auth = served.url, {"Authorization": f"Bearer {served.token}"}
    hook = f"{url}/alertmanager"
    json_type = {**auth, "Content-Type": "application/json"}
    s1 = served.fleet.server_id("s1")
    good = alert({"alertname": "BupWatchBupServerDown", "server_id": s1})
    rss_before = served.daemon.status("VmRSS")

    def one(*labels: Any, **changes: Any) -> dict[str, Any]:
        """A payload of one alert with these labels and changes."""
        return {"json": payload(alert(*labels, **changes))}

    down = {"alertname": "BupWatchBupServerDown", "server_id": s1}
    cases: list[tuple[str, dict[str, Any], set[int]]] = [
        ("9 MB body (over the 8 MB cap)", {"content": b"{" + b" " * 9_000_000}, {413}),
        ("deeply nested arrays", {"content": b"[" * 200_000 + b"]" * 200_000}, {400}),
        ("deeply nested objects", {"content": b'{"a":' * 100_000 + b"1" + b"}" * 100_000}, {400}),
        ("invalid UTF-8 and NUL", {"content": b"\xff\xfe\x00{\x00"}, {400}),
        ("empty body", {"content": b""}, {400}),
        ("JSON null", {"content": b"null"}, {400}),
        ("a JSON list", {"content": b"[1, 2, 3]"}, {400}),
        ("a huge number", {"content": b"1" + b"0" * 100_000}, {400}),
        ("version as a number", {"json": payload(good, version=4)}, {400}),
        ("alerts as an object", {"json": payload(alerts={"a": good})}, {400}),
        ("labels as a list", one(["alertname"]), {400}),
        ("a label value that is an object", one({"x": {"y": 1}}), {400}),
        ("fingerprint with a shell command", one({}, fingerprint=SHELL[0]), {400}),
        ("startsAt that is not a time", one({}, startsAt="yesterday; id"), {400}),
        ("negative truncatedAlerts", {"json": payload(good, truncatedAlerts=-1)}, {400}),
        ("generatorURL of 5000 characters", one({}, generatorURL="h" * 5000), {400}),
        ("1001 alerts in one payload", {"json": payload(*[good] * 1001)}, {400, 413}),
        ("unknown keys everywhere", {"json": payload(alert({}, extra=[1]), extra={"a": 1})}, {200}),
    ]
    for label in SHELL:
        shown = repr(label[:20])
        cases += [
            (f"alertname {shown}", one({"alertname": label}), {200}),
            (f"server_id {shown}", one({**down, "server_id": label}), {200}),
            (
                f"project_id {shown}",
                one({"alertname": "BupWatchWrongOwner", "server_id": s1, "project_id": label}),
                {200},
            ),
            (
                f"label name and summary {shown}",
                one({**down, label[:50]: label}, annotations={"summary": label}),
                {200},
            ),
        ]
    answers: dict[str, int] = {}
    for what, kwargs, expected in cases:
        headers = json_type if "content" in kwargs else auth
        r = httpx.post(hook, headers=headers, timeout=60, **kwargs)
        check_answer(r, what)
        assert r.status_code in expected, f"{what}: {r.status_code} {r.text[:300]}"
        answers[what] = r.status_code

    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 64 MB, no Content-Length
            yield b" " * (1 << 20)

    chunked = httpx.post(hook, headers=json_type, content=chunks(), timeout=60)
    check_answer(chunked, "64 MB chunked body")
    bad_length = raw_request(
        url, b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close"
    )
    time.sleep(1)  # let the queue worker decide what was queued
    rss_after = served.daemon.status("VmRSS")
    peak = served.daemon.status("VmHWM")
    journal = Journal(State(served.daemon.config.parent / "state" / "state.db"))
    entries = journal.entries(limit=10_000)
    journal.state.close()

    assert chunked.status_code == 413, chunked.text
    assert 400 <= bad_length[0] < 500, bad_length
    assert served.daemon.proc.poll() is None
    assert not CANARY.exists(), "a label reached a shell"
    assert all(e.project_id is None or "/" not in e.project_id for e in entries)
    assert (peak - rss_before) / 1024 < 200, f"peak RSS {peak // 1024} MB"
    lost = served.stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    codes = Counter(answers.values())
    n = len(cases) + 2
    reliability.record(
        area="hostile",
        kind="input",
        count=n,
        what="hand-written webhook bodies: 9 MB, 64 MB chunked without Content-Length, deeply "
        "nested JSON, invalid UTF-8/NUL, wrong types, a bad Content-Length, and label values "
        "with `$(…)`, backticks, `;`, `&&`, `|`, `../`, newline, NUL, RTL override, 10,000 "
        "characters in alertname, server_id, project_id, label names and the summary",
        expected="never a 5xx; each 4xx has an error sentence; hostile labels ignored with a "
        "reason, never a path or a shell; memory bounded; the daemon lives",
        observed=f"answers {dict(sorted(codes.items()))} + 413 for 64 MB chunked (the body "
        f"is counted as it arrives) + {bad_length[0]} for Content-Length: abc; canary never "
        f"created; {len(entries)} journal rows, none with a path; RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MB (peak {peak // 1024} MB)",
        loss=lost,
    )


def test_a_missing_or_wrong_api_token_gets_401_or_403_and_the_token_is_never_logged(
    served: Served, reliability: Reliability, tmp_path: Path
) -> None:
    url, token = served.url, served.token
    body = {"repair": "restart_bup_server", "server_id": served.fleet.server_id("s1")}
    tries = {
        "no Authorization header": {},
        "wrong token": {"Authorization": f"Bearer {secrets.token_hex(24)}"},
        "right token, one character short": {"Authorization": f"Bearer {token[:-1]}"},
        "right token with a suffix": {"Authorization": f"Bearer {token}x"},
        "empty bearer": {"Authorization": "Bearer "},
        "Basic scheme": {"Authorization": f"Basic {token}"},
        "token without a scheme": {"Authorization": token},
        "NUL in the header": {"Authorization": f"Bearer {token[:8]}\x00"},
    }
    results: dict[str, int] = {}
    for what, headers in tries.items():
        for path, payload_ in (("/api/repairs", body), ("/alertmanager", payload())):
            try:
                r = httpx.post(f"{url}{path}", json=payload_, headers=headers, timeout=10)
            except httpx.LocalProtocolError:  # the client refuses a NUL in a header itself
                results[f"{what} {path}"] = 0
                continue
            check_answer(r, what)
            results[f"{what} {path}"] = r.status_code
    in_query = httpx.post(f"{url}/api/repairs?token={token}", json=body, timeout=10)
    check_answer(in_query, "token in the query string")
    for path in ("/api/repairs/1/approve", "/api/repairs/1/deny"):
        r = httpx.post(f"{url}{path}", json={}, timeout=10)
        check_answer(r, path)
        results[path] = r.status_code
    # Write endpoints with no token configured at all: 403, whatever is sent.
    state = State(tmp_path / "state.db")
    app = create_app(CollectorRegistry(), state, repairs=RepairQueue(lambda: None), token=None)  # type: ignore[arg-type,return-value]
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        disabled = client.post(
            "/api/repairs", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    state.close()
    read = get(f"{url}/api/findings")
    log = served.daemon.log()

    assert set(results.values()) <= {0, 401}, results
    assert in_query.status_code == 401
    assert disabled.status_code == 403 and "api_token_file" in disabled.json()["error"]
    assert read is not None and read.status_code == 200, "reads need no token"
    assert token not in log, "the token never reaches the log"
    lost = served.stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="hostile",
        kind="input",
        count=len(results) + 2,
        what="missing or wrong API token on every write endpoint: none, random, one character "
        "short, a suffix, empty, Basic, no scheme, NUL, the token in the query string; and "
        "a daemon with no token configured",
        expected="401 with WWW-Authenticate (403 when writes are disabled); compared in "
        "constant time; reads stay open; the token never in the log",
        observed=f"{Counter(results.values())[401]} x 401, query-string token 401, no token "
        f"file 403 ('{short(disabled.json()['error'], 70)}'); NUL refused by the client itself; "
        "token absent from the daemon log",
        loss=lost,
    )


def test_a_malformed_body_without_a_token_gets_401_before_the_body_is_parsed(
    served: Served, reliability: Reliability
) -> None:
    url, token = served.url, served.token
    bodies: dict[str, tuple[bytes, str]] = {
        "not JSON": (b"{not json", "application/json"),
        "empty": (b"", "application/json"),
        "truncated JSON": (b'{"repair": "chown_pro', "application/json"),
        "JSON nested 100,000 deep": (b"[" * 100_000, "application/json"),
        "invalid UTF-8": (b'{"repair": "\xff\xfe"}', "application/json"),
        "form data": (b"repair=chown_project", "application/x-www-form-urlencoded"),
        "JSON of the wrong shape": (b'{"alerts": 5}', "application/json"),
    }
    paths = ("/api/repairs", "/alertmanager", "/api/repairs/1/deny")
    anonymous: dict[str, int] = {}
    with_token: dict[str, int] = {}
    for what, (body, kind) in bodies.items():
        for path in paths:
            r = httpx.post(f"{url}{path}", content=body, headers={"Content-Type": kind}, timeout=10)
            check_answer(r, f"{what} to {path} without a token")
            anonymous[f"{what} {path}"] = r.status_code
            r = httpx.post(
                f"{url}{path}",
                content=body,
                headers={"Content-Type": kind, "Authorization": f"Bearer {token}"},
                timeout=10,
            )
            check_answer(r, f"{what} to {path} with the token")
            with_token[f"{what} {path}"] = r.status_code

    assert set(anonymous.values()) == {401}, anonymous
    assert set(with_token.values()) <= {400, 422}, with_token
    lost = served.stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="hostile",
        kind="input",
        count=len(anonymous) + len(with_token),
        what="malformed bodies (not JSON, empty, truncated, 100,000-deep, invalid UTF-8, form "
        "data, the wrong shape) to every kind of write endpoint, without and with the token",
        expected="without the token: 401 before the body is read or parsed (nothing about the "
        "body's shape is told); with it: 400 naming the problem",
        observed=f"{len(anonymous)} x 401 without the token; with it: "
        f"{dict(Counter(with_token.values()))}",
        loss=lost,
    )


def test_a_report_window_reaching_before_1970_is_a_400_not_a_500(
    served: Served, reliability: Reliability
) -> None:
    url = served.url
    windows = ["999999999999d", "99999999999999999999w", "21000d", "1e3d", "-1d", "0d"]
    answers = {w: get(f"{url}/report?since={w}&format=json") for w in windows}
    fine = get(f"{url}/report?since=3650d&format=json")

    for w, r in answers.items():
        assert r is not None, w
        check_answer(r, f"since={w}")
        assert r.status_code == 400, (w, r.status_code, r.text[:300])
    assert "1970" in answers["999999999999d"].json()["error"]  # type: ignore[union-attr]
    assert fine is not None and fine.status_code == 200, fine and fine.text[:300]
    assert "Traceback" not in served.daemon.log()
    reliability.record(
        area="hostile",
        kind="input",
        count=len(windows),
        what="/report?since= a window reaching before 1970 (999999999999d, 20 digits of "
        "weeks, 21000d) or not a duration (1e3d, -1d, 0d)",
        expected="400 with a sentence; never a 500 or a traceback; a 10-year window still works",
        observed=f"{len(windows)} x 400 ('{short(answers['999999999999d'].json()['error'], 90)}'"  # type: ignore[union-attr]
        "); since=3650d 200",
        loss=None,
    )


def test_schemathesis_fuzzing_of_every_operation_finds_no_5xx_and_no_4xx_without_a_reason(
    reliability: Reliability, tmp_path: Path
) -> None:
    """In process (ASGI), so thousands of cases take seconds; the queue's guard has an empty
    inventory, so every generated request is refused and journaled and no host is touched."""
    token = secrets.token_hex(24)
    state = State(tmp_path / "state.db")
    from bup_watchdog.checks import settings_models
    from bup_watchdog.config_load import parse_config

    config = parse_config({"inventory": {"file": "x"}}, settings_models())
    empty = Inventory(servers={}, projects={}, source="file", loaded_at=time.time())
    queue = RepairQueue(lambda: Guard(config, state, empty))
    queue.start()
    app = create_app(CollectorRegistry(), state, repairs=queue, token=token, alerts=AlertsConfig())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    ready_503: list[int] = []

    def fuzz(strategy: Any, label: str) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: Any) -> None:
            response = case.call()
            calls[label] += 1
            statuses[response.status_code] += 1
            if label == "GET /ready" and response.status_code == 503:
                ready_503.append(response.status_code)  # by design: no sweep in this app
            elif response.status_code >= 500:
                problems.append(f"{label}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                try:
                    error = json.loads(response.text).get("error")
                except (ValueError, AttributeError):
                    error = None
                if not error:
                    problems.append(f"{label}: {response.status_code} without a reason")

        try:
            one()
        except Unsatisfiable:  # no parameter to make invalid (e.g. GET /healthz, negative mode)
            unsatisfiable.append(label)

    unsatisfiable: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            auth = {"Authorization": f"Bearer {token}"}
            fuzz(operation.as_strategy(generation_mode=mode, headers=auth), operation.label)
    queue.stop()
    state.close()

    assert not problems, problems[:10]
    total = sum(calls.values())
    assert len(calls) >= 8 and total >= 600, calls
    reliability.record(
        area="hostile",
        kind="input",
        count=total,
        what=f"schemathesis {schemathesis.__version__}: valid and invalid requests generated "
        f"from the app's OpenAPI schema for all {len(calls)} operations "
        f"({EXAMPLES} + {EXAMPLES} examples each)",
        expected="no 5xx; every 4xx a JSON body with an error sentence",
        observed=f"{total} requests, statuses {dict(sorted(statuses.items()))} (the "
        f"{len(ready_503)} x 503 are GET /ready before any sweep, its contract); 0 problems",
        loss=None,
    )
