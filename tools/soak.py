"""Soak test: processes create, restore, delete and prune at random while others are SIGKILLed.

Usage::

    python -m tools.soak --minutes N [--workers 4] [--repo DIR] [--seed S] [--kill-every SECONDS]
                         [--json OUT] [--workdir DIR] [--keep]

A supervisor starts ``--workers`` worker processes (``python -m tools.soak --worker ...``)
against one repository. Until the deadline each worker loops over random operations:

- **create** a backup of a state derived only from (worker id, sequence number): a portfolio
  and a growing trade history (Decimal, datetime, tuples, ...), sometimes with a file source
  (``ledger.jsonl``, written into the worker's own directory, also derived from the pair);
- **restore** one of its own backups (compared with the digest it recorded) or any listed
  backup (compared with the state its ``meta`` names), sometimes into a directory with files;
- **delete** one of its own backups (``force=True``: it may be the last one);
- **prune** with a two-second grace period (``RepositoryBusyError`` is expected and counted);
- **list** (every backup it recorded and did not delete must be listed);
- **verify** one of its own backups, by the structure tier and by a full read.

Each worker appends JSON lines to its own journal (``journals/w<id>.jsonl``): a ``create``
record only after ``create_backup`` returned, fsync'ed, so a SIGKILL never loses the record of
a commit that returned (a backup committed but killed before its record is an *unrecorded*
backup: it must still equal the deterministic state its ``meta`` names). Deletes are journaled
as an intent before and a completion after, both fsync'ed. Unexpected exceptions are journaled
with their traceback and count as errors.

The supervisor SIGKILLs a random worker every ``--kill-every`` seconds (jittered) and starts
it again (same worker id; its sequence continues from the journal). At the deadline it stops
the workers (they stop by themselves; stragglers get SIGTERM, then SIGKILL), then, with a fresh
manager: ``check`` must be clean; every backup recorded as created and not deleted must exist,
load, match its recorded digest and verify; every listed backup must load and equal the state
it names. A final prune with grace 0 (collect and delete; a second run must find nothing)
follows, then ``check`` again (clean, no orphaned chunks) and every backup is loaded again.

The exit status is 0 only if nothing was lost, nothing was corrupt, both checks were clean and
no worker met an unexpected error. The work directory (journals, worker files and, without
``--repo``, the repository) is a fresh temporary directory, removed at the end unless ``--keep``
is given or the run failed (then its path is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from src.infra.backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    BackupNotFoundError,
    RecoveryError,
    RecoveryManager,
    RepositoryBusyError,
)
from src.infra.backup.repository import gc as gc_module
from src.infra.backup.repository.check import CheckReport
from src.infra.backup.repository.locks import ExclusiveLock
from src.infra.backup.repository.pack_gc import REPACK_BELOW

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOAK_FORMAT = 1
FILE_NAME = "ledger.jsonl"
PRUNE_GRACE = timedelta(seconds=2)
MAX_PACK_PASSES = 5
BACKUP_TYPES = ("pre_trade", "pre_trade", "automatic", "scheduled", "manual")
# The trade history of sequence number s has TRADE_BASE + (s * TRADE_STEP) % TRADE_SPAN trades:
# it grows by appends (so content-defined chunking deduplicates it) and wraps around.
TRADE_BASE = 1500
TRADE_STEP = 7
TRADE_SPAN = 2500
SYMBOLS = ("BTC-EUR", "ETH-EUR", "SOL-EUR", "ADA-EUR", "XRP-EUR", "DOT-EUR", "LINK-EUR")
TRADE_EPOCH = datetime(2025, 1, 2, 8, 0, tzinfo=timezone.utc)
BERLIN = ZoneInfo("Europe/Berlin")
# Above this many own backups a worker mostly deletes, which keeps the repository bounded.
OWN_BACKUPS_SOFT_LIMIT = 10
STOP_GRACE_SECONDS = 30.0
TERM_GRACE_SECONDS = 5.0

log = logging.getLogger("soak")


# -- the deterministic state -------------------------------------------------------------------

_TRADES: dict[int, list[dict[str, Any]]] = {}


def _worker_trades(worker: int) -> list[dict[str, Any]]:
    """All trades worker ``worker`` will ever have (each state holds a prefix of them)."""
    cached = _TRADES.get(worker)
    if cached is not None:
        return cached
    rng = random.Random(f"soak-trades-{worker}")
    trades: list[dict[str, Any]] = []
    when = TRADE_EPOCH + timedelta(hours=worker)
    price = Decimal("42000.00")
    for index in range(TRADE_BASE + TRADE_SPAN):
        when += timedelta(seconds=rng.randint(1, 900), microseconds=rng.randint(0, 999_999))
        side = rng.choice(("buy", "sell"))
        qty = Decimal(rng.randint(1, 500_000)).scaleb(-6)
        price = max(Decimal("1.00"), price + Decimal(rng.randint(-5000, 5000)).scaleb(-2))
        trades.append(
            {
                "id": index,
                "time": when,
                "symbol": rng.choice(SYMBOLS),
                "side": side,
                "qty": qty,
                "price": price,
                "fee": (qty * price * Decimal("0.001")).quantize(Decimal("0.00000001")),
                "pnl": round(rng.gauss(0.0, 25.0), 6),
                "tags": ("soak", side, index % 7),
            }
        )
    _TRADES[worker] = trades
    return trades


def trade_count(seq: int) -> int:
    """How many trades the state of sequence number ``seq`` holds."""
    return TRADE_BASE + (seq * TRADE_STEP) % TRADE_SPAN


def make_state(worker: int, seq: int) -> dict[str, Any]:
    """The data a worker backs up as its ``seq``-th backup: a function of the pair alone."""
    rng = random.Random(f"soak-portfolio-{worker}-{seq}")
    trades = _worker_trades(worker)[: trade_count(seq)]
    held = rng.sample(SYMBOLS, rng.randint(1, 4))
    positions: list[dict[str, Any]] = [
        {
            "symbol": symbol,
            "qty": Decimal(rng.randint(1, 10_000_000)).scaleb(-7),
            "avg_price": Decimal(rng.randint(100, 9_000_000)).scaleb(-2),
            "opened_at": datetime(2025, 3, 1, 9, 0, tzinfo=BERLIN)
            + timedelta(minutes=rng.randint(0, 500_000)),
            "stop": None if rng.random() < 0.3 else Decimal(rng.randint(100, 900)).scaleb(-1),
        }
        for symbol in held
    ]
    cash = Decimal(rng.randint(0, 10**9)).scaleb(-2)
    return {
        "meta": {"worker": worker, "seq": seq, "soak": SOAK_FORMAT},
        "portfolio": {
            "cash": cash,
            "equity": cash + sum((_value(p) for p in positions), Decimal(0)),
            "positions": positions,
            "updated": datetime(2025, 6, 1, 12, 0) + timedelta(seconds=seq),
            "as_of": date(2025, 6, 1) + timedelta(days=seq % 300),
            "risk": {"max_drawdown": rng.random() / 4, "limits": {s: 10**6 + seq for s in held}},
        },
        "history": {
            "trades": trades,
            "count": len(trades),
            "last": trades[-1]["time"],
            "window": (trades[0]["time"], trades[-1]["time"]),
        },
    }


def _value(position: dict[str, Any]) -> Decimal:
    qty: Decimal = position["qty"]
    price: Decimal = position["avg_price"]
    return qty * price


def has_file(worker: int, seq: int) -> bool:
    """Whether backup ``seq`` of ``worker`` includes the file source (about every third)."""
    return random.Random(f"soak-file-{worker}-{seq}").random() < 0.3


def file_bytes(worker: int, seq: int) -> bytes:
    """The content of the worker's ledger file when it makes backup ``seq``."""
    trades = _worker_trades(worker)[: trade_count(seq)][-300:]
    lines = [json.dumps({"worker": worker, "seq": seq, "trades": trade_count(seq)})]
    for trade in trades:
        lines.append(
            json.dumps(
                {
                    "id": trade["id"],
                    "time": trade["time"].isoformat(),
                    "symbol": trade["symbol"],
                    "qty": str(trade["qty"]),
                    "price": str(trade["price"]),
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def canonical(value: Any) -> Any:
    """A JSON-able form of ``value`` that keeps every type apart (a Decimal is not a float,
    a tuple not a list, an aware datetime not a naive one)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    if isinstance(value, datetime):
        return ["datetime", value.isoformat(), value.tzname(), str(value.tzinfo)]
    if isinstance(value, date):
        return ["date", value.isoformat()]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, tuple):
        return ["tuple", [canonical(item) for item in value]]
    if isinstance(value, list):
        return ["list", [canonical(item) for item in value]]
    if isinstance(value, dict):
        items = [[canonical(k), canonical(v)] for k, v in value.items()]
        items.sort(key=lambda kv: json.dumps(kv[0], sort_keys=True))
        return ["dict", items]
    raise TypeError(f"no canonical form for {type(value).__name__}")


def state_digest(state: Any) -> str:
    """SHA-256 of the canonical encoding of ``state``."""
    text = json.dumps(canonical(state), separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


_DIGESTS: dict[tuple[int, int], str] = {}


def expected_digest(worker: int, seq: int) -> str:
    """The digest of ``make_state(worker, seq)``, cached."""
    key = (worker, seq)
    if key not in _DIGESTS:
        _DIGESTS[key] = state_digest(make_state(worker, seq))
    return _DIGESTS[key]


def state_identity(data: Any) -> tuple[int, int]:
    """The (worker, seq) a restored state says it is; ``ValueError`` if it says nothing."""
    meta = data.get("meta") if isinstance(data, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("soak") != SOAK_FORMAT
        or not isinstance(meta.get("worker"), int)
        or not isinstance(meta.get("seq"), int)
    ):
        raise ValueError(f"not a soak state: meta = {meta!r}")
    return meta["worker"], meta["seq"]


# -- journals ----------------------------------------------------------------------------------


class Journal:
    """An append-only JSON-lines file; each record is one ``write`` (fsync'ed on request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # A predecessor killed mid-write may have left half a line: start on a fresh one.
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def write(self, op: str, *, sync: bool = False, **fields: Any) -> None:
        """Append ``{"op": op, "t": now, "pid": pid, **fields}``."""
        record = {"op": op, "t": time.time(), "pid": os.getpid(), **fields}
        os.write(self.fd, (json.dumps(record, sort_keys=True, default=str) + "\n").encode())
        if sync:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a journal; lines torn by a SIGKILL are skipped."""
    records: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("op"), str):
            records.append(record)
    return records


def journal_path(workdir: Path, worker: int) -> Path:
    """Where worker ``worker`` journals."""
    return workdir / "journals" / f"w{worker}.jsonl"


def worker_dir(workdir: Path, worker: int) -> Path:
    """The worker's own directory (its file source, its restore targets)."""
    return workdir / "workers" / f"w{worker}"


# -- the worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A backup a worker recorded as created."""

    backup_id: str
    worker: int
    seq: int
    sha256: str
    file_sha256: str | None


def soak_config(repo: Path, workdir: Path | None = None) -> BackupConfig:
    """The configuration every soak process uses (a worker adds its file source)."""
    if workdir is None:
        return BackupConfig(backup_path=repo, retention_days=0, auto_prune=False)
    return BackupConfig(
        backup_path=repo,
        retention_days=0,
        auto_prune=False,
        sources=[FILE_NAME],
        base_dir=workdir,
    )


class _Terminated(BaseException):
    """Raised by the SIGTERM handler, so a worker stops without being an error."""


class Worker:
    """One worker process: random operations until the deadline, everything journaled."""

    def __init__(self, worker: int, repo: Path, workdir: Path, deadline: float, seed: int):
        self.worker = worker
        self.deadline = deadline
        self.home = worker_dir(workdir, worker)
        self.home.mkdir(parents=True, exist_ok=True)
        path = journal_path(workdir, worker)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = read_journal(path)
        self.live: dict[str, Recorded] = {}
        next_seq = 0
        incarnation = 0
        for record in records:
            op = record["op"]
            if op == "start":
                incarnation += 1
            elif op in ("begin", "create"):
                next_seq = max(next_seq, int(record["seq"]) + 1)
                if op == "create":
                    self.live[record["id"]] = recorded_from(record)
            elif op in ("deleting", "delete"):
                # After a bare "deleting" the delete may or may not have happened.
                self.live.pop(record["id"], None)
        self.next_seq = next_seq
        self.incarnation = incarnation
        self.rng = random.Random(f"{seed}-{worker}-{incarnation}")
        self.journal = Journal(path)
        self.manager = BackupManager(soak_config(repo, self.home))
        self.recovery = RecoveryManager(self.manager)
        self.restore_count = 0

    # The prune lock is traced (acquired / released) so the supervisor can tell whether two
    # prunes ever held it at the same time.
    def _trace_prune_lock(self) -> None:
        journal = self.journal

        class TracedLock(ExclusiveLock):
            def acquire(self, wait: float = 0.0) -> ExclusiveLock:
                lock = super().acquire(wait)
                journal.write("lock_acquired", name=self.kind)
                return lock

            def release(self) -> None:
                journal.write("lock_releasing", name=self.kind)
                super().release()

        setattr(gc_module, "ExclusiveLock", TracedLock)  # noqa: B010 - mypy: not re-exported

    def run(self) -> int:
        """Loop until the deadline; returns the process exit status."""
        self._trace_prune_lock()
        self.journal.write(
            "start",
            sync=True,
            incarnation=self.incarnation,
            next_seq=self.next_seq,
            live=len(self.live),
        )
        try:
            while time.time() < self.deadline:
                op = self._choose()
                try:
                    getattr(self, f"op_{op}")()
                except Exception as exc:  # noqa: BLE001 - anything unexpected is journaled, counted
                    self._error(
                        "exception",
                        f"{op}: {type(exc).__name__}: {exc}",
                        trace=traceback.format_exc(),
                    )
        except _Terminated:
            self.journal.write("exit", reason="SIGTERM")
            return 143
        self.journal.write("exit", reason="deadline")
        return 0

    def _error(self, kind: str, message: str, *, trace: str | None = None) -> None:
        self.journal.write("error", sync=True, kind=kind, message=message, traceback=trace)
        print(f"soak worker {self.worker}: {kind}: {message}", file=sys.stderr, flush=True)

    def _choose(self) -> str:
        own = len(self.live)
        weights = {
            "create": 30,
            "restore": 25,
            "delete": (15 + (40 if own > OWN_BACKUPS_SOFT_LIMIT else 0)) if own else 0,
            "prune": 8,
            "list": 10,
            "verify": 10 if own else 0,
        }
        names = list(weights)
        return self.rng.choices(names, weights=[weights[n] for n in names])[0]

    # -- operations ------------------------------------------------------------------------

    def op_create(self) -> None:
        """Back up state ``next_seq`` (and the ledger file, for about every third)."""
        seq = self.next_seq
        self.next_seq += 1
        # Before the backup: a restarted worker never reuses a sequence number.
        self.journal.write("begin", seq=seq)
        state = make_state(self.worker, seq)
        files = has_file(self.worker, seq)
        file_sha = None
        if files:
            content = file_bytes(self.worker, seq)
            temp = self.home / f"{FILE_NAME}.tmp"
            temp.write_bytes(content)
            os.replace(temp, self.home / FILE_NAME)
            file_sha = hashlib.sha256(content).hexdigest()
        backup_id = self.manager.create_backup(
            state,
            backup_type=self.rng.choice(BACKUP_TYPES),
            tags={"soak_worker": str(self.worker), "soak_seq": str(seq)},
            include_files=files,
        )
        digest = expected_digest(self.worker, seq)
        self.journal.write(
            "create",
            sync=True,
            id=backup_id,
            worker=self.worker,
            seq=seq,
            sha256=digest,
            file_sha256=file_sha,
        )
        self.live[backup_id] = Recorded(backup_id, self.worker, seq, digest, file_sha)

    def op_restore(self) -> None:
        """Restore an own backup (against its record) or any listed one (against its meta)."""
        record: Recorded | None
        if self.live and self.rng.random() < 0.6:
            record = self.rng.choice(list(self.live.values()))
            backup_id = record.backup_id
        else:
            listed = self.manager.list_backups()
            if not listed:
                self.journal.write("restore_none")
                return
            backup_id = self.rng.choice(listed).backup_id
            record = self.live.get(backup_id)
        own = record is not None
        try:
            # Another worker's id can be deleted and taken again by a new backup within the
            # same second: its time (with microseconds) tells the two apart.
            taken_at = self.manager.get_backup_info(backup_id).timestamp_utc
            data = self.recovery.restore_backup(backup_id)
        except BackupNotFoundError:
            if record is not None:
                self._error("lost", f"own backup {backup_id} (seq {record.seq}) not found")
            else:
                self.journal.write("restore_gone", id=backup_id)  # deleted by its owner
            return
        except RecoveryError as exc:
            self._failed_read(backup_id, own, exc)
            return
        problem = check_state(data, backup_id, record)
        if problem:
            self._error("mismatch", problem)
            return
        worker, seq = state_identity(data)
        if has_file(worker, seq) and self.rng.random() < 0.3:
            self.restore_count += 1
            target = self.home / f"restore-{self.incarnation}-{self.restore_count}"
            try:
                self.recovery.restore_to_directory(backup_id, target, verify=True)
                problem = check_file(target, backup_id, worker, seq)
            except BackupNotFoundError:
                if own:
                    self._error("lost", f"own backup {backup_id} vanished during a restore")
                else:
                    self.journal.write("restore_gone", id=backup_id)
                return
            except RecoveryError as exc:
                self._failed_read(backup_id, own, exc)
                return
            finally:
                shutil.rmtree(target, ignore_errors=True)
            if problem and not own and self._id_taken_again(backup_id, taken_at):
                self.journal.write("restore_gone", id=backup_id)  # now names another backup
                return
            if problem:
                self._error("mismatch", problem)
                return
        self.journal.write("restore", id=backup_id, own=own)

    def _id_taken_again(self, backup_id: str, taken_at: datetime) -> bool:
        try:
            return self.manager.get_backup_info(backup_id).timestamp_utc != taken_at
        except BackupNotFoundError:
            return True

    def _failed_read(self, backup_id: str, own: bool, exc: RecoveryError) -> None:
        """A restore failed with damage: tell a backup deleted meanwhile (expected for another
        worker's backup), a damaged one, and a healthy one this process misread."""
        message = f"{'own' if own else 'listed'} backup {backup_id}: {type(exc).__name__}: {exc}"
        trace = traceback.format_exc()
        try:
            BackupManager(soak_config(self.manager.config.repository_path)).load_backup(backup_id)
        except BackupNotFoundError:
            if own:
                self._error("lost", message, trace=trace)
            else:
                self.journal.write("restore_gone", id=backup_id, after=type(exc).__name__)
            return
        except BackupError as again:
            self._error("integrity", f"{message}; a fresh manager fails too: {again}", trace=trace)
            return
        # A fresh manager reads it: this process's view of the backup was stale.
        self._error("stale_read", f"{message}; a fresh manager reads it fine", trace=trace)

    def op_delete(self) -> None:
        """Delete one of the own backups, journaled before (intent) and after."""
        backup_id = self.rng.choice(list(self.live))
        self.journal.write("deleting", sync=True, id=backup_id)
        self.live.pop(backup_id)
        self.manager.delete_backup(backup_id, force=True)
        self.journal.write("delete", sync=True, id=backup_id)

    def op_prune(self) -> None:
        """Collect garbage with a short grace period; a busy repository is expected."""
        started = time.time()
        try:
            report = self.manager.prune(grace=PRUNE_GRACE, lock_wait=self.rng.uniform(0, 1.5))
        except RepositoryBusyError:
            self.journal.write("prune_busy", started=started)
            return
        self.journal.write(
            "prune",
            started=started,
            fossilized=report.fossilized,
            deleted=report.deleted,
            resurrected=report.resurrected,
            postponed=len(report.postponed),
            temp_removed=report.temp_removed,
            stale_leases_removed=report.stale_leases_removed,
        )

    def op_list(self) -> None:
        """List; every backup this worker recorded and did not delete must be there."""
        listed = {info.backup_id for info in self.manager.list_backups()}
        missing = sorted(set(self.live) - listed)
        if missing:
            self._error("lost", f"own backups not listed: {missing}")
            return
        self.journal.write("list", backups=len(listed))

    def op_verify(self) -> None:
        """Verify an own backup: structure only, then a full read."""
        record = self.rng.choice(list(self.live.values()))
        structure = self.recovery.verify_backup_report(record.backup_id, read_data=False)
        full = self.recovery.verify_backup(record.backup_id)
        if not full:
            self._error("verify", f"own backup {record.backup_id} fails verification")
            return
        if not structure.ok:
            # The backup reads back fine: the structure tier is wrong about it.
            self.journal.write(
                "anomaly",
                sync=True,
                kind="structure_verify_false_negative",
                id=record.backup_id,
                problems=structure.problems[:3],
            )
        self.journal.write("verify", id=record.backup_id)


def recorded_from(record: dict[str, Any]) -> Recorded:
    """A journal ``create`` record as a :class:`Recorded`."""
    return Recorded(
        record["id"],
        int(record["worker"]),
        int(record["seq"]),
        record["sha256"],
        record.get("file_sha256"),
    )


def check_state(data: Any, backup_id: str, record: Recorded | None) -> str | None:
    """What is wrong with a restored state, or ``None``: it must equal the deterministic state
    its meta names and, when recorded, have the recorded digest."""
    try:
        worker, seq = state_identity(data)
    except ValueError as exc:
        return f"{backup_id}: {exc}"
    if record is not None and (worker, seq) != (record.worker, record.seq):
        return f"{backup_id}: is state {worker}/{seq}, recorded as {record.worker}/{record.seq}"
    digest = state_digest(data)
    if record is not None and digest != record.sha256:
        return f"{backup_id}: digest {digest[:12]} differs from the recorded {record.sha256[:12]}"
    if digest != expected_digest(worker, seq) or data != make_state(worker, seq):
        return f"{backup_id}: differs from the deterministic state {worker}/{seq}"
    return None


def check_file(target: Path, backup_id: str, worker: int, seq: int) -> str | None:
    """Whether the ledger restored into ``target`` is the one of ``worker``/``seq``."""
    path = target / FILE_NAME
    if not path.is_file():
        return f"{backup_id}: {FILE_NAME} was not restored"
    if path.read_bytes() != file_bytes(worker, seq):
        return f"{backup_id}: restored {FILE_NAME} differs from that of {worker}/{seq}"
    return None


def worker_main(args: argparse.Namespace) -> int:
    """Entry point of a worker process."""

    def terminate(signum: int, frame: object) -> NoReturn:
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    worker = Worker(args.worker, Path(args.repo), Path(args.workdir), args.deadline, args.seed)
    return worker.run()


# -- the supervisor ----------------------------------------------------------------------------


@dataclass
class Supervisor:
    """Starts, kills and restarts the workers."""

    repo: Path
    workdir: Path
    workers: int
    deadline: float
    seed: int
    kill_every: float
    rng: random.Random
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0
    stopped_by_signal: int = 0
    bad_exits: list[str] = field(default_factory=list)

    def spawn(self, worker: int) -> None:
        """Start worker ``worker`` (again)."""
        log_path = self.workdir / "logs" / f"w{worker}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        with open(log_path, "ab") as log_file:
            self.procs[worker] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tools.soak",
                    "--worker",
                    str(worker),
                    "--repo",
                    str(self.repo),
                    "--workdir",
                    str(self.workdir),
                    "--deadline",
                    repr(self.deadline),
                    "--seed",
                    str(self.seed),
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def run(self) -> None:
        """Run the workers until the deadline, killing one now and then, then stop them."""
        for worker in range(self.workers):
            self.spawn(worker)
        next_kill = self._next_kill(time.time())
        last_report = time.time()
        while (now := time.time()) < self.deadline:
            for worker, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or code == 0:
                    continue
                self.bad_exits.append(f"worker {worker} exited with status {code}")
                print(f"soak: worker {worker} exited with {code}", file=sys.stderr, flush=True)
                if self.deadline - now > 1.0:
                    self.spawn(worker)
                    self.restarts += 1
                else:
                    del self.procs[worker]  # reported; too late for another incarnation
            if now >= next_kill and self.deadline - now > 1.0:
                worker = self.rng.randrange(self.workers)
                proc = self.procs[worker]
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    self.kills += 1
                    self.spawn(worker)
                    self.restarts += 1
                next_kill = self._next_kill(now)
            if now - last_report >= 15:
                left = max(0.0, self.deadline - now)
                print(f"soak: {left:5.0f} s left, {self.kills} kills", file=sys.stderr, flush=True)
                last_report = now
            time.sleep(0.05)
        self.stop()

    def _next_kill(self, now: float) -> float:
        if self.kill_every <= 0:
            return float("inf")
        return now + self.rng.uniform(0.5, 1.5) * self.kill_every

    def stop(self) -> None:
        """Let the workers finish their last operation; SIGTERM, then SIGKILL, stragglers."""
        until = max(time.time(), self.deadline) + STOP_GRACE_SECONDS
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, until - time.time()))
        for sig, grace in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, 10.0)):
            running = [p for p in self.procs.values() if p.poll() is None]
            if not running:
                break
            for proc in running:
                proc.send_signal(sig)
                self.stopped_by_signal += 1
            for proc in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
        for worker, proc in self.procs.items():
            code = proc.poll()
            if code not in (0, 143, -signal.SIGTERM, -signal.SIGKILL):
                self.bad_exits.append(f"worker {worker} ended with status {code}")


