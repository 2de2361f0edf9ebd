"""The probe's compact records (PROBE_VERSION 2) decoded into facts, typed and fast (msgspec).

One JSON array per repository or live directory (see ``probe.WireEncoder``): decoding them with
``json`` and a dict per record was half the watchdog's CPU in a sweep. Anything that is not such
a record, in shape or in types, becomes a ProbeError naming the line, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import msgspec

from bup_watchdog import repo_numbers
from bup_watchdog.errors import ProbeError
from bup_watchdog.live_dirs import ProjectDirFacts, owned_as_usual
from bup_watchdog.model import NO_ODDITIES, NOTHING, RepoFacts, RepoOddities, project_uid_unchecked
from bup_watchdog.probe import SHARED_MAX, WIRE_DIR, WIRE_REPO

#: ``model.is_v4_uuid`` in one match, without lower-casing first: the same texts are accepted
#: (ASCII hex of either case; ``str.lower`` maps no other character onto a hex digit or ``-``).
_V4_ANY_CASE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
).fullmatch


#: RepoFacts' fields in the order ``WireReader.repo`` passes them (positionally, for speed).
_REPO_FACTS_ORDER = (
    "project_id",
    "head",
    "master_in_pack",
    "pack_count",
    "replicas",
    "settings",
    "odd",
    "numbers",
)
#: RepoOddities' fields, in the order ``WireReader.repo`` passes them.
_ODDITIES_ORDER = (
    "dir_name",
    "is_symlink",
    "master_error",
    "idx_without_pack",
    "bad_idx",
    "midx_count",
    "tmp_count",
    "save_log_is_symlink",
    "save_log_kind",
    "replicas_error",
    "symlinks_outside",
    "errors",
    "symlinks_outside_count",
    "master_text",
)
if (  # pragma: no cover - a guard
    RepoFacts.__struct_fields__ != _REPO_FACTS_ORDER
    or RepoOddities.__struct_fields__ != _ODDITIES_ORDER
):
    raise ImportError("model.RepoFacts' fields changed: update wire.WireReader.repo")


class RepoWire(msgspec.Struct, array_like=True, gc=False, tag=WIRE_REPO):
    """A repository's record on the wire, in ``probe.REPO_WIRE_FIELDS`` order."""

    name: str
    fingerprint: str | None = None
    head: str | int | None = None
    master_sha: str | None = None
    master_in_pack: bool | None = None
    pack_count: int = 0
    repo_bytes: int = 0
    reflog_last_time: int | None = None
    save_log_bytes: int | None = None
    touch_mtime: float | None = None
    replicas: list[str] | int | None = None
    settings: dict[str, Any] | int | None = None
    bupindex_bytes: int | None = None
    idx_without_pack: int = 0
    midx_count: int = 0
    tmp_count: int = 0
    is_symlink: bool = False
    master_error: str | None = None
    save_log_is_symlink: bool = False
    save_log_kind: str | None = None
    replicas_error: str | None = None
    errors: list[str] = []
    bad_idx: list[str] = []
    symlinks_outside: list[str] = []
    symlinks_outside_count: int = 0


class DirWire(msgspec.Struct, array_like=True, gc=False, tag=WIRE_DIR):
    """A live directory's record on the wire, in ``probe.DIR_WIRE_FIELDS`` order."""

    name: str
    uid: int | None = None
    gid: int | None = None
    owners: dict[int, int] = {}
    sampled: int = 0
    digest: str | None = None
    sample_truncated: bool = False
    sample_skipped: bool = False
    is_symlink: bool = False
    examples: dict[int, list[str]] = {}


_decode = msgspec.json.Decoder(RepoWire | DirWire).decode


