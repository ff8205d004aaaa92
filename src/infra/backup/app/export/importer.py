"""Reading an export (a folder or a ``.tar.gz`` archive) or a seed-style backup folder
(``metadata.json`` plus ``<key>.json[.gz]``, see ``bench/naive.py``) and committing it as a
backup with the same id and time.

Data entries come from the sidecar when there is one (exact types), else from the JSON (plain
JSON types). An archive is checked completely before anything is extracted (see
:mod:`~src.infra.backup.app.export.tar_safety`). Nothing is committed unless everything was
read and checked.

Knows nothing of how an export is written or of the CLI.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import io
import json
import logging
import os
import stat
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from src.infra.backup.app.export.layout import MAX_DATA_BYTES, METADATA_NAME
from src.infra.backup.app.export.local_files import (
    bounded_read,
    read_limited,
    regular_file,
    write_new,
)
from src.infra.backup.app.export.metadata import (
    DataItem,
    FileItem,
    check_extras,
    check_format,
    check_identity,
    check_time,
    export_entries,
    read_metadata,
    seed_entries,
)
from src.infra.backup.app.export.tar_safety import extract_archive
from src.infra.backup.app.export.target import Target, open_repository
from src.infra.backup.errors import (
    BackupError,
    BackupExistsError,
    CorruptDataError,
    InvalidExportError,
    ObjectExistsError,
)
from src.infra.backup.files.archiver import FileInput, RecordedEntry
from src.infra.backup.format.values import ENCODING_NAME, decode_value, encode_value, to_jsonable
from src.infra.backup.repository.snapshot_writer import DataInput, EntrySource
from src.infra.backup.storage.local import storage_error

log = logging.getLogger(__name__)


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


def _read_json_file(path: Path, what: str) -> object:
    raw = read_limited(path, MAX_DATA_BYTES, what)
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


def _data_payload(folder: Path, item: DataItem, where: str) -> bytes:
    """The typed encoding of one data entry: the sidecar's (checked against the readable
    JSON, so an edited JSON file is never silently ignored), else the JSON's."""
    what = f"{where}, entry {item.name!r}"
    json_path = regular_file(folder, item.file, what)
    parsed = _read_json_file(json_path, what)
    if item.sidecar is not None and (folder / item.sidecar).exists():
        sidecar_path = regular_file(folder, item.sidecar, what)
        payload = read_limited(sidecar_path, MAX_DATA_BYTES, what)
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


def _prepare_file(path: Path, item: FileItem, owned: bool, staging: Callable[[], Path]) -> Path:
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
            write_new(target, bounded_read(handle, st.st_size + 1))
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
    meta = read_metadata(folder)
    export_format = check_format(meta, where)
    backup_id, backup_type = check_identity(meta, where)
    time_utc = check_time(meta, backup_id, where)
    tags, note, base_dir = check_extras(meta, where)
    if export_format is not None and "entries" in meta:
        items = export_entries(meta, where)
    else:
        items = list[DataItem | FileItem | RecordedEntry](seed_entries(meta, folder, where))
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
            elif isinstance(item, DataItem):
                payload = _data_payload(folder, item, where)
                inputs.append(DataInput(item.name, payload, ENCODING_NAME))
            else:
                path = regular_file(folder, item.file, f"{where}, entry {item.name!r}")
                try:
                    prepared = _prepare_file(path, item, owned, staging)
                except OSError as exc:
                    raise storage_error("read", path, exc) from exc
                inputs.append(FileInput(item.name, prepared))
        repository = open_repository(target, create=True)
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
            folder = extract_archive(path, Path(tmp))
            return _import_folder(manager, folder, owned=True, progress=progress)
    raise BackupError(f"cannot import {source}: no such file or directory")


__all__ = ["import_backup"]
