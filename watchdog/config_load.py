"""Reading and validating a config file: the schema of ``watchdog/config.py``, the checks' and
repairs' own tables, the rules across sections, and the files a config names. Every problem is
reported at once, as ``At 'dotted.key': message`` under the file's name (a ConfigError).
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bup_watchdog.config import Config, InventoryConfig, StateConfig
from bup_watchdog.errors import ConfigError, LocalFault
from bup_watchdog.model import system_path_problem


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _messages(err: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for e in err.errors():
        path = _dotted(prefix + tuple(e["loc"]))
        msg = "unknown key (check the spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"At '{path}': {msg}")
    return out


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _plugin_sections(
    data: Mapping[str, Any], key: str, kind: str, models: Mapping[str, type[BaseModel]]
) -> tuple[dict[str, Any], list[str]]:
    """Validate [checks.NAME] or [repairs.NAME] tables against each plug-in's model."""
    raw = data.get(key, {}) if isinstance(data, Mapping) else {}
    settings: dict[str, Any] = {}
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        return settings, problems  # the top-level model reports the wrong type
    for name in raw:
        if name not in models:
            known = ", ".join(sorted(models))
            problems.append(f"At '{key}.{name}': no such {kind} (known: {known})")
    for name, model in models.items():
        try:
            settings[name] = model.model_validate(raw.get(name, {}))
        except ValidationError as exc:
            problems.extend(_messages(exc, (key, name)))
    return settings, problems


_S = TypeVar("_S", bound=BaseModel)


def _section(model: type[_S], data: Mapping[str, Any], key: str) -> _S | None:
    """One section validated on its own (None when it is invalid: reported already)."""
    try:
        return model.model_validate(data.get(key, {}) if isinstance(data, Mapping) else {})
    except ValidationError:
        return None


def parse_config(
    data: Mapping[str, Any],
    check_models: Mapping[str, type[BaseModel]],
    *,
    source: str = "config",
    base: Path | None = None,
    repair_models: Mapping[str, type[BaseModel]] | None = None,
) -> Config:
    """Validate a config mapping; raise one ConfigError listing every problem found."""
    nul = [f"At {at!r}: holds a NUL character, which no path or name can" for at in _nul_keys(data)]
    if nul:  # os and pathlib raise ValueError on them: stop before any value is used
        raise ConfigError(source, nul)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_messages(exc))
    settings, more = _plugin_sections(data, "checks", "check", check_models)
    problems.extend(more)
    if repair_models is None:
        from bup_watchdog.repairs import (
            settings_models as repair_settings_models,  # plug-ins load late
        )

        repair_models = repair_settings_models()
    repair_settings, more = _plugin_sections(data, "repairs", "repair", repair_models)
    problems.extend(more)
    if config is not None:
        for i, rule in enumerate(config.alerts.rules):
            if rule.repair not in repair_models:
                problems.append(f"At 'alerts.rules.{i}.repair': no such repair {rule.repair!r}")
    if config is not None and config.membership.enabled and config.guard.leases != "cassandra":
        problems.append(
            "At 'guard.leases': must be 'cassandra' when membership.enabled is true (several "
            "watchdogs must share their repair leases)"
        )
    if (
        config is not None
        and 0 < config.state.keep_history_days * 24 < config.guard.failure_window_hours
    ):
        problems.append(
            "At 'state.keep_history_days': must cover guard.failure_window_hours "
            f"({config.guard.failure_window_hours:g} h): the guard counts a target's failures "
            "in the journal that far back"
        )
    if config is not None and base is not None:
        config.inventory.file = _resolve(base, config.inventory.file)
        config.ssh.known_hosts = _resolve(base, config.ssh.known_hosts)
        config.ssh.key_file = _resolve(base, config.ssh.key_file)
        config.ssh.config_file = _resolve(base, config.ssh.config_file)
        config.state.directory = _resolve(base, config.state.directory) or config.state.directory
        config.guard.api_token_file = _resolve(base, config.guard.api_token_file)
    # Checked on their own sections too when another section failed: every problem at once.
    state = config.state if config else _section(StateConfig, data, "state")
    if state is not None:
        directory = state.directory if config or base is None else _resolve(base, state.directory)
        bad = system_path_problem(str((directory or state.directory).resolve()))
        if bad:
            problems.append(f"At 'state.directory': {directory} {bad}")
    inventory = config.inventory if config else _section(InventoryConfig, data, "inventory")
    if inventory is not None and inventory.source == "file" and inventory.file is None:
        problems.append("At 'inventory.file': required when inventory.source = 'file'")
    if problems or config is None:
        raise ConfigError(source, problems)
    config.check_settings = settings
    config.repair_settings = repair_settings
    return config


