"""The request type belongs with the guard: the faces (CLI, HTTP API, Alertmanager's webhook, the
daemon) take ``RepairRequest`` from ``bup_watchdog.guard``, never from ``repairs/``, and the
repairs read the very same type."""

from __future__ import annotations

import ast
from pathlib import Path

import bup_watchdog
from bup_watchdog import guard
from bup_watchdog.repair_request import RepairRequest
from bup_watchdog.repairs import base

FACES = [
    "cli.py",
    "cli_repairs.py",
    "daemon.py",
    "evacuate.py",
    "rebuild.py",
    "repair_queue.py",
    "http/app.py",
    "http/alertmanager.py",
]


def _request_imports(path: Path) -> list[str]:
    """The modules ``path`` imports RepairRequest from."""
    return [
        node.module or ""
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and any(a.name == "RepairRequest" for a in node.names)
    ]


def test_the_faces_take_the_request_type_from_the_guard() -> None:
    root = Path(bup_watchdog.__file__).parent
    found = {face: _request_imports(root / face) for face in FACES}
    assert {m for ms in found.values() for m in ms} == {"bup_watchdog.guard"}, found
    assert sum(map(len, found.values())) >= 7  # every face but cli.py asks the guard for repairs


def test_the_guard_and_the_repairs_name_one_type() -> None:
    assert guard.RepairRequest is base.RepairRequest is RepairRequest
    req = RepairRequest("resync_replica", "s1", "p1", requested_by="alert")
    assert req.target == "s1/p1" and RepairRequest("fence_host", "s1").target == "s1"
