"""Maintenance: deleting backups (checked: never the last good one, nor a pinned one, unasked),
retention planning (pinned backups are always kept; also on the path of every backup, kept
cheap with thousands of backups) and its deletions, garbage collection (logged), and garbage
collection in the background after retention deleted backups (``auto_prune``), at most once
per grace period per process, never delaying the caller and never failing a backup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.app.pins import drop_pin, is_pinned, pinned_ids
from src.infra.backup.errors import BackupError, BackupNotFoundError, RepositoryBusyError
from src.infra.backup.format.ids import id_sort_key, is_valid_backup_id, type_of_id
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


def keep_pinned(decisions: Sequence[Decision], pinned: Collection[str]) -> list[Decision]:
    """``decisions`` with every pinned backup kept (reason ``pinned``). Pinned backups still
    count for the rules (a pinned backup that is one of the ``keep_last`` is that one), so a
    pin keeps one backup more and never changes what happens to the others."""
    return [
        d
        if d.backup_id not in pinned
        else Decision(d.backup_id, True, f"{d.reason}; pinned" if d.keep else "pinned")
        for d in decisions
    ]


def _plan(
    repository: Repository,
    config: BackupConfig,
    snapshots: Sequence[RetentionCandidate],
    protect: Sequence[str],
) -> list[Decision]:
    """:func:`plan_retention` with the pins applied; the pins are listed (one request) only
    when the plan would forget a backup."""
    decisions = plan_retention(config, snapshots, protect=protect)
    if all(d.keep for d in decisions):
        return decisions
    return keep_pinned(decisions, pinned_ids(repository))


# Up to this many backups a plan rests on are checked with a stat each; more, and one
# validated listing of all manifests is cheaper.
CHECK_ONE_BY_ONE = 1_000


def plan_checked(
    repository: Repository, config: BackupConfig, *, protect: Sequence[str]
) -> list[Decision]:
    """Retention planned on a names-only listing (no stat per manifest: fast with 100,000
    backups). Such a listing may show a stale summary for an id deleted and written again, so
    what the plan rests on is checked against the stored manifests (a stat each): the backups
    it forgets, and under a policy also the ones it keeps (they decide which others go). If
    any changed, the plan is made again on a validated listing."""
    listed = repository.list_summaries(validate=False)
    decisions = _plan(repository, config, listed, protect)
    forget = [d.backup_id for d in decisions if not d.keep]
    if not forget:
        return decisions
    rests_on = [d.backup_id for d in decisions] if config.retention is not None else forget
    if len(rests_on) <= CHECK_ONE_BY_ONE and all(map(repository.summary_is_current, rests_on)):
        return decisions
    validated = repository.list_summaries()
    if validated == listed:  # the same summaries: the same plan
        return decisions
    return _plan(repository, config, validated, protect)


def plan_after_create(repository: Repository, config: BackupConfig, new_id: str) -> list[Decision]:
    """Retention on the path of every backup. With ``retention_days`` alone nothing can be due
    while the oldest backup of this process's last listing is younger than the cutoff, so no
    listing is made then (backups that other processes add with older times wait for the next
    plan: keeping longer is safe). Otherwise :func:`plan_checked`."""
    if config.retention is None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=config.retention_days)
        oldest = repository.catalog.oldest_listed()
        if oldest is not None and oldest >= cutoff:
            return []
    return plan_checked(repository, config, protect=[new_id])


def is_last_good(repository: Repository, backup_id: str) -> bool:
    """Whether ``backup_id`` verifies (structure only) and no other backup does: deleting it
    would leave no good backup. A damaged backup can always go."""
    if not repository.verify_snapshot(backup_id, read_data=False).ok:
        return False
    others = sorted(
        (i for i in repository.snapshot_ids() if i != backup_id), key=id_sort_key, reverse=True
    )
    return not any(repository.verify_snapshot(i, read_data=False).ok for i in others)


def delete_checked(repository: Repository, backup_id: str, *, force: bool = False) -> None:
    """Delete a backup; refuse the last good one and a pinned one unless ``force``
    (``delete_backup``). With ``force`` a pinned backup goes, and then its pin."""
    if not is_valid_backup_id(backup_id) or backup_id not in repository.snapshot_ids():
        raise BackupNotFoundError(f"backup not found: {backup_id}")
    pinned = is_pinned(repository, backup_id)
    if pinned and not force:
        raise BackupError(
            f"refusing to delete {backup_id}: it is pinned (unpin it first, or pass "
            "force=True, or --force on the command line)"
        )
    if not force and is_last_good(repository, backup_id):
        raise BackupError(
            f"refusing to delete {backup_id}: it is the last good backup "
            "(pass force=True, or --force on the command line)"
        )
    repository.delete_snapshot(backup_id)
    if pinned:
        drop_pin(repository, backup_id)
    fields = {"backup_id": backup_id, "backup_type": type_of_id(backup_id), "outcome": "deleted"}
    log.info("backup %s deleted", backup_id, extra=fields)


def delete_forgotten(
    repository: Repository, decisions: Sequence[Decision], *, label: str = "retention"
) -> list[str]:
    """Delete the backups ``decisions`` forget (those deleted concurrently are skipped, and
    those pinned since the plan: each is checked right before its delete); returns the ids
    deleted. ``label`` names the deleter in the log."""
    deleted = []
    for decision in decisions:
        if not decision.keep:
            if is_pinned(repository, decision.backup_id):
                log.info("%s kept %s: pinned", label, decision.backup_id)
                continue
            try:
                repository.delete_snapshot(decision.backup_id)
            except BackupNotFoundError:
                continue  # deleted concurrently
            deleted.append(decision.backup_id)
            log.info("%s deleted %s: %s", label, decision.backup_id, decision.reason)
    return deleted


def prune_logged(
    repository: Repository, *, grace: timedelta, dry_run: bool, lock_wait: float
) -> PruneReport:
    """``gc.prune``, with its outcome logged (duration, bytes freed)."""
    from src.infra.backup.repository.gc import prune

    started = time.monotonic()
    report = prune(repository, grace=grace, dry_run=dry_run, lock_wait=lock_wait)
    log.info(
        "prune: %d chunks deleted, %d bytes freed",
        report.deleted,
        report.freed_bytes,
        extra={
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "size_bytes": report.freed_bytes,
            "outcome": "pruned" if not dry_run else "prune_dry_run",
        },
    )
    return report
