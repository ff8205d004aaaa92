"""Export a backup as plain files, and import such an export (or a seed-style folder).

Export layout (``DIR/<backup_id>/``, or the same tree as one ``DIR/<backup_id>.tar.gz``)::

    metadata.json              the seed's metadata fields plus what an import needs
    <key>.json                 one readable JSON document per data entry (``.json.gz`` with gzip)
    .<key>.msgpack             the entry's exact typed encoding (hidden sidecar, lossless)
    <relative/path>            each file source, with its mode and mtime
    _root/<absolute/path>      file sources that lay outside the base directory

``metadata.json`` holds ``backup_id``, ``backup_type``, ``timestamp`` (naive local time, as
the seed writes it), ``size_bytes`` (bytes of the exported entry files), ``compressed`` (whether
the data files are gzip'ed), ``files`` (the exported entry files), ``tags``, ``note``,
``host``; then ``export_format`` (1), ``timestamp_utc``, ``base_dir``, ``encoding``
(``{"<key>": "json"}``), ``sidecars`` (``{"<key>": ".<key>.msgpack"}``) and ``entries`` (each
entry's ``name``, ``kind``, ``file``, ``size``, and ``mode`` / ``mtime_ns`` for files).

Import reads such an export (a folder or an archive) or a folder of the seed-style
implementation (``metadata.json`` plus ``<key>.json[.gz]``, see ``bench/naive.py``) and commits
it as a backup with the same id and time. Data entries come from the sidecar when there is one
(exact types), else from the JSON (plain JSON types). An archive is checked completely before
anything is extracted: absolute names, ``..``, links, devices and oversized contents are refused.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import msgspec

from src.infra.backup.app.manager import BackupInfo, BackupManager
from src.infra.backup.errors import (
    BackupError,
    CorruptDataError,
    FormatVersionError,
    InvalidInputError,
    ObjectExistsError,
    StorageError,
)
from src.infra.backup.files.archiver import FileInput, RecordedEntry
from src.infra.backup.format.ids import (
    is_id_of_type,
    is_valid_backup_id,
    note_problem,
    split_backup_id,
    tag_problem,
    validate_backup_type,
    validate_entry_name,
)
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.format.values import ENCODING_NAME, decode_value, encode_value, to_jsonable
from src.infra.backup.repository.repository import (
    DataInput,
    EntrySource,
    Repository,
    decode_data_payload,
)
from src.infra.backup.storage.local import fsync_dir, storage_error

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
METADATA_NAME = "metadata.json"
ABSOLUTE_PREFIX = "_root"
ExportFormat = Literal["dir", "tar.gz"]
EXPORT_FORMATS: tuple[str, ...] = ("dir", "tar.gz")

# Limits for what an import reads (an archive or folder may come from anywhere).
MAX_MEMBERS = 100_000
MAX_IMPORT_BYTES = 16 * 1024**3
MAX_METADATA_BYTES = 16 * 1024**2
MAX_DATA_BYTES = 1024**3

_COPY_BLOCK = 1024 * 1024


class BackupExistsError(BackupError):
    """An import found a backup with the same id in the repository."""


class UnsafeArchiveError(BackupError):
    """An archive holds members that could write outside the target (tar-slip), links,
    devices, or more than the size limits allow. Nothing was extracted."""


class InvalidExportError(BackupError):
    """A folder or archive is not a readable export (metadata or entry files are wrong)."""


Target = BackupManager | Repository


# --------------------------------------------------------------------------- helpers


def _repository(target: Target, *, create: bool) -> Repository:
    if isinstance(target, Repository):
        return target
    return target.open_repository(create=create)


def export_path(name: str) -> str:
    """Where entry ``name`` lies inside an export (``/``-separated, relative): file sources
    under their relative paths, absolute ones below ``_root/``. Unsafe names are refused."""
    if not name or "\0" in name or "\\" in name:
        raise InvalidInputError(f"refusing to export entry with unsafe name {name!r}")
    pure = PurePosixPath(name)
    parts: tuple[str, ...] = pure.parts
    if pure.is_absolute():
        parts = (ABSOLUTE_PREFIX, *parts[1:])
    if len(parts) < 1 or any(part in ("", ".", "..") for part in parts):
        raise InvalidInputError(f"refusing to export entry with unsafe name {name!r}")
    return "/".join(parts)


def _relative_parts(rel: str, what: str) -> list[str]:
    """The components of a relative ``/``-separated path from an export; refuses absolute
    paths, ``..``, backslashes, NUL and drive letters."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise UnsafeArchiveError(f"{what}: unsafe path {rel!r}")
    if rel.startswith("/") or PureWindowsPath(rel).drive:
        raise UnsafeArchiveError(f"{what}: absolute path {rel!r} refused")
    parts = [part for part in rel.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what}: path {rel!r} with '..' refused")
    return parts


