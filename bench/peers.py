"""The peers the watchdog is measured against, on a sandbox fleet: Ansible ad-hoc, parallel-ssh and
the naive per-repository ``ssh`` loop, each gathering the same two facts per repository.

Every runner returns wall, CPU here (``local_cpu``: its child processes) and on the hosts
(``bench/hostcpu.py``), and checks the peer's output line by line against the fleet's spec
(every repository listed, ``BAD`` exactly on the corrupt copies), so a figure is only quoted for
a peer that did the work.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.hostcpu import hosts_cpu
from bup_watchdog.sandbox.fleet import SandboxFleet

# The peers' loop: the same two facts per repository the naive way gathers (does master resolve to
# an object in the repository; the save log's size), one line per repository.
PEER_LOOP = (
    'cd {bups} && for r in *; do if git --git-dir="$r" cat-file -e master 2>/dev/null; '
    'then m=ok; else m=BAD; fi; echo "$r $m $(stat -c %s "$r/conf/save_log.json" 2>/dev/null)"; '
    "done"
)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the peers' clients run as children)."""
    t = os.times()
    return t.children_user + t.children_system


def ssh_base(fleet: SandboxFleet) -> list[str]:
    """OpenSSH with the fleet's key and known_hosts, no prompts, no connection sharing."""
    return [
        "ssh",
        "-i",
        str(fleet.client_key),
        "-o",
        f"UserKnownHostsFile={fleet.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "LogLevel=ERROR",
    ]


def run_naive(fleet: SandboxFleet, sample: int, seed: int, pids: list[int]) -> dict[str, Any]:
    """Two OpenSSH connections per repository, one after the other, on a random sample."""
    copies = [(h, p.project_id) for p in fleet.spec.projects for h in p.locations]
    rng = random.Random(seed)
    chosen = rng.sample(copies, min(sample, len(copies)))
    base = ssh_base(fleet)
    wrong = 0
    h0 = hosts_cpu(pids, settle=0)
    c0 = children_cpu()
    t0 = time.perf_counter()
    for name, pid in chosen:
        h = fleet.hosts[name]
        repo = f"{h.bup_root}/bups/{pid}"
        target = f"root@{h.address}"
        ls = subprocess.run(
            [*base, target, "bup", "-d", repo, "ls", "master"], capture_output=True, check=False
        )
        st = subprocess.run(
            [*base, target, "stat", "-c", "%s", f"{repo}/conf/save_log.json"],
            capture_output=True,
            check=False,
        )
        corrupt = name in fleet.project(pid).corrupt_on
        if (ls.returncode != 0) != corrupt or st.returncode != 0:
            wrong += 1
    wall = time.perf_counter() - t0
    local = children_cpu() - c0
    host = hosts_cpu(pids) - h0
    n = len(chosen)
    return {
        "sample": n,
        "wall": wall,
        "ms_per_repo": 1000 * wall / n,
        "local_cpu_ms_per_repo": 1000 * local / n,
        "host_cpu_ms_per_repo": 1000 * host / n,
        "connections_per_repo": 2,
        "wrong": wrong,
    }


# ---------------------------------------------------------------- Ansible and parallel-ssh


def repos_on(fleet: SandboxFleet, names: list[str]) -> int:
    return sum(1 for p in fleet.spec.projects for h in p.locations if h in names)


def check_peer_output(
    fleet: SandboxFleet, names: list[str], per_host: dict[str, list[str]]
) -> dict[str, int]:
    """Lines per host must be its repositories; BAD exactly on the corrupt copies."""
    want: dict[str, set[str]] = {n: set() for n in fleet.hosts}
    bad_want: dict[str, set[str]] = {n: set() for n in fleet.hosts}
    for p in fleet.spec.projects:
        for h in p.locations:
            want[h].add(p.project_id)
        for h in p.corrupt_on:
            bad_want[h].add(p.project_id)
    lines = wrong = 0
    for name in names:
        got = {}
        for line in per_host.get(name, []):
            parts = line.split()
            if len(parts) >= 2:
                got[parts[0]] = parts[1]
        lines += len(got)
        if set(got) != want[name]:
            wrong += len(set(got) ^ want[name])
        bad = {pid for pid, m in got.items() if m == "BAD"}
        wrong += len(bad ^ bad_want[name])
    return {"lines": lines, "wrong": wrong, "repos": repos_on(fleet, names), "hosts": len(names)}


