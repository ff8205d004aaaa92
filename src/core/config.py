"""``load_config()``: the project's ``config.toml`` with attribute access to every table."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from src.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_ENV = "PEAK_TRADE_CONFIG_PATH"
DEFAULT_LOCATIONS = (Path("config.toml"), Path("config") / "config.toml")


class ConfigSection(Mapping[str, Any]):
    """A TOML table: ``section.key`` and ``section["key"]``; nested tables are sections too.

    ``hasattr(cfg, "backup")`` is true exactly when the table exists.
    """

    def __init__(self, values: Mapping[str, Any], name: str = "") -> None:
        self._values = {
            key: ConfigSection(value, f"{name}.{key}" if name else key)
            if isinstance(value, Mapping)
            else value
            for key, value in values.items()
        }
        self._name = name

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            where = f"[{self._name}]" if self._name else "the configuration"
            raise AttributeError(f"{where} has no key {key!r}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ConfigSection({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain nested ``dict`` copy."""
        return {
            key: value.to_dict() if isinstance(value, ConfigSection) else value
            for key, value in self._values.items()
        }


class Config(ConfigSection):
    """The whole configuration; ``source_path`` is the file it came from (or ``None``)."""

    def __init__(self, values: Mapping[str, Any], source_path: Path | None) -> None:
        super().__init__(values)
        self._source_path = source_path

    @property
    def source_path(self) -> Path | None:
        """The file this configuration was read from; ``None`` when no file was found."""
        return self._source_path


def find_config_file(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the configuration comes from: ``path``, else ``$PEAK_TRADE_CONFIG_PATH``, else
    ``./config.toml``, else ``./config/config.toml``; ``None`` if none of the defaults exists.

    An explicitly named file (argument or environment) that does not exist is an error.
    """
    explicit = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if explicit is not None:
        candidate = Path(explicit)
        if not candidate.is_file():
            source = "argument" if path is not None else f"${CONFIG_ENV}"
            raise ConfigError(f"config file {candidate} (from {source}) does not exist")
        return candidate.absolute()
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate.absolute()
    return None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the TOML configuration (see :func:`find_config_file` for where it is looked for).

    Returns an empty :class:`Config` when no file is found at the default locations.
    """
    found = find_config_file(path)
    if found is None:
        return Config({}, None)
    try:
        with open(found, "rb") as handle:
            values = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{found}: invalid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {found}: {exc.strerror}") from exc
    return Config(values, found)
