"""Snapshots over a store: write chunks, commit manifests, read, verify, delete.

The commit protocol: every new chunk is written durably first (one ``put_many`` call: fsync per
file, one fsync per directory); then the manifest is written exclusively. A backup exists if and
only if its manifest exists, so a crash at any instant leaves no backup or a complete one. The
repository knows nothing of trading, retention or the CLI.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    FormatVersionError,
    InvalidInputError,
    ObjectExistsError,
    PassphraseRequiredError,
    RepositoryNotFoundError,
    StorageError,
)
from src.infra.backup.format.blobs import Compression
from src.infra.backup.format.chunking import NEW_REPOSITORY_CHUNKER
from src.infra.backup.format.crypto import (
    AEAD_ALGORITHMS,
    EncryptionHeader,
    RepositoryKeys,
    create_encryption,
    rewrap,
    unlock,
)
from src.infra.backup.format.ids import (
    is_valid_backup_id,
)
from src.infra.backup.format.layout import (
    CHUNK_PREFIX,
    PACK_PREFIX,
    REPO_KEY,
    snapshot_key,
)
from src.infra.backup.format.manifest import (
    REPO_FORMAT_VERSION,
    RepoConfig,
    decode_checked,
    encode_checked,
)
from src.infra.backup.repository.catalog import drop_snapshots_token, renew_snapshots_token
from src.infra.backup.repository.gc import close_gc_state
from src.infra.backup.repository.receiver import RepositoryReceiver
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

# The format of repositories created from now on (tests of format-1 behaviour set it to 1).
NEW_REPOSITORY_FORMAT = REPO_FORMAT_VERSION

PassphraseSource = Callable[[], str]


class Repository(RepositoryReceiver):
    """A backup repository on a :class:`Store`: opened (or created) with :meth:`open`, then read
    (:class:`RepositoryReader`), written (:class:`RepositoryWriter`) and replicated into
    (:class:`RepositoryReceiver`). Safe to share between threads."""

    @classmethod
    def open(
        cls,
        store: Store,
        *,
        compression: Compression | None = None,
        create: bool = True,
        passphrase: PassphraseSource | None = None,
        encryption: str = "none",
        repo_format: int | None = None,
    ) -> Repository:
        """Open the repository in ``store``, creating it (``repo.json``) if allowed.

        ``encryption`` (an AEAD name or ``"none"``) and ``repo_format`` (1: one object per
        chunk, as versions before 0.3 wrote; 2: packs; by default
        :data:`NEW_REPOSITORY_FORMAT`) only matter when the repository is created.
        ``passphrase`` is called when the repository is (or is to be) encrypted.
        """
        compression = compression or Compression()
        created: RepositoryKeys | None = None
        try:
            raw = store.get(REPO_KEY)
        except KeyError:
            if not create:
                raise RepositoryNotFoundError(
                    f"no backup repository at {store.location} (the first backup creates it)"
                ) from None
            raw, created = cls._initialize(
                store, encryption, passphrase, repo_format or NEW_REPOSITORY_FORMAT
            )
        config = decode_checked(raw, RepoConfig, f"{store.location}/{REPO_KEY}")
        if config.hash != "blake3-256":
            raise FormatVersionError(f"unsupported chunk hash {config.hash!r} in {REPO_KEY}")
        keys = None
        if config.encryption is not None:
            header = EncryptionHeader.from_json(config.encryption)
            if created is not None:
                keys = created
            else:
                if passphrase is None:
                    raise PassphraseRequiredError(
                        f"the repository at {store.location} is encrypted: give its passphrase"
                    )
                keys = unlock(header, passphrase(), cache_key=config.repository_id)
        return cls(store, config, compression, keys)

    @staticmethod
    def _initialize(
        store: Store, encryption: str, passphrase: PassphraseSource | None, repo_format: int
    ) -> tuple[bytes, RepositoryKeys | None]:
        if repo_format not in (1, REPO_FORMAT_VERSION):
            raise InvalidInputError(f"unknown repository format {repo_format}: expected 1 or 2")
        repository_id = uuid.uuid4().hex
        header_json = None
        keys = None
        if encryption != "none":
            if encryption not in AEAD_ALGORITHMS:
                raise InvalidInputError(
                    f"unknown encryption {encryption!r}: expected none or "
                    + " or ".join(AEAD_ALGORITHMS)
                )
            if passphrase is None:
                raise PassphraseRequiredError("a new encrypted repository needs a passphrase")
            header, keys = create_encryption(passphrase(), aead=encryption, cache_key=repository_id)
            header_json = header.to_json()
        config = RepoConfig(
            format=repo_format,
            repository_id=repository_id,
            created_utc=datetime.now(timezone.utc),
            hash="blake3-256",
            chunker=dict(NEW_REPOSITORY_CHUNKER.to_json()),  # type: ignore[arg-type]
            encryption=header_json,
        )
        raw = encode_checked(config)
        if repo_format >= 2:  # before repo.json: no prune can run before it is there
            close_gc_state(store)
        try:
            store.put(REPO_KEY, raw, exclusive=True)
        except ObjectExistsError:
            return store.get(REPO_KEY), None  # another process initialized it first
        return raw, keys

    def change_passphrase(self, old: str, new: str) -> None:
        """Re-wrap the master key under a new passphrase; no data is rewritten."""
        if self.config.encryption is None:
            raise InvalidInputError("the repository is not encrypted: it has no passphrase")
        header = EncryptionHeader.from_json(self.config.encryption)
        updated = rewrap(header, old, new, cache_key=self.config.repository_id)
        config = msgspec.structs.replace(self.config, encryption=updated.to_json())
        self.store.put(REPO_KEY, encode_checked(config))
        self.config = config

    def stored_bytes(self) -> int:
        """Bytes of all chunks and packs in the store, as stored (compressed, encrypted)."""
        total = sum(info.size for info in self.store.list_info(CHUNK_PREFIX))
        if self.packed:
            total += sum(info.size for info in self.store.list_info(PACK_PREFIX))
        return total

    def delete_snapshot(self, backup_id: str) -> None:
        """Remove a backup's manifest (its chunks are reclaimed by garbage collection)."""
        key = snapshot_key(backup_id)
        if not is_valid_backup_id(backup_id) or not self.store.exists(key):
            raise BackupNotFoundError(f"backup not found: {backup_id}")
        if self.packed:  # no token while it goes: listings are complete (catalog.py)
            try:
                drop_snapshots_token(self.store)
            except StorageError as exc:
                raise type(exc)(f"backup {backup_id} not deleted: {exc}") from exc
        self.store.delete(key)
        if self.packed:
            try:
                renew_snapshots_token(self.store)
            except StorageError as exc:  # a full disk: deleting is how space is freed
                log.warning("snapshots token not renewed, listings stay complete: %s", exc)
        with self._lock:
            self._manifests.pop(backup_id, None)
        self.catalog.forget(backup_id)
