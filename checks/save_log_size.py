"""save_log_size: ``conf/save_log.json`` grows on every save (one was seen at 382 MB)."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, model_validator

from bup_watchdog.checks.base import Check, CheckSettings, FleetFacts, probed_hosts
from bup_watchdog.model import Finding, Inventory, Severity

MB = 1_000_000


class SaveLogSizeSettings(CheckSettings):
    """save_log_size: warn and critical sizes of a project's conf/save_log.json."""

    warn_bytes: int = Field(50 * MB, gt=0, description="Size at which a save log is a warning.")
    critical_bytes: int = Field(200 * MB, gt=0, description="Size at which a save log is critical.")

    @model_validator(mode="after")
    def _ordered(self) -> SaveLogSizeSettings:
        if self.critical_bytes < self.warn_bytes:
            raise ValueError("critical_bytes must be at least warn_bytes")
        return self


class SaveLogSize(Check[SaveLogSizeSettings]):
    name = "save_log_size"
    Settings = SaveLogSizeSettings

    def evaluate(
        self, facts: FleetFacts, inventory: Inventory, settings: SaveLogSizeSettings
    ) -> Iterator[Finding]:
        for host in probed_hosts(facts):
            for pid, repo in host.repos.items():
                odd = repo.odd  # read directly, not through RepoFacts' properties
                if odd.save_log_is_symlink:
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        project_id=pid,
                        severity=Severity.WARNING,
                        code="symlink",
                        message="conf/save_log.json is a symlink; not followed, not measured",
                    )
                    continue
                if odd.save_log_kind is not None:
                    yield Finding(
                        check=self.name,
                        server_id=host.server_id,
                        project_id=pid,
                        severity=Severity.WARNING,
                        code="not_regular_file",
                        message=f"conf/save_log.json is a {repo.save_log_kind}, not a regular "
                        "file: saves that append to it block or fail; not measured",
                        details={"kind": repo.save_log_kind},
                    )
                    continue
                size = repo.save_log_bytes
                if size is None or size < settings.warn_bytes:
                    continue
                critical = size >= settings.critical_bytes
                limit = settings.critical_bytes if critical else settings.warn_bytes
                yield Finding(
                    check=self.name,
                    server_id=host.server_id,
                    project_id=pid,
                    severity=Severity.CRITICAL if critical else Severity.WARNING,
                    code="too_large",
                    value=float(size),
                    message=f"conf/save_log.json is {size / MB:.1f} MB (limit {limit / MB:.0f} MB)",
                )


check = SaveLogSize()
