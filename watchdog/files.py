"""The operations files shipped in the wheel: list them, or copy them out of the installed package.

A user who installed with pip or pipx has no source checkout; ``bup-watchdog files --dest DIR``
gives them the Prometheus rules, the Alertmanager example, the Grafana dashboards and provisioning,
the config example, the runbooks, the systemd unit, the sudoers example and the programs for the
storage hosts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

# (package, folder in the destination, what it holds)
_SHIPPED: tuple[tuple[str, str, str], ...] = (
    ("bup_watchdog.dashboards", "dashboards", "Prometheus rules, Alertmanager, Grafana"),
    ("bup_watchdog.examples", "examples", "configuration example"),
    ("bup_watchdog.deploy", "deploy", "systemd units and drop-ins, sudoers example"),
    ("bup_watchdog.docs", "docs", "runbooks (every alert's runbook_url), reliability table"),
    ("bup_watchdog.hostside", "hostside", "programs to install on the storage hosts"),
)
# Host-side modules are installed under the names the docs and units use.
_HOST_PROGRAMS = {"ssh_gate.py": "bupwatch-ssh-gate", "preflight.py": "bupwatch-preflight"}
_SKIPPED_NAMES = {"__init__.py", "__pycache__", "generate.py", "py.typed"}


@dataclass(frozen=True, slots=True)
class ShippedFile:
    """One operations file: where it goes under ``--dest``, and whether it is a program."""

    name: PurePosixPath
    source: Traversable
    executable: bool
    about: str


def shipped_files() -> list[ShippedFile]:
    """Every operations file in the installed package, sorted by destination name."""
    found: list[ShippedFile] = []
    for package, folder, about in _SHIPPED:
        found.extend(_walk(files(package), PurePosixPath(folder), about, folder == "hostside"))
    return sorted(found, key=lambda f: f.name)


def _walk(root: Traversable, into: PurePosixPath, about: str, host: bool) -> Iterator[ShippedFile]:
    for entry in root.iterdir():
        if entry.name in _SKIPPED_NAMES or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            yield from _walk(entry, into / entry.name, about, host)
        elif host:
            if entry.name in _HOST_PROGRAMS:
                yield ShippedFile(into / _HOST_PROGRAMS[entry.name], entry, True, about)
        else:
            yield ShippedFile(into / entry.name, entry, False, about)


class FilesExistError(Exception):
    """A destination file exists with other content and ``--force`` was not given."""


def copy_files(dest: Path, *, force: bool = False) -> list[Path]:
    """Copy every shipped file under ``dest``; refuse to overwrite a changed file unless forced."""
    shipped = shipped_files()
    clashes = [
        dest / f.name
        for f in shipped
        if (dest / f.name).exists() and (dest / f.name).read_bytes() != f.source.read_bytes()
    ]
    if clashes and not force:
        names = ", ".join(str(p) for p in clashes[:5]) + (" …" if len(clashes) > 5 else "")
        raise FilesExistError(
            f"{len(clashes)} file(s) under {dest} differ from the shipped ones ({names}); "
            "nothing was copied. Use --force to overwrite them."
        )
    written: list[Path] = []
    for f in shipped:
        target = dest / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with as_file(f.source) as src:
            shutil.copyfile(src, target)
        target.chmod(0o755 if f.executable else 0o644)
        written.append(target)
    return written
