"""The layout of an export: its names, format version and limits, and where entries lie.

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

Shared by both directions; knows nothing of repositories, archives or how files are written.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from src.infra.backup.errors import InvalidInputError, UnsafeArchiveError
from src.infra.backup.files.sources import ABSOLUTE_PREFIX

EXPORT_FORMAT = 1
"""The export format this version writes, and the newest it reads."""

METADATA_NAME = "metadata.json"
"""The file describing the export, at the top of the backup's folder."""


ExportFormat = Literal["dir", "tar.gz"]
EXPORT_FORMATS: tuple[str, ...] = ("dir", "tar.gz")

# Limits for what an import reads (an archive or folder may come from anywhere).
MAX_METADATA_BYTES = 16 * 1024**2
"""The largest ``metadata.json`` an import reads."""

MAX_DATA_BYTES = 1024**3
"""The largest data entry file (or sidecar, or unpacked ``.json.gz``) an import reads."""


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


def relative_parts(rel: str, what: str) -> list[str]:
    """The components of a relative ``/``-separated path from an export; refuses absolute
    paths, ``..``, backslashes, NUL and drive letters (:class:`UnsafeArchiveError`)."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise UnsafeArchiveError(f"{what}: unsafe path {rel!r}")
    if rel.startswith("/") or PureWindowsPath(rel).drive:
        raise UnsafeArchiveError(f"{what}: absolute path {rel!r} refused")
    parts = [part for part in rel.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what}: path {rel!r} with '..' refused")
    return parts


__all__ = [
    "ABSOLUTE_PREFIX",
    "EXPORT_FORMAT",
    "EXPORT_FORMATS",
    "MAX_DATA_BYTES",
    "MAX_METADATA_BYTES",
    "METADATA_NAME",
    "ExportFormat",
    "export_path",
    "relative_parts",
]
