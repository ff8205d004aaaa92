"""The alert conditions read from the repository's status: a backup type overdue (no success
within ``max_age``) and an off-site replica behind (past ``max_lag``, or failing). The same
merged status as ``peak-backup status`` and the health check (:func:`collect_status`, the
health check's stale threshold) decides; :meth:`AlertService.update_conditions`
(``app/alerting.py``) then opens the incidents that hold and clears those that no longer do.

Evaluated by ``peak-backup alert check`` (meant for cron) and, every ``check_every``, by
``peak-backup run`` (:class:`PeriodicAlertCheck`, in a thread of its own so that a slow
replica never delays a scheduled backup). See ``docs/ALERTS.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from src.infra.backup.errors import BackupError
from src.infra.backup.monitoring.status import collect_status, stale_threshold

if TYPE_CHECKING:
    from src.infra.backup.app.manager import BackupManager

log = logging.getLogger(__name__)


@dataclass
class Conditions:
    """What an evaluation found: incident key -> text, per kind (empty: all clear)."""

    overdue: dict[str, str] = field(default_factory=dict)
    replica_lag: dict[str, str] = field(default_factory=dict)
    max_age: timedelta | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "overdue": self.overdue,
            "replica_lag": self.replica_lag,
            "max_age_seconds": self.max_age.total_seconds() if self.max_age else None,
        }


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f}h"


def evaluate_conditions(manager: BackupManager, *, now: datetime | None = None) -> Conditions:
    """Find the overdue types and the lagging replica of ``manager``'s repository and pass
    them to its alert service (which alerts on a change). :class:`BackupError` if the
    status cannot be read (then no incident opens or clears)."""
    service = manager.alerts
    if service is None:
        return Conditions()
    summary = collect_status(manager, now=now)
    max_age = stale_threshold(manager, service.settings.max_age)
    found = Conditions(max_age=max_age)
    for backup_type in service.settings.overdue_types:
        entry = summary.types.get(backup_type)
        last = entry.last_success if entry is not None else None
        if last is None:
            continue  # never succeeded: a failure alerts as backup_failed
        age = summary.age(last.time)
        if age > max_age:
            found.overdue[f"overdue:{backup_type}"] = (
                f"no successful {backup_type} backup for {_hours(age)} (newest "
                f"{last.backup_id}; max age {_hours(max_age)})"
            )
    problem = summary.offsite_problem
    if problem is not None and summary.offsite is not None:
        found.replica_lag[f"replica_lag:{summary.offsite.location}"] = problem
    service.update_conditions("overdue", found.overdue, "critical")
    service.update_conditions("replica_lag", found.replica_lag, "warning")
    return found


class PeriodicAlertCheck:
    """For ``BackupScheduler.periodic``: every ``check_every``, evaluate the conditions in a
    daemon thread (one at a time). Never raises; a failure is logged."""

    def __init__(self, manager: BackupManager) -> None:
        assert manager.alerts is not None
        self.manager = manager
        self.every = manager.alerts.settings.check_every.total_seconds()
        self._last: float | None = None
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._last = now
        self._thread = threading.Thread(
            target=self._run, name="peak-backup-alert-check", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            evaluate_conditions(self.manager)
        except BackupError as exc:
            log.warning("alert check: status unreadable: %s", exc)
        except Exception:
            log.warning("alert check failed", exc_info=True)

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running evaluation (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)
