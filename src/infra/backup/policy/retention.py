"""Retention: a pure function from backups and a policy to keep/forget decisions with reasons.

Two forms:

- :func:`apply_retention_days` — the seed's ``retention_days``: forget backups older than N days.
- :func:`apply_policy` — restic-style rules per backup type (``keep_last``, ``keep_hourly``,
  ``keep_daily``, ``keep_weekly``, ``keep_monthly``, ``keep_yearly``, ``keep_within``,
  ``keep_tags``). Periods follow calendar boundaries in the policy's time zone:
  ``keep_daily = N`` keeps the newest backup of each of the last N days that have backups
  (hours, ISO weeks, months and years alike). Every reason that keeps a backup is reported.

Both never forget the newest backup of any type, nor a backup dated in the future (a clock jump
must not push good backups out: such backups are kept and left out of the bucket counting).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

from src.infra.backup.format.durations import format_duration

#: Key of ``policy_by_type`` that applies to types without their own policy.
DEFAULT_POLICY = "*"

BUCKET_RULES = ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
COUNT_RULES = ("keep_last", *BUCKET_RULES)


class RetentionCandidate(Protocol):
    """What retention needs to know of a backup (a :class:`SnapshotRef`, or a repository's
    summary, which has the same attributes)."""

    @property
    def backup_id(self) -> str: ...
    @property
    def backup_type(self) -> str: ...
    @property
    def time_utc(self) -> datetime: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know of a backup."""

    backup_id: str
    backup_type: str
    time_utc: datetime
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Decision:
    """Keep or forget one backup, and the rule that decided it."""

    backup_id: str
    keep: bool
    reason: str


@dataclass(frozen=True)
class RetentionPolicy:
    """Rules for one backup type. A count of ``None`` means the rule is not set.

    ``keep_within`` keeps every backup younger than that (relative to now);
    ``keep_tags`` keeps backups having one of these tags (``"key"`` matches any value,
    ``"key=value"`` only that value). ``timezone``: an IANA name for the calendar periods,
    ``None`` for the local time zone.
    """

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: timedelta | None = None
    keep_tags: tuple[str, ...] = ()
    timezone: str | None = None

    def __post_init__(self) -> None:
        for name in COUNT_RULES:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} = {value!r}: expected a whole number >= 1")
        if self.keep_within is not None and (
            not isinstance(self.keep_within, timedelta) or self.keep_within <= timedelta(0)
        ):
            raise ValueError(f"keep_within = {self.keep_within!r}: expected a positive duration")
        object.__setattr__(self, "keep_tags", tuple(self.keep_tags))
        for tag in self.keep_tags:
            if not isinstance(tag, str) or not tag.strip():
                raise ValueError(f"keep_tags contains {tag!r}: expected 'key' or 'key=value'")
        if self.timezone is not None:
            zone_of(self.timezone)  # raises ValueError for an unknown zone

    @property
    def empty(self) -> bool:
        """No rule at all (such a policy is refused by the config)."""
        return (
            all(getattr(self, name) is None for name in COUNT_RULES)
            and self.keep_within is None
            and not self.keep_tags
        )

    def describe(self) -> str:
        """The rules, e.g. ``"daily 7, within 30d"``."""
        parts = [
            f"{name.removeprefix('keep_')} {getattr(self, name)}"
            for name in COUNT_RULES
            if getattr(self, name) is not None
        ]
        if self.keep_within is not None:
            parts.append(f"within {format_duration(self.keep_within)}")
        if self.keep_tags:
            parts.append("tags " + ", ".join(self.keep_tags))
        return ", ".join(parts) or "no rules"


