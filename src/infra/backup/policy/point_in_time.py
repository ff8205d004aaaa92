"""Point-in-time selection: parse a moment (ISO text or datetime) and pick backups by time.

A moment without a zone is local time. As an upper bound (``--at``, ``--until``) a moment
given to the second covers that whole second (backup times carry microseconds, ids and
listings show seconds), and a date alone covers its whole day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from typing import Protocol, TypeVar

from src.infra.backup.errors import InvalidInputError

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FRACTION = re.compile(r"\d:\d{2}[.,]\d")


class _Timed(Protocol):
    @property
    def timestamp_utc(self) -> datetime: ...


_T = TypeVar("_T", bound=_Timed)


def parse_moment(when: str | datetime | date, *, upper: bool = False) -> datetime:
    """``when`` as a timezone-aware datetime.

    Accepts a datetime (naive = local time), a date (its start; its end with ``upper``), or
    ISO text: ``2025-12-17 10:00``, ``2025-12-17T10:00:00+01:00``, ``...Z``, ``2025-12-17``.
    With ``upper`` a text without fractional seconds is widened to the end of its second,
    and a date alone to the end of its day. Anything else is an :class:`InvalidInputError`.
    """
    if isinstance(when, datetime):
        return when if when.utcoffset() is not None else when.astimezone()
    if isinstance(when, date):
        start = datetime.combine(when, time())
        return (start + timedelta(days=1, microseconds=-1) if upper else start).astimezone()
    if not isinstance(when, str):
        raise InvalidInputError(f"expected a date/time or ISO text, not {type(when).__name__}")
    text = when.strip()
    if _DATE_ONLY.match(text):
        try:
            return parse_moment(date.fromisoformat(text), upper=upper)
        except ValueError:
            pass  # reported below
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise InvalidInputError(
            f"{when!r} is not a date/time: use ISO format, e.g. '2025-12-17 10:00', "
            "'2025-12-17T10:00:00+01:00' or '2025-12-17'"
        ) from None
    if upper and not _FRACTION.search(text):
        moment += timedelta(microseconds=999_999)
    return moment if moment.utcoffset() is not None else moment.astimezone()


def select_between(
    items: Iterable[_T],
    since: str | datetime | date | None = None,
    until: str | datetime | date | None = None,
) -> list[_T]:
    """The items (backups with ``timestamp_utc``) from ``since`` to ``until``, both inclusive,
    in their given order."""
    low = parse_moment(since) if since is not None else None
    high = parse_moment(until, upper=True) if until is not None else None
    return [
        item
        for item in items
        if (low is None or item.timestamp_utc >= low)
        and (high is None or item.timestamp_utc <= high)
    ]


__all__ = ["parse_moment", "select_between"]
