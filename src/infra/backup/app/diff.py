"""Differences between two backups, or between a backup and the files on disk now.

Three levels:

- :func:`diff_values` compares two Python values structurally and returns one
  :class:`Change` per difference, each named by a path such as ``portfolio.equity`` or
  ``portfolio.positions[BTC/USD].size``. Lists whose items are all dicts sharing a natural
  key (``symbol``, ``id``, ... unique within each list) are matched by that key, so inserting
  a position does not report every later one as changed; other lists are matched by index.
- :func:`diff_backups` compares two backups entry by entry: data entries whose chunk ids
  differ are decoded and compared with :func:`diff_values`; file entries are "changed" when
  their chunk ids differ (no content is read) and report their sizes.
- :func:`diff_against_sources` compares a backup's file entries with the configured
  ``[backup] sources`` as they are now. Data entries cannot be compared with "now"; they are
  listed in :attr:`DiffResult.skipped`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from src.infra.backup.app.manager import BackupManager
from src.infra.backup.errors import InvalidInputError
from src.infra.backup.files.sources import collect_sources
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.format.values import to_jsonable
from src.infra.backup.repository.repository import Repository

ChangeKind = Literal["added", "removed", "changed"]

DEFAULT_MAX_CHANGES = 200
"""How many changes a :class:`DiffResult` keeps (and the CLI prints) by default."""

NATURAL_KEYS: tuple[str, ...] = ("symbol", "id", "uuid", "trade_id", "order_id", "key", "name")
"""Dict fields tried, in this order, to match the items of two lists of dicts. A field
qualifies if every item of both lists is a dict holding it, with a hashable value that is
unique within its list."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_RENDER = 120


