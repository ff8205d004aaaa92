"""Safety checks for import archives: every member is checked before anything is extracted.

Absolute names, ``..``, links, devices, FIFOs, duplicate or overlapping names, more than
:data:`MAX_MEMBERS` members or :data:`MAX_IMPORT_BYTES` bytes of content are refused with
:class:`UnsafeArchiveError`; an archive must hold exactly one folder ``<backup_id>/``.

Knows nothing of the metadata or of repositories.
"""

from __future__ import annotations

import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from src.infra.backup.app.export.layout import relative_parts
from src.infra.backup.app.export.local_files import bounded_read, write_new
from src.infra.backup.errors import InvalidExportError, StorageError, UnsafeArchiveError

MAX_MEMBERS = 100_000
"""The most members an import archive may hold."""

MAX_IMPORT_BYTES = 16 * 1024**3
"""The most bytes of file content an import archive may hold."""


def check_member(member: tarfile.TarInfo) -> list[str]:
    """The path components of a safe archive member; anything else is refused."""
    what = f"archive member {member.name!r}"
    parts = relative_parts(member.name, what)
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{what}: links are refused (-> {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{what}: only regular files and directories are allowed")
    if member.isfile() and not parts:
        raise UnsafeArchiveError(f"{what}: a file without a name")
    if member.size < 0:
        raise UnsafeArchiveError(f"{what}: negative size")
    return parts


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidExportError(
            f"cannot import {archive}: not a readable tar archive ({exc})"
        ) from None


def _archive_members(
    tar: tarfile.TarFile, archive: Path
) -> Iterator[tuple[tarfile.TarInfo, list[str]]]:
    try:
        for member in tar:
            yield member, check_member(member)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidExportError(f"cannot import {archive}: damaged archive ({exc})") from None


def scan_archive(archive: Path) -> tuple[str, int]:
    """Check every member (before anything is written); return the one top folder and the
    total size of the files."""
    count = 0
    total = 0
    files: set[str] = set()
    dirs: set[str] = set()
    tops: set[str] = set()
    with _open_archive(archive) as tar:
        for member, parts in _archive_members(tar, archive):
            count += 1
            if count > MAX_MEMBERS:
                raise UnsafeArchiveError(f"{archive}: more than {MAX_MEMBERS} members")
            if not parts:
                continue  # "./"
            key = "/".join(parts)
            if member.isfile():
                total += member.size
                if total > MAX_IMPORT_BYTES:
                    raise UnsafeArchiveError(
                        f"{archive}: more than {MAX_IMPORT_BYTES} bytes of content"
                    )
                if key in files or key in dirs:
                    raise UnsafeArchiveError(f"{archive}: {key!r} appears twice")
                if len(parts) == 1:
                    raise InvalidExportError(
                        f"{archive}: file {key!r} at the top; expected one folder <backup_id>/"
                    )
                files.add(key)
            else:
                if key in files:
                    raise UnsafeArchiveError(f"{archive}: {key!r} is both a file and a folder")
                dirs.add(key)
            tops.add(parts[0])
    for key in files:
        parents = key.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in files:
                raise UnsafeArchiveError(f"{archive}: {key!r} lies below a file")
    if len(tops) != 1:
        raise InvalidExportError(
            f"{archive}: expected exactly one folder <backup_id>/ in the archive, found "
            f"{sorted(tops)[:5] or 'none'}"
        )
    return tops.pop(), total


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a checked archive below ``dest`` (files 0600, dirs 0700); return its folder."""
    top, total = scan_archive(archive)
    try:
        free = shutil.disk_usage(dest).free
    except OSError:
        free = total
    if total > free:
        raise StorageError(
            f"cannot import {archive}: it needs {total} bytes in {dest}, only {free} are free "
            "(set TMPDIR to a larger disk)"
        )
    with _open_archive(archive) as tar:
        for member, parts in _archive_members(tar, archive):
            if not parts:
                continue
            path = dest.joinpath(*parts)
            try:
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                source = tar.extractfile(member)
                if source is None:
                    raise InvalidExportError(f"{archive}: cannot read member {member.name!r}")
                written = write_new(path, bounded_read(source, member.size))
            except OSError as exc:
                raise InvalidExportError(
                    f"cannot extract {member.name!r} from {archive}: {exc.strerror or exc}"
                ) from None
            if written != member.size:
                raise InvalidExportError(f"{archive}: member {member.name!r} is truncated")
    return dest / top


__all__ = ["MAX_IMPORT_BYTES", "MAX_MEMBERS", "check_member", "extract_archive", "scan_archive"]
