"""Hostile things on the hosts and in the inventory and config: project directories that are not
UUIDs or are symlinks, ``save_log.json`` linked to ``/etc/shadow``, file names with newlines and
invalid UTF-8, storage roots and a state directory outside the allowed roots.

Allowed roots: a server's ``bup_root`` and ``projects_root`` (where repairs chown, rsync, rotate
and clean) and the watchdog's ``state.directory`` must be absolute, without ``..``, neither ``/``
nor a system tree (``/etc``, ``/usr``, ``/proc``, … — ``watchdog.model.SYSTEM_DIRS``), and the two
storage roots separate trees. Read-only files (known_hosts, keys, the token) may live anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import struct
import subprocess
import time
from pathlib import Path

from conftest import SCRATCH_P1

from bup_watchdog.checks import settings_models
from bup_watchdog.config_load import load_config
from bup_watchdog.inventory.file import FileInventory
from bup_watchdog.model import project_uid
from bup_watchdog.repairs.base import RepairRequest
from bup_watchdog.sandbox.fleet import SandboxFleet
from bup_watchdog.sweep import sweep
from faults.harness import CLI, AtStake, bup_ls
from faults.recorder import Reliability, short
from support.fleet import bup_save_on, git_out, make_guard

P = SCRATCH_P1
AUTO = "".join(
    f'[repairs.{r}]\nmode = "auto"\n'
    for r in ("chown_project", "rotate_save_log", "resync_replica")
)


def sweep_fleet(fleet: SandboxFleet):  # type: ignore[no-untyped-def]
    config = load_config(fleet.config_path, settings_models())
    assert config.inventory.file is not None
    return sweep(config, FileInventory(config.inventory.file).load())


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    """uid, gid and mode of every path under root (no symlink follow)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            st = Path(dirpath, name).lstat()
            out[os.path.relpath(Path(dirpath, name), root)] = (st.st_uid, st.st_gid, st.st_mode)
    return out


def test_project_dirs_that_are_not_uuids_or_are_symlinks_are_reported_and_never_followed(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    projects = fleet.hosts["s1"].projects_dir_outside
    canary = tmp_path / "outside-the-roots"  # what a chown or rsync through a symlink would hit
    (canary / "sub").mkdir(parents=True)
    (canary / "secret.txt").write_text("not the watchdog's\n")
    (canary / "sub" / "keys").write_text("nor this\n")
    before_owners = owners(canary)
    bup_save_on(fleet, "s1", P, int(time.time()), {"new.txt": "the replica lags\n"})
    (projects / "not-a-uuid").mkdir()
    (projects / "5c7a2f1e-1111-1c1d-9a0b-00000000000a").mkdir()  # a version-1 UUID
    (projects / "d1b8f6a0-2f3c-4d5e-8f90-a1b2c3d4e5f6").symlink_to(canary)  # unknown project
    (projects / "..%2f..%2fetc").mkdir()
    (projects / P).rename(projects / f"{P}.moved")
    (projects / P).symlink_to(canary)  # the real project's live dir replaced by a symlink
    stake = AtStake(fleet, {"canary": canary})

    result = sweep_fleet(fleet)
    guard = make_guard(fleet, AUTO)
    chown = guard.submit(RepairRequest("chown_project", fleet.server_id("s1"), P))
    resync = guard.submit(RepairRequest("resync_replica", fleet.server_id("s2"), P))
    guard.state.close()

    s1 = fleet.server_id("s1")
    assert result.facts[s1].probed, result.facts[s1].failure_message
    codes = {(f.check, f.code) for f in result.findings if f.server_id == s1}
    assert ("ownership", "symlink") in codes, codes
    assert chown.status == "refused" and "symlink" in chown.message, chown.message
    assert resync.status == "refused" and "symlink" in resync.message, resync.message
    assert owners(canary) == before_owners, "nothing changed through the symlink"
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    strays = len(result.facts[s1].strays)
    reliability.record(
        area="hostile",
        kind="input",
        count=5,
        what="project directories under /projects that are not UUIDs (a name, a version-1 UUID, "
        "`..%2f..%2fetc`) or symlinks (an unknown UUID and the real project's live dir, both "
        "pointing outside the roots)",
        expected="reported (strays, ownership/symlink), never followed: chown_project and "
        "resync_replica refused; the target outside untouched (owners and bytes)",
        observed=f"sweep ok, {strays} strays reported, ownership/symlink finding; chown "
        f"refused ({short(chown.message, 70)}); resync refused ({short(resync.message, 70)}); "
        "owners and modes outside unchanged",
        loss=lost,
    )


IN_OPEN, IN_ACCESS = 0x20, 0x01


class OpenWatch:
    """inotify on one file: counts every open or read of it, by any process."""

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, ctypes.get_errno()
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN | IN_ACCESS)
        assert wd >= 0, ctypes.get_errno()

    def events(self) -> int:
        n = 0
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return 0
        while data:
            _wd, _mask, _cookie, size = struct.unpack("iIII", data[:16])
            data = data[16 + size :]
            n += 1
        return n

    def close(self) -> None:
        os.close(self.fd)


