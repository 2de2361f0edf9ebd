"""The metrics collector over a real SQLite state: what a sweep recorded is what a scrape shows.

Each test records sweeps with ``watchdog.sweep.record`` (the daemon's own path: lag histograms and
the servers each check could judge are derived from the sweep) and reads the result through an
injected ``CollectorRegistry``.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.journal import INTERRUPTED, PENDING, REFUSED, SUCCEEDED, Journal
from bup_watchdog.metrics import StateCollector, exposition
from bup_watchdog.model import (
    DeepResult,
    Finding,
    GatherFailure,
    HostFacts,
    Inventory,
    Project,
    RepoFacts,
    Server,
    Severity,
    TcpProbe,
)
from bup_watchdog.state import State
from bup_watchdog.sweep import LAG_BUCKETS, CheckRun, SweepResult, record
from support.scrape import promtool_check_metrics

S1 = "11111111-1111-4111-8111-111111111111"
S2 = "22222222-2222-4222-8222-222222222222"
S3 = "33333333-3333-4333-8333-333333333333"
SERVERS = {
    S1: Server(S1, "127.0.0.1", 6000, dc=0, ssh_host="127.0.0.1", name="s1"),
    S2: Server(S2, "127.0.0.2", 6000, dc=0, ssh_host="127.0.0.2", name="s2"),
    S3: Server(S3, "127.0.0.3", 6000, dc=1, ssh_host="127.0.0.3", name="s3"),
}
SHA_A, SHA_B = "a" * 40, "b" * 40
T0 = 1_700_000_000.0
CHECKS = sorted(check_registry())
WORST = "bupwatch_worst_project_findings"
LAG = "bupwatch_replication_lag_replicas"
LAGS = (0.0, 30.0, 600.0, 7200.0, 100_000.0)  # of the replicas on S2, one per project


def pid(n: int) -> str:
    """A deterministic version-4 project id."""
    return str(uuid.UUID(int=n, version=4))


P = [pid(n) for n in range(len(LAGS))]


def repo(project_id: str, *, sha: str = SHA_A, when: float = T0, save_log: int = 2000) -> RepoFacts:
    return RepoFacts.of(
        project_id,
        master_sha=sha,
        reflog_last_time=int(when),
        repo_bytes=100_000,
        save_log_bytes=save_log,
    )


def host(
    sid: str, repos: Iterable[RepoFacts], *, tcp_ok: bool = True, duration: float = 0.5
) -> HostFacts:
    return HostFacts(
        server_id=sid,
        gathered_at=T0 + 1,
        duration_seconds=duration,
        complete=True,
        repos={r.project_id: r for r in repos},
        bup_server_tcp=TcpProbe("127.0.0.1", 6000, tcp_ok, 0.001, None if tcp_ok else "refused"),
        ssh_sessions=1,
    )


def unreachable(sid: str) -> HostFacts:
    return HostFacts(
        server_id=sid,
        gathered_at=T0 + 1,
        duration_seconds=3.0,
        failure=GatherFailure.UNREACHABLE,
        failure_message="connection refused",
    )


def f(
    check: str, sid: str, severity: Severity, project: str | None = None, code: str = "x"
) -> Finding:
    return Finding(check, sid, severity, "msg", project_id=project, code=code)


def small_fleet() -> tuple[Inventory, dict[str, HostFacts]]:
    """s1 masters five projects replicated to s2 with LAGS; s2's bup_server is down; s3 is gone."""
    inventory = Inventory(
        servers=SERVERS, projects={p: Project(p, master=S1, replicas=(S2,)) for p in P}
    )
    s1 = host(S1, [repo(p, save_log=62_000_000 if i == 2 else 2000) for i, p in enumerate(P)])
    s2 = host(
        S2,
        [
            repo(p, sha=SHA_A if lag == 0 else SHA_B, when=T0 - lag)
            for p, lag in zip(P, LAGS, strict=True)
        ],
        tcp_ok=False,
        duration=0.7,
    )
    return inventory, {S1: s1, S2: s2, S3: unreachable(S3)}


