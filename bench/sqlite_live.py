"""Live SQLite benchmark: ``python -m bench.sqlite_live [--size-mb 200] [--rounds 8]``.

Builds a trades database of about N MB (default 200) in WAL mode under ``/tmp`` and measures:

1. **Chunking of captured copies.** The first backup, then one backup after each change:
   *recent* (700 new trades, 300 open trades closed), *scattered* (1,000 random trades
   updated) and *few* (one bot step: 5 new trades, 5 closed). For FastCDC as the repository
   cuts files (``NEW_REPOSITORY_CHUNKER``: 1 KiB head, then 32 KiB average, 8-128 KiB) and
   fixed page-aligned chunks (``split_fixed``) of 4, 8, 16 and 64 KiB: the new stored bytes
   (chunks not in the previous copy, zstd level 3 plus the 8-byte blob header), the chunk
   lists that change (groups of ``CHUNKS_PER_LIST`` refs, head chunk inline, as
   ``repository.py`` stores them; each a stored blob) and the list refs the manifest
   carries (plain JSON, rewritten with every backup).
2. **Step size** (rollback-journal copies): time per backup step for 256-16384 pages; the
   writer waits for at most one step.
3. **Live capture**, with a writer process committing continuously (5 trade updates, 5
   journal rows and a counter per transaction; WAL at full speed, with and without its
   automatic checkpoints inside the timed commit, and at 50 commits/s; rollback journal at
   50 commits/s and full speed): ``capture_sqlite`` against a plain read of the files (the
   database and its ``-wal``/``-journal``, as a file backup would read them); for WAL both
   ways of copying (``WAL_METHODS``: in one step, and paced: steps of 4 MiB under the held
   read snapshot, the copy flushed to disk every ``WAL_SYNC_BYTES``), in alternating order.
   Time, the writer's worst commit latency during the copy (and alone, "idle"), the writer's
   commits during the copy (in WAL mode, what its next checkpoint folds back after the
   capture), copies that fail ``integrity_check`` or hold torn transactions, and the
   capture's peak memory above the process baseline (peak RSS of a child process, its
   high-water mark reset before the capture). Dirty pages are flushed (``os.sync``) before
   each writer starts, so that its first checkpoint does not flush the database just built.

Nothing is asserted: the figures are printed as tables (``--json`` for JSON). The working
directory is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import resource
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import msgspec
import zstandard

from src.infra.backup.files import sqlite_source
from src.infra.backup.files.sqlite_source import (
    COPY_CACHE_KIB,
    SOURCE_CACHE_KIB,
    capture_sqlite,
)
from src.infra.backup.format.chunking import NEW_REPOSITORY_CHUNKER, Chunker, split_fixed
from src.infra.backup.format.manifest import ChunkRef, ListRef, encode_chunk_list
from src.infra.backup.repository.reader import CHUNKS_PER_LIST

MB = 1_000_000
MIB = 1024 * 1024
SEED = 20251217
PAIRS = tuple(
    f"{base}/{quote}"
    for base in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOT", "LINK", "AVAX", "MATIC", "ATOM")
    for quote in ("EUR", "USDT")
)
BLOB_HEADER = 8  # blobs.py: magic, version, codec, flags
ROWS_CHANGED = 1000
K = 5  # journal rows and trade updates per writer transaction

Splitter = Callable[[BinaryIO, int], Iterator[bytes]]

# The writer: argv = database, state file, pause between commits (s), K, autocheckpoint
# (pages; 0: checkpoint every 1000 pages outside the timed transaction instead).
# State (int64 slots): 0 last txn, 1 worst commit (us) in the epoch, 2 epoch wanted,
# 3 epoch acknowledged, 4 stop, 5 ready.
WRITER = r"""
import mmap, random, sqlite3, struct, sys, time
db, state, pause, k = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
autocheckpoint = int(sys.argv[5])
with open(state, "r+b") as handle:
    shared = mmap.mmap(handle.fileno(), 64)
