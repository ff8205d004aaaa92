"""Prometheus metrics of the backups (optional: the ``metrics`` extra, ``prometheus-client``).

``prometheus_client`` is imported only when metrics are used, so everything else works
without it; using them without it raises :class:`MetricsUnavailableError`.

    metrics = instrument(manager)            # a hook on create_backup, plus the repository size
    server, thread = start_http_server(9108, metrics)   # GET /metrics (run --metrics-port)
    write_textfile("/var/lib/node_exporter/textfile/peak_backup.prom", metrics)   # cron use

Metrics (``type`` is the backup type): ``backups_created_total{type}``,
``backups_failed_total{type}``, ``backup_duration_seconds{type}`` (histogram of successful
backups), ``backup_last_success_timestamp_seconds{type}``, ``backup_repository_size_bytes``
(stored size of all chunks, computed when scraped), and
``peak_backup_store_requests_total{op, store}``: the requests this process made of each store
location (``op``: GET, PUT, HEAD, LIST, DELETE, COPY; see ``storage.requests``), read from the
stores' counters at each scrape.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from src.infra.backup.app.outcome import BackupOutcome
from src.infra.backup.errors import BackupError, MetricsUnavailableError, RepositoryNotFoundError
from src.infra.backup.monitoring.status import collect_status
from src.infra.backup.storage.requests import OPS, process_requests

if TYPE_CHECKING:
    from collections.abc import Iterator
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from src.infra.backup.app.manager import BackupManager

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def metrics_available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailableError(
            "metrics need prometheus-client: pip install 'peak-trade-backup[metrics]'"
        ) from None
    return prometheus_client


STORE_REQUESTS = "peak_backup_store_requests"  # exposed as peak_backup_store_requests_total
STORE_REQUESTS_HELP = (
    "Requests this process made of a backup store, by operation (S3 names; a local store "
    "counts the S3 requests its file operations stand for)."
)


class StoreRequestsCollector:
    """``peak_backup_store_requests_total{op, store}`` from the process-wide request counts
    (``storage.requests.process_requests``), read at each scrape. Every operation of a store
    that made any request is reported, zeros included, so ``rate()`` works from the start."""

    def describe(self) -> Iterator[Any]:
        yield self._family()

    def collect(self) -> Iterator[Any]:
        family = self._family()
        for location, counts in sorted(process_requests().items()):
            for op in (*OPS, *sorted(set(counts) - set(OPS))):
                family.add_metric([op, location], counts.get(op, 0))
        yield family

    @staticmethod
    def _family() -> Any:
        _prometheus()  # the clear error without prometheus-client
        from prometheus_client.metrics_core import CounterMetricFamily

        return CounterMetricFamily(STORE_REQUESTS, STORE_REQUESTS_HELP, labels=["op", "store"])


class BackupMetrics:
    """The backup metrics in their own registry (``registry``, else a new one). An instance
    is a ``create_backup`` hook: ``manager.hooks.append(metrics)`` (or :func:`instrument`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = (
            registry if registry is not None else prom.CollectorRegistry()
        )
        self.created = prom.Counter(
            "backups_created", "Backups created.", ["type"], registry=self.registry
        )
        self.failed = prom.Counter(
            "backups_failed", "Backup attempts that failed.", ["type"], registry=self.registry
        )
        self.duration = prom.Histogram(
            "backup_duration_seconds",
            "Duration of successful backups (create_backup, retention included).",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.last_success = prom.Gauge(
            "backup_last_success_timestamp_seconds",
            "Unix time of the newest successful backup.",
            ["type"],
            registry=self.registry,
        )
        self.repository_size = prom.Gauge(
            "backup_repository_size_bytes",
            "Stored size of all chunks in the repository.",
            registry=self.registry,
        )
        self.store_requests = StoreRequestsCollector()
        self.registry.register(self.store_requests)
        self._lock = threading.Lock()

    def __call__(self, outcome: BackupOutcome) -> None:
        """The ``create_backup`` hook."""
        kind = outcome.backup_type
        if outcome.ok:
            self.created.labels(kind).inc()
            self.duration.labels(kind).observe(outcome.duration_seconds)
            self.last_success.labels(kind).set(outcome.time.timestamp())
        else:
            self.failed.labels(kind).inc()
            # Make the series exist, so a rate() over it works from the first failure.
            self.created.labels(kind)

    def track_repository(self, manager: BackupManager) -> None:
        """Report ``manager``'s repository size (computed at each scrape) and seed the last
        success per type from the run history, so a restarted process reports them too."""

        def size() -> float:
            try:
                return float(manager.repository.stored_bytes())
            except RepositoryNotFoundError:
                return 0.0
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail
                log.warning("cannot measure the backup repository: %s", exc)
                return float("nan")

        self.repository_size.set_function(size)
        try:
            summary = collect_status(manager)
        except BackupError as exc:
            log.warning("cannot read backup status for metrics: %s", exc)
            return
        for name, entry in summary.types.items():
            if entry.last_success is not None:
                self.last_success.labels(name).set(entry.last_success.time.timestamp())


def instrument(manager: BackupManager, metrics: BackupMetrics | None = None) -> BackupMetrics:
    """Update ``metrics`` (default: new ones) on every ``create_backup`` of ``manager``."""
    metrics = metrics if metrics is not None else BackupMetrics()
    if metrics not in manager.hooks:
        manager.hooks.append(metrics)
    metrics.track_repository(manager)
    return metrics


def write_textfile(path: str | os.PathLike[str], metrics: BackupMetrics) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically (a temp file in
    the same directory renamed over ``path``; name it ``*.prom``)."""
    prom = _prometheus()
    prom.write_to_textfile(os.fspath(path), metrics.registry)


def start_http_server(
    port: int, metrics: BackupMetrics, addr: str = "127.0.0.1"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread (port 0: a free one, see
    ``server.server_port``); ``server.shutdown()`` stops it."""
    prom = _prometheus()
    server, thread = prom.start_http_server(port, addr=addr, registry=metrics.registry)
    return server, thread