SMALL_FINDINGS = [
    f("save_log_size", S1, Severity.WARNING, P[2], "too_large"),
    f("save_log_size", S2, Severity.WARNING, P[2], "too_large"),
    f("repo_integrity", S1, Severity.CRITICAL, P[1], "master_not_in_pack"),
    f("replication_lag", S2, Severity.WARNING, P[3], "behind"),
    f("replication_lag", S2, Severity.WARNING, P[4], "behind"),
    f("replication_lag", S2, Severity.WARNING, P[4], "no_recent_save"),
    f("mount_sanity", S2, Severity.CRITICAL, None, "not_mounted"),
    f("reachability", S2, Severity.CRITICAL, None, "bup_server_unreachable"),
    f("reachability", S3, Severity.CRITICAL, None, "unreachable"),
]


def sweep_result(
    inventory: Inventory,
    facts: dict[str, HostFacts],
    findings: list[Finding],
    *,
    started: float = T0,
    errors: Mapping[str, str] | None = None,
) -> SweepResult:
    errors = errors or {}
    return SweepResult(
        inventory=inventory,
        facts=facts,
        findings=findings,
        checks={
            name: CheckRun(
                name, 0.01, sum(1 for x in findings if x.check == name), errors.get(name)
            )
            for name in CHECKS
        },
        started=started,
        seconds=2.0,
        ssh_sessions=sum(h.ssh_sessions for h in facts.values()),
    )


def scrape(
    state: State, servers: Mapping[str, Server] = SERVERS, *, top_projects: int = 10
) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(
        StateCollector(
            state,
            lambda: servers,
            CHECKS,
            top_projects=top_projects,
            lag_buckets=LAG_BUCKETS,
        )
    )
    return reg


def labels(sid: str) -> dict[str, str]:
    s = SERVERS[sid]
    return {"server_id": sid, "host": s.name, "dc": str(s.dc)}


def samples(reg: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for m in reg.collect() for s in m.samples if s.name == name]


@pytest.fixture()
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


@pytest.fixture()
def recorded(state: State) -> CollectorRegistry:
    """A state holding one sweep of the small fleet, and a registry scraping it."""
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    return scrape(state)


def test_open_findings_are_counted_per_check_server_and_severity_with_explicit_zeros(
    recorded: CollectorRegistry,
) -> None:
    got = {
        (lv["check"], lv["server_id"], lv["severity"]): v
        for lv, v in samples(recorded, "bupwatch_findings")
    }
    expected = {
        (c, s, sev): 0.0 for c in CHECKS for s in SERVERS for sev in ("warning", "critical")
    }
    for x in SMALL_FINDINGS:
        expected[(x.check, x.server_id, x.severity.label)] += 1
    assert got == expected
    assert got[("replication_lag", S2, "warning")] == 3


def test_projects_failing_counts_distinct_projects_per_check_and_server(
    recorded: CollectorRegistry,
) -> None:
    got = {
        (lv["check"], lv["server_id"]): v
        for lv, v in samples(recorded, "bupwatch_projects_failing")
    }
    nonzero = {k: v for k, v in got.items() if v}
    assert nonzero == {
        ("save_log_size", S1): 1,
        ("save_log_size", S2): 1,
        ("repo_integrity", S1): 1,
        ("replication_lag", S2): 2,  # P4 has two findings, it is one failing project
    }
    assert got[("mount_sanity", S2)] == 0  # a host-level finding is no failing project
    assert len(got) == len(CHECKS) * len(SERVERS)


