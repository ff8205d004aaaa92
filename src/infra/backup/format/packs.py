"""Packs and pack index files (repository format 2): many blobs in one stored object.

A pack is the blobs of many chunks, each exactly as a format-1 chunk object stores it (see
:mod:`blobs`), one after the other, then the pack's header and a fixed trailer::

    blob 0 || blob 1 || ... || blob n-1 || header || trailer

    header   a sealed document (see below) holding [[chunk id, offset, length, size], ...]:
             where each blob starts in the pack, its stored length, its plaintext size
    trailer  12 bytes: header length (uint32, little endian) || b"PTPK" || version 1 || 3 zero

A pack's name is the BLAKE3-256 (hex) of all its bytes, so a reader can verify a whole pack,
and one blob is read with a ranged GET of ``length`` bytes at ``offset``. The header makes a
pack self-describing (``check`` compares it with the index; an index can be rebuilt from it).

An index file (``index/packs/<id>``) lists where the blobs of some packs are: a sealed
document holding ``{"packs": [[pack id, [[chunk id, offset, length, size], ...]], ...]}``.
Its name is the BLAKE3-256 (hex) of its stored bytes. Writers add one per flush; garbage
collection replaces many by one.

A sealed document is ``magic (4 bytes) || version 1 || flags (bit 0: encrypted) || 2 zero ||
payload``; the payload is the zstd-compressed JSON, in an encrypted repository then sealed
with ``object_aad(kind, "")`` (``kind``: ``pack-header`` or ``pack-index``) as associated data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import blake3
import msgspec
import zstandard

from src.infra.backup.errors import CorruptDataError
from src.infra.backup.format.crypto import RepositoryKeys, object_aad

PACK_MAGIC = b"PTPK"
HEADER_MAGIC = b"PTPH"
INDEX_MAGIC = b"PTIX"
DOCUMENT_VERSION = 1
TRAILER = struct.Struct("<I4sB3x")
TRAILER_SIZE = TRAILER.size
# Writers close a pack once it holds this much (every pack but a backup's last is at least
# this big); docs/FORMAT.md "Packs".
PACK_SIZE = 8 * 1024 * 1024
# No header is larger: a pack of 8 MiB holds at most a few thousand blobs.
MAX_HEADER_SIZE = 16 * 1024 * 1024
_DOCUMENT_HEADER = 8
_JSON_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError)


class PackedBlob(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Where one chunk's blob is in its pack: ``[id, offset, length, size]`` (its stored
    length and its plaintext size)."""

    id: str
    offset: int
    length: int
    size: int


class PackEntry(msgspec.Struct, array_like=True, frozen=True):
    """One pack of an index file: ``[pack id, blobs]``."""

    pack: str
    blobs: list[PackedBlob]


class IndexDocument(msgspec.Struct, frozen=True):
    """The content of an index file."""

    packs: list[PackEntry]


_ENCODER = msgspec.json.Encoder()
_HEADER_DECODER = msgspec.json.Decoder(list[PackedBlob])
_INDEX_DECODER = msgspec.json.Decoder(IndexDocument)


