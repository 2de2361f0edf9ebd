"""restart_bup_server: run the configured restart command, wait for it to listen, record its port.

``bup_server`` takes a new port on every start (the fleet's clients read it from
``storage_servers.port``), so after a restart the port is read back from the port file the daemon
writes and, when it differs from the inventory's, recorded as the watchdog's ``port`` override
(``watchdog/journal.py::apply_overrides``) until the inventory itself is updated.

Before anything restarts, the boot gate ``bupwatch-preflight`` (``watchdog/hostside/preflight.py``)
is sent to the host's ``python3 -S -`` with ``mount_sanity``'s expected types and sources: a host
whose ``/projects`` or ``/bup/bups`` is not its own writable mount is refused with the gate's line,
as systemd's ``ExecStartPre=`` would refuse it. No gate runs while ``mount_sanity`` is disabled.
"""

from __future__ import annotations

import dataclasses
import string
import time
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from bup_watchdog.checks.mount_sanity import MountSanitySettings
from bup_watchdog.config import Config
from bup_watchdog.hostside import preflight
from bup_watchdog.model import Inventory, Server, Severity
from bup_watchdog.repairs.base import (
    Mode,
    Outcome,
    Repair,
    RepairContext,
    RepairError,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)

#: What the restart command and the port file may name, all taken from the inventory's Server.
PLACEHOLDERS = ("server_id", "host", "port", "name", "bup_root")
POLL_SECONDS = 0.5
PREFLIGHT_SECONDS = 30.0


@cache
def preflight_source() -> bytes:
    """The boot gate program, sent to the host on stdin (nothing needs to be installed)."""
    return Path(preflight.__file__).read_bytes()


def preflight_argv(server: Server, python: str, mounts: MountSanitySettings) -> tuple[str, ...]:
    """The gate's command line on a host: the inventory's paths, mount_sanity's expectations."""
    return (
        python,
        "-S",
        "-",
        # "--opt=value": a value that starts with '-' stays a value.
        f"--projects={server.projects_root}",
        f"--bups={server.bups_root}",
        f"--projects-fstype={','.join(mounts.projects_fstypes)}",
        f"--bups-fstype={','.join(mounts.bups_fstypes)}",
        f"--projects-source={mounts.projects_source}",
        f"--bups-source={mounts.bups_source}",
    )


def mount_settings(ctx: Any) -> MountSanitySettings:
    """mount_sanity's settings of the watchdog's config (the context's ``config``), or defaults."""
    config = getattr(ctx, "config", None)
    if isinstance(config, Config):
        settings = config.check("mount_sanity")
        if isinstance(settings, MountSanitySettings):
            return settings
    return MountSanitySettings.model_validate({})


def _check_template(value: str) -> str:
    """Refuse placeholders other than PLACEHOLDERS (and any format spec or conversion)."""
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL byte")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc} (write a literal brace as '{{{{' or '}}}}')") from None
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in PLACEHOLDERS or spec or conversion:
            raise ValueError(
                f"{value!r}: unknown placeholder {{{field_name}}} "
                f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
    return value


def _values(server: Server, used: str) -> dict[str, str]:
    """The placeholder values of one server; a path part may not be empty, '.' or '..'."""
    values = {
        "server_id": server.server_id,
        "host": server.host,
        "port": str(server.port),
        "name": server.name,
        "bup_root": server.bup_root,
    }
    if "{name}" in used and server.name in ("", ".", ".."):
        raise RepairError(
            f"the restart command uses {{name}} but server {server.server_id} has "
            f"{'no name' if not server.name else f'the name {server.name!r}'} in the inventory",
            permanent=True,
        )
    return values


def with_port(inventory: Inventory, server_id: str, port: int) -> Inventory:
    """The inventory with one server's bup_server port replaced (what the override does)."""
    servers = dict(inventory.servers)
    servers[server_id] = dataclasses.replace(servers[server_id], port=port)
    return dataclasses.replace(inventory, servers=servers)


class RestartBupServerSettings(RepairSettings):
    """restart_bup_server: restart the bup_server daemon, wait for it, record its new port."""

    mode: Mode = mode_field("auto")
    command: list[str] = Field(
        ["systemctl", "restart", "bup_server"],
        min_length=1,
        description="The restart command, run on the host as an argument list (no shell). "
        "Placeholders, substituted per argument from the inventory: {server_id}, {host}, {port} "
        "(the old port), {name}, {bup_root}. It must return once the daemon is started.",
        examples=[["/usr/local/bin/bup_server", "start", "--bup-root", "{bup_root}"]],
    )
    port_file: str = Field(
        "{bup_root}/conf/bup_server.port",
        description="Absolute path on the host of the file where bup_server writes the port it "
        "listens on; read after the restart. Same placeholders as command.",
    )
    wait_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds the restart command may take, and then again the seconds allowed "
        "for bup_server to listen and write its port file.",
    )

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, v: list[str]) -> list[str]:
        return [_check_template(arg) for arg in v]

    @field_validator("port_file")
    @classmethod
    def _port_file_placeholders(cls, v: str) -> str:
        _check_template(v)
        if not (v.startswith("/") or v.startswith("{bup_root}")):
            raise ValueError("must be an absolute path (or start with {bup_root})")
        return v


