"""placement, from recorded facts and the inventory."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from bup_watchdog.checks.placement import check
from bup_watchdog.model import Finding, Inventory, Project, Server, Severity
from support.facts import P1, P2, S1, S2, host_facts, host_records, inventory, project, repo

SETTINGS = check.Settings()
S3 = "33333333-3333-4333-8333-333333333333"
S4 = "44444444-4444-4444-8444-444444444444"


def fleet(*projects: Project, **server_flags: Any) -> Inventory:
    """S1, S2 (from the support inventory) plus S3 (dc 0) and S4 (dc 1); flags apply to S1."""
    inv = inventory(*projects)
    servers = dict(inv.servers)
    servers[S1] = dataclasses.replace(servers[S1], **server_flags)
    servers[S3] = Server(S3, "127.0.0.3", 6000, dc=0, name="s3")
    servers[S4] = Server(S4, "127.0.0.4", 6000, dc=1, name="s4")
    return dataclasses.replace(inv, servers=servers)


def evaluate(
    p: Project,
    *,
    replicas_json: list[str] | None = None,
    settings: Any = SETTINGS,
    **server_flags: Any,
) -> list[Finding]:
    master_repo = repo(p.project_id, replicas=replicas_json or list(p.locations))
    facts = {sid: host_facts(sid, host_records()) for sid in (S1, S2, S3, S4)}
    facts[p.master] = host_facts(p.master, host_records(master_repo))
    return list(check.evaluate(facts, fleet(p, **server_flags), settings))


def codes(p: Project, **kw: Any) -> list[tuple[str, Severity, str]]:
    return [(f.code, f.severity, f.server_id) for f in evaluate(p, **kw)]


def test_a_master_and_one_replica_in_service_yield_no_finding() -> None:
    assert evaluate(project(P1)) == []


def test_a_project_mastered_on_an_experimental_server_is_a_warning_on_that_server() -> None:
    assert codes(project(P1), experimental=True) == [
        ("master_on_experimental", Severity.WARNING, S1)
    ]


def test_a_project_mastered_on_a_disabled_server_is_critical() -> None:
    assert codes(project(P1), disabled=True, experimental=True) == [
        ("master_on_disabled", Severity.CRITICAL, S1)
    ]


def test_a_replica_on_an_experimental_server_is_no_finding() -> None:
    assert codes(project(P2, master=S2, replicas=(S1,)), experimental=True) == []


def test_a_project_without_replicas_is_under_replicated() -> None:
    [f] = evaluate(project(P1, replicas=()))
    assert (f.code, f.severity, f.value) == ("under_replicated", Severity.CRITICAL, 1.0)


def test_a_replica_on_the_master_itself_is_no_second_copy() -> None:
    assert [f.code for f in evaluate(project(P1, replicas=(S1,)))] == ["under_replicated"]


def test_three_copies_are_fine_and_four_are_over_replicated() -> None:
    assert evaluate(project(P1, replicas=(S2, S3))) == []
    [f] = evaluate(project(P1, replicas=(S2, S3, S4)))
    assert (f.code, f.severity, f.value) == ("over_replicated", Severity.WARNING, 4.0)


def test_replicas_all_in_the_masters_dc_are_reported_only_when_required() -> None:
    same_dc = project(P1, replicas=(S3,))  # S1 and S3 are both in dc 0
    assert evaluate(same_dc) == []
    strict = check.Settings(require_other_dc=True)
    assert [f.code for f in evaluate(same_dc, settings=strict)] == ["replicas_same_dc"]
    assert evaluate(project(P1, replicas=(S3, S2)), settings=strict) == []


def test_replicas_json_naming_other_servers_than_the_inventory_is_a_warning() -> None:
    [f] = evaluate(project(P1), replicas_json=[S1, S3])
    assert (f.code, f.severity, f.server_id) == ("replicas_json_disagrees", Severity.WARNING, S1)
    assert S2 in f.message and S3 in f.message


def test_an_empty_replicas_json_disagrees_with_the_inventory() -> None:
    p = project(P1)
    master_repo = repo(P1, replicas=[])
    facts = {S1: host_facts(S1, host_records(master_repo)), S2: host_facts(S2, host_records())}
    found = check.evaluate(facts, fleet(p), SETTINGS)
    assert [f.code for f in found] == ["replicas_json_disagrees"]


def test_replicas_json_is_compared_as_a_set_ignoring_case_and_order() -> None:
    assert evaluate(project(P1), replicas_json=[S2.upper(), S1, S2]) == []


def test_a_deleted_project_is_skipped() -> None:
    p = dataclasses.replace(project(P1, replicas=()), deleted=True)
    assert evaluate(p, experimental=True) == []


def test_only_projects_mastered_on_a_server_of_this_sweep_are_judged() -> None:
    facts = {S2: host_facts(S2, host_records())}
    assert list(check.evaluate(facts, fleet(project(P1, replicas=())), SETTINGS)) == []


def test_max_copies_below_the_replication_factor_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="max_copies must be at least replication_factor"):
        check.Settings(replication_factor=3, max_copies=2)
