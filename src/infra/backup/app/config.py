"""``BackupConfig``: the ``[backup]`` table of ``config.toml``, validated.

The seed's five keys keep their meaning and defaults; the others are optional. Validation is
strict (``msgspec``): an unknown or mistyped key is a :class:`ConfigError` that names the key,
the value and what was expected, and nothing is written.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from src.core import Config, load_config
from src.core.errors import ConfigError as CoreConfigError
from src.infra.backup.errors import ConfigError
from src.infra.backup.files.archiver import SourceSettings
from src.infra.backup.files.commands import CommandSourceSettings, HookCommand
from src.infra.backup.format.blobs import DEFAULT_LEVELS, Compression
from src.infra.backup.format.durations import parse_daily_at, parse_duration, parse_weekly
from src.infra.backup.format.ids import is_valid_backup_type
from src.infra.backup.policy.retention import COUNT_RULES, DEFAULT_POLICY, RetentionPolicy, zone_of
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.s3 import S3Options, S3Store, parse_s3_url

if TYPE_CHECKING:
    from src.infra.backup.files.archiver import SqliteOptions

_LEVEL_RANGES = {"zstd": (1, 22), "gzip": (1, 9), "none": (0, 0)}
_CHOICES = ("zstd", "gzip", "none")
_ENCRYPTIONS = ("none", "chacha20-poly1305", "aes-256-gcm")
SQLITE_CHECKS = ("quick", "full")
_ENUM_CHOICES = {"encryption": _ENCRYPTIONS, "sqlite_check": SQLITE_CHECKS}


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


class _OffsiteTable(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of ``[backup.offsite]``: a replica kept up to date in the background."""

    path: str
    flush_timeout: str = "30s"
    max_lag: str = "1h"
    retention: Any = None


@dataclass(frozen=True)
class OffsiteSettings:
    """``[backup.offsite]``: where the replica is (a directory or ``s3://`` URL, reached with
    ``[backup.s3]``), how long process exit waits for pending uploads, how old a pending
    backup may get before ``status`` fails, and the replica's own retention (``None``: it
    keeps every backup it receives)."""

    path: str
    flush_timeout: timedelta
    max_lag: timedelta
    retention: dict[str, RetentionPolicy] | None


class _S3Table(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of ``[backup.s3]``: how to reach an ``s3://`` backup_path."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    timeout: str = "30s"
    connect_timeout: str = "5s"
    retry_timeout: str = "3m"
    max_retries: int = 5
    concurrency: int = 8


# -- [backup.hooks] and [[backup.command_sources]] ---------------------------------------------

DEFAULT_HOOK_TIMEOUT = "5m"
DEFAULT_COMMAND_SOURCE_TIMEOUT = "1h"


class _HooksTable(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of ``[backup.hooks]``."""

    before: list[str | list[str]] = []
    after: list[str | list[str]] = []
    timeout: str = DEFAULT_HOOK_TIMEOUT


class _CommandSourceTable(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of one ``[[backup.command_sources]]`` table."""

    name: str
    command: str | list[str]
    timeout: str = DEFAULT_COMMAND_SOURCE_TIMEOUT


@dataclass(frozen=True)
class HooksSettings:
    """``[backup.hooks]``: commands run in order before every backup (a failure fails the
    backup) and after it (a failure is only logged), each within ``timeout``."""

    before: tuple[HookCommand, ...] = ()
    after: tuple[HookCommand, ...] = ()
    timeout: timedelta = timedelta(minutes=5)


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

    def __post_init__(self) -> None:
        if isinstance(self.s3, S3Options):
            self.s3 = _s3_table(self.s3)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "base_dir"}
        for key in ("backup_path", "fallback_path"):
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

    @classmethod
    def from_table(cls, table: Any, base_dir: Path | None = None) -> BackupConfig:
        """Build from a ``[backup]`` table (a mapping); relative paths are resolved
        against ``base_dir``."""
        values = dict(table)
        _validate(values, "[backup]")
        if base_dir is not None:
            for key in ("backup_path", "password_file", "fallback_path"):
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
            try:
                parse_s3_url(location)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            return S3Store(location, self.s3_options)
        return LocalStore(Path(location).expanduser().absolute())

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
        from src.infra.backup.files.archiver import SourceSettings

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
        from src.infra.backup.files.archiver import SqliteOptions

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


def _validate(values: dict[str, Any], where: str) -> None:
    """Check ``values`` against the schema; raise :class:`ConfigError` naming the key."""
    allowed = frozenset(_BackupTable.__struct_fields__)
    for key in values:
        if key not in allowed:
            raise _unknown_key(key, allowed, where)
    try:
        table = msgspec.convert(values, _BackupTable, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, values, where)) from None
    low, high = _LEVEL_RANGES[table.compression]
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


