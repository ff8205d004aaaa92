"""Generate the frozen format-1 repositories under ``tests/data/format1/``.

**Run against commit ad996b9 only; the fixture is frozen.** It captures the repository format
as written before manifests gained new entry kinds, so ``tests/test_format_compat.py`` can
prove that newer code still reads it. Never regenerate it with newer code (that would test
nothing); if it must ever be rebuilt, do it from that commit in a separate checkout::

    git worktree add /tmp/format1-src ad996b9
    PYTHONPATH=/tmp/format1-src .venv/bin/python tests/data/make_format1_fixture.py
    git worktree remove /tmp/format1-src

It writes ``plain/`` (zstd, unencrypted), ``encrypted/`` (``aes-256-gcm``, passphrase
:data:`PASSPHRASE`) and ``expected.json``: per repository, the backup ids in creation order
and, per backup, which :func:`backup_values` step it holds, the SHA-256 of each data entry's
stored payload (the ``msgpack-tagged-1`` bytes, as written) and each file's SHA-256, size,
mode and ``mtime_ns``.

Each repository holds three backups of the same source tree ``state/`` (taken as
``base_dir``):

1. ``manual``: every supported value type (:func:`backup_values` step 1), five files; the big
   file (~1.4 MB of CSV, 44 chunks, ~180 KB stored) and the big data entry ``trades``
   (~300 KB, 2 KiB chunks) are stored through chunk-list blobs.
2. ``automatic``: ``trades`` and the big file appended to (shared chunks and chunk lists),
   one small file changed.
3. ``pre_trade``: one file deleted, one new file, values of step 3.

:func:`backup_values` is imported by the test: it must stay free of imports from ``src``
and deterministic (no clocks, no hash-order dependence in what is compared).
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
import sys
import tempfile
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath
from typing import Any
from zoneinfo import ZoneInfo

SOURCE_COMMIT = "ad996b9"
PASSPHRASE = "format-1 fixture passphrase: not a secret"
FIXTURE_DIR = Path(__file__).resolve().parent / "format1"
REPOSITORIES = {"plain": "none", "encrypted": "aes-256-gcm"}
BACKUP_TYPES = ("manual", "automatic", "pre_trade")
SOURCE_DIR = "state"
BIG_FILE = "state/history/ticks.csv"

# mtime_ns values (whole and fractional seconds, one before 1970 would be refused by some
# file systems, so all are after it).
_MTIMES = {
    "state/config.toml": 1_765_962_000_000_000_000,
    "state/strategy/params.json": 1_765_962_001_123_456_789,
    "state/run.sh": 1_700_000_000_500_000_000,
    "state/empty.txt": 1_600_000_000_000_000_000,
    BIG_FILE: 1_765_962_002_000_000_001,
    "state/notes/übersicht.md": 1_765_962_003_999_999_999,
}
_MODES = {
    "state/config.toml": 0o644,
    "state/strategy/params.json": 0o600,
    "state/run.sh": 0o755,
    "state/empty.txt": 0o640,
    BIG_FILE: 0o644,
    "state/notes/übersicht.md": 0o604,
}


# -- values ----------------------------------------------------------------------------------


def _trades(count: int) -> list[dict[str, Any]]:
    """A deterministic trade history (plain msgpack types plus Decimal and datetime)."""
    rng = random.Random(20251217)
    start = datetime(2025, 12, 17, 9, 30, tzinfo=timezone.utc)
    price = 50_000.0
    trades = []
    for i in range(count):
        price = round(price * (1 + rng.uniform(-0.002, 0.002)), 2)
        trades.append(
            {
                "id": i,
                "time": start + timedelta(seconds=17 * i),
                "symbol": ("BTC/USD", "ETH/USD", "SOL/USD")[i % 3],
                "side": "buy" if rng.random() < 0.5 else "sell",
                "size": Decimal(f"0.{rng.randrange(1, 9999):04d}"),
                "price": price,
                "fee": round(price * 0.0004, 4),
            }
        )
    return trades


def backup_values(step: int) -> dict[str, Any]:
    """The data of backup ``step`` (1, 2 or 3): names to values, every non-numpy type the
    ``msgpack-tagged-1`` codec supports, nested."""
    everything: dict[str, Any] = {
        "none": None,
        "true": True,
        "false": False,
        "ints": [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40, -(7**90)],
        "floats": [0.0, -0.0, 1.5, -2.25e-308, 5e-324, 1.7976931348623157e308],
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "str": "grüße, 日本, \U0001f680, a \x00 inside",
        "empty_str": "",
        "bytes": bytes(range(256)),
        "empty_bytes": b"",
        "list": [1, "two", [3.0, [None]], {"four": 4}],
        "tuple": (1, ("nested", ()), [2, (3,)]),
        "empty_tuple": (),
        "set": {1, 2, 3, "x"},
        "frozenset": frozenset({"a", "b", 7}),
        "empty_set": set(),
        "dict_int_keys": {1: "one", 2: "two", -3: "minus three"},
        "dict_mixed_keys": {
            (1, 2): "tuple key",
            None: "none key",
            1.5: "float key",
            b"raw": "bytes key",
            "s": "str key",
            date(2025, 1, 2): "date key",
        },
        "ordered": collections.OrderedDict([("z", 1), ("a", 2), ("m", (3,))]),
        "datetime_naive": datetime(2025, 12, 17, 21, 40, 30, 123456),
        "datetime_fold": datetime(2025, 10, 26, 2, 30, fold=1),
        "datetime_utc": datetime(2025, 12, 17, 21, 40, 30, 1, tzinfo=timezone.utc),
        "datetime_offset": datetime(2025, 12, 17, 21, 40, tzinfo=timezone(timedelta(hours=-5))),
        "datetime_named_tz": datetime(
            2025, 6, 1, tzinfo=timezone(timedelta(hours=5, minutes=30), "IST")
        ),
        "datetime_zoneinfo": datetime(
            2025, 10, 26, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin")
        ),
        "date": date(2025, 12, 17),
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
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "enum_int": http.HTTPStatus.NOT_FOUND,
        "enum_plain": uuid.SafeUUID.unsafe,
        "paths": [
            PurePosixPath("/var/lib/peak/state.json"),
            PosixPath("relative/dir"),
            PureWindowsPath("C:\\Users\\trader\\bot.toml"),
        ],
        "complex": complex(1.5, -2.0),
        "fraction": Fraction(-355, 113),
        "bytearray_as_bytes": b"stored as bytes",
    }
    portfolio: dict[str, Any] = {
        "equity": Decimal("10000.00") + step,
        "cash": 5000.0 - step,
        "positions": [
            {
                "symbol": "BTC/USD",
                "size": Decimal("0.1"),
                "entry_price": 50000,
                "opened_at": datetime(2025, 12, 17, 10, step, tzinfo=timezone.utc),
                "tags": {"swing", "btc"},
            }
        ],
        "step": step,
    }
    values: dict[str, Any] = {"portfolio": portfolio, "trades": _trades(2500 + 150 * (step - 1))}
    if step == 1:
        values["everything"] = everything
    elif step == 2:
        values["everything"] = everything
        values["config"] = {"strategy": "ma_crossover", "risk_per_trade": 0.01, "step": (2,)}
    else:
        values["config"] = {"strategy": "ma_crossover", "risk_per_trade": 0.02, "step": (3,)}
    return values


# -- files -----------------------------------------------------------------------------------


def _tick_lines(count: int, seed: int) -> bytes:
    """CSV ticks: varied enough for content-defined cuts (~44 chunks for 1.4 MB), yet
    compressible (~8x with zstd) to keep the fixture small."""
    rng = random.Random(seed)
    price = 50_000.0
    moment = 1_765_962_000_000
    lines = []
    for _ in range(count):
        if rng.random() < 0.3:
            price = round(price + rng.choice((-0.5, 0.5, -1.0, 1.0)), 1)
        moment += 250 if rng.random() < 0.8 else 1000
        side = "buy" if rng.random() < 0.5 else "sell"
        lines.append(f"{moment},BTC/USD,{side},{price:.1f},{rng.choice((1, 1, 1, 2, 5))}\n")
    return "".join(lines).encode()


def _write(source: Path, name: str, content: bytes, step: int) -> None:
    path = source.parent / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, _MODES[name])
    mtime_ns = _MTIMES[name] + (step - 1) * 3_600_000_000_007
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _files_for_step(source: Path, step: int) -> None:
    """Bring the source tree ``source`` (``.../state``) to its state for backup ``step``."""
    if step == 1:
        _write(source, "state/config.toml", b'[bot]\nname = "alpha"\nrisk = 0.01\n', step)
        _write(
            source,
            "state/strategy/params.json",
            json.dumps({"fast": 10, "slow": 30}).encode(),
            step,
        )
        _write(source, "state/run.sh", b"#!/bin/sh\nexec python -m bot\n", step)
        _write(source, "state/empty.txt", b"", step)
        _write(source, BIG_FILE, b"time_ms,symbol,side,price,qty\n" + _tick_lines(40_000, 1), step)
    elif step == 2:
        big = (source.parent / BIG_FILE).read_bytes() + _tick_lines(1500, 2)
        _write(source, BIG_FILE, big, step)
        _write(source, "state/config.toml", b'[bot]\nname = "alpha"\nrisk = 0.015\n', step)
    else:
        (source / "run.sh").unlink()
        _write(source, "state/notes/übersicht.md", "# Übersicht\n\nrisk lowered\n".encode(), step)


def _file_facts(source: Path) -> dict[str, dict[str, Any]]:
    facts = {}
    for path in sorted(source.rglob("*")):
        if path.is_file():
            st = path.stat()
            name = path.relative_to(source.parent).as_posix()
            facts[name] = {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "size": st.st_size,
                "mode": st.st_mode & 0o7777,
                "mtime_ns": st.st_mtime_ns,
            }
    return facts


# -- repositories ----------------------------------------------------------------------------


def _build(name: str, encryption: str, work: Path) -> dict[str, Any]:
    from src.infra.backup import BackupConfig, BackupManager

    target = FIXTURE_DIR / name
    if target.exists():
        shutil.rmtree(target)
    base = work / name
    source = base / SOURCE_DIR
    source.mkdir(parents=True)
    config = BackupConfig(
        backup_path=target,
        retention_days=0,
        auto_prune=False,
        compression="zstd",
        encryption=encryption,
        sources=[SOURCE_DIR],
        base_dir=base,
    )
    manager = BackupManager(config, passphrase=PASSPHRASE if encryption != "none" else None)
    backups = []
    for step, backup_type in enumerate(BACKUP_TYPES, start=1):
        _files_for_step(source, step)
        backup_id = manager.create_backup(
            backup_values(step), backup_type, tags={"fixture": "format1", "step": str(step)}
        )
        repository = manager.repository
        manifest = repository.read_manifest(backup_id)
        data = {}
        chunk_lists = {}
        for entry in manifest.entries:
            if entry.lists:
                chunk_lists[entry.name] = len(entry.lists)
            if entry.kind == "data":
                data[entry.name] = hashlib.sha256(repository.read_entry(entry)).hexdigest()
        backups.append(
            {
                "id": backup_id,
                "type": backup_type,
                "values_step": step,
                "data_sha256": data,
                "files": _file_facts(source),
                "chunk_lists": chunk_lists,
            }
        )
    # The fixture must exercise chunk-list blobs for a value and for a file.
    first = backups[0]["chunk_lists"]
    assert "trades" in first and BIG_FILE in first, first
    # status/ holds the generating host's run history: not part of the format, host-specific.
    shutil.rmtree(target / "status", ignore_errors=True)
    # git keeps no empty directories: store the repository as a checkout will have it.
    for directory in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    leftovers = [p for p in target.rglob(".*")]
    assert not leftovers, leftovers
    return {"encryption": encryption, "backups": backups}


def _check_source_commit() -> None:
    """Refuse to run unless ``src`` is imported from a checkout of :data:`SOURCE_COMMIT`."""
    import subprocess

    import src

    checkout = Path(src.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not head.startswith(SOURCE_COMMIT) or dirty:
        raise SystemExit(
            f"src is imported from {checkout} at {head or 'no commit'}"
            f"{' with local changes' if dirty else ''}: run with "
            f"PYTHONPATH=<a clean checkout of {SOURCE_COMMIT}> (see the module docstring)"
        )


def main() -> int:
    """Build both repositories and ``expected.json`` (refuses to overwrite the frozen
    fixture unless ``--force`` is given, and to run on other code than commit ad996b9)."""
    _check_source_commit()
    expected_path = FIXTURE_DIR / "expected.json"
    if expected_path.exists() and "--force" not in sys.argv[1:]:
        print(f"{expected_path} exists: the fixture is frozen (pass --force to rebuild it)")
        return 1
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="format1-") as work:
        repositories = {
            name: _build(name, encryption, Path(work)) for name, encryption in REPOSITORIES.items()
        }
    expected = {
        "format": 1,
        "generated_from_commit": SOURCE_COMMIT,
        "generator": "tests/data/make_format1_fixture.py",
        "repositories": repositories,
    }
    expected_path.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FIXTURE_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
