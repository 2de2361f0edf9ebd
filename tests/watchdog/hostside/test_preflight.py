"""bupwatch-preflight, the boot gate: it and the mount_sanity check judge real mounts alike.

Each fault is built for real in a mount namespace of its own (``unshare --mount``: tmpfs, ramfs,
bind remounts), then both programs run in it the way they run on a host: the preflight as
systemd's ``ExecStartPre=`` runs it, the probe as the watchdog sends it, its records fed to the
check. Expected type and source are tmpfs and ``bw-projects``/``bw-bups``, as the sandbox does.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bup_watchdog.checks.mount_sanity import MountSanitySettings, check
from bup_watchdog.hostside import preflight
from bup_watchdog.model import Inventory, Server
from bup_watchdog.sandbox.fleet import namespaces_available
from bup_watchdog.sandbox.hosts import PYTHON
from support.facts import S1, host_facts

ROOT = Path(__file__).resolve().parents[3]
PREFLIGHT = ROOT / "watchdog" / "hostside" / "preflight.py"
PROBE = ROOT / "watchdog" / "probe.py"
DEPLOY = ROOT / "deploy"

SETTINGS = MountSanitySettings(
    projects_fstypes=["tmpfs"],
    projects_source="bw-projects",
    bups_fstypes=["tmpfs"],
    bups_source="bw-bups",
)
GATE_OPTIONS = [
    "--fstype=tmpfs",
    "--projects-source=bw-projects",
    "--bups-source=bw-bups",
]

needs_namespaces = pytest.mark.skipif(
    not namespaces_available(), reason="needs root and unshare --mount for real mount faults"
)

MP = "mount -t tmpfs bw-projects {P}"
MB = "mount -t tmpfs bw-bups {B}"


@dataclass(frozen=True)
class Fault:
    """Shell lines that build the fault (``{P}``, ``{B}``, ``{R}``: projects, bups, the root)."""

    setup: tuple[str, ...]
    expected: tuple[tuple[str, str], ...]  # (P or B, code) the check must find
    projects: str = "projects"  # under the root


FAULTS = {
    "both are their own mounts as expected": Fault((MP, MB), ()),
    "projects not mounted (the boot race)": Fault((MB,), (("P", "not_mounted"),)),
    "bups not mounted": Fault((MP,), (("B", "not_mounted"),)),
    "projects inside a good mount but not one itself": Fault(
        ("mkdir {R}/outer", "mount -t tmpfs bw-projects {R}/outer", "mkdir {P}", MB),
        (("P", "not_mounted"),),
        projects="outer/projects",
    ),
    "projects missing": Fault(("rmdir {P}", MB), (("P", "missing"),)),
    "projects of the wrong filesystem type": Fault(
        ("mount -t ramfs bw-projects {P}", MB), (("P", "wrong_fstype"),)
    ),
    "projects from the wrong source": Fault(
        ("mount -t tmpfs elsewhere {P}", MB), (("P", "wrong_source"),)
    ),
    "projects a read-only filesystem": Fault(
        ("mount -t tmpfs -o ro bw-projects {P}", MB), (("P", "read_only"),)
    ),
    "bups a read-only bind remount of a writable filesystem": Fault(
        (MP, MB, "mount -o remount,bind,ro {B}"), (("B", "read_only"),)
    ),
    "a wrong mount stacked over the right one": Fault(
        (MP, "mount -t tmpfs elsewhere {P}", MB), (("P", "wrong_source"),)
    ),
    "everything wrong at once": Fault(
        ("mount -t ramfs -o ro elsewhere {P}", "rmdir {B}"),
        (("P", "wrong_fstype"), ("P", "wrong_source"), ("P", "read_only"), ("B", "missing")),
    ),
}


@dataclass(frozen=True)
class Judged:
    gate_status: int
    gate_stdout: str
    gate_stderr: str
    findings: list[tuple[str, str, str]]  # (P or B, code, message)


def judge_both(root: Path, fault: Fault) -> Judged:
    """Build the fault in a new mount namespace; run the preflight and the probe in it."""
    projects, bups = root / fault.projects, root / "bup" / "bups"
    (root / "projects").mkdir()
    bups.mkdir(parents=True)
    out = root / "out"
    out.mkdir()
    q = {"P": shlex.quote(str(projects)), "B": shlex.quote(str(bups)), "R": str(root)}
    gate = [PYTHON, "-S", str(PREFLIGHT), f"--projects={projects}", f"--bups={bups}"]
    probe = [PYTHON, "-S", str(PROBE), "--bup-root", str(root / "bup")]
    probe += ["--projects-root", str(projects), "--no-project-dirs"]
    script = [
        "set -e",
        *(line.format(**q) for line in fault.setup),
        f"rc=0; {shlex.join(gate + GATE_OPTIONS)} >{out}/gate.out 2>{out}/gate.err || rc=$?",
        f"echo $rc >{out}/gate.rc",
        f"{shlex.join(probe)} >{out}/probe.out",
    ]
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)],
        check=True,
        timeout=60,
    )
    server = Server(S1, "127.0.0.1", 6000, bup_root=str(root / "bup"), projects_root=str(projects))
    records = [json.loads(line) for line in (out / "probe.out").read_text().splitlines()]
    facts = {S1: host_facts(S1, records)}
    found = check.evaluate(facts, Inventory(servers={S1: server}, projects={}), SETTINGS)
    label = {str(projects): "P", str(bups): "B"}
    return Judged(
        int((out / "gate.rc").read_text()),
        (out / "gate.out").read_text(),
        (out / "gate.err").read_text(),
        [(label[f.details["path"]], f.code, f.message) for f in found],
    )


@needs_namespaces
@pytest.mark.parametrize("name", list(FAULTS))
def test_the_preflight_and_mount_sanity_judge_each_real_mount_fault_alike(
    name: str, tmp_path: Path
) -> None:
    fault = FAULTS[name]

    judged = judge_both(tmp_path, fault)

    assert [(where, code) for where, code, _ in judged.findings] == list(fault.expected)
    if not fault.expected:
        assert judged.gate_status == 0, judged.gate_stderr
        assert judged.gate_stderr == ""
        assert judged.gate_stdout.startswith("bupwatch-preflight: ok: ")
        assert judged.gate_stdout.count("\n") == 1
        return
    assert judged.gate_status == 1
    assert judged.gate_stdout == ""
    # One line, and the very sentences of the check's findings: the same rules on the same facts.
    messages = "; ".join(message for _, _, message in judged.findings)
    assert judged.gate_stderr == f"bupwatch-preflight: refusing: {messages}\n"


def test_the_preflights_defaults_are_mount_sanitys_defaults() -> None:
    args = preflight.parser().parse_args([])
    defaults = MountSanitySettings()

    assert (args.projects, args.bups) == ("/projects", "/bup/bups")
    assert preflight._types(args.fstype) == defaults.projects_fstypes == defaults.bups_fstypes
    assert (args.projects_source, args.bups_source) == (
        defaults.projects_source,
        defaults.bups_source,
    )


def test_an_unreadable_mount_table_is_a_refusal(tmp_path: Path) -> None:
    args = preflight.parser().parse_args([])

    problems = preflight.judge(args, mountinfo=str(tmp_path / "no-mountinfo"))

    assert [code for code, _ in problems] == ["no_mount_table"]
    assert "cannot read" in problems[0][1]


def test_help_names_every_option_and_exits_zero() -> None:
    done = subprocess.run(
        [PYTHON, "-S", str(PREFLIGHT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    for option in ("--projects", "--bups", "--fstype", "--projects-source", "--bups-source"):
        assert option in done.stdout


@pytest.mark.parametrize(
    "dropin", ["bup_server.service.d-preflight.conf", "vpn.service.d-preflight.conf"]
)
def test_each_systemd_drop_in_runs_the_installed_gate_with_mount_sanitys_defaults(
    dropin: str,
) -> None:
    text = (DEPLOY / dropin).read_text()
    [line] = re.findall(r"^ExecStartPre=(.*)$", text, flags=re.M)
    argv = shlex.split(line.lstrip("+-@:!"))

    assert argv[0] == "/usr/local/sbin/bupwatch-preflight"
    args = preflight.parser().parse_args(argv[1:])
    defaults = MountSanitySettings()
    assert (args.projects, args.bups) == ("/projects", "/bup/bups")
    assert preflight._types(args.fstype) == defaults.projects_fstypes
    assert args.projects_fstype is None and args.bups_fstype is None
    assert (args.projects_source, args.bups_source) == ("bup/projects", "bup/bups")
    assert "[Service]" in text
