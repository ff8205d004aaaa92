"""Restoring a backup's entries below a directory, several files at once (the body of
``RecoveryManager.restore_to_directory``).

Order (so nothing is ever written through a link): directories first; then data and file
entries, :data:`FILE_WORKERS` at a time (taken from several directories in turn, so they do
not all wait on one directory's lock); then hard links (after every file, so after their
targets); then symbolic links; directory modes and mtimes last, deepest first, so writing
below a directory does not change them. ``written`` lists the paths in that order, data and
files in entry order whatever order they finished in.

Each file goes through a temp file and a rename, durable before it is renamed, and the
directories are opened without following links (see ``tree_write.py``). Every file and name
is durable before :func:`restore_tree` returns.

Memory: each worker holds one chunk at a time (a network store's reader fetches a bounded
window ahead) and takes the next entry itself when done (no queue of work), and the queue of
written files waiting for their batch is bounded (``tree_write.py``): nothing grows with a
file's size, nor with the tree beyond its manifest. A data entry is a value: it is decoded
whole, one at a time.

Errors: the first failure cancels the rest (files in progress stop at their next chunk,
files not started are not started, files written but not yet renamed are removed), every
thread is waited for, then the error of the earliest entry that failed is raised, of its own
type (:class:`CorruptDataError` for a damaged chunk, :class:`StorageError`, ...). No temp
file is left; files renamed before the failure stay, complete.

Verification: every chunk is checked against its hash and size before a byte of it is
written, so a restore writes exactly the backup's content or fails. ``verify`` adds what the
check of the bytes in memory cannot see: every restored file is read back and hashed against
the manifest once the whole tree is written (several files at once). Read back at once, a
file comes from the page cache, not the disk: this catches a fault in the writing or a
concurrent writer, not a bad disk write; the disk's write errors are the ones ``fsync`` (or
``syncfs``) reports, and fail the restore with or without ``verify``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.infra.backup.errors import CorruptDataError, IntegrityError, InvalidInputError
from src.infra.backup.files.restorer import (
    finish_directory,
    make_directory,
    make_hardlink,
    make_symlink,
    remove_database_companions,
    restore_owner,
    restore_path,
)
from src.infra.backup.files.tree_write import (
    CancelledError,
    DirHandles,
    FsyncEach,
    Staged,
    SyncfsBatches,
    durability,
    write_temp,
)
from src.infra.backup.format.blobs import chunk_id
from src.infra.backup.format.manifest import ChunkRef, Entry
from src.infra.backup.format.values import to_jsonable
from src.infra.backup.repository.reader import ProgressCallback, decode_data_payload
from src.infra.backup.storage.local import storage_error

if TYPE_CHECKING:
    from src.infra.backup.repository.blob_stream import BlobStream
    from src.infra.backup.repository.repository import Repository

# Files written at once. Where a worker rarely waits (a local repository, files made durable
# in syncfs batches: see ``tree_write.py``), about one per core: the work is Python's (the GIL)
# and the kernel's, and more threads only add hand-offs of the GIL and of the CPU (measured:
# 1-2 workers best with a warm page cache, 4 with a cold one). Where each file waits (its own
# fsync, or a network repository's round trips), more of them.
FILE_WORKERS = max(1, min(4, os.cpu_count() or 1))
IO_WORKERS = 8
# Directory descriptors kept open (the least recently used idle one is closed beyond this).
OPEN_DIRS = 64


@dataclass
class TreeRestore:
    """What :func:`restore_tree` wrote: the paths (see the module docstring for the order),
    the bytes of the data and file entries, and whether they were read back and checked."""

    written: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    verified: bool = False


@dataclass
class _Written:
    path: Path
    size: int
    digest: str | None = None  # of a data entry's JSON text, for ``verify``


class _TreeWriter:
    """The file phase of one restore: its directories, how files are made durable, and
    the flag that stops every worker."""

    def __init__(
        self, repository: Repository, root: Path, progress: ProgressCallback | None = None
    ) -> None:
        self.repository = repository
        self.root = root
        self.progress = progress  # called with the bytes of each chunk or value written
        self.local = repository.store.cheap_exists
        # From a network store, a packed repository's file chunks come through one
        # read-ahead for the whole tree (coalesced ranged reads: repository/pack_reader.py).
        self.streamed = not self.local and repository.packed
        self.stream: BlobStream | None = None
        self.slots: dict[int, int] = {}  # entry index -> its place in the stream
        self.cancel = threading.Event()
        self._depth = len(root.parts)
        self.dirs = DirHandles(root, OPEN_DIRS)
        try:
            self.durable: FsyncEach | SyncfsBatches = durability(self.dirs, self.cancel)
        except OSError as exc:  # the target cannot be created or opened
            self.dirs.close()
            raise storage_error("restore", root, exc) from exc
        self._data_lock = threading.Lock()

    def close(self) -> None:
        self.dirs.close()

    def run(
        self, pool: ThreadPoolExecutor, workers: int, entries: Sequence[Entry]
    ) -> list[_Written]:
        """Write ``entries`` (data and files) with ``workers`` threads of ``pool``, each
        taking the next entry when done with one; their results in entry order."""
        results: list[_Written | None] = [None] * len(entries)
        failures: list[tuple[int, BaseException]] = []
        planned = list(_interleaved(entries, workers))
        if self.streamed:  # the files, in the order the workers will take them
            files = [index for index in planned if entries[index].kind == "file"]
            self.slots = {index: slot for slot, index in enumerate(files)}
            self.stream = self.repository.stream_entries([entries[i] for i in files])
        order = iter(planned)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    index = None if self.cancel.is_set() else next(order, None)
                if index is None:
                    return
                try:
                    results[index] = self._restore_one(index, entries[index])
                except CancelledError:
                    return
                except BaseException as exc:  # noqa: BLE001 - raised below, in entry order
                    with lock:
                        failures.append((index, exc))
                    return

        threads = [pool.submit(work) for _ in range(workers)]
        try:
            wait(threads)
        except BaseException:  # interrupted (KeyboardInterrupt): stop the workers first
            self.cancel.set()
            wait(threads)
            raise
        finally:
            if self.stream is not None:
                self.stream.close()
        if failures:
            raise min(failures, key=lambda failure: failure[0])[1]
        self.durable.check()
        done = [r for r in results if r is not None]
        if len(done) != len(entries):  # cannot happen: every entry written or an error raised
            raise CancelledError
        return done

    def _restore_one(self, index: int, entry: Entry) -> _Written:
        try:
            self._check()
            if entry.kind == "data":
                return self._restore_data(entry)
            if entry.origin == "sqlite":
                remove_database_companions(self.root, restore_path(self.root, entry.name))
            slot = self.slots.get(index)
            if slot is not None and self.stream is not None:
                refs = self.stream.refs(slot)
            else:
                refs = self.repository.entry_refs(entry)
            if sum(ref.size for ref in refs) != entry.size:
                raise CorruptDataError(
                    f"entry {entry.name!r}: its chunks hold {sum(r.size for r in refs)} "
                    f"bytes, not {entry.size}"
                )
            chunks = self._chunks(entry, refs, slot)
            if self.progress is not None:
                chunks = _counted(chunks, self.progress)
            owner = restore_owner(entry.uid, entry.gid)
            with closing(chunks):
                return self._write(entry.name, chunks, entry.mode, entry.mtime_ns, owner)
        except BaseException:
            self.cancel.set()
            raise

    def _restore_data(self, entry: Entry) -> _Written:
        with self._data_lock:  # a value is decoded whole: one at a time
            payload = self.repository.read_entry(entry)
            text = _json_text(decode_data_payload("", entry, payload))
            del payload
            written = self._write(f"{entry.name}.json", [text], None, None, None)
        written.digest = chunk_id(text)
        if self.progress is not None:
            self.progress(entry.size)
        return written

    def _check(self) -> None:
        if self.cancel.is_set():
            raise CancelledError

    def _chunks(
        self, entry: Entry, refs: Sequence[ChunkRef], slot: int | None
    ) -> Generator[bytes, None, None]:
        """The verified chunks of a file entry, one at a time, decoded by the writing thread
        (from a network store fetched ahead: by the tree's stream, else by the reader within
        its own bounded window)."""
        if self.local:
            for ref in refs:
                self._check()
                yield self.repository.read_chunk(ref)
        elif slot is not None and self.stream is not None:
            with closing(self.stream.chunks(slot)) as chunks:
                for chunk in chunks:
                    self._check()
                    yield chunk
        else:
            for chunk in self.repository.iter_entry(entry):
                self._check()
                yield chunk

    def _write(
        self,
        name: str,
        chunks: Iterable[bytes],
        mode: int | None,
        mtime_ns: int | None,
        owner: tuple[int, int] | None,
    ) -> _Written:
        """Write entry ``name`` to a temp file and hand it over to be made durable and
        renamed (at once, or with its batch)."""
        destination = restore_path(self.root, name)
        parts = destination.parts[self._depth :]
        try:
            handle = self.dirs.acquire(parts[:-1])
            try:
                if parts[-1] in handle.blocked:
                    raise InvalidInputError(
                        f"cannot restore {destination}: a link or directory is there"
                    )
                temp, size = write_temp(
                    handle,
                    chunks,
                    mode=mode,
                    mtime_ns=mtime_ns,
                    owner=owner,
                    sync=self.durable.sync_files,
                )
            except BaseException:
                self.dirs.release(handle)
                raise
            self.durable.install(Staged(handle, temp, parts[-1], size))
        except OSError as exc:
            raise storage_error("restore", destination, exc) from exc
        return _Written(destination, size)


def _counted(
    chunks: Generator[bytes, None, None], progress: ProgressCallback
) -> Generator[bytes, None, None]:
    """``chunks``, reporting each one's size to ``progress`` as it is taken."""
    with closing(chunks):
        for chunk in chunks:
            yield chunk
            progress(len(chunk))


