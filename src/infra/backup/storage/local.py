"""The default store: a directory on a local filesystem, every write crash-safe.

A write goes to a temporary file in the target directory (``.tmp-*``, never listed), is
fsync'ed, renamed (or hard-linked, for exclusive writes) into place, and the directory is
fsync'ed, so a crash leaves either the old state or the complete new object. Files are created
0600 and directories 0700.

Requests are counted as the S3 requests they stand for (:mod:`.requests`): a read is a GET, a
write a PUT (each object of ``put_many`` one), ``exists``/``stat`` a HEAD, a listing one LIST
per 1,000 keys found, a move (one rename) a COPY and a DELETE, a delete a DELETE.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from src.infra.backup.errors import DiskFullError, ObjectExistsError, StorageError
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.keys import validate_key
from src.infra.backup.storage.requests import (
    COPY,
    DELETE,
    GET,
    HEAD,
    LIST,
    PUT,
    RequestCounter,
    list_pages,
)

TEMP_PREFIX = ".tmp-"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def storage_error(action: str, path: Path | str, exc: OSError) -> StorageError:
    """Turn an ``OSError`` into a :class:`StorageError` that names the problem plainly."""
    if exc.errno == errno.ENOSPC:
        what = "no space left on device (disk full)"
    elif exc.errno == errno.EDQUOT:
        what = "disk quota exceeded"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    elif exc.errno == errno.EROFS:
        what = "read-only filesystem"
    else:
        what = exc.strerror or str(exc)
    message = f"cannot {action} {path}: {what}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(message)
    return StorageError(message)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp_file(
    directory: Path, data: bytes | Iterable[bytes], *, sync: bool = True, tag: str = ""
) -> Path:
    """Write ``data`` (bytes, or an iterable of pieces) to a new temporary file in
    ``directory`` (fsync'ed unless ``sync=False``) and return its path. The name is
    ``.tmp-<tag><16 hex>``; the store's own files have no tag, restores name their writer
    (see ``restore_temp.py``)."""
    temp = directory / f"{TEMP_PREFIX}{tag}{os.urandom(8).hex()}"
    pieces = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    return temp


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class LocalStore(Store):
    """A store rooted at a local directory (created 0700 on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._root_text = str(self.root).rstrip("/") or ""
        self._request_counter = RequestCounter(str(self.root))
        self._count = self._request_counter.add

    @property
    def location(self) -> str:
        return str(self.root)

    # -- paths -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """Map a key to a path below the root, refusing anything that could escape it."""
        return self.root.joinpath(*validate_key(key))

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (and parents) durably, 0700."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                continue
            fsync_dir(path.parent)

    # -- Store API ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        validate_key(key)
        path = f"{self._root_text}/{key.strip('/')}"  # str, not Path: ~900 reads per restore
        self._count(GET)
        try:
            return _read_file(path)
        except FileNotFoundError:
            raise KeyError(key) from None
        except IsADirectoryError:
            raise KeyError(key) from None
        except OSError as exc:
            raise storage_error("read", path, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range {start}+{length} of {key}")
        validate_key(key)
        path = f"{self._root_text}/{key.strip('/')}"
        self._count(GET)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise storage_error("read", path, exc) from exc
        try:
            parts = []
            while length > 0:
                piece = os.pread(fd, length, start)
                if not piece:
                    break  # the object ends here: the caller sees a short result
                parts.append(piece)
                start += len(piece)
                length -= len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise storage_error("read", path, exc) from exc
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        path = self._path(key)
        self._count(PUT)
        try:
            self._ensure_dir(path.parent)
            temp = write_temp_file(path.parent, data, sync=durable)
            try:
                if exclusive:
                    try:
                        os.link(temp, path)
                    except FileExistsError:
                        raise ObjectExistsError(f"{key} already exists") from None
                else:
                    os.replace(temp, path)
            finally:
                _unlink_quietly(temp)
            if durable:
                fsync_dir(path.parent)
        except OSError as exc:
            raise storage_error("write", path, exc) from exc

    def put_versioned(self, key: str, data: bytes, *, exclusive: bool = False) -> str:
        self.put(key, data, exclusive=exclusive)
        try:  # the version of the file just written, as an S3 PUT answers it: no request
            return _object_info(key, self._path(key).stat()).version
        except OSError:  # deleted at once by another process: the write stands either way
            return ""

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        touched: set[Path] = set()
        path: Path | str = self.root
        try:
            for key, data in items:
                path = self._path(key)
                self._count(PUT)
                self._ensure_dir(path.parent)
                temp = write_temp_file(path.parent, data)
                try:
                    os.replace(temp, path)
                except BaseException:
                    _unlink_quietly(temp)
                    raise
                touched.add(path.parent)
            # One directory fsync per directory, after all files are durable.
            for directory in touched:
                path = directory
                fsync_dir(directory)
        except OSError as exc:
            raise storage_error("write", path, exc) from exc

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self._count(HEAD)
        return path.is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        self._count(HEAD)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise storage_error("stat", path, exc) from exc
        return _object_info(key, st)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        base, start = self._listing_root(prefix)
        return iter(self._infos(self._listed(self._scan(base, start, temporary=False))))

    def list(self, prefix: str) -> Iterator[str]:
        base, start = self._listing_root(prefix)  # names only: no stat per file
        return (key for key, _ in self._listed(self._scan(base, start, temporary=False)))

    def list_tokens(self, prefix: str) -> Iterator[tuple[str, str]]:
        # The inode number comes with the directory entry (d_ino): no stat per file.
        base, start = self._listing_root(prefix)
        found = self._listed(self._scan(base, start, temporary=False))
        return iter([(key, _token(entry)) for key, entry in found])

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return iter(self._infos(self._listed(self._scan(self.root, "", temporary=True))))

    def _listed(
        self, found: builtins.list[tuple[str, os.DirEntry[str]]]
    ) -> builtins.list[tuple[str, os.DirEntry[str]]]:
        """Count a listing's LIST pages (as S3 would page it) and pass it on."""
        self._count(LIST, list_pages(len(found)))
        return found

    @staticmethod
    def _infos(
        found: builtins.list[tuple[str, os.DirEntry[str]]],
    ) -> builtins.list[ObjectInfo]:
        infos = []
        for key, entry in found:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished since the directory was read
            infos.append(_object_info(key, st, _token(entry)))
        return infos

    def _listing_root(self, prefix: str) -> tuple[Path, str]:
        if not prefix.strip("/"):
            return self.root, ""
        return self._path(prefix.rstrip("/")), prefix.rstrip("/") + "/"

    def delete_temporary(self, key: str) -> None:
        *folders, name = key.split("/")
        if not name.startswith(TEMP_PREFIX) or "/" in name:
            raise StorageError(f"{key!r} is not a temporary object")
        self._count(DELETE)
        _unlink(self._path("/".join(folders)) / name if folders else self.root / name)

    def _scan(
        self, directory: Path, key_prefix: str, *, temporary: bool
    ) -> builtins.list[tuple[str, os.DirEntry[str]]]:
        """Keys and directory entries of the objects (or only the temporary files) below
        ``directory``; hidden directories are skipped. One tight loop: listing 10,000
        manifests is on the path of ``list_backups``."""
        found: builtins.list[tuple[str, os.DirEntry[str]]] = []
        pending = [(str(directory), key_prefix)]
        while pending:
            folder, prefix = pending.pop()
            try:
                entries = os.scandir(folder)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error("list", Path(folder), exc) from exc
            with entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_file(follow_symlinks=False):
                        # objects: no dot file; temporaries: only TEMP_PREFIX (a dot file)
                        if name.startswith(TEMP_PREFIX) if temporary else name[0] != ".":
                            found.append((prefix + name, entry))
                    elif entry.is_dir(follow_symlinks=False) and name[0] != ".":
                        pending.append((entry.path, f"{prefix}{name}/"))
        return found

    def move(self, source: str, destination: str) -> None:
        src, dst = self._path(source), self._path(destination)
        self._count(COPY)
        self._count(DELETE)
        try:
            self._ensure_dir(dst.parent)
            os.replace(src, dst)
            fsync_dir(dst.parent)
            if src.parent != dst.parent:
                fsync_dir(src.parent)
        except FileNotFoundError:
            if not src.exists():
                raise KeyError(source) from None
            raise
        except OSError as exc:
            raise storage_error("move", src, exc) from exc

    def delete(self, key: str, *, durable: bool = True) -> None:
        path = self._path(key)
        self._count(DELETE)
        if not _unlink(path) or not durable:
            return
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            raise storage_error("sync", path.parent, exc) from exc


def _object_info(key: str, st: os.stat_result, token: str = "") -> ObjectInfo:
    # Objects are replaced by rename, so a new version has a new inode (and mtime).
    version = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
    return ObjectInfo(key, st.st_size, st.st_mtime, version, token)


def _token(entry: os.DirEntry[str]) -> str:
    """A listed file's token: its inode number as the directory entry gives it (which need
    not equal ``st_ino`` on every file system, e.g. overlayfs: tokens only meet tokens)."""
    return f"{entry.inode():x}"


def _read_file(path: str) -> bytes:
    """A whole file: one ``os.read`` of the size ``fstat`` gives, where a file object costs
    twice as much per call (a restore reads tens of thousands of chunk files)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) == size:
            return data
        parts = [data]  # a short read (over 2 GiB) or a file that changed: read to its end
        while chunk := os.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _unlink(path: Path) -> bool:
    """Remove a file; ``False`` if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error("delete", path, exc) from exc
    return True
