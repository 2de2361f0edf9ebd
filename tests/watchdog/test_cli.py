"""The command line as a scheduler or an operator uses it: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from bup_watchdog.sandbox.fleet import SandboxFleet

CLI = [sys.executable, "-m", "bup_watchdog.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_check_exits_2_on_the_demo_fleet_and_prints_json_findings(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "--config", str(demo_fleet.config_path), "--format", "json")
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "critical"
    assert {f["check"] for f in data["findings"]} >= {"mount_sanity", "reachability"}
    assert data["ssh_sessions"] == len(demo_fleet.hosts)


def test_check_exits_1_when_only_warnings_are_found(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "-c", str(demo_fleet.config_path), "--only", "save_log_size")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "save_log_size" in proc.stdout


def test_check_exits_0_on_a_healthy_host(demo_fleet: SandboxFleet) -> None:
    proc = run(
        "check", "-c", str(demo_fleet.config_path), "--server", "h2", "--only", "mount_sanity"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")


def test_a_missing_config_is_a_one_line_error_and_exit_3(tmp_path: Path) -> None:
    proc = run("check", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 3
    assert "cannot read the file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_check_name_is_refused_with_the_known_names(demo_fleet: SandboxFleet) -> None:
    proc = run("check", "-c", str(demo_fleet.config_path), "--only", "nosuch")
    assert proc.returncode == 3
    assert "no such check: nosuch" in proc.stderr and "mount_sanity" in proc.stderr


def test_config_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[inventory]\nfile = "i.toml"\n[ssh]\nconnect_timeout = 0\nport = 22\n')
    proc = run("config", "check", str(p))
    assert proc.returncode == 2
    assert "At 'ssh.connect_timeout'" in proc.stderr
    assert "At 'ssh.port': unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_accepts_the_demo_fleets_config(demo_fleet: SandboxFleet) -> None:
    proc = run("config", "check", str(demo_fleet.config_path))
    assert proc.returncode == 0, proc.stderr
    assert "OK (4 servers, 6 projects" in proc.stdout


# -------------------------------------------------------------------- start-up, help, completion

SCRIPT = Path(sys.executable).with_name("bup-watchdog")


def test_importing_the_cli_and_check_help_load_no_web_server_ssh_cassandra_or_templates() -> None:
    code = """
import contextlib, io, json, sys
import bup_watchdog.cli as cli
on_import = set(sys.modules)
with contextlib.redirect_stdout(io.StringIO()):
    try:
        cli.main(["check", "--help"], prog_name="bup-watchdog")
    except SystemExit:
        pass
