"""Writing the files of a tree restore (``tree_restore.py``): directory descriptors, temp
files, and making each file durable before it gets its name.

The discipline is that of ``restorer.write_file`` and ``restore_temp.py``: a file is written
to a temp file named after this process in its destination directory (stale ones swept when
the directory is first opened), given its owner, mode and mtime, made durable, and only then
renamed over its name; the temp file never outlives a failure. So a name never shows a
half-written file, not even after a crash, and a killed restore's leftovers are swept by the
next one. What differs is only how the content is made durable before the rename:

* :class:`FsyncEach`: ``fsync`` of each file by its writer, then the rename; each directory
  is fsync'ed once at the end (after all its files) instead of after every file.
* :class:`SyncfsBatches`, used where it is as safe (Linux 5.8 or later, whose ``syncfs``
  reports write-back errors, on a local file system listed in :data:`SYNCFS_FILE_SYSTEMS`):
  written temp files are queued; a committer thread makes a whole batch durable with one
  ``syncfs`` of the target's file system and then renames the batch's files; one last
  ``syncfs`` makes the names durable. One flush per batch instead of one per file (an
  ``fsync`` costs a journal commit and a disk cache flush each), and writing goes on while
  a batch is flushed. ``syncfs`` also writes out other programs' pending writes to that file
  system, which only costs time. A write-back error anywhere on that file system since the
  restore started fails the restore (a failing disk; the error cannot name a file).

Every file and name is durable before ``finish`` returns, in both modes.

Files are created and renamed relative to a descriptor of their directory, opened one
component at a time from the target without following symbolic links: a link on the way is
refused, and swapping a component for a link while the restore runs redirects nothing. A
link or directory already at a file's name is refused, as ``restorer.write_file`` does
(judged from the listing taken when the directory is opened; a rename never follows a link).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from src.infra.backup.errors import InvalidInputError
from src.infra.backup.files.restore_temp import clean_stale_temps, restore_temp_tag
from src.infra.backup.files.restorer import set_file_metadata
from src.infra.backup.storage.local import TEMP_PREFIX, fsync_dir, storage_error

# A batch is committed when it holds this many files, bytes or directories.
BATCH_FILES = 256
BATCH_BYTES = 64 * 1024 * 1024
BATCH_DIRS = 32
# File systems whose syncfs writes every file's data and metadata and flushes the disk cache.
SYNCFS_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})

# Temp names: the writer's tag, then 16 hex digits (8 random per process, a counter); O_EXCL
# makes a clash (after 2**32 files) an error, never a shared file.
_NAME_BASE = os.urandom(4).hex()
_names = itertools.count()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class CancelledError(Exception):
    """Raised in a worker when the restore is stopped by a failure elsewhere."""


class Dir:
    """An open directory of the restored tree, and the names in it that a file must not
    replace (links and directories, as listed when it was opened)."""

    __slots__ = ("blocked", "fd", "path", "users")

    def __init__(self, path: Path, fd: int, blocked: frozenset[str]) -> None:
        self.path = path
        self.fd = fd
        self.blocked = blocked
        self.users = 0


class DirHandles:
    """Descriptors of the directories files are restored into, each opened from ``root``
    one component at a time without following symbolic links (missing ones created 0700),
    and swept of stale restore temp files when first opened. At most ``limit`` idle ones
    stay open."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, ...], Dir] = OrderedDict()
        self._root_fd: int | None = None

    def root_fd(self) -> int:
        """The descriptor of ``root`` (created if missing; a link there is followed, it is
        the caller's choice of target)."""
        with self._lock:
            if self._root_fd is None:
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._root_fd = os.open(self.root, _DIR_FLAGS)
            return self._root_fd

    def acquire(self, parts: tuple[str, ...]) -> Dir:
        """The open directory ``root/parts``; give it back with :meth:`release`."""
        with self._lock:
            handle = self._open.get(parts)
            if handle is not None:
                handle.users += 1
                self._open.move_to_end(parts)
                return handle
        opened = self._open_dir(parts)
        surplus: list[Dir] = []
        with self._lock:
            handle = self._open.get(parts)
            if handle is None:
                handle = self._open[parts] = opened
            else:  # another worker opened it meanwhile
                surplus.append(opened)
            handle.users += 1
            idle = [key for key, d in self._open.items() if d.users == 0]
            for key in idle[: max(0, len(self._open) - self.limit)]:
                surplus.append(self._open.pop(key))
        for extra in surplus:
            os.close(extra.fd)
        return handle

    def release(self, handle: Dir) -> None:
        with self._lock:
            handle.users -= 1

    def close(self) -> None:
        with self._lock:
            handles, self._open = list(self._open.values()), OrderedDict()
            root_fd, self._root_fd = self._root_fd, None
        for handle in handles:
            os.close(handle.fd)
        if root_fd is not None:
            os.close(root_fd)

    def _open_dir(self, parts: tuple[str, ...]) -> Dir:
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd())
        path = self.root
        try:
            for part in parts:
                path = path / part
                fd = _step(fd, part, path)
            with os.scandir(fd) as listing:
                blocked = frozenset(
                    e.name for e in listing if e.is_symlink() or e.is_dir(follow_symlinks=False)
                )
        except BaseException:
            os.close(fd)
            raise
        clean_stale_temps(path)
        return Dir(path, fd, blocked)


