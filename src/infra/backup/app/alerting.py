"""Alerts that reach a person: incidents opened and cleared, sent off the backup path.

An **incident** has a key (``backup_failed:<type>``, ``overdue:<type>``, ``damage:<backup id>``
or ``damage:repository``, ``replica_lag:<location>``). When it opens, each target gets one
alert; while it stays open nothing more is sent (a cron ``create`` failing every hour alerts
once); when it clears, each target gets a recovery message. Open incidents and the rate
limit's counts are kept in a small JSON state file (one per repository, written atomically
under an advisory lock, so separate processes share it).

Nothing here runs on the backup path: the :class:`AlertService` methods only put an item on a
bounded queue (full: the item is dropped and logged); one daemon thread per service reads the
state file and sends, each request with a short timeout. A target that cannot be reached is
logged as a warning (without its URL or token) and never fails or slows a backup. A process
that exits gives pending alerts ``flush_timeout`` to go out. See ``docs/ALERTS.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.infra.backup.app.alert_delivery import Alert, AlertDeliveryError, Status, deliver, scrub
from src.infra.backup.app.alert_settings import AlertSettings, AlertTarget
from src.infra.backup.repository.locks import HOSTNAME

if TYPE_CHECKING:
    from src.infra.backup.app.outcome import BackupOutcome
    from src.infra.backup.repository.check import CheckReport

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
STATE_VERSION = 1
MAX_TEXT = 1000
RATE_WINDOW = 3600.0  # max_per_hour's window, in seconds


def default_state_path(repository: str) -> Path:
    """``$XDG_STATE_HOME/peak-backup/alerts-<hash of the repository location>.json``
    (``~/.local/state`` without it): one file per repository, local or S3."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(repository.encode()).hexdigest()[:16]
    return Path(base) / "peak-backup" / f"alerts-{digest}.json"


@dataclass(frozen=True)
class _Open:
    key: str
    event: str
    severity: str
    text: str


@dataclass(frozen=True)
class _Clear:
    key: str
    text: str


@dataclass(frozen=True)
class _Conditions:
    """The incidents of one kind (``overdue``, ``replica_lag``) that hold now; the kind's
    other open incidents clear."""

    kind: str
    severity: str
    active: dict[str, str] = field(default_factory=dict)


_Work = _Open | _Clear | _Conditions


