#!/usr/bin/python3
"""A stand-in for the fleet's ``bup_server`` daemon, which is not packaged anywhere.

Stdlib only: the sandbox copies this file to each host as ``bin/bup_server`` and runs it inside the
host's mount namespace. It listens on the host's address, writes the port it got to a port file
(atomically), answers every connection with one line and closes it; SIGTERM stops it cleanly.
Its process name (``comm``) is ``bup_server`` so a probe that looks for the process finds it.
``--exec-start-pre COMMAND`` runs a command first and refuses to start when it fails, as systemd's
``ExecStartPre=`` does (the boot gate ``bupwatch-preflight`` in the fleet's drop-in).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from types import FrameType

GREETING = b"bup_server sandbox\n"
PROCESS_NAME = b"bup_server"


def _set_process_name(name: bytes) -> None:
    """Set the kernel's process name (``/proc/PID/comm``) so the probe sees ``bup_server``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _private_tmp() -> None:
    """Move into a mount namespace of our own with an empty ``/tmp``, as systemd does for a unit
    with ``PrivateTmp=yes`` (mounts of the host still propagate in: slave, see systemd.exec(5))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    clone_newns, ms_rec, ms_slave, ms_nosuid, ms_nodev = 0x20000, 0x4000, 0x80000, 0x2, 0x4

    def ok(status: int, what: str) -> None:
        if status != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    ok(libc.unshare(clone_newns), "unshare(CLONE_NEWNS)")
    ok(libc.mount(b"none", b"/", None, ms_rec | ms_slave, None), "mount --make-rslave /")
    tmpfs = libc.mount(b"tmpfs", b"/tmp", b"tmpfs", ms_nosuid | ms_nodev, b"mode=1777")
    ok(tmpfs, "mount -t tmpfs tmpfs /tmp")


def _default_host(bup_root: str) -> str:
    """This host's address, read from ``conf/bup_servers`` under its own server id."""
    with open(os.path.join(bup_root, "conf", "bup_server_id"), encoding="utf-8") as f:
        server_id = f.read().strip()
    with open(os.path.join(bup_root, "conf", "bup_servers"), encoding="utf-8") as f:
        servers = json.load(f)
    return str(servers[server_id]["host"])


def _write_port_file(path: str, port: int) -> None:
    """Write the port atomically: readers see either no file or the whole number."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def _daemonize() -> None:
    """Detach (double fork, new session, stdio to /dev/null) so a restart over SSH returns."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def serve(sock: socket.socket, port_file: str | None) -> None:
    """Answer connections until SIGTERM/SIGINT; then remove the port file if it is still ours."""
    port = sock.getsockname()[1]

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            try:
                conn, _ = sock.accept()
            except InterruptedError:
                continue
            with conn:
                conn.settimeout(2.0)
                with contextlib.suppress(OSError):
                    conn.sendall(GREETING)
    finally:
        sock.close()
        if port_file:
            with contextlib.suppress(OSError):
                with open(port_file, encoding="utf-8") as f:
                    mine = f.read().strip() == str(port)
                if mine:
                    os.unlink(port_file)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, bind, write the port file, then serve."""
    parser = argparse.ArgumentParser(prog="bup_server", description=__doc__)
    parser.add_argument("--bup-root", default="/bup", help="where conf/ lives (default /bup)")
    parser.add_argument("--host", help="address to bind (default: this host's, from conf/)")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--port-file", help="file to write the port to (default conf/...)")
    parser.add_argument("--daemon", action="store_true", help="detach once listening")
    parser.add_argument(
        "--private-tmp",
        action="store_true",
        help="run in a mount namespace of its own with an empty /tmp (systemd's PrivateTmp=yes)",
    )
    parser.add_argument(
        "--exec-start-pre",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run COMMAND (split as a shell would, no shell) first; do not start if it fails",
    )
    args = parser.parse_args(argv)
    if args.private_tmp:
        try:
            _private_tmp()
        except OSError as exc:
            print(f"bup_server: cannot set up a private /tmp: {exc}", file=sys.stderr)
            return 1
    for command in args.exec_start_pre:
        pre = subprocess.run(shlex.split(command), stdin=subprocess.DEVNULL, check=False)
        if pre.returncode != 0:
            print(
                f"bup_server: not started: ExecStartPre {command!r} failed with status "
                f"{pre.returncode}",
                file=sys.stderr,
            )
            return 1
    host = args.host or _default_host(args.bup_root)
    port_file = args.port_file or os.path.join(args.bup_root, "conf", "bup_server.port")
    _set_process_name(PROCESS_NAME)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, args.port))
    except OSError as exc:
        print(f"bup_server: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    sock.listen(64)
    # Written before detaching, so a caller that waits for the restart command sees the new port.
    _write_port_file(port_file, sock.getsockname()[1])
    if args.daemon:
        _daemonize()
    serve(sock, port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
