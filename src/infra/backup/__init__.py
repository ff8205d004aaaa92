"""Peak-Trade backup and recovery: versioned, deduplicated, verified snapshots of bot state.

The seed's API::

    from src.infra.backup import BackupManager, BackupConfig, RecoveryManager, RecoveryError
"""

from src.infra.backup._version import __version__
from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.app.config import BackupConfig, load_backup_config
from src.infra.backup.app.manager import BackupManager, get_backup_manager
from src.infra.backup.app.recovery import RecoveryManager, RestoreResult, get_recovery_manager
from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
    ConfigError,
    CorruptDataError,
    FormatVersionError,
    IntegrityError,
    InvalidInputError,
    PassphraseRequiredError,
    RecoveryError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    StorageError,
    UnsupportedValueError,
    WrongPassphraseError,
)
from src.infra.backup.repository.check import CheckReport
from src.infra.backup.repository.gc import PruneReport

__all__ = [
    "BackupConfig",
    "BackupError",
    "BackupInfo",
    "BackupManager",
    "BackupNotFoundError",
    "CheckReport",
    "ConfigError",
    "CorruptDataError",
    "FormatVersionError",
    "IntegrityError",
    "InvalidInputError",
    "PassphraseRequiredError",
    "PruneReport",
    "RecoveryError",
    "RecoveryManager",
    "RepositoryBusyError",
    "RepositoryNotFoundError",
    "RestoreResult",
    "StorageError",
    "UnsupportedValueError",
    "WrongPassphraseError",
    "__version__",
    "get_backup_manager",
    "get_recovery_manager",
    "load_backup_config",
]