def _stat(path: Path) -> tuple[int, int, int, str]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_save_log_linked_to_etc_shadow_is_reported_never_read_and_never_moved(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    """s1's save_log.json -> /etc/shadow (proved unchanged: inode, times, bytes; its content in no
    finding or journal row); s2's -> a decoy shadow file watched with inotify: no process may
    open it at all (sshd itself reads /etc/shadow at every login, so the decoy is the proof)."""
    fleet = scratch_fleet
    shadow = Path("/etc/shadow")
    decoy = tmp_path / "shadow-decoy"
    decoy.write_text("root:$6$decoy$DECOYHASHDECOYHASH:19000:0:99999:7:::\n")
    decoy.chmod(0o640)
    for host, target in (("s1", shadow), ("s2", decoy)):
        log = fleet.repo_path(host, P) / "conf" / "save_log.json"
        log.unlink()
        log.symlink_to(target)
    shadow_before, decoy_before = _stat(shadow), _stat(decoy)
    stake = AtStake(fleet)
    watch = OpenWatch(decoy)
    try:
        result = sweep_fleet(fleet)
        guard = make_guard(fleet, AUTO)
        rotations = [
            guard.submit(RepairRequest("rotate_save_log", fleet.server_id(h), P))
            for h in ("s1", "s2")
        ]
        state_bytes = guard.state.path.read_bytes()
        guard.state.close()
        opened = watch.events()
    finally:
        watch.close()

    symlinked = {
        f.server_id for f in result.findings if (f.check, f.code) == ("save_log_size", "symlink")
    }
    assert symlinked == {fleet.server_id("s1"), fleet.server_id("s2")}
    assert [r.status for r in rotations] == ["refused", "refused"], [r.message for r in rotations]
    assert all("symlink" in r.message for r in rotations)
    assert opened == 0, f"the decoy was opened or read {opened} times"
    assert _stat(shadow) == shadow_before and _stat(decoy) == decoy_before
    assert b"DECOYHASH" not in state_bytes and shadow.read_bytes()[:40] not in state_bytes
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="hostile",
        kind="input",
        count=2,
        what="conf/save_log.json a symlink to /etc/shadow (s1) and to a decoy shadow file (s2)",
        expected="save_log_size reports the symlink without following it; rotate_save_log "
        "refused; never read, never moved",
        observed="save_log_size/symlink on both hosts; rotate refused twice "
        f"({short(rotations[0].message, 70)}); decoy opened {opened} times (inotify); "
        "/etc/shadow inode, mtime, ctime and bytes unchanged; neither content in the state "
        "database",
        loss=lost,
    )


WEIRD = {
    "line\nbreak.txt": b"newline in the name\n",
    "tab\tand space .txt": b"tab\n",
    "-rf": b"an option-looking name\n",
    "$(touch CANARY)": b"a command-looking name\n",
    "sub\ndir/inner\nfile": b"newline in a directory name\n",
}
BAD_UTF8 = [b"bad-\xff\xfe-name.bin", b"latin1-caf\xe9.txt"]


