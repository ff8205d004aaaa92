"""``[backup.alerts]``: where alerts go (``[[backup.alerts.targets]]``) and how often, parsed
once into :class:`AlertSettings`; every mistake is a :class:`ConfigError` naming the key.

A target's secret (its ``url``, a Telegram ``token``) is given inline, or by name of an
environment variable (``url_env``) or a file (``url_file``, first line). It is resolved when
the config is loaded, so a missing variable or file fails at start, naming the key; the secret
itself is never repeated in a message, a ``repr`` or a log line. See ``docs/ALERTS.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.infra.backup.errors import ConfigError
from src.infra.backup.format.durations import parse_duration

FORMATS = ("webhook", "telegram", "discord", "slack", "command")
# What fires an alert: a failed backup (also one started in the background), a schedule with
# no success within max_age, damage found by verify or check, an off-site replica behind.
EVENTS = ("backup_failed", "overdue", "damage", "replica_lag")
TELEGRAM_API = "https://api.telegram.org"
DEFAULT_TIMEOUT = "5s"

_TOP_KEYS = frozenset(
    {"targets", "max_per_hour", "state_file", "overdue_types", "max_age", "check_every"}
    | {"flush_timeout"}
)
_TARGET_KEYS = frozenset(
    {"name", "format", "url", "url_env", "url_file", "token", "token_env", "token_file"}
    | {"chat_id", "api_url", "command", "timeout", "events"}
)


@dataclass(frozen=True)
class AlertTarget:
    """One place alerts go. ``url`` (webhook, Discord, Slack) and ``token`` (Telegram) are
    the resolved secrets: kept out of ``repr``."""

    name: str
    format: str
    url: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    chat_id: str | None = None
    api_url: str = TELEGRAM_API
    command: tuple[str, ...] = ()
    timeout: float = 5.0
    events: frozenset[str] = frozenset(EVENTS)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the URL, the token (scrubbed from error texts)."""
        return tuple(s for s in (self.url, self.token) if s)


@dataclass(frozen=True)
class AlertSettings:
    """``[backup.alerts]``: the targets; ``max_per_hour`` messages per target at most (more
    are dropped and counted); ``state_file`` (open incidents and the rate limit; ``None``: a
    file per repository under ``$XDG_STATE_HOME/peak-backup``); ``overdue_types`` and
    ``max_age`` (``None``: the health check's stale threshold); ``check_every``: how often
    ``peak-backup run`` looks for overdue backups and replica lag; ``flush_timeout``: how long
    an exiting process waits for alerts not yet sent."""

    targets: tuple[AlertTarget, ...]
    max_per_hour: int = 30
    state_file: str | None = None
    overdue_types: tuple[str, ...] = ("automatic",)
    max_age: timedelta | None = None
    check_every: timedelta = timedelta(minutes=5)
    flush_timeout: timedelta = timedelta(seconds=10)


def _unknown(key: object, allowed: frozenset[str], where: str) -> ConfigError:
    return ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(allowed))}")


def _duration(value: object, where: str, key: str, *, positive: bool = True) -> timedelta:
    if not isinstance(value, str):
        raise ConfigError(f'{where}.{key} = {value!r} is invalid: expected a duration like "30s"')
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key} = {value!r} is invalid: {exc}") from None
    if positive and duration <= timedelta(0):
        raise ConfigError(f"{where}.{key} = {value!r} must be positive")
    return duration


def check_url(url: str, where: str) -> str:
    """``url`` if it is an http(s) URL with a host; else :class:`ConfigError` naming
    ``where`` and never repeating the URL (a webhook URL is itself the secret)."""
    problem = None
    if any(c.isspace() or ord(c) < 32 for c in url):
        problem = "it contains whitespace or control characters"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            problem = "it cannot be parsed"
        else:
            if parts.scheme not in ("http", "https"):
                problem = f"the scheme is {parts.scheme or 'missing'!r}, expected http or https"
            elif not parts.hostname:
                problem = "it has no host"
    if problem:
        raise ConfigError(f"{where} is not a valid URL: {problem} (value not shown)")
    return url


def _secret(values: dict[str, Any], key: str, where: str, base_dir: Path | None) -> str | None:
    """The secret ``key`` given inline, by ``<key>_env`` or by ``<key>_file`` (one of them)."""
    given = [k for k in (key, f"{key}_env", f"{key}_file") if values.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{where}.{given[1]}: {key} is given twice ({' and '.join(given)})")
    if not given:
        return None
    which = given[0]
    raw = values[which]
    if not isinstance(raw, str) or not raw.strip():
        shown = "(value not shown)" if which == key else repr(raw)
        raise ConfigError(f"{where}.{which} is invalid {shown}: expected a non-empty string")
    if which == key:
        return raw.strip()
    if which.endswith("_env"):
        value = os.environ.get(raw, "").strip()
        if not value:
            raise ConfigError(f"{where}.{which}: environment variable {raw!r} is not set or empty")
        return value
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{where}.{which}: cannot read {str(path)!r}: {type(exc).__name__}"
        ) from None
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{where}.{which}: {str(path)!r} is empty")
    return value


