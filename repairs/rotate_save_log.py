"""rotate_save_log: compress an overgrown ``conf/save_log.json`` aside and keep its newest lines.

No record is lost: the archive (``conf/save_log-<UTC time>.json.gz``) holds every line before the
cut, ``save_log.json`` keeps every line after it, and lines appended while the rotation runs are
carried over into the new file. The work is one stdlib-only program sent to ``python3 -S -`` on
the host, so the file is opened once, relative to directory descriptors, never through a symlink.
"""

from __future__ import annotations

from pydantic import Field

from bup_watchdog.repairs.base import (
    Mode,
    Repair,
    RepairContext,
    RepairRequest,
    RepairSettings,
    Step,
    mode_field,
)

MB = 1_000_000

#: Runs on the host: ``python3 -S - REPO KEEP_BYTES SETTLE_SECONDS``. Exit 0 done (or nothing to
#: do), 2 refused (symlink, not a regular file, replaced meanwhile), anything else failed.
#: Writers that append (open, write a line, close) either reach the old file before the rename,
#: and are copied over, or the new one after it; a writer that still holds the old file open
#: after ``SETTLE_SECONDS`` is the one case left, which the fleet's tooling does not do.
PROGRAM = r'''
import fcntl, gzip, os, stat, sys, time

NAME = "save_log.json"
CHUNK = 1 << 20


def refuse(msg):
    sys.stderr.write("refused: " + msg + "\n")
    sys.exit(2)


def fail(msg):
    sys.stderr.write("failed: " + msg + "\n")
    sys.exit(1)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy(src, start, end, write):
    """Copy bytes [start, end) of src; return (position reached, newlines copied)."""
    lines = 0
    while start < end:
        data = os.pread(src, min(CHUNK, end - start), start)
        if not data:
            break
        write(data)
        start += len(data)
        lines += data.count(b"\n")
    return start, lines


def cut_point(fd, size, keep):
    """Where the kept tail begins: the first line start at or after size - keep (or, when the
    last line alone is longer, the start of that line)."""
    pos = size - keep - 1
    while pos < size:
        data = os.pread(fd, min(CHUNK, size - pos), pos)
        i = data.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(data)
    pos = size - keep
    while pos > 0:
        start = max(0, pos - CHUNK)
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def main():
    repo, keep, settle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    dirflags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        rfd = os.open(repo, dirflags)
        cfd = os.open("conf", dirflags, dir_fd=rfd)
    except OSError as e:
        refuse("%s/conf is not a directory reachable without symlinks: %s" % (repo, e.strerror))
    try:
        st = os.stat(NAME, dir_fd=cfd, follow_symlinks=False)
    except FileNotFoundError:
        refuse("conf/save_log.json does not exist")
    if stat.S_ISLNK(st.st_mode):
        refuse("conf/save_log.json is a symlink; not followed, not read, not moved")
    if not stat.S_ISREG(st.st_mode):
        refuse("conf/save_log.json is not a regular file")
    try:
        fd = os.open(NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=cfd)
    except OSError as e:
        refuse("conf/save_log.json cannot be opened without following a symlink: %s" % e.strerror)
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        refuse("conf/save_log.json was replaced while it was opened")
    for _ in range(100):  # writers that lock the log: wait up to 10 s for them
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        fail("conf/save_log.json stayed locked by another process for 10 s")
    size = fst.st_size
    cut = cut_point(fd, size, keep) if size > keep else 0
    if cut == 0:
        print("nothing to rotate: conf/save_log.json is %d bytes (keep_bytes %d)" % (size, keep))
        return

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for n in range(100):
        archive = "save_log-%s%s.json.gz" % (stamp, "-%d" % n if n else "")
        try:
            afd = os.open(archive, excl, 0o600, dir_fd=cfd)
            break
        except FileExistsError:
            continue
    else:
        fail("no free archive name for %s" % stamp)
    tmp = ".save_log.json.rotate-%d" % os.getpid()
    tfd = -1
    renamed = False
    try:  # until the rename, the old file still holds every line: undo everything on failure
        with os.fdopen(afd, "wb") as raw:
            with gzip.GzipFile(NAME, "wb", 6, raw, int(st.st_mtime)) as gz:
                pos, archived_lines = copy(fd, 0, cut, gz.write)
            if pos != cut:
                fail("conf/save_log.json shrank while it was archived")
            raw.flush()
            os.fchown(raw.fileno(), st.st_uid, st.st_gid)
            os.fchmod(raw.fileno(), stat.S_IMODE(st.st_mode))
            os.fsync(raw.fileno())
        os.fsync(cfd)

        tfd = os.open(tmp, excl | os.O_APPEND, 0o600, dir_fd=cfd)
        os.fchown(tfd, st.st_uid, st.st_gid)
        os.fchmod(tfd, stat.S_IMODE(st.st_mode))
        append = lambda data: write_all(tfd, data)  # noqa: E731
        pos, kept_lines = copy(fd, cut, size, append)
        while True:  # lines appended since we looked: into the tail too
            end = os.fstat(fd).st_size
            if end < pos:
                fail("conf/save_log.json shrank during the rotation; it was left as it is")
            if end == pos:
                break
            pos, more = copy(fd, pos, end, append)
            kept_lines += more
        os.fsync(tfd)
        now = os.stat(NAME, dir_fd=cfd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            refuse("conf/save_log.json was replaced during the rotation; it was left as it is")
        os.rename(tmp, NAME, src_dir_fd=cfd, dst_dir_fd=cfd)
        renamed = True
        os.fsync(cfd)
    except BaseException:
        if not renamed:
            for name in (tmp, archive) if tfd >= 0 else (archive,):
                try:
                    os.unlink(name, dir_fd=cfd)
                except OSError:
                    pass
        raise
    # Writers that opened the old file before the rename may still append to it: carry it over.
    late = 0
    deadline = time.monotonic() + settle
    while True:
        end = os.fstat(fd).st_size
        if end > pos:
            reached, more = copy(fd, pos, end, append)
            late += reached - pos
            kept_lines += more
            pos = reached
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    os.fsync(tfd)
    print("archived %d bytes (%d lines) of conf/save_log.json to conf/%s"
          % (cut, archived_lines, archive))
    print("kept the newest %d bytes (%d lines) in conf/save_log.json; %d bytes were appended "
          "during the rotation and kept too" % (pos - cut, kept_lines, pos - size))
    if late:
        print("%d of those bytes reached the old file after the rename and were carried over"
              % late)


main()
'''


