"""Export a backup as plain files, and import such an export (or a seed-style folder).

An export is a folder ``DIR/<backup_id>/`` (or the same tree as one ``DIR/<backup_id>.tar.gz``)
that any tool can read: ``metadata.json``, one ``<key>.json`` per data entry with a lossless
``.<key>.msgpack`` sidecar, and the file sources under their paths (see :mod:`.layout`). Import
reads such an export, or a folder of the seed-style implementation, and commits it as a backup
with the same id and time; archives are checked completely before anything is extracted.

Modules: :mod:`.layout` (names, format version, limits, entry paths), :mod:`.local_files`
(creating and reading the files safely), :mod:`.tar_safety` (archive checks and extraction),
:mod:`.metadata` (reading and checking ``metadata.json``), :mod:`.target` (manager or
repository), :mod:`.exporter` and :mod:`.importer`. The errors (``BackupExistsError``,
``UnsafeArchiveError``, ``InvalidExportError``) live in :mod:`src.infra.backup.errors`.

Knows nothing of the CLI, of replicas or of status reporting.
"""

from __future__ import annotations

from src.infra.backup.app.export.exporter import export_backup
from src.infra.backup.app.export.importer import import_backup
from src.infra.backup.app.export.layout import (
    EXPORT_FORMAT,
    EXPORT_FORMATS,
    ExportFormat,
    export_path,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMATS",
    "ExportFormat",
    "export_backup",
    "export_path",
    "import_backup",
]