def test_host_gauges_show_what_each_host_answered(recorded: CollectorRegistry) -> None:
    def value(name: str, sid: str) -> float | None:
        return recorded.get_sample_value(f"bupwatch_{name}", labels(sid))

    assert [value("host_probe_success", s) for s in (S1, S2, S3)] == [1.0, 1.0, 0.0]
    assert [value("bup_server_up", s) for s in (S1, S2, S3)] == [1.0, 0.0, 0.0]
    assert [value("host_repositories", s) for s in (S1, S2)] == [5.0, 5.0]
    assert value("host_repository_bytes", S1) == 500_000
    assert value("host_save_log_max_bytes", S1) == 62_000_000
    assert value("host_save_log_max_bytes", S2) == 2000
    assert [value("host_gather_duration_seconds", s) for s in (S1, S2, S3)] == [0.5, 0.7, 3.0]
    assert value("host_last_gather_timestamp_seconds", S3) == T0 + 1
    # a host whose probe failed exports no made-up repository figures
    assert value("host_repositories", S3) is None
    assert value("host_repository_bytes", S3) is None
    assert recorded.get_sample_value("bupwatch_sweep_available") == 1
    assert recorded.get_sample_value("bupwatch_sweep_last_completed_timestamp_seconds") == T0 + 2
    # without incremental sweeps every repository gathered was walked
    assert recorded.get_sample_value("bupwatch_sweep_repositories", {"how": "walked"}) == 10
    assert recorded.get_sample_value("bupwatch_sweep_repositories", {"how": "reused"}) == 0
    assert recorded.get_sample_value("bupwatch_sweeps_total") == 1


def test_check_success_and_timestamps_follow_each_checks_last_run(state: State) -> None:
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS, started=T0))
    record(
        state,
        sweep_result(
            inventory,
            facts,
            SMALL_FINDINGS,
            started=T0 + 300,
            errors={"repo_integrity": "RuntimeError: boom"},
        ),
    )
    reg = scrape(state)

    def value(name: str, check: str) -> float | None:
        return reg.get_sample_value(f"bupwatch_check_{name}", {"check": check})

    assert value("success", "repo_integrity") == 0
    assert value("last_run_timestamp_seconds", "repo_integrity") == T0 + 302
    assert value("last_success_timestamp_seconds", "repo_integrity") == T0 + 2
    assert value("errors_total", "repo_integrity") == 1
    assert value("runs_total", "repo_integrity") == 2
    assert value("duration_seconds", "repo_integrity") == 0.01
    for name in CHECKS:
        if name != "repo_integrity":
            assert value("success", name) == 1, name
            assert value("last_success_timestamp_seconds", name) == T0 + 302, name
            assert value("errors_total", name) == 0, name
    assert reg.get_sample_value("bupwatch_sweeps_total") == 2


def test_the_replication_lag_buckets_are_cumulative_gauges_and_inf_counts_every_replica(
    recorded: CollectorRegistry,
) -> None:
    buckets = {
        float(lv["le_seconds"]): v for lv, v in samples(recorded, LAG) if lv["server_id"] == S2
    }
    expected = {b: float(sum(1 for lag in LAGS if lag <= b)) for b in LAG_BUCKETS}
    expected[math.inf] = len(LAGS)
    assert buckets == expected
    ordered = [buckets[b] for b in sorted(buckets)]
    assert ordered == sorted(ordered)
    # bounds as a selector types them: le_seconds="3600", not "3600.0"
    assert recorded.get_sample_value(LAG, {**labels(S2), "le_seconds": "3600"}) == 3
    assert recorded.get_sample_value(LAG, {**labels(S2), "le_seconds": "+Inf"}) == 5
    [family] = [m for m in recorded.collect() if m.name == LAG]
    assert family.type == "gauge", "a snapshot whose counts fall is no histogram"
    # s1 holds no replica: it has no buckets rather than empty ones
    assert {lv["server_id"] for lv, _ in samples(recorded, LAG)} == {S2}


