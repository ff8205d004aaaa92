"""Request counting (issue 16): every store counts the requests it makes per operation under
S3's names (``storage/requests.py``); the run history records them per backup; ``status
--json`` and the Prometheus counter ``peak_backup_store_requests_total`` show them.

On S3 the counts are checked against what the server really receives: a proxy in front of
SeaweedFS logs every HTTP request.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.layout import status_key
from src.infra.backup.monitoring.metrics import BackupMetrics, metrics_available, write_textfile
from src.infra.backup.repository.history import current_host, record_failure
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.memory import MemoryStore
from src.infra.backup.storage.requests import (
    OPS,
    RequestCounter,
    list_pages,
    measure,
    process_requests,
)
from src.infra.backup.storage.s3 import MULTIPART_PART_SIZE, MULTIPART_THRESHOLD, S3Store
from src.infra.backup.storage.testing import EventualStore, FaultyStore
from tests.conftest import S3Bucket
from tests.helpers import run_cli_inline


def made(store: Store, action: Callable[[], object]) -> dict[str, int]:
    """The requests ``store`` made during ``action()``, by operation."""
    before = store.requests()
    action()
    after = store.requests()
    return {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)}


# -- local and in-memory stores ----------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def plain_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return MemoryStore()


def test_each_operation_counts_as_its_s3_request(plain_store: Store) -> None:
    store = plain_store
    assert store.requests() == {}
    assert made(store, lambda: store.put("a/one", b"x" * 100)) == {"PUT": 1}
    assert made(store, lambda: store.put("a/two", b"y", exclusive=True)) == {"PUT": 1}
    assert made(store, lambda: store.put_many([(f"b/{n}", b"z") for n in range(3)])) == {"PUT": 3}
    assert made(store, lambda: store.put_many([])) == {}
    assert made(store, lambda: store.get("a/one")) == {"GET": 1}
    assert made(store, lambda: store.get_range("a/one", 10, 20)) == {"GET": 1}
    assert made(store, lambda: list(store.get_many(["a/one", "a/two", "nothing"]))) == {"GET": 3}
    assert made(store, lambda: list(store.get_range_many([("a/one", 0, 5), None]))) == {"GET": 1}
    assert made(store, lambda: store.exists("a/one")) == {"HEAD": 1}
    assert made(store, lambda: store.stat("a/one")) == {"HEAD": 1}
    assert made(store, lambda: store.size("a/one")) == {"HEAD": 1}
    assert made(store, lambda: list(store.list("b/"))) == {"LIST": 1}
    assert made(store, lambda: list(store.list_info(""))) == {"LIST": 1}
    assert made(store, lambda: list(store.list_tokens("empty/"))) == {"LIST": 1}
    assert made(store, lambda: store.move("a/two", "c/two")) == {"COPY": 1, "DELETE": 1}
    assert made(store, lambda: store.delete("c/two")) == {"DELETE": 1}
    assert made(store, lambda: store.delete("c/two")) == {"DELETE": 1}  # missing: still asked
    with pytest.raises(KeyError):
        store.get("nothing")  # a 404 is a request too
    assert store.requests() == {
        "PUT": 5,
        "GET": 7,
        "HEAD": 3,
        "LIST": 3,
        "COPY": 1,
        "DELETE": 3,
    }
    assert set(store.requests()) <= set(OPS)


def test_a_listing_counts_one_request_per_page_of_1000(plain_store: Store) -> None:
    store = plain_store
    for n in range(2_500):
        store.put(f"many/{n % 7}/{n:05d}", b"", durable=False)
    assert made(store, lambda: list(store.list_info("many/"))) == {"LIST": 3}
    assert made(store, lambda: list(store.list("many/"))) == {"LIST": 3}
    assert made(store, lambda: list(store.list_tokens("many/3/"))) == {"LIST": 1}  # 357 keys
    assert [list_pages(n) for n in (0, 1, 1000, 1001, 2500)] == [1, 1, 1, 2, 3]


def test_wrappers_report_the_inner_stores_requests(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "store")
    faulty = FaultyStore(inner)
    faulty.put("k", b"v")
    faulty.get("k")
    eventual = EventualStore(MemoryStore(), lag=0)
    eventual.put("k", b"v")
    list(eventual.list("")), eventual.get("k")
    assert faulty.requests() == inner.requests() == {"PUT": 1, "GET": 1}
    assert faulty.request_counter is inner.request_counter
    assert eventual.requests() == eventual.inner.requests()
    assert eventual.requests()["PUT"] == 1 and eventual.requests()["LIST"] == 1


def test_counts_are_exact_under_threads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("k", b"v")

    def read(_: int) -> None:
        for _ in range(250):
            store.get("k")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(read, range(8)))
    assert store.requests() == {"PUT": 1, "GET": 2_000}


def test_process_totals_add_up_every_store_of_a_location(tmp_path: Path) -> None:
    location = str(tmp_path / "shared")
    before = process_requests().get(location, {})
    one, two = LocalStore(location), LocalStore(location)
    one.put("a", b"1")
    two.put("b", b"2")
    two.get("a")
    totals = process_requests()[location]
    assert totals["PUT"] - before.get("PUT", 0) == 2
    assert totals["GET"] - before.get("GET", 0) == 1
    assert one.requests() == {"PUT": 1} and two.requests() == {"PUT": 1, "GET": 1}
    assert str(tmp_path / "idle") not in process_requests()  # an idle store adds nothing
    LocalStore(tmp_path / "idle")
    assert str(tmp_path / "idle") not in process_requests()


def test_measure_sees_this_threads_requests_only(tmp_path: Path) -> None:
    store = MemoryStore()
    with measure() as outer:
        store.put("a", b"1")
        with measure() as inner:
            store.get("a")
        other = threading.Thread(target=lambda: store.put("b", b"2"))
        other.start()
        other.join()
    store.delete("a")
    assert inner.snapshot() == {"GET": 1}
    assert outer.snapshot() == {"PUT": 1, "GET": 1} and outer.total() == 2
    assert store.requests() == {"PUT": 2, "GET": 1, "DELETE": 1}


def test_a_store_that_counts_nothing_reports_nothing() -> None:
    counter = RequestCounter("nowhere")
    assert counter.snapshot() == {} and counter.total() == 0
    counter.add("PUT", 3)
    assert counter.snapshot() == {"PUT": 3} and "PUT" in repr(counter)


# -- S3: the counts are the requests the server receives ---------------------------------------


class RequestLog:
    """What a logging proxy saw: one (method, path, query) per HTTP request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, list[str]], bool]] = []

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def by_op(self) -> dict[str, int]:
        """The requests seen, under S3's operation names (as ``storage.requests`` counts)."""
        counts: Counter[str] = Counter()
        with self.lock:
            for method, _, query, copy in self.seen:
                if method == "GET":
                    counts["LIST" if "list-type" in query else "GET"] += 1
                elif method == "PUT":
                    counts["COPY" if copy else "PUT"] += 1
                elif method == "POST" and "delete" in query:  # DeleteObjects (obstore's delete)
                    counts["DELETE"] += 1
                elif method == "POST":  # create and complete of a multipart upload
                    counts["PUT" if ("uploads" in query or "uploadId" in query) else "POST"] += 1
                else:
                    counts[method] += 1
        return dict(counts)


