"""Reading what a program writes to a pseudo-terminal, as it writes it."""

from __future__ import annotations

import os
import threading


def drain(master: int) -> tuple[threading.Thread, list[bytes]]:
    """Start reading ``master`` in a thread (a full pty buffer would block the writer); the
    thread ends when the terminal side closes. Returns the thread and the chunks it collects."""
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal side closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    return reader, chunks
