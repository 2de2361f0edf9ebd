"""The steps of a resync (and of a move's copy, which is a resync to the target): what is
copied, in which order, with which rsync options; the ref is moved last. Built from a Snapshot of
the facts the preconditions approved; resync_replica.py decides, checks and runs them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bup_watchdog.model import Project, Server
from bup_watchdog.repairs._copy import (
    OBJECT_EXCLUDES,
    PACKS_ONLY,
    git_argv,
    guarded,
    remote,
    repo_path,
)
from bup_watchdog.repairs.base import Step

if TYPE_CHECKING:
    from bup_watchdog.repairs.resync_replica import ResyncReplicaSettings

ZERO_SHA = "0" * 40


@dataclass(frozen=True, slots=True)
class ResyncStep(Step):
    """A step of this repair's plan; ``kind`` lets execute() pick the branch's steps."""

    kind: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the plan is built from: the facts the preconditions approved (or fresh ones)."""

    project: Project
    master: Server
    replica: Server
    new: str
    new_time: int | None
    old: str | None
    replica_repo_exists: bool
    master_live_exists: bool


def rsync_pull(
    settings: ResyncReplicaSettings, source: Server, src: str, dest: str, *opts: str
) -> list[str]:
    """rsync pulling ``src`` from ``source`` into local ``dest``; never ``--delete``."""
    ssh = (
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 "
        f"-p {source.ssh_port}"
    )
    argv = ["rsync", "-a", "--numeric-ids", f"--timeout={settings.rsync_io_timeout}"]
    if settings.bwlimit_kib:
        argv.append(f"--bwlimit={settings.bwlimit_kib}")
    return [*argv, *opts, "-e", ssh, remote(source, src), dest]