def zone_of(name: str | None) -> tzinfo | None:
    """The ``tzinfo`` of an IANA name (``None``: local time); ``ValueError`` if unknown."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"unknown time zone {name!r}: expected e.g. 'Europe/Berlin'") from exc


# The calendar period of a local time (wall clock: in the hour repeated when clocks go back,
# both passes share one bucket, as in restic), and how a kept bucket is named in reasons.
_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar())[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: (t.year,),
}
_LABELS: dict[str, Callable[[tuple[int, ...]], str]] = {
    "keep_hourly": lambda b: "hourly {:04d}-{:02d}-{:02d} {:02d}:00".format(*b),
    "keep_daily": lambda b: "daily {:04d}-{:02d}-{:02d}".format(*b),
    "keep_weekly": lambda b: "weekly {:04d}-W{:02d}".format(*b),
    "keep_monthly": lambda b: "monthly {:04d}-{:02d}".format(*b),
    "keep_yearly": lambda b: "yearly {:04d}".format(*b),
}


def _tag_matches(tags: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    if not sep:
        return wanted in tags
    return tags.get(key) == value


def _order_key(snap: RetentionCandidate) -> tuple[datetime, str]:
    return (snap.time_utc, snap.backup_id)


def apply_policy(
    snapshots: Sequence[RetentionCandidate],
    policy_by_type: Mapping[str, RetentionPolicy],
    now_utc: datetime,
    *,
    protect: Collection[str] = (),
) -> list[Decision]:
    """Keep or forget each snapshot (one decision each, in the order given).

    ``policy_by_type`` maps a backup type to its policy; :data:`DEFAULT_POLICY` (``"*"``)
    applies to types without their own, and a type with neither keeps everything. Each type is
    counted separately, newest first. ``protect`` names backups kept whatever the policy.
    """
    protected = set(protect)
    by_type: dict[str, list[RetentionCandidate]] = {}
    for snap in snapshots:
        by_type.setdefault(snap.backup_type, []).append(snap)
    reasons: dict[str, list[str]] = {}
    for backup_type, group in by_type.items():
        policy = policy_by_type.get(backup_type, policy_by_type.get(DEFAULT_POLICY))
        current = sorted((s for s in group if s.time_utc <= now_utc), key=_order_key, reverse=True)
        for snap in group:
            reasons[snap.backup_id] = []  # a repeated id: the last occurrence decides
            if snap.time_utc > now_utc:
                reasons[snap.backup_id].append("dated in the future")
        if current:
            reasons[current[0].backup_id].append(f"newest {backup_type} backup")
        if policy is None:
            for snap in current:
                reasons[snap.backup_id].append(f"no retention policy for {backup_type}")
            continue
        zone = zone_of(policy.timezone)
        within = policy.keep_within
        cutoff = now_utc - within if within is not None else None
        within_label = f"within {format_duration(within)}" if within is not None else ""
        rules = [name for name in BUCKET_RULES if getattr(policy, name) is not None]
        remaining = {name: getattr(policy, name) for name in rules}
        last_bucket: dict[str, tuple[int, ...]] = {}
        for index, snap in enumerate(current):
            why = reasons[snap.backup_id]
            if policy.keep_last is not None and index < policy.keep_last:
                why.append(f"last {index + 1}")
            active = [name for name in rules if remaining[name] > 0]
            if active:
                local = snap.time_utc.astimezone(zone)
                for name in active:
                    bucket = _BUCKETS[name](local)
                    if bucket != last_bucket.get(name):
                        last_bucket[name] = bucket
                        remaining[name] -= 1
                        why.append(_LABELS[name](bucket))
            if cutoff is not None and snap.time_utc >= cutoff:
                why.append(within_label)
            for tag in policy.keep_tags:
                if _tag_matches(snap.tags, tag):
                    why.append(f"tag {tag}")
    described: dict[str, str] = {}
    decisions = []
    for snap in snapshots:
        why = reasons[snap.backup_id]
        if snap.backup_id in protected:
            why = [*why, "protected"]
        if why:
            decisions.append(Decision(snap.backup_id, True, "; ".join(why)))
        else:
            if snap.backup_type not in described:
                found = policy_by_type.get(snap.backup_type, policy_by_type.get(DEFAULT_POLICY))
                rules_text = found.describe() if found is not None else "no rules"
                described[snap.backup_type] = f"no rule keeps it ({rules_text})"
            decisions.append(Decision(snap.backup_id, False, described[snap.backup_type]))
    return decisions


def apply_retention_days(
    snapshots: Sequence[RetentionCandidate],
    retention_days: int,
    now_utc: datetime,
    *,
    protect: Collection[str] = (),
) -> list[Decision]:
    """Forget backups older than ``retention_days`` (``<= 0``: keep everything).

    ``protect`` names backups that are kept whatever their age (e.g. the one just created).
    """
    newest_of_type: dict[str, RetentionCandidate] = {}
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
