"""Walk one storage host once and print its facts (mounts, bup_server, repos) as JSON lines.
Stdlib-only and read-only, sent to ``python3 -S -`` so a sweep costs one SSH session per host.
"""
# Output, one JSON record per line, in this order: ``hello``, two ``mount`` records
# (PROJECTS_ROOT, BUP_ROOT/bups), ``process``, one ``repo`` or ``stray`` per entry of
# BUP_ROOT/bups (sorted by name), one ``project_dir`` or ``stray`` per entry of PROJECTS_ROOT
# (none with ``--no-project-dirs``), and ``done`` last (a stream without ``done`` is truncated).
# With ``--only PROJECT_ID`` (repeatable) only those projects' repositories and live directories
# are walked (strays are still reported: listing a directory is cheap), and ``hello`` carries
# ``"only": [ids]`` so that nobody takes the output for the whole host (a repair's probe).
# ``repo`` and ``project_dir`` records, one per repository, are compact arrays (see WireEncoder);
# the others are ``json.dumps(record, sort_keys=True)``, as are all with ``--readable``.
#
# Incremental walks: with ``--fingerprint`` every ``repo`` record also carries ``fingerprint``, a
# digest of the lstat of the paths that the cheap facts depend on (see ``fingerprint()``), or null
# when one of them changed too recently to be trusted (``--racy-seconds``, like git's "racily
# clean" entries), and every ``project_dir`` record a ``digest`` of its content. Given the known
# state of the host (from ``KNOWN_STATE`` below, which the gather fills in, or ``--known-state
# FILE``), a repository whose fingerprint is unchanged is not walked, and a project_dir record
# equal to the known one is not printed; both are named in one ``unchanged`` record just before
# ``done``: ``{"type": "unchanged", "known": N, "repos": B64, "project_dirs": B64}``, where each
# B64 is a bitmap over the N known project ids in sorted order (bit n of byte n // 8, least
# significant first), set for the unchanged ones. The gather reuses the facts it already has for
# them: a sweep with few changes prints a few bytes per repository, not a line each.
#
# Rules kept everywhere: no symlink is followed out of a repository (files are opened with
# O_NOFOLLOW below directories the walk saw as real directories), nothing is written, no
# subprocess is run, every file read is capped, and a problem in one repository becomes a field
# or an ``errors`` entry in that repository's record instead of stopping the walk.
# Below PROJECTS_ROOT only a bounded sample of each live tree is lstat'ed, for its owners
# (``--owner-sample`` entries per project, ``--owner-sample-total`` per host), the projects taken
# in name order from ``--owner-sample-from`` on, wrapping around, so that a host whose budget runs
# out before its last project has every project sampled in turn over successive walks; the
# project_dir records come in that order.
#
# Text read from files is decoded as UTF-8 with ``replace``; file names are decoded with
# os.fsdecode (surrogateescape), so odd bytes come out as \udcXX escapes in the JSON and the
# original bytes can be rebuilt with os.fsencode.

from __future__ import annotations

import argparse
import base64
import collections
import errno
import json
import marshal
import os
import re
import socket
import stat
import struct
import sys
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

TYPE_CHECKING = False  # typing costs 2.5 ms to import on every host; annotations are strings here
if TYPE_CHECKING:
    from typing import IO, Any

try:  # the C module itself: ``hashlib`` would load OpenSSL too (3 ms on every host, every sweep)
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b as _blake2b
try:  # the same for sha512 (project uids): _sha2 from Python 3.12 on, _sha512 before
    from _sha2 import sha512 as _sha512  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from _sha512 import sha512 as _sha512  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:  # pragma: no cover
        from hashlib import sha512 as _sha512

PROBE_VERSION = 2  # 2: repositories and live directories as compact arrays
# bup_server writes the port it listens on to BUP_ROOT/conf/PORT_FILE (as restart_bup_server's
# default port_file); the probe reads it only when the daemon's own sockets are hidden from it.
PORT_FILE = "bup_server.port"

# The known state of this host for an incremental walk: zlib-compressed, base64 lines
# "<project id> <repo fingerprint or -> <project_dir digest or ->". The gather replaces the empty
# value on the next line when it sends the probe (one line, exactly as written here); empty means
# "walk every repository".
KNOWN_STATE = ""

UUID4_RE = re.compile(
    rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE
)
SHA_RE = re.compile(r"[0-9a-f]{40}")

MAX_JSON_BYTES = 1 << 20  # conf/*.json files
MAX_SMALL_BYTES = 64 << 10  # HEAD, refs, bup_server_id
MAX_PACKED_REFS_BYTES = 16 << 20
MAX_REFLOG_COUNT_BYTES = 16 << 20  # newlines are counted up to this size, only the tail beyond
REFLOG_TAIL_BYTES = 64 << 10
READ_CHUNK = 64 << 10  # a read past what fstat saw (below malloc's mmap threshold)
MAX_BAD_IDX = 20
FLUSH_EVERY = 500
OWNER_SAMPLE = 200  # entries per project whose owner is sampled
OWNER_SAMPLE_TOTAL = 50_000  # and per host
MAX_OWNER_EXAMPLES = 5  # paths shown per uid
RACY_SECONDS = 2.0  # a fingerprint is not given for paths changed this shortly before a walk

IDX_MAGIC = b"\377tOc"
IDX_VERSION_2 = b"\0\0\0\2"
IDX_HEADER_BYTES = 8 + 256 * 4
IDX_TRAILER_BYTES = 40  # pack checksum + index checksum
IDX_BYTES_PER_OBJECT = 20 + 4 + 4  # sha, crc32, 32-bit offset

BUPINDEX_FILES = ("bupindex", "bupindex.meta", "bupindex.hlink")
# Directories whose being a symlink is worth an explicit error (the walk never follows them).
KEY_DIRS = ("objects", "objects/pack", "refs", "refs/heads", "logs", "logs/refs", "conf")

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# --------------------------------------------------------------------------------------------
# Pack index (.idx version 2)
# --------------------------------------------------------------------------------------------


def _idx_fanout(fd: int, size: int) -> tuple[int, ...]:
    """Read and check the header of an open v2 .idx; return its 256-entry fanout table."""
    if size < IDX_HEADER_BYTES + IDX_TRAILER_BYTES:
        raise ValueError(f"truncated: {size} bytes is too short for a pack index")
    head = os.pread(fd, IDX_HEADER_BYTES, 0)
    if len(head) < IDX_HEADER_BYTES:
        raise ValueError("truncated while reading the header")
    if head[:4] != IDX_MAGIC:
        raise ValueError("bad magic: not a version 2 pack index")
    if head[4:8] != IDX_VERSION_2:
        version = struct.unpack(">I", head[4:8])[0]
        raise ValueError(f"unsupported pack index version {version}")
    fanout: tuple[int, ...] = struct.unpack(">256I", head[8:])
    if fanout != tuple(sorted(fanout)):  # sorted() of a sorted list is one linear pass
        raise ValueError("fanout table is not monotonic")
    count = fanout[255]
    need = IDX_HEADER_BYTES + count * IDX_BYTES_PER_OBJECT + IDX_TRAILER_BYTES
    if size < need:
        raise ValueError(f"truncated: {size} bytes, but {count} objects need at least {need}")
    extra = size - need
    if extra % 8 or extra // 8 > count:
        raise ValueError(f"size {size} does not match {count} objects")
    return fanout


def _idx_contains(fd: int, fanout: tuple[int, ...], sha: bytes) -> bool:
    """Binary search for a 20-byte sha in the sha table of an open, checked v2 .idx."""
    first = sha[0]
    lo = fanout[first - 1] if first else 0
    hi = fanout[first]
    if hi <= lo:
        return False
    table = os.pread(fd, (hi - lo) * 20, IDX_HEADER_BYTES + lo * 20)
    n = hi - lo
    if len(table) != n * 20:
        raise ValueError("truncated while reading the sha table")
    if table[0] != first or table[-20] != first:
        raise ValueError("sha table does not agree with the fanout table")
    a, b = 0, n
    while a < b:
        mid = (a + b) // 2
        entry = table[mid * 20 : mid * 20 + 20]
        if entry < sha:
            a = mid + 1
        elif entry > sha:
            b = mid
        else:
            return True
    return False


def _open_regular(path: str | bytes, walked: os.stat_result | None = None) -> tuple[int, int]:
    """Open a regular file without following a final symlink; return (fd, size).

    ``walked``: the file's lstat from the walk that just saw it as a regular file; then its size
    is taken from there and no ``fstat`` is made (a system call per file read). Whatever replaces
    it in between, the open still follows no symlink and cannot hang (``O_NONBLOCK``): a FIFO
    reads as empty, a directory as an error, as a file rewritten by its owner would read anyway.
    """
    fd = os.open(path, _OPEN_FLAGS)
    if walked is not None:
        return fd, walked.st_size
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _sha_bytes(sha_hex: str) -> bytes:
    if not SHA_RE.fullmatch(sha_hex):
        raise ValueError(f"not a 40-digit lowercase hex sha: {sha_hex!r}")
    return bytes.fromhex(sha_hex)


