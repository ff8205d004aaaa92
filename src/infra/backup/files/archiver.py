"""The archiver: turns what the sources selected into backup entries, reading live data safely.

The repository only chunks and stores bytes (see :class:`~repository.SnapshotWriter`); this
module decides what the bytes are and when they can be trusted:

- **Regular files** are read between two ``stat`` calls (size, mtime, ctime, inode, also of
  the path, so a file renamed over it is seen). If anything changed, the file is read again
  after a short back-off, up to :data:`READ_ATTEMPTS` times; a file that keeps changing is
  stored as last read, marked ``changed``, with a warning. Reading starts only once the file
  system's (coarse) clock has left the tick of the file's mtime, so a write during the read
  always shows in its stat. A file modified within the last second is read twice, the second
  time once it has been left alone for :data:`QUIET_NS`, and kept only if both reads agree
  (on file systems with coarse timestamps a write may not show in the stat). A writer that
  stops in the middle of rewriting a file in place, for longer than that and both reads, leaves
  a torn file *at rest*, and that is what is stored: write such files by rename, or keep the
  data in SQLite. A file that vanished or cannot be read is left out
  with a warning; it never fails the backup.
- **SQLite databases** (the file's header says so) are copied through SQLite's online backup
  API from their own connection (``sqlite_source.py``): whole committed transactions only, and
  the copy passes ``quick_check`` before it is stored. Their ``-wal``, ``-shm`` and
  ``-journal`` companions are not stored. A database that cannot be opened is stored as raw
  bytes with a warning that says why.
- **Symbolic links** are stored as links (their text), never followed; **directories** with
  their mode and mtime (empty ones too); **hard links** once, the other names pointing to the
  first; owner uid/gid for all of them. Special files were already left out, with a warning,
  when the sources were listed (``sources.scan_sources``).
- **Command sources** stream a command's standard output into one entry.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from src.infra.backup.files.commands import open_command_source
from src.infra.backup.files.settings import CommandSourceSettings, SqliteOptions
from src.infra.backup.files.sources import SourceItem
from src.infra.backup.format.chunking import split_fixed
from src.infra.backup.format.manifest import ChunkRef, Entry
from src.infra.backup.repository.snapshot_writer import EntrySource, SnapshotWriter

log = logging.getLogger(__name__)

READ_ATTEMPTS = 4
RETRY_BACKOFF_SECONDS = (0.02, 0.1, 0.3)
# A file modified this recently may change again without its stat changing (timestamps are
# only as fine as the kernel's clock tick, and some file systems are coarser still).
RACY_WINDOW_NS = 1_000_000_000
# A racy file is read the second time only once it has been left alone this long: a writer
# descheduled in the middle of a rewrite for a moment is not taken for one that is done.
QUIET_NS = 100_000_000
# File timestamps come from the kernel's coarse clock: a write within the tick of the last one
# leaves the mtime unchanged. Before a file is read, wait (briefly) until that tick is over.
TIMESTAMP_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", time.CLOCK_REALTIME)
TICK_WAIT_SECONDS = 0.002
MAX_TICK_WAITS = 25
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# Database copies are cut at fixed offsets aligned with pages of every SQLite page size, so a
# changed page changes only its own chunk (content-defined cuts shift around a change). The
# size is chosen by measurement (docs/PERFORMANCE.md): smaller chunks save bytes per change
# but put more chunk references into every manifest.
DATABASE_BLOCK = 16 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def _owner(st: os.stat_result) -> dict[str, object]:
    return {"uid": st.st_uid, "gid": st.st_gid}


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        a.st_size == b.st_size
        and a.st_mtime_ns == b.st_mtime_ns
        and a.st_ctime_ns == b.st_ctime_ns
        and a.st_ino == b.st_ino
        and a.st_dev == b.st_dev
    )


def _unchanged(previous: Entry, st: os.stat_result) -> bool:
    """Whether a file's stat equals what the previous backup recorded (its content may then
    be taken from that backup without reading the file)."""
    return (
        previous.origin is None
        and not previous.changed
        and previous.size == st.st_size
        and previous.mtime_ns == st.st_mtime_ns
        and previous.ctime_ns == st.st_ctime_ns
        and previous.ino == st.st_ino
    )


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


@dataclass
class FileInput:
    """A regular file to store under ``name``, read from ``path`` (see the module docstring
    for how a file that changes while it is read is handled)."""

    name: str
    path: Path
    sqlite: SqliteOptions | None = None
    stored: bool = field(default=False, init=False)

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Read and store the file; ``None`` (with a warning) if it vanished or is unreadable."""
        previous = writer.previous(self.name)
        last: list[ChunkRef] | None = None
        refs: list[ChunkRef] = []
        before: os.stat_result | None = None
        unstable = 0
        for attempt in range(READ_ATTEMPTS):
            if attempt and last is None:  # it changed: give the writer time to finish
                time.sleep(RETRY_BACKOFF_SECONDS[min(unstable - 1, len(RETRY_BACKOFF_SECONDS) - 1)])
            elif attempt and before is not None:  # confirming a racy read: once it is quiet
                time.sleep(max(0, before.st_mtime_ns + QUIET_NS - time.time_ns()) / 1e9)
            try:
                fd = os.open(self.path, _OPEN_FLAGS)
            except OSError as exc:
                writer.warn(_unreadable(self.path, exc))
                return None
            with open(fd, "rb", closefd=True) as handle:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    writer.warn(f"{self.path}: not backed up: it is no longer a regular file")
                    return None
                if attempt == 0:
                    if previous is not None and _unchanged(previous, before):
                        reused = writer.reuse(previous)
                        if reused is not None:
                            return self._entry(writer, before, reused)
                    if self.sqlite is not None and self.sqlite.detect:
                        head = handle.read(len(SQLITE_HEADER))
                        handle.seek(0)
                        if head == SQLITE_HEADER:
                            entry = DatabaseInput(self.name, self.path, self.sqlite).store(writer)
                            self.stored = entry is not None and entry.kind == "file"
                            return entry
                before = after_timestamp_tick(fd, before)
                started = time.time_ns()
                refs = writer.store_stream(handle, before.st_size)
                after = os.fstat(fd)
            try:
                now = os.lstat(self.path)
            except OSError:
                now = None
            size = sum(ref.size for ref in refs)
            stable = (
                _same_stat(before, after)
                and now is not None
                and _same_stat(before, now)
                and size == before.st_size
            )
            racy = before.st_mtime_ns >= started - RACY_WINDOW_NS
            if stable and (not racy or refs == last):
                return self._entry(writer, before, refs, racy=racy)
            last = refs if stable else None
            unstable += not stable
        assert before is not None
        writer.warn(
            f"{self.path}: changed while it was read ({READ_ATTEMPTS} attempts); stored the "
            "last copy, marked changed: it may mix two versions"
        )
        return self._entry(writer, before, refs, changed=True)

    def _entry(
        self,
        writer: SnapshotWriter,
        st: os.stat_result,
        refs: list[ChunkRef],
        *,
        changed: bool = False,
        racy: bool = False,
    ) -> Entry:
        # A racy or changed file keeps no ctime: the next backup then never trusts its stat
        # and reads it again (its content may have changed without its stat changing).
        self.stored = True
        return _file_entry(
            writer,
            self.name,
            st,
            refs,
            ctime_ns=None if (changed or racy) else st.st_ctime_ns,
            changed=changed,
        )


