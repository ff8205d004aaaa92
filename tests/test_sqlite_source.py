"""Consistent capture of live SQLite databases: real writer processes, real databases.

A writer process commits transactions of ``K`` rows sharing one transaction number, and sets a
one-row ``counter`` to that number in the same transaction; it reports its last committed
number and its worst commit time through a small shared file. Every capture taken while it
runs must hold whole transactions only, and every transaction reported committed before the
capture started. Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from src.infra.backup.errors import InvalidInputError
from src.infra.backup.files import sqlite_source
from src.infra.backup.files.sqlite_source import (
    SQLITE_HEADER,
    STEP_BYTES,
    SqliteCapture,
    SqliteCaptureError,
    capture_sqlite,
    looks_like_sqlite,
)
from src.infra.backup.format.chunking import split_fixed

PROJECT_ROOT = Path(__file__).resolve().parents[1]
K = 5  # rows per transaction

# The writer: argv = database, state file, seconds to sleep between commits (0: none).
# State file: four int64 - last committed txn, worst commit time (us), stop flag, ready flag.
WRITER = r"""
import mmap, sqlite3, struct, sys, time
db, state, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
k = int(sys.argv[4])
with open(state, "r+b") as handle:
    shared = mmap.mmap(handle.fileno(), 32)
conn = sqlite3.connect(db, timeout=60, isolation_level=None)
conn.execute("PRAGMA synchronous=OFF")
n = conn.execute("SELECT n FROM counter").fetchone()[0]
worst = 0
payload = "p" * 50
struct.pack_into("q", shared, 24, 1)
while struct.unpack_from("q", shared, 16)[0] == 0:
    n += 1
    began = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO rows(txn, k, payload) VALUES (?, ?, ?)",
        [(n, i, payload) for i in range(k)],
    )
    conn.execute("UPDATE filler SET b = randomblob(200) WHERE id = ?", (n * 7919 % 1000 + 1,))
    conn.execute("UPDATE counter SET n = ?", (n,))
    conn.execute("COMMIT")
    worst = max(worst, int((time.perf_counter() - began) * 1e6))
    struct.pack_into("qq", shared, 0, n, worst)
    if pause:
        time.sleep(pause)
conn.close()
"""


def make_database(path: Path, journal_mode: str, filler_mb: int) -> None:
    """A database with the writer's tables and ``filler_mb`` MB of filler pages."""
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
    conn.executescript(
        f"""
        CREATE TABLE rows (txn INTEGER NOT NULL, k INTEGER NOT NULL, payload TEXT);
        CREATE INDEX rows_txn ON rows(txn);
        CREATE TABLE counter (n INTEGER NOT NULL);
        INSERT INTO counter VALUES (0);
        CREATE TABLE filler (id INTEGER PRIMARY KEY, b BLOB);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {filler_mb * 250})
        INSERT INTO filler(b) SELECT randomblob(3900) FROM c;
        """
    )
    conn.close()


class Writer:
    """A writer process and its shared state."""

    def __init__(self, process: subprocess.Popen[bytes], shared: mmap.mmap) -> None:
        self.process = process
        self.shared = shared

    def last(self) -> int:
        """The last transaction the writer reported committed."""
        return int(struct.unpack_from("q", self.shared, 0)[0])

    def worst_ms(self) -> float:
        return struct.unpack_from("q", self.shared, 8)[0] / 1000

    def wait_for(self, txn: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last() < txn:
            assert self.process.poll() is None, "the writer died"
            assert time.monotonic() < deadline, f"the writer did not reach {txn}"
            time.sleep(0.001)


@contextmanager
def writer(db: Path, state: Path, pause: float) -> Iterator[Writer]:
    """Run the writer on ``db`` until the block ends (then check it exited cleanly)."""
    state.write_bytes(bytes(32))
    with open(state, "r+b") as handle:
        shared = mmap.mmap(handle.fileno(), 32)
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(state), str(pause), str(K)]
    )
    try:
        running = Writer(process, shared)
        deadline = time.monotonic() + 30
        while struct.unpack_from("q", shared, 24)[0] == 0:
            assert process.poll() is None, "the writer could not start"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        running.wait_for(3)
        yield running
        struct.pack_into("q", shared, 16, 1)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shared.close()


