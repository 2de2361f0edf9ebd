"""The watchdog's gather side by side with the ways operators do it today, on one sandbox fleet.

For each fleet size (``--sizes``, in repositories = project copies, spread over ``--hosts``), one
fleet is built (``bench.fleet.bench_spec``: a mix of save counts and save-log sizes and a small
share of planted faults) and, in one run, measured:

- the watchdog: full cheap sweeps with every check (wall, CPU of the watchdog process, CPU on the
  hosts, SSH sessions, peak RSS), in a child process (``bench/watchdog_run.py``); the planted faults
  must be found exactly, or the figures are not printed as valid; incremental sweeps with
  ``--changed`` of the repositories changed, checked against a full sweep; ``/metrics`` rendered
  from the state of the real sweep;
- the naive way: per repository one ``ssh host bup -d REPO ls master`` and one
  ``ssh host stat -c %s REPO/conf/save_log.json`` (OpenSSH client, the fleet's key and
  known_hosts, BatchMode), on a random sample of ``--naive-sample`` repositories, extrapolated;
- general-purpose peers gathering the same two facts with one connection per host: Ansible ad-hoc
  (``ansible all -m shell``) and parallel-ssh, each running a shell loop of
  ``git cat-file -e master`` + ``stat`` over the host's repositories;
- deep checks (``watchdog.deep.run_deep`` over one SSH connection) on ``--deep-sample``
  repositories of one host: repositories per second and what a full deep cycle takes.

CPU on the hosts is measured from their sshd listeners (``bench/hostcpu.py``). The machine may be
shared: every wall figure is a median of repeats, and CPU figures are printed beside them.

Run as root from the repository (about 12 minutes for the default sizes on 2 cores):

    .venv/bin/python bench/compare.py --json bench/last-run.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet import bench_spec, describe  # noqa: E402
from bench.hostcpu import hosts_cpu  # noqa: E402
from bup_watchdog.checks import settings_models  # noqa: E402
from bup_watchdog.config import load_config  # noqa: E402
from bup_watchdog.deep import run_deep  # noqa: E402
from bup_watchdog.inventory.file import FileInventory  # noqa: E402
from bup_watchdog.sandbox.expected import compare, expected_findings  # noqa: E402
from bup_watchdog.sandbox.fleet import SandboxFleet  # noqa: E402
from bup_watchdog.transport.ssh import SshTransport  # noqa: E402

# The peers' loop: the same two facts per repository the naive way gathers (does master resolve to
# an object in the repository; the save log's size), one line per repository.
PEER_LOOP = (
    'cd {bups} && for r in *; do if git --git-dir="$r" cat-file -e master 2>/dev/null; '
    'then m=ok; else m=BAD; fi; echo "$r $m $(stat -c %s "$r/conf/save_log.json" 2>/dev/null)"; '
    "done"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ssh_base(fleet: SandboxFleet) -> list[str]:
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


# ---------------------------------------------------------------- the watchdog


def run_watchdog(fleet: SandboxFleet, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    bups = {n: str(h.bups_dir) for n, h in fleet.hosts.items()}
    argv = [
        sys.executable,
        str(ROOT / "bench" / "watchdog_run.py"),
        "--config",
        str(fleet.config_path),
        "--sshd-pids",
        ",".join(map(str, pids)),
        "--bups",
        json.dumps(bups),
        "--sweeps",
        str(args.sweeps),
        "--incremental",
        str(args.incremental),
        "--changed",
        str(args.changed),
        "--metrics-runs",
        str(args.metrics_runs),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"watchdog_run failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    expected = expected_findings(fleet.spec)
    seen = {
        (c, code, host, pid or None)
        for c, code, host, pid in (tuple(x) for x in out.pop("observed"))
    }
    exp = {(e.check, e.code, e.host, e.project_id) for e in expected}
    cmp = compare(exp, seen)  # type: ignore[arg-type]
    out["planted"] = len(exp)
    out["missed"] = sorted(map(str, cmp.missed))[:10]
    out["unexpected"] = sorted(map(str, cmp.unexpected))[:10]
    out["exact"] = cmp.exact
    return out


# ---------------------------------------------------------------- the naive way


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


# ---------------------------------------------------------------- deep checks


def run_deep_sample(fleet: SandboxFleet, sample: int, pids: list[int]) -> dict[str, Any]:
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    inventory = FileInventory(config.inventory.file).load()
    name = next(iter(fleet.hosts))
    server = inventory.servers[fleet.server_id(name)]
    on_host = sorted(p.project_id for p in fleet.spec.projects if name in p.locations)
    corrupt = {p.project_id for p in fleet.spec.projects if name in p.corrupt_on}
    rng = random.Random(3)
    ids = sorted(set(rng.sample(on_host, min(sample, len(on_host)))) | (corrupt & set(on_host)))
    transport = SshTransport(server, config.ssh)
    h0 = hosts_cpu(pids, settle=0)
    t0 = time.perf_counter()
    try:
        results = run_deep(transport, server, ids, config.deep, config.ssh.python)
    finally:
        transport.close()
    wall = time.perf_counter() - t0
    host = hosts_cpu(pids) - h0
    wrong = sum(1 for r in results if r.ok == (r.project_id in corrupt))
    rate = len(results) / wall
    return {
        "host": name,
        "repos": len(results),
        "corrupt_in_sample": len(corrupt & set(ids)),
        "wrong": wrong,
        "wall": wall,
        "repos_per_s": rate,
        "host_cpu_ms_per_repo": 1000 * host / max(1, len(results)),
        "per_host_default": config.deep.per_host,
        "interval_s": config.schedule.deep_interval_seconds,
        "window_days": config.deep.window_days,
    }


# ---------------------------------------------------------------- the probe on real repositories


def per_repo(pairs: list[tuple[str, str]], fn: Any) -> float:
    """Median over 5 runs of the microseconds ``fn(path, project_id)`` takes per repository."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for path, pid in pairs:
            fn(path, pid)
        runs.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(runs) / len(pairs)


