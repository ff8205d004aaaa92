"""Storage backends: one :class:`Store` interface over a flat key space of immutable objects.

:func:`open_store` builds the store of a location. The S3 backend (``storage.s3``) is imported
only when an ``s3://`` location is opened, and its client library only when the store is built.
The test kit (contract suite, fault-injecting and eventually consistent wrappers) lives in
``storage.testing`` and is never imported from here.

The bottom layer: knows nothing of repositories, chunks, manifests or key names (it imports
only the shared ``errors`` module).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from src.infra.backup.errors import ConfigError
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.memory import MemoryStore

if TYPE_CHECKING:
    from src.infra.backup.storage.s3_location import S3Options

__all__ = ["LocalStore", "MemoryStore", "ObjectInfo", "Store", "open_store"]

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(
    location: str | os.PathLike[str],
    options: S3Options | None = None,
    *,
    probe_prefix: str | None = None,
) -> Store:
    """The store at ``location``:

    - ``s3://bucket/prefix``: an ``S3Store`` reached with ``options`` (``None``: the defaults,
      credentials from the AWS environment variables), probing conditional writes with an
      object under ``probe_prefix`` (``None``: the store's default);
    - ``file:///absolute/path`` or a path (``~`` expanded, relative to the working
      directory): a :class:`LocalStore` on that directory.

    :class:`ConfigError` for an invalid ``s3://`` URL (:class:`StorageError` for an unsafe
    prefix, as for any key), a ``file://`` URL naming another host, or any other ``scheme://``
    (rather than a local directory named after the scheme). Building a store touches nothing:
    a missing directory or bucket shows on first use. A drop-in for
    ``BackupConfig.store_at``: ``open_store(location, config.s3_options)``.
    """
    text = os.fspath(location)
    scheme = _URL_SCHEME.match(text)
    if scheme is None:
        return LocalStore(Path(text).expanduser().absolute())
    kind = scheme.group(1)
    if kind == "s3":
        # Imported here: a local repository never loads the S3 backend.
        from src.infra.backup.storage.s3 import S3Store
        from src.infra.backup.storage.s3_location import parse_s3_url

        try:
            parse_s3_url(text)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if probe_prefix is None:
            return S3Store(text, options)
        return S3Store(text, options, probe_prefix=probe_prefix)
    if kind == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{text!r}: a file:// URL must name a local path, not a host")
        if not parts.path:
            raise ConfigError(f"{text!r}: the file:// URL names no path")
        return LocalStore(Path(unquote(parts.path)).absolute())
    raise ConfigError(f"{text!r}: unsupported store URL (expected s3://bucket/prefix or a path)")
