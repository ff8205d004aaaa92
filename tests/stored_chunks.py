"""Stored chunks in tests, whatever the repository's format: find them, read them, damage them.

A format-1 repository stores a chunk as ``chunks/<aa>/<id>``; a format-2 one stores its blob
inside a pack (``packs/<aa>/<pack id>``) at the place the pack index (index files, or the
pack's own header) says; the helpers here first write an index file for packs only their
headers describe (:func:`cover_packs`), then work on index files. Tests that damage
"a chunk" use :func:`damage_chunk`, so they test what the default format does:

- ``flip``: one byte in the middle of the blob changes (an integrity error on read);
- ``flip_header``: the blob's first byte changes;
- ``truncate``: the blob loses its second half (format 1: the file is cut; format 2: the
  pack index says the blob is shorter than it was, so the read gets a cut blob);
- ``empty``: format 1: an empty file; format 2: the blob's bytes are zeroed;
- ``missing``: format 1: the file is deleted; format 2: the chunk is dropped from every pack
  index file that lists it (the pack keeps its bytes, but nothing can find them).

Tests of format-1 behaviour (fossils, one object per chunk) make their repositories with
:func:`format1_repositories`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Protocol

import pytest

from src.infra.backup.format.crypto import RepositoryKeys
from src.infra.backup.format.layout import PACK_INDEX_PREFIX, chunk_key, pack_index_key, pack_key
from src.infra.backup.format.packs import PackedBlob, PackEntry, decode_index, encode_index
from src.infra.backup.repository import repository as repository_module
from src.infra.backup.repository.pack_index import PackIndex
from src.infra.backup.storage.local import LocalStore

Damage = Literal["flip", "flip_header", "truncate", "empty", "missing"]


class _Repository(Protocol):
    @property
    def keys(self) -> RepositoryKeys | None: ...


def repo_format(repo: Path) -> int:
    """The format ``repo.json`` declares."""
    return int(json.loads((repo / "repo.json").read_bytes())["format"])


def is_packed(repo: Path) -> bool:
    return repo_format(repo) >= 2


def cover_packs(repo: Path, keys: RepositoryKeys | None = None) -> None:
    """Write an index file for the packs only their headers describe (as ``prune`` does), so
    that the helpers here find, and change, every packed blob through index files."""
    if not (repo / "repo.json").exists() or not is_packed(repo):
        return
    index = PackIndex(LocalStore(repo), keys)
    uncovered = index.uncovered()
    if uncovered:
        packs = index.packs()
        index_id, stored = encode_index([packs[pid] for pid in sorted(uncovered)], keys)
        path = repo / pack_index_key(index_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored)


def _index_files(repo: Path, keys: RepositoryKeys | None) -> dict[str, list[PackEntry]]:
    cover_packs(repo, keys)
    base = repo / PACK_INDEX_PREFIX
    found: dict[str, list[PackEntry]] = {}
    if base.exists():
        for path in base.iterdir():
            if not path.name.startswith("."):
                found[path.name] = decode_index(path.read_bytes(), path.name, keys, path.name)
    return found


def locate(repo: Path, cid: str, keys: RepositoryKeys | None = None) -> tuple[Path, int, int]:
    """Where the stored blob of ``cid`` is: (file, offset, length)."""
    if not is_packed(repo):
        path = repo / chunk_key(cid)
        return path, 0, path.stat().st_size
    for entries in _index_files(repo, keys).values():
        for entry in entries:
            for blob in entry.blobs:
                if blob.id == cid:
                    return repo / pack_key(entry.pack), blob.offset, blob.length
    raise KeyError(cid)


def stored_chunk_ids(repo: Path, keys: RepositoryKeys | None = None) -> set[str]:
    """Every chunk stored: ``chunks/`` files and every blob the pack index lists."""
    ids = set()
    chunks = repo / "chunks"
    if chunks.exists():
        ids |= {p.name for p in chunks.rglob("*") if p.is_file() and not p.name.startswith(".")}
    for entries in _index_files(repo, keys).values():
        ids |= {blob.id for entry in entries for blob in entry.blobs}
    return ids


def read_stored(repo: Path, cid: str, keys: RepositoryKeys | None = None) -> bytes:
    """The stored blob of ``cid``."""
    path, offset, length = locate(repo, cid, keys)
    return path.read_bytes()[offset : offset + length]


def damage_chunk(repo: Path, cid: str, how: Damage, repository: _Repository | None = None) -> None:
    """Damage the stored chunk ``cid`` (see the module docstring); ``repository`` gives the
    keys of an encrypted repository."""
    keys = repository.keys if repository is not None else None
    if how == "missing":
        _drop(repo, cid, keys) if is_packed(repo) else (repo / chunk_key(cid)).unlink()
        return
    path, offset, length = locate(repo, cid, keys)
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[offset + length // 2] ^= 0x01
    elif how == "flip_header":
        data[offset] ^= 0x01
    elif how == "empty":
        if is_packed(repo):
            data[offset : offset + length] = bytes(length)
        else:
            data = bytearray()
    elif how == "truncate":
        if is_packed(repo):
            _rewrite_entry(repo, cid, keys, length=length // 2)
            return
        data = data[: length // 2]
    path.write_bytes(bytes(data))


def _drop(repo: Path, cid: str, keys: RepositoryKeys | None) -> None:
    _rewrite_entry(repo, cid, keys, length=None)


def _rewrite_entry(repo: Path, cid: str, keys: RepositoryKeys | None, length: int | None) -> None:
    """Rewrite every index file listing ``cid``: without it (``length`` None) or with its
    stored length changed."""
    for index_id, entries in _index_files(repo, keys).items():
        if not any(blob.id == cid for entry in entries for blob in entry.blobs):
            continue
        changed = []
        for entry in entries:
            blobs = []
            for blob in entry.blobs:
                if blob.id != cid:
                    blobs.append(blob)
                elif length is not None:
                    blobs.append(PackedBlob(blob.id, blob.offset, length, blob.size))
            changed.append(PackEntry(entry.pack, blobs))
        new_id, stored = encode_index(changed, keys)
        (repo / pack_index_key(new_id)).write_bytes(stored)
        (repo / pack_index_key(index_id)).unlink()


@contextmanager
def format1_repositories() -> Iterator[None]:
    """Repositories created inside the block are format 1 (one object per chunk)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repository_module, "NEW_REPOSITORY_FORMAT", 1)
        yield