# -- the final verification --------------------------------------------------------------------


@dataclass
class JournalSummary:
    """What the journals of all workers say.

    Backup ids are not unique over time (an id freed by a delete can be given to a later
    backup), so the fate of an id is its last event in time: a ``create`` record (written
    after the commit) or a delete intent (written before the manifest is removed, so before
    any later backup can take the id), the latter completed or not.
    """

    ops: Counter[str] = field(default_factory=Counter)
    live: dict[str, Recorded] = field(default_factory=dict)
    deleted: dict[str, Recorded | None] = field(default_factory=dict)
    interrupted: dict[str, Recorded] = field(default_factory=dict)
    reused_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    lock_overlaps: list[str] = field(default_factory=list)


def summarize_journals(workdir: Path, workers: int) -> JournalSummary:
    """Read every worker's journal."""
    summary = JournalSummary()
    holds: list[tuple[float, float, int, int]] = []  # prune lock: acquired, released, worker, pid
    events: list[tuple[float, str, str, Recorded | None, bool]] = []  # t, kind, id, record, done
    for worker in range(workers):
        acquired: dict[int, float] = {}
        intents: dict[tuple[int, str], int] = {}  # (pid, id) -> index of its event
        for record in read_journal(journal_path(workdir, worker)):
            op = record["op"]
            summary.ops[op] += 1
            if op == "create":
                events.append((record["t"], "create", record["id"], recorded_from(record), True))
            elif op == "deleting":
                intents[(record["pid"], record["id"])] = len(events)
                events.append((record["t"], "delete", record["id"], None, False))
            elif op == "delete":
                index = intents.pop((record["pid"], record["id"]), None)
                if index is not None:
                    t, kind, backup_id, _, _ = events[index]
                    events[index] = (t, kind, backup_id, None, True)
            elif op == "error":
                summary.errors.append(f"worker {worker}: {record['kind']}: {record['message']}")
            elif op == "anomaly":
                summary.anomalies.append(
                    f"worker {worker}: {record['kind']}: {record.get('id')} "
                    f"{record.get('problems')}"
                )
            elif op == "lock_acquired" and record.get("name") == "prune":
                acquired[record["pid"]] = record["t"]
            elif op == "lock_releasing" and record.get("name") == "prune":
                start = acquired.pop(record["pid"], None)
                if start is not None:
                    holds.append((start, record["t"], worker, record["pid"]))
    created: dict[str, Recorded] = {}
    for _t, kind, backup_id, recorded, done in sorted(events, key=lambda e: e[0]):
        if kind == "create" and recorded is not None:
            if backup_id in created:
                summary.reused_ids.append(backup_id)
            created[backup_id] = recorded
            summary.live[backup_id] = recorded
            summary.deleted.pop(backup_id, None)
            summary.interrupted.pop(backup_id, None)
        elif kind == "delete":
            before = summary.live.pop(backup_id, None)
            if done:
                summary.deleted[backup_id] = before
            elif before is not None:
                summary.interrupted[backup_id] = before
    holds.sort()
    for i, (start, end, worker, pid) in enumerate(holds):
        for other_start, _other_end, other_worker, other_pid in holds[i + 1 :]:
            if other_start >= end:
                break
            summary.lock_overlaps.append(
                f"worker {worker} pid {pid} held the prune lock {start:.3f}-{end:.3f} while "
                f"worker {other_worker} pid {other_pid} took it at {other_start:.3f}"
            )
    return summary


