"""``BackupConfig``: the ``[backup]`` table of ``config.toml``, validated.

The seed's five keys keep their meaning and defaults; the others are optional. Validation is
strict (``msgspec``): an unknown or mistyped key is a :class:`ConfigError` that names the key,
the value and what was expected, and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from src.core import Config, load_config
from src.core.errors import ConfigError as CoreConfigError
from src.infra.backup.app.alert_settings import AlertSettings, parse_alerts
from src.infra.backup.app.config_sections import (
    LEVEL_RANGES,
    HooksSettings,
    OffsiteSettings,
    explain_invalid,
    is_s3_url,
    parse_command_sources,
    parse_hooks,
    parse_offsite,
    parse_retention,
    parse_s3,
    s3_table,
    unknown_key_error,
)
from src.infra.backup.errors import ConfigError
from src.infra.backup.files.settings import CommandSourceSettings, SourceSettings
from src.infra.backup.format.blobs import DEFAULT_LEVELS, Compression
from src.infra.backup.format.durations import parse_daily_at, parse_duration, parse_weekly
from src.infra.backup.format.layout import PROBE_PREFIX
from src.infra.backup.policy.retention import RetentionPolicy
from src.infra.backup.storage import open_store
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.s3_location import S3Options, parse_s3_url

if TYPE_CHECKING:
    from src.infra.backup.files.settings import SqliteOptions


class _BackupTable(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of ``[backup]``: types only; ranges are checked in ``BackupConfig``."""

    enabled: bool = True
    interval_hours: float = 24.0
    retention_days: int = 30
    backup_path: str = "./backups"
    compress: bool = True
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    compression_level: int | None = None
    sources: list[str] = []
    exclude: list[str] = []
    include_secrets: bool = False
    prune_grace: str = "1h"
    auto_prune: bool = True
    encryption: Literal["none", "chacha20-poly1305", "aes-256-gcm"] = "none"
    password_file: str | None = None
    retention: Any = None  # the [backup.retention] table, checked by parse_retention
    daily_at: str | None = None
    weekly: str | None = None
    s3: Any = None  # the [backup.s3] table, checked by parse_s3
    offsite: Any = None  # the [backup.offsite] table, checked by parse_offsite
    fallback_path: str | None = None
    hooks: Any = None  # the [backup.hooks] table, checked by parse_hooks
    command_sources: Any = None  # [[backup.command_sources]], checked by parse_command_sources
    sqlite_detect: bool = True
    sqlite_check: Literal["quick", "full"] = "quick"
    bot_pidfile: str | None = None
    alerts: Any = None  # the [backup.alerts] table, checked by parse_alerts


# -- [backup.hooks] and [[backup.command_sources]] ---------------------------------------------