class AlertService:
    """The alerts of one repository (see the module docstring). Its methods never block on a
    target and never raise."""

    def __init__(self, settings: AlertSettings, repository: str, *, host: str = HOSTNAME):
        self.settings = settings
        self.repository = repository
        self.host = host
        self.state_path = (
            Path(settings.state_file) if settings.state_file else default_state_path(repository)
        )
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._memory: dict[str, Any] = _empty_state()  # if the state file cannot be used
        self._state_broken = False

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.settings.targets)
        return f"AlertService({self.repository!r}, targets=[{names}])"

    # -- events (called on the backup path: only a queue put) ------------------------------

    def on_outcome(self, outcome: BackupOutcome) -> None:
        """The backup hook: a failure opens ``backup_failed:<type>``, a success clears it."""
        key = f"backup_failed:{outcome.backup_type}"
        if outcome.ok:
            self._put(
                _Clear(key, f"backup {outcome.backup_id} of type {outcome.backup_type} succeeded")
            )
        else:
            where = " in the background" if outcome.in_background else ""
            self._put(
                _Open(
                    key,
                    "backup_failed",
                    "critical",
                    f"backup of type {outcome.backup_type} failed{where}: {outcome.error}",
                )
            )

    def report_verify(
        self, backup_id: str, ok: bool, problems: list[str], *, full: bool = True
    ) -> None:
        """A verify of ``backup_id``: damage opens ``damage:<id>``; a clean verify that read
        the data (``full``) clears it."""
        key = f"damage:{backup_id}"
        if not ok:
            shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
            self._put(
                _Open(key, "damage", "critical", f"verify found {backup_id} damaged: {shown}")
            )
        elif full:
            self._put(_Clear(key, f"verify found {backup_id} intact"))

    def report_check(self, report: CheckReport, *, full: bool) -> None:
        """A ``check``: damage opens ``damage:repository``; a clean check of all the data
        (``full``) clears it."""
        key = "damage:repository"
        if not report.clean:
            parts = [
                f"{len(found)} {what}"
                for what, found in (
                    ("damaged manifests", report.damaged_manifests),
                    ("missing chunks", report.missing_chunks),
                    ("corrupt chunks", report.corrupt_chunks),
                    ("damaged packs", report.damaged_packs),
                )
                if found
            ]
            affected = report.affected_backups
            text = f"check found damage: {', '.join(parts)}; affected backups: " + (
                ", ".join(affected[:10]) + (" ..." if len(affected) > 10 else "") or "none"
            )
            self._put(_Open(key, "damage", "critical", text))
        elif full:
            self._put(_Clear(key, "check found the repository clean"))

    def update_conditions(self, kind: str, active: Mapping[str, str], severity: str) -> None:
        """The incidents of ``kind`` that hold now (key -> text); the others of that kind
        that are open clear."""
        self._put(_Conditions(kind, severity, dict(active)))

    def _put(self, work: _Work) -> None:
        try:
            self._ensure_thread()
            self._queue.put_nowait(work)
        except queue.Full:
            log.warning("alert queue full: dropped an alert (%s)", type(work).__name__.strip("_"))
        except RuntimeError as exc:  # no new thread at interpreter shutdown: never raise
            log.warning("alert dropped: %s", exc)

    # -- the sender thread ----------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="peak-backup-alerts", daemon=True
            )
            self._thread.start()
            with contextlib.suppress(RuntimeError):  # interpreter shutting down
                atexit.register(self._at_exit)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            try:
                if work is None:
                    return
                self._handle(work)
            except Exception:
                log.warning("alert processing failed", exc_info=True)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert was processed (sent or given up); ``False`` if
        ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if self._thread is None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush (``timeout``, default ``flush_timeout``), then end the sender thread."""
        if timeout is None:
            timeout = self.settings.flush_timeout.total_seconds()
        done = self.flush(timeout)
        if not done:
            log.warning(
                "alerts not sent within %.0f s of exit: %d pending",
                timeout,
                self._queue.unfinished_tasks,
            )
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            atexit.unregister(self._at_exit)
        return done

    def _at_exit(self) -> None:
        self.close()

    # -- incidents ------------------------------------------------------------------------

    def _handle(self, work: _Work) -> None:
        now = datetime.now(timezone.utc)
        alerts: list[Alert] = []
        with self._state() as state:
            incidents: dict[str, Any] = state["incidents"]
            if isinstance(work, _Open):
                if work.key not in incidents:
                    incidents[work.key] = {"event": work.event, "since": now.isoformat()}
                    alerts.append(
                        self._alert(work.event, "firing", work.key, work.severity, work.text, now)
                    )
            elif isinstance(work, _Clear):
                opened = incidents.pop(work.key, None)
                if opened is not None:
                    alerts.append(
                        self._alert(
                            opened.get("event", "?"),
                            "recovered",
                            work.key,
                            "info",
                            f"resolved: {work.text}",
                            now,
                        )
                    )
            else:
                for key, text in work.active.items():
                    if key not in incidents:
                        incidents[key] = {"event": work.kind, "since": now.isoformat()}
                        alerts.append(
                            self._alert(work.kind, "firing", key, work.severity, text, now)
                        )
                for key in [k for k in incidents if k.startswith(f"{work.kind}:")]:
                    if key not in work.active:
                        del incidents[key]
                        alerts.append(
                            self._alert(
                                work.kind,
                                "recovered",
                                key,
                                "info",
                                f"resolved: {key} no longer holds",
                                now,
                            )
                        )
            sends = [pair for alert in alerts for pair in self._admitted(state, alert)]
        for target, alert in sends:
            self._send(target, alert)

    def _alert(
        self, event: str, status: Status, key: str, severity: str, text: str, now: datetime
    ) -> Alert:
        return Alert(event, status, key, severity, text[:MAX_TEXT], self.repository, self.host, now)

    def _admitted(self, state: dict[str, Any], alert: Alert) -> list[tuple[AlertTarget, Alert]]:
        """The targets ``alert`` goes to, within each target's ``max_per_hour`` (counted in
        ``state``); a dropped one is logged and counted, and the next sent one says so."""
        now = time.time()
        admitted = []
        for target in self.settings.targets:
            if alert.event not in target.events:
                continue
            sent = [t for t in state["sent"].get(target.name, []) if now - t < RATE_WINDOW]
            if len(sent) >= self.settings.max_per_hour:
                state["suppressed"][target.name] = state["suppressed"].get(target.name, 0) + 1
                log.warning(
                    "alert %s (%s) to %s rate-limited: %d sent in the last hour",
                    alert.key,
                    alert.status,
                    target.name,
                    len(sent),
                )
                state["sent"][target.name] = sent
                continue
            suppressed = state["suppressed"].pop(target.name, 0)
            state["sent"][target.name] = [*sent, now]
            admitted.append((target, _with_suppressed(alert, suppressed)))
        return admitted

    def _send(self, target: AlertTarget, alert: Alert) -> None:
        try:
            deliver(target, alert)
        except AlertDeliveryError as exc:
            log.warning(
                "alert %s (%s) to %s not delivered: %s",
                alert.key,
                alert.status,
                target.name,
                scrub(str(exc), target),
            )
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the sender
            log.warning(
                "alert %s (%s) to %s failed: %s",
                alert.key,
                alert.status,
                target.name,
                scrub(f"{type(exc).__name__}: {exc}", target),
            )
        else:
            log.info("alert %s (%s) sent to %s", alert.key, alert.status, target.name)

    def send_test(self) -> list[tuple[str, str | None]]:
        """``peak-backup alert test``: a test message to every target, now, in this thread
        (no rate limit, no incident); per target its name and ``None`` or why it failed."""
        alert = Alert(
            "test",
            "test",
            "test",
            "info",
            "test message: alerts reach you",
            self.repository,
            self.host,
            datetime.now(timezone.utc),
        )
        results: list[tuple[str, str | None]] = []
        for target in self.settings.targets:
            try:
                deliver(target, alert)
            except Exception as exc:  # noqa: BLE001 - reported per target
                results.append((target.name, scrub(str(exc) or type(exc).__name__, target)))
            else:
                results.append((target.name, None))
        return results

    def open_incidents(self) -> dict[str, Any]:
        """The open incidents (key -> event, since), from the state file."""
        with self._state() as state:
            return dict(state["incidents"])

    # -- the state file -------------------------------------------------------------------

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The state, read under the state file's lock and written back atomically (in
        memory only if the file cannot be used: then logged once)."""
        if self._state_broken:
            yield self._memory
            return
        lock = None
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(f"{self.state_path}.lock", "a+b")  # noqa: SIM115 - closed below
            _lock_file(lock)
        except OSError as exc:
            if lock is not None:
                lock.close()
            self._broken(exc)
            yield self._memory
            return
        with lock:
            state = _read_state(self.state_path)
            yield state
            try:
                _write_atomic(self.state_path, state)
            except OSError as exc:
                self._broken(exc)
                self._memory = state

    def _broken(self, exc: OSError) -> None:
        self._state_broken = True
        log.warning(
            "alert state file %s unusable (%s): incidents kept in memory, so another process "
            "may alert again",
            self.state_path,
            exc.strerror or exc,
        )


