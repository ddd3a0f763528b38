"""Segment files: the header, creation with reserved space, and the directory fsync.

Rule 1: a segment's space is reserved and written (zeros, or a recycled segment's old
bytes) before anything is mapped, so a full disk is an ``OSError`` here, never a SIGBUS
while writing through the map.
Rule 2: a new segment's header is durable before its name appears, and the name is
durable (directory fsync) before any record in it is acknowledged.
Rule 3: old bytes in a recycled segment are never read as records: their sequence numbers
are all below the new base, and a reader accepts only the expected sequence number.
Rule 4: every name the log owns (segments, checkpoint, dead-letter file, lock, prepared
segments, ``*.tmp``) is a regular file, and only regular files are opened:
:func:`open_regular` never follows a symlink (``O_NOFOLLOW``: a link's target is never
truncated or appended to), never blocks on a FIFO (``O_NONBLOCK``), and checks the
descriptor with ``fstat``; :func:`refuse_special_files` refuses a directory holding such a
name before anything is opened or changed.
Rule 5: the writer lock belongs to the process that took it (:func:`take_lock`); a forked
child lets go of its inherited copy.
This module never decides policy (when to rotate, what to delete): segmentlog.engine does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable

from segmentlog import _fs
from segmentlog._backend import impl
from segmentlog._format import (
    CHECKPOINT_NAME,
    DEADLETTER_NAME,
    FORMAT_VERSION,
    FRAME_ALIGN,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_MARKER,
    LOCK_NAME,
    PREPARED_NAME,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEQ_LIMIT,
    SPARE_NAME,
    TMP_SUFFIX,
    frame_size,
    parse_segment_name,
    segment_name,
)
from segmentlog.errors import ConfigError, CorruptionError, DurabilityError, LogLockedError

FILE_MODE = 0o600
_PID_WIDTH = 24
DIR_MODE = 0o700
_ZERO_CHUNK = bytes(1 << 20)
# A segment file being given its header's name on open (restore_names).
MOVING_SUFFIX = ".moving"


def owned_name(name: str) -> bool:
    """Whether ``name`` is one the log itself uses in its directory (FORMAT.md,
    "Directory"); every other name is foreign."""
    if name.endswith(MOVING_SUFFIX):
        name = name[: -len(MOVING_SUFFIX)]  # the log renames it to a segment name
        return parse_segment_name(name) is not None
    return (parse_segment_name(name) is not None or name.endswith(TMP_SUFFIX)
            or name in (CHECKPOINT_NAME, DEADLETTER_NAME, LOCK_NAME, PREPARED_NAME,
                        SPARE_NAME))


def file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, what in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return what
    return "special file"


def special_file_error(path: str, what: str) -> CorruptionError:
    return CorruptionError(
        f"{path} is a {what}, not a regular file: segmentlog uses this name for its own "
        "files and opens only regular files (it never follows a link, and a FIFO would "
        "hang it); remove or rename it (a link: replace it by the file it points to), then "
        "open the log again", path=path, kind="special_file")


def special_files(directory: str) -> list[tuple[str, str]]:
    """(name, what it is) of each name the log owns in ``directory`` that is not a
    regular file, by name (from the directory entry's type, following no link)."""
    out = []
    with os.scandir(directory) as it:
        for entry in it:
            if owned_name(entry.name) and not entry.is_file(follow_symlinks=False):
                try:
                    what = file_type(entry.stat(follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue  # gone meanwhile: nothing there to refuse
                out.append((entry.name, what))
    return sorted(out)


def refuse_special_files(directory: str) -> None:
    """Raise CorruptionError naming the first name the log owns in ``directory`` that is
    not a regular file (Rule 4); nothing is opened or changed before."""
    found = special_files(directory)
    if found:
        name, what = found[0]
        raise special_file_error(os.path.join(directory, name), what)


def open_regular(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` for the log's own files (Rule 4): never follows a symlink, never blocks
    on a FIFO, and returns a descriptor of a regular file only, else CorruptionError
    naming ``path`` and the fix. OSError as os.open raises it otherwise."""
    try:
        fd = _fs.fs.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        # ELOOP: a symlink (O_NOFOLLOW); EISDIR: a directory opened for writing; ENXIO: a
        # FIFO opened for writing with no reader, or a socket.
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):
            raise
        try:
            st = os.lstat(path)
        except OSError:
            raise exc from None
        if stat.S_ISREG(st.st_mode):
            raise
        raise special_file_error(path, file_type(st.st_mode)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise special_file_error(path, file_type(st.st_mode))
        if not flags & os.O_NONBLOCK:
            # Meaningless for a regular file on Linux, but keep the caller's semantics.
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_directory(path: str) -> None:
    """Create the log's directory (mode 0700), or tighten an existing one to 0700 when
    group or others have any access: the records (audit events) are private, and the
    file store and SegmentLog share this one rule. ConfigError when ``path`` is not a
    directory, DurabilityError when it cannot be created or tightened."""
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError as exc:
        raise DurabilityError(exc.errno, f"cannot create log directory {path} or set its "
                              f"mode 0700: {exc.strerror}; check the path and that the "
                              "process owns it") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} exists and is not a directory")


def encode_header(base_seq: int) -> bytes:
    """The 32-byte header of a segment whose first record is ``base_seq``."""
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, FRAME_ALIGN, base_seq, 0, 0)[:28]
    crc: int = impl.crc32c(body)
    return body + crc.to_bytes(4, "little")


def header_problem(data: bytes | memoryview, base_seq: int) -> str | None:
    """Why ``data`` is not a valid header for a segment named ``base_seq``; None if it is."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return "short_header"
    magic, version, align, base, reserved, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if not any(bytes(data[:SEGMENT_HEADER_SIZE])):
        return "zero_header"
    if impl.crc32c(bytes(data[:28])) != crc:
        return "bad_header_crc"
    if magic != SEGMENT_MAGIC:
        return "bad_magic"
    if version != FORMAT_VERSION or align != FRAME_ALIGN or reserved != 0:
        return "unsupported_version"
    if base != base_seq:
        return "header_name_mismatch"
    return None


def fsync_dir(path: str) -> None:
    """Make creates, renames and unlinks in directory ``path`` durable."""
    _fs.fs.fsync_dir(path)


def reserve_and_zero(path: str, size: int, zero_fill: bool = True, sync: bool = True,
                     warm: bool = False) -> None:
    """Create ``path`` with ``size`` bytes allocated (and, with ``zero_fill``, written as
    zeros), then (with ``sync``) fdatasync it; with ``warm``, read it through once.

    Writing the zeros (not only ``posix_fallocate``) turns unwritten extents into written
    ones up front, which makes every later ``fdatasync`` of records cheaper (FORMAT.md,
    "Writing and preparing segments"). Reading the file puts its pages in the page cache
    as clean zero pages: writing through the map then finds them ready, and no zeros are
    written back to disk. On ENOSPC the partial file is removed and the error raised.
    """
    fd = open_regular(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            _fs.fs.posix_fallocate(fd, 0, size)
        except OSError as exc:
            # Some file systems (tmpfs on old kernels, some FUSE) lack fallocate; writing
            # the zeros below reserves the space just as well, and still fails on ENOSPC.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            zero_fill = True
        written = 0 if zero_fill else size
        while written < size:
            n = min(len(_ZERO_CHUNK), size - written)
            written += _fs.fs.pwrite(fd, _ZERO_CHUNK[:n], written)
        if sync:
            _fs.fs.fdatasync(fd)
        if warm:
            chunk, done = bytearray(len(_ZERO_CHUNK)), 0
            while done < size and (n := os.preadv(fd, [chunk], done)) > 0:
                done += n
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            _fs.fs.unlink(path)
        raise
    os.close(fd)


# The writer locks this process took: (descriptor, st_dev, st_ino) of each lock file.
_HELD_LOCKS: set[tuple[int, int, int]] = set()


def _drop_inherited_locks() -> None:
    """In a child made by ``os.fork``: let go of the parent's writer locks (Rule 5).

    A forked child shares the parent's open file description, so its copy of the
    descriptor kept the flock after the parent was killed, and nobody could open the log
    while the child lived. The copy is replaced by /dev/null (``dup2``) rather than
    closed: the parent's SegmentLog object in the child still owns that descriptor
    number and closes it at ``close()``, which must not close a file the child opened
    meanwhile under the same number. A descriptor that no longer is the lock file (closed
    and reused since) is left alone.
    """
    if not _HELD_LOCKS:
        return
    held = list(_HELD_LOCKS)
    _HELD_LOCKS.clear()
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for fd, dev, ino in held:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _remember_lock(fd: int) -> None:
    st = os.fstat(fd)
    for entry in list(_HELD_LOCKS):
        # Forget descriptors closed (or reused) since: only lock files still open count.
        try:
            now = os.fstat(entry[0])
        except OSError:
            _HELD_LOCKS.discard(entry)
            continue
        if (now.st_dev, now.st_ino) != entry[1:]:
            _HELD_LOCKS.discard(entry)
    _HELD_LOCKS.add((fd, st.st_dev, st.st_ino))


def _holding(pid: int, dev: int, ino: int) -> bool | None:
    """Whether process ``pid`` has the file (dev, ino) open; None when that cannot be
    seen (no /proc, another user's process)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        return False  # no such process (or no /proc: then the caller cannot tell either)
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join(fd_dir, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino):
            return True
    return False


def _started_after(pid: int, when: float) -> bool | None:
    """Whether process ``pid`` started after wall-clock time ``when`` (so it cannot be
    the process that wrote the lock file then: its pid was reused); None if not known,
    True for a zombie (it holds no file any more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    if fields[0] == b"Z":
        return True
    start = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return start > when + 2  # btime has whole seconds; the clock may have been stepped


def _lock_holders(path: str, recorded: int | None) -> tuple[list[int], bool]:
    """(processes other than this one that have the lock file open, whether the one whose
    pid it records is alive) -- only when the lock is taken, to name who holds it.

    The recorded process is alive when it exists, is no zombie, and started before the
    lock file was stamped (not a reused pid): a few small reads, as the pool meets taken
    locks often. Only when it is gone are all processes searched for the lock file."""
    try:
        st = os.stat(path)
    except OSError:
        return ([recorded] if recorded is not None else []), recorded is not None
    if recorded is not None:
        try:
            os.kill(recorded, 0)
            alive = not _started_after(recorded, st.st_mtime)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True  # another user's process, running
        if alive:
            return [recorded], True
    if not os.path.isdir("/proc"):
        return [], False
    openers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _holding(
                int(entry), st.st_dev, st.st_ino):
            openers.append(int(entry))
    return sorted(openers), False


def _locked_error(directory: str, path: str, holder: str) -> LogLockedError:
    recorded = int(holder) if holder.isdigit() else None
    openers, alive = _lock_holders(path, recorded)
    if alive:
        return LogLockedError(
            f"{directory} is in use by process {recorded}: one writer per directory; stop "
            "that process or use another directory", recorded)
    gone = (f"process {recorded}, which took the lock, is gone" if recorded is not None
            else "the lock file names no process")
    if openers:
        who = ", ".join(f"process {p}" for p in openers)
        return LogLockedError(
            f"{directory} is locked by {who}, which holds its lock file open: {gone} (the "
            "lock passed to a process it started or forked); stop that process or use "
            "another directory", openers[0])
    return LogLockedError(
        f"{directory} is locked, but {gone} and no process this one can see holds {path} "
        "open (another user's, or another container's?); find it with `fuser` and stop "
        "it, or use another directory", None)


def take_lock(directory: str) -> int:
    """Take the writer lock of ``directory`` (flock on ``lock``, which then holds our pid);
    return its descriptor, whose closing releases the lock. Raises LogLockedError naming
    the process that holds it (or saying the one that took it is gone) when another
    process has it. Shared by SegmentLog and ``repair``.

    Rule 5: the lock belongs to the process that took it. A child made by ``os.fork``
    lets go of its copy at once (_drop_inherited_locks), so the lock ends with the
    process that took it, never with a worker it forked; a process that must write to
    the log after forking (a daemon) opens the log after the fork.
    """
    path = os.path.join(directory, LOCK_NAME)
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _locked_error(directory, path, holder) from None
        raise
    try:
        _remember_lock(fd)
        # Overwrite in place (padded), then cut: an existing lock file needs no new block.
        stamp = f"{os.getpid()}\n".encode().ljust(_PID_WIDTH, b" ")
        os.pwrite(fd, stamp, 0)
        os.ftruncate(fd, len(stamp))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            os.close(fd)
            raise
        # A full disk: the lock is held all the same; others just cannot see our pid.
    return fd


def restore_names(directory: str, names: list[str],
                  note: Callable[[str], None]) -> list[str]:
    """Give segment files whose sound header names another base (renamed or swapped
    files) their header's name back; returns the directory's names after it (FORMAT.md,
    "Recovery rules", 1). The log's open and ``repair`` call it, holding the writer lock.

    A file's name never decides which records it holds: its header (checksummed) does.
    Files move aside first (``NAME.seg.moving``), then into place, so two swapped files
    trade names; an open that stops in between finds the ``.moving`` files and finishes
    the move. A file whose header's name is taken is a copy of a present segment: the
    longer of the two takes the name and the other is set aside as ``NAME.seg.damaged``
    (its bytes kept), unless the copy's first frame is numbered by its own name (a
    header damaged into another sound one): then it keeps its name.
    """
    moves = []
    for name in names:
        own = name[: -len(MOVING_SUFFIX)] if name.endswith(MOVING_SUFFIX) else name
        base = parse_segment_name(own)
        if base is None or not _is_regular(os.path.join(directory, name)):
            continue  # a special file stays where it is: the open refuses it by name
        wants, first = _identity(os.path.join(directory, name))
        if name != own or (wants is not None and wants != base):
            moves.append((name, own, base, base if wants is None else wants, first))
    if not moves:
        return names

    def join(name: str) -> str:
        return os.path.join(directory, name)

    for name, own, *_ in moves:
        if name == own:
            _fs.fs.rename(join(own), join(own + MOVING_SUFFIX))
    fsync_dir(directory)
    for _, own, base, wants, first in moves:
        taken = join(segment_name(wants))
        if (os.path.isfile(taken) and not os.path.islink(taken)
                and os.path.getsize(taken) < os.path.getsize(join(own + MOVING_SUFFIX))):
            # The file under the header's name is shorter (cut short): the copy holds more
            # of that segment. Keep both, the longer one in place.
            aside = quarantine_name(directory, segment_name(wants))
            _fs.fs.rename(taken, join(aside))
            note(f"segment file {segment_name(wants)} is shorter than {own}, which holds "
                 f"the same segment: kept as {aside}")
        targets = [segment_name(wants), quarantine_name(directory, own)]
        if first == base or wants == base:
            targets.insert(1, own)  # its records are numbered by its own name
        for target in targets:
            if not os.path.lexists(join(target)):
                _fs.fs.rename(join(own + MOVING_SUFFIX), join(target))
                if target != own:
                    note(f"segment file {own} holds the segment of base {wants} (its "
                         f"header says so): now named {target}")
                break
    fsync_dir(directory)
    return os.listdir(directory)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _identity(path: str) -> tuple[int | None, int | None]:
    """(the base a segment file holds, the number of its first sound frame), each None
    when unknown (or the file is not a regular file). The base is the one its sound
    header names; with a damaged header, the number of its first frame if that frame is
    sound (checksum verified): a renamed file whose header was damaged too is still
    known by its records. (Stale frames of an empty recycled segment are numbered below
    the durable checkpoint: a file named by them holds only consumed records.)"""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except (OSError, CorruptionError):
        return None, None  # not a regular file: the open refuses it (special files)
    try:
        data = os.pread(fd, SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE, 0)
        first = None
        if len(data) == SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE:
            marker, length, seq, _, _ = FRAME_HEADER.unpack_from(data, SEGMENT_HEADER_SIZE)
            if marker == FRAME_MARKER and seq < SEQ_LIMIT:
                room = os.fstat(fd).st_size - SEGMENT_HEADER_SIZE  # a length is not trusted
                frame = os.pread(fd, min(frame_size(length), max(room, 0)),
                                 SEGMENT_HEADER_SIZE)
                if impl.scan(frame, 0, len(frame), seq, 1, None).count == 1:
                    first = seq
    finally:
        os.close(fd)
    if len(data) >= SEGMENT_HEADER_SIZE:
        base = int.from_bytes(data[16:24], "little")
        if base < SEQ_LIMIT and header_problem(data[:SEGMENT_HEADER_SIZE], base) is None:
            return base, first
    return first, first


def quarantine_name(directory: str, name: str) -> str:
    """A free name to set ``name`` aside under: ``NAME.damaged``, else ``NAME.damaged.N``
    (a file set aside earlier is never overwritten)."""
    target = name + ".damaged"
    n = 1
    while os.path.lexists(os.path.join(directory, target)):
        target = f"{name}.damaged.{n}"
        n += 1
    return target