def _step(parent: int, part: str, path: Path) -> int:
    """Open directory ``part`` below descriptor ``parent`` (creating it 0700 if missing),
    refusing a symbolic link or a non-directory; closes ``parent``."""
    try:
        try:
            return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            with suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=parent)
            return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        if stat.S_ISLNK(os.stat(part, dir_fd=parent, follow_symlinks=False).st_mode):
            raise InvalidInputError(f"refusing to restore through symbolic link {path}") from None
        raise InvalidInputError(f"cannot restore below {path}: it is not a directory") from None
    finally:
        os.close(parent)


def write_temp(
    handle: Dir,
    chunks: Iterable[bytes],
    *,
    mode: int | None,
    mtime_ns: int | None,
    owner: tuple[int, int] | None,
    sync: bool,
) -> tuple[str, int]:
    """Write ``chunks`` to a new temp file in ``handle``'s directory with its owner, mode
    and mtime (set before the fsync, so that it covers them too), fsync'ed if ``sync``.
    Returns its name and size; a failure leaves no temp file."""
    temp = f"{TEMP_PREFIX}{restore_temp_tag()}{_NAME_BASE}{next(_names) & 0xFFFFFFFF:08x}"
    fd = os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=handle.fd)
    try:
        size = 0
        try:
            for piece in chunks:
                done = os.write(fd, piece)
                if done < len(piece):  # rare: a signal, a full disk (the next write raises)
                    view = memoryview(piece)[done:]
                    while view:
                        view = view[os.write(fd, view) :]
                size += len(piece)
            set_file_metadata(fd, owner=owner, mode=mode, mtime_ns=mtime_ns)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard(handle, temp)
        raise
    return temp, size


def discard(handle: Dir, temp: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=handle.fd)


def rename(handle: Dir, temp: str, leaf: str) -> None:
    """Rename ``temp`` over ``leaf`` in ``handle``'s directory; the temp file never outlives
    a failure."""
    try:
        os.replace(temp, leaf, src_dir_fd=handle.fd, dst_dir_fd=handle.fd)
    except BaseException:
        discard(handle, temp)
        raise


@dataclass
class Staged:
    """A written temp file waiting for its rename (holding a use of its directory)."""

    handle: Dir
    temp: str
    leaf: str
    size: int


class FsyncEach:
    """Each file fsync'ed by its writer and renamed at once; directories fsync'ed at the end."""

    sync_files = True

    def __init__(self, dirs: DirHandles) -> None:
        self.dirs = dirs

    def install(self, staged: Staged) -> None:
        """Rename a written (and fsync'ed) temp file; gives back its directory."""
        try:
            rename(staged.handle, staged.temp, staged.leaf)
        finally:
            self.dirs.release(staged.handle)

    def finish(self, pool: Executor, folders: Iterable[Path]) -> None:
        """Make the new names durable: every directory in ``folders`` fsync'ed once."""
        for _ in pool.map(_sync_folder, sorted(folders)):
            pass

    def check(self) -> None:
        return None

    def abort(self) -> None:
        return None


