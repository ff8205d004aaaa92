"""Scheduled backups: the loop behind ``peak-backup run``.

Jobs come from ``[backup]``: ``interval_hours`` (type ``automatic``), ``daily_at`` and
``weekly`` (type ``scheduled``, the weekly one tagged ``schedule=weekly``). Due times are
computed by the ``schedule`` library's ``Job`` objects; the loop around them is ours, so that
the clock and the sleep function can be injected (tests run without real sleeping).

- One backup at a time: the loop is single-threaded and runs due jobs one after another.
- Catch-up: on start, a job whose type's last success (run history, ``merged_history``) is
  older than the job's period (or missing) runs once right away.
- A failed run (:class:`BackupError`) is retried with exponential backoff (``backoff_initial``
  doubling up to ``backoff_max``) until it succeeds or the job's next regular run comes; an
  unexpected exception is logged the same way. Neither stops the scheduler.
- :meth:`BackupScheduler.request_stop` (the CLI calls it on SIGTERM/SIGINT) lets the running
  backup finish; the loop then returns.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import schedule

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.errors import BackupError, RepositoryNotFoundError
from src.infra.backup.format.durations import parse_daily_at, parse_weekly
from src.infra.backup.repository.history import TypeSummary, merged_history

if TYPE_CHECKING:
    from src.infra.backup.app.manager import BackupManager

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current local time as a naive ``datetime`` (like ``datetime.now()``)."""

MAX_SLEEP_SECONDS = 0.5  # the longest single sleep, so a stop request is noticed quickly


@contextlib.contextmanager
def _schedule_clock(now: datetime) -> Iterator[None]:
    """Make the ``schedule`` module see ``now`` as the current time (single-threaded use)."""

    class _Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _Frozen:  # type: ignore[override]
            value = now if tz is None else now.astimezone(tz)
            return cls(*value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo)

    shim = types.ModuleType("datetime")
    shim.__dict__.update(_dt.__dict__)
    shim.datetime = _Frozen  # type: ignore[attr-defined]
    original = getattr(schedule, "datetime")  # noqa: B009 - not re-exported by schedule
    setattr(schedule, "datetime", shim)  # noqa: B010
    try:
        yield
    finally:
        setattr(schedule, "datetime", original)  # noqa: B010


def _plain(value: datetime) -> datetime:
    return _dt.datetime(*value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo)


@dataclass
class ScheduledJob:
    """One schedule: its backup type, tags, period and the ``schedule`` job giving due times."""

    name: str
    backup_type: str
    period: timedelta
    job: schedule.Job
    tags: dict[str, str] = field(default_factory=dict)
    next_run: datetime | None = None
    retry_at: datetime | None = None
    failures: int = 0

    def due_at(self) -> datetime:
        """The next time this job wants to run (a pending retry may come first)."""
        assert self.next_run is not None
        if self.retry_at is not None and self.retry_at < self.next_run:
            return self.retry_at
        return self.next_run


def build_jobs(config: BackupConfig) -> list[ScheduledJob]:
    """The jobs ``config`` asks for (interval always; daily and weekly when set)."""
    sched = schedule.Scheduler()
    seconds = config.interval_hours * 3600
    jobs = [
        ScheduledJob(
            "interval",
            "automatic",
            timedelta(seconds=seconds),
            sched.every(seconds).seconds,  # type: ignore[arg-type]
        )
    ]
    if config.daily_at is not None:
        jobs.append(
            ScheduledJob(
                "daily",
                "scheduled",
                timedelta(days=1),
                sched.every().day.at(parse_daily_at(config.daily_at)),
                {"schedule": "daily"},
            )
        )
    if config.weekly is not None:
        day, at = parse_weekly(config.weekly)
        jobs.append(
            ScheduledJob(
                "weekly",
                "scheduled",
                timedelta(days=7),
                getattr(sched.every(), day).at(at),
                {"schedule": "weekly"},
            )
        )
    return jobs


@dataclass(frozen=True)
class RunResult:
    """What one run of a job did."""

    job: str
    backup_type: str
    ok: bool
    duration_seconds: float
    backup_id: str | None = None
    size_bytes: int | None = None
    error: str | None = None