def after_timestamp_tick(fd: int, st: os.stat_result) -> os.stat_result:
    """``st`` again once the file system's clock has left the tick of the file's mtime, so
    that any write from now on changes the mtime (bounded: a file written without pause, or
    dated in the future, is read anyway; its stat then changes, or its reads differ)."""
    for _ in range(MAX_TICK_WAITS):
        if st.st_mtime_ns < time.clock_gettime_ns(TIMESTAMP_CLOCK):
            break
        time.sleep(TICK_WAIT_SECONDS)
        st = os.fstat(fd)
    return st


def _file_entry(
    writer: SnapshotWriter, name: str, st: os.stat_result, refs: list[ChunkRef], **meta: object
) -> Entry:
    """A file entry for stored ``refs``, with the file's mode, mtime, inode and owner."""
    return writer.entry(
        name,
        "file",
        sum(ref.size for ref in refs),
        refs,
        path=name,
        mode=st.st_mode & 0o7777,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        **_owner(st),
        **meta,
    )


def _unreadable(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path}: not backed up: it vanished before it could be read"
    if exc.errno == errno.ELOOP:
        return f"{path}: not backed up: it was replaced by a symbolic link while listed"
    return f"{path}: not backed up: cannot read it ({exc.strerror})"


@dataclass
class DatabaseInput:
    """A SQLite database, captured through SQLite's online backup API (a consistent copy of
    whole committed transactions, checked before it is stored); raw bytes with a warning if
    SQLite cannot open it."""

    name: str
    path: Path
    sqlite: SqliteOptions = field(default_factory=SqliteOptions)

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Capture and store the database (see the class docstring)."""
        from src.infra.backup.files.sqlite_source import SqliteCaptureError, capture_sqlite

        try:
            st = os.lstat(self.path)
            with (
                capture_sqlite(self.path, integrity=self.sqlite.check) as capture,
                open(capture.path, "rb") as handle,
            ):
                refs = writer.store_chunks(split_fixed(handle, capture.size, DATABASE_BLOCK))
        except FileNotFoundError:
            writer.warn(f"{self.path}: not backed up: it vanished before it could be read")
            return None
        except SqliteCaptureError as exc:
            writer.warn(
                f"{self.path}: a SQLite database that could not be copied through SQLite "
                f"({exc}); stored as raw bytes, which may not be consistent"
            )
            raw = FileInput(self.name, self.path, sqlite=None)
            return raw.store(writer)
        except OSError as exc:
            writer.warn(_unreadable(self.path, exc))
            return None
        return _file_entry(writer, self.name, st, refs, origin="sqlite")


def _attributes_entry(
    writer: SnapshotWriter,
    name: str,
    kind: Literal["symlink", "dir", "hardlink"],
    st: os.stat_result,
    **meta: object,
) -> Entry:
    """An entry without content of its own: a link, a directory, a hard link."""
    return writer.entry(name, kind, 0, [], path=name, mtime_ns=st.st_mtime_ns, **_owner(st), **meta)


@dataclass(frozen=True)
class SymlinkInput:
    """A symbolic link, stored as its text (never followed)."""

    name: str
    path: Path

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Store the link's text, mtime and owner."""
        try:
            st = os.lstat(self.path)
            if not stat.S_ISLNK(st.st_mode):
                writer.warn(f"{self.path}: not backed up: it is no longer a symbolic link")
                return None
            target = os.readlink(self.path)
        except OSError as exc:
            writer.warn(_unreadable(self.path, exc))
            return None
        return _attributes_entry(writer, self.name, "symlink", st, target=target)


