"""Sources that are alive while a backup reads them, end to end through ``create_backup``
and restore: SQLite databases with a real writer process committing (WAL and rollback
journal), a file rewritten in place by a real process, damaged databases, command sources.

The invariant under test: a backup that reports no warning restores working data (a database
that passes ``integrity_check`` and holds whole transactions, including every transaction
committed before the backup started; a file that is one version, never two mixed); anything
else is flagged with a warning that names the file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.errors import CommandSourceError
from src.infra.backup.files import archiver
from tests.helpers import run_cli_inline

ROWS_PER_TRANSACTION = 5

WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys, time
    path, mode, pace, progress = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE IF NOT EXISTS trades (tx INTEGER, n INTEGER, price REAL, note TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, tx INTEGER)")
    db.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    tx = db.execute("SELECT tx FROM counter").fetchone()[0]
    worst = 0.0
    while not os.path.exists(progress + ".stop"):
        tx += 1
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for n in range(ROWS):
            db.execute("INSERT INTO trades VALUES (?, ?, ?, ?)", (tx, n, 100.0 + tx, "x" * 200))
        db.execute("UPDATE counter SET tx = ? WHERE id = 1", (tx,))
        db.execute("COMMIT")
        worst = max(worst, time.perf_counter() - started)
        tmp = progress + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{tx} {worst}")
        os.replace(tmp, progress)
        if pace:
            time.sleep(pace)
    """
).replace("ROWS", str(ROWS_PER_TRANSACTION))


def committed(progress: Path) -> tuple[int, float]:
    """The writer's last committed transaction and its worst commit time so far."""
    for _ in range(100):
        try:
            tx, worst = progress.read_text().split()
            return int(tx), float(worst)
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    raise AssertionError("the writer reports no progress")


@contextmanager
def writer(db: Path, mode: str, pace: float) -> Iterator[Path]:
    """A real process committing transactions into ``db`` until the block ends (its script
    and progress file live outside the backed-up directory)."""
    progress = db.parent.parent / f"{db.name}.progress"
    script = db.parent.parent / "writer.py"
    script.write_text(WRITER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(db), mode, str(pace), str(progress)]
    )
    try:
        while not progress.exists():
            assert process.poll() is None, "writer died"
            time.sleep(0.01)
        yield progress
    finally:
        Path(f"{progress}.stop").write_text("")
        try:
            process.wait(timeout=30)
        finally:
            process.kill()


