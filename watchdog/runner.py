"""The watchdog's unit of work: load the inventory (or its cache), sweep what is due, record it.

Shared by ``bup-watchdog check`` (one sweep now) and the daemon (sweeps on a schedule). When the
inventory source is down, the last good inventory from the state is used and flagged stale, so the
watchdog keeps watching instead of stopping.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from bup_watchdog import retention
from bup_watchdog.checks import registry
from bup_watchdog.checks.replication_lag import PUBLISHED, Head
from bup_watchdog.config import Config
from bup_watchdog.errors import ConfigError, InventoryError, WatchdogError
from bup_watchdog.inventory.base import InventorySource
from bup_watchdog.inventory.file import FileInventory, dump_inventory, parse_inventory
from bup_watchdog.journal import Journal, apply_overrides
from bup_watchdog.model import HostFacts, Inventory, Server
from bup_watchdog.repo_cache import RepoCache
from bup_watchdog.state import State
from bup_watchdog.sweep import SweepResult, record, sweep

if TYPE_CHECKING:
    from bup_watchdog.membership import Membership
    from bup_watchdog.shared_heads import SharedHeads

log = logging.getLogger(__name__)


def inventory_source(config: Config) -> InventorySource:
    """The configured inventory source."""
    if config.inventory.source == "file" and config.inventory.file is not None:
        return FileInventory(config.inventory.file, default_user=config.ssh.user)
    if config.inventory.source == "cassandra":
        from bup_watchdog.inventory.cassandra import CassandraInventory

        return CassandraInventory.from_config(config)
    raise ConfigError(
        str(config.path or "config"),
        [f"At 'inventory.source': {config.inventory.source!r} is not available in this version"],
    )


def load_inventory(source: InventorySource, state: State | None) -> Inventory:
    """Load the inventory (overrides applied); on failure fall back to the cache, flagged stale."""
    inventory = _load_inventory(source, state)
    if state is not None:
        inventory = apply_overrides(inventory, Journal(state).overrides())
    return inventory


# Per state, the inventory last written to its cache: a source that returns the very same object
# again (a file inventory whose file did not change) is not written again.
_CACHED: weakref.WeakKeyDictionary[State, Inventory] = weakref.WeakKeyDictionary()


def _load_inventory(source: InventorySource, state: State | None) -> Inventory:
    try:
        inventory = source.load()
    except WatchdogError as exc:
        cached = state.cached_inventory() if state is not None else None
        if cached is None:
            raise
        name, saved_at, data = cached
        age = time.time() - saved_at
        log.error(
            "inventory source %s is unavailable (%s); using the cached inventory from %.0f s ago",
            source.name,
            str(exc).splitlines()[0],
            age,
        )
        inventory = parse_inventory(data, source=f"cached {name} inventory")
        inventory = dataclasses.replace(inventory, source=name, stale=True, loaded_at=saved_at)
        if state is not None:
            state.set_meta(inventory_stale=True, inventory_error=str(exc).splitlines()[0])
        return inventory
    if state is not None:
        if _CACHED.get(state) is not inventory:
            if (
                inventory.version is not None
                and state.cached_inventory_version() == inventory.version
            ):
                state.touch_inventory()  # ~2 s of CPU at 100,000 projects spared per `check`
            else:
                state.save_inventory(source.name, dump_inventory(inventory), inventory.version)
            _CACHED[state] = inventory
        state.set_meta(inventory_stale=False, inventory_error=None, inventory_loaded_at=time.time())
    return dataclasses.replace(inventory, source=source.name)


class Runner:
    """Runs sweeps for one config, with state, check back-off and deep-check cadence.

    With ``membership`` (several watchdogs on one fleet), a sweep that names no servers sweeps
    only those this watchdog owns now (``watchdog/membership.py``). With ``incremental`` (the
    daemon, when ``[incremental] enabled``) the runner keeps a RepoCache from one sweep to the
    next, so that hosts skip the walk of repositories that did not change.
    """

    def __init__(
        self,
        config: Config,
        state: State | None,
        source: InventorySource,
        membership: Membership | None = None,
        *,
        incremental: bool = False,
    ) -> None:
        self.config = config
        self.state = state
        self.source = source
        self.membership = membership
        # With membership, whether the others owned every server at the last sweep's turn is
        # kept in the state's meta ("standby"), the one place /ready and bupwatch_standby read.
        if membership is None and state is not None and state.meta().get("standby"):
            self._say_standby(False)  # left by an earlier run that had [membership]
        #: With membership: the master heads this watchdog publishes and reads.
        self.heads: SharedHeads | None = None
        if membership is not None:
            from bup_watchdog.shared_heads import SharedHeads

            self.heads = SharedHeads.for_config(membership.db, membership.id, config)
        self.repo_cache: RepoCache | None = None
        if incremental and config.incremental.enabled:
            self.repo_cache = RepoCache(max_age=config.incremental.full_walk_seconds)
        self._check_failures: dict[str, int] = {}
        self._check_backoff_until: dict[str, float] = {}
        #: The last recorded sweep, and the findings it opened and resolved (the daemon logs them).
        self.last_sweep_id: int | None = None
        self.last_opened = 0
        self.last_resolved = 0

    def due_checks(
        self, now: float, only: Collection[str] = (), *, force: bool = False
    ) -> list[str]:
        """Enabled checks whose interval has passed and that are not backing off after errors.

        With ``force`` (a sweep an operator asked for), every enabled check is due.
        """
        last_runs = {}
        if self.state is not None:
            last_runs = {
                name: float(t)
                for name, t in self.state.query("SELECT check_name, last_run FROM check_runs")
            }
        due = []
        for name in registry():
            settings = self.config.check(name)
            if not settings.enabled or (only and name not in only):
                continue
            if force:
                due.append(name)
                continue
            if now < self._check_backoff_until.get(name, 0.0):
                continue
            interval = settings.interval_seconds
            if interval and now < last_runs.get(name, 0.0) + interval:
                continue
            due.append(name)
        return due

    def deep_due(self, now: float) -> bool:
        if not self.config.deep.enabled or self.state is None:
            return False
        last = self.state.meta().get("deep_last_run", 0.0)
        return bool(now >= float(last or 0.0) + self.config.schedule.deep_interval_seconds)

    def _say_standby(self, standby: bool) -> None:
        """Say in the state's meta whether the others own every server (read by /ready and
        bupwatch_standby). Written at every sweep's turn, never reset in between: a scrape
        during the next inventory load must not see a standby member as stale."""
        if self.state is not None:
            self.state.set_meta(standby=standby)

    def run_once(
        self,
        *,
        only: Collection[str] = (),
        servers: Collection[str] = (),
        deep: bool | None = None,
        on_host_done: Callable[[Server, HostFacts], None] | None = None,
        force: bool = False,
    ) -> SweepResult | None:
        """One sweep of the due checks (None when nothing is due).

        Raises WatchdogError when neither the inventory nor its cache can be read.
        """
        now = time.time()
        checks = self.due_checks(now, only, force=force)
        run_deep = self.deep_due(now) if deep is None else deep
        if not checks:
            return None
        try:
            inventory = load_inventory(self.source, self.state)
        except WatchdogError:
            self._say_standby(False)  # an unreadable inventory is no standby: the stale alert
            raise
        if self.state is not None and not inventory.stale:
            gone = self.state.forget_servers(inventory.servers)
            if gone:
                log.warning(
                    "%d server(s) are no longer in the inventory (%s): their open findings are "
                    "resolved and their host gauges dropped",
                    len(gone),
                    ", ".join(gone[:5]) + (" …" if len(gone) > 5 else ""),
                )
        explicit = bool(servers)
        heads: list[Head] = []
        max_age = 0.0
        if self.membership is not None and not servers:
            servers = self.membership.select(inventory, self.state)
            self._say_standby(not servers)
            if not servers:
                log.debug("no server is this watchdog's to sweep now (the others own them all)")
                return None
            if self.heads is not None:
                from bup_watchdog.shared_heads import heads_max_age, masters_needed

                max_age = heads_max_age(self.config)
                heads = self.heads.read(masters_needed(inventory, servers))
        result = sweep(
            self.config,
            inventory,
            only=checks,
            servers=servers,
            on_host_done=on_host_done,
            state=self.state,
            deep=run_deep,
            repo_cache=self.repo_cache,
            heads=heads,
            heads_max_age=max_age,
        )
        if self.heads is not None and not explicit:
            from bup_watchdog.shared_heads import master_heads

            self.heads.publish(master_heads(result.facts, inventory))
        if self.repo_cache is not None and not explicit:
            self.repo_cache.retain(result.facts)
        self._note_check_errors(result, now)
        if self.state is not None:
            before = self._open_findings()
            self.last_sweep_id = record(self.state, result)
            # The watchdog's own faults of this sweep (none: cleared): /ready and the metric.
            self.state.set_meta(watchdog_problems=result.local_faults)
            if self.membership is not None:
                self.state.set_meta(
                    membership=self.membership.view(inventory),
                    shared_heads=heads_summary(result, heads, max_age),
                )
            after = self._open_findings()
            self.last_opened, self.last_resolved = len(after - before), len(before - after)
            if self.repo_cache is not None:
                walked, reused = self.repo_cache.totals()
                self.state.set_meta(incremental_walked=walked, incremental_reused=reused)
            if run_deep:
                self.state.set_meta(deep_last_run=now)
            if retention.due(self.state, now):
                try:
                    retention.prune_history(self.state, self.config.state.keep_history_days, now)
                except WatchdogError as exc:  # the sweep is recorded; pruning waits a day
                    log.error("retention: cannot remove old history now: %s", exc)
        return result

    def _open_findings(self) -> set[int]:
        """Ids of the open findings (read through the partial index on open findings)."""
        assert self.state is not None
        return {
            int(r[0]) for r in self.state.query("SELECT id FROM findings WHERE resolved_at IS NULL")
        }

    def _note_check_errors(self, result: SweepResult, now: float) -> None:
        """A check that raised backs off exponentially (capped at an hour); success resets it."""
        for name, run in result.checks.items():
            if run.error is None:
                self._check_failures.pop(name, None)
                self._check_backoff_until.pop(name, None)
                continue
            n = self._check_failures.get(name, 0) + 1
            self._check_failures[name] = n
            delay = min(3600.0, self.config.schedule.sweep_interval_seconds * 2 ** (n - 1))
            self._check_backoff_until[name] = now + delay
            log.error(
                "check %s failed (%d in a row); next try in %.0f s",
                name,
                n,
                delay,
                extra={"check": name, "failures": n, "retry_in_s": delay},
            )


def heads_summary(result: SweepResult, heads: list[Head], max_age: float) -> dict[str, Any]:
    """For the state (and the test, the report): which masters' published heads were believed,
    which were too old or missing, and how many replicas replication_lag left unjudged."""
    lag = result.lag_facts or {}
    believed = sorted(sid for sid, f in lag.items() if PUBLISHED in f.hello)
    newest: dict[str, float] = {}
    for h in heads:
        newest[h.server_id] = max(newest.get(h.server_id, 0.0), h.swept_at)
    run = result.checks.get("replication_lag")
    return {
        "at": result.started + result.seconds,
        "max_age_seconds": max_age,
        "believed": believed,
        "too_old": {s: t for s, t in sorted(newest.items()) if s not in believed},
        "unjudged_replicas": len(run.unjudged) if run is not None else 0,
    }


def open_state(config: Config) -> State:
    return State(config.state.directory / "state.db")


__all__ = ["InventoryError", "Runner", "inventory_source", "load_inventory", "open_state"]