def run_ansible(
    fleet: SandboxFleet, names: list[str], work: Path, pids: list[int]
) -> dict[str, Any]:
    ansible = shutil.which("ansible")
    if ansible is None:
        return {"skipped": "ansible is not installed (apt-get install ansible-core)"}
    d = work / "ansible"
    (d / "cp").mkdir(parents=True, exist_ok=True)
    inv = d / "inventory.ini"
    inv.write_text(
        "[fleet]\n"
        + "".join(
            f"{n} ansible_host={h.address} bups={h.bup_root}/bups\n"
            for n, h in fleet.hosts.items()
            if n in names
        )
    )
    # ControlMaster off: Ansible's default persistent master (ControlPersist=60s) would outlive
    # the run, and its CPU (here and on the hosts) would go unmeasured. With pipelining, one shell
    # task is one SSH connection per host either way.
    ssh_args = (
        f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes "
        "-o BatchMode=yes -o ControlMaster=no -o ControlPath=none"
    )
    (d / "ansible.cfg").write_text(
        "[defaults]\n"
        f"inventory = {inv}\nremote_user = root\nprivate_key_file = {fleet.client_key}\n"
        "host_key_checking = True\ninterpreter_python = /usr/bin/python3\n"
        f"forks = {len(names)}\nstdout_callback = json\nbin_ansible_callbacks = True\n"
        f"local_tmp = {d}/tmp\nremote_tmp = /tmp/.ansible-bench\n"
        "[ssh_connection]\npipelining = True\n"
        f"ssh_args = {ssh_args}\ncontrol_path_dir = {d}/cp\n"
    )
    env = {**os.environ, "ANSIBLE_CONFIG": str(d / "ansible.cfg"), "HOME": str(d)}
    argv = [ansible, "fleet", "-m", "shell", "-a", PEER_LOOP.format(bups="{{ bups }}")]
    h0 = hosts_cpu(pids, settle=0)
    c0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=d)
    wall = time.perf_counter() - t0
    local = children_cpu() - c0
    host = hosts_cpu(pids) - h0
    try:
        data = json.loads(proc.stdout)
        hosts = data["plays"][0]["tasks"][0]["hosts"]
    except (ValueError, KeyError, IndexError):
        return {"error": f"rc {proc.returncode}: {(proc.stdout + proc.stderr)[-800:]}"}
    per_host = {n: r.get("stdout_lines", []) for n, r in hosts.items()}
    failed = sorted(n for n, r in hosts.items() if r.get("rc") != 0 or r.get("failed"))
    return {
        "wall": wall,
        "local_cpu": local,
        "host_cpu": host,
        "failed_hosts": failed,
        "version": subprocess.run(
            [ansible, "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
        **check_peer_output(fleet, names, per_host),
    }


def run_pssh(fleet: SandboxFleet, names: list[str], work: Path, pids: list[int]) -> dict[str, Any]:
    pssh = shutil.which("parallel-ssh") or shutil.which("pssh")
    if pssh is None:
        return {"skipped": "parallel-ssh is not installed (apt-get install pssh)"}
    roots = {h.bup_root for h in fleet.hosts.values()}
    if len(roots) != 1:
        return {"skipped": "hosts have different bup roots (no mount namespaces)"}
    d = work / "pssh"
    (d / "out").mkdir(parents=True, exist_ok=True)
    hosts_file = d / "hosts"
    hosts_file.write_text("".join(f"{fleet.hosts[n].address}\n" for n in names))
    extra = shlex.join(ssh_base(fleet)[1:])
    argv = [
        pssh,
        "-h",
        str(hosts_file),
        "-l",
        "root",
        "-p",
        str(len(names)),
        "-t",
        "0",
        "-o",
        str(d / "out"),
        "-x",
        extra,
        PEER_LOOP.format(bups=f"{roots.pop()}/bups"),
    ]
    h0 = hosts_cpu(pids, settle=0)
    c0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    local = children_cpu() - c0
    host = hosts_cpu(pids) - h0
    by_addr = {h.address: n for n, h in fleet.hosts.items()}
    per_host = {
        by_addr[f.name]: f.read_text().splitlines()
        for f in (d / "out").iterdir()
        if f.name in by_addr
    }
    failed = [ln for ln in proc.stdout.splitlines() if "[FAILURE]" in ln]
    return {
        "wall": wall,
        "local_cpu": local,
        "host_cpu": host,
        "failed_hosts": failed,
        "version": "parallel-ssh (Debian pssh)",
        **check_peer_output(fleet, names, per_host),
    }