conn = sqlite3.connect(db, timeout=300, isolation_level=None)
conn.execute("PRAGMA synchronous=NORMAL")
conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
untimed_checkpoints = autocheckpoint <= 0
max_id = conn.execute("SELECT max(id) FROM trades").fetchone()[0]
n = conn.execute("SELECT n FROM counter").fetchone()[0]
rng = random.Random(n)
epoch = worst = 0
struct.pack_into("q", shared, 40, 1)
while not struct.unpack_from("q", shared, 32)[0]:
    wanted = struct.unpack_from("q", shared, 16)[0]
    if wanted != epoch:
        epoch, worst = wanted, 0
        struct.pack_into("q", shared, 8, 0)
        struct.pack_into("q", shared, 24, epoch)
    n += 1
    began = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO journal(txn, k, note) VALUES (?, ?, ?)",
        [(n, i, f"fill {n}/{i}") for i in range(k)],
    )
    for _ in range(k):
        conn.execute(
            "UPDATE trades SET price = price * ?, info = substr(info, 1, 240) || ? WHERE id = ?",
            (1 + rng.uniform(-1e-3, 1e-3), f',"tick":{n}}}', rng.randint(1, max_id)),
        )
    conn.execute("UPDATE counter SET n = ?", (n,))
    conn.execute("COMMIT")
    worst = max(worst, int((time.perf_counter() - began) * 1e6))
    struct.pack_into("qq", shared, 0, n, worst)
    if untimed_checkpoints and n % 100 == 0:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    if pause:
        time.sleep(pause)
conn.close()
"""


# -- the database ----------------------------------------------------------------------


def _trade(rng: random.Random, trade_id: int, opened: float, open_trade: bool) -> tuple[Any, ...]:
    pair = rng.choice(PAIRS)
    price = round(rng.uniform(0.2, 90_000), 6)
    amount = round(rng.uniform(0.001, 50), 8)
    open_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(opened))
    close_time = close_price = None
    status = "open"
    if not open_trade:
        close_time = time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(opened + rng.randint(60, 86_400))
        )
        close_price = round(price * rng.uniform(0.95, 1.05), 6)
        status = rng.choice(("closed", "closed", "closed", "cancelled"))
    info = json.dumps(
        {
            "strategy": rng.choice(("ema_cross", "rsi_revert", "breakout", "grid")),
            "order_id": f"{rng.getrandbits(64):016x}",
            "fee": round(amount * price * 0.001, 8),
            "tags": rng.sample(("dca", "manual", "trail", "hedge", "scalp", "swing"), 2),
            "stop_loss": round(price * 0.97, 6),
            "take_profit": round(price * 1.04, 6),
            "exchange": rng.choice(("kraken", "binance", "bitstamp")),
            "note": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=rng.randint(40, 120))),
        },
        separators=(",", ":"),
    )
    side = rng.choice(("buy", "sell"))
    return (trade_id, pair, side, price, amount, open_time, close_time, close_price, status, info)


def build_database(path: Path, size_bytes: int, rng: random.Random) -> int:
    """A WAL-mode trades database of about ``size_bytes``; returns the number of trades."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(
        """
        CREATE TABLE trades (
            id INTEGER PRIMARY KEY, pair TEXT NOT NULL, side TEXT NOT NULL,
            price REAL NOT NULL, amount REAL NOT NULL, open_time TEXT NOT NULL,
            close_time TEXT, close_price REAL, status TEXT NOT NULL, info TEXT NOT NULL);
        CREATE INDEX trades_pair_open ON trades(pair, open_time);
        CREATE INDEX trades_status ON trades(status);
        CREATE TABLE journal (txn INTEGER NOT NULL, k INTEGER NOT NULL, note TEXT);
        CREATE TABLE counter (n INTEGER NOT NULL);
        INSERT INTO counter VALUES (0);
        """
    )
    count = 0
    opened = 1_700_000_000.0
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < size_bytes:
        batch = []
        for _ in range(20_000):
            count += 1
            opened += rng.uniform(1, 30)
            batch.append(_trade(rng, count, opened, open_trade=False))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
    # The most recent trades are still open.
    conn.execute(
        "UPDATE trades SET status = 'open', close_time = NULL, close_price = NULL WHERE id > ?",
        (count - 2000,),
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return count


def change_recent(path: Path, rng: random.Random, new_trades: int = 700, closed: int = 300) -> None:
    """700 new (open) trades, 300 open trades closed: 1,000 rows near the end."""
    conn = sqlite3.connect(path, isolation_level=None)
    last_id, last_open = conn.execute("SELECT max(id), max(open_time) FROM trades").fetchone()
    opened = time.mktime(time.strptime(last_open, "%Y-%m-%d %H:%M:%S"))
    to_close = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM trades WHERE status = 'open' ORDER BY id LIMIT ?", (closed,)
        ).fetchall()
    ]
    conn.execute("BEGIN")
    new = []
    for offset in range(1, new_trades + 1):
        opened += rng.uniform(1, 30)
        new.append(_trade(rng, last_id + offset, opened, open_trade=True))
    conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new)
    conn.executemany(
        "UPDATE trades SET status = 'closed', close_time = ?, close_price = price * ?, "
        "info = info || ? WHERE id = ?",
        [
            ("2025-12-17 10:00:00", rng.uniform(0.95, 1.05), ',"exit":"roi"', trade)
            for trade in to_close
        ],
    )
    conn.execute("COMMIT")
    conn.close()