def _proxy_handler(upstream: str, log: RequestLog) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _forward(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            copy = "x-amz-copy-source" in {name.lower() for name in self.headers}
            with log.lock:
                log.seen.append(
                    (self.command, parts.path, parse_qs(parts.query, keep_blank_values=True), copy)
                )
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():  # Host too: it is signed
                    conn.putheader(name, value)
                conn.endheaders(body)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    return Handler


@pytest.fixture
def logged_s3(s3_bucket: S3Bucket) -> Iterator[tuple[S3Store, RequestLog]]:
    """An S3 store on a fresh bucket, reached through a proxy that logs every request (no
    client retries: a retry would be a request the store does not count)."""
    log = RequestLog()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _proxy_handler(s3_bucket.server.endpoint_url, log)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = replace(
        s3_bucket.options,
        endpoint_url=f"http://127.0.0.1:{server.server_port}",
        max_retries=0,
    )
    store = S3Store(s3_bucket.url, options)
    try:
        yield store, log
    finally:
        store.close()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_s3_counts_are_the_requests_the_server_receives(
    logged_s3: tuple[S3Store, RequestLog],
) -> None:
    store, log = logged_s3

    def check(action: Callable[[], object], expected: dict[str, int]) -> None:
        log.clear()
        assert made(store, action) == expected
        assert log.by_op() == expected

    check(lambda: store.put("a/one", b"x" * 1000), {"PUT": 1})
    check(lambda: store.get("a/one"), {"GET": 1})  # the body is not a second request
    check(lambda: store.get_range("a/one", 100, 50), {"GET": 1})
    check(lambda: store.get_range("a/one", 100, 0), {"HEAD": 1})  # an empty range: a stat
    check(lambda: store.exists("a/one"), {"HEAD": 1})
    check(lambda: store.stat("a/one"), {"HEAD": 1})
    check(lambda: store.exists("a/none"), {"HEAD": 1})
    # The first exclusive write probes conditional writes (two PUTs and a DELETE) first.
    check(lambda: store.put("s/x.json", b"1", exclusive=True), {"PUT": 3, "DELETE": 1})
    check(lambda: store.put("s/y.json", b"2", exclusive=True), {"PUT": 1})
    check(lambda: store.move("a/one", "f/one"), {"COPY": 1, "DELETE": 1})
    check(lambda: store.delete("f/one"), {"DELETE": 1})
    check(lambda: store.put_many([(f"c/{n:02d}", b"%d" % n) for n in range(20)]), {"PUT": 20})
    check(lambda: list(store.get_many([f"c/{n:02d}" for n in range(5)])), {"GET": 5})
    check(lambda: list(store.list("c/")), {"LIST": 1})
    check(lambda: list(store.list_tokens("nothing/")), {"LIST": 1})
    check(lambda: list(store.list_temporary()), {})


def test_s3_multipart_upload_counts_its_parts_and_create_and_complete(
    logged_s3: tuple[S3Store, RequestLog],
) -> None:
    store, log = logged_s3
    size = MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17  # parts of 8 MiB: 3
    parts = -(-size // MULTIPART_PART_SIZE)
    assert parts == 3
    data = os.urandom(size)
    log.clear()
    assert made(store, lambda: store.put("big/one", data)) == {"PUT": parts + 2}
    assert log.by_op() == {"PUT": parts + 2}
    assert store.get("big/one") == data


@pytest.mark.slow
def test_s3_listing_of_2500_keys_is_3_pages(logged_s3: tuple[S3Store, RequestLog]) -> None:
    store, log = logged_s3
    items = [(f"many/{n % 5}/{n:05d}", b"") for n in range(2_500)]
    store.put_many(items)
    log.clear()
    assert made(store, lambda: list(store.list_info("many/"))) == {"LIST": 3}
    assert log.by_op() == {"LIST": 3}
    assert sum(1 for _ in store.list("many/0/")) == 500


def test_s3_listing_after_a_key_requests_only_the_pages_it_reads(
    logged_s3: tuple[S3Store, RequestLog],
) -> None:
    """``list_tokens_after`` stops at the first key past its prefix: the newest keys of one
    type cost one page however many keys the folder holds after them."""
    store, log = logged_s3
    store.put_many([(f"t/b_{n:05d}", b"") for n in range(1_500)])  # after the a_ keys
    store.put_many([(f"t/a_{n:05d}", b"") for n in range(1_100)])
    log.clear()
    newest = made(store, lambda: list(store.list_tokens_after("t/a_", "t/a_01050")))
    assert newest == {"LIST": 1} and log.by_op() == {"LIST": 1}
    log.clear()
    everything = made(store, lambda: list(store.list_tokens_after("t/a_", "t/a_")))
    assert everything == {"LIST": 2} and log.by_op() == {"LIST": 2}  # 1,100 keys: 2 pages


def test_s3_parallel_uploads_count_as_the_callers(s3_bucket: S3Bucket) -> None:
    store = S3Store(s3_bucket.url, s3_bucket.options)
    try:
        with measure() as seen:
            store.put_many([(f"p/{n}", b"x") for n in range(12)])  # on the store's threads
            store.get("p/3")
        assert seen.snapshot() == {"PUT": 12, "GET": 1}
        assert store.requests() == {"PUT": 12, "GET": 1}
        assert process_requests()[s3_bucket.url] == {"PUT": 12, "GET": 1}  # a new bucket
    finally:
        store.close()


# -- the run history, status --json and Prometheus ---------------------------------------------


def test_each_backup_records_its_requests(repo_dir: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=repo_dir, retention_days=0))
    manager.create_backup({"a": 1}, "pre_trade")
    manager.create_backup({"a": 2}, "pre_trade")
    store = manager.repository.store
    mine = made(store, lambda: manager.create_backup({"a": "x" * 50_000}, "pre_trade"))
    newest = manager.list_backups()[0].backup_id
    run = manager.repository.read_manifest(newest).run
    assert run is not None
    # The manifest holds what the backup asked of the store up to and including its own
    # write: all the call made but the lease's release after the commit (one DELETE).
    assert run.requests["PUT"] >= 2  # at least the lease and the manifest
    assert list(run.requests) == [op for op in OPS if op in run.requests]
    assert mine == run.requests | {"DELETE": run.requests.get("DELETE", 0) + 1}, (run, mine)
    assert not store.exists(status_key(current_host()))  # and the call wrote no status


def test_a_failed_attempts_requests_are_not_the_next_success(repo_dir: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=repo_dir, retention_days=0))
    manager.create_backup({"a": 1}, "daily")
    store = manager.repository.store
    for _ in range(10):  # what a failed attempt asked of the store ...
        store.exists("snapshots/none.json")
    record_failure(store, "daily", "disk full")  # ... is left with its failure record
    mine = made(store, lambda: manager.create_backup({"a": 2}, "daily"))
    run = manager.repository.read_manifest(manager.list_backups()[0].backup_id).run
    assert run is not None and sum(run.requests.values()) == sum(mine.values()) - 1