@dataclass
class FinalReport:
    """The outcome of the final verification."""

    backups_at_end: int = 0
    recorded_live: int = 0
    unrecorded_valid: int = 0
    maybe_deleted_present: int = 0
    lost: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)  # backup id -> its first problem
    undead: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    check_after_prune: dict[str, Any] = field(default_factory=dict)
    prune_passes: list[dict[str, int]] = field(default_factory=list)


def check_summary(report: CheckReport) -> dict[str, Any]:
    """The figures of a check that the summary shows."""
    return {
        "clean": report.clean,
        "backups": report.backups,
        "chunks_checked": report.chunks_checked,
        "orphaned_chunks": report.orphaned_chunks,
        "orphaned_bytes": report.orphaned_bytes,
        "fossils": report.fossils,
        "temp_leftovers": len(report.temp_leftovers),
        "damaged_manifests": sorted(report.damaged_manifests),
        "affected_backups": report.affected_backups,
    }


def verify_backup_fully(
    manager: BackupManager,
    recovery: RecoveryManager,
    backup_id: str,
    record: Recorded | None,
    scratch: Path,
) -> str | None:
    """Load, compare and verify one backup; returns what is wrong, or ``None``."""
    try:
        data = manager.load_backup(backup_id)
    except BackupError as exc:
        return f"{backup_id}: load failed: {type(exc).__name__}: {exc}"
    problem = check_state(data, backup_id, record)
    if problem:
        return problem
    worker, seq = state_identity(data)
    info = manager.get_backup_info(backup_id)
    if info.tags.get("soak_worker") != str(worker) or info.tags.get("soak_seq") != str(seq):
        return f"{backup_id}: tags {info.tags} do not name state {worker}/{seq}"
    if bool(info.file_paths) != has_file(worker, seq):
        return f"{backup_id}: files {info.file_paths} unexpected for state {worker}/{seq}"
    if record is not None and record.file_sha256 is not None and not info.file_paths:
        return f"{backup_id}: recorded with a file, has none"
    if info.file_paths:
        target = scratch / backup_id
        try:
            recovery.restore_to_directory(backup_id, target, verify=True)
            problem = check_file(target, backup_id, worker, seq)
        except BackupError as exc:
            problem = f"{backup_id}: restore of files failed: {type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(target, ignore_errors=True)
        if problem:
            return problem
    if not recovery.verify_backup(backup_id):
        return f"{backup_id}: verify_backup is False"
    return None


