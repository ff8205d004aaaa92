"""Where the repository passphrase comes from: the environment, a password file, or a prompt;
and the refusal to write in the clear where encryption is expected.

A user-interface policy, kept out of the key-derivation code in
:mod:`src.infra.backup.format.crypto`.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
from collections.abc import Mapping

from src.infra.backup.errors import (
    ConfigError,
    InvalidInputError,
    PassphraseRequiredError,
)
from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)

ENV_PASSWORD = "PEAK_BACKUP_PASSWORD"
ENV_PASSWORD_FILE = "PEAK_BACKUP_PASSWORD_FILE"
MAX_PASSPHRASE_BYTES = 4096


def read_passphrase(
    *,
    env: Mapping[str, str] = os.environ,
    password_file: str | None = None,
    prompt: bool = True,
    confirm: bool = False,
) -> str:
    """Get the repository passphrase from the first source that has one.

    1. ``$PEAK_BACKUP_PASSWORD``;
    2. the first line of ``password_file``, else of the file ``$PEAK_BACKUP_PASSWORD_FILE``
       names (a warning is logged if the file is readable by group or others);
    3. if ``prompt`` and stdin is a terminal, ask (twice with ``confirm``, e.g. at init).

    Otherwise :class:`PassphraseRequiredError`. An empty passphrase, an unreadable or empty
    file, or mismatching confirmation is an :class:`InvalidInputError`.
    """
    if ENV_PASSWORD in env:
        value = env[ENV_PASSWORD]
        if not value:
            raise InvalidInputError(f"${ENV_PASSWORD} is set but empty")
        return value
    path = password_file if password_file is not None else env.get(ENV_PASSWORD_FILE)
    if path is not None:
        return _read_password_file(path)
    if prompt and sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass("Repository passphrase: ")
        if not value:
            raise InvalidInputError("the passphrase must not be empty")
        if confirm and getpass.getpass("Repeat the passphrase: ") != value:
            raise InvalidInputError("the two passphrases do not match")
        return value
    raise PassphraseRequiredError(
        "this repository is encrypted and needs a passphrase: set "
        f"${ENV_PASSWORD}, give a password file (--password-file or ${ENV_PASSWORD_FILE}), "
        "or run from a terminal to be asked"
    )


def _read_password_file(path: str) -> str:
    if not path:
        raise InvalidInputError("the password file path is empty")
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_PASSPHRASE_BYTES + 2)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the password file {path!r}: {exc.strerror or exc}"
        ) from exc
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning(
            "password file %s is accessible by group or others (mode %o); "
            "restrict it with chmod 600",
            path,
            stat.S_IMODE(mode),
        )
    line = data.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_PASSPHRASE_BYTES:
        raise InvalidInputError(
            f"the password file {path!r} has a first line longer than {MAX_PASSPHRASE_BYTES} bytes"
        )
    if not line:
        raise InvalidInputError(f"the password file {path!r} is empty (first line)")
    return line.decode("utf-8", "surrogateescape")


def refuse_unexpected_plaintext(
    repository: Repository, location: str, *, encryption: str, passphrase_given: bool
) -> None:
    """:class:`ConfigError` if the repository is not encrypted although ``[backup]
    encryption`` asks for it, or a passphrase was given outright (the caller expects
    encryption)."""
    if encryption != "none" and not repository.encrypted:
        raise ConfigError(
            f"[backup] encryption = {encryption!r}, but the repository at "
            f"{location} is not encrypted (encryption is chosen when a "
            "repository is created: use a new backup_path)"
        )
    if passphrase_given and not repository.encrypted:
        # A passphrase given outright means the caller expects encryption: refuse to
        # write in the clear (e.g. to a repo.json whose encryption was stripped).
        raise ConfigError(
            f"a passphrase was given, but the repository at {location} is not "
            "encrypted; refusing to store backups unencrypted"
        )
