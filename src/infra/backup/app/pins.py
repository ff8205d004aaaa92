"""Pins: backups that retention never deletes and ``delete`` refuses without ``force``.

A pin is one small object per backup, ``pins/<backup_id>.json`` (docs/FORMAT.md, "Pins"):
pinning is one ``put`` (a bot host whose credentials may write but not delete can pin),
unpinning one ``delete``, and every pin of the repository is one listing of ``pins/``. The
object's existence is the pin; its content (who, when, a note) is information only, so an
unreadable pin still protects its backup. Pins change no backup: manifests and chunks stay as
they are, and garbage collection needs no change (a kept manifest keeps its chunks).
"""

from __future__ import annotations

import getpass
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from src.infra.backup.errors import BackupNotFoundError, InvalidInputError, StorageError
from src.infra.backup.format.ids import is_valid_backup_id, note_problem
from src.infra.backup.format.layout import PIN_PREFIX, pin_key, pinned_id_of, snapshot_key
from src.infra.backup.repository.locks import HOSTNAME
from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)

PIN_FORMAT = 1


@dataclass(frozen=True)
class Pin:
    """One pin as stored (fields an unreadable pin object does not tell are ``None``)."""

    backup_id: str
    pinned_utc: datetime | None = None
    host: str | None = None
    user: str | None = None
    note: str | None = None

    def describe(self) -> str:
        """``by ops@bot-1 at 2025-12-17 10:05 (local): note`` (what is known of it)."""
        who = "@".join(part for part in (self.user, self.host) if part)
        parts = [f"by {who}" if who else ""]
        if self.pinned_utc is not None:
            parts.append(f"at {self.pinned_utc.astimezone():%Y-%m-%d %H:%M:%S} (local)")
        text = " ".join(part for part in parts if part) or "pinned"
        return f"{text}: {self.note}" if self.note else text


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment: the pin says less, that is all
        return None


def encode_pin(pin: Pin) -> bytes:
    """The stored form of ``pin``: compact JSON."""
    document = {
        "format": PIN_FORMAT,
        "backup_id": pin.backup_id,
        "pinned_utc": (
            pin.pinned_utc.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            if pin.pinned_utc is not None
            else None
        ),
        "host": pin.host,
        "user": pin.user,
        "note": pin.note,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def pin_json(pin: Pin) -> dict[str, str | None]:
    """A pin's fields for ``--json`` output (``pinned_utc`` in ISO 8601, UTC)."""
    when = pin.pinned_utc
    return {
        "pinned_utc": when.astimezone(timezone.utc).isoformat() if when is not None else None,
        "host": pin.host,
        "user": pin.user,
        "note": pin.note,
    }


def decode_pin(backup_id: str, data: bytes) -> Pin:
    """A stored pin; what cannot be read is left ``None`` (the pin stands either way)."""
    try:
        document = json.loads(data)
    except ValueError:
        return Pin(backup_id)
    if not isinstance(document, dict):
        return Pin(backup_id)

    def text(name: str) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    when = None
    stamp = text("pinned_utc")
    if stamp:
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            when = None
    return Pin(backup_id, when, text("host"), text("user"), text("note"))


def _check_id(backup_id: str) -> None:
    if not is_valid_backup_id(backup_id):
        raise BackupNotFoundError(f"backup not found: {backup_id}")


def pin_backup(repository: Repository, backup_id: str, *, note: str | None = None) -> Pin:
    """Pin ``backup_id`` (again: the pin is replaced, so pinning twice is harmless).
    :class:`BackupNotFoundError` and nothing written if there is no such backup."""
    problem = note_problem(note)
    if problem:
        raise InvalidInputError(problem)
    _check_id(backup_id)
    if not repository.store.exists(snapshot_key(backup_id)):
        raise BackupNotFoundError(f"backup not found: {backup_id}")
    pin = Pin(backup_id, datetime.now(timezone.utc), HOSTNAME, _user(), note)
    repository.store.put(pin_key(backup_id), encode_pin(pin))
    log.info("backup %s pinned", backup_id, extra={"backup_id": backup_id, "outcome": "pinned"})
    return pin


def unpin_backup(repository: Repository, backup_id: str) -> bool:
    """Remove the pin of ``backup_id``; ``False`` if it had none. A pin whose backup is gone
    can be removed too; :class:`BackupNotFoundError` if there is neither pin nor backup."""
    _check_id(backup_id)
    store = repository.store
    if not store.exists(pin_key(backup_id)):
        if not store.exists(snapshot_key(backup_id)):
            raise BackupNotFoundError(f"backup not found: {backup_id}")
        return False
    store.delete(pin_key(backup_id))
    log.info("backup %s unpinned", backup_id, extra={"backup_id": backup_id, "outcome": "unpinned"})
    return True


def pinned_ids(repository: Repository) -> set[str]:
    """The ids of every pinned backup (one listing; pins of deleted backups included)."""
    ids = (pinned_id_of(key) for key in repository.store.list(PIN_PREFIX))
    return {backup_id for backup_id in ids if backup_id is not None}


def is_pinned(repository: Repository, backup_id: str) -> bool:
    """Whether ``backup_id`` is pinned (one existence check)."""
    return is_valid_backup_id(backup_id) and repository.store.exists(pin_key(backup_id))


def read_pin(repository: Repository, backup_id: str) -> Pin | None:
    """The pin of ``backup_id``, or ``None`` if it has none."""
    if not is_valid_backup_id(backup_id):
        return None
    try:
        data = repository.store.get(pin_key(backup_id))
    except KeyError:
        return None
    return decode_pin(backup_id, data)


def drop_pin(repository: Repository, backup_id: str) -> None:
    """Remove the pin of a backup just deleted (``delete --force``); a failure leaves a pin of
    nothing, which protects nothing and is only logged."""
    try:
        repository.store.delete(pin_key(backup_id))
    except StorageError as exc:
        log.warning("pin of deleted backup %s not removed: %s", backup_id, exc)
