"""What a replica should hold and how far behind it is: pure decisions over backup summaries.

Knows nothing of stores or repositories: callers list the summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from src.infra.backup.format.index import Summary
from src.infra.backup.policy.retention import RetentionPolicy, apply_policy


@dataclass
class ReplicaLag:
    """Backups one repository has that its replica lacks (and should have)."""

    location: str
    pending: list[str] = field(default_factory=list)
    oldest_utc: datetime | None = None
    error: str | None = None

    def age(self, now: datetime) -> timedelta | None:
        return now - self.oldest_utc if self.oldest_utc else None

    def to_json(self, now: datetime) -> dict[str, Any]:
        age = self.age(now)
        return {
            "location": self.location,
            "pending_backups": len(self.pending),
            "pending": self.pending,
            "oldest_pending_utc": self.oldest_utc.isoformat() if self.oldest_utc else None,
            "oldest_pending_age_seconds": age.total_seconds() if age else None,
            "error": self.error,
        }


def wanted_by_replica(
    source: list[Summary],
    replica: list[Summary],
    policy: dict[str, RetentionPolicy] | None,
    now: datetime,
) -> list[Summary]:
    """The source backups the replica should receive: all, or those its retention policy
    keeps among the union of both histories."""
    if policy is None:
        return source
    union = {s.backup_id: s for s in replica}
    union.update({s.backup_id: s for s in source})
    keep = {d.backup_id for d in apply_policy(list(union.values()), policy, now) if d.keep}
    return [s for s in source if s.backup_id in keep]