class BackupScheduler:
    """Runs the jobs of ``manager.config`` (see the module docstring).

    ``clock``: the current local time (naive); ``sleep``: sleeps that many seconds (tests
    pass functions that advance a fake clock). ``backoff_initial``/``backoff_max``: retry
    delays after a failed run, in seconds.
    """

    def __init__(
        self,
        manager: BackupManager,
        *,
        config: BackupConfig | None = None,
        clock: Clock = datetime.now,
        sleep: Callable[[float], None] = time.sleep,
        backoff_initial: float = 30.0,
        backoff_max: float = 600.0,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.config = config if config is not None else manager.config
        self.clock = clock
        self.sleep = sleep
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.data = data
        # Called on every turn of run_forever, between backups; each paces itself and never
        # raises (``peak-backup run`` adds the alert checks of monitoring/alerts.py).
        self.periodic: list[Callable[[], None]] = []
        self.jobs = build_jobs(self.config)
        self.results: list[RunResult] = []
        self._stop = False
        self._running = False
        now = self.clock()
        for job in self.jobs:
            self._reschedule(job, now)

    # -- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the running backup (if any) finished; safe from a signal handler."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    # -- due times ---------------------------------------------------------------------------

    def _reschedule(self, job: ScheduledJob, now: datetime) -> None:
        with _schedule_clock(now):
            job.job._schedule_next_run()
        assert job.job.next_run is not None
        job.next_run = _plain(job.job.next_run)

    def backoff(self, failures: int) -> float:
        """The delay before retry number ``failures`` (1, 2, ...): initial x 2^(n-1), capped."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1)))

    def next_due(self) -> tuple[ScheduledJob, datetime]:
        """The job that is due next and when."""
        job = min(self.jobs, key=lambda j: j.due_at())
        return job, job.due_at()

    # -- running -----------------------------------------------------------------------------

    def overdue_jobs(self) -> list[ScheduledJob]:
        """Jobs whose type's last success (run history) is older than their period, or none."""
        now_utc = self.clock().astimezone(timezone.utc)
        try:
            repository = self.manager.repository
        except RepositoryNotFoundError:
            types: dict[str, TypeSummary] = {}
        else:
            types, _verify = merged_history(repository.store, self.manager.list_backups())
        overdue = []
        for job in self.jobs:
            entry = types.get(job.backup_type)
            last = entry.last_success if entry is not None else None
            if last is None or last.time + job.period <= now_utc:
                overdue.append(job)
        return overdue

    def catch_up(self) -> list[RunResult]:
        """Run each job that was missed while the process was down, once (one per type:
        after one runs, the others of its type are no longer overdue)."""
        results: list[RunResult] = []
        for job in self.overdue_jobs():
            if self._stop:
                break
            if results and job not in self.overdue_jobs():
                continue
            log.info("catching up a missed %s backup", job.name, extra={"job": job.name})
            results.append(self.run_job(job, reschedule=False))
        return results

    def run_job(self, job: ScheduledJob, *, reschedule: bool = True) -> RunResult:
        """Take one backup for ``job`` now; log and record the outcome; schedule a retry on
        failure. Never raises (except ``KeyboardInterrupt``/``SystemExit``)."""
        assert not self._running, "one backup at a time"
        self._running = True
        started = time.monotonic()
        try:
            backup_id = self.manager.create_backup(
                self.data, job.backup_type, tags=job.tags or None, include_files=True
            )
            size: int | None = None
            with contextlib.suppress(BackupError):
                size = self.manager.get_backup_info(backup_id).size_bytes
            result = RunResult(
                job.name, job.backup_type, True, time.monotonic() - started, backup_id, size
            )
        except BackupError as exc:
            result = self._failed(job, started, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # an unexpected bug must not kill the scheduler
            log.exception("unexpected error in a %s backup", job.name, extra={"job": job.name})
            result = self._failed(job, started, f"{type(exc).__name__}: {exc}")
        finally:
            self._running = False
        now = self.clock()
        if result.ok:
            job.failures = 0
            job.retry_at = None
            log.info(
                "backup %s finished in %.2f s",
                result.backup_id,
                result.duration_seconds,
                extra={
                    "job": job.name,
                    "backup_id": result.backup_id,
                    "backup_type": job.backup_type,
                    "duration_seconds": round(result.duration_seconds, 3),
                    "size_bytes": result.size_bytes,
                    "outcome": "ok",
                },
            )
        else:
            job.failures += 1
            delay = self.backoff(job.failures)
            job.retry_at = now + timedelta(seconds=delay)
            log.warning(
                "%s backup failed (attempt %d), retrying in %.0f s: %s",
                job.name,
                job.failures,
                delay,
                result.error,
                extra={
                    "job": job.name,
                    "backup_type": job.backup_type,
                    "duration_seconds": round(result.duration_seconds, 3),
                    "outcome": "failed",
                    "error": result.error,
                    "retry_in_seconds": delay,
                },
            )
        if reschedule:
            self._reschedule(job, now)
        self.results.append(result)
        return result

    def _failed(self, job: ScheduledJob, started: float, error: str) -> RunResult:
        return RunResult(job.name, job.backup_type, False, time.monotonic() - started, error=error)

    def run_pending(self) -> list[RunResult]:
        """Run every job that is due now, one after another."""
        results = []
        for job in sorted(self.jobs, key=lambda j: j.due_at()):
            if self._stop:
                break
            if job.due_at() <= self.clock():
                results.append(self.run_job(job))
        return results

    def run_forever(self, *, catch_up: bool = True) -> None:
        """Catch up, then run jobs when due until :meth:`request_stop`."""
        if catch_up:
            self.catch_up()
        while not self._stop:
            self.run_pending()
            if self._stop:
                break
            for check in self.periodic:
                check()
            _, due = self.next_due()
            wait = (due - self.clock()).total_seconds()
            if wait > 0:
                self.sleep(min(wait, MAX_SLEEP_SECONDS))

    def backup_on_exit(self) -> RunResult:
        """One more ``automatic`` backup (tagged ``trigger=exit``), e.g. before shutdown."""
        job = ScheduledJob(
            "exit",
            "automatic",
            timedelta(0),
            schedule.Scheduler().every(1).seconds,
            {"trigger": "exit"},
        )
        return self.run_job(job, reschedule=False)
