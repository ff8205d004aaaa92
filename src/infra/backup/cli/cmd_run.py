"""``peak-backup run``: the long-running scheduler process (see ``app/scheduler.py`` and
``docs/SCHEDULING.md``).

SIGTERM/SIGINT let the running backup finish, then exit 0.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from src.infra.backup.app.scheduler import BackupScheduler
from src.infra.backup.cli.context import Context
from src.infra.backup.cli.output import stderr
from src.infra.backup.errors import ConfigError, InvalidInputError
from src.infra.backup.format.durations import parse_duration

log = logging.getLogger(__name__)


@click.command(name="run")
@click.option("--backup-on-exit", is_flag=True, help="Take one more backup after SIGTERM/SIGINT.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1:PORT (needs prometheus-client).",
)
@click.option(
    "--retry-initial",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="First retry delay after a failed backup (doubles each time).",
)
@click.option(
    "--retry-max",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="Longest retry delay.",
)
@click.pass_obj
def run_command(
    ctx: Context,
    backup_on_exit: bool,
    metrics_port: int | None,
    retry_initial: str,
    retry_max: str,
) -> None:
    """Take backups on the [backup] schedule until SIGTERM/SIGINT."""
    try:
        initial = parse_duration(retry_initial).total_seconds()
        cap = parse_duration(retry_max).total_seconds()
    except ValueError as exc:
        raise click.UsageError(f"--retry-initial/--retry-max: {exc}") from None
    manager = ctx.manager
    config = manager.config
    if not config.enabled:
        raise ConfigError(
            "scheduled backups are off ([backup] enabled = false in the config file): "
            "set enabled = true to use `peak-backup run`"
        )
    if not config.sources:
        raise InvalidInputError(
            "nothing to back up: no [backup] sources are configured "
            '(add e.g. sources = ["config.toml", "live_runs/"] to config.toml)'
        )
    server = None
    if metrics_port is not None:
        from src.infra.backup.monitoring.metrics import instrument, start_http_server

        server, _ = start_http_server(metrics_port, instrument(manager))
        stderr.print(f"metrics on http://127.0.0.1:{server.server_port}/metrics", highlight=False)
    scheduler = BackupScheduler(manager, backoff_initial=initial, backoff_max=cap)
    if manager.alerts is not None:  # overdue backups, replica lag: docs/ALERTS.md
        from src.infra.backup.monitoring.alerts import PeriodicAlertCheck

        scheduler.periodic.append(PeriodicAlertCheck(manager))
    # One line per run (id, duration, size, outcome) even without -v.
    for name in ("src.infra.backup.app.scheduler", __name__):
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the running backup", signum)
        scheduler.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for job in scheduler.jobs:
            log.info(
                "scheduled %s backups (type %s), next at %s",
                job.name,
                job.backup_type,
                job.next_run,
                extra={"job": job.name, "next_run": str(job.next_run)},
            )
        scheduler.run_forever()
        if backup_on_exit:
            scheduler.backup_on_exit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
