"""What a backup attempt reports when it ends: the log line, the run-history record
(:mod:`src.infra.backup.repository.history`) and the hooks that receive a
:class:`BackupOutcome` (the metrics exporter, user callbacks)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from src.infra.backup.errors import (
    BackupError,
    InvalidInputError,
    PassphraseRequiredError,
    WrongPassphraseError,
)
from src.infra.backup.format.ids import validate_backup_type
from src.infra.backup.format.manifest import Manifest
from src.infra.backup.repository.history import record_failure
from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)


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
    in_background: bool = False  # started with start_backup (alerts say so)


class BackupHook(Protocol):
    """Called by ``BackupManager.create_backup`` after every attempt (add one with
    ``manager.hooks.append(hook)``). Exceptions from a hook are logged, never raised."""

    def __call__(self, outcome: BackupOutcome) -> None: ...


def record_outcome(
    backup_type: str,
    duration: float,
    *,
    manifest: Manifest | None,
    error: BackupError | None,
    repository: Repository | None,
    open_repository: Callable[[], Repository],
    hooks: Sequence[BackupHook],
    logger: logging.Logger = log,
    in_background: bool = False,
) -> None:
    """Log a backup attempt's outcome, record a failure in the run history (``repository``
    if it was opened, else ``open_repository()`` if there is one; a success's manifest is its
    record) and pass it to ``hooks``. Never
    raises: a monitoring hook must never fail a backup. ``logger`` writes the outcome line
    (the manager passes its own, so the line keeps its logger name). Refused input is
    recorded only ``in_background``: there the caller has no exception to see at the call."""
    fields: dict[str, Any] = {
        "backup_type": backup_type,
        "duration_ms": round(duration * 1000, 3),
        "outcome": "created" if manifest is not None else "failed",
    }
    if manifest is not None:
        fields.update(backup_id=manifest.backup_id, size_bytes=manifest.stats.stored_bytes)
        logger.info(
            "backup %s created: %d entries, %d bytes, %d new bytes",
            manifest.backup_id,
            len(manifest.entries),
            manifest.stats.logical_bytes,
            manifest.stats.added_bytes,
            extra=fields,
        )
    else:
        logger.info("backup of type %s failed: %s", backup_type, error, extra=fields)
        # Refused input (an invalid type or value) is the caller's mistake, reported by
        # the exception; like every refused input it writes nothing to the repository.
        if isinstance(error, InvalidInputError) and not in_background:
            repository = None
        elif not isinstance(error, WrongPassphraseError | PassphraseRequiredError):
            try:  # a failure before the repository was opened; skip if there is none
                repository = repository or open_repository()
            except BackupError:
                repository = None
    # A success's record is its manifest (see history.py): only a failure is written.
    if repository is not None and manifest is None and error is not None:
        record_failure(repository.store, backup_type, error)
    outcome = BackupOutcome(
        backup_type=backup_type,
        ok=manifest is not None,
        duration_seconds=duration,
        time=manifest.time_utc if manifest is not None else datetime.now(timezone.utc),
        backup_id=manifest.backup_id if manifest is not None else None,
        size_bytes=manifest.stats.stored_bytes if manifest is not None else None,
        added_bytes=manifest.stats.added_bytes if manifest is not None else None,
        error=str(error) if error is not None else None,
        in_background=in_background,
    )
    try:
        validate_backup_type(backup_type)
    except BackupError:
        return  # not a backup type: nothing to count it under
    for hook in list(hooks):
        try:
            hook(outcome)
        except Exception:  # a monitoring hook must never fail a backup
            log.warning("backup hook %r failed", hook, exc_info=True)