class WireReader:
    """Decodes one host's compact records; holds that stream's tables of shared values."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.replicas: list[tuple[str, ...]] = []
        self.settings: list[dict[str, Any]] = []

    def decode(self, raw: bytes, line: int) -> RepoWire | DirWire:
        """One compact record; ProbeError when the line is not one."""
        try:
            return _decode(raw)
        except RecursionError:  # nested past the decoder's depth: no record is
            raise ProbeError(f"line {line}: nested too deep to be a probe record") from None
        except msgspec.DecodeError as exc:
            if "surrogate" not in str(exc):
                raise ProbeError(f"line {line}: {_what_is_wrong(raw, exc)}") from None
            error = exc
        # A file name that is not UTF-8 comes as \udcXX escapes (os.fsdecode's surrogateescape),
        # which msgspec refuses in JSON text: such a rare line is read with json, then checked.
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProbeError(f"line {line}: {_what_is_wrong(raw, error)}") from None
        try:
            wire: RepoWire | DirWire = msgspec.convert(
                value, RepoWire | DirWire, strict=True, str_keys=True
            )
        except msgspec.ValidationError as exc:
            raise ProbeError(f"line {line}: {_what_is_wrong(raw, exc)}") from None
        except UnicodeEncodeError:  # msgspec wording its complaint about such a text
            raise ProbeError(f"line {line}: {_what_is_wrong(raw, None)}") from None
        return wire

    @staticmethod
    def _bad_ref(table: list[Any], n: int, what: str, line: int) -> NoReturn:
        raise ProbeError(
            f"line {line}: the probe's record names shared {what} {n}, "
            f"but only {len(table)} were sent"
        )

    def repo(self, w: RepoWire, line: int) -> RepoFacts:
        """The facts of one repository record."""
        name = w.name
        if _V4_ANY_CASE(name) is None:
            raise ProbeError(f"probe reported a repository with a bad project id {name[:80]!r}")
        # A shared value by its number is looked up inline (three per repository: no call).
        head, heads = w.head, self.heads
        if isinstance(head, int):
            head = (
                heads[head] if 0 <= head < len(heads) else self._bad_ref(heads, head, "HEAD", line)
            )
        elif head is not None and len(heads) < SHARED_MAX:
            head = sys.intern(head) if len(head) < 200 else head
            heads.append(head)
        reps, shared = w.replicas, self.replicas
        replicas: tuple[str, ...] | None
        if isinstance(reps, int):
            replicas = (
                shared[reps]
                if 0 <= reps < len(shared)
                else self._bad_ref(shared, reps, "replica list", line)
            )
        elif reps is None:
            replicas = None
        else:
            replicas = tuple(sys.intern(x) if len(x) <= 64 else x for x in reps)
            if len(shared) < SHARED_MAX:
                shared.append(replicas)
        settings, known = w.settings, self.settings
        if isinstance(settings, int):
            settings = (
                known[settings]
                if 0 <= settings < len(known)
                else self._bad_ref(known, settings, "settings", line)
            )
        elif settings is not None and len(known) < SHARED_MAX:
            known.append(settings)
        try:
            numbers, master_text = repo_numbers.pack(
                w.bupindex_bytes,
                w.repo_bytes,
                w.reflog_last_time,
                w.save_log_bytes,
                w.touch_mtime,
                w.master_sha,
            )
        except ValueError as exc:
            raise ProbeError(f"line {line}: {exc}") from None
        pid = sys.intern(name.lower())
        odd = NO_ODDITIES
        if (  # nearly never: RepoOddities only for a repository that has one
            name != pid
            or master_text is not None
            or w.is_symlink
            or w.master_error is not None
            or w.idx_without_pack
            or w.bad_idx
            or w.midx_count
            or w.tmp_count
            or w.save_log_is_symlink
            or w.save_log_kind is not None
            or w.replicas_error is not None
            or w.symlinks_outside
            or w.errors
            or w.symlinks_outside_count
        ):
            odd = RepoOddities(
                None if name == pid else name,  # dir_name
                w.is_symlink,
                w.master_error,
                w.idx_without_pack,
                tuple(w.bad_idx),
                w.midx_count,
                w.tmp_count,
                w.save_log_is_symlink,
                w.save_log_kind,
                w.replicas_error,
                tuple(w.symlinks_outside),
                tuple(w.errors),
                w.symlinks_outside_count,
                master_text,
            )
        return RepoFacts(  # positionally, in _REPO_FACTS_ORDER: ~0.6 µs less per repository
            pid,  # project_id
            head,  # head
            w.master_in_pack,  # master_in_pack
            w.pack_count,  # pack_count
            replicas,  # replicas
            settings,  # settings
            odd,  # odd
            numbers,  # numbers
        )

    @staticmethod
    def project_dir(w: DirWire) -> ProjectDirFacts:
        """The facts of one live directory record."""
        if _V4_ANY_CASE(w.name) is None:
            raise ProbeError(f"probe reported a project directory with a bad id {w.name[:80]!r}")
        if w.sampled < 0:
            raise ProbeError("probe record 'project_dir': sampled is negative")
        for uid, count in w.owners.items():
            if uid < 0 or count < 0:
                raise ProbeError("probe record 'project_dir': owners has a uid or count below 0")
        pid = sys.intern(w.name.lower())
        owners, sampled = w.owners, w.sampled
        if not (
            w.examples or w.is_symlink or w.sample_truncated or w.sample_skipped
        ) and owned_as_usual(project_uid_unchecked(pid), w.uid, w.gid, owners, sampled):
            return ProjectDirFacts(pid, sampled)  # as ProjectDirFacts.of would, sooner
        examples: Mapping[int, tuple[str, ...]] = NOTHING
        if w.examples:  # the probe leaves the project's own uid out; so is it here
            own = project_uid_unchecked(pid)
            examples = {u: tuple(p) for u, p in w.examples.items() if u != own} or NOTHING
            if min(examples, default=0) < 0:
                raise ProbeError("probe record 'project_dir': examples has a uid below 0")
        return ProjectDirFacts.of(
            pid,
            is_symlink=w.is_symlink,
            uid=w.uid,
            gid=w.gid,
            owners=owners,
            sampled=sampled,
            sample_truncated=w.sample_truncated,
            sample_skipped=w.sample_skipped,
            examples=examples,
        )


def _what_is_wrong(raw: bytes, exc: msgspec.DecodeError | None) -> str:
    """The decoder's complaint, naming the record's kind and the field at fault."""
    kind, fields = "probe's", ()  # type: tuple[str, tuple[str, ...]]
    tag = raw[1:3]
    if tag in (b"%d," % WIRE_REPO, b"%d]" % WIRE_REPO):
        kind, fields = "probe's repo", RepoWire.__struct_fields__
    elif tag in (b"%d," % WIRE_DIR, b"%d]" % WIRE_DIR):
        kind, fields = "probe's project_dir", DirWire.__struct_fields__
    text = "a text where another type belongs" if exc is None else str(exc)[:300]
    at = _POSITION.search(text)
    if at and 1 <= int(at[1]) <= len(fields):
        text += f" (field {fields[int(at[1]) - 1]})"
    return f"the {kind} record is malformed: {text}"


_POSITION = re.compile(r"\$\[(\d+)\]")
