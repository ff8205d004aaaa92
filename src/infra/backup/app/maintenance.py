"""Maintenance that follows a backup: garbage collection in the background after retention
deleted backups (``auto_prune``), at most once per grace period per process, never delaying
the caller and never failing a backup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.errors import BackupError, RepositoryBusyError

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
