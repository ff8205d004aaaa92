"""What a backup attempt reports when it ends, and the protocol of the hooks that receive it
(the metrics exporter, user callbacks). Knows nothing of how outcomes are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class BackupOutcome:
    """What ``create_backup`` reports to hooks: ``backup_id``/``size_bytes`` on success,
    ``error`` on failure."""

    backup_type: str
    ok: bool
    duration_seconds: float
    time: datetime
    backup_id: str | None = None
    size_bytes: int | None = None
    added_bytes: int | None = None
    error: str | None = None


class BackupHook(Protocol):
    """Called by ``BackupManager.create_backup`` after every attempt (add one with
    ``manager.hooks.append(hook)``). Exceptions from a hook are logged, never raised."""

    def __call__(self, outcome: BackupOutcome) -> None: ...
