"""Receiving backups from another repository with the same ``repo.json`` (replication):
missing chunks are copied verified, then the manifest is committed as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    InvalidInputError,
    ObjectExistsError,
)
from src.infra.backup.format.ids import (
    next_id,
)
from src.infra.backup.format.layout import (
    CHUNK_PREFIX,
    chunk_id_of,
    snapshot_key,
)
from src.infra.backup.format.manifest import (
    Manifest,
    decode_checked,
    encode_checked,
    open_manifest,
    seal_manifest,
)
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.locks import BACKUP_LEASE_KIND, Lease
from src.infra.backup.repository.writer import BACKUP_LEASE_TTL, RepositoryWriter

log = logging.getLogger(__name__)


@dataclass
class Received:
    """What :meth:`Repository.receive_snapshot` did: ``outcome`` is ``"copied"``,
    ``"present"`` (already here, identical) or ``"renamed"`` (stored as ``backup_id``)."""

    backup_id: str
    outcome: str
    blobs: int = 0
    bytes: int = 0


class RepositoryReceiver(RepositoryWriter):
    """The replication side of a repository: what a source needs to know, and receiving."""

    def chunk_ids(self) -> set[str]:
        """Ids of every blob stored: in ``chunks/`` (one listing) and, in a format-2
        repository, in the packs the pack index lists."""
        ids = {chunk_id_of(key) for key in self.store.list(CHUNK_PREFIX)}
        if self.packed:
            self.pack_index.refresh()
            ids.update(
                blob.id for entry in self.pack_index.packs().values() for blob in entry.blobs
            )
        return ids

    def blob_sizes(self, manifest: Manifest) -> dict[str, tuple[int, int]]:
        """Every blob a backup needs (its chunks and chunk lists), in order, each once:
        id -> (plaintext size, stored size)."""
        sizes: dict[str, tuple[int, int]] = {}
        for entry in manifest.entries:
            for lref in entry.lists:
                sizes[lref.id] = (lref.size, lref.stored)
            for ref in self.entry_refs(entry):
                sizes[ref.id] = (ref.size, ref.stored)
        return sizes

    def verified_blobs(self, cids: list[str], sizes: dict[str, tuple[int, int]]) -> Iterator[bytes]:
        """The blobs of ``cids`` as stored (fetched ahead where the store can), each checked
        to decode to its plaintext size with its id first, so a copy never spreads damage."""
        fetched = self.fetch_blobs(cids)
        for cid, blob in zip(cids, fetched, strict=True):
            if blob is None:
                blob = self.read_blob(cid)
            self.codec.decode(blob, cid, sizes[cid][0])
            yield blob

    def replication_lease(self) -> Lease:
        """A backup lease for a run of :meth:`receive_snapshot` calls; list ``present``
        chunks only after taking it (garbage collection then never deletes them unseen)."""
        return Lease(self.store, BACKUP_LEASE_KIND, BACKUP_LEASE_TTL).acquire()

    def receive_snapshot(
        self,
        source: RepositoryReceiver,
        backup_id: str,
        present: set[str],
        lease: Lease,
        *,
        rename: bool = False,
        batch_bytes: int = 16 * 1024 * 1024,
    ) -> Received:
        """Copy backup ``backup_id`` from ``source`` (a replica of this repository: same
        ``repository_id``, so the same keys and chunk ids) with only the blobs this one lacks.

        ``lease`` is a :meth:`replication_lease` held since before ``present`` (the ids known
        to be in ``chunks/``, updated here) was listed. Like a backup, chunks of pending
        collections are never assumed present, and the manifest (the source's stored bytes,
        verified) is written exclusively last, so an interrupted copy leaves no backup and a
        rerun copies only what is still missing. A backup already here with the same bytes is
        ``"present"``; a *different* backup under the same id (two repositories that took
        backups in the same second, e.g. a fallback) is :class:`ObjectExistsError`, or with
        ``rename`` the copy is committed under the next free id (``"renamed"``).
        """
        if source.config.repository_id != self.config.repository_id:
            raise InvalidInputError(
                f"{self.store.location} is not a replica of {source.store.location} "
                "(different repository ids)"
            )
        key = snapshot_key(backup_id)
        lease.renew_if_due()
        try:
            stored = source.store.get(key)
        except KeyError:
            raise BackupNotFoundError(f"backup not found: {backup_id}") from None
        manifest = decode_checked(
            open_manifest(stored, source.keys, backup_id), Manifest, f"manifest {backup_id}"
        )
        existing = self._stored_manifest(backup_id)
        if existing == stored:
            return Received(backup_id, "present")
        if existing is not None and not rename:
            raise ObjectExistsError(self._conflict(backup_id))
        collected = self.collected_chunks()
        sizes = source.blob_sizes(manifest)
        missing = [cid for cid in sizes if cid not in present or cid in collected]
        received = Received(backup_id, "copied")
        sink = BlobWriter(self)
        for cid, blob in zip(missing, source.verified_blobs(missing, sizes), strict=True):
            sink.add(cid, blob, sizes[cid][0])
            if sink.pending_bytes >= batch_bytes:
                sink.flush(final=False)
                lease.renew_if_due()
            received.blobs += 1
            received.bytes += len(blob)
        sink.flush(final=True)
        present.update(missing)
        if not lease.still_valid():
            self.revalidate(sizes, collected.packs)
        elif collected:  # as a backup does (writer.py): collected chunks are back before commit
            self.revalidate([cid for cid in sizes if cid in collected], collected.packs)
        target, data = backup_id, stored
        while True:
            try:
                self.store.put(snapshot_key(target), data, exclusive=True)
                break
            except ObjectExistsError:
                if self._stored_manifest(target) == data:
                    break  # copied concurrently by another sync
                if not rename:
                    raise ObjectExistsError(self._conflict(target)) from None
                target = next_id(target)
                raw = encode_checked(msgspec.structs.replace(manifest, backup_id=target))
                data = seal_manifest(raw, self.keys, target) if self.keys else raw
        if target != backup_id:
            received.backup_id, received.outcome = target, "renamed"
        return received

    def _stored_manifest(self, backup_id: str) -> bytes | None:
        try:
            return self.store.get(snapshot_key(backup_id))
        except KeyError:
            return None

    def _conflict(self, backup_id: str) -> str:
        return f"a different backup {backup_id} already exists in {self.store.location}"
