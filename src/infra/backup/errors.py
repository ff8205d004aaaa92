"""Exception hierarchy of the backup subsystem.

Every error the subsystem raises on purpose derives from :class:`BackupError`, so callers
can catch one type. Each class carries the CLI exit code it maps to.
"""

from __future__ import annotations

from src.core.errors import ConfigError as CoreConfigError


class BackupError(Exception):
    """Base class of every error raised by the backup subsystem."""

    exit_code = 1


class ConfigError(BackupError, CoreConfigError):
    """The configuration is invalid: names the key, the value and what was expected."""

    exit_code = 6


class InvalidInputError(BackupError, ValueError):
    """An argument is invalid (backup type, entry name, tag, ...). Nothing was written."""

    exit_code = 2


class UnsupportedValueError(InvalidInputError, TypeError):
    """A value handed to ``create_backup`` cannot be stored losslessly.

    ``path`` names where it sits, for example ``data["portfolio"]["positions"][3]``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class RecoveryError(BackupError):
    """A backup could not be restored (the seed's name; base of restore failures)."""


class BackupNotFoundError(RecoveryError, KeyError):
    """No backup with that id exists (or the id is not a valid backup id)."""

    exit_code = 3

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "backup not found"


class RepositoryNotFoundError(BackupNotFoundError):
    """There is no repository at the configured path (the first backup creates it)."""


class IntegrityError(RecoveryError):
    """Stored data failed verification: a missing or corrupt chunk or manifest."""

    exit_code = 4


class CorruptDataError(IntegrityError):
    """Bytes could not be parsed or did not match their checksum."""


class FormatVersionError(BackupError):
    """The repository or a manifest uses a newer format than this version understands."""

    exit_code = 4


class RepositoryBusyError(BackupError):
    """Another process holds a lock the operation needs."""

    exit_code = 5


class StorageError(BackupError):
    """The storage backend failed (disk full, I/O error, permission denied, ...)."""


class DiskFullError(StorageError):
    """The store has no space left (or the quota is used up)."""


class ObjectExistsError(StorageError):
    """An exclusive write found the object already present."""


class WrongPassphraseError(BackupError):
    """The passphrase does not unlock the repository's key."""

    exit_code = 8


class PassphraseRequiredError(BackupError):
    """An encrypted repository needs a passphrase and none was given."""

    exit_code = 8


class HookError(BackupError):
    """A ``before`` hook failed (exit status, timeout, program not found): the backup was not
    made. Names the hook, the command, why it failed and the last lines of its stderr."""


class CommandSourceError(BackupError):
    """A command source failed (exit status, killed, timeout, program not found): nothing of
    it is stored and the backup fails. Names the command, why, and its stderr's last lines."""


class BotRunningError(RecoveryError):
    """An in-place restore was refused: the trading bot named in ``[backup] bot_pidfile`` is
    running (``--force`` / ``force=True`` overrides). Nothing was written."""


class BackupExistsError(BackupError):
    """An import found a backup with the same id in the repository."""


class UnsafeArchiveError(BackupError):
    """An archive holds members that could write outside the target (tar-slip), links,
    devices, or more than the size limits allow. Nothing was extracted."""


class InvalidExportError(BackupError):
    """A folder or archive is not a readable export (metadata or entry files are wrong)."""


class MetricsUnavailableError(BackupError):
    """``prometheus-client`` is not installed."""
