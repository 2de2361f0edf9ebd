"""reachability, from recorded facts."""

from __future__ import annotations

from bup_watchdog.checks.reachability import check
from bup_watchdog.model import GatherFailure, HostFacts, Severity
from support.facts import S1, host_facts, host_records, inventory

SETTINGS = check.Settings()


def codes(facts: dict[str, HostFacts], port: int = 6000) -> set[str]:
    return {f.code for f in check.evaluate(facts, inventory(port=port), SETTINGS)}  # type: ignore[arg-type]


def test_a_healthy_host_yields_no_finding() -> None:
    assert codes({S1: host_facts(S1, host_records())}) == set()


def test_a_host_whose_ssh_failed_is_critical_with_the_transport_message() -> None:
    facts = HostFacts(server_id=S1, gathered_at=0.0)
    facts.failure = GatherFailure.UNREACHABLE
    facts.failure_message = "s1 (127.0.0.1:22): connection refused (is sshd running?)"
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert finding.severity is Severity.CRITICAL
    assert finding.code == "ssh_unreachable"
    assert "connection refused" in finding.message


def test_a_changed_host_key_is_a_security_finding() -> None:
    facts = HostFacts(server_id=S1, gathered_at=0.0)
    facts.failure = GatherFailure.HOST_KEY
    facts.failure_message = "HOST KEY CHANGED"
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert finding.code == "host_key"
    assert finding.details["security"] is True


def test_a_bup_server_that_refuses_tcp_is_critical() -> None:
    assert "bup_server_unreachable" in codes({S1: host_facts(S1, host_records(), tcp_ok=False)})


def test_a_missing_bup_server_process_is_critical() -> None:
    found = codes({S1: host_facts(S1, host_records(listen_port=None), tcp_ok=False)})
    assert found == {"bup_server_unreachable", "bup_server_not_running"}


def test_a_refused_port_while_bup_server_listens_elsewhere_is_one_finding_naming_both_ports() -> (
    None
):
    facts = host_facts(S1, host_records(listen_port=6001), tcp_ok=False)
    [finding] = list(check.evaluate({S1: facts}, inventory(port=6000), SETTINGS))
    assert (finding.code, finding.severity) == ("port_mismatch", Severity.CRITICAL)
    assert "127.0.0.1:6000" in finding.message and "port 6001" in finding.message
    assert finding.details == {"inventory_port": 6000, "listening": [6001]}


def test_a_port_that_answers_while_no_process_is_seen_is_only_informational() -> None:
    facts = host_facts(S1, host_records(listen_port=None), tcp_ok=True)
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert (finding.code, finding.severity) == ("bup_server_not_seen", Severity.OK)
    assert "answers at 127.0.0.1:6000" in finding.message


def test_a_port_that_answers_while_the_process_seen_listens_elsewhere_is_only_informational() -> (
    None
):
    facts = host_facts(S1, host_records(listen_port=6001), tcp_ok=True)
    [finding] = list(check.evaluate({S1: facts}, inventory(port=6000), SETTINGS))
    assert (finding.code, finding.severity) == ("bup_server_not_seen", Severity.OK)
    assert "listens on 6001" in finding.message


def test_without_a_tcp_result_a_process_on_another_port_is_a_port_mismatch() -> None:
    facts = host_facts(S1, host_records(listen_port=6001))
    facts.bup_server_tcp = None
    [finding] = list(check.evaluate({S1: facts}, inventory(port=6000), SETTINGS))
    assert (finding.code, finding.severity) == ("port_mismatch", Severity.WARNING)


def test_a_failure_within_the_hosts_patience_is_a_warning_that_says_so() -> None:
    facts = host_facts(S1, host_records(), tcp_ok=False)
    facts.fail_streak, facts.patience = 1, 3
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert finding.severity is Severity.WARNING
    assert "failed sweep 1 of 3" in finding.message


def test_a_failure_that_exhausts_the_patience_is_critical() -> None:
    facts = host_facts(S1, host_records(), tcp_ok=False)
    facts.fail_streak, facts.patience = 3, 3
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert finding.severity is Severity.CRITICAL


def test_a_changed_host_key_is_critical_whatever_the_patience() -> None:
    facts = HostFacts(server_id=S1, gathered_at=0.0)
    facts.failure, facts.failure_message = GatherFailure.HOST_KEY, "HOST KEY CHANGED"
    facts.fail_streak, facts.patience = 1, 3
    [finding] = list(check.evaluate({S1: facts}, inventory(), SETTINGS))
    assert finding.severity is Severity.CRITICAL