heavy = {"fastapi", "uvicorn", "paramiko", "cassandra", "jinja2", "rich", "pydantic"}
print(json.dumps({
    "import": sorted(m for m in on_import if m.split(".")[0] in heavy),
    "check --help": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stdout) == {"import": [], "check --help": []}


def test_every_command_has_a_help_line_and_its_help_works() -> None:
    from click import Context, Group
    from click.testing import CliRunner

    from bup_watchdog.cli import main

    def walk(group: Group, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        ctx = Context(group)
        found = []
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            assert command.get_short_help_str(), f"{' '.join((*path, name))} has no help line"
            found.append((*path, name))
            if isinstance(command, Group):
                found += walk(command, (*path, name))
        return found

    commands = walk(main, ())
    assert {("check",), ("run",), ("demo",), ("repairs", "approve"), ("config", "check")} <= set(
        commands
    )
    for path in commands:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)


def test_the_demo_is_listed_with_its_own_help_line_before_it_is_loaded() -> None:
    from bup_watchdog.cli import main
    from bup_watchdog.demo import demo

    module, attr, listed = main.lazy["demo"]
    assert (module, attr) == ("bup_watchdog.demo", "demo")
    assert listed == demo.get_short_help_str(limit=1000)
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert "  demo       Build a sandbox fleet with planted faults" in top.stdout


def test_bash_completion_comes_from_the_standard_click_variable() -> None:
    source = subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, "_BUP_WATCHDOG_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert source.returncode == 0, source.stderr
    assert "complete -o nosort -F _bup_watchdog_completion bup-watchdog" in source.stdout

    def complete(words: str) -> list[str]:
        proc = subprocess.run(
            [str(SCRIPT)],
            env={
                **os.environ,
                "_BUP_WATCHDOG_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    assert complete("bup-watchdog rep") == ["plain,repair", "plain,repairs"]
    assert complete("bup-watchdog --log-format ") == ["plain,text", "plain,json"]
    assert complete("bup-watchdog repairs ") == [
        "plain,ack",
        "plain,approve",
        "plain,deny",
        "plain,list",
        "plain,pending",
    ]


def config_with_inventory(fleet: SandboxFleet, workdir: Path, inventory: str) -> Path:
    """The fleet's SSH settings (its known_hosts and key) over another inventory."""
    (workdir / "inventory.toml").write_text(inventory, encoding="utf-8")
    client = fleet.config_path.parent / "client"
    path = workdir / "config.toml"
    path.write_text(
        '[inventory]\nfile = "inventory.toml"\n[state]\ndirectory = "state"\n'
        f'[ssh]\nknown_hosts = "{client / "known_hosts"}"\nkey_file = "{client / "id_ed25519"}"\n',
        encoding="utf-8",
    )
    return path


def test_a_check_that_could_probe_no_host_it_was_asked_about_is_unknown_not_ok(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on: sshd "refuses"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = config_with_inventory(
        demo_fleet,
        tmp_path,
        '[[servers]]\nserver_id = "3f0e2b9c-0000-4000-8000-00000000000a"\nname = "gone"\n'
        f'host = "127.0.0.1"\nport = {port}\nssh_port = {port}\nssh_user = "root"\n',
    )
    for only in ("mount_sanity", "repo_integrity", "placement"):
        proc = run("check", "-c", str(config), "--only", only)

        assert proc.returncode == 3, (only, proc.stdout, proc.stderr)
        first = proc.stdout.splitlines()[0]
        assert first.startswith("UNKNOWN: 0 critical, 0 warning; 0/1 hosts probed")
        assert f"not judged: {only} judged 0 of 1 hosts" in proc.stdout
        assert "connection refused" in proc.stdout


def test_check_on_an_empty_inventory_is_unknown_with_the_reason(
    demo_fleet: SandboxFleet, tmp_path: Path
) -> None:
    config = config_with_inventory(demo_fleet, tmp_path, "servers = []\nprojects = []\n")

    proc = run("check", "-c", str(config), "--format", "json")

    assert proc.returncode == 3, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "unknown"
    assert data["not_judged"] == ["no server to check: the inventory lists none"]


P = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
S_A = "11111111-1111-4111-8111-111111111111"
S_B = "22222222-2222-4222-8222-222222222222"


def test_config_check_reports_every_problem_of_config_files_and_inventory_in_one_run(
    tmp_path: Path,
) -> None:
    token = tmp_path / "api-token"
    token.write_text("short\n")
    token.chmod(0o644)
    (tmp_path / "inventory.toml").write_text(
        "".join(
            f'[[servers]]\nserver_id = "{sid}"\nname = "{name}"\nhost = "127.0.0.1"\nport = 1\n'
            for sid, name in ((S_A, "h1"), (S_A, "h2"), (S_B, "h1"))
        )
        + f'[[projects]]\nproject_id = "{P}\\n"\nmaster = "{S_A}"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(
        '[inventory]\nfile = "inventory.toml"\n'
        '[ssh]\nconnect_timeout = 0\nknown_hosts = "nope/known_hosts"\nkey_file = "nope/key"\n'
        '[guard]\napi_token_file = "api-token"\n'
    )

    proc = run("config", "check", "-c", str(config))

    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "At 'ssh.connect_timeout'" in err
    assert f"At 'ssh.known_hosts': {tmp_path}/nope/known_hosts does not exist" in err
    assert f"At 'ssh.key_file': {tmp_path}/nope/key does not exist" in err
    assert f"At 'guard.api_token_file': {token} is readable by group or others (mode 0644)" in err
    assert "At 'guard.api_token_file': the token (first line of" in err
    assert "has 5 characters; at least 16 are needed" in err
    assert f"At 'servers[1]': server_id {S_A} appears twice" in err
    assert "At 'servers[2].name': 'h1' is also the name of servers[0]" in err
    assert "At 'projects[0].project_id" in err and "is not a version-4 UUID" in err
    assert "Traceback" not in err


def test_config_check_takes_the_config_like_every_command(tmp_path: Path) -> None:
    (tmp_path / "inventory.toml").write_text("servers = []\nprojects = []\n")
    (tmp_path / "known_hosts").write_text("")
    config = tmp_path / "config.toml"
    config.write_text('[inventory]\nfile = "inventory.toml"\n[ssh]\nknown_hosts = "known_hosts"\n')

    for args, env in (
        ([str(config)], {}),
        (["-c", str(config)], {}),
        (["--config", str(config)], {}),
        ([], {"BUP_WATCHDOG_CONFIG": str(config)}),
    ):
        proc = subprocess.run(
            [*CLI, "config", "check", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert proc.returncode == 0, (args, env, proc.stderr)
        assert proc.stdout.startswith(f"{config}: OK (0 servers, 0 projects")
    proc = run("config", "check", str(config), "-c", str(tmp_path / "other.toml"))
    assert proc.returncode == 2 and "two configs named" in proc.stderr


def test_the_printed_example_config_passes_config_check_once_the_inventory_is_filled_in(
    tmp_path: Path,
) -> None:
    example = run("config", "example")
    assert example.returncode == 0, example.stderr
    text = example.stdout
    for section in ("[inventory]", "[inventory.cassandra]", "[ssh]", "[guard]", "[alerts]"):
        assert f"\n{section}\n" in text, section
    placeholder = '# file = "inventory.toml"'
    assert text.count(placeholder) == 1
    (tmp_path / "inventory.toml").write_text("servers = []\nprojects = []\n")
    config = tmp_path / "config.toml"
    config.write_text(text.replace(placeholder, 'file = "inventory.toml"'))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")

    proc = subprocess.run(
        [*CLI, "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
    )

    assert proc.returncode == 0, proc.stderr
    assert "OK (0 servers, 0 projects" in proc.stdout


# -------------------------------------------------------------------- one name per concept


def _options(*path: str) -> dict[str, object]:
    """The visible options of a command, by their long name."""
    import click

    from bup_watchdog.cli import main

    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None, path
        command = found
    return {
        opt: p
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden
        for opt in p.opts
        if opt.startswith("--")
    }


def test_every_command_names_a_concept_the_same_way() -> None:
    import click

    from bup_watchdog import journal
    from bup_watchdog.cli_repairs import STATUSES

    printing = [
        ("check",),
        ("repair",),
        *[("repairs", c) for c in ("list", "pending", "approve", "deny", "ack")],
    ]
    for path in printing:
        fmt = _options(*path)["--format"]
        assert isinstance(fmt, click.Option) and isinstance(fmt.type, click.Choice), path
        assert list(fmt.type.choices) == ["text", "json"], path
    for path in (("check",), ("audit",)):
        options = _options(*path)
        assert "--only" in options and "--check" not in options, path
        assert options["--server"].metavar == "ID|NAME", path  # type: ignore[attr-defined]
    for path in (("repair",), ("repairs", "deny"), ("repairs", "ack")):
        options = _options(*path)
        assert "--why" in options and "--reason" not in options, path
    status = _options("repairs", "list")["--status"]
    assert isinstance(status, click.Option) and isinstance(status.type, click.Choice)
    known = {journal.PENDING, journal.RUNNING, *journal.FINISHED}
    assert set(status.type.choices) == known and len(STATUSES) == len(known)


def empty_fleet_config(tmp_path: Path) -> Path:
    """A valid config over an empty inventory, its state directory not created yet."""
    (tmp_path / "inventory.toml").write_text("servers = []\nprojects = []\n")
    (tmp_path / "known_hosts").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        '[inventory]\nfile = "inventory.toml"\n[state]\ndirectory = "state"\n'
        '[ssh]\nknown_hosts = "known_hosts"\n'
    )
    return config


def test_the_old_names_still_work_and_say_what_replaces_them(tmp_path: Path) -> None:
    config = str(empty_fleet_config(tmp_path))

    table = run("check", "-c", config, "--format", "table")
    audit = run("audit", "-c", config, "--check", "reachability", "-o", "-")
    repair = run("repair", "-c", config, "fence_host", "nosuch", "--reason", "old habit")

    assert table.returncode == 3 and table.stdout.startswith("UNKNOWN"), table.stderr
    assert "--format table is deprecated: use --format text" in table.stderr
    assert audit.returncode == 0 and "--check is deprecated: use --only" in audit.stderr
    assert "--reason is deprecated: use --why" in repair.stderr
    assert "No such option" not in repair.stderr and "Traceback" not in repair.stderr


def test_contradicting_or_irrelevant_flags_are_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    config = str(empty_fleet_config(tmp_path))
    refused = {
        ("repair", "-c", config, "restart_bup_server", "h1", "--dry-run", "--execute"): (
            "--dry-run and --execute contradict each other"
        ),
        ("repair", "-c", config, "restart_bup_server", "h1", "--unfence"): (
            "--unfence goes with fence_host only, not restart_bup_server"
        ),
        ("repair", "-c", config, "restart_bup_server", "h1", "--to", "h2"): (
            "--to and --allow-experimental go with move_project only, not restart_bup_server"
        ),
        ("repair", "-c", config, "move_project", "h1/" + "0" * 8): (
            "move_project needs --to SERVER (the new master)"
        ),
        ("repair", "-c", config, "fence_host", "h1", "--why", "a", "--reason", "b"): (
            "--why and --reason (its old name) both given"
        ),
        ("repairs", "list", "-c", config, "--status", "done"): (
            "Invalid value for '--status': 'done' is not one of 'refused'"
        ),
    }
    for argv, says in refused.items():
        proc = run(*argv)
        # repair's 2 is the guard's refusal: a command line it cannot use is 3, could not run
        code = 3 if argv[0] == "repair" else 2
        assert proc.returncode == code and says in proc.stderr, (argv, proc.stderr)
        assert "Usage: bup-watchdog" in proc.stderr and "Traceback" not in proc.stderr
    missing = run("repair", "-c", config, "fence_host")
    assert missing.returncode == 3 and "Missing argument 'TARGET'" in missing.stderr
    nagios = run("check", "-c", config, "--format", "xml")
    assert nagios.returncode == 3, "a check command line Nagios cannot use is UNKNOWN"
    assert "Invalid value for '--format': 'xml' is not one of 'text', 'json'" in nagios.stderr
    assert not (tmp_path / "state").exists(), "refused before the state was touched"


def test_read_only_commands_create_no_state_database(tmp_path: Path) -> None:
    config = str(empty_fleet_config(tmp_path))

    listed = run("repairs", "list", "-c", config)
    as_json = run("repairs", "list", "-c", config, "--format", "json")
    pending = run("repairs", "pending", "-c", config)
    audit = run("audit", "-c", config, "-o", "-", "--format", "json")
    checked = run("config", "check", config)

    for proc in (listed, as_json, pending, audit, checked):
        assert proc.returncode == 0, (proc.args, proc.stderr)
    assert listed.stdout.startswith(f"no repairs (no state at {tmp_path}/state yet")
    assert json.loads(as_json.stdout) == []
    assert json.loads(audit.stdout)["summary"]["failing_projects"] == 0
    assert not (tmp_path / "state").exists()
    run("check", "-c", config)  # a sweep is recorded: the state starts here
    assert (tmp_path / "state" / "state.db").exists()


def test_no_cassandra_driver_traceback_reaches_the_user_when_no_node_answers(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[inventory]\nsource = "cassandra"\n[inventory.cassandra]\nhosts = ["127.0.0.1"]\n'
        f'port = {port}\n[state]\ndirectory = "state"\n'
    )
    for argv in (("check",), ("inventory", "migrate"), ("audit", "-o", "-")):
        proc = run(*argv, "-c", str(config))
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert "cassandra.cluster" not in proc.stderr, (argv, proc.stderr)
        if argv != ("audit", "-o", "-"):  # the audit goes on without names from the inventory
            assert proc.returncode == 3, (argv, proc.stderr)
            (line,) = proc.stderr.splitlines()  # the watchdog's one line, nothing of the driver
            assert line.startswith(f"bup-watchdog: Cassandra at 127.0.0.1:{port} ("), argv
            assert line.endswith(f"no node answered (127.0.0.1:{port}: connection refused)")
