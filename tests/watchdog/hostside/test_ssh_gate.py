"""bupwatch-ssh-gate as the watchdog key's ``authorized_keys`` command on real sandbox hosts:
every check and every repair goes through it, anything else is refused and logged."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bup_watchdog import deploy
from bup_watchdog.checks import settings_models
from bup_watchdog.config import Config
from bup_watchdog.config_load import load_config
from bup_watchdog.errors import TransportError
from bup_watchdog.gather import RepoCache, gather
from bup_watchdog.guard import Guard
from bup_watchdog.hostside import ssh_gate
from bup_watchdog.hostside.ssh_gate import Gate, judge
from bup_watchdog.model import HostFacts
from bup_watchdog.repairs import prune_repo
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.runner import inventory_source, load_inventory, open_state
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.repos import copy_repo
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from bup_watchdog.state import State
from bup_watchdog.sweep import sweep
from bup_watchdog.transport.ssh import SshTransport, remote_argv
from support.fleet_template import CopiedReposFleet, RepoTemplates

STALE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000001"  # g2's copy one save behind: resync_replica
LOG = "0c3d6f4e-2b1a-4c5d-8e9f-000000000002"  # 3 MB save log on g1: rotate_save_log; chown
GONE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000003"  # g2's copy deleted: resync_replica makes it
ON_G3 = "0c3d6f4e-2b1a-4c5d-8e9f-000000000004"  # mastered on g3 (unmounted); replica on g1
PRUNE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000005"  # 4 saves 6 h apart over a 1 MB quota: prune_repo
MOVE = "0c3d6f4e-2b1a-4c5d-8e9f-000000000006"  # only on g1: move_project to g2 (placement grows)
# bup_quota at 0.001 x 1 MB finds PRUNE over quota; the policy keeps the last hour's saves and the
# newest of each day, so of 4 saves 6 h apart at least one goes.
PRUNE_POLICY = '\n[repairs.prune_repo]\nkeep_all_for = "1h"\n'
PRUNE_CONF = "[checks.bup_quota]\nfactor = 0.001\ncritical_factor = 0.001\n" + PRUNE_POLICY
REPACK = "[repairs.clean_repo]\nrepack = true\n"
# Every repo_garbage code clean_repo answers, each with its own step (params["codes"]).
CLEAN_CODES = ("tmp_objects", "midx", "bupindex", "too_many_packs")


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
            ProjectSpec(PRUNE, "g1", (), saves=4, disk_mb=1),
            ProjectSpec(MOVE, "g1", ()),
        ),
    )


BUPWATCH_UID = 4711  # only in the hosts' own /etc/passwd, never on this machine


@dataclass
class Gated:
    """A fleet whose watchdog key runs only the gate, and how the watchdog logs in to it."""

    fleet: SandboxFleet
    user: str
    logs: dict[str, Path]  # each host's gate log, seen from outside
    config_path: Path

    def config(self, extra: str = "") -> Config:
        path = self.config_path
        if extra:
            path = path.with_name(f"config-{self.user}-extra.toml")
            path.write_text(self.config_path.read_text() + "\n" + extra)
        return load_config(path, settings_models())

    def guard(self, extra: str = "") -> Guard:
        config = self.config(extra)
        state = open_state(config)
        return Guard(config, state, load_inventory(inventory_source(config), state))


def _sudoers_words(argv: list[str]) -> str:
    """argv as a sudoers command line: sudo matches the words joined by spaces."""
    return " ".join(re.sub(r"([,:=\\])", r"\\\1", a) for a in argv)


def as_bupwatch(fleet: SandboxFleet) -> dict[str, Path]:
    """The README's recipe, in each host's own mount namespace: a bupwatch user, the gate at
    /usr/local/sbin/bupwatch-ssh-gate as the key's command, the shipped sudoers rule for it."""
    pub = fleet.client_key.with_suffix(".pub").read_text().strip()
    shipped = (Path(deploy.__file__).parent / "sudoers.bupwatch").read_text().splitlines()
    [defaults] = [line for line in shipped if line.startswith("Defaults:bupwatch")]
    logs = {}
    for name, h in fleet.hosts.items():
        etc, sbin = h.dir / "etc-bupwatch", h.dir / "local-sbin"
        etc.mkdir()
        sbin.mkdir()
        gate = sbin / "bupwatch-ssh-gate"
        gate.write_bytes(Path(ssh_gate.__file__).read_bytes())
        gate.chmod(0o755)
        log = sbin / "ssh-gate.log"
        log.touch()
        os.chown(log, BUPWATCH_UID, BUPWATCH_UID)
        command = ["/usr/local/sbin/bupwatch-ssh-gate", "--bup-root", h.bup_root]
        command += ["--projects-root", h.projects_root]
        command += ["--restart", shlex.join(h.bup_server_argv(daemon=True))]
        command += ["--log", "/usr/local/sbin/ssh-gate.log", "--archive-root", "/bup/archive"]
        u = BUPWATCH_UID
        files = {
            "passwd": f"bupwatch:x:{u}:{u}:bup-watchdog:/:/bin/sh\n",
            "group": f"bupwatch:x:{u}:\n",
            "shadow": "bupwatch:*:20000:0:99999:7:::\n",
        }
        for f, line in files.items():
            (etc / f).write_text(Path("/etc", f).read_text() + line)
        (etc / "sudoers").write_text(
            "root ALL=(ALL:ALL) ALL\n"
            + defaults
            + f"\nbupwatch ALL=(root) NOPASSWD: {_sudoers_words(command)} --as-root *\n"
        )
        (etc / "sudoers").chmod(0o440)
        for src, dst in [
            *((etc / f, f"/etc/{f}") for f in (*files, "sudoers")),
            (sbin, "/usr/local/sbin"),
        ]:
            h.run(["mount", "--bind", str(src), dst], check=True)
        keys = h.home / ".ssh" / "authorized_keys"
        keys.write_text(f'restrict,command="{shlex.join(command)}" {pub}\n')
        logs[name] = log
    return logs