def change_few(path: Path, rng: random.Random) -> None:
    """One bot step: 5 new trades, 5 open trades closed."""
    change_recent(path, rng, new_trades=5, closed=5)


def change_scattered(path: Path, rng: random.Random) -> None:
    """1,000 random trades updated (amount and info), all over the table."""
    conn = sqlite3.connect(path, isolation_level=None)
    last_id = conn.execute("SELECT max(id) FROM trades").fetchone()[0]
    ids = rng.sample(range(1, last_id + 1), ROWS_CHANGED)
    conn.execute("BEGIN")
    conn.executemany(
        "UPDATE trades SET amount = amount * 0.999, info = substr(info, 1, 240) || ? WHERE id = ?",
        [(f',"fee_fix":{rng.random():.6f}}}', trade) for trade in ids],
    )
    conn.execute("COMMIT")
    conn.close()


# -- chunking --------------------------------------------------------------------------


def chunkers() -> dict[str, Splitter]:
    """The chunkers compared, by name."""
    cdc = Chunker(NEW_REPOSITORY_CHUNKER)
    found: dict[str, Splitter] = {"fastcdc 32K": cdc.split_stream}
    for block in (4096, 8192, 16384, 65536):
        found[f"fixed {block // 1024}K"] = lambda handle, size, block=block: split_fixed(
            handle, size, block
        )
    return found


@dataclass
class Cut:
    """One copy cut by one chunker."""

    ids: list[bytes]
    sizes: dict[bytes, int]


def cut(path: Path, splitter: Splitter) -> tuple[Cut, dict[bytes, bytes]]:
    """Chunk ids in order (and the chunks' bytes, by id, for compressing new ones later)."""
    ids: list[bytes] = []
    sizes: dict[bytes, int] = {}
    data: dict[bytes, bytes] = {}
    with open(path, "rb") as handle:
        for chunk in splitter(handle, path.stat().st_size):
            chunk_id = blake3.blake3(chunk).digest()
            ids.append(chunk_id)
            sizes[chunk_id] = len(chunk)
            data[chunk_id] = chunk
    return Cut(ids, sizes), data


@dataclass
class ChunkFigures:
    """New stored bytes of one backup, for one chunker and one change pattern."""

    chunker: str
    pattern: str
    chunks: int
    new_chunks: int
    new_raw: int
    new_stored: int
    lists: int
    lists_changed: int
    lists_stored: int
    manifest_refs_stored: int

    @property
    def total(self) -> int:
        return self.new_stored + self.lists_stored + self.manifest_refs_stored


def _lists(refs: list[ChunkRef]) -> list[list[ChunkRef]]:
    rest = refs[1:] if len(refs) > CHUNKS_PER_LIST else []  # head inline (repository.py)
    return [rest[i : i + CHUNKS_PER_LIST] for i in range(0, len(rest), CHUNKS_PER_LIST)]