@dataclass
class BackupConfig:
    """Settings of the backup subsystem (the seed's fields first, with the seed's defaults).

    ``backup_path``: the repository directory. ``compress``: compress chunks (``False`` means
    ``compression = "none"``). ``retention_days``: backups older than this are deleted after
    each ``create_backup`` (``<= 0`` turns it off; the newest backup of each type is kept).
    ``enabled`` / ``interval_hours``: for the scheduler. ``compression`` / ``compression_level``:
    codec and level (zstd 3 and gzip 6 by default). ``sources`` / ``exclude``: files,
    directories and globs backed up with every backup, relative to ``base_dir`` (the config
    file's directory when loaded from a file, else the working directory).
    ``include_secrets``: also back up ``.env``, ``secrets.toml``, ``*.key``, ``*.pem`` and
    ``*_secret*`` files, which are excluded by default; only honoured for an encrypted
    repository (a backup with it on an unencrypted one is a :class:`ConfigError`).
    ``prune_grace``: how long an unreferenced chunk must stay unreferenced before garbage
    collection deletes it (a duration: ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``).
    ``auto_prune``: after retention deleted backups, collect garbage in the background (at
    most once per grace period).
    ``encryption``: ``"none"``, ``"chacha20-poly1305"`` or ``"aes-256-gcm"`` for a repository
    created from this config (an existing repository keeps what it was created with).
    ``password_file``: where the passphrase is read from (first line), if not from
    ``$PEAK_BACKUP_PASSWORD``; relative to the config file.
    ``retention``: the ``[backup.retention]`` table as policies by backup type (see
    :func:`parse_retention`); when set, it replaces ``retention_days``.
    ``daily_at`` (``"02:00"``) / ``weekly`` (``"sun 03:00"``): further schedules of
    ``peak-backup run`` (type ``scheduled``), local time; see ``docs/SCHEDULING.md``.
    ``backup_path`` may be ``"s3://bucket/prefix"``; ``s3`` (the ``[backup.s3]`` table, a
    mapping or :class:`S3Options`) then says how to reach it (``endpoint_url``, ``region``,
    credentials, timeouts); credentials left out come from the AWS environment variables.
    See ``docs/S3.md``.
    ``hooks``: the ``[backup.hooks]`` table (a mapping, parsed into :class:`HooksSettings`):
    commands run before and after every ``create_backup``. ``command_sources``: the
    ``[[backup.command_sources]]`` tables (parsed into :class:`CommandSourceSettings`):
    commands whose standard output is stored as one entry. ``sqlite_detect``: capture SQLite
    databases among the sources through SQLite's backup API; ``sqlite_check``: ``"quick"``
    (``PRAGMA quick_check``) or ``"full"`` (``integrity_check``) on every captured copy.
    ``bot_pidfile``: the trading bot's PID file (relative to the config file): an in-place
    restore refuses while the process it names is alive.
    ``alerts``: the ``[backup.alerts]`` table (parsed into :class:`AlertSettings`; secrets
    kept out of ``repr``): where alerts about failed, overdue or damaged backups go, see
    ``docs/ALERTS.md``.
    """

    backup_path: str | os.PathLike[str] = "./backups"
    compress: bool = True
    retention_days: int = 30
    enabled: bool = True
    interval_hours: float = 24.0
    compression: str = "zstd"
    compression_level: int | None = None
    sources: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    include_secrets: bool = False
    prune_grace: str = "1h"
    auto_prune: bool = True
    encryption: str = "none"
    password_file: str | None = None
    retention: dict[str, RetentionPolicy] | None = None
    daily_at: str | None = None
    weekly: str | None = None
    s3: S3Options | Mapping[str, Any] | None = field(default=None, repr=False)
    offsite: Mapping[str, Any] | None = None
    fallback_path: str | os.PathLike[str] | None = None
    base_dir: str | os.PathLike[str] | None = None
    hooks: HooksSettings = field(default_factory=HooksSettings)
    command_sources: tuple[CommandSourceSettings, ...] = ()
    sqlite_detect: bool = True
    sqlite_check: Literal["quick", "full"] = "quick"
    bot_pidfile: str | os.PathLike[str] | None = None
    alerts: AlertSettings | Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.s3, S3Options):
            self.s3 = s3_table(self.s3)
        values = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PARSED_LATER
        }
        for key in ("backup_path", "fallback_path", "bot_pidfile"):
            if isinstance(values[key], os.PathLike):
                values[key] = os.fspath(values[key])
        if isinstance(values["interval_hours"], int) and not isinstance(
            values["interval_hours"], bool
        ):
            values["interval_hours"] = float(values["interval_hours"])
        _validate(values, "BackupConfig")
        if self.retention is not None:
            self.retention = parse_retention(self.retention, "BackupConfig.retention")
        # Accepts the raw tables (from_table, keyword arguments) and parsed settings alike.
        self.hooks = parse_hooks(self.hooks, "BackupConfig.hooks")
        self.command_sources = parse_command_sources(
            self.command_sources, "BackupConfig.command_sources"
        )
        if self.alerts is not None:  # secrets from the environment or files: read now
            self.alerts = parse_alerts(self.alerts, "[backup.alerts]", self.base_dir)

    @classmethod
    def from_table(cls, table: Any, base_dir: Path | None = None) -> BackupConfig:
        """Build from a ``[backup]`` table (a mapping); relative paths are resolved
        against ``base_dir``."""
        values = dict(table)
        _validate(values, "[backup]")
        if base_dir is not None:
            for key in ("backup_path", "password_file", "fallback_path", "bot_pidfile"):
                if values.get(key) is not None and not is_s3_url(values[key]):
                    path = Path(values[key]).expanduser()
                    values[key] = str(path if path.is_absolute() else base_dir / path)
        return cls(**values, base_dir=base_dir)

    @property
    def is_s3(self) -> bool:
        """Whether the repository lives in an S3 bucket (``backup_path = "s3://..."``)."""
        return is_s3_url(os.fspath(self.backup_path))

    @property
    def repository_path(self) -> Path:
        """The repository directory as an absolute path (local repositories only)."""
        if self.is_s3:
            raise ConfigError(f"backup_path = {self.backup_path!r} is not a local directory")
        return Path(self.backup_path).expanduser().absolute()

    @property
    def own_directories(self) -> tuple[Path, ...]:
        """The local repository and fallback directories: never backed up as sources (a
        source ``"."`` would otherwise store the repository inside itself)."""
        own = [] if self.is_s3 else [self.repository_path]
        if self.fallback_path is not None and not is_s3_url(os.fspath(self.fallback_path)):
            own.append(Path(self.fallback_path).expanduser().absolute())
        return tuple(own)

    @property
    def repository_location(self) -> str:
        """Where the repository is, for messages: a directory or an ``s3://`` URL."""
        return os.fspath(self.backup_path) if self.is_s3 else str(self.repository_path)

    @property
    def s3_options(self) -> S3Options:
        """``[backup.s3]`` as client options (defaults where the table is silent)."""
        return parse_s3(self.s3 or {}, "[backup.s3]")

    @property
    def offsite_settings(self) -> OffsiteSettings | None:
        """``[backup.offsite]``, parsed (``None`` when there is none)."""
        if self.offsite is None:
            return None
        return parse_offsite(self.offsite, "[backup.offsite]", self.base_dir)

    def open_fallback_store(self) -> Store | None:
        """The store of ``fallback_path`` (``None`` when there is none)."""
        if self.fallback_path is None:
            return None
        return self.store_at(os.fspath(self.fallback_path))

    def open_store(self) -> Store:
        """The store of ``backup_path``: a local directory or an S3 bucket and prefix."""
        return self.store_at(os.fspath(self.backup_path))

    def store_at(self, location: str) -> Store:
        """A store at ``location`` (a directory, or ``s3://bucket/prefix`` reached with
        ``[backup.s3]``), e.g. the other side of ``sync``."""
        if is_s3_url(location):
            return open_store(location, self.s3_options, probe_prefix=PROBE_PREFIX)
        return open_store(location)

    @property
    def source_root(self) -> Path:
        """The directory that relative ``sources`` are resolved against."""
        return Path(self.base_dir).absolute() if self.base_dir is not None else Path.cwd()

    @property
    def has_file_sources(self) -> bool:
        """Whether a backup takes anything besides values: ``sources`` or command sources."""
        return bool(self.sources) or bool(self.command_sources)

    @property
    def source_settings(self) -> SourceSettings:
        """The sources and how they are read, as the file side (archiver, restorer) takes
        them."""
        from src.infra.backup.files.settings import SourceSettings

        return SourceSettings(
            sources=tuple(self.sources),
            source_root=self.source_root,
            exclude=tuple(self.exclude),
            include_secrets=self.include_secrets,
            own_directories=self.own_directories,
            sqlite=self.sqlite_options,
        )

    @property
    def sqlite_options(self) -> SqliteOptions:
        """``sqlite_detect`` / ``sqlite_check`` as the archiver's options."""
        from src.infra.backup.files.settings import SqliteOptions

        return SqliteOptions(detect=self.sqlite_detect, check=self.sqlite_check)

    @property
    def grace(self) -> timedelta:
        """``prune_grace`` as a duration."""
        return parse_duration(self.prune_grace)

    @property
    def compression_setting(self) -> Compression:
        """The effective codec and level."""
        codec = self.compression if self.compress else "none"
        level = self.compression_level if self.compression_level is not None else None
        return Compression(
            codec, DEFAULT_LEVELS[codec] if level is None or codec == "none" else level
        )