def sha_in_idx(idx_path: str | bytes, sha_hex: str) -> bool:
    """Whether the v2 pack index at idx_path lists sha_hex (fanout + binary search).

    Raises ValueError with a plain message for a bad magic, version or size, and OSError when the
    file cannot be opened.
    """
    sha = _sha_bytes(sha_hex)
    fd, size = _open_regular(idx_path)
    try:
        return _idx_contains(fd, _idx_fanout(fd, size), sha)
    finally:
        os.close(fd)


def read_idx_shas(path: str | bytes) -> list[str]:
    """Every sha (40-hex, in index order) of the v2 pack index at path; ValueError if bad."""
    fd, size = _open_regular(path)
    try:
        fanout = _idx_fanout(fd, size)
        count = fanout[255]
        table = os.pread(fd, count * 20, IDX_HEADER_BYTES)
    finally:
        os.close(fd)
    if len(table) != count * 20:
        raise ValueError("truncated while reading the sha table")
    shas = [table[i : i + 20] for i in range(0, count * 20, 20)]
    for i in range(1, count):
        if shas[i - 1] >= shas[i]:
            raise ValueError(f"sha table is not sorted at entry {i}")
    return [s.hex() for s in shas]


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------

_OCTAL_RE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    raw = _OCTAL_RE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)
    return os.fsdecode(raw)


def parse_mountinfo(text: str | bytes) -> list[dict[str, Any]]:
    """Parse /proc/PID/mountinfo text; octal escapes such as ``\\040`` are decoded.

    Each mount is a dict with mount_id, parent_id, major_minor, root, mount_point, options
    (list), optional (list), fstype, source and super_options (list). Malformed lines are skipped.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    mounts: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        super_options = fields[sep + 3] if len(fields) > sep + 3 else b""
        mounts.append(
            {
                "mount_id": mount_id,
                "parent_id": parent_id,
                "major_minor": _unescape(fields[2]),
                "root": _unescape(fields[3]),
                "mount_point": _unescape(fields[4]),
                "options": _unescape(fields[5]).split(","),
                "optional": [_unescape(f) for f in fields[6:sep]],
                "fstype": _unescape(fields[sep + 1]),
                "source": _unescape(fields[sep + 2]),
                "super_options": [o for o in _unescape(super_options).split(",") if o],
            }
        )
    return mounts


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point + "/")


def mount_facts(path: str, mounts: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The mount record for path, given parse_mountinfo() output (None: mountinfo unreadable)."""
    real = os.path.realpath(path)
    rec: dict[str, Any] = {
        "type": "mount",
        "path": path,
        "real_path": real,
        "exists": os.path.exists(path),
        "is_mount_point": False,
        "mount_point": None,
        "source": None,
        "fstype": None,
        "root": None,
        "read_only": None,
        "options": [],
        "super_options": [],
        "bytes_total": None,
        "bytes_free": None,
        "inodes_free": None,
        "error": None,
    }
    problems: list[str] = []
    if mounts is None:
        problems.append("/proc/self/mountinfo is unreadable")
    else:
        best: dict[str, Any] | None = None
        for m in mounts:
            mp = m["mount_point"]
            if mp == real:
                rec["is_mount_point"] = True
            # Later lines are mounted on top of earlier ones at the same point: ">=" keeps the last.
            if _contains(mp, real) and (best is None or len(mp) >= len(best["mount_point"])):
                best = m
        if best is not None:
            rec["mount_point"] = best["mount_point"]
            rec["source"] = best["source"]
            rec["fstype"] = best["fstype"]
            rec["root"] = best["root"]
            rec["options"] = list(best["options"])
            rec["super_options"] = list(best["super_options"])
            rec["read_only"] = "ro" in best["options"] or "ro" in best["super_options"]
    if rec["exists"]:
        try:
            vfs = os.statvfs(path)
        except OSError as e:
            problems.append(f"statvfs failed: {e.strerror}")
        else:
            rec["bytes_total"] = vfs.f_blocks * vfs.f_frsize
            rec["bytes_free"] = vfs.f_bavail * vfs.f_frsize
            rec["inodes_free"] = vfs.f_favail
    rec["error"] = "; ".join(problems) or None
    return rec


