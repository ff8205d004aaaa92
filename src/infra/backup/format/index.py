"""Backup summaries and the snapshot index: one object that lists every backup.

A :class:`Summary` is what listing and retention need of a backup (id, type, time, tags,
sizes, entry names): a few hundred bytes instead of the manifest's chunk references. The
snapshot index (``index/snapshots``) stores the summaries of all backups, so a fresh process
lists 100,000 backups by reading one object instead of 100,000 manifests.

The index is a cache, never the truth. Each summary carries the version and the listing token
of the manifest object it was made from (see ``Store.list_tokens``). A validated listing uses
it only while the store lists that manifest with that same version; a names-only listing
(``list_backups``) while it lists it with that same token; anything else (a new backup, a
replaced manifest, a copied repository) is read from its manifest. A damaged, foreign or
missing index only costs time. In an encrypted repository the index is sealed like a manifest
(tags and notes stay confidential).
"""

from __future__ import annotations

from datetime import datetime

import blake3
import msgspec

from src.infra.backup.errors import CorruptDataError, FormatVersionError
from src.infra.backup.format.crypto import RepositoryKeys, object_aad
from src.infra.backup.format.layout import INDEX_KEY
from src.infra.backup.format.manifest import Manifest, Stats

INDEX_FORMAT = 1
PLAIN_MAGIC = b"PTIX\x01"  # followed by BLAKE3-256(body) and the msgpack body
SEALED_MAGIC = b"PTIX\x02"  # followed by the sealed msgpack body
_DIGEST_SIZE = 32


# gc=False: summaries hold only strings, times, sizes and a dict of strings, so they can form
# no reference cycle, and the collector need not track 100,000 of them after a listing.
class Summary(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What listing and retention need to know of one backup (taken from its manifest)."""

    backup_id: str
    backup_type: str
    time_utc: datetime
    host: str
    tags: dict[str, str]
    note: str | None
    parent: str | None
    compression: str
    stats: Stats
    data_keys: tuple[str, ...]
    file_paths: tuple[str, ...]
    warnings: tuple[str, ...] = ()


class IndexedSummary(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A summary, the version of the manifest object it was made from, and that object's
    listing token (``""`` when unknown, and then not stored: older indexes have none, and
    older readers ignore it as an extra trailing element)."""

    version: str
    summary: Summary
    token: str = ""


class _Untokened(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An entry without a token, stored as the indexes of earlier versions stored it."""

    version: str
    summary: Summary


class ListingBasis(msgspec.Struct, frozen=True, array_like=True):
    """What a complete listing of ``snapshots/`` rested on (format 2, network stores; see
    ``repository/catalog.py``): the snapshots token read just before it (``layout.
    SNAPSHOTS_TOKEN_KEY``), when it started, and every backup type it or an earlier basis
    showed. While the token stays the same, no manifest was deleted and no type appeared
    since; manifests written since are found by listing each type's keys past ``listed_at``
    less a day."""

    token: str
    listed_at: datetime
    types: tuple[str, ...]


class SnapshotsToken(msgspec.Struct, frozen=True):
    """``index/snapshots.token`` (format 2): a random ``token``, replaced before and after a
    manifest is deleted, and before a process commits its first backup of a type."""

    token: str


class _IndexFile(msgspec.Struct, frozen=True, array_like=True):
    format: int
    entries: list[IndexedSummary]
    # A trailing element (since 0.3): older readers ignore it.
    basis: ListingBasis | None = None


_PATH_KINDS = ("file", "hardlink", "symlink")  # directories are not listed as files
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_IndexFile)


def summarize(manifest: Manifest) -> Summary:
    """The summary of a (verified) manifest."""
    return Summary(
        backup_id=manifest.backup_id,
        backup_type=manifest.backup_type,
        time_utc=manifest.time_utc,
        host=manifest.host,
        tags=manifest.tags,
        note=manifest.note,
        parent=manifest.parent,
        compression=manifest.compression,
        stats=manifest.stats,
        data_keys=tuple(e.name for e in manifest.entries if e.kind == "data"),
        file_paths=tuple(e.name for e in manifest.entries if e.kind in _PATH_KINDS),
        warnings=tuple(manifest.warnings),
    )


def encode_index(
    entries: list[IndexedSummary],
    keys: RepositoryKeys | None,
    basis: ListingBasis | None = None,
) -> bytes:
    """The stored form of an index holding ``entries`` (and the ``basis`` of its listing)."""
    rows = [e if e.token else _Untokened(e.version, e.summary) for e in entries]
    body = _ENCODER.encode((INDEX_FORMAT, rows, basis) if basis else (INDEX_FORMAT, rows))
    if keys is not None:
        return SEALED_MAGIC + keys.seal(body, object_aad("index", INDEX_KEY))
    return PLAIN_MAGIC + blake3.blake3(body).digest() + body


def decode_index(stored: bytes | memoryview, keys: RepositoryKeys | None) -> list[IndexedSummary]:
    """The entries of a stored index; :class:`CorruptDataError` if it is damaged, forged or
    of the wrong kind for this repository, :class:`FormatVersionError` if it is newer."""
    return decode_index_file(stored, keys)[0]


def decode_index_file(
    stored: bytes | memoryview, keys: RepositoryKeys | None
) -> tuple[list[IndexedSummary], ListingBasis | None]:
    """The entries of a stored index and the basis of its listing (see :func:`decode_index`)."""
    magic = bytes(stored[: len(PLAIN_MAGIC)])
    body: bytes | memoryview
    if keys is not None:
        if magic != SEALED_MAGIC:
            raise CorruptDataError("snapshot index: not encrypted in an encrypted repository")
        body = keys.open(memoryview(stored)[len(SEALED_MAGIC) :], object_aad("index", INDEX_KEY))
    else:
        if magic != PLAIN_MAGIC:
            raise CorruptDataError("snapshot index: unknown format or encrypted")
        start = len(PLAIN_MAGIC) + _DIGEST_SIZE
        body = memoryview(stored)[start:]  # no copy of a 20 MB index
        if blake3.blake3(body).digest() != stored[len(PLAIN_MAGIC) : start]:
            raise CorruptDataError("snapshot index: damaged (checksum mismatch)")
    try:
        index = _DECODER.decode(body)
    except msgspec.MsgspecError as exc:
        raise CorruptDataError(f"snapshot index: damaged ({exc})") from exc
    if index.format > INDEX_FORMAT:
        raise FormatVersionError(f"snapshot index has format {index.format}, newer than this")
    return index.entries, index.basis