def final_verification(repo: Path, workdir: Path, journals: JournalSummary) -> FinalReport:
    """Check the repository and every backup after all workers stopped."""
    report = FinalReport()
    scratch = workdir / "final-restore"
    scratch.mkdir(parents=True, exist_ok=True)
    manager = BackupManager(soak_config(repo))
    recovery = RecoveryManager(manager)
    report.check = check_summary(manager.check())

    existing = set(manager.repository.snapshot_ids())
    listed = [info.backup_id for info in manager.list_backups()]
    report.backups_at_end = len(existing)
    expected_live = journals.live
    report.recorded_live = len(expected_live)
    report.lost = sorted(
        f"{backup_id} (worker {r.worker}, seq {r.seq})"
        for backup_id, r in expected_live.items()
        if backup_id not in existing
    )
    for backup_id in existing - set(listed):
        if backup_id not in report.check["damaged_manifests"]:
            report.corrupt[backup_id] = f"{backup_id}: exists but is not listed"
    # Which recorded backup each listed id should be. An id whose last recorded event is a
    # delete (done or interrupted) may since have been taken by a backup committed but not
    # recorded (its writer was killed in between): its tags tell which.
    records: dict[str, Recorded | None] = {}
    for info in manager.list_backups():
        backup_id = info.backup_id
        tagged = (info.tags.get("soak_worker"), info.tags.get("soak_seq"))
        if backup_id in expected_live:
            records[backup_id] = expected_live[backup_id]
            continue
        gone = journals.deleted.get(backup_id) or journals.interrupted.get(backup_id)
        same = gone is not None and tagged == (str(gone.worker), str(gone.seq))
        if backup_id in journals.deleted and same:
            report.undead.append(f"{backup_id}: deleted, yet present")
        records[backup_id] = gone if same else None

    def verify_all(phase: str) -> None:
        for backup_id in listed:
            record = records.get(backup_id)
            try:
                problem = verify_backup_fully(manager, recovery, backup_id, record, scratch)
            except Exception as exc:  # noqa: BLE001 - reported as an error, the rest goes on
                report.errors.append(f"{phase}: {backup_id}: {type(exc).__name__}: {exc}")
                continue
            if problem:
                report.corrupt.setdefault(backup_id, f"{phase}: {problem}")
            elif phase == "before prune" and backup_id not in expected_live:
                if record is not None:
                    report.maybe_deleted_present += 1
                else:
                    report.unrecorded_valid += 1

    verify_all("before prune")
    # Format 1: the first pass collects and deletes; the second must find nothing left. With
    # packs, passes go on until one collects nothing (the first completes the records of
    # killed prunes and keeps whole the packs a backup still needed; later ones repack them),
    # at most MAX_PACK_PASSES; what garbage stays is below the repack threshold.
    packed = manager.repository.packed
    for number in range(MAX_PACK_PASSES if packed else 2):
        pruned = manager.prune(grace=timedelta(0))
        report.prune_passes.append(
            {
                "fossilized": pruned.fossilized,
                "deleted": pruned.deleted,
                "resurrected": pruned.resurrected,
                "postponed": len(pruned.postponed),
                "stale_leases_removed": pruned.stale_leases_removed,
                "packs_collected": pruned.packs_collected,
                "packs_repacked": pruned.packs_repacked,
                "packs_kept": pruned.packs_kept,
                "packs_deleted": pruned.packs_deleted,
            }
        )
        if packed and number and not (pruned.packs_collected or pruned.fossilized):
            break
    report.check_after_prune = check_summary(manager.check())
    last = report.prune_passes[-1]
    if packed:
        if last["packs_collected"] or last["fossilized"]:
            report.errors.append(f"prune did not settle in {MAX_PACK_PASSES} passes: {last}")
        stored = manager.repository.stored_bytes()
        garbage = report.check_after_prune["orphaned_bytes"]
        if garbage > (1 - REPACK_BELOW) * stored:
            report.errors.append(f"{garbage} of {stored} stored bytes are garbage after prune")
    elif report.check_after_prune["orphaned_chunks"]:
        report.errors.append(
            f"{report.check_after_prune['orphaned_chunks']} orphaned chunks after the final prune"
        )
    verify_all("after prune")
    shutil.rmtree(scratch, ignore_errors=True)
    return report