def check_copy(capture: SqliteCapture, committed_before: int) -> int:
    """Assert the copy is sound and consistent; returns its last transaction number."""
    assert not Path(f"{capture.path}-wal").exists()
    conn = sqlite3.connect(f"{capture.path.as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        torn = conn.execute(
            "SELECT txn, count(*) FROM rows GROUP BY txn HAVING count(*) != ?", (K,)
        ).fetchall()
        assert torn == [], f"partial transactions in the copy: {torn[:5]}"
        last, distinct = conn.execute(
            "SELECT coalesce(max(txn), 0), count(DISTINCT txn) FROM rows"
        ).fetchone()
        assert distinct == last, "transactions missing in the middle"
        assert conn.execute("SELECT n FROM counter").fetchone()[0] == last
        assert last >= committed_before, (last, committed_before)
        return int(last)
    finally:
        conn.close()


def capture_repeatedly(
    db: Path, running: Writer, count: int, temp_dir: Path
) -> list[tuple[SqliteCapture, int]]:
    """``count`` captures, each checked; (capture, commits during the capture) per capture."""
    results = []
    for _ in range(count):
        before = running.last()
        with capture_sqlite(db, temp_dir=temp_dir) as capture:
            during = running.last() - before
            check_copy(capture, before)
        results.append((capture, during))
        assert not capture.path.exists()
        time.sleep(0.02)
    assert list(temp_dir.iterdir()) == []
    return results


def report(title: str, results: list[tuple[SqliteCapture, int]], running: Writer) -> None:
    steps = [c.steps for c, _ in results]
    restarts = [c.restarts for c, _ in results]
    seconds = max(c.seconds for c, _ in results)
    print(
        f"\n{title}: {len(results)} captures, steps {steps}, restarts {restarts}, "
        f"slowest {seconds * 1000:.0f} ms, commits during captures "
        f"{[d for _, d in results]}, writer's worst commit {running.worst_ms():.1f} ms"
    )


# -- live captures ---------------------------------------------------------------------


def test_wal_captures_are_consistent_and_never_block_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    make_database(db, "wal", filler_mb=24)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    assert sqlite_source.WAL_STEP_BYTES == 0  # the default: one step
    with writer(db, tmp_path / "state", pause=0) as running:
        results = capture_repeatedly(db, running, 12, temp_dir)
        report("WAL, writer at full speed", results, running)
    for capture, _ in results:
        assert capture.journal_mode == "wal"
        assert (capture.steps, capture.restarts) == (1, 0)  # one step, never restarted
        assert capture.page_size == 4096 and capture.size % 4096 == 0
    # The writer kept committing while the copies were taken.
    assert sum(during for _, during in results) >= 1


class SnapshotProbe:
    """Hooks into the stepwise WAL copy after each step: records the writer's last reported
    commit after the first step of each capture and waits there for three more commits; with
    ``abandon_after``, abandons the stepwise copy after that many steps (the rest is then
    copied in one step)."""

    def __init__(self, running: Writer, abandon_after: int = 0) -> None:
        self.running = running
        self.abandon_after = abandon_after
        self.first_step: list[int] = []  # per capture
        self.steps = 0
        self.flush = sqlite_source._Flusher.step

    def after_step(self, flusher: sqlite_source._Flusher) -> None:
        if self.steps == 0:
            self.first_step.append(self.running.last())
            self.running.wait_for(self.first_step[-1] + 3)  # commits between two steps
        self.steps += 1
        if self.steps == self.abandon_after:
            raise sqlite_source._AttemptAbandonedError
        self.flush(flusher)