def is_s3_url(location: str) -> bool:
    """Whether a ``backup_path`` names an S3 bucket rather than a directory."""
    return location.startswith("s3://")


_SECRET_KEYS = ("access_key_id", "secret_access_key", "session_token")


def _durations(
    parsed: object, keys: tuple[str, ...], where: str, *, positive: bool = True
) -> dict[str, timedelta]:
    """The duration fields ``keys`` of a parsed table (each positive, if asked)."""
    durations = {}
    for key in keys:
        text = getattr(parsed, key)
        try:
            durations[key] = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key} = {text!r}: {exc}") from None
        if positive and durations[key] <= timedelta(0):
            raise ConfigError(f"{where}: {key} = {text!r} must be positive")
    return durations


def parse_s3(table: Any, where: str = "[backup.s3]") -> S3Options:
    """``[backup.s3]`` as :class:`S3Options`; :class:`ConfigError` naming the bad key (a
    credential's value is never repeated in the message)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
    allowed = frozenset(_S3Table.__struct_fields__)
    for key in table:
        if key not in allowed:
            raise _unknown_key(key, allowed, where)
    try:
        parsed = msgspec.convert(dict(table), _S3Table, strict=True)
    except msgspec.ValidationError as exc:
        shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in table.items()}
        raise ConfigError(_explain(exc, shown, where)) from None
    durations = _durations(parsed, ("timeout", "connect_timeout", "retry_timeout"), where)
    if not 0 <= parsed.max_retries <= 100:
        raise ConfigError(f"{where}: max_retries = {parsed.max_retries!r}: expected 0..100")
    if not 1 <= parsed.concurrency <= 64:
        raise ConfigError(f"{where}: concurrency = {parsed.concurrency!r}: expected 1..64")
    endpoint = parsed.endpoint_url
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: endpoint_url = {endpoint!r}: expected an http(s):// URL")
    return S3Options(
        endpoint_url=endpoint,
        region=parsed.region,
        access_key_id=parsed.access_key_id,
        secret_access_key=parsed.secret_access_key,
        session_token=parsed.session_token,
        timeout=durations["timeout"],
        connect_timeout=durations["connect_timeout"],
        retry_timeout=durations["retry_timeout"],
        max_retries=parsed.max_retries,
        concurrency=parsed.concurrency,
    )


def parse_offsite(
    table: Any, where: str = "[backup.offsite]", base_dir: str | os.PathLike[str] | None = None
) -> OffsiteSettings:
    """``[backup.offsite]`` as :class:`OffsiteSettings`; :class:`ConfigError` naming the key.
    A relative local ``path`` is resolved against ``base_dir``."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
    allowed = set(_OffsiteTable.__struct_fields__)
    for key in table:
        if key not in allowed:
            raise _unknown_key(key, frozenset(allowed), where)
    try:
        parsed = msgspec.convert(dict(table), _OffsiteTable, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, dict(table), where)) from None
    path = parsed.path.strip()
    if not path:
        raise ConfigError(f"{where}: path is empty: expected an s3:// URL or a directory")
    if is_s3_url(path):
        try:
            parse_s3_url(path)
        except ValueError as exc:
            raise ConfigError(f"{where}: path: {exc}") from None
    elif base_dir is not None and not Path(path).expanduser().is_absolute():
        path = str(Path(base_dir) / Path(path).expanduser())
    durations = _durations(parsed, ("flush_timeout", "max_lag"), where, positive=False)
    retention = None
    if parsed.retention is not None:
        retention = parse_retention(parsed.retention, f"{where[:-1]}.retention]")
    return OffsiteSettings(path, durations["flush_timeout"], durations["max_lag"], retention)


def _hook_command(value: object, where: str, key: str) -> HookCommand:
    """A command as given in the config (a string or a list of strings), checked."""
    if isinstance(value, HookCommand):
        value = value.command
    if isinstance(value, str):
        if not value.strip() or "\0" in value:
            raise ConfigError(
                f"{where}: {key} = {value!r} is invalid: expected a non-empty shell command "
                "(without NUL characters)"
            )
        return HookCommand(value)
    if isinstance(value, (list, tuple)):
        for index, part in enumerate(value):
            if not isinstance(part, str):
                raise ConfigError(
                    f"{where}: {key}[{index}] = {part!r} is invalid: every element of an argv "
                    "list must be a string"
                )
            if "\0" in part:
                raise ConfigError(f"{where}: {key}[{index}] = {part!r} contains a NUL character")
        if not value or not value[0].strip():
            raise ConfigError(
                f"{where}: {key} = {list(value)!r} is invalid: expected an argv list starting "
                "with the program"
            )
        return HookCommand(tuple(value))
    raise ConfigError(
        f"{where}: {key} = {value!r} is invalid: expected a string (run by /bin/sh -c) or a "
        "list of strings (an argv)"
    )