# -- summary -----------------------------------------------------------------------------------


def build_summary(
    args: argparse.Namespace,
    supervisor: Supervisor,
    journals: JournalSummary,
    final: FinalReport | None,
    final_error: str | None,
    elapsed: float,
) -> dict[str, Any]:
    """The run's figures as one JSON-able dict."""
    ops = journals.ops
    errors = [*journals.errors, *supervisor.bad_exits]
    if final is not None:
        errors.extend(final.errors)
    if final_error:
        errors.append(f"final verification: {final_error}")
    check_clean = bool(
        final is not None and final.check.get("clean") and final.check_after_prune.get("clean")
    )
    lost = len(final.lost) if final else 0
    corrupt = len(final.corrupt) + len(final.undead) if final else 0
    ok = final is not None and lost == 0 and corrupt == 0 and check_clean and not errors
    return {
        "ok": ok,
        "minutes": args.minutes,
        "elapsed_seconds": round(elapsed, 1),
        "workers": args.workers,
        "seed": args.seed,
        "kill_every": args.kill_every,
        "operations": {
            "creates": ops["create"],
            "restores": ops["restore"],
            "restores_of_deleted": ops["restore_gone"],
            "deletes": ops["delete"],
            "prunes": ops["prune"],
            "prune_busy": ops["prune_busy"],
            "lists": ops["list"],
            "verifies": ops["verify"],
        },
        "kills": supervisor.kills,
        "restarts": supervisor.restarts,
        "signalled_at_stop": supervisor.stopped_by_signal,
        "backups_at_end": final.backups_at_end if final else None,
        "recorded_live": final.recorded_live if final else None,
        "unrecorded_valid": final.unrecorded_valid if final else None,
        "maybe_deleted_present": final.maybe_deleted_present if final else None,
        "lost": lost,
        "corrupt": corrupt,
        "check_clean": check_clean,
        "check": final.check if final else None,
        "check_after_prune": final.check_after_prune if final else None,
        "final_prune": final.prune_passes if final else None,
        "errors": len(errors),
        "error_samples": errors[:20],
        "lost_samples": final.lost[:20] if final else [],
        "corrupt_samples": [*final.corrupt.values(), *final.undead][:20] if final else [],
        "anomalies": journals.anomalies[:20],
        "anomaly_count": len(journals.anomalies),
        "ids_reused": len(journals.reused_ids),
        "ids_reused_samples": journals.reused_ids[:20],
        "prune_lock_overlaps": journals.lock_overlaps[:20],
        "prune_lock_overlap_count": len(journals.lock_overlaps),
    }


