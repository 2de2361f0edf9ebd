"""Benchmark: `bup-watchdog rebuild HOST` next to the per-project rsync loop operators write today.

Builds a sandbox fleet of 3 real sshd hosts (a, b, c) with real bup repositories: every project is
mastered on a or c and has its replica on b, the host to rebuild. Each round, in an order rotated
from round to round, every method starts from b's copies deleted (its disk replaced) and must end
with each copy's master ref equal to its master's and the masters' files unchanged:

- rebuild: `bup-watchdog rebuild b --execute --format json` in a subprocess, as an operator runs it
  (plan from fresh facts, each copy a resync_replica request through the guard); then a second run
  right after, which must submit nothing;
- loop: for each project, one after the other, `ssh b rsync -a -e ssh MASTER:/bup/bups/ID/
  /bup/bups/ID/` (the seed's "for each project rsync out from its master location"); then the same
  loop again right after (it has no notion of "already in step").

Figures per run: wall time; CPU here (the command and its ssh clients: this process's children's
rusage); CPU on the hosts (their listening sshd's own and reaped children's CPU: sshd, rsync on both
ends, git, the probes; bench/hostcpu.py); bytes on the wire (the loopback counters of a network
namespace of the benchmark's own, so only this fleet's traffic: SSH, TCP/IP headers, the watchdog's
probes included); bytes written on b (the sizes of the regular files under b's /bup/bups after).
The table shows the median of the rounds, every run, and the 1-minute load average after each.

Run as root from the repository (a few minutes at the defaults):
    .venv/bin/python bench/rebuild.py --projects 60 --rounds 3 --json /tmp/rebuild.json
"""

from __future__ import annotations

import argparse
import hashlib
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

import bup_watchdog  # noqa: E402
from bench.hostcpu import hosts_cpu  # noqa: E402
from bup_watchdog.sandbox.fleet import SandboxFleet  # noqa: E402
from bup_watchdog.sandbox.spec import FleetSpec, HostSpec, ProjectSpec  # noqa: E402

REBUILT = "b"
MASTERS = ("a", "c")
# --execute counts as approval (resync_replica's mode stays approve); the rate limits are for a
# daemon's repairs, not for an operator's rebuild of a whole host: raised so that no copy waits.
EXTRA = (
    "\n[guard]\nmax_per_hour_per_host = 100000\n[repairs.resync_replica]\nmax_per_hour = 100000\n"
)
GIT = ("git", "-c", "safe.directory=*")
NETNS_FLAG = "--_in-netns"
# Not /sys/class/net/lo/statistics: sysfs shows the namespace that mounted it (the machine's).
PROC_NET_DEV = Path("/proc/self/net/dev")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def wire_bytes(netns: bool) -> int | None:
    """Bytes sent over loopback in this process's network namespace (each byte counted once)."""
    if not netns:
        return None
    for line in PROC_NET_DEV.read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])  # receive: 8 fields, then transmit bytes
    raise RuntimeError("no lo in /proc/self/net/dev")


def tcp_opens(netns: bool) -> int | None:
    """TCP connections opened in this network namespace (ActiveOpens: SSH sessions and the
    watchdog's reachability connects)."""
    if not netns:
        return None
    rows = [
        line.split()
        for line in Path("/proc/self/net/snmp").read_text().splitlines()
        if line.startswith("Tcp:")
    ]
    return int(rows[1][rows[0].index("ActiveOpens")])


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def spec(projects: int, saves: int, seed: int, bystanders: int = 0) -> FleetSpec:
    """a and c master the projects in turn; every replica is on b, in the other data centre.
    Bystanders are mastered on b with a replica on a: in step, left alone, only more to probe."""
    rng = random.Random(seed)

    def pid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    measured = [
        ProjectSpec(pid(), master=MASTERS[i % 2], replicas=(REBUILT,), saves=saves)
        for i in range(projects)
    ]
    others = [
        ProjectSpec(pid(), master=REBUILT, replicas=("a",), saves=saves) for _ in range(bystanders)
    ]
    return FleetSpec(
        hosts=(HostSpec("a", dc=0), HostSpec(REBUILT, dc=1), HostSpec("c", dc=0)),
        projects=(*measured, *others),
    )


