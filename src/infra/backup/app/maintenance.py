"""Maintenance that follows a backup: retention planning (also on the path of every backup,
kept cheap with thousands of backups) and garbage collection in the background after
retention deleted backups (``auto_prune``), at most once per grace period per process, never
delaying the caller and never failing a backup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.errors import BackupError, RepositoryBusyError
from src.infra.backup.format.ids import id_sort_key
from src.infra.backup.policy.retention import (
    Decision,
    RetentionCandidate,
    apply_policy,
    apply_retention_days,
)
from src.infra.backup.repository.repository import Repository

if TYPE_CHECKING:
    from src.infra.backup.repository.gc import PruneReport

log = logging.getLogger(__name__)


class AutoPrune:
    """Runs ``prune()`` in a daemon thread when :meth:`start` is called, unless ``auto_prune``
    is off, one ran within the grace period, or one is still running."""

    def __init__(self, config: BackupConfig, prune: Callable[[], PruneReport]) -> None:
        self._config = config
        self._prune = prune
        self._thread: threading.Thread | None = None
        self._last = float("-inf")

    def start(self) -> None:
        """Collect garbage in the background now, if due (see the class docstring)."""
        now = time.monotonic()
        if not self._config.auto_prune or now - self._last < self._config.grace.total_seconds():
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._last = now
        self._thread = threading.Thread(target=self._run, name="peak-backup-prune", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            report = self._prune()
            log.info(
                "automatic prune: %d chunks collected, %d deleted, %d bytes freed",
                report.fossilized,
                report.deleted,
                report.freed_bytes,
            )
        except RepositoryBusyError:
            log.info("automatic prune skipped: another prune is running")
        except BackupError as exc:
            log.warning("automatic prune failed: %s", exc)


def plan_retention(
    config: BackupConfig, snapshots: Sequence[RetentionCandidate], *, protect: Sequence[str]
) -> list[Decision]:
    """What retention decides now: ``[backup.retention]`` when configured, else
    ``retention_days``; ``protect`` names backups kept whatever the policy."""
    now = datetime.now(timezone.utc)
    if config.retention is None:
        return apply_retention_days(snapshots, config.retention_days, now, protect=protect)
    return apply_policy(snapshots, config.retention, now, protect=protect)


def plan_after_create(
    repository: Repository, config: BackupConfig, new_id: str
) -> list[Decision] | None:
    """Retention on the path of every backup, kept cheap with thousands of backups: planned on
    a names-only listing (what this process knows of each id). ``[]``: nothing to do (the
    oldest backup is young enough); ``None``: plan again on a validated listing (a backup to
    forget was replaced since it was read)."""
    summaries = repository.list_summaries(validate=False)
    if config.retention is None and summaries:
        cutoff = datetime.now(timezone.utc) - timedelta(days=config.retention_days)
        if summaries[-1].time_utc >= cutoff:
            return []
    decisions = plan_retention(config, summaries, protect=[new_id])
    forget = [d.backup_id for d in decisions if not d.keep]
    if not all(repository.summary_is_current(backup_id) for backup_id in forget):
        return None
    return decisions


def is_last_good(repository: Repository, backup_id: str) -> bool:
    """Whether ``backup_id`` verifies (structure only) and no other backup does: deleting it
    would leave no good backup. A damaged backup can always go."""
    if not repository.verify_snapshot(backup_id, read_data=False).ok:
        return False
    others = sorted(
        (i for i in repository.snapshot_ids() if i != backup_id), key=id_sort_key, reverse=True
    )
    return not any(repository.verify_snapshot(i, read_data=False).ok for i in others)
