"""``peak-backup sync``: copy the backups a replica lacks (only missing chunks), or back."""

from __future__ import annotations

from dataclasses import asdict

import click

from src.infra.backup.app.offsite import move_back
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import (
    ProgressReporter,
    emit_json,
    human_size,
    progress_bar,
    stdout,
)
from src.infra.backup.errors import RepositoryNotFoundError
from src.infra.backup.repository.replication import Lag, lag, open_replica, sync
from src.infra.backup.repository.repository import Repository


@click.command(name="sync")
@click.option("--to", "to_location", metavar="LOCATION", help="Copy into this repository.")
@click.option("--from", "from_location", metavar="LOCATION", help="Copy from this repository.")
@click.option(
    "--backup", "backup_ids", multiple=True, metavar="ID", help="Only these backups (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Only show what would be copied (the lag).")
@click.option("--verify", is_flag=True, help="Read every copied backup back and verify it.")
@click.option(
    "--move",
    is_flag=True,
    help="Delete each backup from the source once it has arrived (drains a fallback_path); "
    "a backup whose id is taken by another backup arrives under the next free id.",
)
@json_option
@click.pass_obj
def sync_command(
    ctx: Context,
    to_location: str | None,
    from_location: str | None,
    backup_ids: tuple[str, ...],
    dry_run: bool,
    verify: bool,
    move: bool,
) -> None:
    """Copy the backups a replica lacks (only missing chunks; resumable), e.g.
    `sync --to s3://bucket/prefix`, or back with `sync --from s3://...`. LOCATION is a
    directory or an s3:// URL ([backup.s3] says how to reach it). The configured repository is
    the other side unless both are given."""
    if not to_location and not from_location:
        raise click.UsageError("give --to LOCATION, --from LOCATION, or both")
    manager = ctx.manager
    config = manager.config

    def opened(location: str | None, *, create: bool) -> Repository:
        if location is None:
            return manager.open_repository(create=create)
        return Repository.open(
            config.store_at(location),
            compression=config.compression_setting,
            passphrase=ctx.passphrase,
            create=False,
        )

    source = opened(from_location, create=False)
    target = config.store_at(to_location) if to_location else config.open_store()
    try:
        destination = open_replica(source, target, create=not dry_run)
    except RepositoryNotFoundError:  # a dry run against a replica that does not exist yet
        destination = None
    if dry_run:
        pending = lag(source, destination) if destination else _everything(source)
        _print_lag(ctx, source, target.location, pending, dry_run=True)
        return
    assert destination is not None
    with progress_bar(ctx, "sync") as progress:
        report = sync(
            source,
            destination,
            backup_ids=backup_ids or None,
            verify=verify,
            progress=_SyncProgress(progress),
            rename=move,
        )
    if move:
        move_back(source, report, config.grace)
    if ctx.as_json:
        emit_json(asdict(report))
        return
    stdout.print(
        f"Synced {len(report.copied)} backups ({report.blobs_copied} blobs, "
        f"{human_size(report.bytes_copied)}) from {report.source} to {report.destination} "
        f"in {report.seconds:.1f} s" + (f", {report.verified} verified" if verify else ""),
        highlight=False,
    )
    for old, new in report.renamed.items():
        stdout.print(f"{old} arrived as {new} (its id was taken there)", highlight=False)
    for backup_id in report.conflicts:
        stdout.print(
            f"[yellow]{backup_id} not copied: a different backup has that id there "
            "(use --move to store it under a new id)[/yellow]"
        )
    _print_lag(ctx, source, report.destination, report.lag, dry_run=False)


def _everything(source: Repository) -> Lag:
    summaries = source.list_summaries()
    return Lag(
        backups=[s.backup_id for s in reversed(summaries)],
        bytes=sum(s.stats.added_bytes for s in summaries),
        oldest_utc=summaries[-1].time_utc.isoformat() if summaries else None,
    )


def _print_lag(
    ctx: Context, source: Repository, destination: str, pending: Lag, *, dry_run: bool
) -> None:
    if ctx.as_json:
        emit_json({"source": source.store.location, "destination": destination, **asdict(pending)})
        return
    if not pending.backups:
        stdout.print(f"{destination} is up to date with {source.store.location}", highlight=False)
        return
    verb = "Would copy" if dry_run else "Not yet copied:"
    stdout.print(
        f"{verb} {len(pending.backups)} backups ({human_size(pending.bytes)}"
        + (f" in {pending.blobs} blobs" if pending.blobs else "")
        + f"), oldest from {pending.oldest_utc}",
        highlight=False,
    )


class _SyncProgress:
    """``sync``'s progress (per copied backup, and the total first) on the command's bar."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self._reporter = reporter

    def __call__(self, _backup_id: str, _blobs: int, size: int) -> None:
        self._reporter(size)

    def set_total(self, total: int) -> None:
        self._reporter.set_total(total)
