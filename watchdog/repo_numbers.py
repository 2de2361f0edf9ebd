"""A repository's five numbers and its commit id, packed in one bytes object (RepoFacts).

The facts of 200,000 repositories are held for as long as the daemon runs (the incremental
cache). Held as Python objects, a repository's sizes and times (four ints and a float) and its
commit id (a 40-character text, shared by the project's copies) cost ~190 bytes and five
pointers; packed here they are one 94-byte object. Reading one costs ~0.1 µs more than an
attribute would: a sweep reads a few per repository.

Layout, little-endian: a byte of flags (bit n set: number n is None), ``bupindex_bytes``,
``repo_bytes``, ``reflog_last_time``, ``save_log_bytes`` as int64, ``touch_mtime`` as a double,
then the commit's 20 bytes when it is known and written as git writes it (40 lower-case hex
digits). Any other commit text is kept as it came, beside (see ``RepoOddities.master_text``).
"""

from __future__ import annotations

import re
import struct

#: Flags: which numbers are None (``repo_bytes`` never is).
NO_BUPINDEX, NO_REFLOG, NO_SAVE_LOG, NO_TOUCH = 1, 2, 4, 8

_NUMBERS = struct.Struct("<Bqqqqd")
_WITH_SHA = struct.Struct("<Bqqqqd20s")
#: The size of a packed value without its commit id (with it: 20 bytes more).
SIZE = _NUMBERS.size
#: Offsets of the numbers (after the flags byte).
AT_BUPINDEX, AT_REPO, AT_REFLOG, AT_SAVE_LOG, AT_TOUCH = 1, 9, 17, 25, 33

read_int = struct.Struct("<q").unpack_from
read_float = struct.Struct("<d").unpack_from
_CANONICAL_SHA = re.compile(r"[0-9a-f]{40}").fullmatch


def pack(
    bupindex_bytes: int | None,
    repo_bytes: int,
    reflog_last_time: int | None,
    save_log_bytes: int | None,
    touch_mtime: float | None,
    master_sha: str | None,
) -> tuple[bytes, str | None]:
    """The packed numbers and commit id, and the commit text that could not be packed (None when
    there is none or it was). ValueError when a number is not an integer of 64 bits (or not a
    number at all)."""
    numbers = (
        (bupindex_bytes is None)
        | (reflog_last_time is None) << 1
        | (save_log_bytes is None) << 2
        | (touch_mtime is None) << 3,
        bupindex_bytes or 0,
        repo_bytes,
        reflog_last_time or 0,
        save_log_bytes or 0,
        touch_mtime or 0.0,
    )
    try:
        if master_sha is not None and _CANONICAL_SHA(master_sha) is not None:
            return _WITH_SHA.pack(*numbers, bytes.fromhex(master_sha)), None
        return _NUMBERS.pack(*numbers), master_sha
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"a size or time that is not a 64-bit number ({exc})") from None


#: Nothing known but ``repo_bytes`` = 0 (what RepoFacts holds when it is given no numbers).
EMPTY = pack(None, 0, None, None, None, None)[0]
