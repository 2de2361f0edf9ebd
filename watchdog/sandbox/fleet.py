"""The sandbox fleet: N storage hosts on this machine, with real sshd, real bup and planted faults.

Used by the integration tests, the benchmarks and ``bup-watchdog demo``. Each host is an ``sshd`` on
its own loopback address (``127.X.Y.2``, ``.3``, … with X, Y random per fleet so fleets never
collide) with its own host key, in its own mount namespace where ``/bup``, ``/bup/bups``,
``/root`` (a clean home) and, unless the boot-race fault is planted, a tmpfs ``/projects`` are
mounted. Where mount namespaces are unavailable every host runs in the root namespace with per-host
path roots (``bup_root``/``projects_root`` in the inventory), and the builder says so.

Layout under ``root``: ``hosts/<name>/`` per host (``sshd_config``, host key, ``home/``,
``bup/conf``, ``bups/``, ``bin/bup_server``, logs), ``client/`` (the watchdog's key, known_hosts),
``staging/`` (live trees used for the saves), ``templates/`` (big fleets only), ``state/``, and the
``config.toml`` and ``inventory.toml`` written for the fleet.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bup_watchdog.model import project_uid
from bup_watchdog.sandbox import bup_server, repos
from bup_watchdog.sandbox.hosts import SSH_PORT, SandboxHost
from bup_watchdog.sandbox.spec import FleetSpec, ProjectSpec

NO_NAMESPACES = (
    "mount namespaces unavailable: hosts use per-host path roots, "
    "/projects mount faults cannot be planted"
)
REAL_BUP_LIMIT = 32  # fleets with more projects are materialised from template repositories
TEMPLATES = 4  # template repositories per distinct save count


def namespaces_available() -> bool:
    """Whether this process may create the hosts' mount and PID namespaces (root, and
    ``unshare --mount --pid --mount-proc`` works)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
        proc = subprocess.run(
            [*argv, "--mount-proc", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _free_port(address: str) -> int:
    """A port that was free on ``address`` a moment ago (bound, read and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _toml(value: Any) -> str:
    """A TOML literal for the simple values the inventory and config need."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _table(header: str, items: dict[str, Any]) -> list[str]:
    return [header, *(f"{k} = {_toml(v)}" for k, v in items.items() if v is not None), ""]


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class SandboxFleet:
    """Builds, runs and tears down a sandbox fleet described by a FleetSpec.

    ``start()`` builds everything and starts every host; ``stop()`` kills every process it started
    (also registered with atexit). As a context manager it does both.
    """

    def __init__(
        self,
        root: Path,
        spec: FleetSpec,
        *,
        subnet: str | None = None,
        use_namespaces: bool | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.spec = spec
        self.hosts: dict[str, SandboxHost] = {}
        self.namespaces = False
        self.subnet = self._normalise_subnet(subnet) if subnet else ""
        self.config_path = self.root / "config.toml"
        self.inventory_path = self.root / "inventory.toml"
        self.known_hosts = self.root / "client" / "known_hosts"
        self.client_key = self.root / "client" / "id_ed25519"
        self.state_dir = self.root / "state"
        self.http_port = 0
        self.build_seconds = 0.0
        self.now = 0.0
        self.save_times: dict[str, list[int]] = {}
        self.saves_held: dict[tuple[str, str], int] = {}
        self._use_namespaces = use_namespaces
        self._progress = progress
        self._projects = {p.project_id: p for p in spec.projects}

    # ------------------------------------------------------------ public helpers

    def server_id(self, name: str) -> str:
        """The server id of the host called ``name``."""
        return self.hosts[name].server_id

    def project(self, project_id: str) -> ProjectSpec:
        """The spec of a project, by id."""
        return self._projects[project_id]

    def repo_path(self, name: str, project_id: str) -> Path:
        """A project's repository on host ``name``, as seen from outside the host."""
        return self.hosts[name].bups_dir / project_id

    def last_save(self, project_id: str, name: str) -> datetime | None:
        """Time of the newest save host ``name``'s copy of the project holds (None: no save)."""
        held = self.saves_held.get((project_id, name), 0)
        return _utc(self.save_times[project_id][held - 1]) if held else None

    def __enter__(self) -> SandboxFleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    # ------------------------------------------------------------ start / stop

    def start(self) -> None:
        """Build the repositories, start every host and its bup_server, write config + inventory."""
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self._prepare()
            self._build_repos()
            self._start_hosts()
            self._start_bup_servers()
            self._write_live_files()
            self.write_inventory()
            self.write_config()
        except BaseException:
            self.stop()
            raise
        self.build_seconds = time.monotonic() - t0
        self._log(
            f"sandbox fleet up in {self.build_seconds:.1f} s: {len(self.hosts)} hosts on "
            f"{self.subnet}0/24, {len(self._projects)} projects; config {self.config_path}"
        )

    def stop(self) -> None:
        """Kill every process of the fleet (sshd and children, bup_server); safe to call twice."""
        for host in self.hosts.values():
            host.stop()
        atexit.unregister(self.stop)

    # ------------------------------------------------------------ preparation

    @staticmethod
    def _normalise_subnet(subnet: str) -> str:
        parts = subnet.strip(".").split(".")
        if (
            len(parts) != 3
            or parts[0] != "127"
            or not all(p.isdigit() and int(p) < 256 for p in parts)
        ):
            raise ValueError(f"subnet {subnet!r} must look like '127.X.Y.'")
        return ".".join(parts) + "."

    def _pick_subnet(self) -> str:
        """A random 127.X.Y. where port 22 is free on every host address we will use."""
        count = len(self.spec.hosts)
        if self.subnet:
            return self.subnet
        rng = random.SystemRandom()
        for _ in range(40):
            subnet = f"127.{rng.randint(2, 250)}.{rng.randint(2, 250)}."
            if all(_port_free(f"{subnet}{i + 2}", SSH_PORT) for i in range(count)):
                return subnet
        raise RuntimeError(
            "port 22 is taken on every loopback subnet tried; is an sshd listening on 0.0.0.0:22?"
        )

    def _prepare(self) -> None:
        """Decide on namespaces, pick addresses, make directories, keys and host conf files."""
        available = self._use_namespaces is not False and namespaces_available()
        if self._use_namespaces and not available:
            raise RuntimeError(
                "use_namespaces=True but this process cannot create mount namespaces"
            )
        self.namespaces = available
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        if available:
            for mount_point in ("/bup", "/projects"):
                os.makedirs(mount_point, exist_ok=True)
        else:
            self._log(NO_NAMESPACES)
        self.subnet = self._pick_subnet()
        self.now = time.time()
        for sub in ("client", "staging", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not self.client_key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "bup-watchdog-sandbox",
                    "-f",
                    str(self.client_key),
                ],
                check=True,
                capture_output=True,
            )
        client_pub = self.client_key.with_suffix(".pub").read_text(encoding="ascii")
        known: list[str] = []
        for i, hs in enumerate(self.spec.hosts):
            h = SandboxHost(
                name=hs.name,
                server_id=str(uuid.uuid4()),
                address=f"{self.subnet}{i + 2}",
                dc=hs.dc,
                dir=self.root / "hosts" / hs.name,
                spec=hs,
                namespaced=self.namespaces,
                fleet_root=self.root,
            )
            for d in (
                h.home / ".ssh",
                h.bup_dir / "conf",
                h.bup_dir / "bups",
                h.bups_dir,
                h.dir / "bin",
            ):
                d.mkdir(parents=True, exist_ok=True)
            if not self.namespaces:
                Path(h.projects_root).mkdir(exist_ok=True)
            known.append(f"{h.address} {h.generate_host_key()}\n")
            shutil.copyfile(bup_server.__file__, h.bup_server_script)
            h.bup_server_script.chmod(0o755)
            h.write_sshd_config()
            self.hosts[hs.name] = h
        self.known_hosts.write_text("".join(known), encoding="ascii")
        servers = {
            h.server_id: {"host": h.address, "vnodes": 256, "dc": h.dc} for h in self.hosts.values()
        }
        for h in self.hosts.values():
            (h.bup_dir / "conf" / "bup_server_id").write_text(h.server_id + "\n", encoding="ascii")
            (h.bup_dir / "conf" / "bup_servers").write_text(json.dumps(servers, indent=1) + "\n")
            ssh = h.home / ".ssh"
            (ssh / "authorized_keys").write_text(h.authorized_key(client_pub), encoding="ascii")
            # Hosts replicate to each other over SSH as root, as the fleet did: same key and peers.
            shutil.copyfile(self.client_key, ssh / "id_ed25519")
            (ssh / "id_ed25519").chmod(0o600)
            shutil.copyfile(self.known_hosts, ssh / "known_hosts")
        self._log(f"prepared {len(self.hosts)} hosts on {self.subnet}0/24")

    # ------------------------------------------------------------ repositories

    def _build_repos(self) -> None:
        """Make every repository copy, then its conf/ files and faults."""
        projects = list(self.spec.projects)
        for p in projects:
            moved = p.used_after_save_hours * 3600  # saves stopped that long before the last use
            self.save_times[p.project_id] = repos.save_times(p.saves, self.now - moved)
        workers = min(16, max(1, len(projects)))
        if len(projects) <= REAL_BUP_LIMIT:
            self._log(f"making {len(projects)} bup repositories with real bup saves")
            with ThreadPoolExecutor(workers) as pool:
                helds = list(pool.map(self._build_real, projects))
        else:
            helds = self._build_from_templates(projects)
        for p, held in zip(projects, helds, strict=True):
            for name, n in held.items():
                self.saves_held[(p.project_id, name)] = n
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self._finish_project, projects, chunksize=64))
        corrupt = sum(len(p.corrupt_on) for p in projects)
        self._log(f"wrote conf/ for {len(self.saves_held)} repositories, corrupted {corrupt}")

    def _build_real(self, p: ProjectSpec) -> dict[str, int]:
        paths = {h: self.repo_path(h, p.project_id) for h in p.locations}
        staging = self.root / "staging" / p.project_id
        return repos.build_project(p, staging, paths, self.save_times[p.project_id])

    def _build_from_templates(self, projects: list[ProjectSpec]) -> list[dict[str, int]]:
        """Materialise every copy as a hard-link copy of a template made with real bup."""
        counts = sorted({p.saves for p in projects})
        self._log(f"making {TEMPLATES * len(counts)} template repositories with real bup")
        base = self.root / "templates"
        jobs = [(k, s) for s in counts for k in range(TEMPLATES)]
        with ThreadPoolExecutor(min(16, len(jobs))) as pool:
            built = list(
                pool.map(
                    lambda j: repos.build_template(
                        base, j[0], j[1], repos.save_times(j[1], self.now)
                    ),
                    jobs,
                )
            )
        templates = dict(zip(jobs, built, strict=True))
        self._log(
            f"materialising {sum(len(p.locations) for p in projects)} repositories (hard links)"
        )

        def one(p: ProjectSpec) -> dict[str, int]:
            full, prev = templates[(repos.template_key(p.project_id, TEMPLATES), p.saves)]
            held = {}
            for h in p.locations:
                stale = h in p.stale_on
                (prev if stale else full).materialise(self.repo_path(h, p.project_id))
                held[h] = p.saves - 1 if stale else p.saves
            return held

        # The disk's inode creation is the cost; parallel threads overlap its latency.
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, projects, chunksize=64))

    def _finish_project(self, p: ProjectSpec) -> None:
        """Write conf/ on every copy, then plant the project's corruption."""
        times = self.save_times[p.project_id]
        save_log = repos.SaveLog(p, times, self.root / "staging")
        sids = [self.server_id(h) for h in p.locations]
        for h in p.locations:
            repo = self.repo_path(h, p.project_id)
            repos.write_conf(repo, p, sids, self.saves_held[(p.project_id, h)], times, save_log)
            if h in p.corrupt_on:
                repos.corrupt_newest_pack(repo)
        save_log.close()

    # ------------------------------------------------------------ hosts

    def _start_hosts(self) -> None:
        for h in self.hosts.values():
            h.launch_sshd()
        for h in self.hosts.values():
            h.wait_sshd()
            self._log(f"host {h.name} ({h.address}, dc {h.dc}) answers SSH; sshd pid {h.sshd_pid}")

    def _start_bup_servers(self) -> None:
        for h in self.hosts.values():
            # A host without bup_server still has a plausible port in the inventory: a free one.
            port = h.start_bup_server() if h.spec.bup_server_running else _free_port(h.address)
            h.inventory_port = port + 1 if h.spec.port_mismatch else port

    def _write_live_files(self) -> None:
        """Put each project's live files under /projects/<id> on every host where it is mounted."""
        roots = {
            n: h.projects_dir_outside for n, h in self.hosts.items() if h.spec.projects_mounted
        }

        def one(p: ProjectSpec) -> int:
            uid = project_uid(p.project_id)
            tree = repos.live_tree(p, p.saves)
            places = [roots[n] for n in p.locations if n in roots]
            for projects_dir in places:
                repos.write_tree(projects_dir / p.project_id, tree, uid)
            return len(places)

        with ThreadPoolExecutor(8) as pool:
            count = sum(pool.map(one, self.spec.projects, chunksize=64))
        self._log(f"wrote live files of {count} project copies under /projects")

    # ------------------------------------------------------------ config and inventory

    def write_inventory(self) -> None:
        """Write ``inventory.toml``: every server (with its inventory port) and every project."""
        lines = ["# Inventory of a bup-watchdog sandbox fleet (generated).", ""]
        for h in self.hosts.values():
            lines += _table(
                "[[servers]]",
                {
                    "server_id": h.server_id,
                    "name": h.name,
                    "host": h.address,
                    "port": h.inventory_port,
                    "dc": h.dc,
                    "experimental": h.spec.experimental,
                    "ssh_host": h.address,
                    "ssh_port": SSH_PORT,
                    "ssh_user": "root",
                    "bup_root": h.bup_root,
                    "projects_root": h.projects_root,
                },
            )
        for p in self.spec.projects:
            last: dict[str, datetime] = {}
            for name in p.locations:
                when = self.last_save(p.project_id, name)
                if when is not None:
                    last[self.server_id(name)] = when
            lines += _table(
                "[[projects]]",
                {
                    "project_id": p.project_id,
                    "master": self.server_id(p.master),
                    "replicas": [self.server_id(r) for r in p.replicas if r != p.master],
                    "disk_mb": p.disk_mb,
                    "last_edited": _utc(
                        self.save_times[p.project_id][-1] + int(p.used_after_save_hours * 3600)
                    ),
                    "bup_last_save": last,
                },
            )
        self.inventory_path.write_text("\n".join(lines), encoding="utf-8")

    def _root_fstype(self) -> str:
        proc = subprocess.run(
            ["findmnt", "-no", "FSTYPE", "--target", str(self.root)], capture_output=True, text=True
        )
        return proc.stdout.strip() or "ext4"

    def write_config(self) -> None:
        """Write ``config.toml`` for a watchdog watching this fleet (paths relative to it)."""
        if not self.http_port:
            self.http_port = _free_port("127.0.0.1")
        lines = ["# bup-watchdog config for a sandbox fleet (generated).", ""]
        lines += _table("[inventory]", {"source": "file", "file": "inventory.toml"})
        lines += _table(
            "[ssh]",
            {
                "known_hosts": "client/known_hosts",
                "key_file": "client/id_ed25519",
                "connect_timeout": 3.0,
            },
        )
        lines += _table("[state]", {"directory": "state"})
        lines += _table("[http]", {"listen": f"127.0.0.1:{self.http_port}"})
        # A sandbox's faults are planted on purpose (tests and the demo share the fleet): a daemon
        # on this config only repairs what an operator, the API or an alert asks for.
        lines += _table("[schedule]", {"auto_repair": False})
        if self.namespaces:
            lines += _table(
                "[checks.mount_sanity]",
                {
                    "projects_fstypes": ["tmpfs"],
                    "projects_source": "sandbox-projects-*",
                    "bups_fstypes": [self._root_fstype()],
                    "bups_source": "*",
                },
            )
        else:
            lines += _table("[checks.mount_sanity]", {"enabled": False})
        if self.hosts:
            lines += _table("[repairs.restart_bup_server]", {"command": self._restart_command()})
        self.config_path.write_text("\n".join(lines), encoding="utf-8")

    def _restart_command(self) -> list[str]:
        """The restart command for the repair config: each host's daemonising bup_server command,
        its per-host parts replaced by placeholders ({name} in the stand-in's path, {bup_root},
        {host}) that restart_bup_server fills in from the inventory."""

        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        h = next(iter(self.hosts.values()))
        host_dir = str(h.dir)
        out = []
        for arg in h.bup_server_argv(daemon=True):
            if arg == h.address:
                out.append("{host}")
            elif arg == h.bup_root or arg.startswith(h.bup_root + "/"):
                out.append("{bup_root}" + literal(arg[len(h.bup_root) :]))
            elif arg.startswith(host_dir + "/"):
                out.append(
                    literal(str(self.root / "hosts")) + "/{name}" + literal(arg[len(host_dir) :])
                )
            else:
                out.append(literal(arg))
        return out
