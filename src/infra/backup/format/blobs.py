"""Blobs: the stored form of a chunk.

A chunk's id is the BLAKE3-256 hash of its plaintext (hex). Its stored form is an 8-byte header
followed by the payload::

    offset 0  4 bytes  magic b"PTCK"
    offset 4  1 byte   blob format version (1)
    offset 5  1 byte   codec: 0 none, 1 zstd, 2 gzip
    offset 6  1 byte   flags: bit 0 = encrypted
    offset 7  1 byte   reserved, 0
    offset 8  ...      payload: the plaintext, compressed by the codec; in an encrypted
                       repository then sealed (nonce || AEAD ciphertext || tag, with the
                       chunk id bound as associated data)

In an encrypted repository the id is a keyed BLAKE3 hash, so equal content is not visible
across repositories. Reading a blob always authenticates (if encrypted), decompresses (bounded
by the expected size) and checks the hash against the id, so a flipped bit anywhere is an
:class:`IntegrityError`, never wrong data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import blake3
import zstandard

from src.infra.backup.errors import CorruptDataError, InvalidInputError
from src.infra.backup.format.crypto import RepositoryKeys, object_aad

MAGIC = b"PTCK"
BLOB_VERSION = 1
HEADER_SIZE = 8
CODECS = {"none": 0, "zstd": 1, "gzip": 2}
_CODEC_NAMES = {number: name for name, number in CODECS.items()}
DEFAULT_LEVELS = {"none": 0, "zstd": 3, "gzip": 6}
# No chunk is larger (CDC caps chunks at 128 KiB; a single-chunk entry is below 64 KiB): a
# size beyond it comes from a damaged or hostile manifest and is refused before allocating.
MAX_CHUNK_SIZE = 64 * 1024 * 1024


def chunk_id(data: bytes | memoryview) -> str:
    """The content address of ``data``: BLAKE3-256, lowercase hex."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class Compression:
    """A codec name and level, e.g. ``zstd`` level 3."""

    codec: str = "zstd"
    level: int = DEFAULT_LEVELS["zstd"]

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InvalidInputError(
                f"unknown compression {self.codec!r}: expected one of {', '.join(CODECS)}"
            )

    @property
    def label(self) -> str:
        """``zstd-3``, ``gzip-6`` or ``none``."""
        return "none" if self.codec == "none" else f"{self.codec}-{self.level}"


class BlobCodec:
    """Encodes chunks into blobs and back; with ``keys``, ids are keyed and blobs sealed.
    Not thread-safe (holds a zstd context)."""

    def __init__(
        self, compression: Compression | None = None, keys: RepositoryKeys | None = None
    ) -> None:
        self.compression = compression or Compression()
        self.keys = keys
        self._zstd = zstandard.ZstdCompressor(level=self.compression.level)
        self._unzstd = zstandard.ZstdDecompressor()

    def chunk_id(self, plain: bytes | memoryview) -> str:
        """The id of a chunk in this repository (keyed when encrypted)."""
        return self.keys.chunk_id(plain) if self.keys is not None else chunk_id(plain)

    def encode(self, plain: bytes | memoryview, cid: str) -> bytes:
        """Return the stored form of ``plain`` (uncompressed if compression would not help;
        sealed with ``cid`` as associated data when encrypted)."""
        blob = self._compress(plain)
        if self.keys is None:
            return blob
        header = _header(blob[5], encrypted=True)
        sealed = self.keys.seal(memoryview(blob)[HEADER_SIZE:], object_aad("chunk", cid) + header)
        return header + sealed

    def _compress(self, plain: bytes | memoryview) -> bytes:
        codec = self.compression.codec
        if codec == "zstd":
            payload = self._zstd.compress(plain)
        elif codec == "gzip":
            payload = _gzip_compress(plain, self.compression.level)
        else:
            payload = b""
        if codec == "none" or len(payload) >= len(plain):
            return _header(0) + bytes(plain)
        return _header(CODECS[codec]) + payload

    def decode(self, blob: bytes, expected_id: str, expected_size: int) -> bytes:
        """Return the plaintext of ``blob``, verified against its id and size."""
        if not 0 <= expected_size <= MAX_CHUNK_SIZE:
            raise CorruptDataError(f"chunk {expected_id}: impossible size {expected_size}")
        if len(blob) < HEADER_SIZE or blob[:4] != MAGIC:
            raise CorruptDataError(f"chunk {expected_id}: not a chunk (bad header)")
        if blob[4] != BLOB_VERSION:
            raise CorruptDataError(f"chunk {expected_id}: unknown blob version {blob[4]}")
        payload: bytes | memoryview = memoryview(blob)[HEADER_SIZE:]
        if self.keys is None and blob[6] != 0:
            raise CorruptDataError(f"chunk {expected_id}: encrypted, but the repository is not")
        if self.keys is not None:
            if blob[6] != 1:
                raise CorruptDataError(
                    f"chunk {expected_id}: not encrypted in an encrypted repository"
                )
            aad = object_aad("chunk", expected_id) + blob[:HEADER_SIZE]
            payload = self.keys.open(payload, aad)
        codec = _CODEC_NAMES.get(blob[5])
        try:
            if codec == "none":
                plain = bytes(payload)
            elif codec == "zstd":
                # zstandard trusts the frame's own size field over max_output_size: check it.
                declared = zstandard.frame_content_size(payload)
                if declared not in (expected_size, zstandard.CONTENTSIZE_UNKNOWN):
                    raise CorruptDataError(
                        f"chunk {expected_id}: frame declares {declared} bytes, not {expected_size}"
                    )
                plain = self._unzstd.decompress(payload, max_output_size=expected_size)
            elif codec == "gzip":
                plain = _gzip_decompress(payload, expected_size)
            else:
                raise CorruptDataError(f"chunk {expected_id}: unknown codec {blob[5]}")
        except (zstandard.ZstdError, zlib.error) as exc:
            raise CorruptDataError(f"chunk {expected_id}: cannot decompress ({exc})") from exc
        if len(plain) != expected_size or self.chunk_id(plain) != expected_id:
            raise CorruptDataError(f"chunk {expected_id}: content does not match its checksum")
        return plain


def _header(codec: int, *, encrypted: bool = False) -> bytes:
    return MAGIC + bytes((BLOB_VERSION, codec, 1 if encrypted else 0, 0))


def _gzip_compress(plain: bytes | memoryview, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(plain) + compressor.flush()


def _gzip_decompress(payload: bytes | memoryview, expected_size: int) -> bytes:
    decompressor = zlib.decompressobj(31)
    plain = decompressor.decompress(payload, expected_size + 1)
    if not decompressor.eof:
        raise CorruptDataError("gzip stream is truncated or longer than expected")
    return plain