def print_summary(summary: dict[str, Any]) -> None:
    """The summary as a two-column table."""
    ops = summary["operations"]
    check = summary["check"] or {}
    after = summary["check_after_prune"] or {}
    rows: list[tuple[str, Any]] = [
        ("minutes", summary["minutes"]),
        ("elapsed (s)", summary["elapsed_seconds"]),
        ("  stopping / verifying (s)", f"{summary['stop_seconds']} / {summary['verify_seconds']}"),
        ("workers", summary["workers"]),
        ("seed", summary["seed"]),
        *[(f"  {name}", count) for name, count in ops.items()],
        ("kills", summary["kills"]),
        ("restarts", summary["restarts"]),
        ("backups at end", summary["backups_at_end"]),
        ("  recorded, not deleted", summary["recorded_live"]),
        ("  unrecorded but valid", summary["unrecorded_valid"]),
        ("  delete interrupted, kept", summary["maybe_deleted_present"]),
        ("lost", summary["lost"]),
        ("corrupt", summary["corrupt"]),
        ("check clean", summary["check_clean"]),
        ("  orphans / fossils / temp", _triple(check)),
        ("  after final prune", _triple(after)),
        ("errors", summary["errors"]),
        ("anomalies", summary["anomaly_count"]),
        ("ids reused after delete", summary["ids_reused"]),
        ("prune lock overlaps", summary["prune_lock_overlap_count"]),
        ("result", "PASS" if summary["ok"] else "FAIL"),
    ]
    width = max(len(name) for name, _ in rows)
    print("soak summary")
    print("-" * (width + 14))
    for name, value in rows:
        if name == "  creates":
            print("operations")
        print(f"{name:<{width}}  {value}")
    for key, title in (
        ("error_samples", "errors"),
        ("lost_samples", "lost"),
        ("corrupt_samples", "corrupt"),
        ("anomalies", "anomalies"),
        ("prune_lock_overlaps", "prune lock overlaps"),
    ):
        if summary[key]:
            print(f"\n{title}:")
            for line in summary[key]:
                print(f"  {line}")