class SyncfsBatches:
    """Temp files queued and committed in batches by a thread of their own: one ``syncfs``,
    then the renames (see the module docstring). Writers wait while two batches' worth of
    files (or directories) are queued or being committed."""

    sync_files = False

    def __init__(self, dirs: DirHandles, syncfs: _Syncfs, cancel: threading.Event) -> None:
        self.dirs = dirs
        self._syncfs = syncfs
        self._fd = dirs.root_fd()  # write-back errors are reported from here on
        self._cancel = cancel
        self._cond = threading.Condition()
        self._queue: list[Staged] = []
        self._bytes = 0
        self._dirs: set[int] = set()
        self._committing = self._committing_dirs = 0  # files and directories of the batch
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="peak-backup-restore-sync", daemon=True
        )
        self._thread.start()

    def install(self, staged: Staged) -> None:
        """Queue a written temp file (the queue now owns its directory use); waits while
        two batches' worth are queued or being committed."""
        with self._cond:
            while self._error is None and (
                len(self._queue) + self._committing >= 2 * BATCH_FILES
                or len(self._dirs) + self._committing_dirs >= 2 * BATCH_DIRS
            ):
                if self._cancel.is_set():
                    break
                self._cond.wait(0.05)
            if self._error is not None or self._cancel.is_set():
                discard(staged.handle, staged.temp)
                self.dirs.release(staged.handle)
                raise CancelledError
            self._queue.append(staged)
            self._bytes += staged.size
            self._dirs.add(id(staged.handle))
            if self._full():
                self._cond.notify_all()

    def finish(self, pool: Executor, folders: Iterable[Path]) -> None:
        """Commit what is queued, then one ``syncfs`` for the names (``folders`` are on the
        same file system: nothing more to do for them)."""
        self._stop()
        self.check()
        self._sync()

    def check(self) -> None:
        """Raise the committer's failure, if it had one."""
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the committer; remove every temp file still queued."""
        with self._cond:
            self._error = self._error or CancelledError()
        self._stop()

    def _full(self) -> bool:
        return (
            len(self._queue) >= BATCH_FILES
            or self._bytes >= BATCH_BYTES
            or len(self._dirs) >= BATCH_DIRS
        )

    def _stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            left, self._queue = self._queue, []
        for staged in left:  # only after a failure: a finished committer drained the queue
            discard(staged.handle, staged.temp)
            self.dirs.release(staged.handle)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._full() or self._closing or self._error is not None):
                    self._cond.wait()
                if self._error is not None or not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._committing, self._committing_dirs = len(batch), len(self._dirs)
                self._bytes = 0
                self._dirs = set()
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the restoring thread
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()
                self._cancel.set()
                return
            with self._cond:
                self._committing = self._committing_dirs = 0
                self._cond.notify_all()

    def _commit(self, batch: list[Staged]) -> None:
        try:
            self._sync()
            while batch:
                staged = batch.pop()
                try:
                    rename(staged.handle, staged.temp, staged.leaf)
                except OSError as exc:
                    raise storage_error("restore", staged.handle.path / staged.leaf, exc) from exc
                finally:
                    self.dirs.release(staged.handle)
        finally:
            for staged in batch:  # not renamed: a failure
                discard(staged.handle, staged.temp)
                self.dirs.release(staged.handle)

    def _sync(self) -> None:
        try:
            self._syncfs(self._fd)
        except OSError as exc:
            raise storage_error("sync", self.dirs.root, exc) from exc


class _Syncfs:
    """``syncfs(2)`` through the C library; :class:`OSError` when it fails."""

    def __init__(self, function: Callable[[int], int]) -> None:
        self._function = function

    def __call__(self, fd: int) -> None:
        if self._function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


def durability(dirs: DirHandles, cancel: threading.Event) -> FsyncEach | SyncfsBatches:
    """:class:`SyncfsBatches` where ``syncfs`` is as safe as ``fsync`` (see the module
    docstring), else :class:`FsyncEach`."""
    syncfs = syncfs_for(dirs.root_fd())
    return FsyncEach(dirs) if syncfs is None else SyncfsBatches(dirs, syncfs, cancel)


def syncfs_for(fd: int) -> _Syncfs | None:
    """``syncfs`` for the file system of directory ``fd``, or ``None`` where it may not make
    files durable or report write-back errors."""
    if not sys.platform.startswith("linux"):
        return None
    version = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    if version < (5, 8) or _file_system(os.fstat(fd).st_dev) not in SYNCFS_FILE_SYSTEMS:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return _Syncfs(function)


def _file_system(device: int) -> str | None:
    """The type of the file system mounted from ``device`` (``/proc/self/mountinfo``)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 2 and parts[2] == wanted and rest:
            return rest.split()[0]
    return None


def _sync_folder(path: Path) -> None:
    try:
        fsync_dir(path)
    except OSError as exc:
        raise storage_error("sync", path, exc) from exc


__all__ = [
    "BATCH_BYTES",
    "BATCH_DIRS",
    "BATCH_FILES",
    "SYNCFS_FILE_SYSTEMS",
    "CancelledError",
    "Dir",
    "DirHandles",
    "FsyncEach",
    "Staged",
    "SyncfsBatches",
    "durability",
    "syncfs_for",
    "write_temp",
]
