"""``peak-backup cat``: print one entry of a backup."""

from __future__ import annotations

import base64
import json
import sys

import click

from src.infra.backup.app.diff import (
    decode_entry,
)
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json
from src.infra.backup.errors import BackupNotFoundError, CorruptDataError, InvalidInputError
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.format.values import to_jsonable


def find_entry(manifest: Manifest, name: str) -> Entry:
    """The entry called ``name`` (a data entry first if a file has the same name), or the
    data entry ``<key>`` for ``<key>.json`` as ``list``/``show`` and ``restore`` name it."""
    for kind in ("data", "file", "hardlink", "symlink", "dir"):
        for entry in manifest.entries:
            if entry.kind == kind and entry.name == name:
                return entry
    if name.endswith(".json"):
        for entry in manifest.entries:
            if entry.kind == "data" and entry.name == name[: -len(".json")]:
                return entry
    raise BackupNotFoundError(
        f"backup {manifest.backup_id} has no entry {name!r} (entries: "
        + ", ".join(e.name for e in manifest.entries)
        + ")"
    )


@click.command()
@click.argument("backup_id")
@click.argument("entry_name", metavar="ENTRY")
@json_option
@click.pass_obj
def cat(ctx: Context, backup_id: str, entry_name: str) -> None:
    """Print one entry of a backup: a data entry as indented JSON, a file's raw bytes.

    ENTRY is a data key (or <key>.json) or a file path as `show` lists it. With --json a
    file is printed as {"name", "size", "base64"}.
    """
    repository = ctx.manager.repository
    backup_id = ctx.resolve(backup_id)  # an id or a reference (latest, pre_trade~2...)
    manifest = repository.read_manifest(backup_id)
    entry = find_entry(manifest, entry_name)
    if entry.kind == "data":
        value = decode_entry(repository, manifest, entry)
        click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))
        return
    if entry.kind == "dir":
        raise InvalidInputError(f"{entry.name!r} is a directory in backup {backup_id}")
    if entry.kind == "symlink":  # its content is its text
        if ctx.as_json:
            emit_json({"name": entry.name, "kind": "symlink", "target": entry.target})
        else:
            click.echo(entry.target)
        return
    if entry.kind == "hardlink":  # the content of the file it links to
        entry = find_entry(manifest, entry.target or "")
    if ctx.as_json:
        content = repository.read_entry(entry)
        emit_json(
            {
                "name": entry.name,
                "size": entry.size,
                "base64": base64.b64encode(content).decode("ascii"),
            }
        )
        return
    sys.stdout.flush()
    out = sys.stdout.buffer
    written = 0
    for chunk in repository.iter_entry(entry):  # each chunk verified before it is written
        out.write(chunk)
        written += len(chunk)
    out.flush()
    if written != entry.size:
        raise CorruptDataError(f"entry {entry.name!r}: {written} bytes, not {entry.size}")
