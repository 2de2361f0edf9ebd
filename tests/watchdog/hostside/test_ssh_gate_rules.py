"""bupwatch-ssh-gate's rules, without a host: hostile commands refused, the copies it carries
(mount guard, pinned programs, the uid formula) identical to the originals, the script's own
refusals logged, and the shipped sudoers example valid."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bup_watchdog import deploy
from bup_watchdog.config import SshConfig
from bup_watchdog.hostside import ssh_gate
from bup_watchdog.hostside.ssh_gate import Gate, Refused, UsageError, judge, parse_options
from bup_watchdog.model import Server, project_uid
from bup_watchdog.repairs import _copy as copy_lines
from bup_watchdog.repairs import (
    clean_repo,
    move_project,
    prune_repo,
    resync_replica,
    rotate_save_log,
)
from bup_watchdog.transport.ssh import SshTransport, remote_argv

GATE = Gate()
PID = "a4a71774-64be-477b-8e6d-cd80755840ca"
REPO = f"/bup/bups/{PID}"
SHA = "1" * 40
PROBE = ["python3", "-S", "-", "--bup-root", "/bup", "--projects-root", "/projects"]


def refused(argv: list[str], gate: Gate = GATE) -> str:
    with pytest.raises(Refused) as err:
        judge(argv, gate)
    return str(err.value)


def wrapped(argv: list[str], *, sudo: bool = False) -> list[str]:
    """As the SSH transport sends it, split again as the gate splits it."""
    return shlex.split(shlex.join(remote_argv(argv, 300.0, sudo=sudo)))


def test_the_probe_and_deep_probe_pass_as_the_transport_wraps_them() -> None:
    full = [*PROBE, "--fingerprint", "--racy-seconds", "2", "--owner-sample", "200"]
    full += ["--owner-sample-total", "50000", "--owner-sample-from", PID]
    allowed, wrapper, sudo = judge(wrapped(full), GATE)
    assert (allowed.kind, allowed.root, sudo) == ("probe", False, False)
    assert wrapper == ("timeout", "--kill-after=3", "301.000")
    assert allowed.argv == tuple(full)
    deep = ["python3", "-S", "-", "--bup-root", "/bup", "--timeout", "120", PID]
    assert judge(wrapped(deep), GATE)[0].kind == "deep probe"


def test_a_probe_with_extra_arguments_is_refused() -> None:
    assert "--evil" in refused([*PROBE, "--evil"])
    assert "not one the watchdog sends" in refused([*PROBE, "/etc"])
    assert "twice" in refused([*PROBE, "--fingerprint", "--fingerprint"])
    assert "must be /bup" in refused(["python3", "-S", "-", "--bup-root", "/", "--projects-root",
                                      "/projects"])  # fmt: skip
    assert refused([*PROBE, "--owner-sample-from", "../../etc"])


def test_a_repairs_probe_scoped_with_only_passes_and_only_takes_project_ids() -> None:
    other = "b4a71774-64be-477b-8e6d-cd80755840cb"
    scoped = [*PROBE, "--owner-sample-from", PID, "--only", PID, "--only", other]
    allowed, _wrapper, _sudo = judge(wrapped(scoped), GATE)
    assert (allowed.kind, allowed.argv) == ("probe", tuple(scoped))
    assert "version-4 UUID" in refused([*PROBE, "--only", "../../etc"])
    assert "version-4 UUID" in refused([*PROBE, "--only", PID.upper()])
    assert "version-4 UUID" in refused([*PROBE, "--only", "--fingerprint"])
    assert "not one the watchdog sends" in refused([*PROBE, "--only"])


def test_shell_metacharacters_never_reach_a_shell_they_only_make_words_that_do_not_match() -> None:
    for command in (
        "python3 -S - --bup-root /bup --projects-root /projects; cat /etc/shadow",
        "python3 -S - --bup-root /bup --projects-root /projects && id",
        "cat -- $(id)",
        "cat -- `id`",
        "mountpoint -q /projects | sh",
        f"find {REPO} -mindepth 1 -maxdepth 1 -type f ( -name x ) -print -delete > /etc/passwd",
    ):
        with pytest.raises(Refused):
            judge(shlex.split(command), GATE)


def test_a_sh_c_other_than_resync_replicas_mount_guard_is_refused() -> None:
    assert "mount guard" in refused(["sh", "-c", "id"])
    assert "mount guard" in refused(["timeout", "--kill-after=3", "5", "sh", "-c", "id"])
    guard = ["sh", "-c", ssh_gate.MOUNTED_GUARD, "resync-guard", "master", "/projects"]
    assert "only rsync" in refused([*guard, "sh", "-c", "id"])
    assert refused([*guard, "rsync", "--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "/etc/"])


def test_paths_with_dot_dot_or_outside_the_roots_are_refused() -> None:
    repack = ["repack", "-a", "-d", "-k", "-q"]
    assert refused(["git", f"--git-dir=/bup/bups/../../etc/{PID}", *repack])
    assert refused(["git", f"--git-dir={REPO}/..", *repack])
    assert refused(["bup", "-d", f"/etc/{PID}", "init"])
    assert refused(["python3", "-S", "-", f"{REPO}/../{PID}"])
    assert refused(["cat", "--", "/etc/shadow"])
    assert refused(["cat", "/etc/shadow"])
    live = f"/projects/../etc/{PID}"
    uid = project_uid(PID)
    assert refused(["find", live, "-xdev", "-path", f"{live}/.snapshots", "-prune", "-o", "!",
                    "-uid", str(uid), "-execdir", "chown", "--no-dereference", f"{uid}:{uid}", "{}",
                    "+"])  # fmt: skip


def test_ids_that_are_not_lower_case_version_4_uuids_are_refused() -> None:
    for bad in (str(uuid.uuid1()), PID.upper(), PID.replace("-4", "-1", 1), PID + "x", "0" * 36):
        assert "version-4" in refused(["bup", "-d", f"/bup/bups/{bad}", "init"]), bad
        assert refused(["python3", "-S", "-", "--bup-root", "/bup", "--timeout", "5", bad])


def test_a_trailing_newline_fails_every_id_and_number_check() -> None:
    """The checks match whole values (fullmatch): with ``re.match`` and ``$``, ``"…\\n"`` passed."""
    for check, good in (
        (ssh_gate._uuid, PID),
        (ssh_gate._sha, SHA),
        (lambda v: ssh_gate._number(v, "n"), "5"),
        (lambda v: ssh_gate._work(GATE, v), f"{REPO}.prune-new"),
    ):
        check(good)
        for bad in (good + "\n", good + "\r\n", "\n" + good):
            with pytest.raises(Refused):
                check(bad)
    for pattern in (ssh_gate._INT, ssh_gate._SAVE, ssh_gate._PERIOD, ssh_gate._STAMP):
        assert not pattern.fullmatch("1\n")


def test_a_newline_or_other_control_character_in_an_argument_is_refused() -> None:
    assert "control character" in refused([*PROBE[:-1], "/projects\n"])
    assert "control character" in refused(["cat", "--", "/bup/conf/bup_server.port\rx"])
    assert "control character" in refused(
        shlex.split("python3 -S - --bup-root /bup --projects-root '/projects\n--x'")
    )


WORK = f"{REPO}.prune-new"
KEEP = ["--keep-all-for", "7d", "--keep-dailies-for", "60d", "--keep-monthlies-for", "forever"]


def test_prune_repos_commands_pass_and_only_its_copy_is_pruned_or_collected() -> None:
    pretend = ["bup", "-d", REPO, "prune-older", "--unsafe", "--pretend", "--wrt", "1700000000"]
    no_gc = ["bup", "-d", WORK, "prune-older", "--unsafe", "--no-gc", "--wrt", "1700000000"]
    swap = ["python3", "-S", "-", "swap", REPO, WORK, f"{REPO}.pruned-20231114T221320Z", SHA,
            "1700600000"]  # fmt: skip
    shapes = {
        "prune_repo rev-parse": ["git", f"--git-dir={REPO}", "rev-parse", "--verify",
                                 "refs/heads/master"],
        "prune_repo prune-older --pretend": [*pretend, *KEEP, "master"],
        "prune_repo prune-older": [*no_gc, "--keep-yearlies-for", "forever", "master"],
        "prune_repo mkdir": ["mkdir", "--", WORK],
        "prune_repo copy": ["cp", "-a", "-T", "--reflink=auto", "--", REPO, WORK],
        "prune_repo gc": ["bup", "-d", WORK, "gc", "--unsafe"],
        "prune_repo fsck": ["git", f"--git-dir={WORK}", "fsck", "--connectivity-only",
                            "--no-dangling"],
        "bup ls": ["bup", "-d", WORK, "ls", "master"],
        "bup ls save": ["bup", "-d", REPO, "ls", "master/2023-11-14-221320"],
        "prune_repo swap": swap,
        "prune_repo discard": ["python3", "-S", "-", "discard", REPO, WORK],
    }  # fmt: skip
    for name, argv in shapes.items():
        allowed, _wrapper, sudo = judge(wrapped(argv, sudo=True), GATE)
        assert (allowed.kind, allowed.root, sudo) == (name, True, True), argv
    assert judge(["bup", "-d", WORK, "ls", "master/2023-11-14-221320-1"], GATE)[0].root
    assert judge(swap, GATE)[0].program == "prune_repo"
    other = f"/bup/bups/{uuid.uuid4()}"
    for bad in (
        [*pretend[:2], WORK, *pretend[3:], *KEEP, "master"],  # --pretend is for the repository
        [*no_gc[:2], REPO, *no_gc[3:], *KEEP, "master"],  # it never prunes the repository
        [*no_gc, "master"],  # no keep option: every save would go
        [*no_gc, "--keep-all-for", "7d", "--keep-all-for", "1d", "master"],
        [*no_gc, "--keep-dailies-for", "60d", "--keep-all-for", "7d", "master"],
        [*no_gc, "--keep-all-for", "7 days", "master"],
        [*no_gc, "--keep-all-for", "7d", "--keep-weeklies-for", "7d", "master"],
        [*no_gc, "--keep-all-for", "7d", "other-branch"],
        [*no_gc[:-1], "yesterday", "--keep-all-for", "7d", "master"],
        ["bup", "-d", REPO, "gc", "--unsafe"],
        ["bup", "-d", WORK, "init"],
        ["bup", "-d", f"{other}.prune-new", "ls", "master/../../etc"],
        ["bup", "-d", REPO, "ls", "master/latest/etc"],
        ["bup", "-d", f"{REPO}.prune-old", "ls", "master"],
        ["mkdir", "--", REPO],
        ["mkdir", "-p", WORK],
        ["cp", "-a", "-T", "--reflink=auto", "--", REPO, f"{other}.prune-new"],
        ["cp", "-a", "-T", "--reflink=auto", "--", "/etc", WORK],
        ["cp", "-a", "-T", "--", REPO, WORK, WORK],
        ["git", f"--git-dir={WORK}", "update-ref", "refs/heads/master", SHA],
        ["git", f"--git-dir={REPO}", "rev-parse", "--verify", "refs/heads/master", "--", "x"],
        [*swap[:6], f"{other}.pruned-20231114T221320Z", *swap[7:]],
        [*swap[:6], f"{REPO}.pruned-../../x", *swap[7:]],
        [*swap[:5], f"{other}.prune-new", *swap[6:]],
        [*swap[:-1], "soon"],
        [*swap, "extra"],
        ["python3", "-S", "-", "discard", REPO, REPO],
        ["python3", "-S", "-", "discard", REPO, f"{other}.prune-new"],
    ):
        assert refused(bad), bad


def test_chown_walk_must_name_the_projects_own_uid() -> None:
    live = f"/projects/{PID}"
    uid = project_uid(PID)
    argv = ["find", live, "-xdev", "-path", f"{live}/.snapshots", "-prune", "-o", "!", "-uid",
            str(uid), "-execdir", "chown", "--no-dereference", f"{uid}:{uid}", "{}",
            "+"]  # fmt: skip
    assert judge(argv, GATE)[0].kind == "chown_project"
    argv[-3] = "0:0"
    assert refused(argv)


def test_rsync_copies_refuse_delete_other_ssh_commands_and_mixed_up_paths() -> None:
    ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -p 22"
    head = ["rsync", "-a", "--numeric-ids", "--timeout=300"]
    src, dest = f"root@10.0.0.1:{REPO}/objects/", f"{REPO}/objects/"
    good = [*head, "--ignore-existing", *ssh_gate._OBJECT_EXCLUDES, "-e", ssh, src, dest]
    assert judge(good, GATE)[0].root
    assert refused([*head, "--delete", "--ignore-existing", *ssh_gate._OBJECT_EXCLUDES,
                    "-e", ssh, src, dest])  # fmt: skip
    assert "-e" in refused([*good[:-3], "sh -c id", src, dest])
    other = "e6a0f1d2-6c1b-4e2a-9d3b-3f1f3c9b2a10"
    assert "same part" in refused([*good[:-1], f"/bup/bups/{other}/objects/"])
    assert refused([*good[:-2], "root@10.0.0.1:/etc/", dest])
    assert refused([*good[:-1], "/etc/"])


def test_move_projects_live_proof_and_placement_writer_pass_and_nothing_looser_does() -> None:
    ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -p 22"
    sender = "--rsync-path=" + shlex.join(
        ["sh", "-c", ssh_gate.MOUNTED_GUARD, "resync-guard", "master", "/projects", "rsync"]
    )
    guard = ["sh", "-c", ssh_gate.MOUNTED_GUARD, "resync-guard", "replica", "/projects"]
    proof = ["rsync", "-a", "--numeric-ids", "--timeout=300", "--dry-run", "--checksum",
             "--itemize-changes", "--one-file-system", "--exclude=/.snapshots", sender,
             "-e", ssh, f"root@10.0.0.1:{PID}/", f"{PID}/"]  # fmt: skip
    allowed = judge([*guard, *proof], GATE)[0]
    assert allowed.kind == "mount guard (move_project live-tree proof (dry run))"
    assert refused([*guard, *proof[:4], "--checksum", *proof[6:]])  # no dry run: it would copy
    assert refused([*guard, *proof[:4], "--delete", *proof[4:]])
    peer = ["rsync", "--server", "--sender", "-nlogDtprcxe.iLsfxCIvu", "--numeric-ids", "."]
    assert judge([*guard[:4], "master", "/projects", *peer, f"{PID}/"], GATE)[0].peer

    write = ["python3", "-S", "-", f"{REPO}/conf/replicas.json"]
    placement = json.dumps([str(uuid.uuid4()), str(uuid.uuid4())])
    allowed = judge([*write, placement], GATE)[0]
    assert allowed.program == "move_project replicas.json" and allowed.root
    for bad in ("[", '"x"', "[]", '["not-an-id"]', json.dumps([PID, PID]), '[{"a": 1}]'):
        assert "placement" in refused([*write, bad])
    assert refused(["python3", "-S", "-", "/etc/conf/replicas.json", placement])


def test_an_rsync_sender_never_follows_symlinks_out_of_the_tree() -> None:
    sender = ["rsync", "--server", "--sender", "-logDtpre.iLsfxCIvu", "--numeric-ids", "."]
    assert judge([*sender, f"{REPO}/objects/"], GATE)[0].peer
    for flag in ("-logDtprLe.iLsfxCIvu", "-Llogtpr", "-logDtprk", "-logDtprK"):
        assert "not allowed" in refused([*sender[:3], flag, ".", f"{REPO}/objects/"])
    assert refused([*sender, "--copy-links", f"{REPO}/objects/"])
    assert "mount guard" in refused([*sender, f"{PID}/"])


def test_env_lets_only_the_committer_identity_through_to_git() -> None:
    ff = ["git", f"--git-dir={REPO}", "update-ref", "--create-reflog", "-m",
          "resync_replica from s1", "refs/heads/master", SHA, "0" * 40]  # fmt: skip
    env = ["env", "GIT_COMMITTER_NAME=bup-watchdog", "GIT_COMMITTER_EMAIL=bup-watchdog@localhost"]
    assert judge([*env, "GIT_COMMITTER_DATE=1700000000 +0000", *ff], GATE)[0].root
    assert refused(["env", "LD_PRELOAD=/tmp/x.so", *ff])
    assert refused([*env, "LD_PRELOAD=/tmp/x.so", *ff])
    assert refused([*env, "sh", "-c", "id"])


def test_sudo_in_front_of_a_read_only_program_is_dropped_not_obeyed() -> None:
    allowed, _wrapper, sudo = judge(wrapped(PROBE, sudo=True), GATE)
    assert sudo and not allowed.root, "main() runs the probe as the login user"
    allowed, _wrapper, sudo = judge(wrapped(["bup", "-d", REPO, "init"], sudo=True), GATE)
    assert sudo and allowed.root


def test_the_gates_copies_match_the_watchdogs_originals() -> None:
    assert ssh_gate.MOUNTED_GUARD == copy_lines.MOUNTED_GUARD
    programs = {
        "clean_repo busy scan": clean_repo.BUSY_SCAN,
        "resync_replica busy scan": resync_replica.BUSY_SCAN,
        "rotate_save_log": rotate_save_log.PROGRAM,
        "prune_repo": prune_repo.PROGRAM,
        "move_project replicas.json": move_project.WRITE_REPLICAS,
    }
    digests = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in programs.items()}
    assert digests == ssh_gate.PROGRAMS, f"update PROGRAMS in ssh_gate.py to {digests}"
    for _ in range(200):
        pid = str(uuid.uuid4())
        assert ssh_gate.project_uid(pid) == project_uid(pid)
    assert ssh_gate._OBJECT_EXCLUDES == copy_lines.OBJECT_EXCLUDES
    assert ssh_gate._PACKS_ONLY == copy_lines.PACKS_ONLY
    assert (ssh_gate.WORK_SUFFIX, ssh_gate.ASIDE_INFIX) == (
        prune_repo.WORK_SUFFIX,
        prune_repo.ASIDE_INFIX,
    )
    assert f"^({ssh_gate._PERIOD.pattern})$" == prune_repo._PERIOD  # pydantic's pattern
    assert ssh_gate._SAVE.pattern == prune_repo._SAVE.pattern


def run_gate(
    tmp_path: Path, command: str | None, *options: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "SSH_CONNECTION": "127.0.0.9 40000 127.0.0.1 22"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    log = tmp_path / "gate.log"
    return subprocess.run(
        [sys.executable, ssh_gate.__file__, "--log", str(log), *options],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=30,
    )


def test_the_script_refuses_with_status_126_says_why_and_logs_it(tmp_path: Path) -> None:
    for command in ("cat /etc/shadow", "sh -c 'id'", None, "python3 -S - --bup-root /bup"):
        proc = run_gate(tmp_path, command)
        assert proc.returncode == 126, proc
        assert proc.stderr.startswith(b"bupwatch-ssh-gate: refused: ")
        assert proc.stdout == b""
    log = (tmp_path / "gate.log").read_text()
    lines = log.splitlines()
    assert len(lines) == 4
    assert all(" refused from 127.0.0.9 " in line for line in lines)
    assert "command: cat /etc/shadow" in lines[0]
    assert "interactive logins are not allowed" in lines[2]


def test_the_script_execs_an_allowed_command_and_logs_it(tmp_path: Path) -> None:
    port = tmp_path / "bup" / "conf" / "bup_server.port"
    port.parent.mkdir(parents=True)
    port.write_text("6001\n")
    bup = str(tmp_path / "bup")
    command = shlex.join(remote_argv(["cat", "--", str(port)], 5.0))
    proc = run_gate(tmp_path, command, "--bup-root", bup)
    assert (proc.returncode, proc.stdout) == (0, b"6001\n"), proc.stderr
    assert "allowed from 127.0.0.9 uid 0: read port file: timeout" in (
        (tmp_path / "gate.log").read_text()
    )


def test_a_pinned_program_runs_only_when_stdin_is_that_program(tmp_path: Path) -> None:
    bup = tmp_path / "bup"
    repo = bup / "bups" / PID
    repo.mkdir(parents=True)
    command = shlex.join(["python3", "-S", "-", str(repo)])
    evil = b"import os; os.system('id')\n"
    proc = run_gate(tmp_path, command, "--bup-root", str(bup), stdin=evil)
    assert proc.returncode == 126 and b"is not the one this gate knows" in proc.stderr
    proc = run_gate(tmp_path, command, "--bup-root", str(bup), stdin=clean_repo.BUSY_SCAN.encode())
    assert proc.returncode == 0, proc.stderr  # no process works on the repository
    log = (tmp_path / "gate.log").read_text()
    assert "refused" in log.splitlines()[0] and "allowed" in log.splitlines()[1]


@pytest.mark.skipif(shutil.which("visudo") is None, reason="visudo (Debian package sudo) missing")
def test_the_shipped_sudoers_example_is_valid_and_names_only_the_gate() -> None:
    path = Path(deploy.__file__).parent / "sudoers.bupwatch"
    proc = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    gate = "/usr/local/sbin/bupwatch-ssh-gate --as-root *"
    assert any(line.endswith(f"= {gate}") for line in rules), "the gate with no options"
    assert rules[-1] == "bupwatch ALL=(root) NOPASSWD: BUPWATCH_GATE"


def test_the_gates_own_options_are_checked_and_given_on_word_for_word() -> None:
    restart = "/usr/local/bin/bup_server start --bup-root /srv/bup"
    argv = ["--bup-root", "/srv/bup", "--restart", restart, "--log", "/var/log/gate"]
    gate, log, options, as_root = ssh_gate.parse_options([*argv, "--as-root", "cat", "--", "x"])
    assert (gate.bup_root, gate.projects_root, log) == ("/srv/bup", "/projects", "/var/log/gate")
    assert gate.restart == (tuple(restart.split()),)
    assert (options, as_root) == (argv, ["cat", "--", "x"])
    for bad in (["--bup"], ["--bup-root"], ["--bup-root", "/a", "--bup-root", "/b"], ["x"]):
        with pytest.raises(ssh_gate.UsageError):
            ssh_gate.parse_options(bad)


def test_started_through_sudo_the_gate_judges_only_the_command_after_as_root(
    tmp_path: Path,
) -> None:
    port = tmp_path / "bup" / "conf" / "bup_server.port"
    port.parent.mkdir(parents=True)
    port.write_text("6002\n")
    bup = str(tmp_path / "bup")
    proc = run_gate(tmp_path, None, "--bup-root", bup, "--as-root", "cat", "--", str(port))
    assert (proc.returncode, proc.stdout) == (0, b"6002\n"), proc.stderr
    proc = run_gate(tmp_path, None, "--bup-root", bup, "--as-root", "sudo", "-n", "cat", "--",
                    str(port))  # fmt: skip
    assert proc.returncode == 126 and b"still asks for sudo" in proc.stderr
    env_sudo = subprocess.run(
        [sys.executable, ssh_gate.__file__, "--log", str(tmp_path / "gate.log")],
        env={"PATH": os.environ["PATH"], "SUDO_COMMAND": "/x", "SSH_ORIGINAL_COMMAND": "id"},
        capture_output=True,
    )
    assert env_sudo.returncode == 126 and b"through sudo without --as-root" in env_sudo.stderr


def test_the_watchdog_logs_in_as_bupwatch_and_sends_repairs_through_sudo_unless_root() -> None:
    assert SshConfig().user == "bupwatch"

    def sudo(user: str, setting: bool | None = None) -> bool:
        server = Server("s1", "127.0.0.1", 6000, ssh_host="127.0.0.1", ssh_user=user)
        return SshTransport(server, SshConfig(sudo=setting)).sudo

    assert (sudo("bupwatch"), sudo("root")) == (True, False)
    assert (sudo("bupwatch", False), sudo("root", True)) == (False, True)
    assert remote_argv(["cat", "--", "x"], 5.0, sudo=True)[:3] == ["sudo", "-n", "timeout"]


def test_an_archive_audit_reads_only_an_archive_root_the_gate_was_given() -> None:
    archive = Gate(archive_roots=("/srv/archive",))
    listing = ["python3", "-S", "-", "list", "/srv/archive"]
    check = ["python3", "-S", "-", "check", "/srv/archive", "600", PID, PID]
    for argv in (listing, check):
        allowed = judge(argv, archive)[0]
        assert allowed.kind.startswith("archive audit") and not allowed.root
        assert "--archive-root" in refused(argv)  # the default gate offers no archive
    assert refused([*listing[:4], "/srv/archive/../../etc"], archive)
    assert refused([*listing, "extra"], archive)
    assert "version-4 UUID" in refused([*check[:-1], "../x"], archive)
    assert "no project ids" in refused(check[:-2], archive)
    assert parse_options(["--archive-root", "/srv/archive"])[0].archive_roots == ("/srv/archive",)
    for bad in ("relative/dir", "/srv/../etc", "/"):
        with pytest.raises(UsageError, match="--archive-root"):
            parse_options(["--archive-root", bad])
