"""The probe's host CPU per repository, in process, on copies of a real bup repository (issue 20).

A real bup repository (2 and ``--saves`` saves, conf/ as on a storage host) is copied
``--copies`` times into a ``bups`` directory; each version of the probe (``--code DIR``: a
checkout, e.g. a git worktree of an older commit; default: this one) is loaded from
``DIR/watchdog/probe.py`` and timed on the same copies, the versions interleaved round by round.
Figures are CPU time (``time.process_time``), median of ``--rounds``, per repository:

- ``sweep``: what a full sweep with fingerprints does per repository (``iter_records`` over the
  ``bups`` directory, every record encoded with ``WireEncoder``), less the same walk of an empty
  ``bups`` (hello, mounts, process facts);
- ``walk``: ``repo_facts`` alone (no fingerprint, no encoding);
- ``walk_fp``: ``repo_facts`` with the fingerprint a sweep takes for the next incremental one;
- ``fingerprint``: ``fingerprint`` alone, as a separate pass over the repository;
- ``unchanged``: ``_unchanged`` with the known fingerprint (an incremental sweep's check);
- ``incremental``: ``iter_records`` with every repository known and unchanged, less empty;
- ``floor_walk``: no probe, the least a full walk does in Python: every directory listed with
  ``scandir``, every other entry ``lstat``-ed (sizes and times), nothing else kept or read;
- ``floor_unchanged``: no probe, the least an unchanged check does in Python: the repository
  opened, then one ``lstat`` of every path the fingerprint covers, relative to it.

The two floors say what a faster probe could reach on this machine and kernel at best: a
figure below them needs fewer system calls, not leaner Python.

Each version's output lines for the repositories (full and incremental sweeps) are compared
byte for byte; when they differ the run says so, shows the first difference and exits 1.
``--strace`` also counts system calls per repository (``strace -f``, a sweep of all copies in a
fresh interpreter less a sweep of none).

    .venv/bin/python bench/probe_host.py --code /tmp/old-worktree --code .
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = (
    "sweep",
    "walk",
    "walk_fp",
    "fingerprint",
    "unchanged",
    "incremental",
    "floor_walk",
    "floor_unchanged",
)


def build(base: Path, saves: int, copies: int) -> Path:
    """``base/bups`` with ``copies`` copies of a real repository with ``saves`` saves (kept)."""
    from bench.real_repo import build_real_repo

    bups = base / "bups"
    if bups.is_dir() and len(os.listdir(bups)) == copies:
        return bups
    shutil.rmtree(base, ignore_errors=True)
    tpl = base / "template"
    build_real_repo(tpl, base / "data", saves)
    tmp = base / "bups.tmp"
    tmp.mkdir()
    rng = random.Random(saves)
    for _ in range(copies):
        pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        shutil.copytree(tpl, tmp / pid, symlinks=True)
    old = time.time() - 3600  # older than any racy window: every fingerprint is trusted
    for dirpath, dirnames, filenames in os.walk(tmp):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
    tmp.rename(bups)
    return bups


def load(code: Path, tag: str) -> ModuleType:
    """The probe of a checkout, as its own module (it imports nothing of ours)."""
    path = code / "watchdog" / "probe.py"
    spec = importlib.util.spec_from_file_location(f"probe_{tag}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_lines(probe: ModuleType, root: Path, known: dict[str, str] | None = None) -> list[str]:
    """Every output line of one walk of ``root/bups`` (no live directories)."""
    encode = probe.WireEncoder().line
    return [
        encode(rec)
        for rec in probe.iter_records(
            bup_root=str(root),
            projects_root=str(root / "none"),
            project_dirs=False,
            with_fingerprint=True,
            known=known,
        )
    ]


def comparable(lines: list[str]) -> list[str]:
    """The lines of the repositories (and ``unchanged``): ``hello``, ``mount``, ``process`` and
    ``done`` describe the machine (other people's ``bup_server`` processes come and go)."""
    return [
        line
        for line in lines
        if not line.startswith("{") or '"type": "unchanged"' in line or '"type": "stray"' in line
    ]


def cpu(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


class Case:
    """One repository shape: its copies, the empty root, the known state."""

    def __init__(self, saves: int, base: Path, copies: int) -> None:
        self.saves = saves
        self.root = base
        self.bups = build(base, saves, copies)
        self.empty = base / "empty"
        (self.empty / "bups").mkdir(parents=True, exist_ok=True)
        self.paths = sorted(str(p) for p in self.bups.iterdir())
        self.pairs = [(p, os.path.basename(p)) for p in self.paths]
        files = 0
        for _d, dirs, names in os.walk(self.paths[0]):
            files += len(names) + len(dirs)
        self.entries = files
        self.packs = len(list(Path(self.paths[0], "objects", "pack").glob("*.pack")))


def bare_walk(path: str) -> int:
    """Entries below ``path``, each directory listed, each other entry lstat-ed (floor_walk)."""
    stack, count = [path], 0
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat(follow_symlinks=False)
                    count += 1
    return count


def bare_lstats(path: str, rels: tuple[bytes, ...], flags: int) -> int:
    """The repository opened, then each of ``rels`` lstat-ed from it (``floor_unchanged``)."""
    fd = os.open(path, flags)
    found = 0
    try:
        os.fstat(fd)
        for rel in rels:
            try:
                os.stat(rel, dir_fd=fd, follow_symlinks=False)
                found += 1
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return found


def measure(probe: ModuleType, case: Case, mode: str) -> float:
    """CPU seconds per repository of one run of ``mode``."""
    n = len(case.pairs)
    if mode == "sweep":
        full = cpu(lambda: sweep_lines(probe, case.root))
        return (full - cpu(lambda: sweep_lines(probe, case.empty))) / n
    if mode == "incremental":
        known = {pid: probe.fingerprint(p)[0] for p, pid in case.pairs}
        full = cpu(lambda: sweep_lines(probe, case.root, known))
        return (full - cpu(lambda: sweep_lines(probe, case.empty, {}))) / n
    if mode == "walk":
        return cpu(lambda: [probe.repo_facts(p, i) for p, i in case.pairs]) / n
    if mode == "walk_fp":
        return (
            cpu(lambda: [probe.repo_facts(p, i, with_fingerprint=True) for p, i in case.pairs]) / n
        )
    if mode == "floor_walk":
        return cpu(lambda: [bare_walk(p) for p in case.paths]) / n
    if mode == "floor_unchanged":
        rels, flags = probe._FP_RELS, probe._FP_DIR_FLAGS
        return cpu(lambda: [bare_lstats(p, rels, flags) for p in case.paths]) / n
    if mode == "fingerprint":
        return cpu(lambda: [probe.fingerprint(p) for p in case.paths]) / n
    known_fp = [(p, probe.fingerprint(p)[0]) for p in case.paths]
    t = cpu(lambda: [probe._unchanged(p, k) for p, k in known_fp]) / n
    if not all(probe._unchanged(p, k) for p, k in known_fp):
        raise SystemExit("unchanged check said a repository changed")
    return t


STRACE_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
probe = importlib.util.module_from_spec(spec); spec.loader.exec_module(probe)
root, known = sys.argv[2], json.loads(open(sys.argv[3]).read()) if len(sys.argv) > 3 else None
enc = probe.WireEncoder().line
for rec in probe.iter_records(bup_root=root, projects_root=root + "/none", project_dirs=False,
                              with_fingerprint=True, known=known):
    enc(rec)
"""


def strace_calls(
    code: Path, root: Path, known: dict[str, str] | None, work: Path
) -> dict[str, int]:
    """System calls (by name) of one walk of ``root`` in a fresh interpreter (all of them)."""
    out = work / "strace.txt"
    argv = ["strace", "-f", "-qq", "-o", str(out), sys.executable, "-S", "-c", STRACE_CHILD]
    argv += [str(code / "watchdog" / "probe.py"), str(root)]
    if known is not None:
        (work / "known.json").write_text(json.dumps(known))
        argv.append(str(work / "known.json"))
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    counts: dict[str, int] = {}
    for line in out.read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2 or "(" not in parts[1] or parts[1].startswith(("+++", "---", "<...")):
            continue
        name = parts[1].split("(", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def strace_per_repo(
    probe: ModuleType, code: Path, case: Case, mode: str, work: Path
) -> dict[str, float]:
    """System calls per repository of a sweep (``mode``: full or incremental), by name."""
    known = (
        {pid: probe.fingerprint(p)[0] for p, pid in case.pairs} if mode == "incremental" else None
    )
    full = strace_calls(code, case.root, known, work)
    empty = strace_calls(code, case.empty, {} if known is not None else None, work)
    n = len(case.pairs)
    per = {k: (full.get(k, 0) - empty.get(k, 0)) / n for k in set(full) | set(empty)}
    per = {k: v for k, v in per.items() if abs(v) >= 0.05}
    per["total"] = sum(per.values())
    return per


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--code", type=Path, action="append", help="a checkout (repeatable; default .)")
    ap.add_argument("--saves", type=int, nargs="+", default=[2, 20], help="saves (2 20)")
    ap.add_argument("--copies", type=int, default=200, help="copies of each repository (200)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, medians taken (7)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--strace", action="store_true", help="also count system calls per repository")
    ap.add_argument(
        "--workdir", type=Path, help="where the copies are built and kept (default: a temp dir)"
    )
    ap.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = ap.parse_args()
    codes = [c.resolve() for c in (args.code or [ROOT])]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bupwatch-probe-host-"))
    work.mkdir(parents=True, exist_ok=True)
    probes = [load(c, str(i)) for i, c in enumerate(codes)]
    cases = [Case(s, work / f"real-{s}", args.copies) for s in args.saves]
    results: dict[str, Any] = {"codes": [str(c) for c in codes], "cases": {}}
    for case in cases:
        lines = [comparable(sweep_lines(p, case.root)) for p in probes]
        equal = all(x == lines[0] for x in lines)
        known = {pid: probes[0].fingerprint(p)[0] for p, pid in case.pairs}
        inc = [comparable(sweep_lines(p, case.root, known)) for p in probes]
        equal = equal and all(x == inc[0] for x in inc)
        first = next(
            (
                [x, y]
                for got in (lines, inc)
                for other in got[1:]
                for x, y in zip(got[0], other, strict=False)
                if x != y
            ),
            None,
        )
        runs: dict[tuple[int, str], list[float]] = {}
        for r in range(args.rounds):
            order = list(range(len(probes)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for mode in args.modes:
                for i in order:
                    runs.setdefault((i, mode), []).append(measure(probes[i], case, mode))
        res: dict[str, Any] = {
            "entries": case.entries,
            "packs": case.packs,
            "records_equal": equal,
            "first_difference": first,
            "by_code": [],
        }
        for i, code in enumerate(codes):
            row: dict[str, Any] = {"code": str(code)}
            for mode in args.modes:
                xs = runs[(i, mode)]
                row[mode] = {
                    "median_us": 1e6 * statistics.median(xs),
                    "runs_us": [1e6 * x for x in xs],
                }
            if args.strace:
                row["syscalls"] = {
                    m: strace_per_repo(probes[i], code, case, m, work)
                    for m in ("sweep", "incremental")
                }
            res["by_code"].append(row)
        results["cases"][str(case.saves)] = res
    load_avg = os.getloadavg()
    print(
        f"probe host CPU per repository ({args.copies} copies, median of {args.rounds} rounds, "
        f"load average {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f})"
    )
    head = "| repository | code | " + " | ".join(args.modes)
    if args.strace:
        head += " | syscalls: sweep | syscalls: incremental"
    print(head + " |")
    print("|" + "---|" * (2 + len(args.modes) + (2 if args.strace else 0)))
    for saves, res in results["cases"].items():
        for row in res["by_code"]:
            cells = [f"{row[m]['median_us']:.0f} µs" for m in args.modes]
            if args.strace:
                cells += [f"{row['syscalls'][m]['total']:.1f}" for m in ("sweep", "incremental")]
            name = f"{saves} saves ({res['entries']} entries, {res['packs']} packs)"
            print(f"| {name} | {Path(row['code']).name} | " + " | ".join(cells) + " |")
        if not res["records_equal"]:
            print(f"**records differ between the versions for {saves} saves**")
            print(f"first difference: {res['first_difference']}")
    if args.strace:
        for saves, res in results["cases"].items():
            for row in res["by_code"]:
                for m, per in row["syscalls"].items():
                    top = sorted(per.items(), key=lambda kv: -kv[1])
                    text = ", ".join(f"{k} {v:.1f}" for k, v in top)
                    print(f"{saves} saves, {Path(row['code']).name}, {m}: {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    same = all(r["records_equal"] for r in results["cases"].values())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