@dataclass(frozen=True)
class Change:
    """One difference: ``path`` was ``added`` (``new``), ``removed`` (``old``) or ``changed``
    (``old`` -> ``new``; a change of type is a change too).

    For file entries (``is_file``), ``old``/``new`` are ``{"size": <bytes>}`` (``None`` on
    the side where the file does not exist).
    """

    path: str
    kind: ChangeKind
    old: Any = None
    new: Any = None
    is_file: bool = False

    def to_json(self) -> dict[str, Any]:
        """``{path, kind, old, new}`` with the values made JSON-friendly (``to_jsonable``)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "old": to_jsonable(self.old),
            "new": to_jsonable(self.new),
        }

    def render(self) -> str:
        """One line for people, e.g. ``portfolio.equity: 10000 -> 9500``."""
        if self.is_file:
            old_size = self.old["size"] if self.old else 0
            new_size = self.new["size"] if self.new else 0
            if self.kind == "added":
                return f"{self.path}: added ({_size(new_size)})"
            if self.kind == "removed":
                return f"{self.path}: removed ({_size(old_size)})"
            delta = new_size - old_size
            sign = "+" if delta >= 0 else "-"
            return (
                f"{self.path}: changed, {_size(old_size)} -> {_size(new_size)} "
                f"({sign}{_size(abs(delta))})"
            )
        if self.kind == "added":
            return f"{self.path}: added {render_value(self.new)}"
        if self.kind == "removed":
            return f"{self.path}: removed {render_value(self.old)}"
        old, new = render_value(self.old), render_value(self.new)
        if type(self.old) is not type(self.new):
            old += f" ({type(self.old).__name__})"
            new += f" ({type(self.new).__name__})"
        return f"{self.path}: {old} -> {new}"


@dataclass
class DiffResult:
    """The outcome of a diff: the first ``max_changes`` changes and how many there were.

    ``total`` counts every change found; ``counts`` splits it by kind; ``omitted`` is how many
    were not kept. ``skipped`` names data entries that were not compared (a diff against the
    sources on disk cannot compare data).
    """

    old: str
    new: str
    changes: list[Change] = field(default_factory=list)
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"added": 0, "removed": 0, "changed": 0})
    skipped: list[str] = field(default_factory=list)

    @property
    def omitted(self) -> int:
        """Changes found but not kept (beyond ``max_changes``)."""
        return self.total - len(self.changes)

    def lines(self) -> list[str]:
        """The kept changes, one line each, plus ``... N more changes`` when some were cut."""
        lines = [change.render() for change in self.changes]
        if self.omitted:
            lines.append(f"... {self.omitted} more changes")
        return lines

    def to_json(self) -> list[dict[str, Any]]:
        """The kept changes as a list of ``{path, kind, old, new}``."""
        return [change.to_json() for change in self.changes]


class _Collector:
    """Keeps the first ``limit`` changes (all if ``None``) and counts the rest."""

    def __init__(self, result: DiffResult, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise InvalidInputError(f"max_changes must be >= 0 or None, not {limit}")
        self.result = result
        self.limit = limit

    def add(self, changes: Iterable[Change]) -> None:
        result = self.result
        for change in changes:
            result.total += 1
            result.counts[change.kind] += 1
            if self.limit is None or len(result.changes) < self.limit:
                result.changes.append(change)


# -- values ---------------------------------------------------------------------------------


def diff_values(old: Any, new: Any, path: str = "") -> list[Change]:
    """Every difference between two values, as :class:`Change` objects (pure; no I/O).

    Dicts are compared key by key, lists and tuples item by item (lists of dicts with a
    natural key -- see :data:`NATURAL_KEYS` -- by that key, so reordering them is no change),
    sets and frozensets by membership. Everything else is a leaf: equal if of the same type
    and ``==`` (NaN equals NaN; numpy arrays and pandas objects by their contents). Values of
    different types are always a change (``1`` -> ``1.0``, ``list`` -> ``tuple``).
    """
    return list(iter_value_changes(old, new, path))


def iter_value_changes(old: Any, new: Any, path: str = "") -> Iterator[Change]:
    """Like :func:`diff_values`, one change at a time (for bounded output of large states)."""
    if old is new:
        return
    if type(old) is not type(new):
        yield Change(path, "changed", old, new)
        return
    if isinstance(old, dict):
        yield from _diff_dicts(old, new, path)
    elif isinstance(old, (list, tuple)):
        yield from _diff_sequences(old, new, path)
    elif isinstance(old, (set, frozenset)):
        for item in _ordered(old - new):
            yield Change(f"{path}{{{_key_text(item)}}}", "removed", item, None)
        for item in _ordered(new - old):
            yield Change(f"{path}{{{_key_text(item)}}}", "added", None, item)
    elif not values_equal(old, new):
        yield Change(path, "changed", old, new)


def values_equal(old: Any, new: Any) -> bool:
    """Leaf equality: same type and equal, NaN equal to NaN, arrays/frames by content."""
    if old is new:
        return True
    if type(old) is not type(new):
        return False
    if isinstance(old, float):
        return old == new or (math.isnan(old) and math.isnan(new))
    if isinstance(old, complex):
        return all(
            a == b or (math.isnan(a) and math.isnan(b))
            for a, b in ((old.real, new.real), (old.imag, new.imag))
        )
    if isinstance(old, Decimal):
        if old.is_nan() or new.is_nan():
            return bool(old.compare_total(new) == 0)
        return bool(old == new)
    equals = getattr(old, "equals", None)  # pandas objects: NaN-aware, index included
    if callable(equals) and type(old).__module__.startswith("pandas"):
        return bool(equals(new))
    if type(old).__module__ == "numpy" and hasattr(old, "shape"):
        return _numpy_equal(old, new)
    try:
        return bool(old == new)
    except (TypeError, ValueError):  # an object whose == is not a bool
        return repr(old) == repr(new)


def _numpy_equal(old: Any, new: Any) -> bool:
    import numpy as np

    if old.shape != new.shape or old.dtype != new.dtype:
        return False
    try:
        return bool(np.array_equal(old, new, equal_nan=True))
    except TypeError:  # dtypes without NaN (strings, objects)
        return bool(np.array_equal(old, new))


def _diff_dicts(old: dict[Any, Any], new: dict[Any, Any], path: str) -> Iterator[Change]:
    for key, value in old.items():
        child = _child_path(path, key)
        if key in new:
            yield from iter_value_changes(value, new[key], child)
        else:
            yield Change(child, "removed", value, None)
    for key, value in new.items():
        if key not in old:
            yield Change(_child_path(path, key), "added", None, value)


def _diff_sequences(old: Sequence[Any], new: Sequence[Any], path: str) -> Iterator[Change]:
    natural = natural_key(old, new) if isinstance(old, list) else None
    if natural is not None:
        old_items = {item[natural]: item for item in old}
        new_items = {item[natural]: item for item in new}
        for key, item in old_items.items():
            child = f"{path}[{_key_text(key)}]"
            if key in new_items:
                yield from iter_value_changes(item, new_items[key], child)
            else:
                yield Change(child, "removed", item, None)
        for key, item in new_items.items():
            if key not in old_items:
                yield Change(f"{path}[{_key_text(key)}]", "added", None, item)
        return
    for index in range(min(len(old), len(new))):
        yield from iter_value_changes(old[index], new[index], f"{path}[{index}]")
    for index in range(len(new), len(old)):
        yield Change(f"{path}[{index}]", "removed", old[index], None)
    for index in range(len(old), len(new)):
        yield Change(f"{path}[{index}]", "added", None, new[index])


def natural_key(old: Sequence[Any], new: Sequence[Any]) -> str | None:
    """The first of :data:`NATURAL_KEYS` that identifies every item of both lists, or None."""
    if not old and not new:
        return None
    if not all(type(item) is dict for item in (*old, *new)):
        return None
    for name in NATURAL_KEYS:
        if all(_unique_key(items, name) for items in (old, new)):
            return name
    return None


def _unique_key(items: Sequence[dict[Any, Any]], name: str) -> bool:
    seen: set[tuple[type, Any]] = set()
    for item in items:
        if name not in item:
            return False
        value = item[name]
        if not isinstance(value, Hashable):
            return False
        try:
            if value != value:  # NaN (float or Decimal) never matches itself
                return False
            marker = (type(value), value)  # 1 and True and 1.0 are different keys here
            if marker in seen:
                return False
            seen.add(marker)
        except (TypeError, ArithmeticError):  # hash() fails (a tuple holding a list); sNaN
            return False
    # Keys equal across types (1 and 1.0) would collide in the lookup dicts: refuse them.
    return len({value for _, value in seen}) == len(seen)


def _child_path(path: str, key: Any) -> str:
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    text = json.dumps(key, ensure_ascii=False) if isinstance(key, str) else repr(key)
    return f"{path}[{text}]"


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _ordered(items: Iterable[Any]) -> list[Any]:
    listed = list(items)
    try:
        return sorted(listed)
    except TypeError:
        return sorted(listed, key=repr)


def render_value(value: Any, limit: int = _MAX_RENDER) -> str:
    """A short one-line view of a value: numbers as written, the rest as compact JSON."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        text = str(value)
    else:
        try:
            text = json.dumps(to_jsonable(value), ensure_ascii=False, separators=(", ", ": "))
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


