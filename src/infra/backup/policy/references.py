"""Backup references: names for a backup relative to the others (``latest``, ``pre_trade~2``,
``@2025-12-17 10:00``), resolved to one id or refused, never guessed.

Grammar (a backup id never contains ``~`` or ``@``, so the two cannot be confused)::

    latest                 the newest backup (of any type)
    latest~N               the N-th before the newest (latest~0 = latest)
    TYPE@latest            the newest backup of TYPE
    TYPE~N, TYPE@latest~N  the N-th before the newest of TYPE
    @TIME, TYPE@TIME       the newest (of TYPE) taken at or before TIME
    @TIME~N, TYPE@TIME~N   the N-th before that one

TIME is read as ``restore --at`` reads it (:func:`point_in_time.parse_moment` with ``upper``):
ISO 8601 with or without an offset (``Z`` = UTC), ``YYYY-mm-dd HH:MM[:SS]``; without an offset
it is local time, and a local time the clock skips or shows twice (a DST change) is refused
as ambiguous; a time to the second covers that second, a date alone its whole day.

Anything else is a plain id and resolves to itself without a listing. The word ``latest``
alone is always the reference (a backup whose id is ``latest``, which this tool never makes,
is reached as a type: ``latest@latest``). ``latest`` is the newest backup listed, damaged or
not (``restore`` without an id is what skips damaged ones). Two backups taken at the very same
instant (imports) that a reference cannot tell apart make it ambiguous: an error naming both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from src.infra.backup.errors import BackupNotFoundError, InvalidInputError
from src.infra.backup.format.ids import id_sort_key, is_valid_backup_type
from src.infra.backup.policy.point_in_time import parse_moment

LATEST = "latest"
_OFFSET = re.compile(r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SYNTAX = "latest, latest~N, TYPE@latest, TYPE~N, @TIME, TYPE@TIME (each with an optional ~N)"


class Listed(Protocol):
    """What resolving needs of a backup (a ``BackupInfo``)."""

    @property
    def backup_id(self) -> str: ...
    @property
    def backup_type(self) -> str: ...
    @property
    def timestamp_utc(self) -> datetime: ...


@dataclass(frozen=True)
class Reference:
    """A parsed reference: of ``backup_type`` (``None``: any), at or before ``until``
    (``None``: now and later too), the ``back``-th before the newest such backup."""

    text: str
    backup_type: str | None
    until: datetime | None
    back: int
    when: str | None = None  # TIME as given


def is_reference(text: str) -> bool:
    """Whether ``text`` is a reference rather than a plain backup id."""
    return text == LATEST or "~" in text or "@" in text


def parse_reference(text: str) -> Reference:
    """``text`` parsed; :class:`InvalidInputError` naming the reference and the syntax."""

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"invalid backup reference {text!r}: {why} (use {SYNTAX})")

    base, tilde, count = text.partition("~")
    back = 0
    if tilde:
        if not count.isdigit() or not count.isascii() or len(count) > 9:
            raise bad(f"~ must be followed by a number, not {count!r}")
        back = int(count)
    backup_type: str | None
    until = when = None
    if "@" in base:
        backup_type, _, when = base.partition("@")
        backup_type = backup_type or None
        if not when:
            raise bad("@ must be followed by 'latest' or a time")
        if when != LATEST:
            until = _moment(when, bad)
    elif base == LATEST:
        backup_type = None
    elif tilde:
        backup_type = base
    else:
        raise bad("not a reference")
    if backup_type is not None and not is_valid_backup_type(backup_type):
        raise bad(f"{backup_type!r} is not a backup type")
    return Reference(text, backup_type, until, back, when if until is not None else None)


def _moment(when: str, bad: Callable[[str], InvalidInputError]) -> datetime:
    """TIME of a reference as an aware upper bound; a naive local time the clock skipped or
    showed twice is refused (which instant was meant cannot be told)."""
    text = when.strip()
    try:
        moment = parse_moment(text, upper=True)
    except InvalidInputError as exc:
        raise bad(str(exc)) from None
    if not _OFFSET.search(text) and not _DATE_ONLY.match(text):
        naive = datetime.fromisoformat(text)  # as given: parse_moment moved a skipped time
        first = naive.replace(fold=0).astimezone()
        second = naive.replace(fold=1).astimezone()
        if first.utcoffset() != second.utcoffset():
            raise BackupNotFoundError(
                f"backup reference {when!r} is ambiguous: the local time {text} "
                "is skipped or occurs twice here (a daylight saving change); give an offset, "
                f"e.g. @{naive:%Y-%m-%dT%H:%M:%S}{first:%z}"
            )
    return moment


def select(reference: Reference, backups: Sequence[Listed]) -> str:
    """The id ``reference`` names among ``backups`` (any order); :class:`BackupNotFoundError`
    if none or if two backups tie for it."""
    candidates = sorted(
        (
            b
            for b in backups
            if (reference.backup_type is None or b.backup_type == reference.backup_type)
            and (reference.until is None or b.timestamp_utc <= reference.until)
        ),
        key=lambda b: (b.timestamp_utc, id_sort_key(b.backup_id)),
        reverse=True,
    )
    of_type = f" of type {reference.backup_type!r}" if reference.backup_type else ""
    when = ""
    if reference.until is not None:
        when = f" taken at or before {reference.when} ({reference.until:%Y-%m-%d %H:%M:%S %z})"
    if reference.back >= len(candidates):
        if not candidates:
            known = sorted({b.backup_type for b in backups})
            what = f"types: {', '.join(known)}" if known else "the repository has no backups"
            raise BackupNotFoundError(
                f"backup reference {reference.text!r}: no backup{of_type}{when} ({what})"
            )
        raise BackupNotFoundError(
            f"backup reference {reference.text!r}: only {len(candidates)} backup"
            f"{'s' if len(candidates) != 1 else ''}{of_type}{when} "
            f"(the oldest is {reference.text.partition('~')[0]}~{len(candidates) - 1}: "
            f"{candidates[-1].backup_id})"
        )
    chosen = candidates[reference.back]
    ties = [
        b.backup_id
        for b in candidates
        if b.timestamp_utc == chosen.timestamp_utc and b.backup_id != chosen.backup_id
    ]
    if ties:
        raise BackupNotFoundError(
            f"backup reference {reference.text!r} is ambiguous: {chosen.backup_id} and "
            f"{', '.join(ties)} were taken at the same instant; use an id"
        )
    return chosen.backup_id


def resolve_reference(text: str, list_backups: Callable[[], Sequence[Listed]]) -> str:
    """The backup id ``text`` names: a plain id itself (no listing), a reference through one
    listing of every backup (``list_backups()``, in any order: an error names what exists)."""
    if not is_reference(text):
        return text
    return select(parse_reference(text), list_backups())


__all__ = ["Reference", "is_reference", "parse_reference", "resolve_reference", "select"]
