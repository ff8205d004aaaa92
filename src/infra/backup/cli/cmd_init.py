"""``peak-backup init``: create the repository (optionally encrypted)."""

from __future__ import annotations

from dataclasses import replace

import click

from src.infra.backup.app.manager import BackupManager
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, stdout
from src.infra.backup.errors import (
    BackupError,
)
from src.infra.backup.format.crypto import AEAD_ALGORITHMS, DEFAULT_AEAD
from src.infra.backup.format.layout import REPO_KEY


@click.command()
@click.option(
    "--encryption",
    "aead",
    default=None,
    is_flag=False,
    flag_value=DEFAULT_AEAD,
    type=click.Choice(["none", *AEAD_ALGORITHMS]),
    help=f"Encrypt the repository (default AEAD: {DEFAULT_AEAD}); the passphrase comes from "
    "$PEAK_BACKUP_PASSWORD, [backup] password_file, or a prompt.",
)
@json_option
@click.pass_obj
def init(ctx: Context, aead: str | None) -> None:
    """Create the repository (backups create it too; init lets you choose encryption)."""
    config = ctx.manager.config
    if aead is not None:
        config = replace(config, encryption=aead)
    store = config.open_store()
    if store.exists(REPO_KEY):
        raise BackupError(f"a repository already exists at {store.location}")
    ctx.confirm_new_passphrase = True
    repository = BackupManager(config, passphrase=ctx.passphrase).open_repository(create=True)
    if ctx.as_json:
        emit_json(
            {
                "repository": store.location,
                "encrypted": repository.encrypted,
                "repository_id": repository.config.repository_id,
            }
        )
    else:
        kind = "encrypted " if repository.encrypted else ""
        stdout.print(f"Created {kind}repository at {store.location}")
        if repository.encrypted:
            stdout.print("Keep the passphrase safe: without it the backups cannot be read.")
