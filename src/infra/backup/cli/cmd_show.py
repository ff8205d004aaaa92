"""``peak-backup show``: a backup's metadata and entries."""

from __future__ import annotations

from datetime import datetime

import click

from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.app.pins import pin_json, read_pin
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, info_json, stdout
from src.infra.backup.format.manifest import Entry


@click.command()
@click.argument("backup_id")
@json_option
@click.pass_obj
def show(ctx: Context, backup_id: str) -> None:
    """Show a backup's metadata and entries (ID: an id or a reference, e.g. latest)."""
    manifest = ctx.manager.repository.read_manifest(ctx.resolve(backup_id))
    info = BackupInfo.from_manifest(manifest)
    pin = read_pin(ctx.manager.repository, info.backup_id)
    entries = [
        {
            "name": e.name,
            "kind": e.kind,
            "size": e.size,
            "path": e.path,
            "mode": oct(e.mode) if e.mode is not None else None,
            "mtime": datetime.fromtimestamp(e.mtime_ns / 1e9).isoformat() if e.mtime_ns else None,
            "target": e.target,
            "origin": e.origin,
            "database": e.origin == "sqlite",
            "changed": e.changed,
            "uid": e.uid,
            "gid": e.gid,
        }
        for e in manifest.entries
    ]
    if ctx.as_json:
        emit_json(
            {
                **info_json(info),
                "parent": manifest.parent,
                "compression": manifest.compression,
                "pinned": pin is not None,
                "pin": None if pin is None else pin_json(pin),
                "entries": entries,
            }
        )
        return
    stdout.print(f"[bold]{info.backup_id}[/bold]  type {info.backup_type}  host {info.host}")
    stdout.print(
        f"time      {info.timestamp:%Y-%m-%d %H:%M:%S} local ({info.timestamp_utc.isoformat()})"
    )
    stdout.print(
        f"size      {human_size(info.logical_bytes)} restored, "
        f"{human_size(info.size_bytes)} stored, {human_size(info.added_bytes)} new "
        f"({manifest.compression})"
    )
    if info.tags:
        stdout.print("tags      " + ", ".join(f"{k}={v}" for k, v in info.tags.items()))
    if info.note:
        stdout.print(f"note      {info.note}")
    if pin is not None:
        stdout.print(f"pinned    {pin.describe()}", highlight=False, markup=False)
    for warning in info.warnings:
        stdout.print(f"warning   {warning}", highlight=False)
    from rich.table import Table  # imported on use: rich is slow to import

    table = Table()
    for column in ("Entry", "Kind", "Size", "Mode", "Modified", "Notes"):
        table.add_column(column)
    for entry in manifest.entries:
        modified = (
            f"{datetime.fromtimestamp(entry.mtime_ns / 1e9):%Y-%m-%d %H:%M:%S}"
            if entry.mtime_ns
            else ""
        )
        mode = oct(entry.mode) if entry.mode is not None else ""
        table.add_row(
            entry.name, entry.kind, human_size(entry.size), mode, modified, _entry_notes(entry)
        )
    stdout.print(table)


def _entry_notes(entry: Entry) -> str:
    """What ``show`` says about an entry beyond its size and times."""
    notes = []
    if entry.origin == "sqlite":
        notes.append("database (SQLite online-backup copy)")
    elif entry.origin == "command":
        notes.append("command output")
    if entry.kind == "symlink":
        notes.append(f"-> {entry.target}")
    elif entry.kind == "hardlink":
        notes.append(f"hard link to {entry.target}")
    if entry.changed:
        notes.append("changed while read: may mix two versions")
    return ", ".join(notes)
