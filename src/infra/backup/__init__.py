"""Peak-Trade backup and recovery: versioned, deduplicated, verified snapshots of bot state.

The seed's API::

    from src.infra.backup import BackupManager, BackupConfig, RecoveryManager, RecoveryError

Everything the README documents is importable from here; the subpackages (``storage``,
``format``, ``repository``, ``files``, ``policy``, ``app``, ``monitoring``, ``cli``; see
docs/ARCHITECTURE.md) are the implementation and may move. Names are loaded on first use, so
``import src.infra.backup`` (and a CLI command) only pays for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from src.infra.backup._version import __version__
from src.infra.backup.errors import (
    BackupError,
    BackupExistsError,
    BackupNotFoundError,
    BotRunningError,
    CommandSourceError,
    ConfigError,
    CorruptDataError,
    DiskFullError,
    FormatVersionError,
    HookError,
    IntegrityError,
    InvalidExportError,
    InvalidInputError,
    MetricsUnavailableError,
    PassphraseRequiredError,
    RecoveryError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    StorageError,
    UnsafeArchiveError,
    UnsupportedValueError,
    WrongPassphraseError,
)

if TYPE_CHECKING:
    from src.infra.backup.app.backup_info import BackupInfo
    from src.infra.backup.app.config import BackupConfig, load_backup_config
    from src.infra.backup.app.diff import (
        Change,
        DiffResult,
        diff_against_sources,
        diff_backups,
        diff_values,
    )
    from src.infra.backup.app.export import export_backup, import_backup
    from src.infra.backup.app.manager import BackupManager, get_backup_manager
    from src.infra.backup.app.outcome import BackupHook, BackupOutcome
    from src.infra.backup.app.recovery import (
        RecoveryManager,
        RestoreResult,
        get_recovery_manager,
    )
    from src.infra.backup.app.rollback import RollbackGuard, rollback_on_error
    from src.infra.backup.monitoring.health import (
        BackupHealthCheck,
        HealthResult,
        check_backup_health,
    )
    from src.infra.backup.monitoring.logging_setup import configure_logging
    from src.infra.backup.monitoring.metrics import (
        BackupMetrics,
        instrument,
        start_http_server,
        write_textfile,
    )
    from src.infra.backup.policy.retention import Decision, RetentionPolicy
    from src.infra.backup.repository.check import CheckReport
    from src.infra.backup.repository.gc import PruneReport

# Public name -> the module that defines it (imported on first access).
_LAZY: dict[str, str] = {
    "BackupInfo": "src.infra.backup.app.backup_info",
    "BackupConfig": "src.infra.backup.app.config",
    "load_backup_config": "src.infra.backup.app.config",
    "Change": "src.infra.backup.app.diff",
    "DiffResult": "src.infra.backup.app.diff",
    "diff_against_sources": "src.infra.backup.app.diff",
    "diff_backups": "src.infra.backup.app.diff",
    "diff_values": "src.infra.backup.app.diff",
    "export_backup": "src.infra.backup.app.export",
    "import_backup": "src.infra.backup.app.export",
    "BackupManager": "src.infra.backup.app.manager",
    "get_backup_manager": "src.infra.backup.app.manager",
    "BackupHook": "src.infra.backup.app.outcome",
    "BackupOutcome": "src.infra.backup.app.outcome",
    "RecoveryManager": "src.infra.backup.app.recovery",
    "RestoreResult": "src.infra.backup.app.recovery",
    "get_recovery_manager": "src.infra.backup.app.recovery",
    "RollbackGuard": "src.infra.backup.app.rollback",
    "rollback_on_error": "src.infra.backup.app.rollback",
    "BackupHealthCheck": "src.infra.backup.monitoring.health",
    "HealthResult": "src.infra.backup.monitoring.health",
    "check_backup_health": "src.infra.backup.monitoring.health",
    "configure_logging": "src.infra.backup.monitoring.logging_setup",
    "BackupMetrics": "src.infra.backup.monitoring.metrics",
    "instrument": "src.infra.backup.monitoring.metrics",
    "start_http_server": "src.infra.backup.monitoring.metrics",
    "write_textfile": "src.infra.backup.monitoring.metrics",
    "Decision": "src.infra.backup.policy.retention",
    "RetentionPolicy": "src.infra.backup.policy.retention",
    "CheckReport": "src.infra.backup.repository.check",
    "PruneReport": "src.infra.backup.repository.gc",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackupConfig",
    "BackupError",
    "BackupExistsError",
    "BackupHealthCheck",
    "BackupHook",
    "BackupInfo",
    "BackupManager",
    "BackupMetrics",
    "BackupNotFoundError",
    "BackupOutcome",
    "BotRunningError",
    "Change",
    "CheckReport",
    "CommandSourceError",
    "ConfigError",
    "CorruptDataError",
    "Decision",
    "DiffResult",
    "DiskFullError",
    "FormatVersionError",
    "HealthResult",
    "HookError",
    "IntegrityError",
    "InvalidExportError",
    "InvalidInputError",
    "MetricsUnavailableError",
    "PassphraseRequiredError",
    "PruneReport",
    "RecoveryError",
    "RecoveryManager",
    "RepositoryBusyError",
    "RepositoryNotFoundError",
    "RestoreResult",
    "RetentionPolicy",
    "RollbackGuard",
    "StorageError",
    "UnsafeArchiveError",
    "UnsupportedValueError",
    "WrongPassphraseError",
    "__version__",
    "check_backup_health",
    "configure_logging",
    "diff_against_sources",
    "diff_backups",
    "diff_values",
    "export_backup",
    "get_backup_manager",
    "get_recovery_manager",
    "import_backup",
    "instrument",
    "load_backup_config",
    "rollback_on_error",
    "start_http_server",
    "write_textfile",
]
