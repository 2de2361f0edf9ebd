"""Build recorded-style facts for check unit tests: the same JSON records the probe emits."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from bup_watchdog.gather import parse_probe_lines
from bup_watchdog.model import HostFacts, Inventory, Project, Server, project_uid
from bup_watchdog.probe import PROBE_VERSION, WireEncoder

S1 = "11111111-1111-4111-8111-111111111111"
S2 = "22222222-2222-4222-8222-222222222222"
P1 = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
P2 = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SHA_A = "a" * 40
SHA_B = "b" * 40


def mount(path: str, **kw: Any) -> dict[str, Any]:
    rec = {
        "type": "mount",
        "path": path,
        "exists": True,
        "is_mount_point": True,
        "mount_point": path,
        "source": "bup/projects" if path.endswith("projects") else "bup/bups",
        "fstype": "zfs",
        "root": "/",
        "read_only": False,
        "options": ["rw"],
        "bytes_total": 10**12,
        "bytes_free": 10**11,
        "inodes_free": 10**6,
        "error": None,
    }
    rec.update(kw)
    return rec


def repo(project_id: str, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "repo",
        "project_id": project_id,
        "path": f"/bup/bups/{project_id}",
        "is_symlink": False,
        "head": "ref: refs/heads/master",
        "master_sha": SHA_A,
        "master_error": None,
        "master_in_pack": True,
        "master_object_where": "pack",
        "pack_count": 2,
        "idx_count": 2,
        "idx_without_pack": 0,
        "bad_idx": [],
        "midx_count": 0,
        "tmp_count": 0,
        "bupindex_bytes": None,
        "repo_bytes": 100_000,
        "file_count": 20,
        "reflog_last_time": 1_700_000_000,
        "reflog_entries": 2,
        "save_log_bytes": 2000,
        "save_log_is_symlink": False,
        "save_log_mtime": 1_700_000_000.0,
        "touch_mtime": 1_700_000_000.0,
        "replicas": [S1, S2],
        "replicas_error": None,
        "settings": {"disk": 3000},
        "settings_error": None,
        "symlinks_outside": [],
        "errors": [],
    }
    rec.update(kw)
    return rec


def host_records(
    *repos: dict[str, Any],
    mounts: list[dict[str, Any]] | None = None,
    listen_port: int | None = 6000,
) -> list[dict[str, Any]]:
    """A complete probe stream: hello, mounts, process, repos, done."""
    proc = {
        "type": "process",
        "name": "bup_server",
        "pids": [] if listen_port is None else [1234],
        "listen": [] if listen_port is None else [["127.0.0.1", listen_port]],
    }
    return [
        {"type": "hello", "probe_version": PROBE_VERSION, "server_id": None, "bups": "/bup/bups"},
        *(mounts if mounts is not None else [mount("/projects"), mount("/bup/bups")]),
        proc,
        *repos,
        {"type": "done", "repos": len(repos), "project_dirs": 0, "strays": 0},
    ]


def host_facts(server_id: str, records: list[dict[str, Any]], *, tcp_ok: bool = True) -> HostFacts:
    """HostFacts parsed from records exactly as the gather parses a host's answer."""
    from bup_watchdog.model import TcpProbe

    facts = HostFacts(server_id=server_id, gathered_at=0.0)
    facts.bup_server_tcp = TcpProbe("127.0.0.1", 6000, tcp_ok, 0.001, None if tcp_ok else "refused")
    encode = WireEncoder().line  # repositories in the compact form, as the probe sends them
    parse_probe_lines(server_id, (encode(r).encode() for r in records), facts)
    return facts


def inventory(*projects: Project, port: int = 6000) -> Inventory:
    servers = {
        S1: Server(S1, "127.0.0.1", port, dc=0, ssh_host="127.0.0.1", name="s1"),
        S2: Server(S2, "127.0.0.2", port, dc=1, ssh_host="127.0.0.2", name="s2"),
    }
    return Inventory(servers=servers, projects={p.project_id: p for p in projects})


def project(project_id: str = P1, master: str = S1, replicas: tuple[str, ...] = (S2,)) -> Project:
    return Project(project_id=project_id, master=master, replicas=replicas)


def random_v4() -> str:
    return str(uuid.uuid4())


def project_dir(
    project_id: str,
    owners: dict[int, int] | None = None,
    examples: dict[int, list[str]] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """A project_dir record as the probe emits it: by default 20 entries, all (the top included)
    owned by the project's uid. ``owners`` and ``examples`` take int uids; the top's owner is
    ``uid`` (default: the project's uid) and its example paths start with ``.``."""
    top = kw.pop("uid", project_uid(project_id))
    owners = {top: 20} if owners is None else owners
    if examples is None:
        examples = {
            u: (["."] if u == top else []) + [f"dir/file-{u}-{i}" for i in range(n)]
            for u, n in owners.items()
        }
        examples = {u: paths[: min(5, owners[u])] for u, paths in examples.items()}
    rec: dict[str, Any] = {
        "type": "project_dir",
        "project_id": project_id,
        "path": f"/projects/{project_id}",
        "is_symlink": False,
        "is_dir": True,
        "uid": top,
        "gid": top,
        "mtime": 1_700_000_000.0,
        "error": None,
        "owners": {str(u): n for u, n in owners.items()},
        "examples": {str(u): list(p) for u, p in examples.items()},
        "sampled": sum(owners.values()),
        "sample_truncated": False,
        "sample_skipped": False,
        "sample_errors": 0,
    }
    rec.update(kw)
    return rec


def local_inventory(root: Path) -> Path:
    """An inventory of one server, S1, probed on this machine (transport "local") with its bup
    root and /projects in ``root`` (empty); written to ``root/inventory.toml``."""
    (root / "bup" / "bups").mkdir(parents=True)
    (root / "projects").mkdir()
    path = root / "inventory.toml"
    path.write_text(
        f"""
[[servers]]
server_id = "{S1}"
host = "127.0.0.1"
port = 1
transport = "local"
bup_root = "{root / "bup"}"
projects_root = "{root / "projects"}"
"""
    )
    return path
