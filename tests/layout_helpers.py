"""More about stored chunks in tests, whatever the repository's format (beside
tests/stored_chunks.py): replace a stored blob by other bytes, plant new blobs, put the
repository's chunk objects back as they were, and create a repository of a given format.

A format-1 repository stores a chunk as ``chunks/<aa>/<id>``; a format-2 one stores its blob in
a pack at the place the pack index says (see tests/stored_chunks.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from src.infra.backup.format.crypto import RepositoryKeys
from src.infra.backup.format.layout import (
    CHUNK_PREFIX,
    FOSSIL_PREFIX,
    PACK_INDEX_PREFIX,
    PACK_PREFIX,
    chunk_key,
    pack_index_key,
    pack_key,
)
from src.infra.backup.format.packs import (
    PackedBlob,
    PackEntry,
    build_pack,
    decode_index,
    encode_index,
)
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore
from tests.stored_chunks import cover_packs, is_packed, locate, stored_chunk_ids

# Where a repository keeps chunks, whatever its format.
CHUNK_HOLDERS = (CHUNK_PREFIX, FOSSIL_PREFIX, PACK_PREFIX, PACK_INDEX_PREFIX)


def make_repository(path: Path, repo_format: int) -> Repository:
    """Create the (unencrypted) repository at ``path`` in format ``repo_format`` explicitly;
    managers and the processes a test starts afterwards open it as it is."""
    repository = Repository.open(LocalStore(path), repo_format=repo_format)
    assert repository.config.format == repo_format
    return repository


def _files(repo: Path, prefix: str) -> dict[str, Path]:
    base = repo / prefix
    if not base.exists():
        return {}
    return {
        p.relative_to(repo).as_posix(): p
        for p in base.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def object_files(repo: Path, prefixes: Iterable[str] = CHUNK_HOLDERS) -> dict[str, Path]:
    """Key -> file of every object below ``prefixes`` (by default: every object that holds
    chunks or says where they are: loose chunks, fossils, packs and pack index files)."""
    found: dict[str, Path] = {}
    for prefix in prefixes:
        found.update(_files(repo, prefix))
    return found


def pack_entries(repo: Path, keys: RepositoryKeys | None = None) -> dict[str, PackEntry]:
    """Pack id -> its blobs, as the pack index files list them (the first listing wins)."""
    found: dict[str, PackEntry] = {}
    cover_packs(repo, keys)
    for index_path in sorted(_files(repo, PACK_INDEX_PREFIX).values()):
        name = index_path.name
        for entry in decode_index(index_path.read_bytes(), name, keys, name):
            found.setdefault(entry.pack, entry)
    return found


def stored_files(repo: Path, keys: RepositoryKeys | None = None) -> dict[str, Path]:
    """Chunk id -> the file holding its blob (its chunk file, or its pack)."""
    found = {}
    for key, path in _files(repo, CHUNK_PREFIX).items():
        found[key.rsplit("/", 1)[-1]] = path
    if is_packed(repo):
        cover_packs(repo, keys)
        for index_path in _files(repo, PACK_INDEX_PREFIX).values():
            name = index_path.name
            for entry in decode_index(index_path.read_bytes(), name, keys, name):
                for blob in entry.blobs:
                    found.setdefault(blob.id, repo / pack_key(entry.pack))
    return found


def stored_state(repo: Path, keys: RepositoryKeys | None = None) -> dict[str, tuple[bytes, int]]:
    """Chunk id -> (its stored blob, the mtime_ns of the file holding it)."""
    state = {}
    for cid in stored_chunk_ids(repo, keys):
        path, offset, length = locate(repo, cid, keys)
        data = path.read_bytes()[offset : offset + length]
        state[cid] = (data, path.stat().st_mtime_ns)
    return state


@contextmanager
def preserved(repo: Path, prefixes: Iterable[str] = CHUNK_HOLDERS) -> Iterator[None]:
    """Put every object below ``prefixes`` back as it was when the block started (content
    and mtime; objects added meanwhile are removed)."""
    prefixes = tuple(prefixes)
    saved = {
        key: (path.read_bytes(), path.stat().st_mtime_ns)
        for key, path in object_files(repo, prefixes).items()
    }
    try:
        yield
    finally:
        for key, path in object_files(repo, prefixes).items():
            if key not in saved:
                path.unlink()
        for key, (data, mtime_ns) in saved.items():
            path = repo / key
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                if path.exists():
                    os.chmod(path, 0o600)
                path.write_bytes(data)
                os.chmod(path, 0o600)
            os.utime(path, ns=(mtime_ns, mtime_ns))


def write_stored(
    repo: Path,
    cid: str,
    content: bytes,
    keys: RepositoryKeys | None = None,
    *,
    size: int | None = None,
) -> None:
    """Make the stored blob of chunk ``cid`` read as ``content``.

    Format 1: the chunk file holds ``content`` (it is created if there is none). Format 2:
    each place the pack index lists ``cid`` at is changed: ``content`` overwrites the blob in
    its pack when it is as long; otherwise ``content`` is appended to the pack and the index
    entry points there (its stored length is ``len(content)``). An index cannot list an
    empty blob: empty ``content`` zeroes the blob's bytes instead (as ``damage_chunk``'s
    ``empty`` does). A chunk no index lists is stored in a new pack of its own with an index
    file (see :func:`add_packed`; ``size``: its plaintext size)."""
    if not is_packed(repo):
        path = repo / chunk_key(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.chmod(path, 0o600)
        path.write_bytes(content)
        return
    try:
        locate(repo, cid, keys)
    except KeyError:
        add_packed(repo, {cid: content}, keys, sizes=None if size is None else {cid: size})
        return
    cover_packs(repo, keys)
    for index_path in list(_files(repo, PACK_INDEX_PREFIX).values()):
        name = index_path.name
        entries = decode_index(index_path.read_bytes(), name, keys, name)
        if not any(blob.id == cid for entry in entries for blob in entry.blobs):
            continue
        changed = []
        for entry in entries:
            blobs = []
            for blob in entry.blobs:
                if blob.id == cid:
                    blob = _write_blob(repo / pack_key(entry.pack), blob, content)
                blobs.append(blob)
            # An index lists a pack's blobs in order (a moved blob is the pack's last).
            changed.append(PackEntry(entry.pack, sorted(blobs, key=lambda b: b.offset)))
        if changed != entries:
            new_id, stored = encode_index(changed, keys)
            (repo / pack_index_key(new_id)).write_bytes(stored)
            index_path.unlink()


def _write_blob(pack: Path, blob: PackedBlob, content: bytes) -> PackedBlob:
    os.chmod(pack, 0o600)
    data = bytearray(pack.read_bytes())
    if not content:
        content = bytes(blob.length)
    if len(content) == blob.length:
        data[blob.offset : blob.offset + blob.length] = content
        pack.write_bytes(bytes(data))
        return blob
    offset = len(data)
    pack.write_bytes(bytes(data) + content)
    return PackedBlob(blob.id, offset, len(content), blob.size)


def add_packed(
    repo: Path,
    blobs: dict[str, bytes],
    keys: RepositoryKeys | None = None,
    *,
    sizes: dict[str, int] | None = None,
) -> list[str]:
    """Store ``blobs`` (chunk id -> stored blob) as one new pack with an index file listing
    it, as a writer does; returns the keys written. ``sizes``: the plaintext size of each
    chunk, which the index records (by default the blob's length; readers of a backup take
    the size from its manifest)."""
    sizes = sizes or {}
    pack_id, data, table = build_pack(
        [(cid, blob, sizes.get(cid, len(blob))) for cid, blob in blobs.items()], keys
    )
    index_id, stored = encode_index([PackEntry(pack_id, table)], keys)
    written = []
    for key, content in ((pack_key(pack_id), data), (pack_index_key(index_id), stored)):
        path = repo / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(key)
    return written


def age_stored(repo: Path, seconds: float) -> None:
    """Set the mtime of every chunk file and pack to ``seconds`` ago."""
    then = time.time() - seconds
    for path in object_files(repo, (CHUNK_PREFIX, PACK_PREFIX)).values():
        os.utime(path, (then, then))
