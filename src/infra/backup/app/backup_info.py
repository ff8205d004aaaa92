"""What a listed backup looks like to the seed's API: :class:`BackupInfo`, a read-only view of a
backup's summary (attributes are computed when read, so listing thousands stays cheap).
"""

from __future__ import annotations

from datetime import datetime, timezone

from src.infra.backup.format.index import Summary, summarize
from src.infra.backup.format.manifest import Manifest


class BackupInfo:
    """Metadata of one backup, as ``list_backups()`` returns it (a read-only view of the
    backup's summary; attributes are computed when read, so listing stays cheap).

    Sizes: ``size_bytes`` is the stored (compressed) size of everything the backup references,
    i.e. what it would occupy on its own; ``logical_bytes`` is what a restore produces;
    ``added_bytes`` is what this backup added to the repository (its new chunks; the rest was
    shared with earlier backups). ``timestamp`` is local time without a zone (as in the seed);
    ``timestamp_utc`` is aware.
    """

    __slots__ = ("_summary",)

    def __init__(self, summary: Summary) -> None:
        self._summary = summary

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> BackupInfo:
        """Describe the backup of a manifest."""
        return cls(summarize(manifest))

    @property
    def backup_id(self) -> str:
        return self._summary.backup_id

    @property
    def backup_type(self) -> str:
        return self._summary.backup_type

    @property
    def timestamp(self) -> datetime:
        return self._summary.time_utc.astimezone().replace(tzinfo=None)

    @property
    def timestamp_utc(self) -> datetime:
        return self._summary.time_utc.astimezone(timezone.utc)

    @property
    def size_bytes(self) -> int:
        return self._summary.stats.stored_bytes

    @property
    def logical_bytes(self) -> int:
        return self._summary.stats.logical_bytes

    @property
    def added_bytes(self) -> int:
        return self._summary.stats.added_bytes

    @property
    def compressed(self) -> bool:
        return self._summary.compression != "none"

    @property
    def files(self) -> list[str]:
        """Data entries as ``<key>.json`` (the seed's layout), then file paths."""
        return [f"{key}.json" for key in self._summary.data_keys] + list(self._summary.file_paths)

    @property
    def file_count(self) -> int:
        """``len(files)``, without building the list."""
        return len(self._summary.data_keys) + len(self._summary.file_paths)

    @property
    def data_keys(self) -> list[str]:
        return list(self._summary.data_keys)

    @property
    def file_paths(self) -> list[str]:
        return list(self._summary.file_paths)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._summary.tags)

    @property
    def note(self) -> str | None:
        return self._summary.note

    @property
    def host(self) -> str:
        return self._summary.host

    @property
    def warnings(self) -> list[str]:
        """What the backup could not capture as asked (a file that vanished, could not be
        read or kept changing, a special file left out, a database stored as raw bytes), one
        line each naming the file; empty for a clean backup."""
        return list(self._summary.warnings)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackupInfo) and other._summary == self._summary

    def __hash__(self) -> int:
        return hash((self.backup_id, self._summary.time_utc))

    def __repr__(self) -> str:
        return (
            f"BackupInfo(backup_id={self.backup_id!r}, backup_type={self.backup_type!r}, "
            f"timestamp={self.timestamp!r}, size_bytes={self.size_bytes})"
        )