class RestartBupServer(Repair[RestartBupServerSettings]):
    name = "restart_bup_server"
    Settings = RestartBupServerSettings
    needs_project = False
    check = "reachability"
    codes = ("bup_server_unreachable", "bup_server_not_running", "port_mismatch")

    def _port_file(self, server: Server, settings: RestartBupServerSettings) -> str:
        path = settings.port_file.format(**_values(server, settings.port_file))
        if not path.startswith("/") or ".." in path.split("/"):
            raise RepairError(f"port_file {path!r} is not an absolute path without '..'")
        return path

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: RestartBupServerSettings
    ) -> list[str]:
        server = ctx.server(req.server_id)
        try:  # a command the inventory cannot fill in is refused, not raised from the guard
            self.plan(req, ctx, settings)
        except RepairError as exc:
            return [f"config: {exc}"]
        findings = [  # an informational one (bup_server answers, its process unseen) is healthy
            f
            for f in ctx.evaluate(self.check, (req.server_id,))
            if f.server_id == server.server_id and f.severity > Severity.OK
        ]
        ssh = [f for f in findings if f.code not in self.codes]
        if ssh:
            return [f"unreachable: cannot reach {server.label} over SSH now ({ssh[0].message})"]
        if not findings:
            return [
                f"healthy: bup_server on {server.label} runs and answers on port {server.port} "
                "as the inventory says; nothing to restart"
            ]
        return self._preflight(server, ctx)

    def _preflight(self, server: Server, ctx: RepairContext) -> list[str]:
        """The boot gate on the host: its one line as the reason to refuse, if it fails."""
        mounts = mount_settings(ctx)
        if not mounts.enabled:
            return []
        step = Step(
            server.server_id,
            preflight_argv(server, ctx.python, mounts),
            f"bupwatch-preflight (the boot gate) on {server.label}",
            stdin=preflight_source(),
            timeout=PREFLIGHT_SECONDS,
        )
        result = ctx.run(step)
        if result.ok:
            return []
        said = (result.stderr.strip() or result.stdout.strip()).decode("utf-8", "replace")
        line = said.splitlines()[-1] if said else "it said nothing"
        return [
            f"preflight: the boot gate on {server.label} fails (status {result.returncode}), "
            f"so bup_server must not start there: {line}"
        ]

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: RestartBupServerSettings
    ) -> list[Step]:
        server = ctx.server(req.server_id)
        argv = tuple(arg.format(**_values(server, arg)) for arg in settings.command)
        port_file = self._port_file(server, settings)
        return [
            Step(
                req.server_id,
                argv,
                f"restart bup_server on {server.label}, then wait up to "
                f"{settings.wait_seconds:g} s for it to listen and read its port from {port_file}",
                timeout=settings.wait_seconds,
            )
        ]

    def _read_port(self, ctx: RepairContext, server_id: str, path: str) -> int | None:
        result = ctx.run(Step(server_id, ("cat", "--", path), f"read {path}", timeout=10.0))
        text = result.stdout.decode("ascii", "replace").strip()
        if not result.ok or not text.isascii() or not text.isdigit():
            return None
        port = int(text)
        return port if 0 < port < 65536 else None

    def _wait_listening(
        self,
        req: RepairRequest,
        ctx: RepairContext,
        settings: RestartBupServerSettings,
        server: Server,
    ) -> int:
        """Poll fresh probes until bup_server listens on the port its port file names."""
        port_file = self._port_file(server, settings)
        deadline = time.monotonic() + settings.wait_seconds
        seen = "nothing yet"
        while True:
            facts = ctx.facts(req.server_id)
            proc = facts.process
            if not facts.probed:
                seen = f"the host could not be probed ({facts.failure_message})"
            elif proc is None or not proc.running:
                seen = "no bup_server process"
            elif not proc.listen:
                seen = f"bup_server (pid {', '.join(map(str, proc.pids))}) listens on no port"
            else:
                port = self._read_port(ctx, req.server_id, port_file)
                if port is not None and port in proc.ports:
                    return port
                listening = ", ".join(str(p) for p in sorted(proc.ports))
                seen = f"bup_server listens on {listening} but {port_file} says {port or 'nothing'}"
            if time.monotonic() >= deadline:
                raise RepairError(
                    f"bup_server on {server.label} did not come up within "
                    f"{settings.wait_seconds:g} s after the restart: {seen}"
                )
            time.sleep(POLL_SECONDS)

    def execute(
        self,
        req: RepairRequest,
        plan: list[Step],
        ctx: RepairContext,
        settings: RestartBupServerSettings,
    ) -> Outcome:
        out = super().execute(req, plan, ctx, settings)
        server = ctx.server(req.server_id)
        port = self._wait_listening(req, ctx, settings, server)
        if port == server.port:
            out.output.append(
                f"bup_server on {server.label} listens on port {port}, as the inventory says"
            )
            return out
        ctx.set_override(req.server_id, "port", port)
        # The rest of this run (verify) must connect where the daemon now listens; the next
        # inventory load applies the override the same way (journal.apply_overrides).
        ctx.inventory = with_port(ctx.inventory, req.server_id, port)
        out.output.append(
            f"bup_server on {server.label} now listens on port {port} (the inventory said "
            f"{server.port}): the new port is recorded as the watchdog's port override"
        )
        return out


repair = RestartBupServer()
