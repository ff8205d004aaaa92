"""``diff`` and ``cat``: look inside backups from the command line.

Registered on the ``peak-backup`` group by importing this module (``cli.py`` does that at its
end), so the commands share ``--json``, ``--config``, exit codes and error handling.
"""

from __future__ import annotations

import base64
import json
import sys

import click

from src.infra.backup.app.diff import (
    DEFAULT_MAX_CHANGES,
    DiffResult,
    decode_entry,
    diff_against_sources,
    diff_backups,
)
from src.infra.backup.cli import Context, _json_option, emit_json, main, stderr, stdout
from src.infra.backup.errors import BackupNotFoundError, CorruptDataError, InvalidInputError
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.format.values import to_jsonable


@main.command()
@click.argument("backup_id")
@click.argument("other_id", required=False)
@click.option(
    "--max",
    "max_changes",
    type=click.IntRange(min=0),
    default=None,
    help=f"Show at most N changes (default {DEFAULT_MAX_CHANGES}; with --json all); 0 shows all.",
)
@_json_option
@click.pass_obj
def diff(ctx: Context, backup_id: str, other_id: str | None, max_changes: int | None) -> None:
    """Show what changed from BACKUP_ID to OTHER_ID, or, without OTHER_ID, from BACKUP_ID to
    the configured sources on disk now (files only).

    Data entries are compared value by value (portfolio.equity: 10000 -> 9500); files by
    their chunk ids, with their sizes.
    """
    if max_changes is None:
        limit: int | None = None if ctx.as_json else DEFAULT_MAX_CHANGES
    else:
        limit = max_changes or None
    if other_id is None:
        result = diff_against_sources(ctx.manager, backup_id, max_changes=limit)
    else:
        result = diff_backups(ctx.manager, backup_id, other_id, max_changes=limit)
    if ctx.as_json:
        emit_json(result.to_json())
        if result.omitted:
            stderr.print(
                f"... {result.omitted} more changes not shown (--max 0 shows all)",
                highlight=False,
            )
        return
    _print_diff(result)


def _print_diff(result: DiffResult) -> None:
    against = "the sources on disk" if result.new == "sources" else result.new
    counts = result.counts
    summary = (
        f"{result.old} -> {against}: {counts['added']} added, {counts['removed']} removed, "
        f"{counts['changed']} changed"
    )
    stdout.print(
        summary if result.total else f"{result.old} -> {against}: no changes",
        markup=False,
        highlight=False,
    )
    for line in result.lines():
        stdout.print(line, markup=False, highlight=False)
    if result.skipped:
        stdout.print(
            "data entries not compared (only files exist on disk): " + ", ".join(result.skipped),
            markup=False,
            highlight=False,
        )


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


@main.command()
@click.argument("backup_id")
@click.argument("entry_name", metavar="ENTRY")
@_json_option
@click.pass_obj
def cat(ctx: Context, backup_id: str, entry_name: str) -> None:
    """Print one entry of a backup: a data entry as indented JSON, a file's raw bytes.

    ENTRY is a data key (or <key>.json) or a file path as `show` lists it. With --json a
    file is printed as {"name", "size", "base64"}.
    """
    repository = ctx.manager.repository
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
