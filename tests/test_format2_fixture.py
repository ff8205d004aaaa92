"""Known-answer test: repositories written by today's format (manifest format 2) stay readable.

``tests/data/format2/`` is frozen test data made by ``tools/make_format2_fixture.py`` from a
clean export of one commit (``expected.json`` names it): a plain zstd repository and a
``chacha20-poly1305`` one (the format-1 fixture covers ``aes-256-gcm``), with the same backups:

1. ``manual``: every file-system kind of manifest format 2 (files with modes and nanosecond
   mtimes, an empty file, an empty directory, directories with their own modes, a symbolic
   link and a dangling one, a hard link, a SQLite database captured through its backup API, a
   file over 64 KiB cut by content) and the values of :func:`backup_values` ``"files"``: every
   non-numpy type of the value codec, and ``history``, stored through chunk-list blobs.
2. ``pre_trade``: values only, so its manifest is format 1 (the writer picks the lowest).
3. ``science``: numpy and pandas values (ext codes 17-21), format 1.
4. ``automatic``: the ``ledger`` value, committed in the state a concurrent prune leaves
   behind: its parent (a ``scratch`` backup) was deleted while it ran, a prune collected the
   parent's chunks (and chunk lists) into ``fossils/`` with a pending record in ``gc/``, and
   the backup reused them anyway, as its lease allows. Readers must find them in ``fossils/``.

The expected values and files are written out here, not derived from the code under test;
``expected.json`` holds what only the generator could know (ids, the stored bytes' hashes, the
database copy's hash, which chunks are fossils). Every test works on a copy in ``tmp_path``.
"""

from __future__ import annotations

import collections
import hashlib
import http
import json
import math
import os
import random
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_format_compat import assert_same

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.app.recovery import RecoveryManager

DATA_DIR = Path(__file__).resolve().parent / "data"
FIXTURE_DIR = DATA_DIR / "format2"
PASSPHRASE = "format-2 fixture passphrase: not a secret"
REPOSITORIES = {"plain": "none", "encrypted": "chacha20-poly1305"}
SOURCE_DIR = "state"

# -- the values ------------------------------------------------------------------------------


