"""Audit an offline archive of bup repositories: the deep tier over each one, resumable, reported.

An archive (an offsite or cold copy of ``/bup/bups``) is in no inventory, so no sweep ever looks at
it. ``bup-watchdog archive audit PATH|HOST:PATH`` lists it, takes every directory named by a
version-4 UUID (anything else is listed as skipped, never checked), and runs the same deep check as
the sweep's deep pass (``deep_probe.check_repo``: ``git fsck --connectivity-only`` + ``bup ls
master``, sent to ``python3 -S -``) on ``--jobs`` repositories at once. Each result is appended to
a journal file as it comes, so an interrupted audit resumes where it stopped. Given the inventory,
each archived copy's newest save is compared with its master's (the database's ``bup_last_save``,
or with ``--fresh`` the master host probed now): how far the offsite copy lags.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bup_watchdog.config import Config
from bup_watchdog.deep import deep_probe_source, deep_records
from bup_watchdog.errors import ProbeError, WatchdogError
from bup_watchdog.model import Inventory, Server, is_v4_uuid
from bup_watchdog.report import parse_duration as report_duration
from bup_watchdog.transport.base import Transport

log = logging.getLogger(__name__)

FORMATS = ("html", "md", "json")
JOURNAL_VERSION = 1
_V4_LOWER = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# Runs on the archive's host under ``python3 -S -``: the deep probe's own source is executed as a
# module (so its ``main`` does not run) and its ``check_repo`` is called on the archive's
# directory, plus the archived copy's newest save (master commit time; the reflog when the commit
# cannot be read). Stdlib only, like the probe.
_DRIVER = r"""
import json, os, subprocess, sys, types
_m = types.ModuleType("bupwatch_deep_probe")
exec(compile(_SOURCE, "deep_probe.py", "exec"), _m.__dict__)

def _error_lines(data, keep=4, width=300):
    # What is wrong, not only the last line the sweep's deep pass keeps: git fsck's error lines
    # ("missing tree …", "error: …"), a traceback's last line, or the last line.
    lines = [l.strip() for l in data.decode("utf-8", "replace").splitlines() if l.strip()]
    if not lines:
        return ""
    if any(l.startswith("Traceback") for l in lines):
        return lines[-1][-width:]
    picked = [l for l in lines if not l.startswith(("notice:", "Checking ", "warning:"))]
    picked = list(dict.fromkeys(picked))  # refs/heads/master and HEAD repeat the same line
    picked = picked or lines[-1:]
    more = len(picked) - keep
    text = " | ".join(l[:width] for l in picked[:keep])
    return text + (" | (%d more lines)" % more if more > 0 else "")

_m._tail = _error_lines

def _emit(rec):
    sys.stdout.write(json.dumps(rec, sort_keys=True) + "\n")
    sys.stdout.flush()

def _clean(name):
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

def _newest(repo, timeout):
    try:
        out = subprocess.run(
            ["git", "--git-dir=" + repo, "log", "-1", "--format=%ct", "refs/heads/master"],
            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                 "HOME": "/nonexistent"},
        )
        if out.returncode == 0 and out.stdout.strip().isdigit():
            return int(out.stdout.strip()), "commit"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        with open(os.path.join(repo, "logs", "refs", "heads", "master"), "rb") as f:
            last = [l for l in f.read().splitlines() if l.strip()][-1]
        return int(last.split(b"\t")[0].rsplit(b" ", 2)[1]), "reflog"
    except (OSError, IndexError, ValueError):
        return None, None

def _main(argv):
    mode, root = argv[0], argv[1]
    if mode == "list":
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            kind = ("symlink" if os.path.islink(p) else "dir" if os.path.isdir(p)
                    else "file" if os.path.isfile(p) else "other")
            _emit({"type": "entry", "name": _clean(name), "kind": kind})
    else:
        timeout = float(argv[2])
        for pid in argv[3:]:
            rec = _m.check_repo(root, pid, timeout)
            if rec["master_sha"]:
                rec["newest_save"], rec["newest_save_from"] = _newest(
                    os.path.join(root, pid), timeout)
            _emit(rec)
    _emit({"type": "done"})