STATUS_CONFIG = """\
[backup]
backup_path = "repo"
retention_days = 0
interval_hours = 24
"""


def test_status_json_shows_the_requests(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(STATUS_CONFIG)
    manager = BackupManager(BackupConfig(backup_path=tmp_path / "repo", retention_days=0))
    manager.create_backup({"a": 1}, "pre_trade")
    backup_id = manager.create_backup({"a": 2}, "pre_trade")
    result = run_cli_inline("status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    last = doc["requests"]["last_backup"]
    assert last["backup_id"] == backup_id and last["backup_type"] == "pre_trade"
    assert last["by_op"]["PUT"] >= 1 and last["total"] == sum(last["by_op"].values())
    assert list(last["by_op"]) == [op for op in OPS if op in last["by_op"]]  # S3's order
    assert doc["types"]["pre_trade"]["last_success"]["requests"] == last["by_op"]
    command = doc["requests"]["this_command"]
    # The status command reads repo.json and the status files, and lists status/ at least.
    assert command["by_op"]["GET"] >= 2 and command["by_op"]["LIST"] >= 1
    assert command["total"] == sum(command["by_op"].values())
    text = run_cli_inline("status", cwd=tmp_path)
    assert f"Store requests of {backup_id}: {last['total']} (" in text.stdout


def test_status_json_without_recorded_requests(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(STATUS_CONFIG)
    result = run_cli_inline("status", "--json", cwd=tmp_path)
    doc = json.loads(result.stdout)
    assert doc["requests"]["last_backup"] is None
    assert doc["requests"]["this_command"]["total"] >= 1  # looked for repo.json


def test_status_json_on_s3_shows_the_backups_requests(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{s3_bucket.url}"\nretention_days = 0\n' + s3_bucket.toml()
    )
    manager = BackupManager(s3_bucket.config())
    for n in range(3):
        manager.create_backup({"positions": list(range(n * 1000))}, "pre_trade")
    store = manager.repository.store
    mine = made(store, lambda: manager.create_backup({"positions": [1, 2]}, "pre_trade"))
    result = run_cli_inline("status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout)["requests"]["last_backup"]
    assert last["by_op"].get("PUT", 0) >= 1
    assert abs(last["total"] - sum(mine.values())) <= 2, (last, mine)
    assert s3_bucket.server.secret_key not in result.stdout


needs_prometheus = pytest.mark.skipif(
    not metrics_available(), reason="prometheus-client (the metrics extra) is not installed"
)


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("peak_backup_store_requests_total{")
    }


@needs_prometheus
def test_prometheus_counts_store_requests_by_op(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    manager = BackupManager(BackupConfig(backup_path=tmp_path / "repo", retention_days=0))
    metrics = BackupMetrics()
    manager.create_backup({"a": 1}, "pre_trade")
    location = manager.repository.store.location
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE peak_backup_store_requests_total counter" in text
    samples = _samples(text)
    totals = process_requests()[location]
    for op in OPS:
        key = f'peak_backup_store_requests_total{{op="{op}",store="{location}"}}'
        assert samples[key] == totals.get(op, 0)  # every op, zeros included
    assert samples[f'peak_backup_store_requests_total{{op="PUT",store="{location}"}}'] >= 1
    manager.create_backup({"a": 2}, "pre_trade")  # read again at the next scrape
    later = _samples(generate_latest(metrics.registry).decode())
    put = f'peak_backup_store_requests_total{{op="PUT",store="{location}"}}'
    assert later[put] > samples[put]
    target = tmp_path / "peak_backup.prom"
    write_textfile(target, metrics)
    assert put in target.read_text()