@dataclass(frozen=True)
class DirInput:
    """A directory: its mode, mtime and owner (what is below it are entries of their own)."""

    name: str
    path: Path
    st: os.stat_result

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Record the directory as it was listed."""
        return _attributes_entry(writer, self.name, "dir", self.st, mode=self.st.st_mode & 0o7777)


@dataclass(frozen=True)
class HardlinkInput:
    """A further name of a file already stored in this backup under ``primary.name``."""

    name: str
    path: Path
    st: os.stat_result
    primary: FileInput
    sqlite: SqliteOptions | None = None

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """A link to the primary entry, or the file itself if the primary was not stored or
        this name is no longer the same file."""
        try:
            now = os.lstat(self.path)
        except OSError as exc:
            writer.warn(_unreadable(self.path, exc))
            return None
        if not self.primary.stored or (now.st_dev, now.st_ino) != (self.st.st_dev, self.st.st_ino):
            return FileInput(self.name, self.path, sqlite=self.sqlite).store(writer)
        return _attributes_entry(
            writer, self.name, "hardlink", now, target=self.primary.name, mode=now.st_mode & 0o7777
        )


def entry_sources(
    items: Iterable[SourceItem], *, sqlite: SqliteOptions | None = None
) -> list[EntrySource]:
    """The entry sources for listed items: hard links grouped (the first name by sort order
    holds the content), SQLite companions (``-wal``, ``-shm``, ``-journal`` of a database in
    the list) left out."""
    listed = list(items)
    names = {item.name for item in listed}
    companions: set[str] = set()
    if sqlite is not None and sqlite.detect:
        for item in listed:
            for suffix in SQLITE_COMPANIONS:
                base = item.name[: -len(suffix)]
                if (
                    item.name.endswith(suffix)
                    and base in names
                    and _is_sqlite(item.path.with_name(item.path.name[: -len(suffix)]))
                ):
                    companions.add(item.name)
    sources: list[EntrySource] = []
    primaries: dict[tuple[int, int], FileInput] = {}
    for item in listed:
        if item.name in companions:
            log.info("not storing %s separately: it belongs to a database", item.path)
            continue
        if item.kind == "dir":
            sources.append(DirInput(item.name, item.path, item.st))
        elif item.kind == "symlink":
            sources.append(SymlinkInput(item.name, item.path))
        elif item.kind == "file":
            key = (item.st.st_dev, item.st.st_ino)
            primary = primaries.get(key) if item.st.st_nlink > 1 else None
            if primary is not None:
                sources.append(HardlinkInput(item.name, item.path, item.st, primary, sqlite))
                continue
            file_input = FileInput(item.name, item.path, sqlite=sqlite)
            if item.st.st_nlink > 1:
                primaries[key] = file_input
            sources.append(file_input)
    return sources


@dataclass(frozen=True)
class RecordedEntry:
    """A directory or symbolic link known by its attributes alone (from an export being
    imported): nothing is read from disk."""

    name: str
    kind: Literal["symlink", "dir"]
    target: str | None = None
    mode: int | None = None
    mtime_ns: int | None = None

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """The entry, as described."""
        return writer.entry(
            self.name,
            self.kind,
            0,
            [],
            path=self.name,
            target=self.target,
            mode=self.mode,
            mtime_ns=self.mtime_ns,
        )


@dataclass(frozen=True)
class CommandInput:
    """A command whose standard output is stored as one entry, streamed (no temporary
    file). A command that fails (exit status, timeout, not found) fails the backup, and
    nothing of it is committed."""

    settings: CommandSourceSettings
    cwd: Path

    @property
    def name(self) -> str:
        """The entry's path in the backup."""
        return self.settings.name

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Run the command and store what it writes."""
        with open_command_source(self.settings, self.cwd) as stream:
            refs = writer.store_stream(stream, 1 << 62)  # unknown length: content-defined cuts
        return writer.entry(
            self.name,
            "file",
            sum(ref.size for ref in refs),
            refs,
            path=self.name,
            mode=0o600,
            mtime_ns=time.time_ns(),
            origin="command",
        )


def command_inputs(commands: Iterable[CommandSourceSettings], cwd: Path) -> list[EntrySource]:
    """Entry sources for the configured command sources (``[[backup.command_sources]]``),
    run in ``cwd``."""
    return [CommandInput(settings, cwd) for settings in commands]