_main(sys.argv[1:])
"""


def archive_program() -> bytes:
    """The program sent to the archive's host: the deep probe's source and the driver above."""
    source = deep_probe_source().decode("utf-8")
    return f"_SOURCE = {source!r}\n{_DRIVER}".encode()


class ArchiveUsageError(WatchdogError):
    """The command line names something that cannot be audited (exit 2)."""

    permanent = True


def parse_duration(text: str) -> float:
    """Seconds in '90', '30m', '48h', '7d', '2w'; ArchiveUsageError (exit 2) otherwise."""
    try:
        return report_duration(text, allow_zero=True)
    except ValueError:
        raise ArchiveUsageError(
            f"{text!r} is not a duration (examples: 90s, 30m, 48h, 7d, 2w)"
        ) from None


# ---------------------------------------------------------------- where the archive is


@dataclass(frozen=True, slots=True)
class ArchiveTarget:
    """The archive: a directory here (``server`` None) or on a host reached over SSH."""

    path: str
    server: Server | None = None

    @property
    def label(self) -> str:
        return f"{self.server.label}:{self.path}" if self.server else self.path

    @property
    def key(self) -> str:
        """What names this archive in its journal: the host's id (or address) and the path."""
        where = self.server.server_id if self.server else "local"
        return f"{where}:{self.path}"


def parse_target(spec: str, inventory: Inventory | None, ssh_user: str) -> ArchiveTarget:
    """``PATH`` (local) or ``HOST:PATH`` as scp reads it (a ':' before any '/'); HOST is an
    inventory server's name or id, or ``[USER@]ADDRESS`` reached with the config's [ssh]."""
    host, sep, rest = spec.partition(":")
    if not sep or "/" in host or not host:
        local = Path(spec).expanduser().resolve()
        if not local.is_dir():
            raise ArchiveUsageError(f"{spec}: no such directory")
        return ArchiveTarget(str(local))
    if not rest.startswith("/"):
        raise ArchiveUsageError(f"{spec}: the path on {host} must be absolute")
    path = os.path.normpath(rest)
    servers = inventory.servers if inventory is not None else {}
    for server in servers.values():
        if host in (server.name, server.server_id):
            return ArchiveTarget(path, server)
    user, _, address = host.rpartition("@")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*|\[?[0-9A-Fa-f:.]+\]?", address):
        raise ArchiveUsageError(
            f"{spec}: {address!r} is neither a server of the inventory nor a host name or address"
        )
    if user and not re.fullmatch(r"[a-z_][a-z0-9_.-]*", user):
        raise ArchiveUsageError(f"{spec}: {user!r} is not a user name")
    server = Server(
        server_id=address,
        host=address,
        port=0,
        ssh_host=address.strip("[]"),
        ssh_user=user or ssh_user,
        name=address,
    )
    return ArchiveTarget(path, server)


# ---------------------------------------------------------------- results and the journal


@dataclass(frozen=True, slots=True)
class RepoAudit:
    """The deep check of one archived repository."""

    project_id: str
    ok: bool
    checked_at: float
    message: str | None = None
    master_sha: str | None = None
    newest_save: float | None = None
    fsck_rc: int | None = None
    bup_rc: int | None = None
    seconds: float = 0.0


