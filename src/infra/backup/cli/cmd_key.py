"""``peak-backup key``: manage the passphrase of an encrypted repository."""

from __future__ import annotations

import os

import click

from src.infra.backup.app.passphrase import read_passphrase
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, stdout
from src.infra.backup.errors import (
    InvalidInputError,
)


@click.group()
def key() -> None:
    """Manage the passphrase of an encrypted repository."""


@key.command(name="passwd")
@json_option
@click.pass_obj
def key_passwd(ctx: Context) -> None:
    """Change the passphrase (the data is not rewritten). The new one comes from
    $PEAK_BACKUP_NEW_PASSWORD or a prompt."""
    repository = ctx.manager.repository
    if not repository.encrypted:
        raise InvalidInputError("the repository is not encrypted: it has no passphrase")
    old = ctx.passphrase()
    new = os.environ.get("PEAK_BACKUP_NEW_PASSWORD") or read_passphrase(
        env={}, password_file=None, confirm=True
    )
    repository.change_passphrase(old, new)
    if ctx.as_json:
        emit_json({"changed": True})
    else:
        stdout.print("Passphrase changed.")