def check_database(path: Path, committed_before: int) -> int:
    """Integrity, whole transactions, and nothing committed before the backup missing."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = db.execute("SELECT tx, COUNT(*) FROM trades GROUP BY tx").fetchall()
        assert all(count == ROWS_PER_TRANSACTION for _tx, count in counts), "torn transaction"
        newest = db.execute("SELECT tx FROM counter").fetchone()[0]
        txs = [tx for tx, _count in counts]
        assert txs == list(range(1, newest + 1)), "transactions missing or extra"
        assert newest >= committed_before, "a transaction committed before the backup is missing"
        return int(newest)
    finally:
        db.close()


def db_manager(root: Path, **extra: object) -> BackupManager:
    return BackupManager(
        BackupConfig(
            backup_path=str(root / "repo"),
            sources=["bot/"],
            base_dir=str(root),
            retention_days=0,
            **extra,  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize(("mode", "pace", "backups"), [("wal", 0.0, 8), ("delete", 0.02, 6)])
def test_live_sqlite_database_restores_consistent(
    tmp_path: Path, mode: str, pace: float, backups: int
) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    db = bot / "tradesv3.sqlite"
    (bot / "config.json").write_text("{}\n")
    manager = db_manager(tmp_path)
    recovery = RecoveryManager(manager)
    with writer(db, mode, pace) as progress:
        time.sleep(0.3)  # let it build some history
        for i in range(backups):
            before, _ = committed(progress)
            backup_id = manager.create_backup(None, include_files=True)
            info = manager.get_backup_info(backup_id)
            assert info.warnings == [], info.warnings
            manifest = manager.repository.read_manifest(backup_id)
            names = {e.name: e for e in manifest.entries}
            assert names["bot/tradesv3.sqlite"].origin == "sqlite"
            assert not any(n.endswith(("-wal", "-shm", "-journal")) for n in names)
            target = tmp_path / f"restore-{i}"
            recovery.restore_to_directory(backup_id, target)
            restored = target / "bot" / "tradesv3.sqlite"
            assert not (target / "bot" / "tradesv3.sqlite-wal").exists()
            newest = check_database(restored, before)
            assert newest > 0
        _, worst = committed(progress)
    print(f"{mode}: writer's worst commit during {backups} backups: {worst * 1000:.1f} ms")


def test_show_marks_a_database(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    db = sqlite3.connect(bot / "state.db")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "./repo"\nsources = ["bot/"]\nretention_days = 0\n'
    )
    created = run_cli_inline("create", "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup_id"]
    shown = run_cli_inline("show", backup_id, cwd=tmp_path)
    assert "database" in shown.stdout
    shown_json = run_cli_inline("show", backup_id, "--json", cwd=tmp_path)
    entries = json.loads(shown_json.stdout)["entries"]
    assert {e["name"]: e["database"] for e in entries}["bot/state.db"] is True


def test_detection_can_be_turned_off(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    db = sqlite3.connect(bot / "state.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    manager = db_manager(tmp_path, sqlite_detect=False)
    backup_id = manager.create_backup(None, include_files=True)
    entry = {e.name: e for e in manager.repository.read_manifest(backup_id).entries}["bot/state.db"]
    assert entry.origin is None


def test_damaged_database_is_stored_raw_with_a_warning(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    db = sqlite3.connect(bot / "state.db")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(os.urandom(100),) for _ in range(2000)])
    db.commit()
    db.close()
    raw = bytearray((bot / "state.db").read_bytes())
    raw[4096 * 2 : 4096 * 4] = os.urandom(8192)  # garbage in the middle of the b-tree
    (bot / "state.db").write_bytes(bytes(raw))
    manager = db_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    warnings = manager.get_backup_info(backup_id).warnings
    assert len(warnings) == 1
    assert str(bot / "state.db") in warnings[0] and "raw bytes" in warnings[0]
    target = tmp_path / "restored"
    RecoveryManager(manager).restore_to_directory(backup_id, target)
    assert (target / "bot" / "state.db").read_bytes() == bytes(raw)


REWRITER = textwrap.dedent(
    """
    import os, sys
    path, blocks, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    version = 0
    fd = os.open(path, os.O_WRONLY)
    while not os.path.exists(stop):
        version += 1
        stamp = version.to_bytes(8, "little") * 512  # one 4 KiB block
        for block in range(blocks):
            os.pwrite(fd, stamp, block * 4096)
    os.close(fd)
    """
)


def versions_in(content: bytes) -> set[int]:
    return {int.from_bytes(content[i : i + 8], "little") for i in range(0, len(content), 4096)}


def test_file_rewritten_while_read_is_untorn_or_flagged(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    blocks = 4096  # 16 MiB
    target_file = bot / "model.bin"
    target_file.write_bytes(b"\0" * (blocks * 4096))
    manager = db_manager(tmp_path)
    recovery = RecoveryManager(manager)
    script = tmp_path / "rewriter.py"
    script.write_text(REWRITER)
    stop = tmp_path / "stop"
    process = subprocess.Popen(
        [sys.executable, str(script), str(target_file), str(blocks), str(stop)]
    )
    flagged = clean = 0
    try:
        time.sleep(0.2)
        for i in range(6):
            backup_id = manager.create_backup(None, include_files=True)
            info = manager.get_backup_info(backup_id)
            entry = {e.name: e for e in manager.repository.read_manifest(backup_id).entries}[
                "bot/model.bin"
            ]
            out = tmp_path / f"r{i}"
            recovery.restore_to_directory(backup_id, out)
            seen = versions_in((out / "bot" / "model.bin").read_bytes())
            if entry.changed:
                flagged += 1
                assert any(str(target_file) in w and "changed" in w for w in info.warnings)
            else:
                clean += 1
                assert len(seen) == 1, f"a backup without a warning mixes versions {seen}"
                assert info.warnings == []
    finally:
        stop.write_text("")
        process.wait(timeout=30)
    print(f"rewritten file: {flagged} backups flagged changed, {clean} clean")
    # Once the writer has stopped, the file is read cleanly again.
    backup_id = manager.create_backup(None, include_files=True)
    assert manager.get_backup_info(backup_id).warnings == []
    out = tmp_path / "final"
    recovery.restore_to_directory(backup_id, out)
    assert len(versions_in((out / "bot" / "model.bin").read_bytes())) == 1


DUMPER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1])
    for line in db.iterdump():
        sys.stdout.write(line + "\\n")
    if len(sys.argv) > 2:
        sys.stderr.write("dump failed: disk on fire\\n")
        sys.exit(int(sys.argv[2]))
    """
)