def compare(
    name: str, pattern: str, before: Cut, after: Cut, data: dict[bytes, bytes]
) -> ChunkFigures:
    """What storing ``after`` costs when ``before`` is stored already."""
    compressor = zstandard.ZstdCompressor(level=3)
    stored: dict[bytes, int] = {}
    new_raw = 0
    for chunk_id in dict.fromkeys(after.ids):
        if chunk_id not in before.sizes:
            stored[chunk_id] = len(compressor.compress(data[chunk_id])) + BLOB_HEADER
            new_raw += after.sizes[chunk_id]

    def refs(cut_: Cut, stored_of: Callable[[bytes], int]) -> list[ChunkRef]:
        return [ChunkRef(i.hex(), cut_.sizes[i], stored_of(i)) for i in cut_.ids]

    # Stored sizes of old chunks are unknown here; any fixed value keeps old lists equal.
    old_lists = {encode_chunk_list(group) for group in _lists(refs(before, lambda _: 0))}
    new_lists = [
        encode_chunk_list(group) for group in _lists(refs(after, lambda i: stored.get(i, 0)))
    ]
    changed = [plain for plain in dict.fromkeys(new_lists) if plain not in old_lists]
    # Measure list blobs with their real stored sizes (ids are 64 hex chars).
    lists_stored = 0
    for plain in changed:
        lists_stored += len(compressor.compress(plain)) + BLOB_HEADER
    list_refs = [
        ListRef(blake3.blake3(plain).hexdigest(), CHUNKS_PER_LIST, len(plain), len(plain))
        for plain in new_lists
    ]
    # The entry's "lists" in the manifest (manifests are stored as plain JSON).
    manifest = msgspec.json.encode(list_refs)
    return ChunkFigures(
        chunker=name,
        pattern=pattern,
        chunks=len(after.ids),
        new_chunks=len(stored),
        new_raw=new_raw,
        new_stored=sum(stored.values()),
        lists=len(new_lists),
        lists_changed=len(changed),
        lists_stored=lists_stored,
        manifest_refs_stored=len(manifest),
    )


@dataclass
class FirstBackup:
    """The first backup of the database, for one chunker."""

    chunker: str
    chunks: int
    distinct: int
    stored: int


def first_backup(name: str, current: Cut, data: dict[bytes, bytes]) -> FirstBackup:
    """Chunks and stored bytes (zstd level 3 plus blob headers) of a first backup."""
    compressor = zstandard.ZstdCompressor(level=3)
    stored = sum(len(compressor.compress(chunk)) + BLOB_HEADER for chunk in data.values())
    return FirstBackup(name, len(current.ids), len(data), stored)


def measure_chunking(
    db: Path, work: Path, rng: random.Random
) -> tuple[list[FirstBackup], list[ChunkFigures]]:
    """Backups of the database before and after each change pattern, cut by each chunker."""
    splitters = chunkers()
    firsts: list[FirstBackup] = []
    figures: list[ChunkFigures] = []
    previous: dict[str, Cut] = {}
    for pattern, change in (
        ("base", None),
        ("recent", change_recent),
        ("scattered", change_scattered),
        ("few", change_few),
    ):
        if change is not None:
            change(db, rng)
        with capture_sqlite(db, temp_dir=work) as capture:
            for name, splitter in splitters.items():
                current, data = cut(capture.path, splitter)
                if name in previous:
                    figures.append(compare(name, pattern, previous[name], current, data))
                else:
                    firsts.append(first_backup(name, current, data))
                previous[name] = current
                del data
        print(f"  chunked the {pattern} copy", flush=True)
    return firsts, figures


# -- step size -------------------------------------------------------------------------


