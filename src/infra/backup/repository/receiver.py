"""Receiving backups from another repository with the same ``repo.json`` (replication):
missing chunks are copied verified (whole packs where the backups copied need most of one:
``pack_transfer.py``), then the manifest is committed as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    StorageError,
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
from src.infra.backup.repository.pack_index import Location
from src.infra.backup.repository.pack_transfer import TransferPlan, copy_packs, plan_transfer
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
    packs: int = 0  # source packs copied whole


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
        id -> (plaintext size, stored size). Chunk lists not cached are fetched at once."""
        sizes: dict[str, tuple[int, int]] = {}
        found = self.iter_entry_refs(manifest.entries)
        for entry, refs in zip(manifest.entries, found, strict=True):
            if isinstance(refs, Exception):
                raise refs
            for lref in entry.lists:
                sizes[lref.id] = (lref.size, lref.stored)
            for ref in refs:
                sizes[ref.id] = (ref.size, ref.stored)
        return sizes

    def verified_blobs(self, cids: list[str], sizes: dict[str, tuple[int, int]]) -> Iterator[bytes]:
        """The blobs of ``cids`` as stored (fetched ahead where the store can, packed ones in
        coalesced ranged reads), each checked to decode to its plaintext size with its id
        first, so a copy never spreads damage."""
        fetched = self.fetch_blobs(cids)
        for cid, blob in zip(cids, fetched, strict=True):
            stored = self.read_blob(cid) if blob is None else bytes(blob)
            self.codec.decode(stored, cid, sizes[cid][0])
            yield stored

    def transfer_plan(
        self,
        destination: RepositoryReceiver,
        manifests: dict[str, tuple[bytes, Manifest]],
        present: set[str],
        lease: Lease,
    ) -> TransferPlan:
        """Which of this repository's packs a sync to ``destination`` copies whole, and
        when (see ``pack_transfer.py``): ``manifests`` are the backups it copies (id ->
        stored bytes, parsed), in order; ``present`` the blobs ``destination`` has (listed
        under ``lease``, its replication lease)."""
        collected = destination.collected_chunks()
        try:  # every chunk list at once (coalesced, in parallel), not one round trip each
            for _ in self.iter_entry_refs(e for _, m in manifests.values() for e in m.entries):
                lease.renew_if_due()
        except (IntegrityError, StorageError):
            pass  # each backup's own reading below names what is wrong
        needed: dict[str, int] = {}
        wanted: dict[str, list[str]] = {}
        for backup_id, (_, manifest) in manifests.items():
            try:
                sizes = self.blob_sizes(manifest)
            except (IntegrityError, StorageError):
                continue  # its copy fails in turn, naming the damage
            wanted[backup_id] = [c for c in sizes if c not in present or c in collected]
            needed.update((cid, sizes[cid][0]) for cid in wanted[backup_id])
        plan = plan_transfer(self, destination, needed, collected)
        plan.by_backup = {backup_id: plan.packs_for(cids) for backup_id, cids in wanted.items()}
        plan.manifests = {backup_id: stored for backup_id, (stored, _) in manifests.items()}
        return plan

    def receive_packs(
        self, source: RepositoryReceiver, plan: TransferPlan, pack_ids: list[str], lease: Lease
    ) -> int:
        """Copy ``pack_ids`` of ``plan`` whole from ``source`` (checked, durable when this
        returns; see ``pack_transfer.py``), ahead of the backups that need them; how many
        were copied."""
        return len(copy_packs(source, self, plan, pack_ids, lease.renew_if_due))

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
        plan: TransferPlan | None = None,
    ) -> Received:
        """Copy backup ``backup_id`` from ``source`` (a replica of this repository: same
        ``repository_id``, so the same keys and chunk ids) with only the blobs this one lacks.

        ``lease`` is a :meth:`replication_lease` held since before ``present`` (the ids known
        to be stored here, updated here) was listed. Like a backup, chunks of pending
        collections are never assumed present, and the manifest (the source's stored bytes,
        verified) is written exclusively last, so an interrupted copy leaves no backup and a
        rerun copies only what is still missing. A backup already here with the same bytes is
        ``"present"``; a *different* backup under the same id (two repositories that took
        backups in the same second, e.g. a fallback) is :class:`ObjectExistsError`, or with
        ``rename`` the copy is committed under the next free id (``"renamed"``).

        ``plan`` (:meth:`transfer_plan`, made under the same lease for every backup of the
        run) names the source packs copied whole, each checked; the other missing blobs are
        read in coalesced ranged reads, each verified, and packed anew here.
        """
        if source.config.repository_id != self.config.repository_id:
            raise InvalidInputError(
                f"{self.store.location} is not a replica of {source.store.location} "
                "(different repository ids)"
            )
        key = snapshot_key(backup_id)
        lease.renew_if_due()
        stored = None if plan is None else plan.manifests.pop(backup_id, None)
        try:
            stored = source.store.get(key) if stored is None else stored
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
        received = Received(backup_id, "copied", blobs=len(missing))
        received.bytes = sum(sizes[cid][1] for cid in missing)
        if plan is not None:  # whole packs first (if not copied ahead): checked, in batches
            received.packs = self.receive_packs(source, plan, plan.packs_for(missing), lease)
        arrived = plan.arrived if plan is not None else set()
        rest = [cid for cid in missing if cid not in arrived]
        rest.sort(key=lambda cid: _place(source.locate(cid)))  # coalesced reads, pack order
        sink = BlobWriter(self)
        for cid, blob in zip(rest, source.verified_blobs(rest, sizes), strict=True):
            sink.add(cid, blob, sizes[cid][0])
            if sink.pending_bytes >= batch_bytes:
                sink.flush(final=False)
                lease.renew_if_due()
        sink.flush(final=True)
        present.update(missing)
        if not lease.still_valid():
            self.revalidate(sizes, collected.packs)
        elif collected:  # as a backup does (writer.py): collected chunks are back before commit
            self.revalidate([cid for cid in sizes if cid in collected], collected.packs)
        target, data = backup_id, stored
        self.announce_type(manifest.backup_type)
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


def _place(location: Location | None) -> tuple[str, int]:
    """Sort key: packed blobs by pack and offset (so reads coalesce), loose ones last."""
    return ("~", 0) if location is None else (location.pack, location.offset)