def _timeout(value: object, where: str) -> timedelta:
    """A positive ``timeout``: a duration string (``"30s"``, ``"5m"``) or a timedelta."""
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, str):
        try:
            duration = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: timeout = {value!r} is invalid: {exc}") from None
    else:
        raise ConfigError(
            f'{where}: timeout = {value!r} is invalid: expected a duration such as "30s" or "5m"'
        )
    if duration <= timedelta(0):
        raise ConfigError(f"{where}: timeout = {value!r} must be positive")
    return duration


def parse_hooks(table: Any, where: str = "[backup.hooks]") -> HooksSettings:
    """``[backup.hooks]`` as :class:`HooksSettings` (``None``: no hooks); parsed settings are
    checked and pass through. Raises :class:`ConfigError` naming the bad key."""
    if table is None:
        return HooksSettings()
    if isinstance(table, HooksSettings):
        values: dict[str, Any] = {"before": table.before, "after": table.after}
        timeout: object = table.timeout
    elif isinstance(table, Mapping):
        values = dict(table)
        allowed = frozenset(_HooksTable.__struct_fields__)
        for key in values:
            if key not in allowed:
                raise _unknown_key(key, allowed, where)
        timeout = values.pop("timeout", DEFAULT_HOOK_TIMEOUT)
    else:
        raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
    commands: dict[str, tuple[HookCommand, ...]] = {}
    for key in ("before", "after"):
        given = values.get(key, [])
        if not isinstance(given, (list, tuple)):
            raise ConfigError(
                f"{where}: {key} = {given!r} is invalid: expected a list of commands, "
                f'e.g. {key} = ["sh -c \'echo hi\'", ["python3", "dump.py"]]'
            )
        commands[key] = tuple(
            _hook_command(command, where, f"{key}[{index}]") for index, command in enumerate(given)
        )
    return HooksSettings(commands["before"], commands["after"], _timeout(timeout, where))


_UNSAFE_NAME = (
    "expected a relative path (no leading '/') without '..', '.' or empty parts, '\\' or NUL"
)


