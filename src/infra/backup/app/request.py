"""One backup call, checked: :class:`BackupRequest` and the checks every way of taking a
backup shares (``create_backup``, ``start_backup``). Bad input raises
:class:`InvalidInputError` before anything is written. :func:`request_entries` turns a
request into what the repository stores (its values, the configured file and command
sources).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.errors import ConfigError, InvalidInputError
from src.infra.backup.format.ids import (
    note_problem,
    validate_backup_type,
    validate_entry_name,
    validate_tags,
)
from src.infra.backup.repository.reader import ProgressCallback, announce_total
from src.infra.backup.repository.snapshot_writer import DataInput, EntrySource


@dataclass(frozen=True)
class BackupRequest:
    """One backup call, checked, with its values encoded (once: a fallback reuses them)."""

    backup_type: str
    values: list[DataInput]
    tags: dict[str, str]
    note: str | None
    include_files: bool
    progress: ProgressCallback | None
    taken_at: datetime | None = None  # a background backup: when its state was captured


def checked_request(
    config: BackupConfig,
    data: object,
    backup_type: str,
    tags: Mapping[str, str] | None,
    note: str | None,
    include_files: bool | None,
    progress: ProgressCallback | None = None,
) -> BackupRequest:
    """The request with every argument but the values checked (its values still empty)."""
    validate_backup_type(backup_type)
    checked_tags = validate_tags(tags)
    problem = note_problem(note)
    if problem:
        raise InvalidInputError(problem)
    if data is not None and not isinstance(data, Mapping):
        raise InvalidInputError(
            f"data must be a dict of names to values, not {type(data).__name__}"
        )
    for key in data or {}:
        validate_entry_name(key)
    files = include_files if include_files is not None else config.has_file_sources
    return BackupRequest(backup_type, [], checked_tags, note, files, progress)


def encoded_request(request: BackupRequest, data: Mapping[str, Any] | None) -> BackupRequest:
    """``request`` with ``data``'s values encoded (an unsupported value raises
    :class:`UnsupportedValueError` naming where it is)."""
    values = [
        DataInput.from_value(key, value, root=f"data[{json.dumps(key)}]")
        for key, value in (data or {}).items()
    ]
    return replace(request, values=values)


def request_entries(
    request: BackupRequest, config: BackupConfig, *, encrypted: bool
) -> tuple[list[DataInput | EntrySource], list[str]]:
    """What a backup of ``request`` stores: its values and, with ``include_files``, the
    configured sources (scanned now: the warnings of the scan come back with the entries;
    the progress callback is told the files' total size) and command sources."""
    entries: list[DataInput | EntrySource] = list(request.values)
    if not request.include_files:
        return entries, []
    from src.infra.backup.files.archiver import command_inputs, entry_sources
    from src.infra.backup.files.sources import scan_sources

    sources = config.source_settings
    if sources.include_secrets and not encrypted:
        raise ConfigError(
            "include_secrets = true, but the repository is not encrypted: secrets "
            "files are only backed up into an encrypted repository"
        )
    scan = scan_sources(
        sources.sources,
        sources.source_root,
        exclude=sources.exclude,
        include_secrets=sources.include_secrets,
        skip=sources.own_directories,
    )
    announce_total(request.progress, scan.file_bytes)
    entries.extend(entry_sources(scan.items, sqlite=sources.sqlite))
    entries.extend(command_inputs(config.command_sources, sources.source_root))
    return entries, scan.warnings