def parse_audit_lines(lines: Iterable[bytes], now: float) -> list[RepoAudit]:
    """Results from the archive program's JSON lines; garbage or a cut-off output raise."""
    out: list[RepoAudit] = []
    for pid, ok, rec in deep_records(lines, "the archive check", others_allowed=False):

        def num(key: str, rec: dict[str, Any] = rec) -> Any:
            value = rec.get(key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        out.append(
            RepoAudit(
                project_id=pid,
                ok=ok,
                checked_at=now,
                message=rec["message"] if isinstance(rec.get("message"), str) else None,
                master_sha=rec["master_sha"] if isinstance(rec.get("master_sha"), str) else None,
                newest_save=num("newest_save"),
                fsck_rc=num("fsck_rc"),
                bup_rc=num("bup_rc"),
                seconds=num("seconds") or 0.0,
            )
        )
    return out


def default_state_file(config: Config, target: ArchiveTarget) -> Path:
    """The journal of an archive's audits in the state directory, one file per archive."""
    digest = hashlib.sha256(target.key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", target.label).strip("-")[-40:]
    return config.state.directory / "archive-audits" / f"{slug}-{digest}.jsonl"


class AuditJournal:
    """Results appended one JSON line at a time (flushed and synced), so a killed audit loses at
    most the repositories it was checking; an exclusive lock keeps two audits of it apart."""

    def __init__(self, path: Path, target: ArchiveTarget, *, restart: bool) -> None:
        self.path = path
        self.target = target
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise WatchdogError(
                f"cannot open the audit's state file {path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise WatchdogError(
                f"another audit of this archive is running (its state file {path} is locked)"
            ) from None
        self.done = {} if restart else self._read()
        if restart or not self.done:
            self._file.truncate(0)
            self._append(
                {"type": "archive_audit", "version": JOURNAL_VERSION, "target": target.key}
            )

    def _read(self) -> dict[str, RepoAudit]:
        self._file.seek(0)
        done: dict[str, RepoAudit] = {}
        for n, line in enumerate(self._file, start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the line being written when an audit was killed
            if n == 1 and rec.get("target") != self.target.key:
                raise ArchiveUsageError(
                    f"the state file {self.path} belongs to the audit of {rec.get('target')!r}, "
                    f"not {self.target.key!r}: name another --state or use --restart"
                )
            if rec.get("type") == "repo":
                rec.pop("type")
                try:
                    audit = RepoAudit(**rec)
                except TypeError:
                    continue
                done[audit.project_id] = audit
        return done

    def _append(self, rec: dict[str, Any]) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(json.dumps(rec, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def record(self, audit: RepoAudit) -> None:
        with self._lock:
            self._append({"type": "repo", **asdict(audit)})
            self.done[audit.project_id] = audit

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------- listing and checking


@dataclass(frozen=True, slots=True)
class Listing:
    """The archive's entries: repositories to check, and the rest with why they are skipped."""

    repos: list[str]
    skipped: list[tuple[str, str]]


def classify(entries: Iterable[tuple[str, str]]) -> Listing:
    """Only directories named by a lower-case v4 UUID are repositories; a symlink never is."""
    repos: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, kind in entries:
        if not _V4_LOWER.fullmatch(name):
            why = "upper-case project id" if is_v4_uuid(name) else "not a version-4 UUID"
            skipped.append((name, why))
        elif kind != "dir":
            skipped.append((name, f"a {kind}, not a repository directory"))
        else:
            repos.append(name)
    return Listing(repos, skipped)


def list_archive(transport: Transport, target: ArchiveTarget, python: str) -> Listing:
    lines = transport.stream_lines(
        [python, "-S", "-", "list", target.path], stdin=archive_program(), timeout=120
    )
    entries: list[tuple[str, str]] = []
    done = False
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            raise ProbeError(f"{target.label}: the archive listing is not JSON") from None
        if rec.get("type") == "done":
            done = True
        elif rec.get("type") == "entry":
            entries.append((str(rec.get("name")), str(rec.get("kind"))))
    if not done:
        raise ProbeError(f"{target.label}: the archive listing stopped before its end")
    return classify(entries)


def check_one(
    transport: Transport, target: ArchiveTarget, python: str, pid: str, timeout: float
) -> RepoAudit:
    """Deep-check one archived repository, a command of its own: its result is journaled at once."""
    if not _V4_LOWER.fullmatch(pid):
        raise ValueError(f"refusing to check {pid!r}: not a project id")
    argv = [python, "-S", "-", "check", target.path, f"{timeout:g}", pid]
    lines = transport.stream_lines(argv, stdin=archive_program(), timeout=2 * timeout + 30)
    [audit] = parse_audit_lines(lines, time.time())
    return audit


# ---------------------------------------------------------------- how far each copy lags


@dataclass(frozen=True, slots=True)
class Lag:
    """An archived copy's newest save against its master's."""

    project_id: str
    master: str
    archive_save: float | None
    master_save: float | None
    source: str
    lag_seconds: float | None
    status: str  # in_step | behind | stale | ahead | unknown | broken


def master_saves(
    inventory: Inventory, ids: Iterable[str], config: Config | None, fresh: bool
) -> dict[str, tuple[float | None, str | None, str]]:
    """Per project: the master's newest save, its master sha when probed, and where that came
    from. The database's ``bup_last_save``; with ``fresh``, the master host's reflog now."""
    out: dict[str, tuple[float | None, str | None, str]] = {}
    wanted = {pid: inventory.projects[pid] for pid in ids if pid in inventory.projects}
    for pid, project in wanted.items():
        when = project.bup_last_save.get(project.master)
        out[pid] = (when.timestamp() if when else None, None, "database")
    if fresh and config is not None and wanted:
        from bup_watchdog.gather import gather

        masters = {p.master for p in wanted.values()}
        servers = [inventory.servers[s] for s in masters if s in inventory.servers]
        for facts in gather(servers, config.ssh, live_dirs=False):
            if not facts.probed:
                log.warning(
                    "archive audit: master host %s not probed (%s); using the database's view",
                    facts.server_id,
                    facts.failure_message,
                )
                continue
            for pid, project in wanted.items():
                repo = facts.repos.get(pid) if project.master == facts.server_id else None
                if repo is not None:
                    newest = repo.reflog_last_time
                    out[pid] = (float(newest) if newest else None, repo.master_sha, "master probed")
    return out


def lags(
    audits: dict[str, RepoAudit],
    inventory: Inventory,
    masters: dict[str, tuple[float | None, str | None, str]],
    max_lag: float,
) -> list[Lag]:
    """How far each archived copy of an inventory project is behind its master."""
    out: list[Lag] = []
    for pid, audit in sorted(audits.items()):
        project = inventory.projects.get(pid)
        if project is None:
            continue
        server = inventory.servers.get(project.master)
        master_name = server.label if server else project.master
        m_save, m_sha, source = masters.get(pid, (None, None, "database"))
        a_save = audit.newest_save
        lag: float | None
        if m_sha is not None and audit.master_sha == m_sha:
            lag, status = 0.0, "in_step"
        elif m_save is None or a_save is None:
            lag, status = None, "unknown"
        else:
            lag = m_save - a_save
            status = (
                "stale"
                if lag > max_lag
                else "behind"
                if lag > 0
                else "ahead"
                if lag < 0
                else "in_step"
            )
        if not audit.ok:
            status = "broken"  # its newest save may be listed but cannot be read
        out.append(Lag(pid, master_name, a_save, m_save, source, lag, status))
    return out


# ---------------------------------------------------------------- progress


class Progress:
    """Progress on stderr: a rich bar on a terminal, else one line per repository."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self.total = total
        self.done = 0
        self.label = label
        self._bar: Any = None
        if self.console.is_terminal and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("[bold]auditing[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def repo_done(self, audit: RepoAudit | None, pid: str, error: str | None = None) -> None:
        from rich.markup import escape

        self.done += 1
        if audit is None:
            what = f"NOT CHECKED: {error}"
        else:
            what = "ok" if audit.ok else f"BROKEN: {audit.message}"
            what += f" ({audit.seconds:.2f} s)"
        if self._bar is not None:
            if audit is None or not audit.ok:
                self._bar.console.print(f"[red]✗[/] {pid}: {escape(what)}", highlight=False)
            self._bar.update(self._task, advance=1)
        else:
            print(f"archive audit: [{self.done}/{self.total}] {pid}: {what}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """What ``archive audit`` was asked."""

    jobs: int = 2
    state_file: Path | None = None
    restart: bool = False
    fmt: str = "html"
    output: str | None = None
    max_lag: float = 48 * 3600.0
    budget: float | None = None
    fresh: bool = False


@dataclass
class AuditRun:
    """One audit's outcome: everything the report and the exit code need."""

    target: ArchiveTarget
    state_file: Path
    started: float
    finished: float = 0.0
    listing: Listing = field(default_factory=lambda: Listing([], []))
    audits: dict[str, RepoAudit] = field(default_factory=dict)
    resumed: int = 0
    checked_now: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    lags: list[Lag] = field(default_factory=list)
    inventory_note: str | None = None
    stopped: str | None = None

    @property
    def broken(self) -> list[RepoAudit]:
        return [a for a in self.audits.values() if not a.ok]

    @property
    def stale(self) -> list[Lag]:
        return [lag for lag in self.lags if lag.status == "stale"]

    @property
    def pending(self) -> list[str]:
        return [p for p in self.listing.repos if p not in self.audits]

    @property
    def exit_code(self) -> int:
        """1 broken or stale copies; 3 the audit is incomplete; 0 every repository good."""
        if self.broken or self.stale:
            return 1
        return 3 if self.pending else 0


def audit_archive(
    target: ArchiveTarget,
    state_file: Path,
    options: AuditOptions,
    transport_for: Callable[[], Transport],
    *,
    python: str,
    command_timeout: float,
    progress_stream: IO[str] | None = None,
) -> AuditRun:
    """List the archive, deep-check every repository the journal does not hold yet, ``jobs`` at
    once, until done or the budget is spent (each run checks at least one)."""
    run = AuditRun(target, state_file, time.time())
    journal = AuditJournal(state_file, target, restart=options.restart)
    local = threading.local()
    made: list[Transport] = []
    made_lock = threading.Lock()

    def transport() -> Transport:
        t: Transport | None = getattr(local, "transport", None)
        if t is None:
            t = local.transport = transport_for()
            with made_lock:
                made.append(t)
        return t

    try:
        run.listing = list_archive(transport(), target, python)
        listed = set(run.listing.repos)
        run.resumed = sum(1 for p in journal.done if p in listed)
        todo = [p for p in run.listing.repos if p not in journal.done]
        deadline = None if options.budget is None else time.monotonic() + options.budget
        progress = Progress(len(todo), target.label, progress_stream)
        stop = threading.Event()

        def one(pid: str) -> RepoAudit | None:
            if stop.is_set():
                return None
            return check_one(transport(), target, python, pid, command_timeout)

        try:
            with ThreadPoolExecutor(max_workers=options.jobs) as pool:
                queue: Iterator[str] = iter(todo)
                running: dict[Future[RepoAudit | None], str] = {}
                started = 0

                def submit_more() -> None:
                    nonlocal started
                    while len(running) < options.jobs and not stop.is_set():
                        if started and deadline is not None and time.monotonic() > deadline:
                            run.stopped = "budget"
                            stop.set()
                            return
                        pid = next(queue, None)
                        if pid is None:
                            return
                        started += 1
                        running[pool.submit(one, pid)] = pid

                submit_more()
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        pid = running.pop(fut)
                        try:
                            audit = fut.result()
                        except (WatchdogError, ValueError) as exc:
                            run.errors[pid] = str(exc)
                            progress.repo_done(None, pid, str(exc))
                            continue
                        if audit is not None:
                            journal.record(audit)
                            run.checked_now += 1
                            progress.repo_done(audit, pid)
                    submit_more()
        except KeyboardInterrupt:
            stop.set()
            run.stopped = "interrupted"
        finally:
            progress.close()
    finally:
        for t in made:
            t.close()
        listed = set(run.listing.repos)
        run.audits = {p: a for p, a in journal.done.items() if p in listed}
        journal.close()
    if len(run.errors) == len(run.pending) and run.errors and not run.checked_now:
        first = next(iter(run.errors.values()))
        raise WatchdogError(f"{target.label}: no repository could be checked: {first}")
    run.finished = time.time()
    return run


# ---------------------------------------------------------------- the command


def run_command(config: Config, spec: str, options: AuditOptions) -> int:
    """``archive audit``: resolve the archive, audit it, write the report, print a summary line;
    returns the exit code. Raises ArchiveUsageError (exit 2) or WatchdogError (exit 3)."""
    from bup_watchdog.gather import make_transport
    from bup_watchdog.runner import inventory_source, load_inventory, open_state
    from bup_watchdog.transport.local import LocalTransport

    if options.fmt not in FORMATS:
        raise ArchiveUsageError(f"--format must be one of {', '.join(FORMATS)}")
    inventory: Inventory | None
    note: str | None = None
    try:
        state = open_state(config)
        try:
            inventory = load_inventory(inventory_source(config), state)
        finally:
            state.close()
    except WatchdogError as exc:
        inventory, note = None, f"no inventory ({exc}): lag not measured"
    target = parse_target(spec, inventory, config.ssh.user)
    server = target.server

    def transport_for() -> Transport:
        if server is None:
            return LocalTransport("archive", timeout=config.deep.command_timeout * 2 + 30)
        return make_transport(server, config.ssh)

    state_file = options.state_file or default_state_file(config, target)
    run = audit_archive(
        target,
        state_file,
        options,
        transport_for,
        python=config.ssh.python,
        command_timeout=config.deep.command_timeout,
    )
    run.inventory_note = note
    if inventory is not None:
        masters = master_saves(inventory, run.audits, config, options.fresh)
        run.lags = lags(run.audits, inventory, masters, options.max_lag)
    from bup_watchdog.archive_report import render, report_data, write_report

    data = report_data(run, options.max_lag)
    where = write_report(render(data, options.fmt), options.output, options.fmt)
    s = data["summary"]
    tail = ""
    if run.pending:
        why = {"budget": "budget spent", "interrupted": "interrupted"}.get(
            run.stopped or "", f"{len(run.errors)} could not be checked"
        )
        tail = f"; {s['not_audited']} not audited yet ({why}): run again to resume"
    print(
        f"archive audit {target.label}: {s['verdict'].upper()}, {s['repositories']} repositories "
        f"({s['audited_this_run']} checked now, {s['resumed_from_state']} from {state_file}), "
        f"{s['broken']} broken, {s['stale']} stale, {s['skipped']} skipped{tail}",
        file=sys.stderr,
    )
    if where is not None:
        print(where)
    return run.exit_code
