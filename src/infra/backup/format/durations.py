"""Durations and times of day as people write them in config files and messages: ``90s``,
``30m``, ``1.5h``, ``2d``, ``1w``; ``02:00``; ``sun 03:00``. Pure text codecs, no I/O.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"1.5h"``, ``"2d"``, ``"1w"`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: expected a number with a unit, e.g. 30s, 10m, 1h, 2d"
        )
    return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"])


_CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_daily_at(text: str) -> str:
    """``"02:00"`` (24-hour ``HH:MM``, local time) -> ``"02:00"``."""
    if not _CLOCK_TIME.match(text.strip()):
        raise ValueError('expected a time of day as HH:MM (24-hour), e.g. "02:00"')
    return text.strip()


def parse_weekly(text: str) -> tuple[str, str]:
    """``"sun 03:00"`` (or ``"sunday 03:00"``) -> ``("sunday", "03:00")``."""
    parts = text.strip().lower().split()
    days = [
        d for d in WEEKDAYS if len(parts) == 2 and len(parts[0]) >= 3 and d.startswith(parts[0])
    ]
    if len(parts) != 2 or len(days) != 1 or not _CLOCK_TIME.match(parts[1]):
        raise ValueError(
            'expected a weekday and a time of day, e.g. "sun 03:00" '
            "(mon, tue, wed, thu, fri, sat, sun; 24-hour HH:MM)"
        )
    return days[0], parts[1]


def format_duration(duration: timedelta) -> str:
    """``30d``, ``12h``, ``90m``, ``45s`` — the largest unit that divides it."""
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