def probe_unit_costs(work: Path, saves: int, copies: int = 200) -> dict[str, Any]:
    """Per repository: the probe's full walk vs its fingerprint, on real (not template) repos.

    The benchmark fleet's repositories are hard-link copies of stripped templates (no hooks/,
    info/, branches/; 1-6 packs); a real bup repository has those, and one pack per save until it
    is repacked. Measured in this process on ``copies`` copies of a real repository with 2 and
    with ``saves`` saves.
    """
    from bup_watchdog import probe
    from bup_watchdog.sandbox import repos as sandbox_repos

    out: dict[str, Any] = {}
    for n in sorted({2, saves}):
        base = work / f"real-{n}"
        tpl, data = base / "template", base / "data"
        data.mkdir(parents=True)
        sandbox_repos.bup_init(tpl)
        now = int(time.time()) - 3600
        for i in range(n):
            (data / f"file-{i}.txt").write_text(f"save {i}\n" * 20)
            sandbox_repos.bup_save(tpl, data, now - (n - i) * 60)
        conf = tpl / "conf"
        conf.mkdir()
        for name, text in (("settings.json", '{"disk": 3000}'), ("replicas.json", "[]")):
            (conf / name).write_text(text + "\n")
        (conf / "save_log.json").write_text('{"timestamp": 1}\n' * 50)
        (conf / "touch").write_bytes(b"")
        bups = base / "bups"
        bups.mkdir()
        rng = random.Random(n)
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(copies)]
        for pid in ids:
            shutil.copytree(tpl, bups / pid, symlinks=True)
        pairs = [(str(bups / pid), pid) for pid in ids]
        files = sum(len(f) for _, _, f in os.walk(tpl))
        out[str(n)] = {
            "saves": n,
            "files": files,
            "packs": len(list((tpl / "objects" / "pack").glob("*.pack"))),
            "full_us": per_repo(pairs, lambda p, i: probe.repo_facts(p, i)),
            "fingerprint_us": per_repo(pairs, lambda p, i: probe.fingerprint(p)),
        }
        known = {p: probe.fingerprint(p)[0] for p, _ in pairs}
        out[str(n)]["unchanged_us"] = per_repo(
            pairs, lambda p, i, known=known: probe._unchanged(p, known[p])
        )
        shutil.rmtree(base)
    return out


