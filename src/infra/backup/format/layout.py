"""The repository's key layout: every name the repository gives an object, in one place.

restic keeps this map in ``internal/backend/layout``; here it is::

    repo.json                      the repository's configuration (format, chunker, encryption)
    snapshots/<backup_id>.json     one manifest per backup (its commit point)
    chunks/<cid[:2]>/<cid>         content-addressed blobs (format 1: one object per chunk)
    packs/<pid[:2]>/<pid>          packs of blobs (format 2), named by their hash
    index/packs/<id>               pack index files: where each packed blob is
    fossils/<cid[:2]>/<cid>        chunks a pending garbage collection moved aside
    gc/collection-<stamp>-<n>.json the records of pending collections
    gc-state.json                  whether those records may be changing (format 2)
    locks/<kind>-<hex>.json        leases of running backups and prunes
    locks/<name>.lock              exclusive locks
    locks/probe-<hex>              the S3 conditional-write probe (deleted at once where allowed)
    locks/<work>.delete-probe      never exists: its delete asks whether deletes are allowed
    index/snapshots                the snapshot index (a cache of manifest summaries)
    index/snapshots.token          changes when a manifest is deleted or a type appears (format 2)
    status/<host>.json             each host's run history (last success, failure, verify)
    pins/<backup_id>.json          a pin: retention and delete keep that backup (who, when, note)

Storage knows none of these names; the repository and monitoring layers build keys only
through this module. docs/FORMAT.md specifies each object.
"""

from __future__ import annotations

import re

REPO_KEY = "repo.json"
SNAPSHOT_PREFIX = "snapshots/"
SNAPSHOT_SUFFIX = ".json"
CHUNK_PREFIX = "chunks/"
FOSSIL_PREFIX = "fossils/"
COLLECTION_PREFIX = "gc/"
GC_STATE_KEY = "gc-state.json"
LOCK_PREFIX = "locks/"
PROBE_PREFIX = f"{LOCK_PREFIX}probe-"
INDEX_KEY = "index/snapshots"
SNAPSHOTS_TOKEN_KEY = "index/snapshots.token"
PACK_PREFIX = "packs/"
PACK_INDEX_PREFIX = "index/packs/"
STATUS_PREFIX = "status/"
PIN_PREFIX = "pins/"
PIN_SUFFIX = ".json"

_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


def snapshot_key(backup_id: str) -> str:
    """The manifest key of ``backup_id`` (the caller has validated the id)."""
    return f"{SNAPSHOT_PREFIX}{backup_id}{SNAPSHOT_SUFFIX}"


def chunk_key(cid: str) -> str:
    """The key of a chunk: ``chunks/`` fanned out by the first two hex digits of its id."""
    return f"{CHUNK_PREFIX}{cid[:2]}/{cid}"


def pack_key(pack_id: str) -> str:
    """The key of a pack, fanned out like chunks by the first two hex digits of its id."""
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def pack_index_key(index_id: str) -> str:
    """The key of a pack index file."""
    return f"{PACK_INDEX_PREFIX}{index_id}"


def fossil_key(cid: str) -> str:
    """Where a pending collection keeps chunk ``cid`` until it is deleted or brought back."""
    return f"{FOSSIL_PREFIX}{cid[:2]}/{cid}"


def chunk_id_of(key: str) -> str:
    """The chunk id at the end of a ``chunks/`` or ``fossils/`` key."""
    return key.rsplit("/", 1)[-1]


def collection_key(stamp: str, number: int) -> str:
    """The key of the ``number``-th record of the collection started at ``stamp``."""
    return f"{COLLECTION_PREFIX}collection-{stamp}-{number:05d}.json"


def lease_key(kind: str, token: str) -> str:
    """The key of one lease of ``kind`` (``backup``, ``prune``...)."""
    return f"{LOCK_PREFIX}{kind}-{token}.json"


def delete_probe_key(work: str) -> str:
    """The key whose delete tells ``work`` (prune, migrate) whether it may delete at all."""
    return f"{LOCK_PREFIX}{work}.delete-probe"


def lock_key(name: str) -> str:
    """The key of the exclusive lock ``name``."""
    return f"{LOCK_PREFIX}{name}.lock"


def pin_key(backup_id: str) -> str:
    """The key of the pin of ``backup_id`` (the caller has validated the id)."""
    return f"{PIN_PREFIX}{backup_id}{PIN_SUFFIX}"


def pinned_id_of(key: str) -> str | None:
    """The backup id a ``pins/`` key names, or ``None`` for a key that is no pin."""
    name = key[len(PIN_PREFIX) :] if key.startswith(PIN_PREFIX) else ""
    if not name.endswith(PIN_SUFFIX) or "/" in name:
        return None
    return name[: -len(PIN_SUFFIX)] or None


def status_key(host: str) -> str:
    """The run-history key of ``host`` (characters unsafe in a key become ``_``; leading dots
    and dashes are dropped, so the key never names a hidden file)."""
    safe = _UNSAFE_IN_NAME.sub("_", host).lstrip(".-") or "host"
    return f"{STATUS_PREFIX}{safe}.json"
