"""The summaries of a repository's backups as this process knows them, kept current by
listings of ``snapshots/``, and the snapshot index that spares a fresh process reading
manifests (``format/index.py``).

Two kinds of listing:

* validated (``validate=True``): every manifest's version as the store states it now (a local
  store stats every file). What this process or the index knows of a manifest is used only for
  that same version. Garbage collection, check, replication and anything that deletes on the
  strength of a listing use this.
* names-only (``validate=False``): names and listing tokens (``Store.list_tokens``: no stat per
  file). What is known is used while the token is the same. A token can repeat when a manifest
  is deleted and another one written under the same id (inode numbers are reused), so a
  caller that acts on a summary from such a listing re-checks it first
  (:meth:`SummaryCatalog.is_current`); ``list_backups`` uses it.

On a network store in a format-2 repository, a names-only listing need not list every
manifest: ``index/snapshots.token`` changes before and after any manifest is deleted and before
a process commits its first backup of a type. While it stays the token a complete listing was
made under (its :class:`ListingBasis`, kept in the snapshot index for fresh processes), that
listing plus each known type's keys past the listing's time less a day (``StartAfter``: one
request per type) is the current listing. A basis older than :data:`BASIS_MAX_AGE` is renewed
by a complete listing (it bounds what a clock more than a day behind can hide).

With 100,000 backups the bulk work (decoding the index, building the maps, sorting) runs with
the cyclic garbage collector paused: the objects are acyclic, and a collection triggered by
their allocation would scan every one of them several times (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from itertools import compress, filterfalse
from operator import attrgetter

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    CorruptDataError,
    FormatVersionError,
    StorageError,
)
from src.infra.backup.format.crypto import RepositoryKeys
from src.infra.backup.format.ids import id_sort_key, is_id_of_type, type_of_id
from src.infra.backup.format.index import (
    IndexedSummary,
    ListingBasis,
    SnapshotsToken,
    Summary,
    decode_index,
    decode_index_file,
    encode_index,
)
from src.infra.backup.format.layout import (
    INDEX_KEY,
    SNAPSHOT_PREFIX,
    SNAPSHOTS_TOKEN_KEY,
    snapshot_key,
)
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

# Read the snapshot index when more manifests than this are unknown; rewrite it after a
# listing had to read at least this many manifests.
INDEX_MIN_UNKNOWN = 16
INDEX_REWRITE_UNKNOWN = 64
# Listing past a basis: a complete listing at least this often, and each type's keys from the
# basis's time less the margin (ids carry the writer's local time: zones, DST, clock skew).
BASIS_MAX_AGE = timedelta(hours=1)
TAIL_MARGIN = timedelta(days=1)
# Past a basis, rewrite the index after learning this many manifests (so that a fresh process
# reads few manifests).
TAIL_REWRITE_UNKNOWN = 8

#: Reads one manifest: its summary (``CorruptDataError``/``FormatVersionError`` if damaged,
#: ``BackupNotFoundError`` if it is gone).
FetchSummary = Callable[[str, str], Summary]

_TIME = attrgetter("time_utc")
_INDEXED_ID = attrgetter("summary.backup_id")
_VERSION = attrgetter("version")
_SUMMARY = attrgetter("summary")
_TOKEN = attrgetter("token")
_SUFFIX = ".json"


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (it stays off if it was off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Listing:
    """One listing of ``snapshots/``: each backup id's listing token, and with a validated
    listing each manifest's version."""

    __slots__ = ("tokens", "versions")

    def __init__(self, tokens: dict[str, str], versions: dict[str, str] | None) -> None:
        self.tokens = tokens
        self.versions = versions


def list_snapshot_store(store: Store, *, validate: bool) -> Listing:
    """List ``snapshots/`` (manifests only: ``<id>.json`` directly below it)."""
    start = len(SNAPSHOT_PREFIX)
    if not validate:
        tokens = {
            key[start:-5]: token
            for key, token in store.list_tokens(SNAPSHOT_PREFIX)
            if key.endswith(_SUFFIX) and key.find("/", start) < 0
        }
        return Listing(tokens, None)
    infos = [
        info
        for info in store.list_info(SNAPSHOT_PREFIX)
        if info.key.endswith(_SUFFIX) and info.key.find("/", start) < 0
    ]
    return Listing(
        {info.key[start:-5]: info.token for info in infos},
        {info.key[start:-5]: info.version for info in infos},
    )


