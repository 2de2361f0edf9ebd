"""The config schema: every problem at once, each with its dotted key path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bup_watchdog.checks import settings_models
from bup_watchdog.config_example import example_config
from bup_watchdog.config_load import file_problems, load_config
from bup_watchdog.errors import ConfigError
from bup_watchdog.model import is_uuid, is_v4_uuid


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "inventory.toml").write_text("")
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_a_minimal_config_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[inventory]\nfile = "inventory.toml"\n'), settings_models())
    assert cfg.inventory.file == tmp_path / "inventory.toml"
    assert cfg.ssh.connect_timeout == 3.0
    assert cfg.check("save_log_size").warn_bytes == 50_000_000
    assert cfg.state.directory == tmp_path / "state"


def test_every_error_is_reported_at_once_with_its_dotted_path(tmp_path: Path) -> None:
    text = """
[inventory]
file = "inventory.toml"
[ssh]
connect_timeout = -1
conect_timeout = 3
[checks.save_log_size]
warn_bytes = "big"
[checks.no_such_check]
x = 1
"""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), settings_models())
    problems = err.value.problems
    assert any(p.startswith("At 'ssh.connect_timeout':") for p in problems)
    assert "At 'ssh.conect_timeout': unknown key (check the spelling)" in problems
    assert any(p.startswith("At 'checks.save_log_size.warn_bytes':") for p in problems)
    assert any(p.startswith("At 'checks.no_such_check': no such check") for p in problems)
    assert str(tmp_path / "config.toml") in str(err.value)


def test_inf_nan_and_durations_past_a_week_are_errors_not_a_crash_later(tmp_path: Path) -> None:
    """Regression: inf passed ge= and crashed the daemon (int(inf)); 1e300 crashed APScheduler."""
    text = """
[inventory]
file = "inventory.toml"
[schedule]
sweep_interval_seconds = inf
jitter_seconds = 1e300
[alerts]
silence_minutes = nan
[guard]
lease_seconds = 1e12
[checks.save_log_size]
warn_bytes = inf
[repairs.resync_replica]
timeout = inf
"""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), settings_models())
    at = {p.split(":")[0] for p in err.value.problems}
    assert at == {
        "At 'schedule.sweep_interval_seconds'", "At 'schedule.jitter_seconds'",
        "At 'alerts.silence_minutes'", "At 'guard.lease_seconds'",
        "At 'checks.save_log_size.warn_bytes'", "At 'repairs.resync_replica.timeout'",
    }, err.value.problems  # fmt: skip


def test_a_history_shorter_than_the_guard_reads_is_refused(tmp_path: Path) -> None:
    """Retention must not remove the journal rows the guard counts failures from."""
    base = '[inventory]\nfile = "inventory.toml"\n'
    for extra, at in (
        ("[state]\nkeep_history_days = 0.5\n", "At 'state'"),
        ("[state]\nkeep_history_days = 10\n[guard]\nfailure_window_hours = 720\n",
         "At 'state.keep_history_days'"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, base + extra), settings_models())
        assert [p.split(":")[0] for p in err.value.problems] == [at], err.value.problems
    for fine in ("[state]\nkeep_history_days = 0\n", "[state]\nkeep_history_days = 30\n"):
        load_config(write(tmp_path, base + fine), settings_models())


def test_a_nul_character_in_a_value_is_named_not_a_traceback(tmp_path: Path) -> None:
    text = '[inventory]\nfile = "inventory.toml"\n[ssh]\nknown_hosts = "a\\u0000b"\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), settings_models())
    assert err.value.problems == [
        "At 'ssh.known_hosts': holds a NUL character, which no path or name can"
    ]


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(write(tmp_path, "[ssh]\nuser = \n"), settings_models())


def test_a_file_inventory_without_a_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"At 'inventory\.file': required"):
        load_config(write(tmp_path, "[ssh]\nuser = 'root'\n"), settings_models())


def test_the_generated_example_config_is_valid_and_lists_every_check(tmp_path: Path) -> None:
    text = example_config(settings_models())
    data = tomllib.loads(text)
    assert set(data["checks"]) == set(settings_models())
    p = write(tmp_path, text.replace('# file = "inventory.toml"', 'file = "inventory.toml"'))
    cfg = load_config(p, settings_models())
    assert cfg.check("mount_sanity").projects_fstypes == ["zfs"]


def test_the_shipped_example_config_matches_the_schema() -> None:
    shipped = Path(__file__).parents[2] / "examples" / "config.toml"
    assert shipped.read_text() == example_config(settings_models()), (
        "examples/config.toml is out of date: bup-watchdog config example > examples/config.toml"
    )


def test_problems_found_after_the_schema_are_reported_with_the_schemas(tmp_path: Path) -> None:
    text = '[ssh]\nconnect_timeout = 0\n[state]\ndirectory = "/etc/bupwatch"\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), settings_models())
    problems = err.value.problems
    assert any(p.startswith("At 'ssh.connect_timeout':") for p in problems)
    assert any(p.startswith("At 'state.directory': /etc/bupwatch") for p in problems)
    assert "At 'inventory.file': required when inventory.source = 'file'" in problems


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "x"])
def test_an_id_with_anything_after_it_is_not_an_id(suffix: str) -> None:
    pid = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    assert is_v4_uuid(pid) and is_uuid(pid)
    assert not is_v4_uuid(pid + suffix)
    assert not is_uuid(pid + suffix)


def test_file_problems_name_each_file_with_its_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    key.chmod(0o640)
    token = tmp_path / "token"
    token.write_text("0123456789abcdef\n")
    token.chmod(0o600)
    (tmp_path / "known_hosts").mkdir()
    data = {
        "ssh": {"known_hosts": "known_hosts", "key_file": "id_ed25519"},
        "guard": {"api_token_file": "token"},
        "inventory": {"source": "cassandra", "cassandra": {"ca_file": "ca.pem"}},
    }

    assert file_problems(data, tmp_path) == [
        f"At 'ssh.known_hosts': {tmp_path}/known_hosts is not a regular file: every host key "
        "would be refused",
        f"At 'ssh.key_file': {key} is readable by group or others (mode 0640): OpenSSH refuses "
        "such a private key; chmod 600 it",
        f"At 'inventory.cassandra.ca_file': {tmp_path}/ca.pem does not exist",
    ]
