"""The seed-style naive backup implementation: the benchmark's baseline.

This is what the user's document implies a first implementation would do, kept
deliberately simple:

* one folder per backup, named ``<type>_<YYYYmmdd_HHMMSS>`` (``_2``, ``_3``, ... appended
  when that name is taken, since the benchmark makes many backups per second);
* every top-level key of the data is written as ``json.dumps(value, indent=2, default=str)``
  compressed with ``gzip.compress(level=9)`` into ``<key>.json.gz``;
* a ``metadata.json`` per folder; ``list_backups`` reads every one of them;
* no deduplication: every backup stores the whole state again.

For a fair comparison with a durable implementation every file is fsync'ed, and so are the
new folder and its parent directory.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class NaiveBackupInfo:
    """What ``metadata.json`` of one naive backup records."""

    backup_id: str
    backup_type: str
    timestamp: datetime
    size_bytes: int
    compressed: bool = True
    files: list[str] = field(default_factory=list)


def _write_durable(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` and fsync it."""
    with open(path, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Fsync a directory so that entries created in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NaiveBackupManager:
    """Folder-per-backup, gzip'ed-JSON-per-key backups (the seed's obvious design)."""

    def __init__(self, backup_path: str | Path) -> None:
        """Use (and create) ``backup_path`` as the backup root."""
        self.backup_path = Path(backup_path)
        self.backup_path.mkdir(parents=True, exist_ok=True)

    def _new_folder(self, backup_type: str, now: datetime) -> tuple[str, Path]:
        """Create a fresh, uniquely named backup folder and return its id and path."""
        base = f"{backup_type}_{now.strftime('%Y%m%d_%H%M%S')}"
        backup_id, counter = base, 1
        while True:
            folder = self.backup_path / backup_id
            try:
                folder.mkdir()
            except FileExistsError:
                counter += 1
                backup_id = f"{base}_{counter}"
                continue
            return backup_id, folder

    def create_backup(self, data: dict[str, Any], backup_type: str = "manual") -> str:
        """Write every top-level entry of ``data`` to its own gzip'ed JSON file; return the id."""
        now = datetime.now()
        backup_id, folder = self._new_folder(backup_type, now)
        files: list[str] = []
        size = 0
        for key, value in data.items():
            text = json.dumps(value, indent=2, default=str)
            payload = gzip.compress(text.encode("utf-8"), compresslevel=9)
            name = f"{key}.json.gz"
            _write_durable(folder / name, payload)
            files.append(name)
            size += len(payload)
        metadata = {
            "backup_id": backup_id,
            "backup_type": backup_type,
            "timestamp": now.isoformat(),
            "size_bytes": size,
            "compressed": True,
            "files": files,
        }
        _write_durable(folder / "metadata.json", json.dumps(metadata, indent=2).encode("utf-8"))
        _fsync_dir(folder)
        _fsync_dir(self.backup_path)
        return backup_id

    def list_backups(self) -> list[NaiveBackupInfo]:
        """Every backup, newest first, read from each folder's ``metadata.json``."""
        infos: list[NaiveBackupInfo] = []
        for meta_path in self.backup_path.glob("*/metadata.json"):
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            infos.append(
                NaiveBackupInfo(
                    backup_id=meta["backup_id"],
                    backup_type=meta["backup_type"],
                    timestamp=datetime.fromisoformat(meta["timestamp"]),
                    size_bytes=meta["size_bytes"],
                    compressed=meta["compressed"],
                    files=meta["files"],
                )
            )
        infos.sort(key=lambda info: (info.timestamp, _counter(info)), reverse=True)
        return infos

    def load_backup(self, backup_id: str) -> dict[str, Any]:
        """Read every ``<key>.json.gz`` of backup ``backup_id`` back into a dict."""
        folder = self.backup_path / backup_id
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        data: dict[str, Any] = {}
        for name in meta["files"]:
            key = name.removesuffix(".json.gz")
            data[key] = json.loads(gzip.decompress((folder / name).read_bytes()))
        return data


def _counter(info: NaiveBackupInfo) -> int:
    """The collision counter of a backup id (1 when it has none), to order same-second ids."""
    parts = info.backup_id[len(info.backup_type) + 1 :].split("_")  # date, time[, counter]
    return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 1
