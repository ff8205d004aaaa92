"""Retention: a pure function from backups and a policy to keep/forget decisions with reasons.

It never forgets the newest backup of any type, and never a backup dated in the future (a clock
jump must not push good backups out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know of a backup."""

    backup_id: str
    backup_type: str
    time_utc: datetime


@dataclass(frozen=True)
class Decision:
    """Keep or forget one backup, and the rule that decided it."""

    backup_id: str
    keep: bool
    reason: str


def apply_retention_days(
    snapshots: Sequence[SnapshotRef],
    retention_days: int,
    now_utc: datetime,
    *,
    protect: Sequence[str] = (),
) -> list[Decision]:
    """Forget backups older than ``retention_days`` (``<= 0``: keep everything).

    ``protect`` names backups that are kept whatever their age (e.g. the one just created).
    """
    newest_of_type: dict[str, SnapshotRef] = {}
    for snap in snapshots:
        best = newest_of_type.get(snap.backup_type)
        if best is None or (snap.time_utc, snap.backup_id) > (best.time_utc, best.backup_id):
            newest_of_type[snap.backup_type] = snap
    newest_ids = {snap.backup_id for snap in newest_of_type.values()}
    cutoff = now_utc - timedelta(days=retention_days)
    decisions = []
    for snap in snapshots:
        if retention_days <= 0:
            decision = Decision(snap.backup_id, True, "retention is off (retention_days <= 0)")
        elif snap.backup_id in protect:
            decision = Decision(snap.backup_id, True, "protected (just created)")
        elif snap.backup_id in newest_ids:
            decision = Decision(snap.backup_id, True, f"newest {snap.backup_type} backup")
        elif snap.time_utc > now_utc:
            decision = Decision(snap.backup_id, True, "dated in the future (clock jump?)")
        elif snap.time_utc >= cutoff:
            decision = Decision(snap.backup_id, True, f"within {retention_days} days")
        else:
            decision = Decision(snap.backup_id, False, f"older than {retention_days} days")
        decisions.append(decision)
    return decisions