def measure_steps(db: Path, work: Path) -> list[dict[str, float]]:
    """Milliseconds per backup step (no writer), as the rollback-journal copy takes them."""
    rows = []
    for pages in (256, 1024, 4096, 16384):
        target_path = work / f"steps-{pages}.db"
        source = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, isolation_level=None)
        source.execute(f"PRAGMA cache_size=-{SOURCE_CACHE_KIB}")
        target = sqlite3.connect(target_path, isolation_level=None)
        target.execute("PRAGMA journal_mode=MEMORY")
        target.execute("PRAGMA synchronous=OFF")
        target.execute(f"PRAGMA cache_size=-{COPY_CACHE_KIB}")
        times: list[float] = []
        last = [time.perf_counter()]

        def progress(status: int, remaining: int, total: int, times=times, last=last) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        source.backup(target, pages=pages, progress=progress)
        target.close()
        source.close()
        target_path.unlink()
        rows.append(
            {
                "pages": pages,
                "mib": pages * 4096 / MIB,
                "steps": len(times),
                "median_ms": statistics.median(times) * 1000,
                "max_ms": max(times) * 1000,
            }
        )
    return rows


# -- live capture ----------------------------------------------------------------------


class Writer:
    """The writer process and its shared state (see :data:`WRITER`)."""

    def __init__(self, db: Path, state: Path, pause: float, autocheckpoint: int = 1000) -> None:
        state.write_bytes(bytes(64))
        with open(state, "r+b") as handle:
            self.shared = mmap.mmap(handle.fileno(), 64)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(db),
                str(state),
                str(pause),
                str(K),
                str(autocheckpoint),
            ]
        )
        self.epoch = 0
        deadline = time.monotonic() + 60
        while self._get(5) == 0 or self.last() < 3:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the writer did not start")
            time.sleep(0.005)

    def _get(self, slot: int) -> int:
        return int(struct.unpack_from("q", self.shared, slot * 8)[0])

    def last(self) -> int:
        return self._get(0)

    def new_epoch(self) -> None:
        """Reset the writer's worst commit time (waits until the writer took note)."""
        self.epoch += 1
        struct.pack_into("q", self.shared, 16, self.epoch)
        while self._get(3) != self.epoch:
            time.sleep(0.0005)

    def worst_ms(self) -> float:
        """The worst commit time since :meth:`new_epoch`, once the writer committed again
        (a commit held up by a copy counts when it completes)."""
        target = self.last() + 1
        while self.last() < target:
            time.sleep(0.0005)
        return self._get(1) / 1000

    def stop(self) -> None:
        struct.pack_into("q", self.shared, 32, 1)
        try:
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.shared.close()


def check_copy(path: Path, committed_before: int) -> str:
    """ "ok", "corrupt: ..." (integrity_check fails or the copy does not open) or "torn: ..."
    (partial or missing transactions, counter off)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            problems = conn.execute("PRAGMA integrity_check(1)").fetchall()
            if problems != [("ok",)]:
                return f"corrupt: {str(problems[0][0]).splitlines()[-1][:80]}"
            torn = conn.execute(
                "SELECT count(*) FROM (SELECT txn FROM journal GROUP BY txn HAVING count(*) != ?)",
                (K,),
            ).fetchone()[0]
            last, distinct = conn.execute(
                "SELECT coalesce(max(txn), 0), count(DISTINCT txn) FROM journal"
            ).fetchone()
            counter = conn.execute("SELECT n FROM counter").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"corrupt: {exc}"
    if torn:
        return f"torn: {torn} partial transactions"
    if distinct != last:
        return f"torn: {last - distinct} transactions missing"
    if counter != last:
        return f"torn: counter {counter}, last transaction {last}"
    if last < committed_before:
        return f"torn: lacks committed transactions {last + 1}-{committed_before}"
    return "ok"


def plain_read(db: Path, into: Path) -> Path:
    """Copy the database's files as a file backup reads them (streaming, one after another)."""
    into.mkdir()
    for suffix in ("", "-wal", "-journal"):
        source = Path(f"{db}{suffix}")
        try:
            shutil.copyfile(source, into / f"restored.db{suffix}")
        except FileNotFoundError:
            continue
    return into / "restored.db"


