"""The grammar of names the repository stores: backup types, backup ids, entry names, tags.

One place for every pattern, so the repository, the configuration, export/import and the
manager agree on what a valid name is. A backup id is ``<type>_<YYYYmmdd>_<HHMMSS>`` with an
optional collision suffix ``_<n>`` (n ≥ 2, given to the second backup of a type within one
second); ids written by other tools only need to match :data:`BACKUP_ID_PATTERN`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from src.infra.backup.errors import InvalidInputError

BACKUP_TYPE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BACKUP_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
# <type>_<date>_<time>[_<n>]: the shape this tool gives ids (export metadata must have it).
ID_SHAPE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63})_(\d{8}_\d{6})(?:_([1-9]\d{0,8}))?$")
_STAMP_AND_SUFFIX = re.compile(r"\d{8}_\d{6}(?:_[1-9]\d{0,8})?")
_ID_TIME = re.compile(r"_(\d{8}_\d{6})(?:_(\d+))?$")
ENTRY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
TAG_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_TAG_VALUE = 256
MAX_NOTE = 4096


def is_valid_backup_type(backup_type: object) -> bool:
    """Whether ``backup_type`` is a valid type name (``pre_trade``, ``daily``...)."""
    return isinstance(backup_type, str) and bool(BACKUP_TYPE_PATTERN.match(backup_type))


def validate_backup_type(backup_type: object) -> str:
    """Return ``backup_type`` if it is a valid type name, else raise :class:`InvalidInputError`."""
    if not is_valid_backup_type(backup_type):
        raise InvalidInputError(
            f"invalid backup type {backup_type!r}: use 1-64 lowercase letters, digits, '_' or "
            "'-', starting with a letter or digit (e.g. 'pre_trade')"
        )
    assert isinstance(backup_type, str)
    return backup_type


def is_valid_backup_id(backup_id: object) -> bool:
    """Whether ``backup_id`` has the shape of a backup id (no path separators, no ``..``)."""
    return isinstance(backup_id, str) and bool(BACKUP_ID_PATTERN.match(backup_id))


def new_backup_id(backup_type: str, stamp: str) -> str:
    """The id of a backup of ``backup_type`` taken at ``stamp`` (``YYYYmmdd_HHMMSS``)."""
    return f"{backup_type}_{stamp}"


def id_sort_key(backup_id: str) -> tuple[str, int, str]:
    """Order ids by the time and collision suffix they carry (``manual_20251217_214030_2``)."""
    match = _ID_TIME.search(backup_id)
    if not match:
        return ("", 0, backup_id)
    return (match.group(1), int(match.group(2) or 1), backup_id)


def next_id(backup_id: str) -> str:
    """The id to try when ``backup_id`` is taken: ``manual_20251217_214030`` ->
    ``manual_20251217_214030_2`` -> ``..._3``."""
    match = _ID_TIME.search(backup_id)
    if match and match.group(2):
        return f"{backup_id[: match.start(2) - 1]}_{int(match.group(2)) + 1}"
    return f"{backup_id}_2"


def type_of_id(backup_id: str) -> str:
    """The backup type an id of this tool's shape starts with (the id itself otherwise)."""
    return _ID_TIME.sub("", backup_id)


def split_backup_id(backup_id: str) -> tuple[str, str] | None:
    """``(type, "YYYYmmdd_HHMMSS")`` of an id of this tool's shape, else ``None``."""
    match = ID_SHAPE.match(backup_id)
    return (match.group(1), match.group(2)) if match else None


def is_id_of_type(backup_id: str, backup_type: str) -> bool:
    """Whether ``backup_id`` is ``<backup_type>_<YYYYmmdd_HHMMSS>[_<n>]``."""
    prefix = backup_type + "_"
    return backup_id.startswith(prefix) and bool(
        _STAMP_AND_SUFFIX.fullmatch(backup_id[len(prefix) :])
    )


def validate_entry_name(name: object) -> str:
    """Data keys become entry names and ``<key>.json`` files: keep them filename-safe."""
    if not isinstance(name, str) or not ENTRY_NAME_PATTERN.match(name):
        raise InvalidInputError(
            f"invalid data key {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_'"
        )
    return name


def tag_problem(key: object, value: object) -> str | None:
    """Why ``key = value`` is not a valid tag, or ``None`` if it is."""
    if not isinstance(key, str) or not TAG_KEY_PATTERN.match(key):
        return f"invalid tag name {key!r}: use letters, digits, '_-.'"
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE or "\0" in value:
        return f"invalid value for tag {key!r}: a string of at most {MAX_TAG_VALUE} chars"
    return None


def validate_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """The tags as a plain dict; :class:`InvalidInputError` naming the first bad one."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidInputError(f"tags must be a mapping of str to str, not {type(tags).__name__}")
    for key, value in tags.items():
        problem = tag_problem(key, value)
        if problem:
            raise InvalidInputError(problem)
    return dict(tags)


def note_problem(note: object) -> str | None:
    """Why ``note`` is not a valid backup note, or ``None`` if it is."""
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        return f"note must be a string of at most {MAX_NOTE} characters"
    return None