# Checked by __post_init__ itself: alerts need base_dir (relative secret files).
_PARSED_LATER = frozenset({"base_dir", "alerts"})


def _validate(values: dict[str, Any], where: str) -> None:
    """Check ``values`` against the schema; raise :class:`ConfigError` naming the key."""
    allowed = frozenset(_BackupTable.__struct_fields__)
    for key in values:
        if key not in allowed:
            raise unknown_key_error(key, allowed, where)
    values = {key: value for key, value in values.items() if key != "alerts"}
    try:
        table = msgspec.convert(values, _BackupTable, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(explain_invalid(exc, values, where)) from None
    low, high = LEVEL_RANGES[table.compression]
    level = table.compression_level
    if level is not None and table.compression != "none" and not low <= level <= high:
        raise ConfigError(
            f"{where}: compression_level = {level!r} is out of range: "
            f"expected {low}..{high} for {table.compression}"
        )
    if not table.interval_hours > 0:
        raise ConfigError(
            f"{where}: interval_hours = {table.interval_hours!r}: expected a positive number"
        )
    try:
        parse_duration(table.prune_grace)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: prune_grace = {table.prune_grace!r} is invalid: {exc}"
        ) from None
    if table.daily_at is not None:
        try:
            parse_daily_at(table.daily_at)
        except ValueError as exc:
            raise ConfigError(f"{where}: daily_at = {table.daily_at!r} is invalid: {exc}") from None
    if table.weekly is not None:
        try:
            parse_weekly(table.weekly)
        except ValueError as exc:
            raise ConfigError(f"{where}: weekly = {table.weekly!r} is invalid: {exc}") from None
    if table.retention is not None:
        parse_retention(
            table.retention, "[backup.retention]" if where == "[backup]" else f"{where}.retention"
        )
    if not table.backup_path.strip():
        raise ConfigError(f"{where}: backup_path is empty: expected a directory path")
    if is_s3_url(table.backup_path):
        try:
            parse_s3_url(table.backup_path)
        except ValueError as exc:
            raise ConfigError(f"{where}: backup_path: {exc}") from None
    if table.s3 is not None:
        parse_s3(table.s3, "[backup.s3]" if where == "[backup]" else f"{where}.s3")
    if table.offsite is not None:
        parse_offsite(
            table.offsite, "[backup.offsite]" if where == "[backup]" else f"{where}.offsite"
        )
    if table.bot_pidfile is not None and (
        not table.bot_pidfile.strip() or "\0" in table.bot_pidfile
    ):
        raise ConfigError(f"{where}: bot_pidfile = {table.bot_pidfile!r}: expected a file path")
    if table.fallback_path is not None:
        if not table.fallback_path.strip():
            raise ConfigError(f"{where}: fallback_path is empty: expected a directory path")
        if table.fallback_path == table.backup_path:
            raise ConfigError(f"{where}: fallback_path must differ from backup_path")
    for key in ("sources", "exclude"):
        for item in getattr(table, key):
            if not item.strip() or "\0" in item:
                raise ConfigError(f"{where}: {key} contains {item!r}: expected a path or glob")
    parse_hooks(table.hooks, "[backup.hooks]" if where == "[backup]" else f"{where}.hooks")
    parse_command_sources(
        table.command_sources,
        "[[backup.command_sources]]" if where == "[backup]" else f"{where}.command_sources",
    )


def load_backup_config(path: str | os.PathLike[str] | None = None) -> BackupConfig:
    """The ``[backup]`` table of the config file (see ``load_config``), else the defaults."""
    try:
        config: Config = load_config(path)
    except CoreConfigError as exc:
        raise ConfigError(str(exc)) from exc
    source = config.source_path
    if source is None or "backup" not in config:
        return BackupConfig()
    table = config["backup"]
    if not hasattr(table, "to_dict"):
        raise ConfigError(f"{source}: 'backup' must be a table ([backup]), not {table!r}")
    return BackupConfig.from_table(table.to_dict(), base_dir=source.parent)