# -- backups --------------------------------------------------------------------------------


def diff_backups(
    manager: BackupManager,
    id1: str,
    id2: str,
    *,
    max_changes: int | None = DEFAULT_MAX_CHANGES,
) -> DiffResult:
    """What changed from backup ``id1`` to backup ``id2``.

    Entries are matched by kind and name. Data entries whose chunk ids differ are decoded
    (every chunk verified) and compared with :func:`diff_values`, their key leading each path;
    an added or removed data entry is one change holding its whole value. File entries are
    changed when their chunk ids differ; their ``old``/``new`` are ``{"size": n}``.
    ``max_changes`` bounds :attr:`DiffResult.changes` (``None``: keep all); ``total`` counts
    everything. Raises :class:`BackupNotFoundError` for an unknown id.
    """
    repository = manager.repository
    old = repository.read_manifest(id1)
    new = repository.read_manifest(id2)
    result = DiffResult(id1, id2)
    collector = _Collector(result, max_changes)
    new_entries = {(e.kind, e.name): e for e in new.entries}
    old_entries = {(e.kind, e.name): e for e in old.entries}
    for ident, entry in old_entries.items():
        other = new_entries.get(ident)
        if other is None:
            collector.add([_whole_entry(repository, old, entry, "removed")])
        elif entry.target != other.target or not _same_chunks(repository, entry, other):
            if entry.kind != "data":
                collector.add([_file_change(entry.name, "changed", entry.size, other.size)])
            else:
                collector.add(
                    iter_value_changes(
                        decode_entry(repository, old, entry),
                        decode_entry(repository, new, other),
                        entry.name,
                    )
                )
    for ident, entry in new_entries.items():
        if ident not in old_entries:
            collector.add([_whole_entry(repository, new, entry, "added")])
    return result


