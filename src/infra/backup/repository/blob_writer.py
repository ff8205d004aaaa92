"""New blobs on their way to the store: loose chunk objects in a format-1 repository, packs in
a format-2 one.

Packs are cut once they hold :data:`~src.infra.backup.format.packs.PACK_SIZE` bytes, so every
pack but the last of a backup is at least that big; a flush writes the full packs (durably,
in one ``put_many``), the last flush the rest. A pack describes itself (its header), so no
index file is written here: readers read the headers of packs no index file lists, and
``prune`` writes the index files (one request per backup saved on object storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from src.infra.backup.format.layout import chunk_key, pack_key
from src.infra.backup.format.packs import PACK_SIZE, PackEntry, build_pack
from src.infra.backup.repository.pack_index import PackedRepository

BlobDestination = PackedRepository


@dataclass
class BlobWriter:
    """Collects ``(chunk id, blob, plaintext size)`` and writes them out on :meth:`flush`."""

    repository: BlobDestination
    # Pack even in a format-1 repository (``migrate``, before it switches the format).
    force_packs: bool = False
    pending: list[tuple[str, bytes, int]] = field(default_factory=list)
    pending_bytes: int = 0
    packs_written: list[str] = field(default_factory=list)

    def add(self, cid: str, blob: bytes, size: int) -> None:
        """Hold one new blob until the next flush."""
        self.pending.append((cid, blob, size))
        self.pending_bytes += len(blob)

    def flush(self, *, final: bool = True) -> None:
        """Write what is held: every blob (``final``), or only full packs (format 2; blobs
        that do not fill one wait for a later flush)."""
        repository = self.repository
        if not self.pending:
            return
        if not (repository.packed or self.force_packs):
            repository.store.put_many((chunk_key(cid), blob) for cid, blob, _ in self.pending)
            self.pending, self.pending_bytes = [], 0
            return
        groups: list[list[tuple[str, bytes, int]]] = []
        group: list[tuple[str, bytes, int]] = []
        size = 0
        for item in self.pending:
            group.append(item)
            size += len(item[1])
            if size >= PACK_SIZE:
                groups.append(group)
                group, size = [], 0
        if final and group:
            groups.append(group)
            group, size = [], 0
        self.pending, self.pending_bytes = group, size
        if groups:
            self._write_packs(groups)

    def _write_packs(self, groups: list[list[tuple[str, bytes, int]]]) -> None:
        repository = self.repository
        entries: list[PackEntry] = []
        items: list[tuple[str, bytes]] = []
        for group in groups:
            pack_id, data, table = build_pack(group, repository.keys)
            entries.append(PackEntry(pack_id, table))
            items.append((pack_key(pack_id), data))
        repository.store.put_many(items)
        repository.pack_index.add_packs(entries)
        self.packs_written.extend(entry.pack for entry in entries)