@pytest.fixture(scope="module", params=["root", "bupwatch"])
def gated(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    repo_templates: RepoTemplates,
) -> Iterator[Gated]:
    """Three hosts whose watchdog key runs only the gate (the hosts' own rsync uses it too), the
    watchdog logging in as root, or as bupwatch with the repairs through sudo."""
    user = request.param
    root = tmp_path_factory.mktemp(f"gated-{user}")
    with CopiedReposFleet(root, gated_spec(), repo_templates) as fleet:  # built once, copied
        gone = fleet.repo_path("g2", GONE)
        for p in sorted(gone.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        gone.rmdir()
        if user == "root":
            yield Gated(
                fleet, user, {n: h.gate_log for n, h in fleet.hosts.items()}, fleet.config_path
            )
            return
        logs = as_bupwatch(fleet)
        inventory = fleet.inventory_path.read_text().replace(
            'ssh_user = "root"', 'ssh_user = "bupwatch"'
        )
        assert 'ssh_user = "bupwatch"' in inventory
        fleet.inventory_path.with_name("inventory-bupwatch.toml").write_text(inventory)
        config = fleet.config_path.read_text().replace(
            'file = "inventory.toml"', 'file = "inventory-bupwatch.toml"'
        )
        path = fleet.config_path.with_name("config-bupwatch.toml")
        path.write_text(config)
        yield Gated(fleet, user, logs, path)


def gate_of(fleet: SandboxFleet, name: str) -> Gate:
    """The gate as the sandbox installs it on host ``name`` (its roots, its restart command)."""
    h = fleet.hosts[name]
    return Gate(h.bup_root, h.projects_root, restart=(tuple(h.bup_server_argv(daemon=True)),))


def log_sizes(g: Gated) -> dict[str, int]:
    """How many lines each host's gate log has now (a mark for ``logged_since``)."""
    return {n: len(lines) for n, lines in gate_logs(g).items()}


def gate_logs(g: Gated) -> dict[str, list[str]]:
    return {n: p.read_text().splitlines() if p.exists() else [] for n, p in g.logs.items()}


def logged_since(g: Gated, mark: dict[str, int]) -> list[str]:
    """The gate's log lines written on any host since ``mark``."""
    return [line for n, lines in gate_logs(g).items() for line in lines[mark[n] :]]


def kind(line: str) -> str:
    """What an 'allowed' line of the gate's log let through (without ' via sudo')."""
    return line.split(": ", 1)[1].split(":", 1)[0].removesuffix(" via sudo")


def refusals(lines: list[str]) -> list[str]:
    return [line for line in lines if " refused from " in line]


def test_the_keys_only_command_is_the_gate(gated: Gated) -> None:
    keys = (gated.fleet.hosts["g1"].home / ".ssh" / "authorized_keys").read_text()
    assert keys.startswith('restrict,command="')
    assert "bupwatch-ssh-gate --bup-root /bup --projects-root /projects --restart" in keys
    assert len(keys.splitlines()) == 1


def test_a_sweep_with_every_check_deep_checks_and_incremental_walks_passes_the_gate(
    gated: Gated, tmp_path: Path
) -> None:
    config = gated.config(PRUNE_CONF)
    inventory = load_inventory(inventory_source(config), State(tmp_path / "inv.db"))
    mark = log_sizes(gated)
    state = State(tmp_path / "state.db")
    cache = RepoCache(racy_seconds=0)

    results = [sweep(config, inventory, state=state, deep=True, repo_cache=cache) for _ in "12"]

    for result in results:
        assert all(f.probed for f in result.facts.values()), [
            f.failure_message for f in result.facts.values()
        ]
    assert sum(f.deep_checked_now for f in results[0].facts.values()) == 9  # every repository
    found = {(f.check, f.code, f.server_id) for f in results[1].findings}
    assert ("mount_sanity", "not_mounted", gated.fleet.server_id("g3")) in found
    assert any(c == "replication_lag" and s == gated.fleet.server_id("g2") for c, _, s in found)
    over = {(f.code, f.project_id) for f in results[1].findings if f.check == "bup_quota"}
    assert ("over_quota", PRUNE) in over  # what prune_repo answers (its plan: the test below)
    new = logged_since(gated, mark)
    assert refusals(new) == []
    kinds = [kind(line) for line in new]
    assert kinds.count("probe") == 6 and kinds.count("deep probe") >= 3, new
    uid = 0 if gated.user == "root" else BUPWATCH_UID
    assert all(f" uid {uid}: " in line and "via sudo" not in line for line in new), new


def plans(gated: Gated, extra: str = "") -> list[tuple[str, str, dict[str, str]]]:
    """Every repair's dry-run plan on the fleet's faults: (repair, host, step)."""
    fleet = gated.fleet
    guard = gated.guard(PRUNE_CONF + extra)
    sid = fleet.server_id
    requests = [
        RepairRequest("chown_project", sid("g1"), LOG),
        RepairRequest("clean_repo", sid("g1"), LOG, params={"codes": list(CLEAN_CODES)}),
        RepairRequest("rotate_save_log", sid("g1"), LOG),
        RepairRequest("resync_replica", sid("g2"), STALE),
        RepairRequest("resync_replica", sid("g2"), GONE),
        RepairRequest("restart_bup_server", sid("g1")),
        RepairRequest("fence_host", sid("g3")),
        RepairRequest("prune_repo", sid("g1"), PRUNE),
    ]
    names = {s: n for n in fleet.hosts for s in [sid(n)]}
    out = []
    for req in requests:
        decision = guard.submit(
            RepairRequest(
                req.repair, req.server_id, req.project_id, params={**req.params, "dry_run": True}
            )
        )
        assert decision.status == "dry_run", (req, decision.message)
        for step in decision.plan:
            out.append((req.repair, names.get(step["server_id"], step["server_id"]), step))
    return out


def prune_repo_outside_its_plan(steps: list[tuple[str, str, dict[str, str]]]) -> list[list[str]]:
    """prune_repo's commands that are not plan steps, built from its plan's swap step as
    repairs/prune_repo.py builds them: the discard after a failed step and the verify listing."""
    swaps = [shlex.split(s["command"]) for r, _, s in steps if r == "prune_repo" and " swap " in
             s["command"]]  # fmt: skip
    swap = swaps[0]
    python, repo, work = swap[0], swap[4], swap[5]
    assert work == repo + prune_repo.WORK_SUFFIX
    saves = [a[-1] for r, _, s in steps if r == "prune_repo"
             for a in [shlex.split(s["command"])] if a[-1].startswith("master/")]  # fmt: skip
    assert saves
    return [
        [python, "-S", "-", "discard", repo, work],
        *(["bup", "-d", repo, "ls", save] for save in saves),
    ]


def test_every_command_of_every_repairs_plan_is_one_the_gate_allows(gated: Gated) -> None:
    """The allow-list cannot drift from the repairs: each plan's steps, sent as the transport
    sends them (with and without sudo), pass the gate of the host they run on; planning itself
    (prune_repo asks bup which saves go) runs through the real gate."""
    mark = log_sizes(gated)
    steps = plans(gated) + plans(gated, REPACK)
    planning = logged_since(gated, mark)
    assert refusals(planning) == []
    assert {"prune_repo rev-parse", "prune_repo prune-older --pretend"} <= {
        kind(line) for line in planning
    }
    steps += [("prune_repo", "g1", {"command": shlex.join(argv)})
              for argv in prune_repo_outside_its_plan(steps)]  # fmt: skip
    seen = set()
    for repair, host, step in steps:
        if host == "watchdog":  # fence_host's records: nothing runs on a host
            continue
        argv = shlex.split(step["command"])
        for sudo in (False, True):
            sent = shlex.split(shlex.join(remote_argv(argv, 300.0, sudo=sudo)))
            allowed, _wrapper, _sudo = judge(sent, gate_of(gated.fleet, host))
            assert allowed.argv == tuple(argv)
            seen.add((repair, allowed.kind))
    kinds = {k for _, k in seen}
    assert {"chown_project", "clean_repo", "clean_repo repack", "rotate_save_log"} <= kinds
    assert {"restart_bup_server", "bup init", "resync_replica fast-forward"} <= kinds
    assert {"resync_replica conflict tag", "git merge-base", "mountpoint"} <= kinds
    assert any(k.startswith("mount guard") for k in kinds)
    assert {"resync_replica copy (objects)", "resync_replica copy (conf)"} <= kinds
    prune = {k for r, k in seen if r == "prune_repo"}
    assert prune == {
        "clean_repo busy scan", "prune_repo mkdir", "prune_repo copy", "prune_repo prune-older",
        "prune_repo gc", "prune_repo fsck", "bup ls", "bup ls save", "prune_repo swap",
        "prune_repo discard",
    }  # fmt: skip


def test_cat_etc_shadow_sh_c_and_a_probe_with_extra_arguments_are_refused_and_logged(
    gated: Gated, tmp_path: Path
) -> None:
    config = gated.config()
    inventory = load_inventory(inventory_source(config), State(tmp_path / "refusals.db"))
    server = inventory.servers[gated.fleet.server_id("g1")]
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


def test_an_archive_audit_over_ssh_reads_the_gates_archive_root_and_nothing_else(
    gated: Gated, tmp_path: Path
) -> None:
    g1 = gated.fleet.hosts["g1"]
    archive = g1.bup_dir / "archive"
    copy_repo(gated.fleet.repo_path("g1", STALE), archive / STALE)
    mark = log_sizes(gated)

    def audit(path: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "bup_watchdog.cli", "archive", "audit"]
        argv += ["-c", str(gated.config_path), f"g1:{path}", "-o", "-", "--format", "json"]
        argv += ["--state", str(tmp_path / f"{len(path)}.jsonl")]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    offered, other = audit(f"{g1.bup_root}/archive"), audit(f"{g1.bup_root}/bups")

    assert offered.returncode == 0, offered.stderr
    assert json.loads(offered.stdout)["summary"]["ok"] == 1
    assert other.returncode == 3 and "not an archive this host offers" in other.stderr
    new = logged_since(gated, mark)
    assert {kind(line) for line in new if " allowed " in line} == {
        "archive audit list", "archive audit check"
    }  # fmt: skip
    assert len(refusals(new)) == 1


def test_every_repair_runs_through_the_gate_and_succeeds(gated: Gated) -> None:
    """Runs last: it repairs the fleet's faults (each repair's own tests check what it did)."""
    g1 = gated.fleet.hosts["g1"]
    live = g1.projects_dir_outside / LOG / "stray-owner.txt"
    live.write_text("owned by root by mistake\n")
    repo = gated.fleet.repo_path("g1", LOG)
    (repo / "objects" / "tmp-xyz").write_bytes(b"an interrupted save\n")
    (repo / "objects" / "pack" / "tmp_pack_abc").write_bytes(b"an interrupted fetch\n")
    mark = log_sizes(gated)
    guard = gated.guard(PRUNE_POLICY)  # bup_quota as shipped: the pruned repo passes it
    sid = gated.fleet.server_id

    outcomes = {}
    for req in (
        RepairRequest("chown_project", sid("g1"), LOG),
        RepairRequest("clean_repo", sid("g1"), LOG),
        RepairRequest("rotate_save_log", sid("g1"), LOG),
        RepairRequest("resync_replica", sid("g2"), STALE),
        RepairRequest("resync_replica", sid("g2"), GONE),
        RepairRequest("fence_host", sid("g3")),
        RepairRequest("prune_repo", sid("g1"), PRUNE),
        RepairRequest("move_project", sid("g1"), MOVE, params={"target": "g2"}),
    ):
        decision = guard.submit(req, execute=True)
        outcomes[(req.repair, req.project_id)] = (decision.status, decision.message)

    assert all(status == "succeeded" for status, _ in outcomes.values()), outcomes
    new = logged_since(gated, mark)
    assert refusals(new) == []
    # a project's repair probes only its project (--only); fence_host probes g3 whole
    probes = {
        n: [line for line in lines[mark[n] :] if kind(line) == "probe"]
        for n, lines in gate_logs(gated).items()
    }
    assert probes["g1"] and all(" --only " in line for line in probes["g1"] + probes["g2"])
    assert probes["g3"] and not any(" --only " in line for line in probes["g3"])
    kinds = {kind(line) for line in new}
    assert {"rotate_save_log", "clean_repo busy scan", "resync_replica busy scan"} <= kinds
    assert {"rsync sender (objects)", "mount guard (rsync sender (live))"} <= kinds
    assert {"bup init", "bup ls", "bup ls save", "prune_repo copy", "prune_repo swap"} <= kinds
    assert list(g1.bups_dir.glob(f"{PRUNE}.pruned-*")), "prune_repo kept the old copy aside"
    assert {
        "move_project replicas.json",
        "mount guard (move_project live-tree proof (dry run))",
    } <= kinds
    moved = load_inventory(inventory_source(gated.config()), guard.state).projects[MOVE]
    assert (moved.master, moved.replicas) == (sid("g2"), (sid("g1"),))
    placement = f'["{sid("g2")}", "{sid("g1")}"]\n'
    for host in ("g1", "g2"):  # the demoted source copy is kept, and knows the new placement
        assert (
            gated.fleet.repo_path(host, MOVE) / "conf" / "replicas.json"
        ).read_text() == placement
    if gated.user == "bupwatch":  # every repair command went through sudo to the gate as root
        by_bupwatch = [line for line in new if f" uid {BUPWATCH_UID}: " in line]
        as_root = [line for line in new if " uid 0: " in line]
        escalated = [line for line in by_bupwatch if " via sudo: " in line]
        assert len(as_root) == len(escalated) > 20
        assert {kind(line) for line in as_root} >= {"chown_project", "rotate_save_log", "bup init"}


def test_restart_bup_server_runs_through_the_gate_and_confirms_the_new_port(gated: Gated) -> None:
    """As root the probe reads bup_server's socket fds. As bupwatch it may not (root's
    /proc/PID/fd), so it takes the port from bup_server's port file, confirmed by a listening
    socket of root's on that port in the kernel's table; the restart is confirmed either way."""
    g1 = gated.fleet.hosts["g1"]
    g1.stop_bup_server()
    mark = log_sizes(gated)
    guard = gated.guard("[guard]\nmax_per_hour_per_host = 10\n")  # g1 had 5 repairs above

    decision = guard.submit(
        RepairRequest("restart_bup_server", gated.fleet.server_id("g1")), execute=True
    )

    new = logged_since(gated, mark)
    assert refusals(new) == []
    assert {"restart_bup_server", "read port file"} <= {kind(line) for line in new}, decision
    port = g1.read_bup_server_port()
    assert decision.status == "succeeded", decision.message
    [facts] = gather_facts(gated, "g1")
    assert facts.process is not None and port in facts.process.ports
    assert facts.process.port_from == ("sockets" if gated.user == "root" else "port_file")


def gather_facts(gated: Gated, *names: str) -> list[HostFacts]:
    """One probe of each host named, through the gate, as the watchdog's user."""
    config = gated.config()
    inventory = load_inventory(inventory_source(config), State(gated.config_path.parent / "gf.db"))
    sids = {gated.fleet.server_id(n) for n in names}
    servers = [s for s in inventory.servers.values() if s.server_id in sids]
    return list(gather(servers, config.ssh))