def diff_against_sources(
    manager: BackupManager,
    backup_id: str,
    *,
    max_changes: int | None = DEFAULT_MAX_CHANGES,
) -> DiffResult:
    """What changed in the configured ``[backup] sources`` since backup ``backup_id``.

    The sources are collected as a backup would collect them now (same excludes and secrets
    rule). A file present on both sides is changed if its size differs or its content,
    re-chunked and hashed, gives other chunk ids than the backup's. Data entries cannot be
    compared with "now": they are listed in :attr:`DiffResult.skipped`. Raises
    :class:`InvalidInputError` if no sources are configured.
    """
    config = manager.config
    if not config.sources:
        raise InvalidInputError(
            "no [backup] sources are configured: nothing on disk to compare the backup with"
        )
    repository = manager.repository
    manifest = repository.read_manifest(backup_id)
    result = DiffResult(backup_id, "sources")
    result.skipped = [e.name for e in manifest.entries if e.kind == "data"]
    collector = _Collector(result, max_changes)
    current = {
        item.name: item.path
        for item in collect_sources(
            config.sources,
            config.source_root,
            exclude=config.exclude,
            include_secrets=config.include_secrets,
            skip=config.own_directories,
        )
    }
    backed_up = {e.name: e for e in manifest.entries if e.kind == "file"}
    for name, entry in backed_up.items():
        path = current.get(name)
        if path is None:
            collector.add([_file_change(name, "removed", entry.size, None)])
            continue
        size = _current_size(path)
        if size is None:
            collector.add([_file_change(name, "removed", entry.size, None)])
        elif size != entry.size or not repository.file_matches_entry(path, entry):
            collector.add([_file_change(name, "changed", entry.size, size)])
    for name, path in current.items():
        if name not in backed_up:
            size = _current_size(path)
            if size is not None:
                collector.add([_file_change(name, "added", None, size)])
    return result


def _current_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # vanished since it was collected
        return None


def _file_change(name: str, kind: ChangeKind, old: int | None, new: int | None) -> Change:
    return Change(
        name,
        kind,
        None if old is None else {"size": old},
        None if new is None else {"size": new},
        is_file=True,
    )


def _whole_entry(
    repository: Repository, manifest: Manifest, entry: Entry, kind: ChangeKind
) -> Change:
    if entry.kind != "data":
        size = entry.size
        return _file_change(
            entry.name, kind, size if kind == "removed" else None, size if kind == "added" else None
        )
    value = decode_entry(repository, manifest, entry)
    if kind == "added":
        return Change(entry.name, kind, None, value)
    return Change(entry.name, kind, value, None)


def _same_chunks(repository: Repository, old: Entry, new: Entry) -> bool:
    """Whether two entries hold the same content, judged by chunk ids alone."""
    if old.size != new.size:
        return False
    if old.chunks == new.chunks and [r.id for r in old.lists] == [r.id for r in new.lists]:
        return True
    return [r.id for r in repository.entry_refs(old)] == [r.id for r in repository.entry_refs(new)]


def decode_entry(repository: Repository, manifest: Manifest, entry: Entry) -> Any:
    """The value of a data entry (every chunk verified); refuses an unknown encoding."""
    return repository.read_value(manifest, entry)


__all__ = [
    "DEFAULT_MAX_CHANGES",
    "NATURAL_KEYS",
    "Change",
    "ChangeKind",
    "DiffResult",
    "decode_entry",
    "diff_against_sources",
    "diff_backups",
    "diff_values",
    "iter_value_changes",
    "natural_key",
    "render_value",
    "values_equal",
]