def measured(fleet: SandboxFleet) -> list[ProjectSpec]:
    """The projects whose copy on b is rebuilt (not the bystanders b masters)."""
    return [p for p in fleet.spec.projects if p.master != REBUILT]


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
        "ControlPath=none",
        "-o",
        "LogLevel=ERROR",
    ]


def head(repo: Path) -> str | None:
    """The commit refs/heads/master names, if the repository holds that commit (git says)."""
    proc = subprocess.run(
        [*GIT, "--git-dir", str(repo), "rev-parse", "--verify", "-q", "refs/heads/master^{commit}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def tree_digest(root: Path) -> str:
    """SHA-256 over every path, mode, owner, mtime and content under root (no symlink follow)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(root)}|{st.st_mode}|{st.st_uid}|{st.st_mtime_ns}|".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def masters_digest(fleet: SandboxFleet) -> dict[str, str]:
    """The checksum of each measured project's master copy."""
    return {
        p.project_id: tree_digest(fleet.repo_path(p.master, p.project_id)) for p in measured(fleet)
    }


def payload_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def empty_rebuilt(fleet: SandboxFleet) -> None:
    """b lost every replica it held (the bystanders it masters stay)."""
    for p in measured(fleet):
        shutil.rmtree(fleet.repo_path(REBUILT, p.project_id), ignore_errors=True)
        if fleet.repo_path(REBUILT, p.project_id).exists():
            raise RuntimeError(f"cannot delete b's copy of {p.project_id}")


class Meter:
    """Wall, CPU here, CPU on the hosts and loopback bytes of one measured piece of work."""

    def __init__(self, fleet: SandboxFleet, netns: bool) -> None:
        self.pids = [h.sshd_pid for h in fleet.hosts.values()]
        self.netns = netns

    def __enter__(self) -> Meter:
        self.h0 = hosts_cpu(self.pids, settle=0.3)
        self.c0 = children_cpu()
        self.w0 = wire_bytes(self.netns)
        self.o0 = tcp_opens(self.netns)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.local = children_cpu() - self.c0
        self.host = hosts_cpu(self.pids) - self.h0  # settles 0.3 s for sshd to reap
        w1 = wire_bytes(self.netns)
        self.wire = None if w1 is None or self.w0 is None else w1 - self.w0
        o1 = tcp_opens(self.netns)
        self.opens = None if o1 is None or self.o0 is None else o1 - self.o0
        self.load = os.getloadavg()[0]

    def figures(self) -> dict[str, Any]:
        return {
            "wall": round(self.wall, 3),
            "cpu_here": round(self.local, 3),
            "cpu_hosts": round(self.host, 3),
            "wire_bytes": self.wire,
            "tcp_connections": self.opens,
            "load1": round(self.load, 2),
        }


def watchdog_cli() -> list[str]:
    script = Path(sys.executable).with_name("bup-watchdog")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bup_watchdog.cli"]


def run_rebuild(fleet: SandboxFleet, config: Path, meter: Meter, parallel: int) -> dict[str, Any]:
    argv = [*watchdog_cli(), "rebuild", "-c", str(config), REBUILT, "--execute"]
    argv += ["--format", "json", "--parallel", str(parallel)]
    with meter:
        first = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = meter.figures()
    out["command"] = shlex.join(argv)
    out["exit"] = first.returncode
    data = _json_tail(first.stdout)
    results = data.get("results", [])
    out["submitted"] = len(results)
    out["succeeded"] = sum(r["status"] == "succeeded" for r in results)
    out["not_succeeded"] = [r for r in results if r["status"] != "succeeded"]
    if first.returncode != 0 or out["not_succeeded"]:
        out["stderr"] = first.stderr[-3000:]
    with meter:
        second = subprocess.run(argv, capture_output=True, text=True, check=False)
    again = _json_tail(second.stdout)
    out["second"] = {
        **meter.figures(),
        "exit": second.returncode,
        "planned": len(again.get("copies", [])),
        "submitted": len(again.get("results", [])),
        "in_step": again.get("in_step"),
    }
    if second.returncode != 0:
        out["second"]["stderr"] = second.stderr[-3000:]
    return out


def _json_tail(stdout: str) -> dict[str, Any]:
    """The rebuild's JSON document: its last line of output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    return {}


def loop_once(fleet: SandboxFleet) -> list[str]:
    """One pass of the operator's loop; the projects whose rsync failed."""
    base = ssh_base(fleet)
    b = fleet.hosts[REBUILT]
    failed = []
    for p in measured(fleet):
        m = fleet.hosts[p.master]
        src = f"root@{m.address}:{m.bup_root}/bups/{p.project_id}/"
        dest = f"{b.bup_root}/bups/{p.project_id}/"
        remote = shlex.join(["rsync", "-a", "-e", "ssh -o BatchMode=yes", src, dest])
        proc = subprocess.run(
            [*base, f"root@{b.address}", remote], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            failed.append(f"{p.project_id}: {proc.stderr.strip()[-300:]}")
    return failed


def run_loop(fleet: SandboxFleet, meter: Meter) -> dict[str, Any]:
    with meter:
        failed = loop_once(fleet)
    out = meter.figures()
    out["command"] = (
        "for each project: ssh root@b rsync -a -e 'ssh -o BatchMode=yes' "
        "root@MASTER:/bup/bups/ID/ /bup/bups/ID/"
    )
    out["submitted"] = len(measured(fleet))
    out["succeeded"] = len(measured(fleet)) - len(failed)
    out["not_succeeded"] = failed
    with meter:
        again = loop_once(fleet)
    out["second"] = {**meter.figures(), "submitted": len(measured(fleet)), "failed": again}
    return out


def verify(fleet: SandboxFleet, want: dict[str, str], masters: dict[str, str]) -> dict[str, Any]:
    """Heads of b's copies against their masters', and the masters' files against the start."""
    equal = sum(head(fleet.repo_path(REBUILT, pid)) == sha for pid, sha in want.items())
    return {
        "heads_equal": equal,
        "copies": len(want),
        "masters_untouched": masters_digest(fleet) == masters,
        "bytes_on_b": sum(payload_bytes(fleet.repo_path(REBUILT, pid)) for pid in want),
    }


# ---------------------------------------------------------------- the table


def _s(x: float) -> str:
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def _b(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _cell(runs: list[dict[str, Any]], key: str, fmt: Any, bold: bool = False) -> str:
    values = [r[key] for r in runs]
    if any(v is None for v in values):
        return "n/a"
    med = fmt(statistics.median(values))
    each = ", ".join(f"{fmt(v)} @ {r['load1']:.1f}" for v, r in zip(values, runs, strict=True))
    return f"{'**' + med + '**' if bold else med} ({each})"


def table(methods: dict[str, list[dict[str, Any]]], projects: int) -> str:
    names = list(methods)
    heads = {n: f"`bup-watchdog rebuild b --execute --parallel {n[9:]}`" for n in names}
    heads["loop"] = "per-project `ssh b rsync -a MASTER:…` loop"
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, f: Any) -> None:
        rows.append((label, [f(methods[n]) for n in names]))

    row(
        "wall, median (each run @ 1-min load average after it)",
        lambda r: _cell(r, "wall", _s, True),
    )
    row(
        "… per copy",
        lambda r: f"{1000 * statistics.median(x['wall'] for x in r) / projects:.0f} ms",
    )
    row("CPU here: the command and its ssh clients", lambda r: _cell(r, "cpu_here", _s))
    row("CPU on the 3 hosts: sshd, rsync, git, probes", lambda r: _cell(r, "cpu_hosts", _s))
    row(
        "bytes on the wire (loopback of the benchmark's netns)",
        lambda r: _cell(r, "wire_bytes", _b),
    )
    row(
        "TCP connections opened (SSH sessions, reachability connects)",
        lambda r: _cell(r, "tcp_connections", lambda v: f"{v:.0f}"),
    )
    row("bytes written on b (sizes of its files after)", lambda r: _cell(r, "bytes_on_b", _b))
    row(
        "copies with heads equal to the master's, every round",
        lambda r: " / ".join(f"{x['heads_equal']}/{x['copies']}" for x in r),
    )
    row(
        "masters untouched (checksum of every file before/after)",
        lambda r: "yes" if all(x["masters_untouched"] for x in r) else "**NO**",
    )
    rows.append(
        (
            "second run right after: wall (each @ load); what it did",
            [_second(methods[n], n) for n in names],
        )
    )
    out = ["| | " + " | ".join(heads.get(n, n) for n in names) + " |"]
    out.append("|---" * (len(names) + 1) + "|")
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(out)


def _second(runs: list[dict[str, Any]], name: str) -> str:
    seconds = [x["second"] for x in runs]
    cell = _cell(seconds, "wall", _s, True)
    wire = statistics.median(s["wire_bytes"] or 0 for s in seconds)
    if name != "loop":
        ok = all(s["exit"] == 0 and s["submitted"] == 0 and s["planned"] == 0 for s in seconds)
        did = "nothing: 0 copies planned or submitted" if ok else "**submitted copies**"
    else:
        did = f"{seconds[0]['submitted']} ssh + rsync again"
    return f"{cell}; {did}; {_b(wire)} on the wire"


# ---------------------------------------------------------------- main


def in_own_netns(argv: list[str]) -> int:
    """Run this script again in a network namespace of its own (loopback up): its lo counters
    then count this fleet's traffic and nothing else on the machine."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, NETNS_FLAG]
    inner = "ip link set lo up && exec " + shlex.join(cmd)
    return subprocess.call(["unshare", "--net", "--", "sh", "-c", inner])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--projects", type=int, default=60, help="copies to rebuild (default 60)")
    ap.add_argument("--saves", type=int, default=3, help="bup saves per project (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both methods (default 3)")
    ap.add_argument(
        "--parallel",
        default="1",
        help="rebuild --parallel, or a comma list (each value a column of its own; default 1)",
    )
    ap.add_argument(
        "--bystanders",
        type=int,
        default=0,
        help="projects mastered on b (replica on a), in step and left alone: a bigger host to "
        "probe (default 0)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where the fleet is built (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write every raw figure to this file")
    ap.add_argument(
        "--no-netns",
        action="store_true",
        help="stay in this network namespace (no byte counts on the wire)",
    )
    ap.add_argument(NETNS_FLAG, dest="in_netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("run as root: the sandbox fleet needs sshd and mount namespaces")
    if args.projects < 1 or args.rounds < 1 or args.saves < 1:
        ap.error("--projects, --rounds and --saves must be at least 1")
    try:
        args.parallel = [int(x) for x in str(args.parallel).split(",")]
    except ValueError:
        ap.error(f"--parallel {args.parallel!r} is not a number or a comma list of numbers")
    if not all(1 <= n <= 8 for n in args.parallel):
        ap.error("--parallel values must be 1 to 8 (rebuild's own bounds)")
    if not args.no_netns and not args.in_netns:
        return in_own_netns(sys.argv[1:])
    started = time.monotonic()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="bupwatch-rebuild-", dir=args.workdir))
    try:
        fleet_spec = spec(args.projects, args.saves, args.seed, args.bystanders)
        with SandboxFleet(tmp / "fleet", fleet_spec) as fleet:
            log(f"fleet of 3 hosts, {args.projects} projects built in {fleet.build_seconds:.0f} s")
            result = measure(fleet, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["elapsed_seconds"] = time.monotonic() - started
    result["commit"] = commit
    result["package"] = str(Path(bup_watchdog.__file__).parent)
    report(result, args)
    ok = all(
        r["heads_equal"] == r["copies"] and r["masters_untouched"] and not r["not_succeeded"]
        for runs in result["methods"].values()
        for r in runs
    )
    return 0 if ok else 1


def measure(fleet: SandboxFleet, args: argparse.Namespace) -> dict[str, Any]:
    config = fleet.config_path.with_name("config-bench.toml")
    config.write_text(fleet.config_path.read_text() + EXTRA)
    want = {p.project_id: head(fleet.repo_path(p.master, p.project_id)) for p in measured(fleet)}
    if any(v is None for v in want.values()):
        raise RuntimeError("a master copy has no readable refs/heads/master")
    masters = masters_digest(fleet)
    meter = Meter(fleet, netns=args.in_netns)
    methods: dict[str, list[dict[str, Any]]] = {f"rebuild-p{n}": [] for n in args.parallel}
    methods["loop"] = []
    order = list(methods)
    for r in range(args.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            empty_rebuilt(fleet)
            log(f"round {r + 1}/{args.rounds}: {name} of {args.projects} copies")
            if name.startswith("rebuild-p"):
                out = run_rebuild(fleet, config, meter, int(name.removeprefix("rebuild-p")))
            else:
                out = run_loop(fleet, meter)
            out.update(verify(fleet, {k: v for k, v in want.items() if v}, masters))
            out["round"] = r + 1
            methods[name].append(out)
            log(
                f"  {out['wall']:.1f} s wall, {out['succeeded']}/{out['submitted']} ok, heads "
                f"{out['heads_equal']}/{out['copies']}, second run {out['second']['wall']:.1f} s"
            )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "argv": sys.argv,
        "projects": args.projects,
        "saves": args.saves,
        "parallel": args.parallel,
        "netns": args.in_netns,
        "build_seconds": fleet.build_seconds,
        "bystanders": args.bystanders,
        "master_repo_bytes": sum(
            payload_bytes(fleet.repo_path(p.master, p.project_id)) for p in measured(fleet)
        ),
        "methods": methods,
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"rebuild of one host vs the per-project rsync loop, {result['date']}; checkout at "
        f"{result['commit']} when it started, package from {result['package']}"
    )
    print(f"machine: {result['machine']}; load average at the end {os.getloadavg()[0]:.1f}")
    print(
        f"fleet: 3 hosts, {result['projects']} projects with {result['saves']} bup saves each "
        f"(masters on a and c, {_b(result['master_repo_bytes'])} in all; replicas on b), built "
        f"in {result['build_seconds']:.0f} s; "
        + (
            f"b also masters {result['bystanders']} other projects (in step, left alone); "
            if result["bystanders"]
            else ""
        )
        + f"{args.rounds} rounds; run took {result['elapsed_seconds'] / 60:.1f} min"
    )
    print()
    print(table(result["methods"], result["projects"]))
    print()
    print(
        "What rebuild does that the loop does not: it plans from fresh facts (only missing or "
        "behind copies, most recently used first, with sizes) and submits each copy through the "
        "guard (modes, breaker, rate limits, a lease per target, a journal row each), refuses "
        "while a host's mounts are wrong, copies packs before indexes and moves the ref last "
        "(fast-forward only, never --delete), brings the live tree up behind the mount guard, "
        "keeps to a budget (--parallel, --bwlimit, --until), and a second run does nothing; the "
        "loop re-sends every project every time, leaves the live tree alone, and moves a replica "
        "that is ahead back to its master's ref."
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