@dataclass
class Runs:
    """The rounds of one copy method."""

    seconds: list[float] = field(default_factory=list)
    worst_ms: list[float] = field(default_factory=list)  # the writer's worst commit
    results: list[str] = field(default_factory=list)  # check_copy's verdicts
    commits: list[int] = field(default_factory=list)  # the writer's commits during the copy
    steps: list[int] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)


@dataclass
class LiveFigures:
    """One journal mode and writer rate: plain reads against captures (WAL: one-step and
    paced copies, each round in alternating order)."""

    mode: str
    writer: str
    rounds: int
    autocheckpoint: int
    runs: dict[str, Runs] = field(default_factory=dict)  # by method
    idle_worst_ms: float = 0.0
    commits_per_s: float = 0.0
    quick_check_s: float = 0.0
    peak_mib: float | None = None


#: WAL copies compared: the whole copy in one step, and paced (steps of 4 MiB under the
#: held read snapshot, the copy flushed to disk every ``WAL_SYNC_BYTES``).
WAL_METHODS = {"one step": 0, "paced": 4 * MIB}


@contextmanager
def wal_copy(step_bytes: int | None) -> Iterator[None]:
    """Captures inside the block copy WAL databases in steps of ``step_bytes`` (0: one step;
    None: as ``sqlite_source`` is configured)."""
    saved = sqlite_source.WAL_STEP_BYTES
    if step_bytes is not None:
        sqlite_source.WAL_STEP_BYTES = step_bytes
    try:
        yield
    finally:
        sqlite_source.WAL_STEP_BYTES = saved


def capture_method(step_bytes: int | None) -> str:
    """The method's name, marked "(default)" when it is what ``capture_sqlite`` does."""
    if step_bytes is None:
        return "capture"
    default = (step_bytes > 0) == (sqlite_source.WAL_STEP_BYTES > 0)
    name = next(name for name, value in WAL_METHODS.items() if value == step_bytes)
    return f"{name} (default)" if default else name


def measure_live(
    db: Path,
    work: Path,
    mode: str,
    pause: float,
    rounds: int,
    *,
    autocheckpoint: int = 1000,
    memory: bool = False,
) -> LiveFigures:
    """``rounds`` plain reads and captures of ``db`` in ``mode`` while the writer commits
    (``pause`` seconds between commits; the writer's ``wal_autocheckpoint``)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # Nothing left for the writer's first sync to flush (the database was built unsynced).
    os.sync()
    rate = "full speed" if not pause else f"{1 / pause:.0f}/s"
    figures = LiveFigures(mode, rate, rounds, autocheckpoint)
    methods: list[int | None] = list(WAL_METHODS.values()) if mode == "wal" else [None]
    plain = figures.runs["plain"] = Runs()
    for step_bytes in methods:
        figures.runs[capture_method(step_bytes)] = Runs()
    writer = Writer(db, work / "writer-state", pause, autocheckpoint)
    try:
        began, first = time.monotonic(), writer.last()
        for round_ in range(rounds):
            before = writer.last()
            writer.new_epoch()
            started = time.perf_counter()
            restored = plain_read(db, work / f"plain-{round_}")
            plain.seconds.append(time.perf_counter() - started)
            plain.commits.append(writer.last() - before)
            plain.worst_ms.append(writer.worst_ms())
            plain.results.append(check_copy(restored, before))
            shutil.rmtree(restored.parent)
            order = methods if round_ % 2 == 0 else methods[::-1]
            for step_bytes in order:
                runs = figures.runs[capture_method(step_bytes)]
                time.sleep(0.2)
                before = writer.last()
                writer.new_epoch()
                started = time.perf_counter()
                with wal_copy(step_bytes), capture_sqlite(db, temp_dir=work) as capture:
                    runs.seconds.append(time.perf_counter() - started)
                    runs.commits.append(writer.last() - before)
                    runs.worst_ms.append(writer.worst_ms())
                    runs.results.append(check_copy(capture.path, before))
                    runs.steps.append(capture.steps)
                    runs.restarts.append(capture.restarts)
                    if round_ == 0 and step_bytes == methods[0]:
                        figures.quick_check_s = time_quick_check(capture.path)
            outcomes = [
                f"{name} {runs.results[-1]}"
                + (f" ({runs.steps[-1]} steps, {runs.restarts[-1]} restarts)" if runs.steps else "")
                for name, runs in figures.runs.items()
            ]
            print(
                f"  {mode} {figures.writer}: round {round_ + 1}/{rounds} " + "; ".join(outcomes),
                flush=True,
            )
        figures.commits_per_s = (writer.last() - first) / (time.monotonic() - began)
        # The writer alone, for as long as a capture took.
        time.sleep(0.3)
        writer.new_epoch()
        time.sleep(max(max(runs.seconds) for runs in figures.runs.values()))
        figures.idle_worst_ms = writer.worst_ms()
        if memory:
            figures.peak_mib = measure_memory(db)
    finally:
        writer.stop()
    return figures


def time_quick_check(path: Path) -> float:
    """Seconds ``PRAGMA quick_check`` takes on a copy (part of every capture)."""
    conn = sqlite3.connect(path)
    started = time.perf_counter()
    conn.execute("PRAGMA quick_check").fetchall()
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def measure_memory(db: Path) -> float:
    """Peak RSS of one capture above the child's baseline (MiB)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.sqlite_live", "--memory-child", str(db)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return float(json.loads(result.stdout)["above_baseline_mib"])


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise KeyError(field_name)