def resync_steps(s: Snapshot, settings: ResyncReplicaSettings) -> list[ResyncStep]:
    """The plan's steps for a snapshot: the copy, the live tree, the ref moved last (and the
    conflict branch's steps, marked 'conflict', which execute() runs only on a conflict)."""
    pid = s.project.project_id
    m, r = s.master, s.replica
    m_repo, r_repo = repo_path(m, pid), repo_path(r, pid)
    rid, mid = r.server_id, m.server_id
    t = settings.rsync_timeout
    tag = "refs/tags/conflict-master-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    old = s.old or ZERO_SHA
    steps: list[ResyncStep] = []

    def add(kind: str, where: str, argv: list[str] | tuple[str, ...], what: str) -> None:
        steps.append(ResyncStep(where, tuple(argv), what, timeout=t, kind=kind))

    if not s.replica_repo_exists:
        add(
            "init",
            rid,
            ("bup", "-d", r_repo, "init"),
            f"create the missing repository {r_repo} on {r.label}",
        )
    add(
        "packs",
        rid,
        rsync_pull(
            settings,
            m,
            f"{m_repo}/objects/",
            f"{r_repo}/objects/",
            "--ignore-existing",
            *OBJECT_EXCLUDES,
            *PACKS_ONLY,
        ),
        f"copy the master's .pack files that {r.label} lacks first, so an .idx never "
        "arrives without its .pack (immutable: no overwrite, no --delete)",
    )
    add(
        "objects",
        rid,
        rsync_pull(
            settings,
            m,
            f"{m_repo}/objects/",
            f"{r_repo}/objects/",
            "--ignore-existing",
            *OBJECT_EXCLUDES,
        ),
        f"copy the master's git objects that {r.label} lacks (immutable: no overwrite, "
        "no --delete)",
    )
    add(
        "complete",
        rid,
        git_argv(r_repo, "fsck", "--connectivity-only", "--no-dangling", s.new),
        f"prove the master's commit {s.new[:12]} is complete on {r.label}",
    )
    if s.old is not None:
        add(
            "ancestry",
            rid,
            git_argv(r_repo, "merge-base", "--is-ancestor", s.old, s.new),
            f"is the replica's {s.old[:12]} an ancestor of the master's {s.new[:12]}? "
            "(0: fast-forward; 1: conflict, the steps marked 'conflict' run and the repair "
            "stops)",
        )
        msg = f"resync_replica: conflict with master {mid} at {s.new}"
        add(
            "conflict_tag_replica",
            rid,
            git_argv(r_repo, "update-ref", "-m", msg, tag, s.old, ZERO_SHA),
            f"conflict: tag the replica's commit as {tag} on {r.label}",
        )
        add(
            "conflict_packs",
            mid,
            rsync_pull(
                settings,
                r,
                f"{r_repo}/objects/",
                f"{m_repo}/objects/",
                "--ignore-existing",
                *OBJECT_EXCLUDES,
                *PACKS_ONLY,
            ),
            f"conflict: copy the replica's .pack files that {m.label} lacks first",
        )
        add(
            "conflict_objects",
            mid,
            rsync_pull(
                settings,
                r,
                f"{r_repo}/objects/",
                f"{m_repo}/objects/",
                "--ignore-existing",
                *OBJECT_EXCLUDES,
            ),
            f"conflict: copy the replica's git objects that {m.label} lacks",
        )
        add(
            "conflict_complete",
            mid,
            git_argv(m_repo, "fsck", "--connectivity-only", "--no-dangling", s.old),
            f"conflict: prove the replica's commit {s.old[:12]} is complete on {m.label}",
        )
        add(
            "conflict_tag_master",
            mid,
            git_argv(m_repo, "update-ref", "-m", msg, tag, s.old, ZERO_SHA),
            f"conflict: tag the replica's commit as {tag} on {m.label}",
        )
        add(
            "conflict_recheck",
            mid,
            git_argv(m_repo, "fsck", "--connectivity-only", "--no-dangling", s.old),
            "conflict: prove it again under the tag (after a prune's swap between the proof "
            "and the tag, the replica's objects are copied again, proven and tagged)",
        )
    add(
        "conf",
        rid,
        rsync_pull(
            settings,
            m,
            f"{m_repo}/conf/",
            f"{r_repo}/conf/",
            "--update",
            "--exclude=/replicas.json",
        ),
        "copy conf/ files the replica lacks or has older (replicas.json aside)",
    )
    add(
        "replicas_json",
        rid,
        rsync_pull(
            settings,
            m,
            f"{m_repo}/conf/replicas.json",
            f"{r_repo}/conf/replicas.json",
            "--ignore-existing",
        ),
        "fill in conf/replicas.json if the replica has none (it agrees with the inventory)",
    )
    if s.master_live_exists:
        add(
            "mounted_replica",
            rid,
            ("mountpoint", "-q", r.projects_root),
            f"{r.projects_root} is still mounted on {r.label}",
        )
        add(
            "mounted_master",
            mid,
            ("mountpoint", "-q", m.projects_root),
            f"{m.projects_root} is still mounted on {m.label}",
        )
        # Both ends stand in their host's /projects, checked mounted in the same command
        # (the sender through --rsync-path, which the master's login shell runs); the paths
        # are relative to it, so neither end can reach the root disk's directory under it.
        sender = shlex.join(guarded("master", m.projects_root, "rsync"))
        add(
            "live",
            rid,
            guarded(
                "replica",
                r.projects_root,
                *rsync_pull(
                    settings,
                    m,
                    f"{pid}/",
                    f"{pid}/",
                    "--update",
                    "--one-file-system",
                    "--exclude=/.snapshots",
                    f"--rsync-path={sender}",
                ),
            ),
            "copy live files the replica lacks or has older (.snapshots skipped, no "
            f"--delete), only while {r.projects_root} on {r.label} and {m.projects_root} on "
            f"{m.label} are mounted (checked in the same command, which holds them busy)",
        )
    env = [
        "env",
        "GIT_COMMITTER_NAME=bup-watchdog",
        "GIT_COMMITTER_EMAIL=bup-watchdog@localhost",
    ]
    if s.new_time is not None:
        env.append(f"GIT_COMMITTER_DATE={s.new_time} +0000")
    add(
        "fast_forward",
        rid,
        env
        + list(
            git_argv(
                r_repo,
                "update-ref",
                "--create-reflog",
                "-m",
                f"resync_replica from {mid}",
                "refs/heads/master",
                s.new,
                old,
            )
        ),
        f"fast-forward {r.label}'s master {s.old[:12] if s.old else '(none)'} -> "
        f"{s.new[:12]} (compare-and-swap; last, so a failure above leaves it retryable)",
    )
    return steps


# -- execute -----------------------------------------------------------------------------
