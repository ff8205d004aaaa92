"""Writing a backup as an export: plain files in a folder, or one ``.tar.gz`` archive.

Data entries become readable ``<key>.json`` (``.json.gz`` with gzip) plus a hidden lossless
sidecar ``.<key>.msgpack``; file sources keep their relative paths, mode and mtime;
``metadata.json`` describes it all (see :mod:`~src.infra.backup.app.export.layout`). The export
is assembled in a hidden temporary folder and appears complete or not at all.

Knows nothing of importing, of seed-style folders or of the CLI.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.app.export.layout import (
    EXPORT_FORMAT,
    EXPORT_FORMATS,
    METADATA_NAME,
    ExportFormat,
    export_path,
)
from src.infra.backup.app.export.local_files import fsync_tree, write_new
from src.infra.backup.app.export.target import Target, open_repository
from src.infra.backup.errors import BackupError, CorruptDataError, InvalidInputError
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.format.values import ENCODING_NAME, to_jsonable
from src.infra.backup.repository.reader import ProgressCallback, announce_total, decode_data_payload
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import fsync_dir, storage_error

log = logging.getLogger(__name__)


def _json_text(value: object) -> bytes:
    return (json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n").encode()


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
    repository: Repository,
    manifest: Manifest,
    plan: list[_Planned],
    folder: Path,
    use_gzip: bool,
    progress: ProgressCallback | None = None,
) -> None:
    info = BackupInfo.from_manifest(manifest)
    files: list[str] = []
    entries: list[dict[str, Any]] = []
    encoding: dict[str, str] = {}
    sidecars: dict[str, str] = {}
    size_bytes = 0
    by_name = {e.name: e for e in manifest.entries}
    dirs: list[tuple[Path, Entry]] = []
    sizes = [  # a hard link is exported as a copy of its file
        by_name[e.target or ""].size if e.kind == "hardlink" and e.target in by_name else e.size
        for e in (item.entry for item in plan)
        if e.kind in ("data", "file", "hardlink")
    ]
    announce_total(progress, sum(sizes))
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
            size = write_new(folder / item.file, [content])
            assert item.sidecar is not None
            write_new(folder / item.sidecar, [payload])
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
            size = write_new(
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
        if progress is not None:
            progress(entry.size)
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
    write_new(folder / METADATA_NAME, [document.encode()])
    fsync_tree(folder)


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
    progress: ProgressCallback | None = None,
) -> Path:
    """Write backup ``backup_id`` as plain files to ``to_dir/<backup_id>/`` (``fmt="dir"``)
    or as one archive ``to_dir/<backup_id>.tar.gz`` (``fmt="tar.gz"``); return that path.

    Data entries become readable ``<key>.json`` (``.json.gz`` with ``gzip=True``) plus a hidden
    lossless sidecar ``.<key>.msgpack``; file sources keep their relative paths, mode and mtime;
    ``metadata.json`` describes it all (see the module docstring). Every chunk is verified.
    The export is assembled in a hidden temporary folder in ``to_dir`` and appears complete or
    not at all; an existing target is never overwritten. ``manager`` may also be a
    :class:`Repository`. ``progress`` is told the total and called with each entry's bytes.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}: expected dir or tar.gz")
    repository = open_repository(manager, create=False)
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
        _write_export(repository, manifest, plan, folder, gzip, progress)
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


__all__ = ["export_backup"]
