"""prune_repo interrupted, for real, on a host whose watchdog key runs only bupwatch-ssh-gate:
the host-side ``bup`` working on the copy SIGKILLed (as the OOM killer would), the watchdog's
own process SIGKILLed mid-prune, and a host whose gate is the previous release's (it refuses
prune_repo's commands).

The repository is hashed file by file before and after: until the swap it must not change, and a
pruned repository's old self must be kept aside byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec
from faults.harm import Snapshot, loss
from faults.harness import CLI, host_pids, wait_until
from faults.recorder import Reliability, short
from support.fleet import fleet_config, make_guard

KILLED = "0c3d6f4e-2b1a-4c5d-8e9f-0000000000b1"  # bup on the copy SIGKILLed
CLI_KILLED = "0c3d6f4e-2b1a-4c5d-8e9f-0000000000b2"  # the watchdog's process SIGKILLed
OLD_GATE = "0c3d6f4e-2b1a-4c5d-8e9f-0000000000b3"  # the host's gate refuses the prune
# The policy keeps the last hour's saves and the newest of each day, so of 4 saves 6 h apart at
# least one goes; bup_quota as shipped: the pruned repository passes it.
CONF = '[repairs.prune_repo]\nmode = "auto"\nkeep_all_for = "1h"\n'

# bupwatch-ssh-gate as released in commit 5b2cf63, the one before prune_repo's commands were let
# through: the gate of a host nobody upgraded with the watchdog.
PREVIOUS_GATE = Path(__file__).parent / "data" / "bupwatch-ssh-gate-5b2cf63"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFleet]:
    spec = FleetSpec(
        hosts=(HostSpec("q1", dc=0, ssh_gate=True),),
        projects=tuple(
            ProjectSpec(pid, "q1", (), saves=4, disk_mb=1) for pid in (KILLED, CLI_KILLED, OLD_GATE)
        ),
    )
    with SandboxFleet(tmp_path_factory.mktemp("prune-faults"), spec) as fleet:
        fleet_config(fleet, CONF)  # config-test.toml beside the fleet's config
        yield fleet


def request(fleet: SandboxFleet, pid: str) -> RepairRequest:
    return RepairRequest("prune_repo", fleet.server_id("q1"), pid, requested_by="test")


def saves(fleet: SandboxFleet, repo: str) -> list[str]:
    ls = fleet.hosts["q1"].run(["bup", "-d", repo, "ls", "master"])
    assert ls.returncode == 0, f"bup ls master of {repo}: {ls.stderr}"
    return sorted(n for n in ls.stdout.split() if n != "latest")


def inside(fleet: SandboxFleet, pid: str) -> str:
    return f"{fleet.hosts['q1'].bup_root}/bups/{pid}"


def work_of(fleet: SandboxFleet, pid: str) -> Path:
    return fleet.hosts["q1"].bups_dir / f"{pid}.prune-new"


def on_copy(pid: str) -> Callable[[list[bytes]], bool]:
    """Processes of the host working on the prune's copy (not the ``timeout`` wrapping them)."""
    work = f"{pid}.prune-new".encode()

    def match(argv: list[bytes]) -> bool:
        return not argv[0].endswith(b"timeout") and any(work in a for a in argv)

    return match


def gate_lines(fleet: SandboxFleet) -> list[str]:
    """The lines q1's gate has logged so far (none before its first command)."""
    log = fleet.hosts["q1"].gate_log
    return log.read_text().splitlines() if log.exists() else []


def previous_key_line(fleet: SandboxFleet) -> str:
    """q1's authorized_keys line for the previous gate: only the options that release takes
    (the sandbox's line gained --archive-root since)."""
    q1 = fleet.hosts["q1"]
    argv = [str(q1.dir / "bin" / "bupwatch-ssh-gate"), "--bup-root", q1.bup_root]
    argv += ["--projects-root", q1.projects_root, "--log", str(q1.gate_log)]
    argv += ["--restart", shlex.join(q1.bup_server_argv(daemon=True))]
    command = shlex.join(argv).replace("\\", "\\\\").replace('"', '\\"')
    pub = fleet.client_key.with_suffix(".pub").read_text().strip()
    return f'restrict,command="{command}" {pub}\n'