def test_a_later_sweep_with_less_lag_lowers_the_buckets_of_the_same_series(state: State) -> None:
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    before = scrape(state).get_sample_value(LAG, {**labels(S2), "le_seconds": "3600"})
    caught_up = {
        **facts,
        S2: host(S2, [repo(p) for p in P], tcp_ok=False, duration=0.7),
    }
    record(state, sweep_result(inventory, caught_up, [], started=T0 + 600))
    reg = scrape(state)
    assert before == 3
    assert reg.get_sample_value(LAG, {**labels(S2), "le_seconds": "60"}) == 5
    assert reg.get_sample_value(LAG, {**labels(S2), "le_seconds": "+Inf"}) == 5


def test_server_info_names_every_server_with_its_dc_and_address_for_joins(
    recorded: CollectorRegistry,
) -> None:
    info = {lv["server_id"]: lv for lv, v in samples(recorded, "bupwatch_server_info") if v == 1}
    assert info == {
        sid: {"server_id": sid, "name": s.name, "dc": str(s.dc), "host": s.host}
        for sid, s in SERVERS.items()
    }


def test_a_server_known_only_from_its_open_findings_still_has_a_server_info(
    state: State,
) -> None:
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    reg = scrape(state, {S1: SERVERS[S1]})  # S2 and S3 left the inventory, findings still open
    info = {lv["server_id"]: lv for lv, _ in samples(reg, "bupwatch_server_info")}
    assert set(info) == {S1, S2, S3}
    assert info[S2] == {"server_id": S2, "name": S2, "dc": "", "host": ""}


def test_host_level_findings_carry_their_code_so_a_changed_host_key_is_told_apart(
    state: State,
) -> None:
    inventory, facts = small_fleet()
    key = f("reachability", S1, Severity.CRITICAL, None, "host_key")
    record(state, sweep_result(inventory, facts, [*SMALL_FINDINGS, key]))
    got = {
        (lv["check"], lv["server_id"], lv["code"], lv["severity"]): v
        for lv, v in samples(scrape(state), "bupwatch_host_findings")
    }
    assert got == {
        ("reachability", S1, "host_key", "critical"): 1,
        ("reachability", S2, "bup_server_unreachable", "critical"): 1,
        ("reachability", S3, "unreachable", "critical"): 1,
        ("mount_sanity", S2, "not_mounted", "critical"): 1,
    }, "only findings about a whole host, never one per project"


def journal_row(state: State, repair: str, status: str, refusal: str | None = None) -> int:
    return Journal(state).write(
        repair=repair,
        target=f"{repair}:{S1}",
        server_id=S1,
        project_id=None,
        requested_by="test",
        reason="",
        fingerprint=None,
        mode="auto",
        status=status,
        refusal=refusal,
    )


def test_repair_outcomes_are_counters_and_undecided_entries_a_gauge(state: State) -> None:
    journal_row(state, "restart_bup_server", SUCCEEDED)
    journal_row(state, "restart_bup_server", REFUSED, "rate_limited: 1 per hour")
    journal_row(state, "restart_bup_server", REFUSED, "circuit_breaker: 3 of 4 down")
    waiting = journal_row(state, "resync_replica", PENDING)
    journal_row(state, "clean_repo", INTERRUPTED)
    reg = scrape(state)
    types = {m.name: m.type for m in reg.collect()}
    assert types["bupwatch_repairs"] == "counter"
    assert types["bupwatch_repairs_refused"] == "counter"
    assert types["bupwatch_repairs_open"] == "gauge"

    def total(repair: str, outcome: str) -> float | None:
        return reg.get_sample_value(
            "bupwatch_repairs_total", {"repair": repair, "outcome": outcome}
        )

    assert total("restart_bup_server", SUCCEEDED) == 1
    assert total("restart_bup_server", REFUSED) == 2
    assert total("clean_repo", INTERRUPTED) == 1
    assert total("resync_replica", PENDING) is None, "a pending request has no outcome yet"
    refused = {lv["reason"]: v for lv, v in samples(reg, "bupwatch_repairs_refused_total")}
    assert refused == {"rate_limited": 1, "circuit_breaker": 1}
    open_ = {(lv["repair"], lv["status"]): v for lv, v in samples(reg, "bupwatch_repairs_open")}
    assert open_ == {("resync_replica", PENDING): 1, ("clean_repo", INTERRUPTED): 1}

    # approving moves the row from the open gauge to the outcome counter: no count falls
    Journal(state).update(waiting, status=SUCCEEDED)
    after = scrape(state)
    assert (
        after.get_sample_value(
            "bupwatch_repairs_total", {"repair": "resync_replica", "outcome": SUCCEEDED}
        )
        == 1
    )
    assert (
        after.get_sample_value(
            "bupwatch_repairs_open", {"repair": "resync_replica", "status": PENDING}
        )
        is None
    )


