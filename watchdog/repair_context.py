"""The context a repair runs in: the inventory, transports, fresh facts and checks, overrides.

Fresh facts matter: preconditions are checked against a probe taken at the last moment (a host's
/projects can be unmounted between the sweep and the repair), and verify() re-runs the check.
A project's repair probes only its project (``--only``): a copy on a host of 5,000 repositories
must not walk all of them eight times; host-level facts (mounts, bup_server, strays) stay whole.
"""

from __future__ import annotations

from typing import Any

from bup_watchdog.checks import registry as check_registry
from bup_watchdog.config import Config
from bup_watchdog.errors import WatchdogError
from bup_watchdog.gather import gather, gather_host, make_transport, owner_sample
from bup_watchdog.journal import Journal, apply_overrides
from bup_watchdog.model import Finding, HostFacts, Inventory, Project, Server
from bup_watchdog.transport.base import CommandResult, Transport


class Context:
    """Implements ``repairs.base.RepairContext`` for one repair run; ``close()`` afterwards."""

    def __init__(
        self,
        config: Config,
        inventory: Inventory,
        journal: Journal,
        who: str,
        project_id: str | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self._base_inventory = inventory
        self.inventory = apply_overrides(inventory, journal.overrides())
        self.who = who
        #: The Python interpreter on the storage hosts (for stdlib programs sent on stdin).
        self.python = config.ssh.python
        self._transports: dict[str, Transport] = {}
        #: The projects whose repositories and live directories the probes walk (the request's
        #: project); None for a host-level repair (fence_host, restart_bup_server): whole hosts.
        self.scope: frozenset[str] | None = frozenset((project_id,)) if project_id else None

    def server(self, server_id: str) -> Server:
        try:
            return self.inventory.servers[server_id]
        except KeyError:
            raise WatchdogError(f"server {server_id} is not in the inventory") from None

    def project(self, project_id: str) -> Project | None:
        return self.inventory.projects.get(project_id)

    def transport(self, server_id: str) -> Transport:
        if server_id not in self._transports:
            self._transports[server_id] = make_transport(self.server(server_id), self.config.ssh)
        return self._transports[server_id]

    def run(self, step: Any) -> CommandResult:
        return self.transport(step.server_id).run(
            list(step.argv),
            stdin=step.stdin,
            timeout=step.timeout,
            no_progress=self.config.guard.no_progress_seconds,
        )

    def facts(
        self, server_id: str, deep_ids: tuple[str, ...] = (), *, focus: str | None = None
    ) -> HostFacts:
        """A fresh probe of one host (and deep checks of the given repos) right now.

        ``focus``: a project whose live tree is sampled first (the host's budget reaches it).
        """
        ids = list(deep_ids)
        return gather_host(
            self.server(server_id),
            self.config.ssh,
            tcp_timeout=self.config.check("reachability").connect_timeout,
            deep_select=(lambda _facts: ids) if ids else None,
            deep=self.config.deep,
            owner_sample=owner_sample(self.config, focus or ""),
            only=self.scope,
        )

    def evaluate(
        self, check: str, server_ids: tuple[str, ...], *, focus: str | None = None
    ) -> list[Finding]:
        """Gather the servers now and run one check on them (``focus``: see ``facts``).

        Scoped: the findings about the scope's projects and the host-level ones, exactly as a
        whole host's probe gives them (the checks' findings about other projects, e.g. "master
        missing" for repositories not walked, are dropped: no host-level finding is judged from
        the walk of the projects).
        """
        servers = [self.server(s) for s in server_ids]
        facts = {
            f.server_id: f
            for f in gather(
                servers,
                self.config.ssh,
                tcp_timeout=self.config.check("reachability").connect_timeout,
                owner_sample=owner_sample(self.config, focus or ""),
                only=self.scope,
            )
        }
        judge = check_registry()[check]
        blind = [f for f in facts.values() if not f.probed]
        if blind and not judge.judges_unprobed:
            # No findings from a host the probe did not reach is not a pass: a verify would call
            # the repair a success, an unfence would let a host with bad mounts take replicas.
            label = self.server(blind[0].server_id).label
            raise WatchdogError(
                f"cannot judge {check} on {label} now: its probe did not answer "
                f"({blind[0].failure_message})"
            )
        found = judge.evaluate(facts, self.inventory, self.config.check(check))
        scope = self.scope
        if scope is not None:
            found = (f for f in found if f.project_id is None or f.project_id in scope)
        return sorted(found, key=Finding.order)

    def fenced(self, server_id: str) -> bool:
        return bool(self.journal.overrides().get(server_id, {}).get("fenced"))

    def set_override(self, server_id: str, key: str, value: Any) -> None:
        """Record an override and act on it at once (e.g. a new bup_server port for verify)."""
        self.journal.set_override(server_id, key, value, self.who)
        self.inventory = apply_overrides(self._base_inventory, self.journal.overrides())

    def clear_override(self, server_id: str, key: str) -> None:
        self.journal.clear_override(server_id, key)
        self.inventory = apply_overrides(self._base_inventory, self.journal.overrides())

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