def _nul_keys(value: Any, at: str = "") -> Iterator[str]:
    """The dotted keys of raw config data whose text holds a NUL (TOML's \\u0000)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _nul_keys(item, f"{at}.{key}" if at else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_keys(item, f"{at}.{i}")
    elif isinstance(value, str) and "\0" in value:
        yield at


def _table(data: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    """The table at a dotted key of raw config data ({} when absent or not a table)."""
    table: Any = data
    for part in dotted.split("."):
        table = table.get(part) if isinstance(table, Mapping) else None
    return table if isinstance(table, Mapping) else {}


def _unreadable(path: Path) -> str | None:
    """Why a file cannot be used (None when it can be read by this user)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot be read by this user ({exc.strerror or exc})"
    return None


def _private(path: Path, what: str) -> str | None:
    """A sentence when a secret file is readable by group or others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return None
    return f"{path} is readable by group or others (mode {mode:04o}): {what}; chmod 600 it"


def file_problems(data: Mapping[str, Any], base: Path) -> list[str]:
    """Problems with the files a config names, as ``At 'key': …`` sentences.

    ``bup-watchdog config check`` runs this on the raw data (so that they are reported with the
    schema's problems, all at once); the daemon does not refuse to start over them (a sweep
    that cannot read known_hosts says so as a watchdog problem). ``ssh.known_hosts`` is checked
    even when left empty (its default, ~/.ssh/known_hosts, of the user running this).
    """
    out: list[str] = []

    def path_at(section: str, key: str) -> Path | None:
        value = _table(data, section).get(key)
        if not isinstance(value, str) or not value:
            return None  # absent, or a wrong type the schema reports
        return _resolve(base, Path(value))

    known = path_at("ssh", "known_hosts")
    shown = f"{known}" if known else f"{Path('~/.ssh/known_hosts').expanduser()} (the default)"
    why = _unreadable(known or Path("~/.ssh/known_hosts").expanduser())
    if why:
        out.append(f"At 'ssh.known_hosts': {shown} {why}: every host key would be refused")
    key = path_at("ssh", "key_file")
    if key is not None:
        why = _unreadable(key)
        if why:
            out.append(f"At 'ssh.key_file': {key} {why}: no host could be logged in to")
        elif bad := _private(key, "OpenSSH refuses such a private key"):
            out.append(f"At 'ssh.key_file': {bad}")
    ssh_config = path_at("ssh", "config_file")
    if ssh_config is not None:
        why = _unreadable(ssh_config)
        if why:
            out.append(f"At 'ssh.config_file': {ssh_config} {why}: no host could be reached")
        else:
            from bup_watchdog.transport.ssh_config import load  # (paramiko: only when one is named)

            try:
                load(ssh_config)
            except LocalFault as exc:
                out.append(f"At 'ssh.config_file': {exc}")
    token = path_at("guard", "api_token_file")
    if token is not None:
        why = _unreadable(token)
        if why:
            out.append(f"At 'guard.api_token_file': {token} {why}")
        else:
            if bad := _private(token, "anyone on this machine could call the write endpoints"):
                out.append(f"At 'guard.api_token_file': {bad}")
            lines = token.read_bytes().decode("utf-8", "replace").strip().splitlines()
            length = len(lines[0].strip()) if lines else 0
            if length < 16:
                out.append(
                    f"At 'guard.api_token_file': the token (first line of {token}) has {length} "
                    "characters; at least 16 are needed"
                )
    uses_cassandra = (
        _table(data, "inventory").get("source") == "cassandra"
        or _table(data, "guard").get("leases") == "cassandra"
        or _table(data, "membership").get("enabled") is True
    )
    if uses_cassandra:
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            path = path_at("inventory.cassandra", name)
            why = _unreadable(path) if path is not None else None
            if why:
                out.append(f"At 'inventory.cassandra.{name}': {path} {why}")
    return out


def load_config(path: Path, check_models: Mapping[str, type[BaseModel]]) -> Config:
    """Read and validate a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    config = parse_config(data, check_models, source=str(path), base=path.parent.resolve())
    config.path = path.resolve()
    return config