def test_an_empty_state_exports_no_sweep_and_is_still_up(state: State) -> None:
    reg = scrape(state)
    assert reg.get_sample_value("bupwatch_state_up") == 1
    assert reg.get_sample_value("bupwatch_sweep_available") == 0
    assert reg.get_sample_value("bupwatch_sweeps_total") is None
    assert samples(reg, "bupwatch_host_probe_success") == []
    assert reg.get_sample_value("bupwatch_inventory_stale") == 0


def close(state: State, path: Path) -> None:
    state.close()


def drop_hosts_table(state: State, path: Path) -> None:
    other = sqlite3.connect(path)
    other.execute("DROP TABLE hosts")
    other.commit()
    other.close()


@pytest.mark.parametrize("breakage", [close, drop_hosts_table], ids=["closed", "table_gone"])
def test_a_broken_state_exports_state_up_0_instead_of_raising(
    tmp_path: Path, breakage: Callable[[State, Path], None]
) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    reg = scrape(state)
    assert reg.get_sample_value("bupwatch_state_up") == 1
    breakage(state, path)

    body = generate_latest(reg).decode()
    assert "bupwatch_state_up 0.0" in body
    families = {m.name for m in reg.collect()}
    assert families == {"bupwatch_build_info", "bupwatch_state_up"}, "no half-rendered state"


def test_only_the_top_n_worst_projects_are_exported_most_critical_first(state: State) -> None:
    a, b, c, d = (pid(100 + n) for n in range(4))
    findings = [
        f("repo_integrity", S1, Severity.CRITICAL, a, "bad_idx"),
        f("repo_integrity", S2, Severity.CRITICAL, a, "bad_idx"),
        f("repo_integrity", S1, Severity.CRITICAL, b, "bad_idx"),
        *(f(check, S1, Severity.WARNING, b, "w") for check in CHECKS[:3]),
        *(f(check, S1, Severity.WARNING, c, "w") for check in CHECKS[:4]),
        f("save_log_size", S1, Severity.WARNING, d, "too_large"),
    ]
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, findings))
    got = {
        (lv["project_id"], lv["severity"]): v
        for lv, v in samples(scrape(state, top_projects=2), WORST)
    }
    assert got == {(a, "critical"): 2, (a, "warning"): 0, (b, "critical"): 1, (b, "warning"): 3}
    assert samples(scrape(state, top_projects=0), WORST) == []


# ------------------------------------------------------------------ bounded cardinality

FLEET = [str(uuid.UUID(int=0xF1EE7 << 64 | n, version=4)) for n in range(10)]


def record_fleet(state: State, projects: int) -> int:
    """One sweep of 10 servers holding ``projects`` projects (master + one replica each), with
    findings on 10 % of them; returns the number of findings recorded."""
    servers = {
        sid: Server(sid, f"10.0.0.{n}", 6000, dc=n % 2, ssh_host=f"10.0.0.{n}", name=f"b{n}")
        for n, sid in enumerate(FLEET)
    }
    inv_projects = {}
    repos: dict[str, list[RepoFacts]] = {sid: [] for sid in FLEET}
    findings = [f("mount_sanity", FLEET[3], Severity.CRITICAL, None, "not_mounted")]
    for n in range(projects):
        p = pid(n)
        master, replica = FLEET[n % 10], FLEET[(n + 1) % 10]
        inv_projects[p] = Project(p, master=master, replicas=(replica,))
        repos[master].append(repo(p))
        lag = (n % 50) * 1000.0
        repos[replica].append(repo(p, sha=SHA_B if lag else SHA_A, when=T0 - lag))
        if n % 10 == 0:
            findings.append(f("save_log_size", master, Severity.WARNING, p, "too_large"))
        if n % 30 == 0:
            findings.append(f("repo_integrity", master, Severity.CRITICAL, p, "bad_idx"))
        if n % 20 == 0:
            findings.append(f("replication_lag", replica, Severity.WARNING, p, "behind"))
    inventory = Inventory(servers=servers, projects=inv_projects)
    facts = {sid: host(sid, repos[sid]) for sid in FLEET}
    record(state, sweep_result(inventory, facts, findings))
    return len(findings)


