"""The sub-tables of ``[backup]``: ``[backup.s3]``, ``[backup.offsite]``, ``[backup.hooks]``,
``[[backup.command_sources]]`` and ``[backup.retention]``: their schemas, parsed once into typed
settings; every mistake is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec

from src.infra.backup.errors import ConfigError
from src.infra.backup.files.settings import CommandSourceSettings, HookCommand
from src.infra.backup.format.durations import parse_duration
from src.infra.backup.format.ids import is_valid_backup_type
from src.infra.backup.format.layout import PACK_PREFIX, REPO_KEY, SNAPSHOT_PREFIX
from src.infra.backup.policy.retention import COUNT_RULES, DEFAULT_POLICY, RetentionPolicy, zone_of
from src.infra.backup.storage.s3_location import S3Options, parse_s3_url


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


# ``[backup.s3] object_lock_days``: what gets the retention (the backups' manifests, their
# packs, and the repository's configuration with its wrapped key), and a bound that catches
# a typo before it locks objects for centuries.
OBJECT_LOCK_KEYS = (REPO_KEY, SNAPSHOT_PREFIX, PACK_PREFIX)
MAX_OBJECT_LOCK_DAYS = 36_500


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
    object_lock_days: int | None = None


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
            raise unknown_key_error(key, allowed, where)
    try:
        parsed = msgspec.convert(dict(table), _S3Table, strict=True)
    except msgspec.ValidationError as exc:
        shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in table.items()}
        raise ConfigError(explain_invalid(exc, shown, where)) from None
    durations = _durations(parsed, ("timeout", "connect_timeout", "retry_timeout"), where)
    if not 0 <= parsed.max_retries <= 100:
        raise ConfigError(f"{where}: max_retries = {parsed.max_retries!r}: expected 0..100")
    if not 1 <= parsed.concurrency <= 64:
        raise ConfigError(f"{where}: concurrency = {parsed.concurrency!r}: expected 1..64")
    endpoint = parsed.endpoint_url
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: endpoint_url = {endpoint!r}: expected an http(s):// URL")
    lock_days = parsed.object_lock_days
    if lock_days is not None and not 1 <= lock_days <= MAX_OBJECT_LOCK_DAYS:
        raise ConfigError(
            f"{where}: object_lock_days = {lock_days!r}: expected a number of days, "
            f"1..{MAX_OBJECT_LOCK_DAYS} (leave the key out for no Object Lock)"
        )
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
        object_lock_days=lock_days or 0,
        object_lock_keys=OBJECT_LOCK_KEYS if lock_days else (),
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
            raise unknown_key_error(key, frozenset(allowed), where)
    try:
        parsed = msgspec.convert(dict(table), _OffsiteTable, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(explain_invalid(exc, dict(table), where)) from None
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
                raise unknown_key_error(key, allowed, where)
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
                raise unknown_key_error(key, allowed, item_where)
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


def s3_table(options: S3Options) -> dict[str, Any]:
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
    if options.object_lock_days:
        table["object_lock_days"] = options.object_lock_days
    return table


def explain_invalid(exc: msgspec.ValidationError, values: dict[str, Any], where: str) -> str:
    """Rephrase msgspec's message as 'key = value: expected ...'."""
    message = str(exc)
    match = re.search(r"at `\$\.(\w+)((?:\[\d+\])*)`", message)
    expected = message.split(" - at ")[0]
    key = match.group(1) if match else ""
    if expected.startswith("Invalid enum value"):
        choices = ENUM_CHOICES.get(key, COMPRESSION_CHOICES)
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


def unknown_key_error(
    key: object, allowed: frozenset[str], where: str, extra: str = ""
) -> ConfigError:
    import difflib  # only to suggest a key for a mistyped one

    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(allowed))}{extra}"
    )


def _retention_policy(values: dict[str, Any], where: str) -> RetentionPolicy:
    for key in values:
        if key not in _RETENTION_KEYS:
            raise unknown_key_error(key, _RETENTION_KEYS, where)
    try:
        rules = msgspec.convert(values, _RetentionRules, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(explain_invalid(exc, values, where)) from None
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
            raise unknown_key_error(key, _RETENTION_KEYS, where, " (or a [backup type] sub-table)")
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


LEVEL_RANGES = {"zstd": (1, 22), "gzip": (1, 9), "none": (0, 0)}
COMPRESSION_CHOICES = ("zstd", "gzip", "none")
ENCRYPTION_CHOICES = ("none", "chacha20-poly1305", "aes-256-gcm")
SQLITE_CHECKS = ("quick", "full")
ENUM_CHOICES = {"encryption": ENCRYPTION_CHOICES, "sqlite_check": SQLITE_CHECKS}