def _with_suppressed(alert: Alert, count: int) -> Alert:
    if not count:
        return alert
    from dataclasses import replace

    return replace(alert, suppressed=count)


def _empty_state() -> dict[str, Any]:
    return {"version": STATE_VERSION, "incidents": {}, "sent": {}, "suppressed": {}}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _empty_state()
    except (OSError, ValueError) as exc:
        log.warning("alert state file %s unreadable (%s): starting afresh", path, exc)
        return _empty_state()
    state = _empty_state()
    if isinstance(loaded, dict):
        for key in ("incidents", "sent", "suppressed"):
            if isinstance(loaded.get(key), dict):
                state[key] = loaded[key]
    return state


def _write_atomic(path: Path, state: dict[str, Any]) -> None:
    fd, temp = tempfile.mkstemp(prefix=".alerts-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _lock_file(handle: Any) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: the lock is advisory anyway
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def attach_alerts(manager: Any) -> AlertService | None:
    """The alert service of a ``BackupManager``'s ``[backup.alerts]`` (``None`` without one),
    its :meth:`AlertService.on_outcome` added to the manager's hooks."""
    settings = getattr(manager.config, "alerts", None)
    if not isinstance(settings, AlertSettings):
        return None
    service = AlertService(settings, manager.config.repository_location)
    manager.hooks.append(service.on_outcome)
    return service
