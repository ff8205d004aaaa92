"""Reading and checking the ``metadata.json`` of an export or of a seed-style backup folder.

Every field an import relies on is validated here (id and type, time, tags, note, the entry
list); anything wrong raises :class:`InvalidExportError` naming the folder and the field. The
result says which entries to read and from which files; reading them is the importer's job.

Knows nothing of archives or of repositories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from src.infra.backup.app.export.layout import (
    EXPORT_FORMAT,
    MAX_METADATA_BYTES,
    METADATA_NAME,
    export_path,
)
from src.infra.backup.app.export.local_files import read_limited, regular_file
from src.infra.backup.errors import FormatVersionError, InvalidExportError, InvalidInputError
from src.infra.backup.files.archiver import RecordedEntry
from src.infra.backup.format.ids import (
    is_id_of_type,
    is_valid_backup_id,
    note_problem,
    split_backup_id,
    tag_problem,
    validate_backup_type,
    validate_entry_name,
)
from src.infra.backup.format.values import ENCODING_NAME


@dataclass
class DataItem:
    """A data entry to import: its key, its JSON file and (in our exports) its sidecar."""

    name: str
    file: str
    sidecar: str | None = None


@dataclass
class FileItem:
    """A file source to import: its entry name, its file in the export, mode and mtime."""

    name: str
    file: str
    mode: int | None
    mtime_ns: int | None


def read_metadata(folder: Path) -> dict[str, Any]:
    """The JSON object in ``folder/metadata.json`` (a regular file of limited size)."""
    path = regular_file(folder, METADATA_NAME, f"import of {folder}")
    raw = read_limited(path, MAX_METADATA_BYTES, f"import of {folder}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidExportError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InvalidExportError(f"{path}: expected a JSON object")
    return meta


def check_format(meta: dict[str, Any], where: str) -> int | None:
    """The ``export_format`` (``None`` for a seed-style folder); a newer one than this version
    reads raises :class:`FormatVersionError`."""
    export_format = meta.get("export_format")
    if export_format is not None:
        if not isinstance(export_format, int) or isinstance(export_format, bool):
            raise InvalidExportError(f"{where}: invalid export_format {export_format!r}")
        if export_format > EXPORT_FORMAT:
            raise FormatVersionError(
                f"{where}: export format {export_format}; this version reads format "
                f"{EXPORT_FORMAT}. Upgrade peak-trade-backup to import it."
            )
    return export_format


def check_identity(meta: dict[str, Any], where: str) -> tuple[str, str]:
    """The backup's id and type, checked against each other."""
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


def check_time(meta: dict[str, Any], backup_id: str, where: str) -> datetime:
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


def check_extras(meta: dict[str, Any], where: str) -> tuple[dict[str, str], str | None, str | None]:
    """The backup's tags, note and base directory, checked."""
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


def export_entries(meta: dict[str, Any], where: str) -> list[DataItem | FileItem | RecordedEntry]:
    """The entries of one of our exports, from its ``entries`` list: data entries, file
    sources, and directories and symbolic links (known by their attributes alone)."""
    entries = meta.get("entries")
    encoding = meta.get("encoding") or {}
    if not isinstance(entries, list) or not isinstance(encoding, dict):
        raise InvalidExportError(f"{where}: entries must be a list and encoding an object")
    items: list[DataItem | FileItem | RecordedEntry] = []
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
            items.append(DataItem(name, raw["file"], sidecar))
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
            items.append(FileItem(name, raw["file"], mode, mtime_ns))
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


def seed_entries(meta: dict[str, Any], folder: Path, where: str) -> list[DataItem | FileItem]:
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
    items: list[DataItem | FileItem] = []
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
        items.append(DataItem(key, name))
    return items


__all__ = [
    "DataItem",
    "FileItem",
    "check_extras",
    "check_format",
    "check_identity",
    "check_time",
    "export_entries",
    "read_metadata",
    "seed_entries",
]