def _trades(count: int, seed: int) -> list[dict[str, Any]]:
    """A deterministic trade history (native types plus Decimal and datetime)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
    price = 95_000.0
    trades = []
    for i in range(count):
        price = round(price * (1 + rng.uniform(-0.002, 0.002)), 2)
        trades.append(
            {
                "id": i,
                "time": start + timedelta(seconds=13 * i),
                "symbol": ("BTC/USD", "ETH/USD", "SOL/USD")[i % 3],
                "side": "buy" if rng.random() < 0.5 else "sell",
                "size": Decimal(f"0.{rng.randrange(1, 9999):04d}"),
                "price": price,
            }
        )
    return trades


def everything() -> dict[str, Any]:
    """Every type of the value codec except numpy and pandas, nested."""
    return {
        "none": None,
        "bools": [True, False],
        "ints": [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "big_ints": [2**64, -(2**63) - 1, 10**40, -(7**90)],
        "floats": [0.0, -0.0, 1.5, -2.25e-308, 5e-324, 1.7976931348623157e308],
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "str": "grüße, 日本, \U0001f680, a \x00 inside",
        "bytes": bytes(range(256)),
        "empty_bytes": b"",
        "list": [1, "two", [3.0, [None]], {"four": 4}],
        "tuple": (1, ("nested", ()), [2, (3,)]),
        "set": {1, 2, 3},
        "str_set": {"buy", "sell"},
        "frozenset": frozenset({"a", "b", 7}),
        "empty_set": set(),
        "dict_int_keys": {1: "one", 2: "two", -3: "minus three"},
        "dict_mixed_keys": {
            (1, 2): "tuple key",
            None: "none key",
            1.5: "float key",
            b"raw": "bytes key",
            "s": "str key",
            date(2026, 1, 2): "date key",
            frozenset({1}): {"nested": {3: (4,)}},
        },
        "ordered": collections.OrderedDict([("z", 1), ("a", 2), ("m", (3,))]),
        "datetime_naive": datetime(2026, 1, 5, 21, 40, 30, 123456),
        "datetime_fold": datetime(2026, 10, 25, 2, 30, fold=1),
        "datetime_utc": datetime(2026, 1, 5, 21, 40, 30, 1, tzinfo=timezone.utc),
        "datetime_offset": datetime(2026, 1, 5, 21, 40, tzinfo=timezone(timedelta(hours=-5))),
        "datetime_named_tz": datetime(
            2026, 6, 1, tzinfo=timezone(timedelta(hours=5, minutes=30), "IST")
        ),
        "datetime_zoneinfo": datetime(
            2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin")
        ),
        "date": date(2026, 1, 5),
        "date_min": date(1, 1, 1),
        "time": time(9, 30, 0, 250000),
        "time_aware": time(23, 59, 59, 999999, tzinfo=timezone(timedelta(minutes=-90))),
        "timedelta": timedelta(days=-3, seconds=5, microseconds=7),
        "timedelta_big": timedelta(days=999_999_999, hours=23),
        "decimals": [
            Decimal("0.1"),
            Decimal("-0.00"),
            Decimal("1E+20"),
            Decimal("123456789012345678901234567890.123456789"),
            Decimal("NaN"),
            Decimal("-Infinity"),
        ],
        "uuid": uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
        "enum": http.HTTPStatus.TOO_MANY_REQUESTS,
        "paths": [
            PurePosixPath("/var/lib/peak/state.json"),
            PosixPath("relative/dir"),
            PureWindowsPath("C:\\Users\\trader\\bot.toml"),
        ],
        "complex": complex(1.5, -2.0),
        "fraction": Fraction(-355, 113),
    }


def science() -> dict[str, Any]:
    """numpy and pandas values (ext codes 17-21). Text is kept out of DataFrame columns and
    MultiIndex levels: pandas 3 turns object arrays of str there into its ``str`` dtype when
    they are decoded (whose storage also depends on whether pyarrow is installed); an object
    Series and an object Index keep their dtype."""
    import numpy as np
    import pandas as pd

    times = pd.date_range("2026-01-05 09:30", periods=4, freq="15min", name="time")
    frame = pd.DataFrame(
        {
            "price": [95000.5, 95001.0, np.nan, 94999.25],
            "qty": pd.array([1, None, 3, 2], dtype="Int64"),
            "filled": pd.array([True, None, False, True], dtype="boolean"),
            "at": pd.date_range("2026-01-05 09:30", periods=4, freq="15min", tz="Europe/Berlin"),
        },
        index=times,
    )
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    pnl_index = pd.MultiIndex.from_arrays(
        [np.array([1, 1, 2]), np.array([0.5, 1.5, 0.5])], names=["venue", "leg"]
    )
    return {
        "matrix": np.arange(12, dtype="<f8").reshape(3, 4) / 7,
        "flags": np.array([True, False, True]),
        "small_ints": np.array([[-1, 2], [3, -4]], dtype=">i2"),
        "days": np.array(["2026-01-05", "2026-01-06"], dtype="datetime64[D]"),
        "empty": np.zeros((2, 0)),
        "scalars": [
            np.float32(1.5),
            np.int64(-7),
            np.datetime64("2026-01-05T09:30:00.123456789", "ns"),
            np.str_("abc"),
            np.bool_(True),
        ],
        "frame": frame,
        "pnl": pd.Series([1.0, 2.0, 3.0], index=pnl_index, name="pnl"),
        "sides": pd.Series(["buy", "sell"], dtype=object, name="side"),
        "symbols": pd.Index(["BTC/USD", "ETH/USD"], dtype=object, name="symbol"),
        "ids": pd.Index([10, 20, 30], dtype="int64", name="id"),
        "range": pd.RangeIndex(0, 10, 2, name="r"),
    }


def backup_values(name: str) -> dict[str, Any]:
    """The data of the fixture's backup ``name``: ``files`` (the ``manual`` backup),
    ``pre_trade``, ``science`` or ``ledger`` (the ``scratch`` and ``automatic`` backups)."""
    if name == "files":
        return {
            "everything": everything(),
            "portfolio": {
                "equity": Decimal("10000.00"),
                "positions": [
                    {
                        "symbol": "BTC/USD",
                        "size": Decimal("0.1"),
                        "opened_at": datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc),
                        "tags": {"swing"},
                    }
                ],
            },
            "history": _trades(2000, 20260105),
        }
    if name == "pre_trade":
        return {
            "portfolio": {"equity": Decimal("10001.50"), "cash": 4999.0, "positions": []},
            "config": {"strategy": "ma_crossover", "risk_per_trade": 0.01, "window": (10, 30)},
        }
    if name == "science":
        return science()
    assert name == "ledger"
    return {"ledger": _trades(2000, 20260106)}


# -- the source tree of the ``manual`` backup --------------------------------------------------


def ticks_csv() -> bytes:
    """~120 KB of CSV ticks: above 64 KiB, so the file is cut by content (several chunks)."""
    rng = random.Random(7)
    price, moment, lines = 95_000.0, 1_767_600_000_000, ["time_ms,symbol,side,price,qty\n"]
    for _ in range(3000):
        if rng.random() < 0.3:
            price = round(price + rng.choice((-0.5, 0.5, -1.0, 1.0)), 1)
        moment += 250 if rng.random() < 0.8 else 1000
        side = "buy" if rng.random() < 0.5 else "sell"
        lines.append(f"{moment},BTC/USD,{side},{price:.1f},{rng.choice((1, 1, 2, 5))}\n")
    return "".join(lines).encode()


#: name -> (mode, mtime_ns); directories get their mtime after everything below them exists.
DIRS: dict[str, tuple[int, int]] = {
    "state": (0o755, 1_767_600_000_000_000_000),
    "state/empty-dir": (0o700, 1_767_600_001_000_000_001),
    "state/history": (0o750, 1_767_600_002_000_000_002),
    "state/notes": (0o755, 1_767_600_003_000_000_003),
    "state/strategy": (0o750, 1_767_600_004_000_000_004),
}
#: name -> (content, mode, mtime_ns)
FILES: dict[str, tuple[bytes, int, int]] = {
    "state/config.toml": (
        b'[bot]\nname = "alpha"\nrisk = 0.01\n',
        0o644,
        1_767_600_010_000_000_000,
    ),
    "state/empty.txt": (b"", 0o640, 1_600_000_000_000_000_000),
    "state/run.sh": (b"#!/bin/sh\nexec python -m bot\n", 0o755, 1_700_000_000_500_000_000),
    "state/notes/übersicht.md": (
        "# Übersicht\n\nrisk lowered\n".encode(),
        0o604,
        1_767_600_011_999_999_999,
    ),
    "state/strategy/params.json": (b'{"fast": 10, "slow": 30}', 0o600, 1_767_600_012_123_456_789),
    "state/history/ticks.csv": (ticks_csv(), 0o644, 1_767_600_013_000_000_001),
}
#: a second name of ``state/strategy/params.json`` (the first name in order keeps the content)
HARDLINKS: dict[str, str] = {"state/strategy/params.previous.json": "state/strategy/params.json"}
#: name -> (link text, mtime_ns of the link itself)
SYMLINKS: dict[str, tuple[str, int]] = {
    "state/current-params": ("strategy/params.json", 1_767_600_020_000_000_000),
    "state/missing-link": ("../no/such/file", 1_767_600_021_000_000_000),
}
DATABASE = "state/bot.db"
DATABASE_MODE, DATABASE_MTIME = 0o640, 1_767_600_030_000_000_000
DATABASE_ROWS = [(i, ("BTC/USD", "ETH/USD")[i % 2], 95_000.0 + i / 4) for i in range(200)]


def make_database(path: Path) -> None:
    """The SQLite source: a table of fills in a rollback-journal database."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, price REAL)")
        connection.executemany("INSERT INTO fills VALUES (?, ?, ?)", DATABASE_ROWS)
        connection.commit()
    finally:
        connection.close()


