"""placement: each project is mastered on a server in service and has the right number of copies.

Mostly the inventory's business: a master on an ``experimental`` server (which takes no new
projects) or a ``disabled`` one; fewer copies than the replication factor, or more than the
fleet should carry (in 2014, 99 projects had more than 3); optionally, every replica in the
master's data centre. From the facts it reads only the master copy's ``conf/replicas.json``,
which must name the same servers as the inventory: ``resync_replica`` refuses to run while they
disagree. Only projects mastered on a server this sweep covered are judged, so a sweep of a few
hosts reports on those hosts alone; deleted projects are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts
from bup_watchdog.model import Finding, Inventory, Project, Severity


class PlacementSettings(CheckSettings):
    """placement: where a project's master and replicas live, and how many copies it has."""

    replication_factor: int = Field(
        2, ge=1, description="Fewest copies (master + replicas, distinct servers) a project needs."
    )
    max_copies: int = Field(
        3, ge=1, description="Most copies a project should have before it is over-replicated."
    )
    require_other_dc: bool = Field(
        False, description="Warn when no replica lies outside the master's data centre."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PlacementSettings:
        if self.max_copies < self.replication_factor:
            raise ValueError("max_copies must be at least replication_factor")
        return self


class Placement(Check[PlacementSettings]):
    name = "placement"
    Settings = PlacementSettings

    def _inventory_problems(
        self,
        project: Project,
        locations: tuple[str, ...],
        inventory: Inventory,
        settings: PlacementSettings,
    ) -> list[tuple[Severity, str, str, float | None]]:
        """What the inventory alone says is wrong with a project's placement (a list, not a
        generator: this runs for every project in every sweep and is empty for almost all)."""
        problems: list[tuple[Severity, str, str, float | None]] = []
        master = inventory.servers.get(project.master)
        if master is not None and master.disabled:
            problems.append(
                (
                    Severity.CRITICAL,
                    "master_on_disabled",
                    f"mastered on {master.label}, a disabled server",
                    None,
                )
            )
        elif master is not None and master.experimental:
            problems.append(
                (
                    Severity.WARNING,
                    "master_on_experimental",
                    f"mastered on {master.label}, an experimental server (it takes no new "
                    "projects)",
                    None,
                )
            )
        copies = set(locations)
        if len(copies) < settings.replication_factor:
            problems.append(
                (
                    Severity.CRITICAL,
                    "under_replicated",
                    f"{len(copies)} cop{'y' if len(copies) == 1 else 'ies'} "
                    f"(the replication factor is {settings.replication_factor})",
                    float(len(copies)),
                )
            )
        elif len(copies) > settings.max_copies:
            problems.append(
                (
                    Severity.WARNING,
                    "over_replicated",
                    f"{len(copies)} copies (at most {settings.max_copies} expected)",
                    float(len(copies)),
                )
            )
        replicas = copies - {project.master}
        if settings.require_other_dc and master is not None and replicas:
            dcs = {s.dc for r in replicas if (s := inventory.servers.get(r)) is not None}
            if dcs == {master.dc}:
                problems.append(
                    (
                        Severity.WARNING,
                        "replicas_same_dc",
                        f"every replica is in the master's data centre {master.dc}",
                        None,
                    )
                )
        return problems

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: PlacementSettings
    ) -> Iterator[Finding]:
        servers = inventory.servers
        # Masters whose server alone is a finding; with none of these, no other dc to look for and
        # a count of copies in range (almost every project) the inventory says nothing.
        flagged = {sid for sid, s in servers.items() if s.disabled or s.experimental}
        fewest, most = settings.replication_factor, settings.max_copies
        plain = not settings.require_other_dc
        for project in inventory.projects.values():
            master = project.master
            if project.deleted or master not in facts:
                continue
            copies = {master, *project.replicas}
            problems = (
                []
                if plain and master not in flagged and fewest <= len(copies) <= most
                else self._inventory_problems(project, project.locations, inventory, settings)
            )
            host = facts[master]
            repo = host.repos.get(project.project_id) if host.probed else None
            reps = repo.replicas if repo is not None else None
            if reps is not None and set(reps) != copies:
                on_disk = {r.lower() for r in reps}
                wanted = {loc.lower() for loc in copies}
                if on_disk != wanted:
                    missing = ", ".join(sorted(wanted - on_disk)) or "none"
                    extra = ", ".join(sorted(on_disk - wanted)) or "none"
                    problems.append(
                        (
                            Severity.WARNING,
                            "replicas_json_disagrees",
                            "conf/replicas.json on the master disagrees with the inventory "
                            f"(missing from it: {missing}; not in the inventory: {extra})",
                            None,
                        )
                    )
            for severity, code, message, value in problems:
                yield Finding(
                    check=self.name,
                    server_id=project.master,
                    project_id=project.project_id,
                    severity=severity,
                    code=code,
                    message=message,
                    value=value,
                )


check = Placement()