def _json_text(value: object) -> bytes:
    return (json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n").encode()


def _write_new(path: Path, pieces: Iterable[bytes], *, mode: int = 0o600) -> int:
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


def _fsync_tree(root: Path) -> None:
    for directory, _subdirs, _files in os.walk(root):
        fsync_dir(Path(directory))


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class _Planned:
    entry: Entry
    file: str
    sidecar: str | None = None


def _plan_export(manifest: Manifest, use_gzip: bool) -> list[_Planned]:
    """Where each entry goes; refuses two entries (or one and ``metadata.json``) on one path."""
    planned: list[_Planned] = []
    taken: dict[str, str] = {METADATA_NAME: "metadata.json"}
    for entry in manifest.entries:
        if entry.kind == "data":
            item = _Planned(
                entry,
                f"{entry.name}.json" + (".gz" if use_gzip else ""),
                f".{entry.name}.msgpack",
            )
        else:
            item = _Planned(entry, export_path(entry.name))
        if entry.kind in ("dir", "symlink"):
            # a directory holds its entries; a link is only described in metadata.json
            if item.file in taken:
                raise BackupError(
                    f"cannot export backup {manifest.backup_id}: entry {entry.name!r} and "
                    f"{taken[item.file]!r} would both be written to {item.file}"
                )
            planned.append(item)
            continue
        for path in (item.file, item.sidecar):
            if path is None:
                continue
            # a file and a directory of the same name collide too
            clash = [p for p in taken if p == path or p.startswith(path + "/")]
            clash += [p for p in taken if path.startswith(p + "/")]
            if clash:
                raise BackupError(
                    f"cannot export backup {manifest.backup_id}: entry {entry.name!r} and "
                    f"{taken[clash[0]]!r} would both be written to {path}"
                )
            taken[path] = entry.name
        planned.append(item)
    return planned


def _write_export(
    repository: Repository, manifest: Manifest, plan: list[_Planned], folder: Path, use_gzip: bool
) -> None:
    info = BackupInfo.from_manifest(manifest)
    files: list[str] = []
    entries: list[dict[str, Any]] = []
    encoding: dict[str, str] = {}
    sidecars: dict[str, str] = {}
    size_bytes = 0
    by_name = {e.name: e for e in manifest.entries}
    dirs: list[tuple[Path, Entry]] = []
    for item in plan:
        entry = item.entry
        if entry.kind == "dir":
            path = folder.joinpath(*item.file.split("/"))
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            dirs.append((path, entry))
            entries.append(
                {
                    "name": entry.name,
                    "kind": "dir",
                    "file": item.file,
                    "mode": entry.mode,
                    "mtime_ns": entry.mtime_ns,
                }
            )
            continue
        if entry.kind == "symlink":
            entries.append(
                {
                    "name": entry.name,
                    "kind": "symlink",
                    "file": item.file,
                    "target": entry.target,
                    "mtime_ns": entry.mtime_ns,
                }
            )
            continue
        if entry.kind == "hardlink":  # exported as a copy of the file it links to
            linked = by_name[entry.target or ""]
            entry = msgspec.structs.replace(
                linked, name=entry.name, path=entry.name, mode=entry.mode, mtime_ns=entry.mtime_ns
            )
        if entry.kind == "data":
            payload = repository.read_entry(entry)
            text = _json_text(decode_data_payload(manifest.backup_id, entry, payload))
            content = gzip_module.compress(text, compresslevel=6, mtime=0) if use_gzip else text
            size = _write_new(folder / item.file, [content])
            assert item.sidecar is not None
            _write_new(folder / item.sidecar, [payload])
            encoding[entry.name] = "json"
            sidecars[entry.name] = item.sidecar
            entries.append(
                {
                    "name": entry.name,
                    "kind": "data",
                    "file": item.file,
                    "encoding": "json",
                    "sidecar": item.sidecar,
                    "sidecar_encoding": ENCODING_NAME,
                    "size": size,
                }
            )
        else:
            path = folder.joinpath(*item.file.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            size = _write_new(
                path, repository.iter_entry(entry), mode=entry.mode if entry.mode else 0o600
            )
            if size != entry.size:
                raise CorruptDataError(
                    f"backup {manifest.backup_id}, entry {entry.name!r}: {size} bytes, "
                    f"not {entry.size}"
                )
            if entry.mtime_ns is not None:
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            entries.append(
                {
                    "name": entry.name,
                    "kind": "file",
                    "file": item.file,
                    "size": size,
                    "mode": entry.mode,
                    "mtime_ns": entry.mtime_ns,
                }
            )
        files.append(item.file)
        size_bytes += size
    for path, entry in sorted(dirs, key=lambda d: len(d[0].parts), reverse=True):
        if entry.mode is not None:
            os.chmod(path, (entry.mode & 0o7777) | 0o700)  # the export stays writable to us
        if entry.mtime_ns is not None:
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    metadata = {
        "backup_id": info.backup_id,
        "backup_type": info.backup_type,
        "timestamp": info.timestamp.isoformat(),
        "size_bytes": size_bytes,
        "compressed": use_gzip,
        "files": files,
        "tags": info.tags,
        "note": info.note,
        "host": info.host,
        "export_format": EXPORT_FORMAT,
        "timestamp_utc": info.timestamp_utc.isoformat(),
        "base_dir": manifest.base_dir,
        "encoding": encoding,
        "sidecars": sidecars,
        "entries": entries,
    }
    document = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    _write_new(folder / METADATA_NAME, [document.encode()])
    _fsync_tree(folder)


def _anonymize(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def export_backup(
    manager: Target,
    backup_id: str,
    to_dir: str | os.PathLike[str],
    *,
    fmt: ExportFormat = "dir",
    gzip: bool = False,
) -> Path:
    """Write backup ``backup_id`` as plain files to ``to_dir/<backup_id>/`` (``fmt="dir"``)
    or as one archive ``to_dir/<backup_id>.tar.gz`` (``fmt="tar.gz"``); return that path.

    Data entries become readable ``<key>.json`` (``.json.gz`` with ``gzip=True``) plus a hidden
    lossless sidecar ``.<key>.msgpack``; file sources keep their relative paths, mode and mtime;
    ``metadata.json`` describes it all (see the module docstring). Every chunk is verified.
    The export is assembled in a hidden temporary folder in ``to_dir`` and appears complete or
    not at all; an existing target is never overwritten. ``manager`` may also be a
    :class:`Repository`.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}: expected dir or tar.gz")
    repository = _repository(manager, create=False)
    manifest = repository.read_manifest(backup_id)
    plan = _plan_export(manifest, gzip)
    out = Path(to_dir).absolute()
    final = out / (backup_id if fmt == "dir" else f"{backup_id}.tar.gz")
    if final.exists() or final.is_symlink():
        raise BackupError(f"cannot export to {final}: it already exists")
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out))
    except OSError as exc:
        raise storage_error("create export folder in", out, exc) from exc
    try:
        folder = staging / backup_id
        folder.mkdir(mode=0o700)
        _write_export(repository, manifest, plan, folder, gzip)
        if fmt == "dir":
            if final.exists() or final.is_symlink():
                raise BackupError(f"cannot export to {final}: it already exists")
            os.rename(folder, final)
        else:
            archive = staging / "export.tar.gz"
            with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
                tar.add(folder, arcname=backup_id, filter=_anonymize)
            with open(archive, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(archive, 0o600)
            try:
                os.link(archive, final)  # never over an existing file
            except FileExistsError:
                raise BackupError(f"cannot export to {final}: it already exists") from None
        fsync_dir(out)
    except OSError as exc:
        raise storage_error("export to", final, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("backup %s exported to %s", backup_id, final, extra={"backup_id": backup_id})
    return final


# --------------------------------------------------------------------------- import: archives


def _check_member(member: tarfile.TarInfo) -> list[str]:
    """The path components of a safe archive member; anything else is refused."""
    what = f"archive member {member.name!r}"
    parts = _relative_parts(member.name, what)
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
            yield member, _check_member(member)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidExportError(f"cannot import {archive}: damaged archive ({exc})") from None


def _scan_archive(archive: Path) -> tuple[str, int]:
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


def _extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a checked archive below ``dest`` (files 0600, dirs 0700); return its folder."""
    top, total = _scan_archive(archive)
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
                written = _write_new(path, _bounded_read(source, member.size))
            except OSError as exc:
                raise InvalidExportError(
                    f"cannot extract {member.name!r} from {archive}: {exc.strerror or exc}"
                ) from None
            if written != member.size:
                raise InvalidExportError(f"{archive}: member {member.name!r} is truncated")
    return dest / top


def _bounded_read(handle: io.BufferedIOBase | Any, limit: int) -> Iterator[bytes]:
    remaining = limit
    while remaining > 0:
        block = handle.read(min(_COPY_BLOCK, remaining))
        if not block:
            return
        remaining -= len(block)
        yield block


# --------------------------------------------------------------------------- import: folders


@dataclass
class _DataItem:
    name: str
    file: str
    sidecar: str | None = None


@dataclass
class _FileItem:
    name: str
    file: str
    mode: int | None
    mtime_ns: int | None


def _find_folder(source: Path) -> Path:
    """The export folder: ``source`` itself if it holds ``metadata.json``, else its only
    subfolder that does."""
    if (source / METADATA_NAME).exists():
        return source
    found = sorted(
        child
        for child in source.iterdir()
        if child.is_dir() and not child.is_symlink() and (child / METADATA_NAME).is_file()
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidExportError(
            f"cannot import {source}: no {METADATA_NAME} in it (give the backup's folder, "
            "e.g. DIR/<backup_id>)"
        )
    names = ", ".join(p.name for p in found[:5])
    raise InvalidExportError(
        f"cannot import {source}: it holds several backups ({names}); give one of them"
    )


def _regular_file(folder: Path, rel: str, what: str) -> Path:
    """``folder/rel`` if it is a regular file reached without symbolic links."""
    parts = _relative_parts(rel, what)
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


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise storage_error("read", path, exc) from exc
    if len(data) > limit:
        raise InvalidExportError(f"{what}: {path} is larger than {limit} bytes")
    return data


def _read_json_file(path: Path, what: str) -> object:
    raw = _read_limited(path, MAX_DATA_BYTES, what)
    if path.name.endswith(".gz"):
        try:
            with gzip_module.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
                raw = unzipped.read(MAX_DATA_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidExportError(f"{what}: {path} is not valid gzip ({exc})") from None
        if len(raw) > MAX_DATA_BYTES:
            raise InvalidExportError(f"{what}: {path} unpacks to more than {MAX_DATA_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidExportError(f"{what}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidExportError(f"{what}: {path} is nested too deeply") from None


def _read_metadata(folder: Path) -> dict[str, Any]:
    path = _regular_file(folder, METADATA_NAME, f"import of {folder}")
    raw = _read_limited(path, MAX_METADATA_BYTES, f"import of {folder}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidExportError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InvalidExportError(f"{path}: expected a JSON object")
    return meta


def _check_identity(meta: dict[str, Any], where: str) -> tuple[str, str]:
    backup_id = meta.get("backup_id")
    if not isinstance(backup_id, str) or not is_valid_backup_id(backup_id):
        raise InvalidExportError(f"{where}: invalid backup_id {backup_id!r}")
    parts = split_backup_id(backup_id)
    if parts is None:
        raise InvalidExportError(
            f"{where}: backup_id {backup_id!r} does not have the shape <type>_YYYYmmdd_HHMMSS"
        )
    try:
        backup_type = validate_backup_type(meta.get("backup_type", parts[0]))
    except InvalidInputError as exc:
        raise InvalidExportError(f"{where}: {exc}") from None
    if not is_id_of_type(backup_id, backup_type):
        raise InvalidExportError(
            f"{where}: backup_id {backup_id!r} does not belong to type {backup_type!r}"
        )
    return backup_id, backup_type


def _check_time(meta: dict[str, Any], backup_id: str, where: str) -> datetime:
    """The backup's instant: ``timestamp_utc``, else ``timestamp`` (naive = local time, as the
    seed writes it), else the time in the id."""
    moment: datetime | None = None
    for key in ("timestamp_utc", "timestamp"):
        text = meta.get(key)
        if text is None:
            continue
        if not isinstance(text, str):
            raise InvalidExportError(f"{where}: {key} must be ISO 8601 text, not {text!r}")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidExportError(f"{where}: {key} {text!r} is not ISO 8601") from None
        break
    if moment is None:
        parts = split_backup_id(backup_id)
        assert parts is not None
        moment = datetime.strptime(parts[1], "%Y%m%d_%H%M%S")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.astimezone()  # naive: local time
    moment = moment.astimezone(timezone.utc)
    if not 1970 <= moment.year <= 9000:
        raise InvalidExportError(f"{where}: implausible timestamp {moment.isoformat()}")
    return moment


def _check_extras(
    meta: dict[str, Any], where: str
) -> tuple[dict[str, str], str | None, str | None]:
    tags = meta.get("tags") or {}
    if not isinstance(tags, dict):
        raise InvalidExportError(f"{where}: tags must be an object")
    for key, value in tags.items():
        problem = tag_problem(key, value)
        if problem:
            raise InvalidExportError(f"{where}: {problem}")
    note = meta.get("note")
    problem = note_problem(note)
    if problem:
        raise InvalidExportError(f"{where}: {problem}")
    base_dir = meta.get("base_dir")
    if base_dir is not None and not isinstance(base_dir, str):
        raise InvalidExportError(f"{where}: base_dir must be text")
    return dict(tags), note, base_dir


def _data_key(name: str, where: str) -> str:
    try:
        return validate_entry_name(name)
    except InvalidInputError as exc:
        raise InvalidExportError(f"{where}: {exc}") from None


def _our_entries(meta: dict[str, Any], where: str) -> list[_DataItem | _FileItem | RecordedEntry]:
    entries = meta.get("entries")
    encoding = meta.get("encoding") or {}
    if not isinstance(entries, list) or not isinstance(encoding, dict):
        raise InvalidExportError(f"{where}: entries must be a list and encoding an object")
    items: list[_DataItem | _FileItem | RecordedEntry] = []
    names: set[str] = set()
    for raw in entries:
        if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
            raise InvalidExportError(f"{where}: malformed entry {raw!r:.200}")
        name = raw.get("name")
        if not isinstance(name, str) or name in names:
            raise InvalidExportError(f"{where}: missing or repeated entry name {name!r}")
        names.add(name)
        kind = raw.get("kind")
        if kind == "data":
            _data_key(name, where)
            if encoding.get(name, "json") != "json" or raw.get("encoding", "json") != "json":
                raise InvalidExportError(f"{where}: entry {name!r}: unknown encoding")
            sidecar = raw.get("sidecar")
            if sidecar is not None and (
                not isinstance(sidecar, str)
                or raw.get("sidecar_encoding", ENCODING_NAME) != ENCODING_NAME
            ):
                raise InvalidExportError(f"{where}: entry {name!r}: unknown sidecar {sidecar!r}")
            items.append(_DataItem(name, raw["file"], sidecar))
        elif kind == "file":
            try:
                export_path(name)
            except InvalidInputError as exc:
                raise InvalidExportError(f"{where}: {exc}") from None
            mode, mtime_ns = raw.get("mode"), raw.get("mtime_ns")
            if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
                raise InvalidExportError(f"{where}: entry {name!r}: invalid mode {mode!r}")
            if mtime_ns is not None and not isinstance(mtime_ns, int):
                raise InvalidExportError(f"{where}: entry {name!r}: invalid mtime_ns")
            items.append(_FileItem(name, raw["file"], mode, mtime_ns))
        elif kind in ("dir", "symlink"):
            items.append(_attributes_item(raw, name, kind, where))
        else:
            raise InvalidExportError(f"{where}: entry {name!r}: unknown kind {kind!r}")
    return items


def _attributes_item(raw: dict[str, Any], name: str, kind: str, where: str) -> RecordedEntry:
    """A directory or symbolic link of an export: known by its attributes alone."""
    try:
        export_path(name)
    except InvalidInputError as exc:
        raise InvalidExportError(f"{where}: {exc}") from None
    mode, mtime_ns, target = raw.get("mode"), raw.get("mtime_ns"), raw.get("target")
    if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
        raise InvalidExportError(f"{where}: entry {name!r}: invalid mode {mode!r}")
    if mtime_ns is not None and not isinstance(mtime_ns, int):
        raise InvalidExportError(f"{where}: entry {name!r}: invalid mtime_ns")
    if kind == "symlink" and (
        not isinstance(target, str) or not target or "\0" in target or len(target) > 4096
    ):
        raise InvalidExportError(f"{where}: entry {name!r}: invalid link target")
    return RecordedEntry(
        name,
        "symlink" if kind == "symlink" else "dir",
        target=target if kind == "symlink" else None,
        mode=mode if kind == "dir" else None,
        mtime_ns=mtime_ns,
    )


def _seed_entries(meta: dict[str, Any], folder: Path, where: str) -> list[_DataItem | _FileItem]:
    """A seed-style folder: every ``<key>.json`` / ``<key>.json.gz`` is a data entry."""
    files = meta.get("files")
    if files is None:
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.name != METADATA_NAME
            and not p.name.startswith(".")
            and p.name.endswith((".json", ".json.gz"))
        )
    if not isinstance(files, list):
        raise InvalidExportError(f"{where}: files must be a list")
    items: list[_DataItem | _FileItem] = []
    keys: set[str] = set()
    for name in files:
        if not isinstance(name, str) or "/" in name or not name.endswith((".json", ".json.gz")):
            raise InvalidExportError(
                f"{where}: {name!r} is not a data file <key>.json or <key>.json.gz"
            )
        key = _data_key(name.removesuffix(".gz").removesuffix(".json"), where)
        if key in keys:
            raise InvalidExportError(f"{where}: data entry {key!r} appears twice")
        keys.add(key)
        items.append(_DataItem(key, name))
    return items


def _data_payload(folder: Path, item: _DataItem, where: str) -> bytes:
    """The typed encoding of one data entry: the sidecar's (checked against the readable
    JSON, so an edited JSON file is never silently ignored), else the JSON's."""
    what = f"{where}, entry {item.name!r}"
    json_path = _regular_file(folder, item.file, what)
    parsed = _read_json_file(json_path, what)
    if item.sidecar is not None and (folder / item.sidecar).exists():
        sidecar_path = _regular_file(folder, item.sidecar, what)
        payload = _read_limited(sidecar_path, MAX_DATA_BYTES, what)
        try:
            value = decode_value(payload)
        except CorruptDataError as exc:
            raise InvalidExportError(f"{what}: {sidecar_path} is damaged ({exc})") from None
        if to_jsonable(value) != parsed:
            raise InvalidExportError(
                f"{what}: {json_path.name} was changed after the export and no longer matches "
                f"{item.sidecar}; delete {item.sidecar} to import the edited JSON (plain JSON "
                "types), or put back the exported file"
            )
        return payload
    return encode_value(parsed, root=f"data[{json.dumps(item.name)}]")


def _prepare_file(path: Path, item: _FileItem, owned: bool, staging: Callable[[], Path]) -> Path:
    """A path whose mode and mtime are the entry's: the file itself if they already match (or
    it is ours to change), else a copy in ``staging()``."""
    st = path.lstat()
    mode_ok = item.mode is None or stat.S_IMODE(st.st_mode) == item.mode
    mtime_ok = item.mtime_ns is None or st.st_mtime_ns == item.mtime_ns
    if mode_ok and mtime_ok:
        return path
    target = path
    if not owned:
        target = staging() / f"{len(os.listdir(staging()))}"
        with open(path, "rb") as handle:
            _write_new(target, _bounded_read(handle, st.st_size + 1))
    if item.mode is not None:
        os.chmod(target, item.mode)
    if item.mtime_ns is not None:
        os.utime(target, ns=(item.mtime_ns, item.mtime_ns))
    return target


def _import_folder(
    target: Target,
    folder: Path,
    *,
    owned: bool,
    progress: Callable[[int], None] | None,
) -> str:
    where = f"import of {folder}"
    meta = _read_metadata(folder)
    export_format = meta.get("export_format")
    if export_format is not None:
        if not isinstance(export_format, int) or isinstance(export_format, bool):
            raise InvalidExportError(f"{where}: invalid export_format {export_format!r}")
        if export_format > EXPORT_FORMAT:
            raise FormatVersionError(
                f"{where}: export format {export_format}; this version reads format "
                f"{EXPORT_FORMAT}. Upgrade peak-trade-backup to import it."
            )
    backup_id, backup_type = _check_identity(meta, where)
    time_utc = _check_time(meta, backup_id, where)
    tags, note, base_dir = _check_extras(meta, where)
    if export_format is not None and "entries" in meta:
        items = _our_entries(meta, where)
    else:
        items = list[_DataItem | _FileItem | RecordedEntry](_seed_entries(meta, folder, where))
    with contextlib.ExitStack() as stack:
        stage_dir: list[Path] = []

        def staging() -> Path:
            if not stage_dir:
                stage_dir.append(
                    Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peak-import-")))
                )
            return stage_dir[0]

        inputs: list[DataInput | EntrySource] = []
        for item in items:
            if isinstance(item, RecordedEntry):
                inputs.append(item)
            elif isinstance(item, _DataItem):
                payload = _data_payload(folder, item, where)
                inputs.append(DataInput(item.name, payload, ENCODING_NAME))
            else:
                path = _regular_file(folder, item.file, f"{where}, entry {item.name!r}")
                try:
                    prepared = _prepare_file(path, item, owned, staging)
                except OSError as exc:
                    raise storage_error("read", path, exc) from exc
                inputs.append(FileInput(item.name, prepared))
        repository = _repository(target, create=True)
        if backup_id in repository.snapshot_ids():
            raise BackupExistsError(f"cannot import: backup {backup_id} already exists")
        try:
            manifest = repository.create_snapshot_as(
                backup_id,
                time_utc,
                backup_type,
                inputs,
                tags=tags,
                note=note,
                base_dir=base_dir,
                progress=progress,
            )
        except ObjectExistsError:
            raise BackupExistsError(f"cannot import: backup {backup_id} already exists") from None
    log.info(
        "backup %s imported from %s: %d entries",
        manifest.backup_id,
        folder,
        len(manifest.entries),
        extra={"backup_id": manifest.backup_id},
    )
    return manifest.backup_id


def import_backup(
    manager: Target,
    source: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Import an export (a folder, or a ``.tar.gz`` archive) or a seed-style backup folder as
    a backup of the repository, keeping its id and timestamp; return the id.

    ``source`` may be the backup's folder or a folder holding exactly one. Archives are
    checked completely before anything is extracted (to a private temporary folder):
    absolute paths, ``..``, links, devices and oversized contents raise
    :class:`UnsafeArchiveError`. An id already in the repository raises
    :class:`BackupExistsError`; a malformed export :class:`InvalidExportError`. Nothing is
    committed unless everything was read and checked. ``manager`` may also be a
    :class:`Repository`.
    """
    path = Path(source)
    if path.is_dir():
        return _import_folder(manager, _find_folder(path), owned=False, progress=progress)
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="peak-import-") as tmp:
            folder = _extract_archive(path, Path(tmp))
            return _import_folder(manager, folder, owned=True, progress=progress)
    raise BackupError(f"cannot import {source}: no such file or directory")


__all__ = [
    "EXPORT_FORMAT",
    "BackupExistsError",
    "InvalidExportError",
    "UnsafeArchiveError",
    "export_backup",
    "export_path",
    "import_backup",
]