def memory_child(db: Path) -> None:
    """In a child process: capture once, print the peak RSS above the baseline (JSON).

    Linux: the peak (VmHWM) is reset to the current RSS first (``clear_refs``), so the
    imports' own peak does not hide the capture's; elsewhere ``ru_maxrss`` before and after.
    """
    try:
        baseline = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")

        def peak() -> int:
            return _status_kib("VmHWM")

    except OSError:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def peak() -> int:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with capture_sqlite(db) as capture:
        size = capture.size
    print(json.dumps({"above_baseline_mib": (peak() - baseline) / 1024, "size": size}))


# -- report ----------------------------------------------------------------------------


def print_first(firsts: list[FirstBackup]) -> None:
    print("\nFirst backup of the captured copy (MB = 10^6 bytes)")
    print(f"{'chunker':<12} {'chunks':>7} {'stored MB':>10}")
    for f in firsts:
        print(f"{f.chunker:<12} {f.chunks:>7} {f.stored / MB:>10.1f}")


def print_chunking(figures: list[ChunkFigures]) -> None:
    print(
        "\nOne backup after changing 1,000 rows (recent, scattered) or 10 rows (few): new"
        " stored bytes (KB = 1000 bytes; manifest: the entry's list refs, plain JSON)"
    )
    print(
        f"{'pattern':<10} {'chunker':<12} {'chunks':>7} {'new':>6} {'new raw KB':>11} "
        f"{'chunks KB':>10} {'lists chg':>10} {'lists KB':>9} {'manifest KB':>12} "
        f"{'total KB':>9}"
    )
    for f in figures:
        print(
            f"{f.pattern:<10} {f.chunker:<12} {f.chunks:>7} {f.new_chunks:>6} "
            f"{f.new_raw / 1000:>11.0f} {f.new_stored / 1000:>10.0f} "
            f"{f.lists_changed:>4}/{f.lists:<5} {f.lists_stored / 1000:>9.0f} "
            f"{f.manifest_refs_stored / 1000:>12.1f} {f.total / 1000:>9.0f}"
        )


def print_steps(rows: list[dict[str, float]]) -> None:
    print("\nBackup step time (no writer; the writer waits for at most one step)")
    print(f"{'pages':>6} {'MiB':>5} {'steps':>6} {'median ms':>10} {'max ms':>7}")
    for row in rows:
        print(
            f"{row['pages']:>6.0f} {row['mib']:>5.0f} {row['steps']:>6.0f} "
            f"{row['median_ms']:>10.1f} {row['max_ms']:>7.1f}"
        )


