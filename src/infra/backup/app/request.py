"""One backup call, checked: :class:`BackupRequest` and the checks every way of taking a
backup shares (``create_backup``, ``start_backup``). Bad input raises
:class:`InvalidInputError` before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.errors import InvalidInputError
from src.infra.backup.format.ids import (
    note_problem,
    validate_backup_type,
    validate_entry_name,
    validate_tags,
)
from src.infra.backup.repository.reader import ProgressCallback
from src.infra.backup.repository.snapshot_writer import DataInput


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
