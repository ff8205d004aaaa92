"""``peak-backup alert``: ``test`` sends a test message to every ``[backup.alerts]`` target;
``check`` looks for overdue backups and a lagging replica and alerts on a change (for cron:
``*/10 * * * * peak-backup alert check``). See ``docs/ALERTS.md``.

Output names targets by their ``name`` (or ``<format>#<index>``), never by URL or token.
"""

from __future__ import annotations

import click

from src.infra.backup.app.alerting import AlertService
from src.infra.backup.cli.context import EXIT_ERROR, Context, json_option
from src.infra.backup.cli.output import emit_json, stdout
from src.infra.backup.errors import ConfigError


def _service(ctx: Context) -> AlertService:
    service = ctx.manager.alerts
    if service is None:
        raise ConfigError(
            "no alert targets: add [[backup.alerts.targets]] to the config file "
            "(see docs/ALERTS.md)"
        )
    return service


@click.group(name="alert")
def alert() -> None:
    """Alerts to a person: send a test message, or check for overdue backups."""


@alert.command(name="test")
@json_option
@click.pass_obj
def alert_test(ctx: Context) -> None:
    """Send a test message to every alert target now (exit 1 if one fails)."""
    service = _service(ctx)
    results = service.send_test()
    formats = {t.name: t.format for t in service.settings.targets}
    if ctx.as_json:
        emit_json(
            [
                {"target": name, "format": formats[name], "ok": error is None, "error": error}
                for name, error in results
            ]
        )
    else:
        for name, error in results:
            if error is None:
                stdout.print(f"[green]sent[/green]    {name}", highlight=False)
            else:
                stdout.print(f"[red]FAILED[/red]  {name}: {error}", highlight=False)
    if any(error is not None for _, error in results):
        raise SystemExit(EXIT_ERROR)


@alert.command(name="check")
@json_option
@click.pass_obj
def alert_check(ctx: Context) -> None:
    """Alert on overdue backups and replica lag (once per incident; recovery when it
    clears). Meant for cron when `peak-backup run` is not used."""
    from src.infra.backup.monitoring.alerts import evaluate_conditions

    service = _service(ctx)
    found = evaluate_conditions(ctx.manager)
    sent = service.flush(service.settings.flush_timeout.total_seconds())
    incidents = service.open_incidents()
    if ctx.as_json:
        emit_json({**found.to_json(), "open_incidents": incidents, "flushed": sent})
        return
    problems = {**found.overdue, **found.replica_lag}
    if not problems:
        stdout.print("no overdue backups, no replica lag", highlight=False)
    for key, text in sorted(problems.items()):
        stdout.print(f"[red]{key}[/red]: {text}", highlight=False)
    for key, info in sorted(incidents.items()):
        stdout.print(f"open incident {key} since {info.get('since')}", highlight=False)