def make_source_tree(base: Path) -> None:
    """Write the ``manual`` backup's sources below ``base`` (the generator's ``base_dir``)."""
    for name in DIRS:
        (base / name).mkdir(parents=True, exist_ok=True)
    for name, (content, mode, mtime_ns) in FILES.items():
        path = base / name
        path.write_bytes(content)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    for name, primary in HARDLINKS.items():
        os.link(base / primary, base / name)
    make_database(base / DATABASE)
    os.chmod(base / DATABASE, DATABASE_MODE)
    os.utime(base / DATABASE, ns=(DATABASE_MTIME, DATABASE_MTIME))
    for name, (target, mtime_ns) in SYMLINKS.items():
        os.symlink(target, base / name)
        os.utime(base / name, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    for name in sorted(DIRS, key=lambda n: n.count("/"), reverse=True):
        mode, mtime_ns = DIRS[name]
        os.chmod(base / name, mode)
        os.utime(base / name, ns=(mtime_ns, mtime_ns))


# -- the tests -------------------------------------------------------------------------------

EXPECTED: dict[str, Any] = (
    json.loads((FIXTURE_DIR / "expected.json").read_text())
    if (FIXTURE_DIR / "expected.json").exists()
    else {"repositories": {}}
)


@pytest.fixture(params=sorted(REPOSITORIES))
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(name, a fresh copy of that fixture repository in ``tmp_path``), for tests that write."""
    name: str = request.param
    copy = tmp_path / f"format2-{name}"
    shutil.copytree(FIXTURE_DIR / name, copy)
    yield name, copy


@pytest.fixture(scope="module", params=sorted(REPOSITORIES))
def shared_repo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """(name, one copy of that fixture repository per module), for tests that only read
    (verifying records its run history in the copy, which no test looks at)."""
    name: str = request.param
    copy = tmp_path_factory.mktemp("format2") / name
    shutil.copytree(FIXTURE_DIR / name, copy)
    yield name, copy


def _manager(name: str, path: Path, **config: Any) -> BackupManager:
    encrypted = REPOSITORIES[name] != "none"
    config.setdefault("retention_days", 0)
    config.setdefault("auto_prune", False)
    return BackupManager(
        BackupConfig(backup_path=path, **config), passphrase=PASSPHRASE if encrypted else None
    )


def _backups(name: str) -> dict[str, dict[str, Any]]:
    """Backup type -> what the generator recorded of it."""
    backups: list[dict[str, Any]] = EXPECTED["repositories"][name]["backups"]
    return {backup["type"]: backup for backup in backups}


def _has_science() -> bool:
    try:
        import numpy  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_fixture_is_complete() -> None:
    assert EXPECTED["format"] == 2, "run tools/make_format2_fixture.py"
    assert set(EXPECTED["repositories"]) == set(REPOSITORIES)
    for name, encryption in REPOSITORIES.items():
        repository = EXPECTED["repositories"][name]
        assert repository["encryption"] == encryption
        repo_json = json.loads((FIXTURE_DIR / name / "repo.json").read_text())
        assert (repo_json["encryption"] or {}).get("aead", "none") == encryption
        backups = _backups(name)
        assert set(backups) == {"manual", "pre_trade", "science", "automatic"}
        assert {t: b["format"] for t, b in backups.items()} == {
            "manual": 2,
            "pre_trade": 1,
            "science": 1,
            "automatic": 1,
        }
        for backup in backups.values():
            assert (FIXTURE_DIR / name / "snapshots" / f"{backup['id']}.json").is_file()
        assert backups["manual"]["chunk_lists"]["history"] >= 2
        assert backups["automatic"]["chunk_lists"]["ledger"] >= 2
        assert backups["automatic"]["parent_deleted"]
        fossils = repository["fossils"]
        assert fossils, "the fixture must hold chunks of a pending collection"
        for cid in fossils:
            assert (FIXTURE_DIR / name / "fossils" / cid[:2] / cid).is_file()
            assert not (FIXTURE_DIR / name / "chunks" / cid[:2] / cid).exists()
        (record,) = (FIXTURE_DIR / name / "gc").iterdir()
        assert sorted(json.loads(record.read_text())["fossils"]) == sorted(fossils)
    assert not list(FIXTURE_DIR.rglob(".tmp-*"))
    assert not list(FIXTURE_DIR.rglob("status"))


def test_lists_the_backups(shared_repo: tuple[str, Path]) -> None:
    name, path = shared_repo
    infos = _manager(name, path).list_backups()
    assert {info.backup_id: info.backup_type for info in infos} == {
        backup["id"]: kind for kind, backup in _backups(name).items()
    }


def test_loads_the_same_values(shared_repo: tuple[str, Path]) -> None:
    name, path = shared_repo
    manager = _manager(name, path)
    repository = manager.repository
    for kind, backup in _backups(name).items():
        if kind == "science" and not _has_science():
            continue  # decoding ext codes 17-21 needs numpy and pandas
        loaded = manager.load_backup(backup["id"])
        assert_same(loaded, backup_values(backup["values"]), backup["id"])
        manifest = repository.read_manifest(backup["id"])
        payloads = {
            entry.name: hashlib.sha256(repository.read_entry(entry)).hexdigest()
            for entry in manifest.entries
            if entry.kind == "data"
        }
        assert payloads == backup["data_sha256"], backup["id"]


def _lstat_facts(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_mtime_ns


def test_restores_every_file_system_kind(shared_repo: tuple[str, Path], tmp_path: Path) -> None:
    name, path = shared_repo
    backup = _backups(name)["manual"]
    target = tmp_path / "restored"
    result = RecoveryManager(_manager(name, path)).restore_to_directory(
        backup["id"], target, verify=True
    )
    assert result.verified
    found = {p.relative_to(target).as_posix() for p in target.rglob("*")}
    data_files = {f"{key}.json" for key in backup["data_sha256"]}
    assert found == set(DIRS) | set(FILES) | set(HARDLINKS) | set(SYMLINKS) | {DATABASE} | (
        data_files
    ) | {"RESTORED_FROM"}
    for entry_name, (mode, mtime_ns) in DIRS.items():
        assert (target / entry_name).is_dir() and not (target / entry_name).is_symlink()
        assert _lstat_facts(target / entry_name) == (mode, mtime_ns), entry_name
    assert not any((target / "state/empty-dir").iterdir())
    for entry_name, (content, mode, mtime_ns) in FILES.items():
        assert (target / entry_name).read_bytes() == content, entry_name
        assert _lstat_facts(target / entry_name) == (mode, mtime_ns), entry_name
    for entry_name, primary in HARDLINKS.items():
        assert (target / entry_name).stat().st_ino == (target / primary).stat().st_ino
        assert (target / primary).stat().st_nlink == 2
    for entry_name, (link_text, mtime_ns) in SYMLINKS.items():
        assert (target / entry_name).is_symlink(), entry_name
        assert os.readlink(target / entry_name) == link_text
        assert (target / entry_name).lstat().st_mtime_ns == mtime_ns, entry_name
    database = target / DATABASE
    assert hashlib.sha256(database.read_bytes()).hexdigest() == backup["database_sha256"]
    assert _lstat_facts(database) == (DATABASE_MODE, DATABASE_MTIME)
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT id, symbol, price FROM fills ORDER BY id").fetchall()
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    assert rows == DATABASE_ROWS


def test_manifests_hold_the_recorded_entries(shared_repo: tuple[str, Path]) -> None:
    """The ``manual`` manifest's entries, kinds and attributes are as written out here."""
    name, path = shared_repo
    manifest = _manager(name, path).repository.read_manifest(_backups(name)["manual"]["id"])
    entries = {entry.name: entry for entry in manifest.entries}
    assert {n for n, e in entries.items() if e.kind == "dir"} == set(DIRS)
    assert {n for n, e in entries.items() if e.kind == "symlink"} == set(SYMLINKS)
    assert {n: e.target for n, e in entries.items() if e.kind == "hardlink"} == HARDLINKS
    assert entries[DATABASE].origin == "sqlite"
    assert len(entries["state/history/ticks.csv"].chunks) > 1  # cut by content
    assert entries["history"].lists and entries["history"].kind == "data"
    assert not manifest.warnings


def test_verifies_and_checks_clean(shared_repo: tuple[str, Path]) -> None:
    name, path = shared_repo
    manager = _manager(name, path)
    recovery = RecoveryManager(manager)
    for kind, backup in _backups(name).items():
        assert recovery.verify_backup(backup["id"]), backup["id"]
        decode = kind != "science" or _has_science()
        assert recovery.verify_backup(backup["id"], decode=decode), backup["id"]
    report = manager.check()
    assert report.clean, report.to_json()
    assert report.fossils == len(EXPECTED["repositories"][name]["fossils"])
    assert report.orphaned_chunks == 0


def test_a_new_backup_joins_the_repository(repo: tuple[str, Path], tmp_path: Path) -> None:
    """A backup made now restores; it shares old chunks, but never reuses a chunk of the
    pending collection without finding it in ``chunks/``; the old backups stay intact."""
    name, path = repo
    backups = _backups(name)
    base = tmp_path / "bot"
    base.mkdir()
    RecoveryManager(_manager(name, path)).restore_to_directory(backups["manual"]["id"], base)
    for data_file in base.glob("*.json"):
        data_file.unlink()
    with (base / "state/history/ticks.csv").open("ab") as handle:
        handle.write(b"1767700000000,BTC/USD,buy,95100.0,3\n")
    manager = _manager(name, path, sources=[SOURCE_DIR], base_dir=base)
    values = backup_values("files") | backup_values("ledger")
    values["new"] = {"after": "format 2", "when": datetime(2026, 12, 4, 12, 0)}
    new_id = manager.create_backup(values, "manual")
    info = manager.get_backup_info(new_id)
    assert info.added_bytes < info.size_bytes / 2, "the new backup should share old chunks"
    repository = manager.repository
    manifest = repository.read_manifest(new_id)
    for entry in manifest.entries:
        ids = [lref.id for lref in entry.lists] + [ref.id for ref in repository.entry_refs(entry)]
        for cid in ids:
            assert repository.store.exists(f"chunks/{cid[:2]}/{cid}"), entry.name

    reader = _manager(name, path)
    recovery = RecoveryManager(reader)
    assert_same(reader.load_backup(new_id), values, new_id)
    target = tmp_path / "restored-new"
    assert recovery.restore_to_directory(new_id, target, verify=True).verified
    assert (target / DATABASE).read_bytes() == (base / DATABASE).read_bytes()
    for backup in backups.values():
        assert recovery.verify_backup(backup["id"])
    assert {i.backup_id for i in reader.list_backups()} == {b["id"] for b in backups.values()} | {
        new_id
    }


def test_prune_finishes_the_pending_collection(repo: tuple[str, Path]) -> None:
    """With no grace period and no lease holding it, the frozen collection is completed:
    prune brings the fossils the ``automatic`` backup references back into ``chunks/``."""
    name, path = repo
    fossils = EXPECTED["repositories"][name]["fossils"]
    manager = _manager(name, path)
    report = manager.prune(grace=timedelta(0))
    assert report.resurrected == len(fossils)
    assert report.deleted == 0
    assert not [p for p in (path / "fossils").rglob("*") if p.is_file()]
    assert not (path / "gc").exists() or not any((path / "gc").iterdir())
    for cid in fossils:
        assert (path / "chunks" / cid[:2] / cid).is_file()
    reader = _manager(name, path)
    automatic = _backups(name)["automatic"]
    assert RecoveryManager(reader).verify_backup(automatic["id"], decode=True)
    assert_same(reader.load_backup(automatic["id"]), backup_values("ledger"))
    assert reader.check().clean