def read_snapshots_token(store: Store) -> str | None:
    """The current snapshots token; ``None`` if there is none or it is unreadable (then
    nothing may be assumed: listings are complete)."""
    try:
        return msgspec.json.decode(store.get(SNAPSHOTS_TOKEN_KEY), type=SnapshotsToken).token
    except KeyError:
        return None
    except msgspec.MsgspecError as exc:
        log.warning("ignoring a damaged %s (%s)", SNAPSHOTS_TOKEN_KEY, exc)
        return None


def drop_snapshots_token(store: Store) -> None:
    """Delete the snapshots token (before a manifest is deleted: until a new one is written,
    every listing is complete; deleting needs no space on a full disk)."""
    store.delete(SNAPSHOTS_TOKEN_KEY)


def renew_snapshots_token(store: Store) -> None:
    """Replace the snapshots token (durably): around a manifest's deletion, and before a
    process commits its first backup of a type."""
    token = SnapshotsToken(secrets.token_hex(8))
    store.put(SNAPSHOTS_TOKEN_KEY, msgspec.json.encode(token))


class SummaryCatalog:
    """What this process knows of each backup (its summary, manifest version and listing
    token) and of damaged manifests; thread-safe."""

    def __init__(self, store: Store, keys: RepositoryKeys | None) -> None:
        self.store = store
        self.keys = keys
        self._lock = threading.Lock()
        self._rows: dict[str, IndexedSummary] = {}
        self._damaged: dict[str, tuple[str, str, str]] = {}  # id -> (version, token, why)
        self._sorted: list[Summary] = []
        self._sorted_for: tuple[bool, dict[str, str]] | None = None
        self._index_version: str | None = None
        # Names-only listings past a basis (set by the reader: format 2 on a network store).
        self.tails = False
        self._basis: ListingBasis | None = None
        self._basis_tokens: dict[str, str] = {}

    # -- what is known ---------------------------------------------------------------------

    def remember(self, version: str, summary: Summary, token: str = "") -> None:
        """Record the summary of the manifest stored with ``version`` (and ``token``)."""
        with self._lock:
            self._rows[summary.backup_id] = IndexedSummary(version, summary, token)

    def forget(self, backup_id: str) -> None:
        with self._lock:
            self._rows.pop(backup_id, None)
            self._damaged.pop(backup_id, None)

    def note_damaged(self, backup_id: str, version: str, why: str, token: str = "") -> None:
        log.warning("skipping backup %s: %s", backup_id, why)
        with self._lock:
            self._damaged[backup_id] = (version, token, why)

    def is_damaged(self, backup_id: str) -> bool:
        return backup_id in self._damaged

    def damaged(self) -> dict[str, str]:
        """Backups whose manifest could not be read at the last listing, with the reason."""
        return {backup_id: why for backup_id, (_, _, why) in self._damaged.items()}

    def is_current(self, backup_id: str) -> bool:
        """Whether the summary held for ``backup_id`` still describes the stored manifest
        (one stat)."""
        known = self._rows.get(backup_id)
        try:
            version = self.store.stat(snapshot_key(backup_id)).version
        except KeyError:
            return False
        return known is not None and known.version == version

    def oldest_listed(self) -> datetime | None:
        """The time of the oldest backup the last listing showed (``None`` before any)."""
        ordered = self._sorted
        return ordered[-1].time_utc if self._sorted_for is not None and ordered else None

    def retain(self, listing: Listing) -> None:
        """Forget what is known of ids the listing no longer shows."""
        listed = listing.tokens
        with self._lock:
            if not self._rows.keys() <= listed.keys():
                self._rows = {i: r for i, r in self._rows.items() if i in listed}
            self._damaged = {i: d for i, d in self._damaged.items() if i in listed}

    # -- listing ---------------------------------------------------------------------------

    def summaries(self, fetch: FetchSummary, *, validate: bool) -> list[Summary]:
        """Summaries of all readable backups, newest first; reads the manifests neither this
        process nor the snapshot index knows (damaged ones are skipped and logged)."""
        with paused_gc():
            listing = self._listing_past_basis() if self.tails and not validate else None
            past_basis = listing is not None
            if listing is None:
                listing = self._complete_listing(validate)
            self.retain(listing)
            shown = listing.versions if listing.versions is not None else listing.tokens
            if self._sorted_for == (validate, shown):
                return list(self._sorted)
            unknown = self._unknown(listing)
            if len(unknown) > INDEX_MIN_UNKNOWN:
                taken = self._load_index(listing)
                unknown = list(filterfalse(taken.__contains__, unknown)) if taken else unknown
            learned = self._resolve(unknown, listing, fetch)
            result = self._sort(list(map(_SUMMARY, self._rows.values())))
            if learned >= (TAIL_REWRITE_UNKNOWN if past_basis else INDEX_REWRITE_UNKNOWN) or (
                self._basis is not None and self._basis is not self._index_basis
            ):
                self._write_index(listing, result)
            self._sorted, self._sorted_for = result, (validate, shown)
            return list(result)

    # -- listing past a basis ---------------------------------------------------------------

    _index_basis: ListingBasis | None = None  # the basis the stored index was last seen with

    def _complete_listing(self, validate: bool) -> Listing:
        """List every manifest; with :attr:`tails`, make the listing the new basis."""
        if not self.tails:
            return list_snapshot_store(self.store, validate=validate)
        token = read_snapshots_token(self.store)
        started = datetime.now(timezone.utc)
        listing = list_snapshot_store(self.store, validate=validate)
        if token is None:
            self._basis = None
            return listing
        known = set(self._basis.types) if self._basis is not None else set()
        known.update(map(type_of_id, listing.tokens))
        self._basis = ListingBasis(token, started, tuple(sorted(known)))
        self._basis_tokens = dict(listing.tokens)
        return listing

    def _listing_past_basis(self) -> Listing | None:
        """The current listing from the basis and each type's newest keys, or ``None`` when
        the basis does not hold (the token changed, it is too old, there is none)."""
        token = read_snapshots_token(self.store)
        if token is None:
            return None
        basis = self._basis
        if basis is None or basis.token != token:
            basis = self._adopt_index_basis(token)
            if basis is None:
                return None
        if basis.listed_at < datetime.now(timezone.utc) - BASIS_MAX_AGE:
            return None
        start = f"{basis.listed_at - TAIL_MARGIN:%Y%m%d_%H%M%S}"
        tokens = dict(self._basis_tokens)
        for backup_type in basis.types:
            base = f"{SNAPSHOT_PREFIX}{backup_type}_"
            # Ids of this millennium only: keeps keys of a type "<type>_<letters>" out.
            for key, key_token in self.store.list_tokens_after(base + "2", base + start):
                backup_id = key[len(SNAPSHOT_PREFIX) : -len(_SUFFIX)]
                if key.endswith(_SUFFIX) and is_id_of_type(backup_id, backup_type):
                    tokens[backup_id] = key_token
        self._basis_tokens = tokens
        return Listing(tokens, None)

    def _adopt_index_basis(self, token: str) -> ListingBasis | None:
        """Take the stored index's entries and basis if it was made under ``token``."""
        try:
            entries, basis = decode_index_file(self.store.get(INDEX_KEY), self.keys)
        except KeyError:
            return None
        except (CorruptDataError, FormatVersionError, StorageError) as exc:
            log.info("ignoring the snapshot index (%s); listing every manifest", exc)
            return None
        self._index_basis = basis
        if basis is None or basis.token != token:
            return None
        rows = {entry.summary.backup_id: entry for entry in entries if entry.token}
        with self._lock:
            self._rows.update(rows)
            self._basis = basis
            self._basis_tokens = {backup_id: row.token for backup_id, row in rows.items()}
        return basis

    def _unknown(self, listing: Listing) -> list[str]:
        """The listed ids whose manifest is known neither as readable nor as damaged."""
        rows, damaged = self._rows, self._damaged
        if listing.versions is not None:
            shown, at = listing.versions, 0  # compare versions
            unknown = [i for i, v in shown.items() if (r := rows.get(i)) is None or r.version != v]
        else:
            shown, at = listing.tokens, 1  # compare tokens
            unknown = [i for i, t in shown.items() if (r := rows.get(i)) is None or r.token != t]
        if damaged:
            unknown = [i for i in unknown if (d := damaged.get(i)) is None or d[at] != shown[i]]
        return unknown

    def _resolve(self, unknown: list[str], listing: Listing, fetch: FetchSummary) -> int:
        """Learn the unknown ids (a stat each on a names-only listing; a manifest read when
        the version is new); returns how many ids were learned (the index is worth rewriting
        after many). Afterwards every row describes a listed, readable manifest."""
        learned = 0
        for backup_id in unknown:
            token = listing.tokens[backup_id]
            if listing.versions is not None:
                version = listing.versions[backup_id]
            elif self.store.tokens_are_versions:
                version = token
            else:
                try:
                    version = self.store.stat(snapshot_key(backup_id)).version
                except KeyError:
                    self.forget(backup_id)  # deleted since the listing
                    continue
            learned += 1
            row = self._rows.get(backup_id)
            if row is not None and row.version == version:
                self.remember(version, row.summary, token)  # known: learn its token
                continue
            with self._lock:
                self._rows.pop(backup_id, None)
            seen = self._damaged.get(backup_id)
            if seen is not None and seen[0] == version:
                self.note_damaged(backup_id, version, seen[2], token)
                continue
            try:
                summary = fetch(backup_id, version)
            except BackupNotFoundError:
                continue
            except (CorruptDataError, FormatVersionError) as exc:
                self.note_damaged(backup_id, version, str(exc), token)
                continue
            self.remember(version, summary, token)
        return learned

    @staticmethod
    def _sort(summaries: list[Summary]) -> list[Summary]:
        """Newest first by time, then by the time and collision suffix of the id. Sorting by
        time alone is cheap; ids are parsed only when two backups share a time."""
        summaries.sort(key=_TIME, reverse=True)
        times = list(map(_TIME, summaries))
        if any(map(operator.eq, times, times[1:])):
            summaries.sort(key=lambda s: (s.time_utc, id_sort_key(s.backup_id)), reverse=True)
        return summaries

    # -- the snapshot index ----------------------------------------------------------------

    def _load_index(self, listing: Listing) -> dict[str, IndexedSummary]:
        """Take the index's summaries of manifests the listing shows unchanged (nothing if
        there is no readable index newer than the one already taken)."""
        try:
            version = self.store.stat(INDEX_KEY).version
            if version == self._index_version:
                return {}
            entries = decode_index(self.store.get(INDEX_KEY), self.keys)
        except KeyError:
            return {}
        except (CorruptDataError, FormatVersionError, StorageError) as exc:
            log.info("ignoring the snapshot index (%s); reading manifests instead", exc)
            return {}
        # C loops (map, compress): 100,000 entries are checked in milliseconds.
        ids = list(map(_INDEXED_ID, entries))
        if listing.versions is not None:
            stored, shown = map(_VERSION, entries), listing.versions
        else:
            stored, shown = map(_TOKEN, entries), listing.tokens
        taken = dict(zip(ids, entries, strict=True))
        # Entries without a token (an index of an earlier version) are not taken, but become
        # what is known, so resolving them costs a stat instead of a manifest read.
        candidates = {}
        for backup_id in compress(ids, map(operator.ne, map(shown.get, ids), stored)):
            entry = taken.pop(backup_id, None)
            if entry is not None and not entry.token and backup_id in shown:
                candidates[backup_id] = entry
        with self._lock:
            self._index_version = version
            if self._rows:
                self._rows.update(taken)
            else:
                self._rows = taken.copy()
            for backup_id, entry in candidates.items():
                self._rows.setdefault(backup_id, entry)
        return taken

    def _write_index(self, listing: Listing, ordered: list[Summary]) -> None:
        """Best effort: a failed write only means the next fresh process reads manifests.
        Entries are stored newest first, so the next listing's sort finds them in order."""
        rows, tokens = self._rows, listing.tokens
        entries = []
        for summary in ordered:
            row = rows.get(summary.backup_id)
            if row is not None and row.summary is summary:
                entries.append(IndexedSummary(row.version, summary, tokens[summary.backup_id]))
        basis = self._basis if self.tails else None
        self._index_basis = basis  # tried once per basis (credentials may not allow a PUT)
        try:
            self._index_version = self.store.put_versioned(
                INDEX_KEY, encode_index(entries, self.keys, basis)
            )
        except StorageError as exc:
            log.info("could not update the snapshot index: %s", exc)
