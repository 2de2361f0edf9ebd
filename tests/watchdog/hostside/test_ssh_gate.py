"""bupwatch-ssh-gate as the watchdog key's ``authorized_keys`` command on real sandbox hosts:
every check and every repair goes through it, anything else is refused and logged."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from bup_watchdog.config import Config
from bup_watchdog.errors import TransportError
from bup_watchdog.gather import RepoCache
from bup_watchdog.hostside.ssh_gate import Gate, judge
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep
from bup_watchdog.transport.ssh import SshTransport, remote_argv
from support.fleet import fleet_config, make_guard

STALE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000001"  # g2's copy one save behind: resync_replica
LOG = "0c3d6f4e-2b1a-4c5d-8e9f-000000000002"  # 3 MB save log on g1: rotate_save_log; chown
GONE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000003"  # g2's copy deleted: resync_replica makes it
ON_G3 = "0c3d6f4e-2b1a-4c5d-8e9f-000000000004"  # mastered on g3 (unmounted); replica on g1
REPACK = "[repairs.clean_repo]\nrepack = true\n"


def gated_spec() -> FleetSpec:
    return FleetSpec(
        hosts=(
            HostSpec("g1", dc=0, ssh_gate=True),
            HostSpec("g2", dc=1, ssh_gate=True),
            HostSpec("g3", dc=1, ssh_gate=True, projects_mounted=False),
        ),
        projects=(
            ProjectSpec(STALE, "g1", ("g2",), stale_on=("g2",)),
            ProjectSpec(LOG, "g1", ("g2",), save_log_bytes=3_000_000),
            ProjectSpec(GONE, "g1", ("g2",)),
            ProjectSpec(ON_G3, "g3", ("g1",)),
        ),
    )


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    """Three hosts whose watchdog key runs only the gate (the hosts' own rsync uses it too)."""
    with SandboxFleet(tmp_path_factory.mktemp("gated-fleet"), gated_spec()) as fleet:
        gone = fleet.repo_path("g2", GONE)
        for p in sorted(gone.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        gone.rmdir()
        yield fleet


def gate_of(fleet: SandboxFleet, name: str) -> Gate:
    """The gate as the sandbox installs it on host ``name`` (its roots, its restart command)."""
    h = fleet.hosts[name]
    return Gate(h.bup_root, h.projects_root, restart=(tuple(h.bup_server_argv(daemon=True)),))


def log_sizes(fleet: SandboxFleet) -> dict[str, int]:
    """How many lines each host's gate log has now (a mark for ``logged_since``)."""
    return {n: len(lines) for n, lines in gate_logs(fleet).items()}


def gate_logs(fleet: SandboxFleet) -> dict[str, list[str]]:
    return {
        n: h.gate_log.read_text().splitlines() if h.gate_log.exists() else []
        for n, h in fleet.hosts.items()
    }


def logged_since(fleet: SandboxFleet, mark: dict[str, int]) -> list[str]:
    """The gate's log lines written on any host since ``mark``."""
    return [line for n, lines in gate_logs(fleet).items() for line in lines[mark[n] :]]


def refusals(lines: list[str]) -> list[str]:
    return [line for line in lines if " refused from " in line]


def test_the_sandbox_installs_the_gate_as_the_keys_forced_command(gated: SandboxFleet) -> None:
    keys = (gated.hosts["g1"].home / ".ssh" / "authorized_keys").read_text()
    assert keys.startswith('restrict,command="')
    assert "bupwatch-ssh-gate --bup-root /bup --projects-root /projects --restart" in keys


def test_a_sweep_with_every_check_deep_checks_and_incremental_walks_passes_the_gate(
    gated: SandboxFleet, tmp_path: Path
) -> None:
    config = fleet_config(gated)
    inventory = load_inventory(inventory_source(config), State(tmp_path / "inv.db"))
    mark = log_sizes(gated)
    state = State(tmp_path / "state.db")
    cache = RepoCache(racy_seconds=0)

    results = [sweep(config, inventory, state=state, deep=True, repo_cache=cache) for _ in "12"]

    for result in results:
        assert all(f.probed for f in result.facts.values()), [
            f.failure_message for f in result.facts.values()
        ]
    assert sum(f.deep_checked_now for f in results[0].facts.values()) == 7  # every repository
    found = {(f.check, f.code, f.server_id) for f in results[1].findings}
    assert ("mount_sanity", "not_mounted", gated.server_id("g3")) in found
    assert any(c == "replication_lag" and s == gated.server_id("g2") for c, _, s in found)
    new = logged_since(gated, mark)
    assert refusals(new) == []
    kinds = [line.split(": ", 1)[1].split(":", 1)[0] for line in new]
    assert kinds.count("probe") == 6 and kinds.count("deep probe") >= 3, new


def plans(fleet: SandboxFleet, extra: str = "") -> list[tuple[str, str, dict[str, str]]]:
    """Every repair's dry-run plan on the fleet's faults: (repair, host, step)."""
    guard = make_guard(fleet, extra)
    sid = fleet.server_id
    requests = [
        RepairRequest("chown_project", sid("g1"), LOG),
        RepairRequest("clean_repo", sid("g1"), LOG),
        RepairRequest("rotate_save_log", sid("g1"), LOG),
        RepairRequest("resync_replica", sid("g2"), STALE),
        RepairRequest("resync_replica", sid("g2"), GONE),
        RepairRequest("restart_bup_server", sid("g1")),
        RepairRequest("fence_host", sid("g3")),
    ]
    names = {s: n for n in fleet.hosts for s in [sid(n)]}
    out = []
    for req in requests:
        decision = guard.submit(
            RepairRequest(req.repair, req.server_id, req.project_id, params={"dry_run": True})
        )
        assert decision.status == "dry_run", (req, decision.message)
        for step in decision.plan:
            out.append((req.repair, names.get(step["server_id"], step["server_id"]), step))
    return out


def test_every_command_of_every_repairs_plan_is_one_the_gate_allows(gated: SandboxFleet) -> None:
    """The allow-list cannot drift from the repairs: each plan's steps, sent as the transport
    sends them (with and without sudo), pass the gate of the host they run on."""
    steps = plans(gated) + plans(gated, REPACK)
    seen = set()
    for repair, host, step in steps:
        if host == "watchdog":  # fence_host's records: nothing runs on a host
            continue
        argv = shlex.split(step["command"])
        for sudo in (False, True):
            sent = shlex.split(shlex.join(remote_argv(argv, 300.0, sudo=sudo)))
            allowed, _wrapper, _sudo = judge(sent, gate_of(gated, host))
            assert allowed.argv == tuple(argv)
            seen.add((repair, allowed.kind))
    kinds = {kind for _, kind in seen}
    assert {"chown_project", "clean_repo", "clean_repo repack", "rotate_save_log"} <= kinds
    assert {"restart_bup_server", "bup init", "resync_replica fast-forward"} <= kinds
    assert {"resync_replica conflict tag", "git merge-base", "mountpoint"} <= kinds
    assert any(k.startswith("mount guard") for k in kinds)
    assert {"resync_replica copy (objects)", "resync_replica copy (conf)"} <= kinds


def test_cat_etc_shadow_sh_c_and_a_probe_with_extra_arguments_are_refused_and_logged(
    gated: SandboxFleet,
) -> None:
    config: Config = fleet_config(gated)
    inventory = load_inventory(inventory_source(config), State(gated.root / "refusals.db"))
    server = inventory.servers[gated.server_id("g1")]
    transport = SshTransport(server, config.ssh)
    mark = log_sizes(gated)
    probe = ["python3", "-S", "-", "--bup-root", "/bup", "--projects-root", "/projects"]
    try:
        shadow = transport.run(["cat", "/etc/shadow"])
        sh = transport.run(["sh", "-c", "id"])
        with pytest.raises(TransportError, match=r"exited with status 126: .*refused: probe"):
            list(transport.stream_lines([*probe, "--known-state", "/etc/shadow"], stdin=b""))
        client = transport.connect()
        _, out, err = client.exec_command("sh -c 'id'")
        raw = (out.channel.recv_exit_status(), out.read(), err.read())
    finally:
        transport.close()

    for result in (shadow, sh):
        assert result.returncode == 126
        assert result.stdout == b""
        assert result.stderr.startswith(b"bupwatch-ssh-gate: refused: ")
    assert raw[:2] == (126, b"") and b"mount guard" in raw[2]
    logged = refusals(logged_since(gated, mark))
    assert len(logged) == 4, logged
    assert "cat /etc/shadow" in logged[0]
    assert "sh -c id" in logged[1] and "--known-state /etc/shadow" in logged[2]
    assert logged[3].endswith("command: sh -c 'id'")


def test_every_repair_runs_through_the_gate_and_succeeds(gated: SandboxFleet) -> None:
    """Runs last: it repairs the fleet's faults (each repair's own tests check what it did)."""
    g1 = gated.hosts["g1"]
    live = g1.projects_dir_outside / LOG / "stray-owner.txt"
    live.write_text("owned by root by mistake\n")
    repo = gated.repo_path("g1", LOG)
    (repo / "objects" / "tmp-xyz").write_bytes(b"an interrupted save\n")
    (repo / "objects" / "pack" / "tmp_pack_abc").write_bytes(b"an interrupted fetch\n")
    g1.stop_bup_server()
    mark = log_sizes(gated)
    guard = make_guard(gated)
    sid = gated.server_id

    outcomes = {}
    for req in (
        RepairRequest("chown_project", sid("g1"), LOG),
        RepairRequest("clean_repo", sid("g1"), LOG),
        RepairRequest("rotate_save_log", sid("g1"), LOG),
        RepairRequest("resync_replica", sid("g2"), STALE),
        RepairRequest("resync_replica", sid("g2"), GONE),
        RepairRequest("restart_bup_server", sid("g1")),
        RepairRequest("fence_host", sid("g3")),
    ):
        decision = guard.submit(req, execute=True)
        outcomes[(req.repair, req.project_id)] = (decision.status, decision.message)

    assert all(status == "succeeded" for status, _ in outcomes.values()), outcomes
    new = logged_since(gated, mark)
    assert refusals(new) == []
    kinds = {line.split(": ", 1)[1].split(":", 1)[0] for line in new}
    assert {"rotate_save_log", "clean_repo busy scan", "resync_replica busy scan"} <= kinds
    assert {"rsync sender (objects)", "mount guard (rsync sender (live))"} <= kinds
    assert {"restart_bup_server", "read port file", "bup init", "bup ls"} <= kinds