def _interleaved(entries: Sequence[Entry], lanes: int) -> Iterator[int]:
    """The indices of ``entries``, the files of ``lanes`` directories at a time taken in
    turn: workers creating files in one directory wait on its lock (creating, renaming)."""
    groups: dict[str, deque[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.name.rpartition("/")[0], deque()).append(index)
    waiting = deque(groups.values())
    active: deque[deque[int]] = deque()
    while waiting or active:
        while waiting and len(active) < lanes:
            active.append(waiting.popleft())
        group = active.popleft()
        yield group.popleft()
        if group:
            active.append(group)


def restore_tree(
    repository: Repository,
    entries: Sequence[Entry],
    root: Path,
    *,
    verify: bool,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> TreeRestore:
    """Write ``entries`` below ``root`` (see the module docstring) with ``workers`` threads
    (default: see :data:`FILE_WORKERS`); ``verify`` reads every restored file back and checks
    it (:class:`IntegrityError` if one differs); ``progress`` is called (from worker threads)
    with the bytes of each file chunk and data entry written. The caller has checked every name
    (``restore_path``, ``check_layout``) and that none repeats."""
    outcome = TreeRestore()
    dirs = [e for e in entries if e.kind == "dir"]
    contents = [e for e in entries if e.kind in ("data", "file")]
    for entry in dirs:  # directories are not counted as written files
        make_directory(root, entry.name)
    written = _write_contents(repository, root, contents, dirs, workers, progress)
    files = {e.name: w.path for e, w in zip(contents, written, strict=True) if e.kind == "file"}
    outcome.written = [w.path for w in written]
    outcome.bytes_written = sum(w.size for w in written)
    checks: list[tuple[Path, Entry | str]] = []  # what ``verify`` reads back
    if verify:
        checks = [(w.path, w.digest or e) for e, w in zip(contents, written, strict=True)]
    by_name = {e.name: e for e in contents}
    for entry in entries:
        if entry.kind == "hardlink" and entry.target is not None:
            path = make_hardlink(root, entry.name, files[entry.target])
            if verify:
                checks.append((path, by_name[entry.target]))
            outcome.written.append(path)
    for entry in entries:
        if entry.kind == "symlink" and entry.target is not None:
            owner = restore_owner(entry.uid, entry.gid)
            outcome.written.append(
                make_symlink(root, entry.name, entry.target, mtime_ns=entry.mtime_ns, owner=owner)
            )
    for entry in sorted(dirs, key=lambda e: e.name.count("/"), reverse=True):
        finish_directory(
            restore_path(root, entry.name),
            mode=entry.mode,
            mtime_ns=entry.mtime_ns,
            owner=restore_owner(entry.uid, entry.gid),
        )
    if verify:
        _verify(repository, root, entries, checks, workers or FILE_WORKERS)
        outcome.verified = True
    return outcome


def _write_contents(
    repository: Repository,
    root: Path,
    contents: Sequence[Entry],
    dirs: Sequence[Entry],
    workers: int | None,
    progress: ProgressCallback | None = None,
) -> list[_Written]:
    """The data and file entries, written and durable, with every directory of the tree
    (and those above them, up to ``root``) made durable too."""
    if not contents:
        return []
    writer = _TreeWriter(repository, root, progress)
    if workers is None:
        # Streamed reads wait on nothing per file: the stream fetched ahead.
        waits = writer.durable.sync_files or not (writer.local or writer.streamed)
        workers = IO_WORKERS if waits else FILE_WORKERS
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="peak-backup-restore") as pool:
            written = writer.run(pool, max(1, workers), contents)
            folders = {w.path.parent for w in written}
            folders |= {restore_path(root, e.name) for e in dirs}
            folders |= {p for f in folders for p in f.parents if p == root or root in p.parents}
            writer.durable.finish(pool, folders)
    except BaseException:
        writer.cancel.set()
        writer.durable.abort()
        raise
    finally:
        writer.close()
    return written


def _verify(
    repository: Repository,
    root: Path,
    entries: Sequence[Entry],
    checks: Sequence[tuple[Path, Entry | str]],
    workers: int,
) -> None:
    """Read every restored file back and compare it with the backup (a data entry's JSON
    with the digest of the text written); :class:`IntegrityError` for the first that
    differs, in the order of ``checks``."""

    order = iter(enumerate(checks))  # taken in order: a difference stops the taking
    lock = threading.Lock()
    differ: list[int] = []

    def work() -> None:
        while True:
            with lock:
                item = None if differ else next(order, None)
            if item is None:
                return
            index, (path, expected) = item
            if isinstance(expected, str):
                try:
                    same = chunk_id(path.read_bytes()) == expected
                except OSError:
                    same = False
            else:
                same = repository.file_matches_entry(path, expected)
            if not same:
                with lock:
                    differ.append(index)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="peak-backup-verify") as pool:
        for future in [pool.submit(work) for _ in range(max(1, workers))]:
            future.result()
    if differ:
        raise IntegrityError(f"restored {checks[min(differ)][0]} differs from the backup")
    for entry in entries:
        if entry.kind == "symlink":
            path = restore_path(root, entry.name)
            if not path.is_symlink() or os.readlink(path) != entry.target:
                raise IntegrityError(f"restored link {path} differs from the backup")


def _json_text(value: Any) -> bytes:
    return (json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n").encode()


__all__ = ["FILE_WORKERS", "IO_WORKERS", "TreeRestore", "restore_tree"]