class RotateSaveLogSettings(RepairSettings):
    """rotate_save_log: archive conf/save_log.json gzipped, keep only its newest lines."""

    mode: Mode = mode_field("auto")
    keep_bytes: int = Field(
        1 * MB,
        ge=1,
        le=50 * MB,
        description="Bytes of the newest complete lines kept in conf/save_log.json; the rest "
        "goes to conf/save_log-<UTC time>.json.gz. Keep it below save_log_size.warn_bytes.",
    )
    settle_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="After the new file is in place, watch the old one this long for lines "
        "a writer still appends to it, and carry them over.",
    )
    python: str = Field(
        "python3",
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="The Python 3 on the hosts that runs the rotation (as ssh.python).",
    )
    timeout: float = Field(
        600.0, gt=0, description="Seconds the rotation of one log may take (gzip of ~400 MB)."
    )


class RotateSaveLog(Repair[RotateSaveLogSettings]):
    name = "rotate_save_log"
    Settings = RotateSaveLogSettings
    check = "save_log_size"
    codes = ("too_large",)

    def _repo(self, req: RepairRequest, ctx: RepairContext) -> str:
        assert req.project_id is not None
        return f"{ctx.server(req.server_id).bups_root}/{req.project_id}"

    def preconditions(
        self, req: RepairRequest, ctx: RepairContext, settings: RotateSaveLogSettings
    ) -> list[str]:
        facts = ctx.facts(req.server_id)
        if not facts.probed:
            return [f"unreachable: cannot probe the host now ({facts.failure_message})"]
        assert req.project_id is not None
        repo = facts.repos.get(req.project_id)
        path = self._repo(req, ctx)
        if repo is None:
            return [f"missing: {path} does not exist"]
        if repo.is_symlink:
            return [f"symlink: {path} is a symlink; not followed"]
        if repo.save_log_is_symlink:
            return [f"symlink: {path}/conf/save_log.json is a symlink; not followed, not moved"]
        if repo.save_log_bytes is None:
            return [f"missing: {path}/conf/save_log.json is missing or not a regular file"]
        if repo.save_log_bytes <= settings.keep_bytes:
            return [
                f"nothing_to_do: conf/save_log.json is {repo.save_log_bytes} bytes, within "
                f"keep_bytes ({settings.keep_bytes})"
            ]
        return []

    def plan(
        self, req: RepairRequest, ctx: RepairContext, settings: RotateSaveLogSettings
    ) -> list[Step]:
        repo = self._repo(req, ctx)
        argv = (
            settings.python, "-S", "-",
            repo, str(settings.keep_bytes), f"{settings.settle_seconds:g}",
        )  # fmt: skip
        return [
            Step(
                req.server_id,
                argv,
                f"archive {repo}/conf/save_log.json to conf/save_log-<UTC time>.json.gz and keep "
                f"its newest {settings.keep_bytes} bytes of lines (program on stdin: "
                "repairs/rotate_save_log.py PROGRAM; refuses a symlink)",
                stdin=PROGRAM.encode(),
                timeout=settings.timeout,
            )
        ]


repair = RotateSaveLog()