def _triple(check: dict[str, Any]) -> str:
    if not check:
        return "-"
    return f"{check['orphaned_chunks']} / {check['fossils']} / {check['temp_leftovers']}"


def supervise(args: argparse.Namespace) -> int:
    """Entry point of the supervisor."""
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    made_workdir = args.workdir is None
    workdir = (
        Path(tempfile.mkdtemp(prefix="peak-soak-")) if made_workdir else Path(args.workdir)
    ).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    repo = Path(args.repo).absolute() if args.repo else workdir / "repo"
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    args.seed = seed
    print(
        f"soak: {args.minutes} min, {args.workers} workers, seed {seed}, repository {repo}",
        file=sys.stderr,
        flush=True,
    )
    started = time.time()
    supervisor = Supervisor(
        repo=repo,
        workdir=workdir,
        workers=args.workers,
        deadline=started + args.minutes * 60.0,
        seed=seed,
        kill_every=args.kill_every,
        rng=random.Random(f"supervisor-{seed}"),
    )
    try:
        supervisor.run()
    except BaseException:
        for proc in supervisor.procs.values():
            if proc.poll() is None:
                proc.kill()
        raise
    stopped = time.time()
    journals = summarize_journals(workdir, args.workers)
    final: FinalReport | None = None
    final_error = None
    print("soak: workers stopped; verifying the repository", file=sys.stderr, flush=True)
    try:
        final = final_verification(repo, workdir, journals)
    except Exception as exc:  # noqa: BLE001 - a failed verification is a failed run
        final_error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    summary = build_summary(args, supervisor, journals, final, final_error, time.time() - started)
    summary["stop_seconds"] = round(stopped - supervisor.deadline, 1)
    summary["verify_seconds"] = round(time.time() - stopped, 1)
    summary["workdir"] = str(workdir)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if summary["ok"] and not args.keep:
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nsoak: work directory kept: {workdir}", file=sys.stderr)
    return 0 if summary["ok"] else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of the supervisor and (hidden options) of a worker."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak",
        description="Soak test of the backup repository: concurrent workers, random SIGKILLs.",
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the workers run")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--repo", help="repository directory (default: <workdir>/repo)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    parser.add_argument(
        "--kill-every",
        type=float,
        default=7.0,
        help="seconds between SIGKILLs of a random worker, jittered (0: never; default 7)",
    )
    parser.add_argument("--json", help="write the summary as JSON to this file")
    parser.add_argument("--workdir", help="journals and worker files (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers < 1:
        parser.error("--minutes must be > 0 and --workers >= 1")
    if args.worker is not None and (args.deadline is None or not args.repo or not args.workdir):
        parser.error("--worker needs --deadline, --repo and --workdir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the supervisor, or a worker when ``--worker`` is given."""
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