# ---------------------------------------------------------------- one size


def measure_size(
    total_repos: int, args: argparse.Namespace, work: Path, *, last: bool
) -> dict[str, Any]:
    per_host = max(1, total_repos // args.hosts)
    spec = bench_spec(args.hosts, per_host, seed=args.seed, fault_share=args.fault_share)
    shape = describe(spec)
    log(
        f"size {total_repos}: {shape['hosts']} hosts x {per_host} repos = {shape['repos']} repos, "
        f"{shape['projects']} projects; faults: {shape['corrupt']} corrupt, {shape['stale']} "
        f"stale, {shape['big_save_logs']} save logs > 50 MB"
    )
    root = work / f"fleet-{total_repos}"
    out: dict[str, Any] = {"size": total_repos, "repos_per_host": per_host, **shape}
    t0 = time.monotonic()
    with SandboxFleet(root, spec) as fleet:
        out["build_seconds"] = time.monotonic() - t0
        out["namespaces"] = fleet.namespaces
        log(f"built in {out['build_seconds']:.0f} s")
        pids = [h.sshd_pid for h in fleet.hosts.values()]
        log("watchdog: full sweeps, /metrics, incremental sweeps (child process)")
        out["watchdog"] = run_watchdog(fleet, args, pids)
        w = out["watchdog"]
        log(
            f"watchdog full sweep median {median([r['wall'] for r in w['full']]):.2f} s; "
            f"planted faults found exactly: {w['exact']}"
        )
        sample = args.naive_sample if last else min(args.naive_sample, args.naive_sample_small)
        if sample:
            log(f"naive: 2 ssh per repository on {sample} repositories")
            out["naive"] = run_naive(fleet, sample, args.seed, pids)
        names = list(fleet.hosts)
        if shape["repos"] > args.peer_max_repos:
            keep = max(1, len(names) * args.peer_max_repos // shape["repos"])
            names = names[:keep]
        if not args.skip_ansible:
            log(f"ansible ad-hoc on {len(names)} hosts")
            out["ansible"] = run_ansible(fleet, names, root, pids)
        if not args.skip_pssh:
            log(f"parallel-ssh on {len(names)} hosts")
            out["pssh"] = run_pssh(fleet, names, root, pids)
        if args.deep_sample:
            log(f"deep checks on {args.deep_sample} repositories")
            out["deep"] = run_deep_sample(fleet, args.deep_sample, pids)
    if last and not args.wait_teardown:
        # Deleting 100,000 hard-linked repositories takes minutes of disk work and measures
        # nothing: the last fleet is deleted by a detached process after the table is printed.
        out["teardown_seconds"] = None
        log(f"size {total_repos} done; its fleet is deleted in the background")
        return out
    t1 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    out["teardown_seconds"] = time.monotonic() - t1
    log(f"size {total_repos} done; teardown {out['teardown_seconds']:.0f} s")
    return out


def metrics_at(projects: int, runs: int) -> dict[str, Any]:
    """/metrics rendered from bench/metrics.py's synthetic state of ``projects`` projects."""
    from bench.metrics import build_state, measure
    from bup_watchdog.model import Server

    with tempfile.TemporaryDirectory(prefix="bupwatch-compare-metrics-") as tmp:
        state = build_state(Path(tmp) / "state.db", projects, 20, 0.05, 1)
        servers = {
            sid: Server(sid, "x", 6000, name=f"bup{n:03d}")
            for n, (sid,) in enumerate(state.query("SELECT server_id FROM hosts"))
        }
        m = measure(state, servers, runs, 10)
        state.close()
    return {"projects": projects, **m}


# ---------------------------------------------------------------- the table


def fmt_s(x: float | None) -> str:
    if x is None or x != x:
        return "–"
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 100:
        return f"{x:.0f} s"
    return f"{x:.2f} s"


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one size that the tables print."""
    w = r["watchdog"]
    repos = r["repos"]
    full = w["full"]
    s: dict[str, Any] = {
        "repos": repos,
        "projects": r["projects"],
        "hosts": r["hosts"],
        "full_wall": median([x["wall"] for x in full]),
        "full_walls": [round(x["wall"], 2) for x in full],
        "full_cpu": median([x["cpu"] for x in full]),
        "full_host_cpu": median([x["host_cpu"] for x in full]),
        "sessions": full[-1]["ssh_sessions"],
        "rss": w["peak_rss_full_mb"],
        "rss_inventory": w["rss_after_inventory_mb"],
        "rss_before": w["rss_before_sweeps_mb"],
        "rss_window": w["peak_rss_sweeps_window_mb"],
        "inventory_s": w["inventory_load_seconds"],
        "build_s": r["build_seconds"],
        "exact": w["exact"],
        "findings": full[-1]["findings"],
        "planted": w["planted"],
        "metrics_ms": w["metrics"]["median"],
        "metrics_p95_ms": w["metrics"]["p95"],
        "metrics_bytes": w["metrics"]["bytes"],
        "metrics_series": w["metrics"]["series"],
        "record_s": w["metrics"]["record_seconds"],
    }
    s["full_total_cpu"] = s["full_cpu"] + s["full_host_cpu"]
    inc = w.get("incremental")
    if inc:
        rounds = inc["rounds"]
        s["inc_wall"] = median([x["wall"] for x in rounds])
        s["inc_cpu"] = median([x["cpu"] for x in rounds])
        s["inc_host_cpu"] = median([x["host_cpu"] for x in rounds])
        s["inc_total_cpu"] = s["inc_cpu"] + s["inc_host_cpu"]
        s["inc_changed"] = rounds[-1]["changed"]
        s["inc_walked"] = median([x["walked"] for x in rounds])
        s["inc_mismatched"] = inc["mismatched"]
        s["inc_rss_window"] = w.get("peak_rss_incremental_window_mb")
        s["inc_compared"] = inc["compared"]
        s["prime_wall"] = inc["prime"]["wall"]
        s["inc_ratio_wall"] = s["inc_wall"] / s["full_wall"]
        s["inc_ratio_cpu"] = s["inc_total_cpu"] / s["full_total_cpu"]
        s["inc_checks"] = inc.get("steady_checks", [])
        s["inc_not_every_sweep"] = inc.get("not_every_sweep", {})
        every = inc.get("every_check_rounds") or []
        if every:
            s["inc_all_wall"] = median([x["wall"] for x in every])
            s["inc_all_cpu"] = median([x["cpu"] for x in every])
            s["inc_all_host_cpu"] = median([x["host_cpu"] for x in every])
            all_total = s["inc_all_cpu"] + s["inc_all_host_cpu"]
            s["inc_all_ratio_wall"] = s["inc_all_wall"] / s["full_wall"]
            s["inc_all_ratio_cpu"] = all_total / s["full_total_cpu"]
            # The daemon's mean over an hour: one sweep in N runs the less frequent checks too.
            period = min(s["inc_not_every_sweep"].values(), default=0.0)
            n = max(1.0, period / inc.get("sweep_interval_seconds", 300.0)) if period else 1.0
            s["inc_mean_ratio_wall"] = ((n - 1) * s["inc_ratio_wall"] + s["inc_all_ratio_wall"]) / n
            s["inc_mean_ratio_cpu"] = ((n - 1) * s["inc_ratio_cpu"] + s["inc_all_ratio_cpu"]) / n
            s["inc_mean_sweeps"] = n
    if "naive" in r:
        n = r["naive"]
        s["naive_ms"] = n["ms_per_repo"]
        s["naive_sample"] = n["sample"]
        s["naive_wrong"] = n["wrong"]
        s["naive_ext"] = n["ms_per_repo"] * repos / 1000
        s["naive_cpu_ms"] = n["local_cpu_ms_per_repo"] + n["host_cpu_ms_per_repo"]
        s["naive_ratio"] = s["naive_ext"] / s["full_wall"]
        s["naive_cpu_ratio"] = s["naive_cpu_ms"] * repos / 1000 / s["full_total_cpu"]
    for peer in ("ansible", "pssh"):
        p = r.get(peer)
        if p and "wall" in p:
            scale = repos / max(1, p["repos"])  # measured on a share of the hosts: extrapolate
            s[f"{peer}_measured"] = f"{p['hosts']} hosts, {p['repos']:,} repos"
            s[f"{peer}_scaled"] = scale > 1.0001
            s[f"{peer}_wall"] = p["wall"] * scale
            s[f"{peer}_cpu"] = (p["local_cpu"] + p["host_cpu"]) * scale
            s[f"{peer}_ok"] = not p["failed_hosts"] and p["wrong"] == 0 and p["lines"] == p["repos"]
            s[f"{peer}_ratio"] = s[f"{peer}_wall"] / s["full_wall"]
            s[f"{peer}_cpu_ratio"] = s[f"{peer}_cpu"] / s["full_total_cpu"]
        elif p:
            s[f"{peer}_note"] = p.get("skipped") or p.get("error")
    d = r.get("deep")
    if d:
        s["deep_rate"] = d["repos_per_s"]
        s["deep_wrong"] = d["wrong"]
        s["deep_sample"] = d["repos"]
        s["deep_cycle_here"] = repos / d["repos_per_s"]
        s["deep_cycle_parallel"] = r["repos_per_host"] / d["repos_per_s"]
        passes = -(-r["repos_per_host"] // max(1, d["per_host_default"]))
        s["deep_cycle_budget"] = passes * d["interval_s"]
        s["deep_window_days"] = d["window_days"]
    return s


def table(results: list[dict[str, Any]]) -> str:
    sums = [summarise(r) for r in results]
    cols = [f"{s['repos']:,} repos ({s['projects']:,} projects, {s['hosts']} hosts)" for s in sums]

    def row(label: str, f: Any) -> str:
        cells = []
        for s in sums:
            try:
                cells.append(f(s))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("–")
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    add = lines.append
    add(
        row(
            "**watchdog full cheap sweep**, wall (median; all runs)",
            lambda s: (
                f"**{fmt_s(s['full_wall'])}** ({', '.join(f'{x:g}' for x in s['full_walls'])})"
            ),
        )
    )
    add(row("… per repository", lambda s: f"{1000 * s['full_wall'] / s['repos']:.3f} ms"))
    add(
        row(
            "… CPU: watchdog process / on the hosts",
            lambda s: f"{fmt_s(s['full_cpu'])} / {fmt_s(s['full_host_cpu'])}",
        )
    )
    add(
        row(
            "… SSH sessions (per host)",
            lambda s: f"{s['sessions']} ({s['sessions'] / s['hosts']:g})",
        )
    )
    add(
        row(
            "… peak RSS of the watchdog process (after loading the inventory / during sweeps)",
            lambda s: f"**{s['rss']:.0f} MB** ({s['rss_inventory']:.0f} / {s['rss_window']:.0f})",
        )
    )
    add(
        row(
            "… planted faults found exactly (findings)",
            lambda s: (
                f"{'yes' if s['exact'] else 'NO'} ({s['findings']} for {s['planted']} planted)"
            ),
        )
    )
    add(row("… recording the sweep into the state", lambda s: fmt_s(s["record_s"])))
    add(
        row(
            "**incremental sweep**, 1 % changed, the checks of every sweep (all but "
            "ownership, hourly): wall (repos re-walked)",
            lambda s: f"**{fmt_s(s['inc_wall'])}** ({s['inc_walked']:.0f} of {s['repos']:,})",
        )
    )
    add(
        row(
            "… CPU: watchdog / hosts",
            lambda s: f"{fmt_s(s['inc_cpu'])} / {fmt_s(s['inc_host_cpu'])}",
        )
    )
    add(
        row(
            "… share of a full sweep: wall / total CPU",
            lambda s: f"**{100 * s['inc_ratio_wall']:.0f} %** / {100 * s['inc_ratio_cpu']:.0f} %",
        )
    )
    add(
        row(
            "… with every check due (ownership too: the live directories sampled): wall; share "
            "wall / total CPU",
            lambda s: (
                f"{fmt_s(s['inc_all_wall'])}; **{100 * s['inc_all_ratio_wall']:.0f} %** / "
                f"{100 * s['inc_all_ratio_cpu']:.0f} %"
            ),
        )
    )
    add(
        row(
            "… the daemon's mean over an hour (one sweep in N runs ownership too): wall / CPU",
            lambda s: (
                f"**{100 * s['inc_mean_ratio_wall']:.0f} %** / "
                f"{100 * s['inc_mean_ratio_cpu']:.0f} % (N = {s['inc_mean_sweeps']:.0f})"
            ),
        )
    )
    add(
        row(
            "… facts equal to a full sweep's",
            lambda s: f"{s['inc_compared'] - s['inc_mismatched']:,} of {s['inc_compared']:,}",
        )
    )
    add(
        row(
            "**naive** (2 ssh per repo): per repository (sample)",
            lambda s: f"{s['naive_ms']:.0f} ms ({s['naive_sample']}; {s['naive_wrong']} wrong)",
        )
    )
    add(row("… extrapolated to the fleet", lambda s: f"**{fmt_s(s['naive_ext'])}**"))
    add(
        row(
            "… watchdog is faster by (wall / total CPU)",
            lambda s: f"**{s['naive_ratio']:.0f}×** / {s['naive_cpu_ratio']:.0f}×",
        )
    )
    for peer, label in (("ansible", "Ansible ad-hoc"), ("pssh", "parallel-ssh")):
        add(
            row(
                f"**{label}** (1 connection per host): wall",
                lambda s, p=peer: (
                    (
                        f"**{fmt_s(s[f'{p}_wall'])}**"
                        + (f" (extrapolated from {s[f'{p}_measured']})" if s[f"{p}_scaled"] else "")
                        + ("" if s[f"{p}_ok"] else " (output WRONG)")
                    )
                    if f"{p}_wall" in s
                    else s.get(f"{p}_note", "–")
                ),
            )
        )
        add(row("… CPU (local + hosts)", lambda s, p=peer: fmt_s(s[f"{p}_cpu"])))
        add(
            row(
                "… watchdog is faster by (wall / total CPU)",
                lambda s, p=peer: f"**{s[f'{p}_ratio']:.1f}×** / {s[f'{p}_cpu_ratio']:.1f}×",
            )
        )
    add(
        row(
            "**deep checks**: repos/s on one host (sample, wrong)",
            lambda s: f"{s['deep_rate']:.1f} ({s['deep_sample']}, {s['deep_wrong']} wrong)",
        )
    )
    add(
        row(
            "… full deep cycle: hosts in parallel / all on this machine",
            lambda s: f"{fmt_s(s['deep_cycle_parallel'])} / {fmt_s(s['deep_cycle_here'])}",
        )
    )
    add(
        row(
            "… with the default budget (per_host per pass, a pass per interval)",
            lambda s: f"{fmt_s(s['deep_cycle_budget'])} (window {s['deep_window_days']:g} d)",
        )
    )
    add(
        row(
            "**/metrics** render: median / p95",
            lambda s: f"**{s['metrics_ms']:.1f} ms** / {s['metrics_p95_ms']:.1f} ms",
        )
    )
    add(
        row(
            "… body size, series",
            lambda s: f"{s['metrics_bytes'] / 1024:.0f} KiB, {s['metrics_series']:,}",
        )
    )
    add(
        row(
            "fleet build (not part of any figure) / inventory load",
            lambda s: f"{fmt_s(s['build_s'])} / {fmt_s(s['inventory_s'])}",
        )
    )
    return "\n".join(lines)


def unit_table(unit: dict[str, Any]) -> str:
    lines = [
        "| real bup repository | files | packs | full walk | fingerprint (at a walk) | "
        "unchanged check (incremental) | check / full |",
        "|---|---|---|---|---|---|---|",
    ]
    for u in unit.values():
        check = u.get("unchanged_us", u["fingerprint_us"])
        lines.append(
            f"| {u['saves']} saves | {u['files']} | {u['packs']} | {u['full_us']:.0f} µs | "
            f"{u['fingerprint_us']:.0f} µs | {check:.0f} µs | {check / u['full_us']:.0%} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hosts", type=int, default=20, help="storage hosts (default 20)")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 10_000, 100_000],
        help="fleet sizes in repositories (project copies), spread over the hosts "
        "(default: 1000 10000 100000)",
    )
    ap.add_argument("--repos", type=int, help="repositories per host: one size, hosts x repos")
    ap.add_argument("--sweeps", type=int, default=3, help="full sweeps per size (default 3)")
    ap.add_argument(
        "--incremental",
        type=int,
        default=3,
        help="incremental sweeps per size (default 3; 0: none)",
    )
    ap.add_argument("--changed", type=float, default=0.01, help="share changed before each (0.01)")
    ap.add_argument(
        "--naive-sample",
        type=int,
        default=200,
        help="repositories for the naive loop (200; 0: skip)",
    )
    ap.add_argument(
        "--naive-sample-small",
        type=int,
        default=30,
        help="repositories for the naive loop at the smaller sizes (30)",
    )
    ap.add_argument(
        "--peer-max-repos",
        type=int,
        default=20_000,
        help="Ansible and parallel-ssh run on as many hosts as hold at most this many "
        "repositories; their figures are extrapolated to the fleet (20000)",
    )
    ap.add_argument(
        "--real-repo-saves",
        type=int,
        default=20,
        help="also time the probe's full walk and fingerprint on real bup repositories with "
        "this many saves (20; 0: skip)",
    )
    ap.add_argument(
        "--metrics-projects",
        type=int,
        default=100_000,
        help="also render /metrics from a synthetic state of this many projects (100000; 0: skip)",
    )
    ap.add_argument(
        "--wait-teardown",
        action="store_true",
        help="delete the last fleet before exiting (default: a detached rm -rf does it)",
    )
    ap.add_argument("--skip-ansible", action="store_true", help="do not run Ansible")
    ap.add_argument("--skip-pssh", action="store_true", help="do not run parallel-ssh")
    ap.add_argument("--deep-sample", type=int, default=40, help="repositories deep-checked (40)")
    ap.add_argument("--metrics-runs", type=int, default=20, help="/metrics renders timed (20)")
    ap.add_argument("--fault-share", type=float, default=0.002, help="projects with a fault")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where fleets are built (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write every raw figure to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("run as root: the sandbox fleet needs sshd and mount namespaces")
    sizes = [args.hosts * args.repos] if args.repos else args.sizes
    started = time.monotonic()
    results = []
    unit: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bupwatch-compare-", dir=args.workdir))
    try:
        if args.real_repo_saves:
            log(f"probe costs on real bup repositories ({args.real_repo_saves} saves)")
            unit = probe_unit_costs(tmp, args.real_repo_saves)
        ordered = sorted(sizes)
        for size in ordered:
            results.append(measure_size(size, args, tmp, last=size == ordered[-1]))
        big = None
        if args.metrics_projects:
            log(f"/metrics with {args.metrics_projects} projects in a synthetic state")
            big = metrics_at(args.metrics_projects, args.metrics_runs)
    finally:
        if args.wait_teardown:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            subprocess.Popen(
                ["rm", "-rf", "--one-file-system", str(tmp)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    elapsed = time.monotonic() - started
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    print(f"bup-watchdog gather benchmark, {when}")
    print(
        f"machine: {machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (shared with other work)"
    )
    print(f"run took {elapsed / 60:.1f} min (fleet builds and teardowns included)")
    print()
    print(table(results))
    if big:
        print()
        print(
            f"/metrics with {big['projects']:,} projects (bench/metrics.py's synthetic state, "
            f"20 servers): median {big['median']:.1f} ms, p95 {big['p95']:.1f} ms, "
            f"{big['bytes'] / 1024:.0f} KiB, {big['series']:,} series"
        )
    if unit:
        print()
        print("The probe per repository, in process, on copies of a real bup repository:")
        print()
        print(unit_table(unit))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": when,
                    "machine": machine(),
                    "argv": sys.argv,
                    "elapsed_seconds": elapsed,
                    "results": results,
                    "probe_unit_costs": unit,
                    "metrics_synthetic": big,
                    "summary": [summarise(r) for r in results],
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