def _target(table: object, where: str, base_dir: Path | None) -> AlertTarget:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
    values = dict(table)
    for key in values:
        if key not in _TARGET_KEYS:
            raise _unknown(key, _TARGET_KEYS, where)
    kind = values.get("format")
    if kind not in FORMATS:
        raise ConfigError(
            f"{where}.format = {kind!r} is invalid: expected one of "
            + ", ".join(repr(f) for f in FORMATS)
        )
    name = values.get("name", f"{kind}#{where.rsplit('[', 1)[-1].rstrip(']')}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name = {name!r} is invalid: expected a non-empty string")
    timeout = _duration(values.get("timeout", DEFAULT_TIMEOUT), where, "timeout")
    events = values.get("events", list(EVENTS))
    if not isinstance(events, list) or not all(e in EVENTS for e in events) or not events:
        raise ConfigError(
            f"{where}.events = {events!r} is invalid: expected a non-empty list of "
            + ", ".join(repr(e) for e in EVENTS)
        )
    allowed = {
        "webhook": {"url"},
        "discord": {"url"},
        "slack": {"url"},
        "telegram": {"token", "chat_id", "api_url"},
        "command": {"command"},
    }[kind]
    for key in ("url", "token", "chat_id", "api_url", "command"):
        present = [k for k in (key, f"{key}_env", f"{key}_file") if k in values]
        if present and key not in allowed:
            raise ConfigError(f"{where}.{present[0]}: not used by format {kind!r}")
    url = token = chat_id = None
    api_url = TELEGRAM_API
    command: tuple[str, ...] = ()
    if "url" in allowed:
        url = _secret(values, "url", where, base_dir)
        if url is None:
            raise ConfigError(f"{where}.url is missing (or url_env, url_file)")
        check_url(url, f"{where}.url")
    elif kind == "telegram":
        token = _secret(values, "token", where, base_dir)
        if token is None:
            raise ConfigError(f"{where}.token is missing (or token_env, token_file)")
        if any(c.isspace() or c in "/?#" for c in token):
            raise ConfigError(f"{where}.token is invalid (value not shown): not a bot token")
        chat = values.get("chat_id")
        if chat is None:
            raise ConfigError(f"{where}.chat_id is missing: the chat the bot writes to")
        if isinstance(chat, bool) or not isinstance(chat, (str, int)) or not str(chat).strip():
            raise ConfigError(f"{where}.chat_id = {chat!r} is invalid: expected a chat id")
        chat_id = str(chat).strip()
        api = values.get("api_url", TELEGRAM_API)
        if not isinstance(api, str):
            raise ConfigError(f"{where}.api_url = {api!r} is invalid: expected a URL")
        api_url = check_url(api, f"{where}.api_url").rstrip("/")
    else:
        given = values.get("command")
        if (
            not isinstance(given, list)
            or not given
            or not all(isinstance(p, str) and p and "\0" not in p for p in given)
        ):
            raise ConfigError(
                f"{where}.command = {given!r} is invalid: expected an argv list of strings, "
                'e.g. ["/usr/local/bin/notify", "--stdin"]'
            )
        command = tuple(given)
    return AlertTarget(
        name=name.strip(),
        format=kind,
        url=url,
        token=token,
        chat_id=chat_id,
        api_url=api_url,
        command=command,
        timeout=timeout.total_seconds(),
        events=frozenset(events),
    )


def parse_alerts(
    table: Any, where: str = "[backup.alerts]", base_dir: str | os.PathLike[str] | None = None
) -> AlertSettings:
    """``[backup.alerts]`` as :class:`AlertSettings`; :class:`ConfigError` naming the key.
    Parsed settings pass through. Relative ``*_file`` and ``state_file`` paths are resolved
    against ``base_dir``."""
    if isinstance(table, AlertSettings):
        return table
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
    base = Path(base_dir) if base_dir is not None else None
    values = dict(table)
    for key in values:
        if key not in _TOP_KEYS:
            raise _unknown(key, _TOP_KEYS, where)
    tables = values.get("targets", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{where}.targets: expected one or more [[backup.alerts.targets]] tables")
    # "[backup.alerts]" -> "[backup.alerts.targets][0]" (the key a mistake is reported at)
    prefix = f"{where[:-1]}.targets]" if where.endswith("]") else f"{where}.targets"
    targets = tuple(_target(t, f"{prefix}[{i}]", base) for i, t in enumerate(tables))
    names = [t.name for t in targets]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(
                f"{prefix}[{index}].name = {name!r} is a duplicate: names must differ"
            )
    limit = values.get("max_per_hour", 30)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{where}.max_per_hour = {limit!r} is invalid: expected an integer >= 1")
    state_file = values.get("state_file")
    if state_file is not None:
        if not isinstance(state_file, str) or not state_file.strip() or "\0" in state_file:
            raise ConfigError(f"{where}.state_file = {state_file!r} is invalid: expected a path")
        path = Path(state_file).expanduser()
        state_file = str(path if path.is_absolute() or base is None else base / path)
    types = values.get("overdue_types", ["automatic"])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise ConfigError(f"{where}.overdue_types = {types!r} is invalid: expected backup types")
    max_age = values.get("max_age")
    return AlertSettings(
        targets=targets,
        max_per_hour=limit,
        state_file=state_file,
        overdue_types=tuple(types),
        max_age=_duration(max_age, where, "max_age") if max_age is not None else None,
        check_every=_duration(values.get("check_every", "5m"), where, "check_every"),
        flush_timeout=_duration(
            values.get("flush_timeout", "10s"), where, "flush_timeout", positive=False
        ),
    )