def aside(fleet: SandboxFleet, pid: str) -> Path:
    [kept] = fleet.hosts["q1"].bups_dir.glob(f"{pid}.pruned-*")
    return kept


def test_bup_sigkilled_on_the_prunes_copy_fails_it_deletes_the_copy_and_a_retry_prunes(
    fleet: SandboxFleet, reliability: Reliability
) -> None:
    repo, pid = fleet.repo_path("q1", KILLED), KILLED
    before = Snapshot.of({"repo": repo})
    names = saves(fleet, inside(fleet, pid))
    guard = make_guard(fleet, CONF)
    match = on_copy(pid)
    killed: list[str] = []

    def kill_bup_on_the_copy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in host_pids(fleet, "q1", match):
                argv = Path(f"/proc/{proc}/cmdline").read_bytes().split(b"\0")
                if b"prune-older" in argv or b"gc" in argv:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc, signal.SIGKILL)
                        what = "prune-older --no-gc" if b"prune-older" in argv else "gc --unsafe"
                        killed.append(f"bup -d REPO.prune-new {what}")
                    break
            time.sleep(0.002)

    killer = threading.Thread(target=kill_bup_on_the_copy)
    killer.start()
    try:
        decision = guard.submit(request(fleet, pid))
    finally:
        killer.join()
    row = guard.journal.get(decision.entry_id)
    assert row is not None

    assert killed, f"no bup on the copy was caught running: {decision.status} {decision.message}"
    assert decision.status == "failed", decision.message
    assert "failed with status" in decision.message
    assert f"the unfinished copy {inside(fleet, pid)}.prune-new was deleted" in decision.message
    assert not work_of(fleet, pid).exists()
    lost_failed = loss(before, Snapshot.of({"repo": repo}), "the repository")
    assert lost_failed.bytes_lost == 0, lost_failed.lost
    assert saves(fleet, inside(fleet, pid)) == names

    again = guard.submit(request(fleet, pid))
    guard.state.close()

    assert again.status == "succeeded", again.message
    kept = saves(fleet, inside(fleet, pid))
    assert kept and names[-1] in kept and len(kept) < len(names)
    # The old repository, every byte of it, is kept aside.
    lost = loss(before, Snapshot.of({"repo": aside(fleet, pid)}), "the repository (kept aside)")
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="repair",
        what="bup SIGKILLed on the host while prune_repo works on its copy (as the OOM killer "
        f"would: `{killed[0]}`)",
        expected="the step fails, the repair deletes its copy and fails before the swap; the "
        "repository unchanged with all its saves; a retry through the guard prunes",
        observed=f"{decision.status} (repair #{row.id}): "
        f"{short(decision.message.split('failed with status ', 1)[-1], 150)}; repository "
        f"unchanged, {len(names)} saves listed; retry {again.status}: kept {len(kept)} of "
        f"{len(names)} saves, the old repository aside byte for byte",
        loss=lost_failed + lost,
    )


