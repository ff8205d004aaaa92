"""The ``RESTORED_FROM`` stamp a restore leaves beside what it wrote: which backup, of when,
restored when and on which host (a small JSON file people and bots can read).

A directory restore writes it in the target directory, an in-place restore in the backup's
base directory. Backups never select a top-level ``RESTORED_FROM`` (``sources.py``), so a
later backup does not carry an old stamp and an in-place ``--delete`` never removes it.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from src.infra.backup.errors import StorageError

STAMP_NAME = "RESTORED_FROM"


def write_stamp(
    directory: Path, *, backup_id: str, backup_time: datetime, mode: str, user: str | None = None
) -> Path:
    """Write ``directory/RESTORED_FROM`` atomically (temp file, then rename) and return its
    path. ``backup_time`` is stored as ISO text with its zone; ``mode``: ``"directory"`` or
    ``"in-place"``. :class:`StorageError` if it cannot be written."""
    record = {
        "backup_id": backup_id,
        "backup_time": backup_time.isoformat(),
        "restored_at": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "user": user if user is not None else _user(),
        "mode": mode,
        "pid": os.getpid(),
    }
    text = json.dumps(record, indent=2) + "\n"
    path = directory / STAMP_NAME
    try:
        fd, temp = tempfile.mkstemp(prefix=".tmp-stamp-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
    return path


def read_stamp(directory: Path) -> dict[str, object] | None:
    """The stamp in ``directory`` as a dict, or ``None`` if there is none (or it is not
    JSON)."""
    try:
        value = json.loads((directory / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _user() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return None