def _check_entry_name(name: str, where: str) -> str:
    """A command source's entry path: relative, nothing that could climb or hide."""
    parts = name.split("/")
    if (
        not name.strip()
        or name.startswith("/")
        or "\0" in name
        or "\\" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ConfigError(f"{where}: name = {name!r} is not a safe path: {_UNSAFE_NAME}")
    return name


def parse_command_sources(
    tables: Any, where: str = "[[backup.command_sources]]"
) -> tuple[CommandSourceSettings, ...]:
    """``[[backup.command_sources]]`` as :class:`CommandSourceSettings` (``None``: none);
    parsed settings pass through. Raises :class:`ConfigError` naming the bad key."""
    if tables is None:
        return ()
    if isinstance(tables, (Mapping, str)) or not isinstance(tables, (list, tuple)):
        raise ConfigError(
            f"{where} must be an array of tables ([[backup.command_sources]], one per "
            f"command), not {type(tables).__name__}"
        )
    sources: list[CommandSourceSettings] = []
    seen: dict[str, int] = {}
    allowed = frozenset(_CommandSourceTable.__struct_fields__)
    for number, table in enumerate(tables, 1):
        item_where = f"{where} #{number}"
        if isinstance(table, CommandSourceSettings):
            table = {"name": table.name, "command": table.command, "timeout": table.timeout}
        if not isinstance(table, Mapping):
            raise ConfigError(f"{item_where} must be a table, not {type(table).__name__}")
        values = dict(table)
        for key in values:
            if key not in allowed:
                raise _unknown_key(key, allowed, item_where)
        for key in ("name", "command"):
            if key not in values:
                raise ConfigError(f"{item_where}: {key} is missing")
        name = values["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{item_where}: name = {name!r} is invalid: expected a str")
        _check_entry_name(name, item_where)
        if name in seen:
            raise ConfigError(
                f"{item_where}: name = {name!r} is a duplicate: command source #{seen[name]} "
                "has it already"
            )
        seen[name] = number
        command = _hook_command(values["command"], item_where, "command")
        timeout = _timeout(values.get("timeout", DEFAULT_COMMAND_SOURCE_TIMEOUT), item_where)
        sources.append(CommandSourceSettings(name, command, timeout))
    return tuple(sources)


def _s3_table(options: S3Options) -> dict[str, Any]:
    """The ``[backup.s3]`` table equivalent to ``options``."""
    table: dict[str, Any] = {
        "timeout": f"{options.timeout.total_seconds():g}s",
        "connect_timeout": f"{options.connect_timeout.total_seconds():g}s",
        "retry_timeout": f"{options.retry_timeout.total_seconds():g}s",
        "max_retries": options.max_retries,
        "concurrency": options.concurrency,
    }
    for key in ("endpoint_url", "region", *_SECRET_KEYS):
        if getattr(options, key) is not None:
            table[key] = getattr(options, key)
    return table


def _explain(exc: msgspec.ValidationError, values: dict[str, Any], where: str) -> str:
    """Rephrase msgspec's message as 'key = value: expected ...'."""
    message = str(exc)
    match = re.search(r"at `\$\.(\w+)((?:\[\d+\])*)`", message)
    expected = message.split(" - at ")[0]
    key = match.group(1) if match else ""
    if expected.startswith("Invalid enum value"):
        choices = _ENUM_CHOICES.get(key, _CHOICES)
        expected = "expected one of " + ", ".join(repr(c) for c in choices)
    if not match:
        return f"{where}: {expected}"
    value = values.get(key)
    shown = f"{key}{match.group(2)}"
    if match.group(2):
        index = int(match.group(2).strip("[]").split("][")[0])
        value = value[index] if isinstance(value, list) and index < len(value) else value
    return f"{where}: {shown} = {value!r} is invalid: {expected}"


class _RetentionRules(msgspec.Struct, forbid_unknown_fields=True):
    """Schema of ``[backup.retention]`` and ``[backup.retention.<type>]`` (rules only)."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    keep_tags: list[str] = []
    timezone: str | None = None


_RETENTION_KEYS = frozenset(_RetentionRules.__struct_fields__)


def _unknown_key(key: object, allowed: frozenset[str], where: str, extra: str = "") -> ConfigError:
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(allowed))}{extra}"
    )


def _retention_policy(values: dict[str, Any], where: str) -> RetentionPolicy:
    for key in values:
        if key not in _RETENTION_KEYS:
            raise _unknown_key(key, _RETENTION_KEYS, where)
    try:
        rules = msgspec.convert(values, _RetentionRules, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, values, where)) from None
    try:
        within = parse_duration(rules.keep_within) if rules.keep_within is not None else None
    except ValueError as exc:
        raise ConfigError(f"{where}: keep_within = {rules.keep_within!r} is invalid: {exc}")
    try:
        policy = RetentionPolicy(
            **{name: getattr(rules, name) for name in COUNT_RULES},
            keep_within=within,
            keep_tags=tuple(rules.keep_tags),
            timezone=rules.timezone,
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _refuse_empty(policy, where)
    return policy


def _refuse_empty(policy: RetentionPolicy, where: str) -> None:
    if policy.empty:
        raise ConfigError(
            f"{where}: no retention rule: set at least one of "
            f"{', '.join(sorted(_RETENTION_KEYS - {'timezone'}))} "
            "(an empty policy would forget every backup but the newest)"
        )


def parse_retention(table: Any, where: str = "[backup.retention]") -> dict[str, RetentionPolicy]:
    """``[backup.retention]`` as policies by backup type (``"*"``: the default table's rules,
    for types without their own table). Sub-tables inherit the default's ``timezone``.
    Already parsed policies pass through unchanged. Raises :class:`ConfigError`."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of retention rules, not {table!r}")
    top: dict[str, Any] = {}
    given: dict[str, RetentionPolicy] = {}
    per_type: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        if isinstance(value, RetentionPolicy):
            if key != DEFAULT_POLICY and not is_valid_backup_type(key):
                raise ConfigError(f"{where}: {key!r} is not a backup type")
            _refuse_empty(value, f"{where}[{key!r}]")
            given[key] = value
        elif isinstance(value, Mapping):
            if not is_valid_backup_type(key):
                raise ConfigError(
                    f"{where}: [{key}] is not a backup type: expected 1-64 lowercase letters, "
                    "digits, '_' or '-', starting with a letter or digit"
                )
            per_type[key] = value
        elif key in _RETENTION_KEYS:
            top[key] = value
        else:
            raise _unknown_key(key, _RETENTION_KEYS, where, " (or a [backup type] sub-table)")
    policies = dict(given)
    if set(top) - {"timezone"}:
        policies[DEFAULT_POLICY] = _retention_policy(top, where)
    elif "timezone" in top:  # only sub-tables have rules: check the zone they inherit
        zone = top["timezone"]
        if not isinstance(zone, str):
            raise ConfigError(f"{where}: timezone = {zone!r} is invalid: expected a str")
        try:
            zone_of(zone)
        except ValueError as exc:
            raise ConfigError(f"{where}: timezone: {exc}") from None
    for name, sub in per_type.items():
        values = dict(sub)
        if "timezone" in top and "timezone" not in values:
            values["timezone"] = top["timezone"]
        sub_where = f"{where[:-1]}.{name}]" if where.endswith("]") else f"{where}.{name}"
        policies[name] = _retention_policy(values, sub_where)
    if not policies:
        _refuse_empty(RetentionPolicy(), where)
    return policies


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