def content_id(data: bytes | memoryview) -> str:
    """The name of a pack or an index file: BLAKE3-256 of its stored bytes, hex."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def seal_document(plain: bytes, magic: bytes, kind: str, keys: RepositoryKeys | None) -> bytes:
    """The stored form of a pack header or an index file (see the module docstring)."""
    payload = zstandard.ZstdCompressor(level=3).compress(plain)
    flags = 0
    if keys is not None:
        payload = keys.seal(payload, object_aad(kind, ""))
        flags = 1
    return magic + bytes((DOCUMENT_VERSION, flags, 0, 0)) + payload


def open_document(
    stored: bytes | memoryview, magic: bytes, kind: str, keys: RepositoryKeys | None, what: str
) -> bytes:
    """The plaintext of a sealed document; :class:`CorruptDataError` naming ``what`` if it is
    damaged, of another kind, or encrypted differently from the repository."""
    view = memoryview(stored)
    if len(view) < _DOCUMENT_HEADER or bytes(view[:4]) != magic:
        raise CorruptDataError(f"{what}: not a {kind} (bad header)")
    if view[4] != DOCUMENT_VERSION:
        raise CorruptDataError(f"{what}: unknown {kind} version {view[4]}")
    encrypted = view[5] & 1
    if bool(encrypted) != (keys is not None):
        state = "encrypted" if encrypted else "not encrypted"
        raise CorruptDataError(f"{what}: {state}, unlike the repository")
    payload: bytes | memoryview = view[_DOCUMENT_HEADER:]
    if keys is not None:
        payload = keys.open(payload, object_aad(kind, ""))
    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 30)
    except zstandard.ZstdError as exc:
        raise CorruptDataError(f"{what}: cannot decompress ({exc})") from exc


def build_pack(
    blobs: Iterable[tuple[str, bytes, int]], keys: RepositoryKeys | None
) -> tuple[str, bytes, list[PackedBlob]]:
    """A pack of ``(chunk id, blob, plaintext size)``: ``(pack id, bytes, its blobs)``."""
    parts: list[bytes] = []
    table: list[PackedBlob] = []
    offset = 0
    for cid, blob, size in blobs:
        parts.append(blob)
        table.append(PackedBlob(cid, offset, len(blob), size))
        offset += len(blob)
    header = seal_document(_ENCODER.encode(table), HEADER_MAGIC, "pack-header", keys)
    parts.append(header)
    parts.append(TRAILER.pack(len(header), PACK_MAGIC, DOCUMENT_VERSION))
    data = b"".join(parts)
    return content_id(data), data, table


def header_span(tail: bytes | memoryview, pack_size: int, what: str) -> tuple[int, int]:
    """Where a pack's header is (offset, length), from the pack's last bytes ``tail`` (at
    least :data:`TRAILER_SIZE`)."""
    if len(tail) < TRAILER_SIZE or pack_size < TRAILER_SIZE:
        raise CorruptDataError(f"{what}: too short to be a pack")
    length, magic, version = TRAILER.unpack(bytes(tail[-TRAILER_SIZE:]))
    if magic != PACK_MAGIC:
        raise CorruptDataError(f"{what}: not a pack (bad trailer)")
    if version != DOCUMENT_VERSION:
        raise CorruptDataError(f"{what}: unknown pack version {version}")
    if not 0 < length <= min(MAX_HEADER_SIZE, pack_size - TRAILER_SIZE):
        raise CorruptDataError(f"{what}: impossible header length {length}")
    return pack_size - TRAILER_SIZE - length, length


def decode_pack_header(
    stored: bytes | memoryview, header_offset: int, keys: RepositoryKeys | None, what: str
) -> list[PackedBlob]:
    """The blobs a pack's header lists, checked to lie before the header and not overlap."""
    plain = open_document(stored, HEADER_MAGIC, "pack-header", keys, what)
    try:
        table = _HEADER_DECODER.decode(plain)
    except _JSON_ERRORS as exc:
        raise CorruptDataError(f"{what}: damaged pack header ({exc})") from exc
    check_blob_table(table, header_offset, what)
    return table


def check_blob_table(table: list[PackedBlob], limit: int, what: str) -> None:
    """:class:`CorruptDataError` unless every blob lies within ``[0, limit)``, in order,
    without overlapping the previous one."""
    end = 0
    for blob in table:
        if blob.offset < end or blob.length <= 0 or blob.offset + blob.length > limit:
            raise CorruptDataError(f"{what}: blob {blob.id} lies outside the pack's data")
        if blob.size < 0:
            raise CorruptDataError(f"{what}: blob {blob.id} has an impossible size")
        end = blob.offset + blob.length


def encode_index(packs: list[PackEntry], keys: RepositoryKeys | None) -> tuple[str, bytes]:
    """An index file listing ``packs``: ``(its id, its stored bytes)``."""
    stored = seal_document(_ENCODER.encode(IndexDocument(packs)), INDEX_MAGIC, "pack-index", keys)
    return content_id(stored), stored


def decode_index(
    stored: bytes | memoryview, index_id: str, keys: RepositoryKeys | None, what: str
) -> list[PackEntry]:
    """The packs an index file lists; :class:`CorruptDataError` if it is damaged (its name is
    the hash of its bytes, so any flipped bit shows)."""
    if content_id(stored) != index_id:
        raise CorruptDataError(f"{what}: content does not match its name")
    plain = open_document(stored, INDEX_MAGIC, "pack-index", keys, what)
    try:
        document = _INDEX_DECODER.decode(plain)
    except _JSON_ERRORS as exc:
        raise CorruptDataError(f"{what}: damaged index ({exc})") from exc
    for entry in document.packs:
        check_blob_table(entry.blobs, 1 << 40, f"{what}, pack {entry.pack}")
    return document.packs