def _writer(figures: LiveFigures) -> str:
    if figures.mode != "wal":
        return figures.writer
    if figures.autocheckpoint <= 0:
        return f"{figures.writer}, ckpt untimed"
    return f"{figures.writer}, autockpt"


def _count(results: list[str], kind: str) -> int:
    return sum(result.startswith(kind) for result in results)


def print_live(size_mb: float, figures: list[LiveFigures]) -> None:
    print(f"\nLive copies of the {size_mb:.0f} MB database while a writer commits")
    print(
        f"{'mode':<7} {'writer':<22} {'commits/s':>9} {'method':<18} {'median s':>8} "
        f"{'max s':>6} {'worst commit ms':>16} {'median':>7} {'commits':>8} {'corrupt':>8} "
        f"{'torn':>5} {'steps':>6} {'restarts':>8} {'peak MiB':>8}"
    )
    for f in figures:
        for method, runs in f.runs.items():
            ours = method != "plain"
            peak = f"{f.peak_mib:.1f}" if ours and f.peak_mib is not None else ""
            print(
                f"{f.mode:<7} {_writer(f):<22} {f.commits_per_s:>9.0f} {method:<18} "
                f"{statistics.median(runs.seconds):>8.2f} {max(runs.seconds):>6.2f} "
                f"{max(runs.worst_ms):>16.1f} {statistics.median(runs.worst_ms):>7.1f} "
                f"{statistics.median(runs.commits):>8.0f} "
                f"{_count(runs.results, 'corrupt'):>4}/{len(runs.results):<3} "
                f"{_count(runs.results, 'torn'):>5} "
                f"{max(runs.steps) if ours else '':>6} {max(runs.restarts) if ours else '':>8} "
                f"{peak if method.startswith(('capture', 'one step')) else '':>8}"
            )
        print(f"{'':<7} {'':<22} {'':>9} {'idle':<18} {'':>8} {'':>6} {f.idle_worst_ms:>16.1f}")
    checks = ", ".join(f"{f.mode} {f.quick_check_s:.2f} s" for f in figures)
    print(
        "(worst commit: the worst of the rounds, median: of the rounds' worst; commits: median"
        f" commits during a copy; capture times include the copy's quick_check: {checks})"
    )


def run(size_mb: int, rounds: int, work: Path) -> dict[str, Any]:
    """Build the database below ``work`` and take every measurement."""
    rng = random.Random(SEED)
    db = work / "trades.db"
    started = time.perf_counter()
    print(f"building a {size_mb} MB trades database in {db} ...", flush=True)
    trades = build_database(db, size_mb * MB, rng)
    print(
        f"  {trades} trades, {db.stat().st_size / MB:.0f} MB in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    firsts, chunk_figures = measure_chunking(db, work, rng)
    steps = measure_steps(db, work)
    live = [
        measure_live(db, work, "wal", 0.0, rounds, memory=True),
        # The same writer checkpointing outside its timed transactions: what remains is
        # waiting for locks (there is none to wait for in WAL mode).
        measure_live(db, work, "wal", 0.0, rounds, autocheckpoint=0),
        measure_live(db, work, "wal", 0.02, rounds),
        measure_live(db, work, "delete", 0.02, rounds, memory=True),
        measure_live(db, work, "delete", 0.0, rounds),
    ]
    print_first(firsts)
    print_chunking(chunk_figures)
    print_steps(steps)
    print_live(db.stat().st_size / MB, live)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return {
        "size_mb": db.stat().st_size / MB,
        "trades": trades,
        "first_backup": [asdict(f) for f in firsts],
        "chunking": [{**asdict(f), "total": f.total} for f in chunk_figures],
        "steps": steps,
        "live": [asdict(f) for f in live],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run (or, with ``--memory-child``, measure one capture)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="database size (default 200)")
    parser.add_argument(
        "--rounds", type=int, default=8, help="live copies per method and writer (default 8)"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.size_mb < 1 or args.rounds < 1:
        parser.error("--size-mb and --rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="peak-sqlite-bench-", dir="/tmp"))
    try:
        figures = run(args.size_mb, args.rounds, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