def test_the_watchdog_sigkilled_mid_prune_leaves_the_repository_whole_and_a_retry_is_guarded(
    fleet: SandboxFleet, reliability: Reliability
) -> None:
    repo, pid = fleet.repo_path("q1", CLI_KILLED), CLI_KILLED
    before = Snapshot.of({"repo": repo})
    names = saves(fleet, inside(fleet, pid))
    config = fleet.config_path.with_name("config-test.toml")
    target = f"{fleet.server_id('q1')}/{pid}"
    cli = subprocess.Popen(
        [*CLI, "repair", "prune_repo", target, "--execute", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: work_of(fleet, pid).exists(), timeout=60, what="the prune's copy")
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    # What the host was doing for it finishes or dies with its session.
    wait_until(
        lambda: not host_pids(fleet, "q1", on_copy(pid)),
        timeout=60,
        what="the host's work on the copy to end",
    )
    lost_killed = loss(before, Snapshot.of({"repo": repo}), "the repository")
    assert lost_killed.bytes_lost == 0, lost_killed.lost
    assert saves(fleet, inside(fleet, pid)) == names
    assert work_of(fleet, pid).exists(), "the killed run's copy is left (nobody deleted it)"

    # The operator runs the same command again.
    retry = subprocess.run(
        [*CLI, "repair", "prune_repo", target, "--execute", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    guard = make_guard(fleet, CONF)
    [row] = guard.journal.entries(limit=1)
    assert row.status == "refused", retry.stdout + retry.stderr
    assert retry.returncode == 2, retry.stdout + retry.stderr
    assert row.refusal is not None and "leftover:" in row.refusal, row.refusal
    assert f"released the lease on {target}" in retry.stderr, retry.stderr
    # The operator looks at the leftover copy and removes it, as the refusal says.
    shutil.rmtree(work_of(fleet, pid))
    again = guard.submit(request(fleet, pid))
    guard.state.close()

    assert again.status == "succeeded", again.message
    kept = saves(fleet, inside(fleet, pid))
    assert kept and names[-1] in kept and len(kept) < len(names)
    lost = loss(before, Snapshot.of({"repo": aside(fleet, pid)}), "the repository (kept aside)")
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="watchdog",
        what="the watchdog's process (`repair prune_repo --execute`) SIGKILLed once the prune's "
        "copy exists on the host",
        expected="the repository unchanged (nothing is swapped until the last step); the "
        "killed run's lease released when the same command runs again; that retry refused "
        "while the copy is left (journaled), then prunes once an operator removed it",
        observed=f"repository unchanged, {len(names)} saves listed, the copy left; "
        "the killed run's lease released by the retry (the same command again), which was "
        f"{row.status}: "
        f"{short(row.refusal or '', 110)}; after removing the copy: {again.status}, kept "
        f"{len(kept)} of {len(names)} saves, the old repository aside byte for byte",
        loss=lost_killed + lost,
    )


def test_a_hosts_gate_of_the_previous_release_refuses_the_prune_and_nothing_changes(
    fleet: SandboxFleet, reliability: Reliability
) -> None:
    q1 = fleet.hosts["q1"]
    pid = OLD_GATE
    installed = q1.dir / "bin" / "bupwatch-ssh-gate"
    current = installed.read_bytes()
    roots = {"bups": q1.bups_dir}
    before = Snapshot.of(roots)
    names = saves(fleet, inside(fleet, pid))
    log_mark = len(gate_lines(fleet))
    keys = q1.home / ".ssh" / "authorized_keys"
    line = keys.read_text()
    guard = make_guard(fleet, CONF)
    # Nobody upgraded this host: the gate and its authorized_keys line are the previous release's.
    installed.write_bytes(PREVIOUS_GATE.read_bytes())
    keys.write_text(previous_key_line(fleet))
    try:
        decision = guard.submit(request(fleet, pid))
    finally:
        installed.write_bytes(current)
        keys.write_text(line)
    row = guard.journal.get(decision.entry_id)
    assert row is not None
    guard.state.close()
    refusals = [line for line in gate_lines(fleet)[log_mark:] if " refused " in line]

    assert decision.status in ("failed", "refused"), decision.message
    assert "bupwatch-ssh-gate: refused" in decision.message, decision.message
    assert refusals, "the gate logged no refusal"
    added = sorted(set(Snapshot.of(roots).files) - set(before.files))
    assert not added, f"the refused prune left files: {added[:5]}"
    lost = loss(before, Snapshot.of(roots), "every repository of the host")
    assert lost.bytes_lost == 0, lost.lost
    assert saves(fleet, inside(fleet, pid)) == names
    reliability.record(
        area="repair",
        what="the host's bupwatch-ssh-gate is the previous release's (5b2cf63, before "
        "prune_repo's commands were let through), prune_repo asked of it",
        expected="the gate refuses the command, logs it, nothing reaches a shell; the repair "
        "ends with the gate's reason journaled and no change on the host",
        observed=f"{row.status} (repair #{row.id}): {short(decision.message, 170)}; the gate "
        f"logged {len(refusals)} refusal(s); 0 files added, {len(names)} saves listed",
        loss=lost,
    )