@pytest.mark.parametrize("abandon_after", [0, 3], ids=["paced", "abandoned-then-one-step"])
def test_stepwise_wal_captures_copy_the_snapshot_taken_when_they_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abandon_after: int
) -> None:
    """The capture holds its read transaction across the steps: the writer commits between
    two steps (always after the first, at full speed between most others), yet the copy never
    restarts and is the snapshot read right after BEGIN (every transaction committed before
    the capture started, whole transactions only, none committed after the first step)."""
    step_bytes = 64 * 1024
    monkeypatch.setattr(sqlite_source, "WAL_STEP_BYTES", step_bytes)
    monkeypatch.setattr(sqlite_source, "WAL_SYNC_BYTES", 4 * step_bytes)
    db = tmp_path / "live.db"
    make_database(db, "wal", filler_mb=8)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    results = []
    with writer(db, tmp_path / "state", pause=0) as running:
        probe = SnapshotProbe(running, abandon_after)

        def after_step(flusher: sqlite_source._Flusher) -> None:
            probe.after_step(flusher)

        monkeypatch.setattr(sqlite_source._Flusher, "step", after_step)
        for _ in range(4):
            probe.steps = 0
            before = running.last()
            with capture_sqlite(db, temp_dir=temp_dir) as capture:
                ended = running.last()
                last = check_copy(capture, before)  # every commit reported before the start
            results.append((capture, ended - before))
            # One transaction may be committed but not reported yet at the first step; three
            # more were committed before the copy went on.
            assert last <= probe.first_step[-1] + 1 < ended
            assert capture.journal_mode == "wal" and capture.restarts == 0
            pages = -(-capture.size // step_bytes)
            if abandon_after:
                assert capture.steps == abandon_after + 1 < pages  # the rest in one step
            else:
                assert capture.steps == pages > 1
        report(f"WAL, steps of {step_bytes // 1024} KiB, writer at full speed", results, running)
    assert len(probe.first_step) == 4
    assert list(temp_dir.iterdir()) == []


def test_rollback_journal_captures_at_50_commits_per_second(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    make_database(db, "delete", filler_mb=12)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    with writer(db, tmp_path / "state", pause=0.02) as running:
        results = capture_repeatedly(db, running, 10, temp_dir)
        report("rollback journal, ~50 commits/s", results, running)
    for capture, _ in results:
        assert capture.journal_mode == "delete"
        assert capture.steps >= 1 and capture.restarts <= capture.steps


def test_rollback_journal_captures_with_a_fast_writer_restart_and_terminate(
    tmp_path: Path,
) -> None:
    db = tmp_path / "live.db"
    make_database(db, "delete", filler_mb=20)
    assert db.stat().st_size >= 4 * STEP_BYTES  # at least four steps per copy
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    with writer(db, tmp_path / "state", pause=0) as running:
        results = capture_repeatedly(db, running, 10, temp_dir)
        report("rollback journal, writer at full speed", results, running)
    for capture, _ in results:
        # A copy without restarts takes one step per STEP_BYTES; every restart adds steps.
        if capture.restarts == 0:
            assert capture.steps == -(-capture.size // STEP_BYTES)
        else:
            assert capture.steps > capture.restarts
    # The writer commits between nearly every two steps: restarts happen and are counted.
    if sum(during for _, during in results):
        assert any(capture.restarts for capture, _ in results)


def test_a_quiet_rollback_journal_database_is_copied_in_steps(tmp_path: Path) -> None:
    db = tmp_path / "quiet.db"
    make_database(db, "delete", filler_mb=12)
    with capture_sqlite(db, integrity="full", temp_dir=tmp_path) as capture:
        assert capture.restarts == 0
        assert capture.steps == -(-db.stat().st_size // STEP_BYTES) >= 3
        check_copy(capture, 0)
        assert capture.size == db.stat().st_size
        assert capture.path.stat().st_mode & 0o777 == 0o600


def test_a_wal_copy_is_one_self_contained_file(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    make_database(db, "wal", filler_mb=1)
    keeper = sqlite3.connect(db, isolation_level=None)  # keeps the WAL from being folded in
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("INSERT INTO rows VALUES (1, 0, 'only in the WAL')")
    keeper.execute("UPDATE counter SET n = 1")
    assert Path(f"{db}-wal").stat().st_size > 0
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    with capture_sqlite(db, temp_dir=temp_dir) as capture:
        assert sorted(p.name for p in temp_dir.iterdir()) == [capture.path.name]
        alone = tmp_path / "restored.db"
        alone.write_bytes(capture.path.read_bytes())
    keeper.close()
    conn = sqlite3.connect(alone)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("SELECT payload FROM rows").fetchall() == [("only in the WAL",)]
    conn.close()
    assert list(temp_dir.iterdir()) == []


# -- failures --------------------------------------------------------------------------


def test_a_locked_database_fails_after_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    make_database(db, "delete", filler_mb=1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with (
            pytest.raises(SqliteCaptureError, match="locked"),
            capture_sqlite(db, busy_timeout=0.2, temp_dir=tmp_path),
        ):
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.db"]


def test_damaged_databases_are_refused_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    make_database(db, "delete", filler_mb=1)
    data = bytearray(db.read_bytes())
    data[4 * 4096 : 40 * 4096] = os.urandom(36 * 4096)  # garbage pages, intact header
    db.write_bytes(data)
    assert looks_like_sqlite(db)
    with (
        pytest.raises(SqliteCaptureError, match=r"damaged.*quick_check.*Page \d+"),
        capture_sqlite(db, temp_dir=tmp_path),
    ):
        pass

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(SQLITE_HEADER + os.urandom(8192))
    assert looks_like_sqlite(garbage)
    with (
        pytest.raises(SqliteCaptureError, match="file is not a database"),
        capture_sqlite(garbage, temp_dir=tmp_path),
    ):
        pass

    truncated = tmp_path / "truncated.db"
    make_database(truncated, "delete", filler_mb=1)
    truncated.write_bytes(truncated.read_bytes()[:20_000])
    with (
        pytest.raises(SqliteCaptureError, match="damaged"),
        capture_sqlite(truncated, temp_dir=tmp_path),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "damaged.db",
        "garbage.db",
        "truncated.db",
    ]


def test_files_that_are_not_databases(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 10)
    encrypted = tmp_path / "sqlcipher.db"  # SQLCipher encrypts the header too
    encrypted.write_bytes(os.urandom(8192))
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    short = tmp_path / "short.db"
    short.write_bytes(SQLITE_HEADER[:10])
    for path in (text, encrypted, empty, short):
        assert not looks_like_sqlite(path)
        with (
            pytest.raises(SqliteCaptureError, match="file is not a database"),
            capture_sqlite(path, temp_dir=tmp_path),
        ):
            pass

    directory = tmp_path / "dir.db"
    directory.mkdir()
    assert not looks_like_sqlite(directory)
    with (
        pytest.raises(SqliteCaptureError, match="is a directory"),
        capture_sqlite(directory, temp_dir=tmp_path),
    ):
        pass

    # A missing file vanished: FileNotFoundError (the archiver warns so), not a capture error.
    missing = tmp_path / "missing.db"
    assert not looks_like_sqlite(missing)
    with pytest.raises(FileNotFoundError), capture_sqlite(missing, temp_dir=tmp_path):
        pass
    assert not missing.exists()  # never created
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.txt", "sqlcipher.db", "empty.db", "short.db", "dir.db"]
    )


def test_a_database_that_vanishes_before_sqlite_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gone.db"
    make_database(db, "wal", filler_mb=1)
    check_file = sqlite_source._check_file

    def check_then_vanish(path: Path) -> None:
        check_file(path)
        path.unlink()

    monkeypatch.setattr(sqlite_source, "_check_file", check_then_vanish)
    with (
        pytest.raises(FileNotFoundError) as raised,
        capture_sqlite(db, temp_dir=tmp_path),
    ):
        pass
    assert raised.value.filename == str(db)
    assert not db.exists()  # never created again
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_missing_temp_dir_is_a_capture_error_not_a_vanished_database(tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    make_database(db, "wal", filler_mb=1)
    with (
        pytest.raises(SqliteCaptureError, match="cannot create a temporary copy"),
        capture_sqlite(db, temp_dir=tmp_path / "missing"),
    ):
        pass


UNREADABLE_CHILD = r"""
import sys
from pathlib import Path
from src.infra.backup.files.sqlite_source import (
    SqliteCaptureError, capture_sqlite, looks_like_sqlite,
)
unreadable, read_only, temp = (Path(arg) for arg in sys.argv[1:4])
print("looks", looks_like_sqlite(unreadable))
try:
    with capture_sqlite(unreadable, temp_dir=temp):
        print("captured")
except SqliteCaptureError as exc:
    print("error", exc)
with capture_sqlite(read_only, temp_dir=temp) as capture:
    print("read-only", capture.steps, capture.size)
"""


def _drop_file_access_override() -> None:
    """In the child: lose CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root obeys file
    permissions like anyone else (prctl PR_CAPBSET_DROP before exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_an_unreadable_file_is_refused_and_a_read_only_one_is_captured(tmp_path: Path) -> None:
    unreadable = tmp_path / "unreadable.db"
    make_database(unreadable, "delete", filler_mb=1)
    read_only = tmp_path / "read_only.db"
    make_database(read_only, "delete", filler_mb=1)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    unreadable.chmod(0)
    read_only.chmod(0o444)
    before = read_only.read_bytes()
    # Root reads any file; the child drops the capabilities that allow it.
    preexec = _drop_file_access_override if os.geteuid() == 0 else None
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                UNREADABLE_CHILD,
                str(unreadable),
                str(read_only),
                str(temp_dir),
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=preexec,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot start a child without root's file access override: {exc}")
    finally:
        unreadable.chmod(0o600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "looks False"
    assert lines[1].startswith("error ") and "cannot read it (Permission denied)" in lines[1]
    assert lines[2].startswith("read-only ")
    assert read_only.read_bytes() == before
    assert list(temp_dir.iterdir()) == []


def test_the_copy_is_removed_when_the_block_raises(tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    make_database(db, "wal", filler_mb=1)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    with (
        pytest.raises(RuntimeError, match="caller failed"),
        capture_sqlite(db, temp_dir=temp_dir) as capture,
    ):
        assert capture.path.exists()
        raise RuntimeError("caller failed")
    assert not capture.path.exists()
    assert list(temp_dir.iterdir()) == []


def test_invalid_arguments(tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    make_database(db, "delete", filler_mb=1)
    for kwargs in ({"integrity": "thorough"}, {"busy_timeout": -1.0}):
        with pytest.raises(InvalidInputError), capture_sqlite(db, **kwargs):  # type: ignore[arg-type]
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.db"]


def test_split_fixed_cuts_page_aligned_chunks(tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    make_database(db, "delete", filler_mb=1)
    data = db.read_bytes()
    with open(db, "rb") as handle:
        chunks = list(split_fixed(handle, len(data), 16384))
    assert b"".join(chunks) == data
    assert all(len(chunk) == 16384 for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= 16384
    assert [len(c) for c in split_fixed(io.BytesIO(b"x" * 10_000), 9_000, 4096)] == [
        4096,
        4096,
        808,
    ]
    assert [len(c) for c in split_fixed(io.BytesIO(b"x" * 100), 4096, 4096)] == [100]
    assert list(split_fixed(io.BytesIO(b""), 0, 4096)) == [b""]
    with pytest.raises(InvalidInputError):
        list(split_fixed(io.BytesIO(b"x"), 1, 0))