def series(reg: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    out = set()
    for m in reg.collect():
        for s in m.samples:
            out.add((s.name, tuple(sorted(s.labels.items()))))
    return out


def test_the_number_of_series_does_not_grow_with_the_number_of_projects(tmp_path: Path) -> None:
    found: dict[int, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for projects in (100, 10_000):
        state = State(tmp_path / f"{projects}.db")
        n_findings = record_fleet(state, projects)
        servers = {sid: Server(sid, "x", 1, dc=n % 2, name=f"b{n}") for n, sid in enumerate(FLEET)}
        reg = scrape(state, servers, top_projects=10)
        # the findings really are there: the bounded series carry them as counts
        assert sum(v for _, v in samples(reg, "bupwatch_findings")) == n_findings
        found[projects] = series(reg)
        state.close()

    small, big = found[100], found[10_000]
    for got in (small, big):
        with_project = {name for name, lv in got if "project_id" in dict(lv)}
        assert with_project <= {WORST}, "project_id only on the bounded top-N family"
        assert sum(1 for name, _ in got if name == WORST) <= 2 * 10
    assert {s for s in small if s[0] != WORST} == {s for s in big if s[0] != WORST}
    assert len(big) == len(small)  # 10 % of 100 projects already fill the top 10


# ------------------------------------------------------------------ promtool check metrics


def test_promtool_finds_nothing_to_say_about_a_scrape_with_findings_and_repairs(
    state: State,
) -> None:
    inventory, facts = small_fleet()
    key = f("reachability", S1, Severity.CRITICAL, None, "host_key")
    record(state, sweep_result(inventory, facts, [*SMALL_FINDINGS, key]))
    journal_row(state, "restart_bup_server", SUCCEEDED)
    journal_row(state, "restart_bup_server", REFUSED, "rate_limited: 1 per hour")
    journal_row(state, "clean_repo", INTERRUPTED)
    Journal(state).count_alert_cooldown({"restart_bup_server": 2})
    state.set_meta(incremental_walked=4, incremental_reused=6)
    assert promtool_check_metrics(generate_latest(scrape(state)).decode()) == ""


def test_promtool_check_metrics_does_catch_a_family_emitted_twice_and_a_counter_without_total(
    recorded: CollectorRegistry,
) -> None:
    body = generate_latest(recorded).decode()
    twice = body + (
        "# HELP bupwatch_sweep_repositories Again.\n"
        "# TYPE bupwatch_sweep_repositories gauge\n"
        "bupwatch_sweep_repositories 10\n"
    )
    assert "second HELP line" in promtool_check_metrics(twice)
    counter = body + "# HELP bupwatch_x A count.\n# TYPE bupwatch_x counter\nbupwatch_x 1\n"
    assert '"_total" suffix' in promtool_check_metrics(counter)


# ------------------------------------------------------------------ what /metrics serves


def _without_age(body: bytes) -> bytes:
    """A scrape without the inventory's age, the one sample that moves with the clock alone."""
    return b"".join(
        line
        for line in body.splitlines(keepends=True)
        if not line.startswith(b"bupwatch_inventory_age")
    )


def _family(reg: CollectorRegistry, name: str) -> Metric:
    return next(m for m in reg.collect() if m.name == name)


def test_metrics_serves_generate_latest_s_text_and_reads_the_state_again_only_after_a_write(
    recorded: CollectorRegistry, state: State
) -> None:
    state.set_meta(inventory_loaded_at=T0)
    first = exposition(recorded)
    assert _without_age(first) == _without_age(generate_latest(recorded))
    assert b"bupwatch_inventory_age_seconds " in first
    kept = _family(recorded, "bupwatch_findings")
    assert _family(recorded, "bupwatch_findings") is kept
    assert _without_age(exposition(recorded)) == _without_age(first)
    assert promtool_check_metrics(first.decode()) == ""
    journal_row(state, "restart_bup_server", SUCCEEDED)  # a write: the families are built again
    again = exposition(recorded)
    assert b'bupwatch_repairs_total{outcome="succeeded",repair="restart_bup_server"} 1.0' in again
    assert _family(recorded, "bupwatch_findings") is not kept
    assert _without_age(again) == _without_age(generate_latest(recorded))


def test_a_write_by_another_process_is_seen_at_the_next_scrape(
    recorded: CollectorRegistry, state: State
) -> None:
    exposition(recorded)
    other = State(state.path)  # its own connection, as the CLI's `repairs approve` has
    journal_row(other, "clean_repo", PENDING)
    other.close()
    assert b'bupwatch_repairs_open{repair="clean_repo",status="pending"} 1.0' in exposition(
        recorded
    )


def test_deep_coverage_falls_when_a_check_leaves_the_window_with_no_write(state: State) -> None:
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    pid = next(iter(facts[S1].repos))
    state.record_deep(S1, [DeepResult(pid, time.time(), True, SHA_A)])
    reg = CollectorRegistry()
    reg.register(StateCollector(state, lambda: SERVERS, CHECKS, deep_window_seconds=1.0))
    coverage = "bupwatch_deep_check_coverage_ratio"
    assert [v for lv, v in samples(reg, coverage) if lv["server_id"] == S1] == [
        1 / len(facts[S1].repos)
    ]
    time.sleep(1.1)
    assert [v for lv, v in samples(reg, coverage) if lv["server_id"] == S1] == [0.0]


def test_deep_coverage_is_counted_again_after_deep_checks_written_by_another_process(
    state: State,
) -> None:
    inventory, facts = small_fleet()
    record(state, sweep_result(inventory, facts, SMALL_FINDINGS))
    first, second = sorted(facts[S1].repos)[:2]
    state.record_deep(S1, [DeepResult(first, time.time(), True, SHA_A)])
    reg = CollectorRegistry()
    reg.register(StateCollector(state, lambda: SERVERS, CHECKS))
    coverage = "bupwatch_deep_check_coverage_ratio"
    repos = len(facts[S1].repos)
    assert [v for lv, v in samples(reg, coverage) if lv["server_id"] == S1] == [1 / repos]

    state.set_meta(unrelated=1)  # a write with no deep check: the counts still hold
    assert [v for lv, v in samples(reg, coverage) if lv["server_id"] == S1] == [1 / repos]
    other = State(state.path)  # its own connection, as a one-shot `check --deep` has
    other.record_deep(S1, [DeepResult(second, time.time(), True, SHA_A)])
    other.close()
    assert [v for lv, v in samples(reg, coverage) if lv["server_id"] == S1] == [2 / repos]


def test_dropping_a_servers_deep_checks_moves_the_deep_generation(state: State) -> None:
    before = state.deep_generation()
    state.record_deep(S1, [DeepResult(str(uuid.uuid4()), time.time(), True, SHA_A)])
    written = state.deep_generation()
    state.drop_servers([S1], tables=("hosts",))  # no deep-check row dropped
    assert state.deep_generation() == written > before
    state.drop_servers([S1], tables=("hosts", "deep_checks"))
    assert state.deep_generation() > written
    assert state.deep_coverage(86400) == {}
