"""A traffic-light health check of the backups, for a generic health checker.

- **green**: the newest successful backup is younger than ``interval_hours`` and the last
  verify passed within 7 days.
- **yellow**: the newest backup is older than the interval but within the stale threshold, or
  no verify was recorded, or the last verify is older than 7 days, or the off-site replica is
  behind by more than ``max_lag`` (or failing), or fallback backups await syncing back.
- **red**: the newest backup is older than the stale threshold (``max_age``, default twice
  ``interval_hours``), there is no backup at all, the last run of a type failed (a failure
  newer than its last success), the last verify failed, or the status cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from src.infra.backup.app.manager import BackupManager
from src.infra.backup.errors import BackupError
from src.infra.backup.monitoring.status import collect_status, stale_threshold
from src.infra.backup.repository.history import VERIFY_MAX_AGE

HealthStatus = Literal["green", "yellow", "red"]
_RANK = {"green": 0, "yellow": 1, "red": 2}


@dataclass(frozen=True)
class HealthResult:
    """``status`` is ``"green"``, ``"yellow"`` or ``"red"``; ``message`` says why (the
    worst findings first); ``details`` carries the numbers."""

    status: HealthStatus
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "green"


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f}h"


def check_backup_health(
    manager: BackupManager, *, max_age: timedelta | None = None, now: datetime | None = None
) -> HealthResult:
    """Rate the backups of ``manager``'s repository (see the module docstring)."""
    try:
        summary = collect_status(manager, now=now)
    except BackupError as exc:
        return HealthResult("red", f"backup status unreadable: {exc}", {"error": str(exc)})
    red_after = stale_threshold(manager, max_age)
    yellow_after = min(timedelta(hours=manager.config.interval_hours), red_after)
    findings: list[tuple[HealthStatus, str]] = []
    newest = summary.newest_success
    details: dict[str, Any] = {
        "stale_after_seconds": red_after.total_seconds(),
        "interval_seconds": yellow_after.total_seconds(),
        "repository_size_bytes": summary.repository_size_bytes,
        "newest_backup_id": newest.backup_id if newest else None,
        "newest_backup_age_seconds": summary.age(newest.time).total_seconds() if newest else None,
        "failing_types": summary.failing_types,
        "last_verify": summary.last_verify.to_json() if summary.last_verify else None,
    }
    if newest is None:
        findings.append(("red", "no backup at all"))
    else:
        age = summary.age(newest.time)
        if age > red_after:
            findings.append(
                (
                    "red",
                    f"newest backup {newest.backup_id} is {_hours(age)} old "
                    f"(stale after {_hours(red_after)})",
                )
            )
        elif age > yellow_after:
            findings.append(
                (
                    "yellow",
                    f"newest backup {newest.backup_id} is {_hours(age)} old "
                    f"(interval {_hours(yellow_after)})",
                )
            )
    for name in summary.failing_types:
        failure = summary.types[name].last_failure
        error = failure.error if failure else ""
        findings.append(("red", f"last {name} backup failed: {error}"))
    verify = summary.last_verify
    if verify is None:
        findings.append(("yellow", "no verify recorded"))
    elif not verify.ok:
        findings.append(("red", f"last verify of {verify.backup_id} failed"))
    elif summary.age(verify.time) > VERIFY_MAX_AGE:
        findings.append(("yellow", f"last verify is {summary.age(verify.time).days} days old"))
    # Behind off-site, or backups stranded in the fallback: safe locally, but not yet where
    # they should be.
    for problem in (summary.offsite_problem, summary.fallback_problem):
        if problem:
            findings.append(("yellow", problem))
    if summary.offsite is not None:
        details["offsite"] = summary.offsite.to_json(summary.now)
    if summary.fallback is not None:
        details["fallback"] = summary.fallback.to_json(summary.now)
    if not findings:
        assert newest is not None
        return HealthResult(
            "green",
            f"newest backup {newest.backup_id} is {_hours(summary.age(newest.time))} old, "
            "last verify ok",
            details,
        )
    findings.sort(key=lambda f: -_RANK[f[0]])
    return HealthResult(findings[0][0], "; ".join(text for _, text in findings), details)


class BackupHealthCheck:
    """The backup check for a generic health checker: ``name`` and ``run()``."""

    name = "backup"

    def __init__(self, manager: BackupManager, *, max_age: timedelta | None = None) -> None:
        self.manager = manager
        self.max_age = max_age

    def run(self) -> HealthResult:
        try:
            return check_backup_health(self.manager, max_age=self.max_age)
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            return HealthResult("red", f"backup health check failed: {exc}", {"error": str(exc)})