def test_file_names_with_newlines_and_invalid_utf8_are_chowned_and_replicated_byte_for_byte(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    canary = tmp_path / "CANARY"
    live = fleet.hosts["s1"].projects_dir_outside / P
    names: list[bytes] = []
    for name, data in WEIRD.items():
        name = name.replace("CANARY", str(canary))
        path = live / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        names.append(os.fsencode(path.relative_to(live)))
    for raw in BAD_UTF8:
        (live / os.fsdecode(raw)).write_bytes(b"undecodable name\n")
        names.append(raw)
    for raw in names:
        os.chown(live / os.fsdecode(raw), 4242, 4242, follow_symlinks=False)  # a wrong owner
    bup_save_on(fleet, "s1", P, int(time.time()), {"marker.txt": "save with odd names\n"})
    old = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    stake = AtStake(fleet)

    result = sweep_fleet(fleet)
    guard = make_guard(fleet, AUTO)
    chown = guard.submit(RepairRequest("chown_project", fleet.server_id("s1"), P))
    resync = guard.submit(RepairRequest("resync_replica", fleet.server_id("s2"), P))
    guard.state.close()

    s1 = fleet.server_id("s1")
    assert result.facts[s1].probed, result.facts[s1].failure_message
    assert ("ownership", s1) in {(f.check, f.server_id) for f in result.findings}
    assert chown.status == "succeeded", chown.message
    assert resync.status == "succeeded", resync.message
    uid = project_uid(P)
    replica = fleet.hosts["s2"].projects_dir_outside / P
    for raw in names:
        name = os.fsdecode(raw)
        assert (live / name).lstat().st_uid == uid, f"{raw!r} not chowned"
        assert (replica / name).read_bytes() == (live / name).read_bytes(), f"{raw!r} not copied"
    assert not canary.exists(), "a file name reached a shell"
    assert bup_ls(fleet, "s2", P).returncode == 0
    new = git_out(fleet, "s2", P, "rev-parse", "refs/heads/master")
    git_out(fleet, "s2", P, "merge-base", "--is-ancestor", old, new)  # raises unless forward
    lost = stake.loss(moved=frozenset({f"s2:bups:{P}/refs/heads/master"}))
    assert lost.bytes_lost == 0, lost.lost
    reliability.record(
        area="hostile",
        kind="input",
        count=len(names),
        what="file names under /projects with newlines (in file and directory names), a tab, "
        "`-rf`, `$(touch …)` and invalid UTF-8 (\\xff\\xfe, Latin-1), owned by a wrong uid",
        expected="the probe reports them (no garbage, no crash); chown_project fixes their "
        "owner; resync_replica copies them byte for byte; no name reaches a shell",
        observed=f"sweep ok, ownership finding; chown {chown.status}; resync {resync.status}; "
        f"all {len(names)} names owned by {uid} and identical on the replica (its ref "
        "fast-forwarded, the old commit an ancestor: not counted as lost); canary absent",
        loss=lost,
    )


def test_storage_roots_and_a_state_directory_outside_the_allowed_roots_are_refused_at_load(
    scratch_fleet: SandboxFleet, reliability: Reliability, tmp_path: Path
) -> None:
    fleet = scratch_fleet
    stake = AtStake(fleet)
    inventory = fleet.inventory_path.read_text()
    bad_roots = [
        ('bup_root = "/bup"', 'bup_root = "/"'),
        ('projects_root = "/projects"', 'projects_root = "/etc"'),
        ('bup_root = "/bup"', 'bup_root = "/usr/lib/bup"'),
        ('projects_root = "/projects"', 'projects_root = "/proc/self/root"'),
        ('projects_root = "/projects"', 'projects_root = "/bup/bups"'),  # inside bup_root
        ('bup_root = "/bup"', 'bup_root = "/bup/../etc"'),
        ('bup_root = "/bup"', 'bup_root = "/bup;reboot"'),
    ]
    refusals: list[str] = []
    for old, new in bad_roots:
        assert old in inventory, old
        path = tmp_path / "inventory.toml"
        path.write_text(inventory.replace(old, new, 1))
        config = fleet.config_path.read_text().replace(
            'file = "inventory.toml"', f'file = "{path}"', 1
        )
        (tmp_path / "config.toml").write_text(config.replace(
            'directory = "state"', f'directory = "{tmp_path / "state"}"', 1
        ))  # fmt: skip
        proc = subprocess.run(
            [*CLI, "check", "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 3, (new, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "At 'servers[0]" in proc.stderr, (new, proc.stderr)
        refusals.append(proc.stderr.strip().splitlines()[-1].strip())
    for directory in ("/", "/etc", "/etc/../usr/share/bup-watchdog", "/run/bupwatch"):
        config = fleet.config_path.read_text().replace(
            'directory = "state"', f'directory = "{directory}"', 1
        )
        (tmp_path / "config.toml").write_text(config)
        proc = subprocess.run(
            [*CLI, "config", "check", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (directory, proc.stdout, proc.stderr)
        assert "At 'state.directory'" in proc.stdout + proc.stderr, (directory, proc.stdout)
        refusals.append((proc.stdout + proc.stderr).strip().splitlines()[-1].strip())
    lost = stake.loss()
    assert lost.bytes_lost == 0, lost.lost
    assert not (Path("/") / "state.db").exists() and not Path("/etc/state.db").exists()
    reliability.record(
        area="hostile",
        kind="input",
        count=len(refusals),
        what="an inventory whose storage roots leave the allowed roots (bup_root `/`, "
        "`/usr/lib/bup`, `/bup/../etc`, `/bup;reboot`; projects_root `/etc`, `/proc/self/root`, "
        "inside bup_root) and a config whose state.directory is `/`, `/etc`, `/usr/…`, `/run/…`",
        expected="refused when loaded, every problem named with its path; exit 3 for `check`, "
        "2 for `config check`; no host contacted, nothing written",
        observed=f"{len(refusals)} refusals, e.g. “{short(refusals[0], 110)}”, "
        f"“{short(refusals[-3], 90)}”",
        loss=lost,
    )