def read_mounts(path: str = "/proc/self/mountinfo") -> list[dict[str, Any]] | None:
    """parse_mountinfo() of this process's mount table, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# The bup_server process and its listening sockets
# --------------------------------------------------------------------------------------------


def decode_proc_net_address(hex_addr: str) -> tuple[str, int]:
    """Decode a /proc/net/tcp{,6} ``ADDR:PORT`` field (address words in host byte order)."""
    addr_hex, _, port_hex = hex_addr.partition(":")
    port = int(port_hex, 16)
    if len(addr_hex) == 8:
        return socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(addr_hex, 16))), port
    if len(addr_hex) == 32:
        words = [int(addr_hex[i : i + 8], 16) for i in range(0, 32, 8)]
        return socket.inet_ntop(socket.AF_INET6, struct.pack("=4I", *words)), port
    raise ValueError(f"unexpected address {hex_addr!r}")


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): ask the kernel for the listening TCP sockets.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_INET_DIAG_MSG_BYTES = 72  # family, state, timer, retrans, sockid (48), 4 x u32, inode


def _listening_netlink(want: Callable[[str, int, int], bool]) -> list[list[Any]] | None:
    """Addresses of the listening TCP sockets ``want(inode, port, uid)`` accepts, from the
    kernel's sock_diag netlink interface (what ``ss -ltn`` uses, open to any user): only the
    listening table is looked at, where /proc/net/tcp{,6} walks every bucket of the connection
    table (9 ms per probe on a machine with 24 GiB). None when the interface is not there (then
    /proc is read)."""
    found: set[tuple[str, int]] = set()
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    with sock:
        sock.settimeout(5.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
            req += bytes(48)  # any socket id
            head = struct.pack(
                "=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, seq, 0
            )
            try:
                sock.send(head + req)
                done = False
                while not done:
                    data = sock.recv(1 << 16)
                    if not data:
                        return None
                    off = 0
                    while off + 16 <= len(data):
                        length, kind = struct.unpack_from("=IH", data, off)
                        if length < 16 or off + length > len(data) or kind == _NLMSG_ERROR:
                            return None
                        if kind == _NLMSG_DONE:
                            done = True
                            break
                        msg = off + 16
                        if kind == _SOCK_DIAG_BY_FAMILY and length >= 16 + _INET_DIAG_MSG_BYTES:
                            fam = data[msg]
                            (port,) = struct.unpack_from(">H", data, msg + 4)
                            uid, inode = struct.unpack_from("=II", data, msg + 64)
                            raw = data[msg + 8 : msg + (12 if fam == socket.AF_INET else 24)]
                            if want(str(inode), port, uid):
                                found.add((socket.inet_ntop(fam, raw), port))
                        off += (length + 3) & ~3
            except (OSError, ValueError, struct.error):
                return None
    return [[addr, port] for addr, port in sorted(found)]


def _listening(want: Callable[[str, int, int], bool], proc: str) -> list[list[Any]]:
    """Addresses of the listening TCP sockets ``want(inode, port, uid)`` accepts: sock_diag,
    else /proc/net/tcp{,6} (both readable by any user)."""
    if proc == "/proc":
        fast = _listening_netlink(want)
        if fast is not None:
            return fast
    return _listening_proc(want, proc)


def _listening_proc(want: Callable[[str, int, int], bool], proc: str) -> list[list[Any]]:
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{table}", encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            try:
                addr, port = decode_proc_net_address(fields[1])
                if want(fields[9], port, int(fields[7])):
                    found.add((addr, port))
            except ValueError:
                continue
    return [[addr, port] for addr, port in sorted(found)]


def _read_port_file(path: str) -> int | None:
    """The port a port file names (one decimal number), or None."""
    try:
        with open(path, "rb") as f:
            text = f.read(32).strip()
    except OSError:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        return None
    return int(text)


def _ancestors(proc: str) -> set[int]:
    """This process and its ancestors: none of them is the server, whatever their argv says."""
    seen: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"{proc}/{pid}/stat", "rb") as f:
                tail = f.read(4096).rpartition(b")")[2].split()
            pid = int(tail[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def process_facts(name: str, proc: str = "/proc", port_file: str | None = None) -> dict[str, Any]:
    """Processes with an argv element whose basename is name: every one this host's ``/proc``
    shows (its PID namespace), whatever its mount namespace (systemd's ``PrivateTmp=`` gives a
    service one of its own), and where they listen.

    ``port_from`` says how the ports were learnt: ``sockets`` (the processes' own socket fds),
    ``port_file`` (a probe that is not root cannot read a root daemon's ``/proc/PID/fd``: the
    port its ``port_file`` names, confirmed by a listening socket on that port owned by the
    process's uid in the kernel's table, which any user may read), or ``none``."""
    want = os.fsencode(name)
    skip = _ancestors(proc)
    pids: list[int] = []
    inodes: set[str] = set()
    hidden: set[int] = set()  # uids of processes whose fds this probe may not read
    try:
        entries = [e.name for e in os.scandir(proc) if e.name.isascii() and e.name.isdigit()]
    except OSError:
        entries = []
    for entry in entries:
        pid = int(entry)
        if pid in skip:
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                raw = f.read(1 << 16)
        except OSError:
            continue
        if not raw or want not in raw:
            continue
        if not any(os.path.basename(arg) == want for arg in raw.split(b"\0")):
            continue
        pids.append(pid)
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except PermissionError:
            try:
                hidden.add(os.stat(f"{proc}/{pid}").st_uid)
            except OSError:
                continue
            continue
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                inodes.add(target[8:-1])
    listen = _listening(lambda inode, _port, _uid: inode in inodes, proc) if inodes else []
    rec: dict[str, Any] = {"type": "process", "name": name, "pids": sorted(pids)}
    rec["port_from"] = "sockets" if listen else "none"
    if not listen and hidden and port_file:
        port = _read_port_file(port_file)
        rec["port_file"] = port_file
        if port is not None:
            listen = _listening(lambda _inode, p, uid: p == port and uid in hidden, proc)
            rec["port_from"] = "port_file" if listen else "none"
    rec["listen"] = listen
    return rec


# --------------------------------------------------------------------------------------------
# One repository
# --------------------------------------------------------------------------------------------


class _Walk:
    """What one non-following walk of a repository saw, by repo-relative path."""

    __slots__ = (
        "bytes",
        "dirs",
        "dstats",
        "errors",
        "files",
        "links",
        "listed",
        "others",
        "unlisted",
    )

    def __init__(self) -> None:
        self.files: dict[str, os.stat_result] = {}  # regular files, lstat
        self.bytes = 0  # their sizes, summed
        self.links: dict[str, str] = {}  # symlinks: rel -> absolute path of the link
        self.dirs: set[str] = {""}
        self.dstats: dict[str, os.stat_result] = {}  # lstat of the real directories asked for
        self.others: set[str] = set()  # fifos, sockets, devices
        self.unlisted: set[str] = set()  # real directories that could not be listed
        self.listed: dict[str, list[str]] = {}  # names in "", objects, objects/pack
        self.errors: list[str] = []


_LISTED_DIRS = frozenset(("", "objects", "objects/pack"))


def _walk(root: str, stat_dirs: Collection[str] = ()) -> _Walk:
    """Every entry below root, without following a symlink: one ``lstat`` per regular file (its
    size and times) and per directory in ``stat_dirs``; the other kinds come from the listing."""
    w = _Walk()
    files, dirs, links, others = w.files, w.dirs, w.links, w.others
    total = 0
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError as e:
            w.unlisted.add(rel)
            w.errors.append(f"cannot list {rel or '.'}: {e.strerror}")
            continue
        names: list[str] | None = [] if rel in _LISTED_DIRS else None
        prefix = rel + "/" if rel else ""
        with it:
            for entry in it:
                name = entry.name
                r = prefix + name
                if names is not None:
                    names.append(name)
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = files[r] = entry.stat(follow_symlinks=False)
                        total += st.st_size
                    elif entry.is_dir(follow_symlinks=False):
                        dirs.add(r)
                        stack.append((r, entry.path))
                        if r in stat_dirs:
                            try:  # noqa: SIM105 - no contextlib import on every host
                                w.dstats[r] = entry.stat(follow_symlinks=False)
                            except OSError:  # the fingerprint looks at it again
                                pass
                    elif entry.is_symlink():
                        links[r] = entry.path
                    else:
                        others.add(r)
                except OSError as e:  # vanished while walking
                    w.errors.append(f"cannot stat {r}: {e.strerror}")
        if names is not None:
            w.listed[rel] = names
    w.bytes = total
    return w


class _FileProblem(Exception):
    """A sentence about why a repository file could not be read."""


def _read_in_repo(root: str, w: _Walk, rel: str, cap: int) -> bytes | None:
    """Content of repo file rel (None: missing), reading at most cap bytes.

    Only opens paths below directories the walk saw as real directories, with O_NOFOLLOW, so no
    symlink is followed. Raises _FileProblem with a sentence for anything but a readable file.
    """
    parent = rel.rpartition("/")[0]
    if parent not in w.dirs:
        if parent in w.links:
            raise _FileProblem(f"{rel} is below {parent}, a symlink; not followed")
        return None
    if rel in w.links:
        raise _FileProblem(f"{rel} is a symlink; not followed")
    if rel in w.dirs or rel in w.others:
        raise _FileProblem(f"{rel} is not a regular file")
    if rel not in w.files and parent not in w.unlisted:
        return None
    try:
        fd, size = _open_regular(os.path.join(root, rel), w.files.get(rel))
    except FileNotFoundError:
        return None
    except ValueError:
        raise _FileProblem(f"{rel} is not a regular file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _FileProblem(f"{rel} is a symlink; not followed") from None
        raise _FileProblem(f"{rel} is unreadable: {e.strerror}") from None
    try:
        if size > cap:
            raise _FileProblem(f"{rel} is larger than {cap} bytes ({size})")
        chunks: list[bytes] = []
        got = 0
        while got <= cap:
            # Ask for what fstat/the walk saw (a file that grew: 64 KiB at a time), not for the
            # cap: a 1 MiB buffer costs mmap, mremap and munmap on every read of a small file.
            want = size - got if got < size else READ_CHUNK
            chunk = os.read(fd, min(want, cap + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got == size:  # all fstat saw: no second read just to meet the end
                break
        if got > cap:
            raise _FileProblem(f"{rel} is larger than {cap} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise _FileProblem(f"{rel} is unreadable: {e.strerror}") from None
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_JSON_DECODE = json.JSONDecoder(parse_constant=_reject_constant).decode


def _read_json(root: str, w: _Walk, rel: str, kind: type) -> tuple[Any, str | None]:
    """(value, error) for a capped JSON file that must hold a value of the given kind."""
    try:
        data = _read_in_repo(root, w, rel, MAX_JSON_BYTES)
    except _FileProblem as e:
        return None, str(e)
    if data is None:
        return None, f"{rel} is missing"
    try:  # json.loads(data, parse_constant=...), without building a decoder per call
        value = _JSON_DECODE(data.decode(json.detect_encoding(data), "surrogatepass"))
    except (ValueError, RecursionError) as e:
        return None, f"{rel} is not valid JSON: {e}"
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"{rel} is not a JSON list of strings"
    elif not isinstance(value, kind):
        return None, f"{rel} is not a JSON {kind.__name__}"
    return value, None


def _master_ref(root: str, w: _Walk, rec: dict[str, Any]) -> None:
    rel = "refs/heads/master"
    try:
        data = _read_in_repo(root, w, rel, MAX_SMALL_BYTES)
    except _FileProblem as e:
        rec["master_error"] = str(e)
        return
    if data is not None:
        sha = _text(data).strip()
        if SHA_RE.fullmatch(sha):
            rec["master_sha"] = sha
            rec["master_source"] = "loose"
        else:
            rec["master_error"] = f"{rel} does not hold a sha"
        return
    try:
        packed = _read_in_repo(root, w, "packed-refs", MAX_PACKED_REFS_BYTES)
    except _FileProblem as e:
        rec["errors"].append(str(e))
        packed = None
    for line in (packed or b"").split(b"\n"):
        if line.startswith((b"#", b"^")):
            continue
        sha_b, _, name = line.strip().partition(b" ")
        if name == b"refs/heads/master":
            sha = _text(sha_b)
            if SHA_RE.fullmatch(sha):
                rec["master_sha"] = sha
                rec["master_source"] = "packed"
            else:
                rec["master_error"] = "packed-refs entry for refs/heads/master does not hold a sha"
            return
    rec["master_error"] = f"{rel} is missing"


def _packs(root: str, w: _Walk, rec: dict[str, Any], max_bad: int) -> None:
    names = w.listed.get("objects/pack", [])
    packs: set[str] = set()
    idxs: list[str] = []
    midx = 0
    tmp = 0
    for name in names:
        rel = "objects/pack/" + name
        if "tmp" in name:
            tmp += 1
        if rel not in w.files:
            continue
        if name.endswith(".pack"):
            packs.add(name[:-5])
        elif name.endswith(".idx"):
            idxs.append(name)
        elif name.endswith(".midx"):
            midx += 1
    for name in w.listed.get("objects", []):
        if "tmp" in name:
            tmp += 1
    for name in w.listed.get("", []):
        if name.endswith(".midx") and name in w.files:
            midx += 1
    rec["pack_count"] = len(packs)
    rec["idx_count"] = len(idxs)
    rec["midx_count"] = midx
    rec["tmp_count"] = tmp
    usable = [n for n in idxs if n[:-4] in packs]
    rec["idx_without_pack"] = len(idxs) - len(usable)
    # Newest pack first: the newest commit is almost always in it, so the search stops early.
    usable.sort(key=lambda n: (-w.files["objects/pack/" + n[:-4] + ".pack"].st_mtime, n))

    sha_hex = rec["master_sha"]
    sha = bytes.fromhex(sha_hex) if sha_hex else None
    found = False
    bad: list[dict[str, str]] = []
    bad_count = 0
    pack_dir = os.path.join(root, "objects", "pack", "")
    pack_dir_rel = "objects/pack/"
    files = w.files
    for name in usable:
        try:
            fd, size = _open_regular(pack_dir + name, files[pack_dir_rel + name])
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            bad_count += 1
            if len(bad) < max_bad:
                bad.append({"name": name, "reason": f"cannot open: {reason}"})
            continue
        try:
            fanout = _idx_fanout(fd, size)
            if sha is not None and not found:
                found = _idx_contains(fd, fanout, sha)
        except (OSError, ValueError) as e:
            bad_count += 1
            if len(bad) < max_bad:
                reason = e.strerror if isinstance(e, OSError) else str(e)
                bad.append({"name": name, "reason": str(reason)})
        finally:
            os.close(fd)
    rec["bad_idx"] = bad
    rec["bad_idx_count"] = bad_count
    if sha_hex is not None:
        if found:
            rec["master_in_pack"] = True
            rec["master_object_where"] = "pack"
        elif f"objects/{sha_hex[:2]}/{sha_hex[2:]}" in w.files:
            rec["master_in_pack"] = True
            rec["master_object_where"] = "loose"
        else:
            rec["master_in_pack"] = False


def _reflog(root: str, w: _Walk, rec: dict[str, Any]) -> None:
    rel = "logs/refs/heads/master"
    parent = "logs/refs/heads"
    if rel in w.links:
        rec["errors"].append(f"{rel} is a symlink; not followed")
        return
    if rel in w.dirs or rel in w.others:
        rec["errors"].append(f"{rel} is not a regular file")
        return
    if rel not in w.files and parent not in w.unlisted:
        return  # missing (or below something that is not a real directory)
    try:
        fd, size = _open_regular(os.path.join(root, rel), w.files.get(rel))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        rec["errors"].append(f"{rel} is unreadable: {reason}")
        return
    try:
        if size <= MAX_REFLOG_COUNT_BYTES:
            data = os.pread(fd, size, 0)
            lines = data.count(b"\n")
            if data and not data.endswith(b"\n"):
                lines += 1
            rec["reflog_entries"] = lines
            tail = data[-REFLOG_TAIL_BYTES:]
        else:
            rec["reflog_entries"] = None
            tail = os.pread(fd, REFLOG_TAIL_BYTES, size - REFLOG_TAIL_BYTES)
    except OSError as e:
        rec["errors"].append(f"{rel} is unreadable: {e.strerror}")
        return
    finally:
        os.close(fd)
    last = next((ln for ln in reversed(tail.split(b"\n")) if ln.strip()), b"")
    head = last.partition(b"\t")[0].rstrip()
    parts = head.rsplit(b" ", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0].endswith(b">"):
        return
    shas = parts[0].split(b" ", 2)
    if len(shas) < 3:
        return
    new = _text(shas[1])
    if SHA_RE.fullmatch(new):
        rec["reflog_last_sha"] = new
    if len(parts[1]) > 12:
        # Past the year 33658: a damaged line, not a time (and past the 64 bits the watchdog
        # packs times in): this repository's problem, not the whole host's.
        rec["errors"].append(f"{rel}: its last entry's time {_text(parts[1][:30])} is no time")
        return
    rec["reflog_last_time"] = int(parts[1])


def _symlinks(root: str, w: _Walk, rec: dict[str, Any], cap: int) -> None:
    if not w.links:
        return
    base = os.path.normpath(root)
    real: str | None = None
    outside: list[str] = []
    count = 0
    for rel in sorted(w.links):
        path = w.links[rel]
        try:
            target = os.readlink(path)
        except OSError as e:
            rec["errors"].append(f"cannot read symlink {rel}: {e.strerror}")
            continue
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        inside = _contains(base, resolved)
        if not inside and os.path.isabs(target):
            if real is None:
                real = os.path.realpath(root)
            inside = _contains(real, resolved)
        if not inside:
            count += 1
            if len(outside) < cap:
                outside.append(rel)
    rec["symlinks_outside"] = outside
    rec["symlinks_outside_count"] = count
    for rel in KEY_DIRS:
        if rel in w.links:
            rec["errors"].append(f"{rel} is a symlink; not followed")


def empty_repo_record(project_id: str, path: str) -> dict[str, Any]:
    """A repo record with every field present and nothing known."""
    return {
        "type": "repo",
        "project_id": project_id.lower(),
        "path": path,
        "is_symlink": False,
        "head": None,
        "master_sha": None,
        "master_source": None,
        "master_error": None,
        "master_in_pack": None,
        "master_object_where": None,
        "pack_count": 0,
        "idx_count": 0,
        "idx_without_pack": 0,
        "bad_idx": [],
        "bad_idx_count": 0,
        "midx_count": 0,
        "tmp_count": 0,
        "bupindex_bytes": None,
        "repo_bytes": None,
        "file_count": None,
        "reflog_last_time": None,
        "reflog_last_sha": None,
        "reflog_entries": 0,
        "save_log_bytes": None,
        "save_log_mtime": None,
        "save_log_is_symlink": False,
        "save_log_kind": None,
        "touch_mtime": None,
        "replicas": None,
        "replicas_error": None,
        "settings": None,
        "settings_error": None,
        "symlinks_outside": [],
        "symlinks_outside_count": 0,
        "errors": [],
    }


def _file_kind(path: str) -> str:
    """What a path that is not a regular file is, in an operator's words (lstat, no follow)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return f"gone ({e.strerror})"
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _fill_repo(
    root: str, rec: dict[str, Any], max_symlinks: int, max_bad_idx: int, stat_dirs: Collection[str]
) -> _Walk:
    w = _walk(root, stat_dirs)
    rec["errors"].extend(w.errors)
    if "" in w.unlisted:
        return w
    rec["file_count"] = len(w.files)
    rec["repo_bytes"] = w.bytes
    sizes = [w.files[n].st_size for n in BUPINDEX_FILES if n in w.files]
    rec["bupindex_bytes"] = sum(sizes) if sizes else None

    try:
        head = _read_in_repo(root, w, "HEAD", MAX_SMALL_BYTES)
    except _FileProblem as e:
        rec["errors"].append(str(e))
    else:
        rec["head"] = None if head is None else _text(head).strip()

    _master_ref(root, w, rec)
    _packs(root, w, rec, max_bad_idx)
    _reflog(root, w, rec)

    log = "conf/save_log.json"
    if log in w.links:
        rec["save_log_is_symlink"] = True
    elif log in w.files:
        rec["save_log_bytes"] = w.files[log].st_size
        rec["save_log_mtime"] = w.files[log].st_mtime
    elif log in w.dirs or log in w.others:
        # Judged by save_log_size (code not_regular_file), not a repository error.
        rec["save_log_kind"] = _file_kind(os.path.join(root, log))

    touch = "conf/touch"
    if touch in w.files:
        rec["touch_mtime"] = w.files[touch].st_mtime
    elif touch in w.links:
        rec["errors"].append(f"{touch} is a symlink; not followed")

    rec["replicas"], rec["replicas_error"] = _read_json(root, w, "conf/replicas.json", list)
    rec["settings"], rec["settings_error"] = _read_json(root, w, "conf/settings.json", dict)
    _symlinks(root, w, rec, max_symlinks)
    return w


def repo_facts(
    repo_path: str,
    project_id: str,
    *,
    max_symlinks: int = 20,
    max_bad_idx: int = MAX_BAD_IDX,
    with_fingerprint: bool = False,
    racy_seconds: float = RACY_SECONDS,
) -> dict[str, Any]:
    """The repo record for the bup repository at repo_path; never raises.

    With ``with_fingerprint`` the record has a ``fingerprint`` (see ``trusted_fingerprint``)
    vouching for the walk, made from the walk's own lstats (``_walk_fingerprint``); null for a
    repository that could not be walked.
    """
    rec = empty_repo_record(project_id, repo_path)
    started_ns = time.time_ns()
    try:
        try:
            st = os.lstat(repo_path)
        except OSError as e:
            rec["errors"].append(f"repository directory is unreadable: {e.strerror}")
            return rec
        if stat.S_ISLNK(st.st_mode):
            rec["is_symlink"] = True
            rec["errors"].append("repository directory is a symlink; not followed")
            return rec
        if not stat.S_ISDIR(st.st_mode):
            rec["errors"].append("not a directory")
            return rec
        w = _fill_repo(
            repo_path, rec, max_symlinks, max_bad_idx, _FP_WALK_DIRS if with_fingerprint else ()
        )
        if with_fingerprint:
            rec["fingerprint"] = None
            if rec["file_count"] is not None:
                digest, newest = _walk_fingerprint(repo_path, st, w)
                if newest < started_ns - int(racy_seconds * 1e9):  # see trusted_fingerprint
                    rec["fingerprint"] = digest
    except Exception as e:  # one bad repo must not stop the walk
        rec["errors"].append(f"unexpected error: {type(e).__name__}: {e}")
    if with_fingerprint:
        rec.setdefault("fingerprint", None)
    return rec


# --------------------------------------------------------------------------------------------
# Fingerprints for incremental walks
# --------------------------------------------------------------------------------------------

# Directories whose listing the cheap facts depend on (an entry added, removed or renamed in one
# changes its mtime and ctime: a new pack, a deleted pack, a tmp file, a loose master object, the
# master ref or its reflog replaced by rename, a planted symlink), and logs/refs, which lies
# between two of them.
FP_DIRS = (
    "",
    "objects",
    "objects/pack",
    "refs/heads",
    "logs/refs",
    "logs/refs/heads",
)
# Directories right in the repository whose own listing no cheap fact reads. An incremental check
# does not stat them: the repository's own lstat, compared first, vouches that each is still the
# same inode as at the trusted walk (replacing one changes the repository's mtime), so still a
# real directory, or still not one (the mask says). Entries added in them are like those added to
# hooks/: seen at the repository's next full walk.
FP_GUARDS = ("refs", "logs", "conf")
# Files the cheap facts read or size that are changed in place (appended, rewritten, touched).
FP_FILES = (
    "HEAD",
    "packed-refs",
    "refs/heads/master",
    "logs/refs/heads/master",
    "conf/save_log.json",
    "conf/touch",
    "conf/settings.json",
    "conf/replicas.json",
    "bupindex",
    "bupindex.meta",
    "bupindex.hlink",
)
_FP_RELS = tuple(rel.encode() for rel in (*FP_GUARDS, *FP_DIRS[1:], *FP_FILES))
_FP_DIR_RELS = frozenset(rel.encode() for rel in (*FP_GUARDS, *FP_DIRS[1:]))
_FP_STATTED = frozenset(rel.encode() for rel in FP_DIRS)  # b"" is the repository itself
# Per fingerprinted path: its bit in the masks, its parent's bit (0: the repository itself),
# whether it is a directory, a guard, and whether it may be skipped when it was missing (only
# below a directory whose own lstat is in the digest: creating it changes that one).
_FP_ENTRIES = tuple(
    (
        rel,
        1 << n,
        1 << _FP_RELS.index(rel.rpartition(b"/")[0]) if b"/" in rel else 0,
        rel in _FP_DIR_RELS,
        rel.decode() in FP_GUARDS,
        rel.rpartition(b"/")[0] in _FP_STATTED,
    )
    for n, rel in enumerate(_FP_RELS)
)
# A fingerprint is, in fixed-width lowercase hex: a digest of the repository's own lstat, a
# digest of everything, and the mask of the paths that were missing (or, for a guard, were not a
# real directory), so that the probe can read both back.
FP_TOP_HEX = 8
FP_DIGEST_HEX = 20
FP_MASK_HEX = (len(_FP_RELS) + 3) // 4
FP_HEX = FP_TOP_HEX + FP_DIGEST_HEX + FP_MASK_HEX
# The repository is opened once and the other paths are looked up from it: a third less work for
# the kernel than walking /bup/bups/<project id>/... again for every path.
_FP_DIR_FLAGS = (
    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", 0)
)


def fingerprint(repo_path: str | bytes, known: str = "") -> tuple[str, int]:
    """(fingerprint, newest change in ns) of what a repository's cheap facts depend on.

    The fingerprint digests the lstat (mode, inode, size, mtime, ctime) of the repository and of
    the FP_DIRS and FP_FILES in it, and says which of them were missing: one ``open`` and up to 16
    ``stat`` calls, however many packs it has (more at a walk, which also looks at FP_GUARDS).
    Any write, truncation, rename, chmod, chown or link-count change of one of them changes its
    ctime, which no user tool can set back, so the digest changes; entries added to, removed from
    or renamed in a fingerprinted directory (or the repository itself) change that directory's.
    A repository that is not a directory (gone, a symlink, a file) is fingerprinted by its own
    lstat and the error, and no path is looked up below a directory that is not a real directory
    (a symlink is never followed out of the repository, as in the walk, nor into a mount that may
    hang). What it does not see, so that an incremental sweep reports it only at the repository's
    next full walk (the gather's ``max_age``): a file rewritten in place that is not in FP_FILES
    (a ``.idx`` or ``.pack`` overwritten without a rename, which git never does), and entries
    added to other directories (``hooks/``, ``info/``, FP_GUARDS, loose objects in an existing
    ``objects/xx/``), which only move ``repo_bytes``, ``file_count`` and ``symlinks_outside``.
    Corruption of the data itself (bit rot) changes no timestamp at all: no fingerprint sees it;
    the full walks and the deep checks do.

    ``known`` (a trusted earlier fingerprint of this repository, see ``_unchanged``): when the
    repository's own lstat differs from it, the fingerprint stops there (it cannot be equal); else
    the FP_GUARDS are not looked at (the same inodes as then: the mask says which were real
    directories) and paths missing then below a stat'ed directory are taken as still missing —
    creating one changes its parent's lstat, so the digest differs all the same (no loss).
    """
    root = os.fsencode(repo_path)
    parts: list[int] = []
    add = parts.extend
    newest = 0
    missing = 0
    try:
        fd = os.open(root, _FP_DIR_FLAGS)
    except OSError as e:
        try:
            st = os.lstat(root)
            add((st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            newest = max(st.st_mtime_ns, st.st_ctime_ns)
        except OSError as e2:
            add((-1, e2.errno or 0))
        add((-2, e.errno or 0))
        return _fingerprint_text(parts, parts, 0), newest
    try:
        st = os.fstat(fd)
        top = [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        newest = max(st.st_mtime_ns, st.st_ctime_ns)
        absent = 0
        if known:
            if len(known) != FP_HEX or _top_text(top) != known[:FP_TOP_HEX]:
                return _top_text(top), newest  # changed: nothing below is looked at
            absent = int(known[FP_TOP_HEX + FP_DIGEST_HEX :], 16)
        add(top)
        stat_at = os.stat
        blocked = 0  # bits of the paths not to look below (not real directories)
        for rel, bit, parent, is_dir, guard, skippable in _FP_ENTRIES:
            if blocked & parent:
                blocked |= bit  # never looked up through a symlink (it could lead out, or hang)
                add((-3, 0))
                continue
            if known and (guard or (skippable and absent & bit)):
                missing |= absent & bit  # taken as read: see the docstring
                blocked |= absent & bit
                if not guard:
                    add((-1, errno.ENOENT))
                continue
            try:
                st = stat_at(rel, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                blocked |= bit
                if guard or e.errno == errno.ENOENT:
                    missing |= bit
                if not guard:
                    add((-1, e.errno or 0))
                continue
            mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
            if is_dir and not stat.S_ISDIR(st.st_mode):
                blocked |= bit
                if guard:
                    missing |= bit
            if not guard:
                add((st.st_mode, st.st_ino, st.st_size, mtime, ctime))
            if mtime > newest:
                newest = mtime
            if ctime > newest:
                newest = ctime
    finally:
        os.close(fd)
    return _fingerprint_text(top, parts, missing), newest


def _top_text(top: list[int]) -> str:
    """A short digest of the repository's own lstat numbers, only to stop early when it changed
    (the full digest covers them too). Python's hash of a tuple of ints is the same in every
    process (only str and bytes hashes are salted), and a third of the cost of blake2b here."""
    return f"{hash(tuple(top)) & 0xFFFF_FFFF:08x}"


def _fingerprint_text(top: list[int], parts: list[int], missing: int) -> str:
    """The digests of the repository's own numbers and of all of them (``marshal``: any size or
    sign, 4x cheaper than ``struct``) and the mask, as fixed-width lowercase hex."""
    digest = _blake2b(marshal.dumps(parts, 2), digest_size=FP_DIGEST_HEX // 2).hexdigest()
    return f"{_top_text(top)}{digest}{missing:0{FP_MASK_HEX}x}"


# The directories a walk lstat's for the fingerprint (the others come from its listing).
_FP_WALK_DIRS = frozenset((*FP_GUARDS, *FP_DIRS[1:]))
_FP_WALK_ENTRIES = tuple(
    (rel.decode(), rel.decode().rpartition("/")[0], bit, parent, is_dir, guard)
    for rel, bit, parent, is_dir, guard, _skippable in _FP_ENTRIES
)


def _walk_fingerprint(root: str, top_st: os.stat_result, w: _Walk) -> tuple[str, int]:
    """``fingerprint(root)`` from what a walk saw: the repository's own lstat ``top_st``, the
    lstat of its regular files and of the directories in ``_FP_WALK_DIRS``, and its listings,
    which say what is missing; only a path the walk did not stat (a symlink, a special file) is
    looked up again. Every lstat was taken after the walk began, which is all that
    ``trusted_fingerprint`` needs. A walk that met an error gives way to ``fingerprint``."""
    if w.errors or w.unlisted:
        return fingerprint(root)
    top = [top_st.st_mode, top_st.st_ino, top_st.st_size, top_st.st_mtime_ns, top_st.st_ctime_ns]
    newest = max(top_st.st_mtime_ns, top_st.st_ctime_ns)
    parts = list(top)
    add = parts.extend
    files, dstats, dirs, links, others = w.files, w.dstats, w.dirs, w.links, w.others
    missing = 0
    blocked = 0
    for rel, up, bit, parent, is_dir, guard in _FP_WALK_ENTRIES:
        if blocked & parent:
            blocked |= bit
            add((-3, 0))
            continue
        st = files.get(rel) or dstats.get(rel)
        if st is None:
            if up not in dirs or rel in links or rel in others or rel in dirs:
                try:  # not stat'ed by the walk: as fingerprint() does
                    st = os.lstat(os.path.join(root, rel))
                except OSError as e:
                    err = e.errno or 0
                else:
                    err = 0
            else:  # not in its parent's listing (a real directory, listed in full)
                err = errno.ENOENT
            if st is None:
                blocked |= bit
                if guard or err == errno.ENOENT:
                    missing |= bit
                if not guard:
                    add((-1, err))
                continue
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        if is_dir and not stat.S_ISDIR(st.st_mode):
            blocked |= bit
            if guard:
                missing |= bit
        if not guard:
            add((st.st_mode, st.st_ino, st.st_size, mtime, ctime))
        if mtime > newest:
            newest = mtime
        if ctime > newest:
            newest = ctime
    return _fingerprint_text(top, parts, missing), newest


if TYPE_CHECKING:  # the alias only for annotations: evaluated, it fails before Python 3.10
    _Plan = tuple[tuple[bytes | None, tuple[int, int] | None, bool], ...]
_PLANS: dict[int, _Plan] = {}
_ENOENT_PART = (-1, errno.ENOENT)


def _plan(absent: int) -> _Plan:
    """What ``fingerprint(repo, known)`` does below the repository when ``known`` has the mask
    ``absent`` and every directory it looks at is still a real directory: per step, a path to
    lstat (and whether it is a directory) or the numbers added without a look. One per mask
    (a host has a handful)."""
    plan = _PLANS.get(absent)
    if plan is None:
        steps: list[tuple[bytes | None, tuple[int, int] | None, bool]] = []
        blocked = 0
        for rel, bit, parent, is_dir, guard, skippable in _FP_ENTRIES:
            if blocked & parent:
                blocked |= bit
                steps.append((None, (-3, 0), False))
            elif guard:
                blocked |= absent & bit
            elif skippable and absent & bit:
                blocked |= bit
                steps.append((None, _ENOENT_PART, False))
            else:
                steps.append((rel, None, is_dir))
        plan = _PLANS[absent] = tuple(steps)
    return plan


def _unchanged(repo_path: str | bytes, known_fingerprint: str) -> bool:
    """Whether the repository still has the known fingerprint; any error means "walk it".

    The common case (every directory looked at still a real directory, every path there or
    missing as before) follows the mask's ``_plan`` without the general bookkeeping; anything
    else is decided by ``fingerprint`` itself. Both give the same answer.
    """
    known = known_fingerprint
    try:
        if len(known) != FP_HEX:
            return False
        fd = os.open(os.fsencode(repo_path), _FP_DIR_FLAGS)
        try:
            st = os.fstat(fd)
            parts = [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            if _top_text(parts) != known[:FP_TOP_HEX]:
                return False
            add = parts.extend
            stat_at = os.stat
            for rel, const, is_dir in _plan(int(known[FP_TOP_HEX + FP_DIGEST_HEX :], 16)):
                if const is not None or rel is None:
                    add(const or ())
                    continue
                try:
                    st = stat_at(rel, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if is_dir:
                        return fingerprint(repo_path, known)[0] == known
                    add(_ENOENT_PART)
                    continue
                except OSError:
                    return fingerprint(repo_path, known)[0] == known
                if is_dir and not stat.S_ISDIR(st.st_mode):
                    return fingerprint(repo_path, known)[0] == known
                add((st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        finally:
            os.close(fd)
        digest = _blake2b(marshal.dumps(parts, 2), digest_size=FP_DIGEST_HEX // 2).hexdigest()
        return digest == known[FP_TOP_HEX : FP_TOP_HEX + FP_DIGEST_HEX]
    except Exception:  # never drop a repository from the walk: walking it is always safe
        return False


def trusted_fingerprint(repo_path: str | bytes, since_ns: int, racy_seconds: float) -> str | None:
    """The fingerprint, or None when a fingerprinted path changed after ``since_ns - racy``.

    ``since_ns`` is when the walk the fingerprint vouches for began. A change after that moment
    may or may not be in the walk's facts, and a later change within the filesystem's timestamp
    granularity could leave the same fingerprint (git's "racily clean" problem), so such a walk is
    not trusted: the repository is walked again at the next sweep. Since a trusted fingerprint's
    ctimes all lie ``racy_seconds`` before its walk, any later change gives a different ctime.
    """
    digest, newest = fingerprint(repo_path)
    if newest >= since_ns - int(racy_seconds * 1e9):
        return None
    return digest


#: A live directory's record digest, in lowercase hex digits (the watchdog keeps it packed).
DIGEST_HEX = 20


def record_digest(rec: dict[str, Any]) -> str:
    """A digest of a record's content, to say "same as last time" instead of sending it again.

    ``marshal`` format 2 (no back-references, so equal records give equal bytes whatever objects
    they share) is 4x cheaper than JSON here; records built in a different order (a directory
    listed in another order) or by another Python only give another digest, so the record is sent.
    """
    return _blake2b(marshal.dumps(rec, 2), digest_size=DIGEST_HEX // 2).hexdigest()


def known_order(repos: Iterable[str], dirs: Iterable[str]) -> list[str]:
    """The known project ids (keys of the known repos and dirs) in the bitmaps' order: sorted."""
    return sorted({*repos, *dirs})


def bitmap(bits: Iterator[int] | list[int], size: int) -> str:
    """Base64 of a bitmap of ``size`` bits with the given bit numbers set (see the header)."""
    data = bytearray((size + 7) // 8)
    for n in bits:
        data[n >> 3] |= 1 << (n & 7)
    return base64.b64encode(bytes(data)).decode("ascii")


def parse_known_state(text: str | bytes) -> tuple[dict[str, str], dict[str, str]]:
    """The known state (see KNOWN_STATE): (repo fingerprints, project_dir digests) by project id.

    Each line is ``<project id> <repo fingerprint or -> <project_dir digest or ->``; malformed
    lines are ignored (that repository is then walked, which is always safe).
    """
    text = text.strip()
    repos: dict[str, str] = {}
    dirs: dict[str, str] = {}
    if not text:
        return repos, dirs
    data = zlib.decompress(base64.b64decode(text))
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) != 3 or not UUID4_RE.fullmatch(fields[0]):
            continue
        pid = fields[0].decode("ascii").lower()
        if fields[1] != b"-" and fields[1].isalnum():
            repos[pid] = fields[1].decode("ascii")
        if fields[2] != b"-" and fields[2].isalnum():
            dirs[pid] = fields[2].decode("ascii")
    return repos, dirs


def encode_known_state(repos: Mapping[str, str], dirs: Mapping[str, str] | None = None) -> str:
    """The inverse of parse_known_state (used by the gather and the tests)."""
    dirs = dirs or {}
    lines = [
        f"{pid} {repos.get(pid, '-')} {dirs.get(pid, '-')}\n" for pid in sorted({*repos, *dirs})
    ]
    return base64.b64encode(zlib.compress("".join(lines).encode("ascii"), 6)).decode("ascii")


# --------------------------------------------------------------------------------------------
# The walk of a host
# --------------------------------------------------------------------------------------------


def _sorted_names(root: str) -> list[bytes]:
    """Every entry name of root as bytes, sorted. Raises OSError."""
    with os.scandir(os.fsencode(root)) as it:
        return sorted(entry.name for entry in it)


def _read_server_id(bup_root: str) -> str | None:
    try:
        fd, _size = _open_regular(os.path.join(bup_root, "conf", "bup_server_id"))
    except (OSError, ValueError):
        return None
    try:
        return _text(os.read(fd, MAX_SMALL_BYTES)).strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def iter_records(
    bup_root: str = "/bup",
    projects_root: str = "/projects",
    process_name: str = "bup_server",
    max_symlinks: int = 20,
    max_strays: int = 100,
    owner_sample: int = OWNER_SAMPLE,
    owner_sample_total: int = OWNER_SAMPLE_TOTAL,
    known: Mapping[str, str] | None = None,
    with_fingerprint: bool = False,
    racy_seconds: float = RACY_SECONDS,
    known_dirs: Mapping[str, str] | None = None,
    owner_sample_from: str = "",
    project_dirs: bool = True,
    only: Collection[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every record of one walk of this host, ``done`` last. Never raises.

    Incremental walks: ``known`` (project id -> repo fingerprint) makes a repository whose
    fingerprint is unchanged be skipped instead of walked; ``known_dirs`` (project id ->
    project_dir digest) makes a project_dir record whose content is unchanged be left out (its
    owners are still sampled: only the record is saved). Both are named in the ``unchanged``
    record before ``done`` (see the header). ``with_fingerprint`` (implied by either) adds
    ``fingerprint`` to repo records and ``digest`` to project_dir records.
    ``owner_sample_from``: the live directories are taken (and their owners sampled, within the
    host's budget) from the first name at or after it, wrapping around. Without ``project_dirs``
    the live directories are not looked at (PROJECTS_ROOT's mount is still reported): a sweep
    whose checks judge no live directory (the ownership check not due) does not pay for them.
    ``only`` (lower-case project ids): walk only these projects' entries, for a repair that
    needs one project's facts on a host of thousands; ``hello`` names them.
    """
    started = time.monotonic()
    cpu_started = time.process_time()
    errors: list[str] = []
    counts = {
        "repos": 0,
        "project_dirs": 0,
        "strays": 0,
        "repos_unchanged": 0,
        "project_dirs_unchanged": 0,
    }
    known = known or {}
    known_dirs = known_dirs or {}
    with_fingerprint = with_fingerprint or bool(known) or bool(known_dirs)
    order = known_order(known, known_dirs) if known or known_dirs else []
    position = {pid: n for n, pid in enumerate(order)}
    same_repos: list[int] = []
    same_dirs: list[int] = []
    budget = SampleBudget(owner_sample_total)
    scope = None if only is None else frozenset(os.fsencode(pid.lower()) for pid in only)

    hello: dict[str, Any] = {
        "type": "hello",
        "probe_version": PROBE_VERSION,
        "hostname": socket.gethostname(),
        "time": time.time(),
        "server_id": _read_server_id(bup_root),
        "bup_root": bup_root,
        "projects_root": projects_root,
        "bups": os.path.join(bup_root, "bups"),
        "python": sys.version.split()[0],
    }
    if scope is not None:
        hello["only"] = sorted(os.fsdecode(pid) for pid in scope)
    yield hello
    bups = os.path.join(bup_root, "bups")
    mounts = read_mounts()
    for path in (projects_root, bups):
        try:
            yield mount_facts(path, mounts)
        except Exception as e:
            errors.append(f"mount facts for {path}: {type(e).__name__}: {e}")
    try:
        yield process_facts(process_name, port_file=os.path.join(bup_root, "conf", PORT_FILE))
    except Exception as e:
        errors.append(f"process facts: {type(e).__name__}: {e}")
        yield {"type": "process", "name": process_name, "pids": [], "listen": []}

    sections: list[tuple[str, str]] = [("bups", bups)]
    if project_dirs:
        sections.append(("projects", projects_root))
    for label, root in sections:
        try:
            entries = _sorted_names(root)
            if label == "projects" and owner_sample_from:
                start = os.fsencode(owner_sample_from.lower())
                first = next((i for i, n in enumerate(entries) if n.lower() >= start), 0)
                entries = entries[first:] + entries[:first]
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(f"cannot list {root}: {e.strerror}")
            continue
        strays = 0
        root_b = os.fsencode(root)
        is_uuid4 = UUID4_RE.fullmatch
        for name in entries:
            try:
                path_b = os.path.join(root_b, name)
                if not is_uuid4(name):
                    strays += 1
                    counts["strays"] += 1
                    if strays <= max_strays:
                        yield {
                            "type": "stray",
                            "root": label,
                            "name": os.fsdecode(name),
                            "reason": "name is not a version-4 UUID",
                        }
                    continue
                if scope is not None and name.lower() not in scope:
                    continue  # outside the scope: not walked, not counted
                project_id = name.decode("ascii").lower()
                if label == "bups":
                    counts["repos"] += 1
                    was = known.get(project_id)
                    if was is not None and _unchanged(path_b, was):
                        counts["repos_unchanged"] += 1
                        same_repos.append(position[project_id])
                        continue
                    path = os.fsdecode(path_b)
                    yield repo_facts(
                        path,
                        project_id,
                        max_symlinks=max_symlinks,
                        with_fingerprint=with_fingerprint,
                        racy_seconds=racy_seconds,
                    )
                else:
                    counts["project_dirs"] += 1
                    path = os.fsdecode(path_b)
                    rec = project_dir_facts(
                        path, project_id, owner_sample_limit=owner_sample, budget=budget
                    )
                    if with_fingerprint:
                        digest = record_digest(rec)
                        if known_dirs.get(project_id) == digest:
                            counts["project_dirs_unchanged"] += 1
                            same_dirs.append(position[project_id])
                            continue
                        rec["digest"] = digest
                    yield rec
            except Exception as e:
                errors.append(f"{label}/{name!r}: {type(e).__name__}: {e}")
        if strays > max_strays:
            yield {"type": "stray", "root": label, "truncated": strays - max_strays}

    if order:
        yield {
            "type": "unchanged",
            "known": len(order),
            "repos": bitmap(same_repos, len(order)),
            "project_dirs": bitmap(same_dirs, len(order)),
        }
    yield {
        "type": "done",
        **counts,
        "errors": errors,
        "elapsed_seconds": round(time.monotonic() - started, 6),
        "cpu_seconds": round(time.process_time() - cpu_started, 6),
    }


class SampleBudget:
    """How many more entries the owner sample may lstat on this host (``--owner-sample-total``)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = max(0, left)


def sample_owners(
    top: bytes, top_st: os.stat_result, limit: int, budget: SampleBudget
) -> dict[str, Any]:
    """Owners of at most ``limit`` entries of a project's live tree, breadth first, top included.

    lstat only: a symlink is counted (its own owner) and never followed. ``.snapshots`` at the top
    (a FUSE mount of bup history) is skipped without being stat'ed, and the walk does not descend
    into another filesystem (``find -xdev``), so a dead FUSE mount cannot hang the probe. Every
    entry counted is taken from ``budget``; a project met with an empty budget is not sampled.
    """
    rec: dict[str, Any] = {
        "owners": {},
        "examples": {},
        "sampled": 0,
        "sample_truncated": False,
        "sample_skipped": False,
        "sample_errors": 0,
    }
    limit = min(limit, budget.left)
    if limit <= 0:
        rec["sample_skipped"] = True
        return rec
    owners: dict[int, int] = {}
    examples: dict[int, list[str]] = {}
    count = 0

    def seen(rel: bytes, uid: int) -> None:
        nonlocal count
        count += 1
        owners[uid] = owners.get(uid, 0) + 1
        shown = examples.setdefault(uid, [])
        if len(shown) < MAX_OWNER_EXAMPLES:
            shown.append(os.fsdecode(rel))

    seen(b".", top_st.st_uid)
    queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
    if stat.S_ISDIR(top_st.st_mode):
        queue.append((b"", top))
    while queue and not rec["sample_truncated"]:
        rel, path = queue.popleft()
        try:
            it = os.scandir(path)
        except OSError:
            rec["sample_errors"] += 1
            continue
        with it:
            for entry in it:
                if not rel and entry.name == b".snapshots":
                    continue
                if count >= limit:
                    rec["sample_truncated"] = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:  # vanished while walking
                    rec["sample_errors"] += 1
                    continue
                r = rel + b"/" + entry.name if rel else entry.name
                seen(r, st.st_uid)
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top_st.st_dev:
                    queue.append((r, entry.path))
    budget.left -= count
    rec["owners"] = {str(uid): n for uid, n in owners.items()}
    rec["examples"] = {str(uid): paths for uid, paths in examples.items()}
    rec["sampled"] = count
    return rec


def project_dir_facts(
    path: str,
    project_id: str,
    *,
    owner_sample_limit: int = OWNER_SAMPLE,
    budget: SampleBudget | None = None,
) -> dict[str, Any]:
    """The project_dir record for /projects/<project_id>: lstat of the top, and an owner sample.

    ``owners`` maps uid (as text) to the number of sampled entries it owns; ``examples`` maps uid
    to up to MAX_OWNER_EXAMPLES project-relative paths (``.`` is the top). Which uid is right is
    the ownership check's business, not the probe's.
    """
    rec: dict[str, Any] = {
        "type": "project_dir",
        "project_id": project_id.lower(),
        "path": path,
        "is_symlink": False,
        "is_dir": False,
        "uid": None,
        "gid": None,
        "mtime": None,
        "error": None,
        "owners": {},
        "examples": {},
        "sampled": 0,
        "sample_truncated": False,
        "sample_skipped": False,
        "sample_errors": 0,
    }
    try:
        st = os.lstat(path)
    except OSError as e:
        rec["error"] = f"cannot lstat: {e.strerror}"
        return rec
    rec["is_symlink"] = stat.S_ISLNK(st.st_mode)
    rec["is_dir"] = stat.S_ISDIR(st.st_mode)
    rec["uid"] = st.st_uid
    rec["gid"] = st.st_gid
    rec["mtime"] = st.st_mtime
    if rec["is_symlink"]:
        return rec  # never followed: the check reports the symlink itself
    if budget is None:
        budget = SampleBudget(owner_sample_limit)
    rec.update(sample_owners(os.fsencode(path), st, owner_sample_limit, budget))
    return rec


def _project_id(value: str) -> str:
    """A ``--only`` value: a lower-case version-4 UUID, or argparse says it is not."""
    if value != value.lower() or not UUID4_RE.fullmatch(os.fsencode(value)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a lower-case version-4 UUID")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="probe", description="Walk one bup storage host and print its facts as JSON lines."
    )
    parser.add_argument("--bup-root", default="/bup")
    parser.add_argument("--projects-root", default="/projects")
    parser.add_argument("--process-name", default="bup_server")
    parser.add_argument("--max-symlinks", type=int, default=20)
    parser.add_argument("--max-strays", type=int, default=100)
    parser.add_argument(
        "--owner-sample",
        type=int,
        default=OWNER_SAMPLE,
        help="entries of each project's live tree whose owner is sampled (0: none)",
    )
    parser.add_argument(
        "--owner-sample-total",
        type=int,
        default=OWNER_SAMPLE_TOTAL,
        help="entries sampled on the whole host; later projects are not sampled",
    )
    parser.add_argument(
        "--owner-sample-from",
        default="",
        metavar="PROJECT_ID",
        help="take the live directories from this name on (wrapping around), so that the "
        "sample budget reaches other projects first",
    )
    parser.add_argument(
        "--only",
        action="append",
        type=_project_id,
        metavar="PROJECT_ID",
        help="walk only this project's repository and live directory (repeatable); the hello "
        "record names the scope",
    )
    parser.add_argument(
        "--no-project-dirs",
        action="store_true",
        help="leave the live directories out (no project_dir records, no owner sample)",
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="add a fingerprint to every repo record (for the next incremental walk)",
    )
    parser.add_argument(
        "--known-state",
        metavar="FILE",
        help="known state for an incremental walk (the KNOWN_STATE format); implies --fingerprint",
    )
    parser.add_argument(
        "--readable",
        action="store_true",
        help="print every record as a dict with every field (for reading) instead of the compact "
        "form the watchdog reads",
    )
    parser.add_argument(
        "--racy-seconds",
        type=float,
        default=RACY_SECONDS,
        help="a fingerprint whose paths changed this shortly before the walk is not given",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The compact wire form (PROBE_VERSION 2)
# --------------------------------------------------------------------------------------------

# A repository or live directory is one JSON array per line instead of a dict (a sweep's output
# per repository was 1.5 KB of repeated key names; a host sends one line per repository): the
# fields the watchdog reads, in this fixed order, with the trailing ones that hold their default
# left out. ``head``, ``replicas`` and ``settings`` repeat across a host's repositories: a value
# seen before is sent as the number of its place in that field's table (the distinct values sent
# inline so far, in order, the first SHARED_MAX of them). ``--readable`` prints the dicts instead.
WIRE_REPO = 0
WIRE_DIR = 1
SHARED_MAX = 4096
# (field, default on the wire); after the tag and the repository's directory name.
REPO_WIRE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("fingerprint", None),
    ("head", None),  # shared
    ("master_sha", None),
    ("master_in_pack", None),
    ("pack_count", 0),
    ("repo_bytes", 0),
    ("reflog_last_time", None),
    ("save_log_bytes", None),
    ("touch_mtime", None),
    ("replicas", None),  # shared
    ("settings", None),  # shared
    ("bupindex_bytes", None),
    ("idx_without_pack", 0),
    ("midx_count", 0),
    ("tmp_count", 0),
    ("is_symlink", False),
    ("master_error", None),
    ("save_log_is_symlink", False),
    ("save_log_kind", None),
    ("replicas_error", None),
    ("errors", []),
    ("bad_idx", []),  # "name: reason"
    ("symlinks_outside", []),
    ("symlinks_outside_count", 0),
)
# After the tag and the directory name; ``examples`` leaves out the project's own uid.
DIR_WIRE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("uid", None),
    ("gid", None),
    ("owners", {}),
    ("sampled", 0),
    ("digest", None),
    ("sample_truncated", False),
    ("sample_skipped", False),
    ("is_symlink", False),
    ("examples", {}),
)
_SHARED_FIELDS = frozenset(("head", "replicas", "settings"))
_DUMPS = json.JSONEncoder(sort_keys=True).encode


def project_uid(project_id: str) -> int:
    """A project's uid from its (lowercase) id, as the fleet's tooling derives it."""
    n = int(_sha512(project_id.encode()).hexdigest()[:8], 16) // 2
    return n + 65537 if n <= 65537 else n


class WireEncoder:
    """Turns records into output lines: the compact form of repo and project_dir records (see
    above) with the shared values' tables of this stream, every other record as a dict."""

    def __init__(self, readable: bool = False) -> None:
        self.readable = readable
        self.compact = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
        self.tables: dict[str, dict[str, int]] = {name: {} for name in _SHARED_FIELDS}

    def _shared(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        table = self.tables[name]
        key = value if isinstance(value, str) else _DUMPS(value)
        n = table.get(key)
        if n is not None:
            return n
        if len(table) < SHARED_MAX:
            table[key] = len(table)
        return value

    def _fields(self, rec: Mapping[str, Any], fields: tuple[tuple[str, Any], ...]) -> list[Any]:
        out: list[Any] = []
        last = 0
        for name, default in fields:
            value = rec.get(name, default)
            if value is None:  # the watchdog reads null as the default (a count unknown: 0)
                value = default
            if name in _SHARED_FIELDS:
                value = self._shared(name, value)
            out.append(value)
            if value != default or type(value) is not type(default):
                last = len(out)
        return out[:last]

    def line(self, rec: dict[str, Any]) -> str:
        """One output line (newline included) for a record."""
        kind = rec.get("type")
        if self.readable or kind not in ("repo", "project_dir"):
            return json.dumps(rec, sort_keys=True) + "\n"
        name = os.path.basename(rec.get("path") or "")  # the entry's name, in its own case
        if name.lower() != rec["project_id"]:
            name = rec["project_id"]
        if kind == "repo":
            wire = dict(rec)
            wire["bad_idx"] = [
                f"{b.get('name', '?')}: {b.get('reason', '?')}" if isinstance(b, dict) else str(b)
                for b in rec.get("bad_idx") or ()
            ]
            return self.compact([WIRE_REPO, name, *self._fields(wire, REPO_WIRE_FIELDS)]) + "\n"
        own = str(project_uid(rec["project_id"]))
        wire = dict(rec)
        wire["examples"] = {u: p for u, p in (rec.get("examples") or {}).items() if u != own}
        return self.compact([WIRE_DIR, name, *self._fields(wire, DIR_WIRE_FIELDS)]) + "\n"


def write_records(records: Iterator[dict[str, Any]], out: IO[str], readable: bool = False) -> None:
    """One JSON line per record (see WireEncoder), flushed every FLUSH_EVERY lines and at the
    end."""
    encode = WireEncoder(readable).line
    for n, rec in enumerate(records, 1):
        out.write(encode(rec))
        if n % FLUSH_EVERY == 0:
            out.flush()
    out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run one walk with the command-line options; 0 when the stream was written in full."""
    args = _parse_args(argv)
    known_text: str | bytes = KNOWN_STATE
    if args.known_state:
        with open(args.known_state, "rb") as f:
            known_text = f.read()
    try:
        known, known_dirs = parse_known_state(known_text)
    except (ValueError, zlib.error) as e:
        print(
            f"probe: the known state is unreadable ({e}); walking every repository", file=sys.stderr
        )
        known, known_dirs = {}, {}
    records = iter_records(
        bup_root=args.bup_root,
        projects_root=args.projects_root,
        process_name=args.process_name,
        max_symlinks=max(0, args.max_symlinks),
        max_strays=max(0, args.max_strays),
        owner_sample=max(0, args.owner_sample),
        owner_sample_total=max(0, args.owner_sample_total),
        owner_sample_from=args.owner_sample_from,
        project_dirs=not args.no_project_dirs,
        only=args.only,
        known=known,
        known_dirs=known_dirs,
        with_fingerprint=args.fingerprint or bool(args.known_state) or bool(KNOWN_STATE),
        racy_seconds=max(0.0, args.racy_seconds),
    )
    try:
        write_records(records, sys.stdout, args.readable)
    except BrokenPipeError:
        # The reader went away: point stdout at /dev/null so the exit-time flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
