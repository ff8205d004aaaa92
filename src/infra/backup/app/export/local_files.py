"""Files of an export folder on the local disk: created without following links or
overwriting, fsync'ed, and read within limits and without following symbolic links.

Knows nothing of the metadata, of archives or of repositories.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from src.infra.backup.app.export.layout import relative_parts
from src.infra.backup.errors import InvalidExportError, UnsafeArchiveError
from src.infra.backup.storage.local import fsync_dir, storage_error

_COPY_BLOCK = 1024 * 1024


def write_new(path: Path, pieces: Iterable[bytes], *, mode: int = 0o600) -> int:
    """Create ``path`` (never over an existing file or link), write, fsync; return its size."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        for piece in pieces:
            view = memoryview(piece)
            size += len(view)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode & 0o7777)
    return size


def fsync_tree(root: Path) -> None:
    """fsync every directory below (and including) ``root``."""
    for directory, _subdirs, _files in os.walk(root):
        fsync_dir(Path(directory))


def bounded_read(handle: io.BufferedIOBase | Any, limit: int) -> Iterator[bytes]:
    """The blocks of ``handle``, at most ``limit`` bytes in all."""
    remaining = limit
    while remaining > 0:
        block = handle.read(min(_COPY_BLOCK, remaining))
        if not block:
            return
        remaining -= len(block)
        yield block


def regular_file(folder: Path, rel: str, what: str) -> Path:
    """``folder/rel`` if it is a regular file reached without symbolic links."""
    parts = relative_parts(rel, what)
    if not parts:
        raise InvalidExportError(f"{what}: empty path")
    current = folder
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            raise InvalidExportError(f"{what}: {rel} is missing from {folder}") from None
        except OSError as exc:
            raise storage_error("read", current, exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchiveError(f"{what}: {current} is a symbolic link; refused")
        last = i == len(parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            raise InvalidExportError(f"{what}: {current} is not a regular file")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise InvalidExportError(f"{what}: {current} is not a folder")
    return current


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The content of ``path``; :class:`InvalidExportError` if it has more than ``limit``
    bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise storage_error("read", path, exc) from exc
    if len(data) > limit:
        raise InvalidExportError(f"{what}: {path} is larger than {limit} bytes")
    return data


__all__ = ["bounded_read", "fsync_tree", "read_limited", "regular_file", "write_new"]
