"""Snapshot manifests and ``repo.json``: schema, checksum, parsing.

A manifest is compact UTF-8 JSON whose last member is ``"checksum"``: the BLAKE3-256 hash (hex)
of the file's bytes with those 64 hex digits replaced by 64 ``0`` characters. So the file is
plain JSON for people and tools, and any change to it is detected. Parsing is strict
(``msgspec`` schemas): anything malformed is a :class:`CorruptDataError`; a newer format number
is a :class:`FormatVersionError`, never a misreading.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import blake3
import msgspec

from src.infra.backup.errors import CorruptDataError, FormatVersionError
from src.infra.backup.format.crypto import RepositoryKeys, object_aad

# The newest format this version reads and writes. A manifest is written with the lowest
# format that can express it (format 1 unless it uses a format-2 feature), so older versions
# keep reading backups of values and plain files; repo.json stays at REPO_FORMAT_VERSION.
FORMAT_VERSION = 2
REPO_FORMAT_VERSION = 2
# msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError.
JSON_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError)
CHECKSUM_FIELD = b'"checksum":"'
_ZERO_SUM = "0" * 64
UNSIGNED = _ZERO_SUM  # the checksum a document carries until encode_checked fills it in
_SUFFIX_LEN = len(CHECKSUM_FIELD) + 64 + 2  # "checksum":"<64 hex>"}


class ChunkRef(msgspec.Struct, array_like=True, frozen=True):
    """One chunk of an entry: ``[id, size, stored]`` (plaintext and stored bytes)."""

    id: str
    size: int
    stored: int


class ListRef(msgspec.Struct, array_like=True, frozen=True):
    """A chunk-list blob covering ``count`` consecutive chunks of a large entry."""

    id: str
    count: int
    size: int
    stored: int


EntryKind = Literal["data", "file", "symlink", "dir", "hardlink"]
FILE_SYSTEM_KINDS: tuple[str, ...] = ("file", "symlink", "dir", "hardlink")
ORIGINS = ("sqlite", "command")


class Entry(msgspec.Struct, omit_defaults=True, frozen=True):
    """One named entry of a backup: a data value, or a file-system object.

    Data entries carry ``encoding``; file entries carry ``path`` (relative, ``/``-separated,
    or absolute for sources outside the base directory), ``mode``, ``mtime_ns`` and, for change
    detection, ``ino`` and ``ctime_ns``. Chunks are listed inline (``chunks``) or, for large
    entries, through chunk-list blobs (``lists``), so appending to a large entry adds one small
    list blob instead of repeating every chunk id in each manifest.

    Format 2 adds: the kinds ``symlink`` (``target``: the link's text, never followed),
    ``dir`` (mode and mtime of a directory, also an empty one) and ``hardlink`` (``target``:
    the name of an earlier ``file`` entry that is the same inode; no chunks of its own);
    ``uid``/``gid``; ``origin`` (``"sqlite"``: a consistent copy taken through SQLite's
    backup API; ``"command"``: a command's output); ``changed`` (the file kept changing while
    it was read: the last copy is stored, and may mix two versions).
    """

    name: str
    kind: EntryKind
    size: int
    chunks: list[ChunkRef] = []
    lists: list[ListRef] = []
    encoding: str | None = None
    path: str | None = None
    mode: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    ino: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: str | None = None
    origin: str | None = None
    changed: bool = False


class Stats(msgspec.Struct, frozen=True, gc=False):  # integers only: no cycles
    """Sizes of a backup, in bytes.

    ``logical_bytes``: what a restore produces (sum of entry sizes). ``stored_bytes``: the
    compressed size of every distinct chunk the backup references, i.e. what it would occupy
    alone. ``added_bytes``: the new chunks it wrote (what it cost on top of the repository).
    """

    logical_bytes: int
    stored_bytes: int
    added_bytes: int
    new_chunks: int
    total_chunks: int


class RunStats(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a backup was made: ``seconds`` from its start to its commit, and the store
    ``requests`` it made by operation (S3's names, see ``storage/requests.py``), the write of
    its manifest included. Since 0.3; older manifests and imported backups have none."""

    seconds: float
    requests: dict[str, int] = {}


class Manifest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A snapshot's manifest: the commit point of a backup.

    ``warnings`` (format 2, left out when empty): what the backup could not capture as
    asked (a file that vanished, could not be read, kept changing, a special file skipped,
    a database stored as raw bytes), one line each, naming the file. ``run`` (left out when
    unknown): :class:`RunStats`; readers before 0.3 ignore it, so it needs no new format.
    """

    format: int
    backup_id: str
    backup_type: str
    time_utc: datetime
    host: str
    pid: int
    tags: dict[str, str]
    note: str | None
    parent: str | None
    compression: str
    base_dir: str | None
    entries: list[Entry]
    stats: Stats
    warnings: list[str] = []
    run: RunStats | None = None
    checksum: str


class RepoConfig(msgspec.Struct, frozen=True):
    """``repo.json``: what every reader and writer of the repository must agree on."""

    format: int
    repository_id: str
    created_utc: datetime
    hash: str
    chunker: dict[str, int | str]
    encryption: dict[str, Any] | None = None
    checksum: str = _ZERO_SUM


class _FormatOnly(msgspec.Struct):
    format: int


_T = TypeVar("_T", Manifest, RepoConfig)
_ENCODER = msgspec.json.Encoder()


def encode_checked(document: Manifest | RepoConfig) -> bytes:
    """Serialize ``document`` with its checksum filled in."""
    raw = _ENCODER.encode(msgspec.structs.replace(document, checksum=_ZERO_SUM))
    if not raw.endswith(CHECKSUM_FIELD + _ZERO_SUM.encode() + b'"}'):
        raise AssertionError("checksum must be the last member")  # schema invariant
    digest = blake3.blake3(raw).hexdigest().encode()
    return raw[:-66] + digest + b'"}'


def decode_checked(raw: bytes, kind: type[_T], what: str) -> _T:
    """Parse and verify a manifest or ``repo.json``; ``what`` names it in errors."""
    if len(raw) < _SUFFIX_LEN or raw[-_SUFFIX_LEN:-66] != CHECKSUM_FIELD or raw[-2:] != b'"}':
        raise CorruptDataError(f"{what}: damaged (no checksum at its end)")
    stored = raw[-66:-2]
    expected = blake3.blake3(raw[:-66] + _ZERO_SUM.encode() + b'"}').hexdigest().encode()
    if stored != expected:
        raise CorruptDataError(f"{what}: damaged (checksum mismatch)")
    try:
        version = msgspec.json.decode(raw, type=_FormatOnly).format
    except JSON_ERRORS as exc:
        raise CorruptDataError(f"{what}: damaged ({exc})") from exc
    newest = FORMAT_VERSION if kind is Manifest else REPO_FORMAT_VERSION
    if version > newest:
        raise FormatVersionError(
            f"{what} uses format {version}; this version reads format {newest} and "
            "older. Upgrade peak-trade-backup to read it."
        )
    try:
        document = msgspec.json.decode(raw, type=kind)
    except JSON_ERRORS as exc:
        raise CorruptDataError(f"{what}: damaged ({exc})") from exc
    problem = _manifest_problem(document) if isinstance(document, Manifest) else None
    if isinstance(document, RepoConfig):
        problem = _time_problem(document.created_utc)
    if problem:
        raise CorruptDataError(f"{what}: damaged ({problem})")
    return document


_HEX = frozenset("0123456789abcdef")
_MAX_SIZE = 64 * 1024 * 1024  # the largest chunk any writer produces, with room to spare


def _time_problem(moment: datetime) -> str | None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return "a time without a time zone"
    if not 1970 <= moment.year <= 9000:
        return f"an implausible time {moment.isoformat()}"
    return None


def _ref_problem(cid: str, size: int, stored: int) -> str | None:
    if len(cid) != 64 or not _HEX.issuperset(cid):
        return f"invalid chunk id {cid[:80]!r}"
    if not 0 <= size <= _MAX_SIZE or not 0 <= stored <= 2 * _MAX_SIZE:
        return f"impossible chunk size {size}/{stored}"
    return None


def _manifest_problem(manifest: Manifest) -> str | None:
    """Checks beyond the schema, so no reader trips over absurd values later."""
    problem = _time_problem(manifest.time_utc)
    if problem:
        return problem
    files: set[str] = set()
    for entry in manifest.entries:
        if not entry.name or entry.size < 0:
            return f"entry {entry.name!r} has no name or a negative size"
        problem = _kind_problem(entry, files)
        if problem:
            return f"entry {entry.name!r}: {problem}"
        if entry.kind == "file":
            files.add(entry.name)
        for ref in entry.chunks:
            problem = _ref_problem(ref.id, ref.size, ref.stored)
            if problem:
                return f"entry {entry.name!r}: {problem}"
        for lref in entry.lists:
            problem = _ref_problem(lref.id, lref.size, lref.stored)
            if problem or lref.count < 1:
                return f"entry {entry.name!r}: {problem or 'an empty chunk list'}"
    stats = manifest.stats
    if (
        min(
            stats.logical_bytes,
            stats.stored_bytes,
            stats.added_bytes,
            stats.new_chunks,
            stats.total_chunks,
        )
        < 0
    ):
        return "negative sizes in stats"
    return None


def _kind_problem(entry: Entry, files: set[str]) -> str | None:
    """What is wrong with an entry's kind-specific fields (``files``: earlier file entries)."""
    if entry.origin is not None and entry.origin not in ORIGINS:
        return f"unknown origin {entry.origin[:40]!r}"
    if entry.kind in ("data", "file"):
        return "a target on a data or file entry" if entry.target is not None else None
    if entry.chunks or entry.lists or entry.size:
        return f"a {entry.kind} entry with content"
    target = entry.target
    if entry.kind == "dir":
        return "a directory with a target" if target is not None else None
    if not target or "\0" in target or len(target) > 4096:
        return f"a {entry.kind} without a valid target"
    if entry.kind == "hardlink" and target not in files:
        return f"a hard link to {target[:200]!r}, which is no earlier file entry"
    return None


def manifest_format(entries: list[Entry], warnings: list[str]) -> int:
    """The lowest format that expresses a manifest with these entries and warnings."""
    if warnings:
        return 2
    for entry in entries:
        if entry.kind not in ("data", "file") or entry.changed or entry.origin is not None:
            return 2
        if entry.uid is not None or entry.gid is not None or entry.target is not None:
            return 2
    return 1


def encode_chunk_list(refs: list[ChunkRef]) -> bytes:
    """The plaintext of a chunk-list blob: a JSON array of ``[id, size, stored]``."""
    return _ENCODER.encode(refs)


def decode_chunk_list(raw: bytes, what: str) -> list[ChunkRef]:
    """Parse a chunk-list blob's plaintext."""
    try:
        return msgspec.json.decode(raw, type=list[ChunkRef])
    except JSON_ERRORS as exc:
        raise CorruptDataError(f"{what}: damaged chunk list ({exc})") from exc


ENVELOPE_MAGIC = b"PTEM\x01"


def seal_manifest(raw: bytes, keys: RepositoryKeys, backup_id: str) -> bytes:
    """The stored form of a manifest in an encrypted repository: ``PTEM\\x01`` followed by
    the sealed checksummed JSON, bound to its backup id (a renamed file fails to open)."""
    return ENVELOPE_MAGIC + keys.seal(raw, object_aad("manifest", backup_id))


def open_manifest(stored: bytes, keys: RepositoryKeys | None, backup_id: str) -> bytes:
    """The checksummed JSON of a stored manifest, authenticated when encrypted."""
    sealed = stored.startswith(ENVELOPE_MAGIC)
    if keys is None:
        if sealed:
            raise CorruptDataError(
                f"manifest of backup {backup_id}: encrypted, but the repository is not"
            )
        return stored
    if not sealed:
        raise CorruptDataError(
            f"manifest of backup {backup_id}: not encrypted in an encrypted repository"
        )
    return keys.open(stored[len(ENVELOPE_MAGIC) :], object_aad("manifest", backup_id))


# A time that must carry its offset: a naive one in a record is damage, refused when parsed
# (comparing it with an aware time would otherwise fail later, far from the cause).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class Collection(msgspec.Struct, frozen=True, omit_defaults=True):
    """``gc/collection-<time>.json``: chunks garbage collection moved to ``fossils/`` at
    ``time``, and packs it collected (with ``dead``: the chunks that go with them, found in no
    other pack), which it will delete unless a backup refers to them again (see gc.py)."""

    time: AwareDatetime
    fossils: list[str] = []
    packs: list[str] = []
    dead: list[str] = []
    # Instead of ``dead`` (a record that big did not fit on a full disk): every chunk of
    # ``packs`` that no other pack holds, as the pack index lists them.
    dead_all: bool = False


class GcState(msgspec.Struct, frozen=True):
    """``gc-state.json`` (format 2): whether the set of collection records may be changing.

    A prune writes a new random ``token`` with ``open`` before it writes or deletes any
    record, and the same token closed when it ends. A backup that finds the state closed and
    unchanged since it last listed the records knows they are the same, and skips the
    listing (see gc.py)."""

    token: str
    open: bool