def test_command_source_streams_a_dump_and_a_failing_one_stores_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "trades.db"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, pair TEXT, price REAL)")
    rows = [("BTC/USD", 100.0 + i) for i in range(5000)]
    db.executemany("INSERT INTO trades (pair, price) VALUES (?, ?)", rows)
    db.commit()
    db.close()
    (tmp_path / "dump.py").write_text(DUMPER)
    good = {"name": "db/trades.sql", "command": [sys.executable, "dump.py", str(db_path)]}
    manager = BackupManager(
        BackupConfig(
            backup_path=str(tmp_path / "repo"),
            base_dir=str(tmp_path),
            retention_days=0,
            command_sources=[good],  # type: ignore[arg-type]
        )
    )
    backup_id = manager.create_backup({"state": 1})
    entries = {e.name: e for e in manager.repository.read_manifest(backup_id).entries}
    assert entries["db/trades.sql"].origin == "command"
    out = tmp_path / "restored"
    RecoveryManager(manager).restore_to_directory(backup_id, out)
    restored = sqlite3.connect(":memory:")
    restored.executescript((out / "db" / "trades.sql").read_text())
    assert restored.execute("SELECT COUNT(*), MAX(price) FROM trades").fetchone() == (5000, 5099.0)

    bad = {"name": "db/bad.sql", "command": [sys.executable, "dump.py", str(db_path), "3"]}
    failing = BackupManager(
        BackupConfig(
            backup_path=str(tmp_path / "repo"),
            base_dir=str(tmp_path),
            retention_days=0,
            command_sources=[good, bad],  # type: ignore[arg-type]
        )
    )
    before = [b.backup_id for b in failing.list_backups()]
    with pytest.raises(CommandSourceError, match="exit status 3") as caught:
        failing.create_backup({"state": 2})
    assert "disk on fire" in str(caught.value)
    assert [b.backup_id for b in failing.list_backups()] == before


def test_reading_starts_after_the_tick_of_the_files_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write in the same clock tick as the last one leaves the mtime unchanged, so a file is
    read only once the file system's clock has moved past its mtime (waits are bounded)."""
    path = tmp_path / "state.bin"
    path.write_bytes(b"x" * 4096)
    tick_clock = archiver.TIMESTAMP_CLOCK
    soon = time.clock_gettime_ns(tick_clock) + 20_000_000  # 20 ms ahead: still to come
    os.utime(path, ns=(soon, soon))
    fd = os.open(path, os.O_RDONLY)
    try:
        st = archiver.after_timestamp_tick(fd, os.fstat(fd))
        assert st.st_mtime_ns == soon
        assert time.clock_gettime_ns(tick_clock) > st.st_mtime_ns  # any write now shows
        sleeps: list[float] = []
        monkeypatch.setattr(archiver.time, "sleep", sleeps.append)
        far = time.clock_gettime_ns(tick_clock) + 3600 * 10**9  # dated an hour ahead
        os.utime(path, ns=(far, far))
        archiver.after_timestamp_tick(fd, os.fstat(fd))  # gives up, then reads anyway
        assert len(sleeps) == archiver.MAX_TICK_WAITS
    finally:
        os.close(fd)
