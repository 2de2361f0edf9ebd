"""``bup-watchdog run``: sweeps on a schedule (APScheduler) behind one HTTP server.

One interval job sweeps the due checks with one gather per host; runs never overlap
(``max_instances=1``), missed runs are coalesced into one, and each run gets jitter. SIGTERM or
SIGINT lets the current sweep finish, then stops. A sweep that fails is logged and recorded and the
next one runs as planned; the loop itself never dies of it. ``--once`` does one pass and exits.

With ``[membership] enabled``, a second job heartbeats into Cassandra every ``heartbeat_seconds``
(also once before the first sweep), sweeps cover only this watchdog's share of the hosts
(``watchdog/membership.py``), and a clean stop leaves the members at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from bup_watchdog import logs
from bup_watchdog.config import Config
from bup_watchdog.errors import WatchdogError
from bup_watchdog.guard import Guard, RepairRequest
from bup_watchdog.http.app import HttpServer, create_app
from bup_watchdog.http.auth import read_token
from bup_watchdog.http.limits import HttpLimits
from bup_watchdog.inventory.file import parse_inventory
from bup_watchdog.journal import Entry, Journal
from bup_watchdog.leases import lease_backend
from bup_watchdog.membership import Membership
from bup_watchdog.metrics import StateCollector, exposition
from bup_watchdog.model import Finding, Inventory, Server, Severity
from bup_watchdog.repair_queue import QueueFull, RepairQueue, Work
from bup_watchdog.report import ReportSettings
from bup_watchdog.runner import Runner, inventory_source, load_inventory, open_state
from bup_watchdog.silences import Silencer
from bup_watchdog.state import State
from bup_watchdog.sweep import SweepResult

log = logging.getLogger(__name__)


def build_http(
    config: Config, state: State, daemon: Daemon | None = None, *, open_files: int | None = None
) -> HttpServer:
    """The HTTP server over the state: /metrics, /healthz, /ready, API; its connections capped
    at ``open_files`` (the soft open-file limit) minus ``[http] fd_reserve``."""
    reg = CollectorRegistry()

    def servers() -> Mapping[str, Server]:
        return daemon.servers() if daemon is not None else cached_servers(state)

    if daemon is not None:
        daemon.metrics_registry = reg
    reg.register(StateCollector.for_config(config, state, servers))
    host, port = config.http.listen.rsplit(":", 1)
    app = create_app(
        reg,
        state,
        ready=(lambda: daemon.last_worst is not None) if daemon is not None else None,
        repairs=daemon.queue if daemon is not None else None,
        token=read_token(config.guard.api_token_file),
        alerts=config.alerts,
        report=ReportSettings.from_config(config),
    )
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return HttpServer(app, host, int(port), HttpLimits.from_config(config.http, open_files))


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (systemd's LimitNOFILE= or ``ulimit -Hn``)
    and return the soft limit now: the HTTP server's share of it is bounded, the rest is kept
    for sweeps and repairs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft >= target:
        return int(soft)
    if soft == resource.RLIM_INFINITY:
        return target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return int(soft)
    return int(target)


def cached_servers(state: State) -> Mapping[str, Server]:
    """Servers of the cached inventory (labels for metrics before the first sweep)."""
    cached = state.cached_inventory()
    if cached is None:
        return {}
    try:
        return parse_inventory(cached[2], source="cached inventory").servers
    except WatchdogError:
        return {}


def _flock_holder(path: Path) -> str:
    """The pid that holds an flock on ``path``, from /proc/locks ("" when not found): the lock's
    holder even when its pid file was deleted."""
    try:
        st = path.stat()
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                    return fields[4]
    except OSError:
        pass
    return ""


class Daemon:
    """The scheduler loop and the HTTP server around one Runner."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = open_state(config)
        self.state.check_integrity()
        self._lock_fd: int | None = None
        #: With [membership] enabled: heartbeats, and this watchdog's share of the hosts.
        self.membership = Membership.from_config(config) if config.membership.enabled else None
        self.runner = Runner(
            config,
            self.state,
            inventory_source(config),
            membership=self.membership,
            incremental=True,
        )
        #: One lease backend for every guard of this daemon ([guard] leases).
        self.leases = lease_backend(config, Journal(self.state))
        self.inventory: Inventory | None = None
        #: The worst severity of the last sweep (None before the first). The sweep's result
        #: itself is not kept: its facts (~150 MB at 100,000 repositories) would live on while the
        #: next sweep builds its own.
        self.last_worst: Severity | None = None
        #: /metrics' registry (build_http): rendered once after each sweep, so that no scrape
        #: pays for building the families from a new state (~60 ms at 100,000 projects).
        self.metrics_registry: CollectorRegistry | None = None
        self.stopping = threading.Event()
        self._servers_cache: Mapping[str, Server] | None = None
        alerts = config.alerts
        silencer = (
            Silencer(alerts.alertmanager_url, alerts.silence_minutes) if alerts.silence else None
        )
        self.queue = RepairQueue(
            self.guard, silencer=silencer, max_parallel=config.guard.max_parallel_repairs
        )

    def guard(self) -> Guard:
        """A guard over the freshest inventory (the last sweep's, or loaded now)."""
        inventory = self.inventory
        if inventory is None:
            inventory = load_inventory(self.runner.source, self.state)
            self.inventory = inventory
        return Guard(
            self.config, self.state, inventory, leases=self.leases, on_executed=self._repaired
        )

    def _repaired(self, req: RepairRequest) -> None:
        """A repair ran: what the incremental cache holds of its project may be out of date (a
        chown changes owners deep in a tree, where no fingerprint or kept sample would see it)."""
        cache = self.runner.repo_cache
        if cache is None or req.project_id is None:
            return
        project = self.inventory.projects.get(req.project_id) if self.inventory else None
        for sid in {req.server_id, *(project.locations if project else ())}:
            cache.forget_project(sid, req.project_id)

    def servers(self) -> Mapping[str, Server]:
        if self.inventory is not None:
            return self.inventory.servers
        if self._servers_cache is None:
            self._servers_cache = cached_servers(self.state)
        return self._servers_cache

    def heartbeat_job(self) -> None:
        """Tell the other watchdogs this one is alive (failures are logged, never raised)."""
        if self.membership is None or self.stopping.is_set():
            return
        try:
            self.membership.heartbeat()
        except Exception:
            log.exception("membership: heartbeat failed unexpectedly; the next one runs as planned")

    def sweep_job(self) -> None:
        """One scheduled sweep; every failure is logged and recorded, never raised."""
        if self.stopping.is_set():
            return
        started = time.monotonic()
        try:
            result = self.runner.run_once()
        except WatchdogError as exc:
            log.error(
                "sweep failed: %s", exc, extra={"duration_s": round(time.monotonic() - started, 3)}
            )
            try:
                self.state.set_meta(last_sweep_error=str(exc), last_sweep_error_at=time.time())
            except WatchdogError as again:  # the state itself is what failed (e.g. disk full)
                log.error("cannot record the failed sweep either: %s", again)
            return
        except Exception:
            log.exception("sweep failed unexpectedly; the next one runs as planned")
            return
        if result is None:
            log.debug("no check is due")
            return
        self.inventory = result.inventory
        self.last_worst = result.worst
        self._log_sweep(result, time.monotonic() - started)
        if self.config.schedule.auto_repair and not self.stopping.is_set():
            self._repair(result)
        del result  # its facts are not kept while /metrics' families are built (the peak)
        self.warm_metrics()

    def warm_metrics(self) -> None:
        """Build /metrics' families from the state now (the sweep thread pays, not a scrape)."""
        if self.metrics_registry is None:
            return
        try:
            exposition(self.metrics_registry)
        except Exception as exc:  # a scrape builds them again and says what is wrong
            log.warning("cannot prepare /metrics after the sweep: %s", exc)

    def _log_sweep(self, result: SweepResult, seconds: float) -> None:
        """The one line a sweep writes at the default level (its repairs write their own)."""
        counts = {s: sum(1 for f in result.findings if f.severity is s) for s in Severity}
        probed = sum(1 for f in result.facts.values() if f.probed)
        failed = [sid for sid, f in result.facts.items() if not f.probed]
        log.info(
            "sweep done in %.2f s: %d hosts probed, %d failed; %d findings (%d critical, "
            "%d warning), %d opened, %d resolved; %d SSH sessions",
            seconds,
            probed,
            len(failed),
            len(result.findings),
            counts[Severity.CRITICAL],
            counts[Severity.WARNING],
            self.runner.last_opened,
            self.runner.last_resolved,
            result.ssh_sessions,
            extra={
                "sweep_id": self.runner.last_sweep_id,
                "duration_s": round(seconds, 3),
                "hosts": len(result.facts),
                "hosts_probed": probed,
                "hosts_failed": failed[:20],
                "findings": len(result.findings),
                "critical": counts[Severity.CRITICAL],
                "warning": counts[Severity.WARNING],
                "opened": self.runner.last_opened,
                "resolved": self.runner.last_resolved,
                "checks": sorted(result.checks),
                "ssh_sessions": result.ssh_sessions,
                "status": result.worst.label,
            },
        )

    def _repair(self, result: SweepResult) -> None:
        """Hand the sweep's findings to the guard; a failure here never stops the loop."""
        try:
            guard = self.guard()
            cooldown = self.config.schedule.repair_cooldown_seconds
            for req in guard.scheduled_requests(result.findings, cooldown):
                if self.queue.put(Work(request=req)):
                    log.debug("scheduled repair queued: %s on %s", req.repair, req.target)
        except QueueFull as exc:
            log.error("scheduled repairs not queued: %s", exc)
        except Exception:
            log.exception("scheduled repairs failed; the next sweep tries again")

    def report_interrupted(self) -> list[Entry]:
        """Repairs the last run left running: reported (finding + journal), never re-run."""
        interrupted = Journal(self.state).mark_interrupted()
        for e in interrupted:
            log.error(
                "repair #%d %s on %s was interrupted (the watchdog stopped while it ran); "
                "its outcome is unknown and it is NOT re-run",
                e.id,
                e.repair,
                e.target,
                extra={
                    "repair_id": e.id,
                    "repair": e.repair,
                    "server": e.server_id,
                    "project": e.project_id,
                    "decision": "interrupted",
                },
            )
            self.state.raise_finding(
                Finding(
                    check="guard",
                    server_id=e.server_id,
                    project_id=e.project_id,
                    severity=Severity.CRITICAL,
                    code="interrupted",
                    value=float(e.id),
                    message=f"repair #{e.id} {e.repair} was interrupted; check the target and "
                    "repair again if needed",
                )
            )
        return interrupted

    def release_dead_leases(self) -> list[tuple[str, str]]:
        """Leases held by this host's watchdog processes that are gone (SIGKILL, a crash): their
        repairs are reported interrupted above, and a retry goes through the guard at once
        instead of being refused by a dead holder until the lease's TTL."""
        try:
            released = self.leases.release_dead()
        except WatchdogError as exc:
            log.error("cannot release the leases of dead watchdog processes: %s", exc)
            return []
        for target, holder in released:
            log.warning(
                "released the lease on %s held by %s, a process that is gone; a new request for "
                "it goes through the guard as usual",
                target,
                holder,
                extra={"target": target, "holder": holder},
            )
        return released

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "received %s: finishing the current sweep, then stopping", signal.Signals(signum).name
        )
        self.stopping.set()

    def run(self, *, once: bool = False) -> int:
        """Serve and sweep until a signal (or one pass with ``once``); return an exit code."""
        # Handlers first: a SIGTERM right after start must still mean a clean stop.
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._take_state_lock()
            self.report_interrupted()
            self.release_dead_leases()
            self.heartbeat_job()  # a member before the first sweep, so it counts itself
            open_files = raise_open_file_limit()
            http = build_http(self.config, self.state, self, open_files=open_files)
            log.info(
                "open-file limit %d; HTTP takes at most %d connections, %d requests at once",
                open_files,
                http.limits.max_connections,
                http.limits.max_requests,
            )
            logs.adopt()  # uvicorn set up its own handlers: its lines go through ours
            http.start()
            self.queue.start()
            log.info("serving http://%s/metrics", self.config.http.listen)
            try:
                if once:
                    self.sweep_job()
                    self.queue.drain(self.stopping)  # the pass's repairs run before it exits
                    return int(self.last_worst) if self.last_worst is not None else 3
                return self._loop()
            finally:
                self.queue.stop(self.config.guard.stop_wait_seconds)
                http.stop()
                self._leave()
                self.state.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock (the kernel does it on a crash too)
                self._lock_fd = None

    def _leave(self) -> None:
        """On stop: leave the members at once (no TTL wait for the others), close Cassandra."""
        if self.membership is not None:
            self.membership.leave()
            self.membership.close()
        self.leases.close()

    def _take_state_lock(self) -> None:
        """One daemon per state directory: a second one would report the first one's running
        repairs as interrupted and sweep and repair alongside it.

        The lock is an flock on the state directory itself (an fd opened with O_DIRECTORY), not
        on a file in it: a file can be deleted and made again, leaving two daemons each holding
        a lock on a different inode; the directory cannot be replaced without moving the state
        database with it. Not on state.db: SQLite's own POSIX locks live on that file. The pid
        goes into ``daemon.lock`` for the operator's message only; deleting it unlocks nothing."""
        directory = self.state.path.parent
        pid_file = directory / "daemon.lock"
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise WatchdogError(
                f"cannot open the state directory {directory}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _flock_holder(directory)
            if not holder:
                try:
                    holder = pid_file.read_text(encoding="ascii", errors="replace").strip()[:32]
                except OSError:
                    holder = ""
            raise WatchdogError(
                f"another bup-watchdog daemon (pid {holder or '?'}) runs on the state directory "
                f"{directory}; refusing to start a second one on it"
            ) from None
        self._lock_fd = fd
        try:
            pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError as exc:  # only a note for the operator: the lock is held
            log.warning("cannot write the pid to %s: %s", pid_file, exc.strerror)

    def _loop(self) -> int:
        sched = self.config.schedule
        scheduler = BackgroundScheduler(
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(sched.sweep_interval_seconds),
            }
        )
        scheduler.add_job(
            self.sweep_job,
            "interval",
            seconds=sched.sweep_interval_seconds,
            jitter=sched.jitter_seconds or None,
            next_run_time=datetime.now().astimezone(),
            id="sweep",
        )
        if self.membership is not None:
            beat = self.config.membership.heartbeat_seconds
            scheduler.add_job(
                self.heartbeat_job,
                "interval",
                seconds=beat,
                next_run_time=datetime.now().astimezone() + timedelta(seconds=beat),
                id="heartbeat",
            )
        if self.stopping.is_set():
            return 0
        scheduler.start()
        try:
            self.stopping.wait()
        finally:
            scheduler.shutdown(wait=True)
        log.info("stopped")
        return 0
