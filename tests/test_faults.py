"""Storage faults at every write step of create, delete and prune.

Each operation is first run unarmed on a copy of a prepared repository to count its write
steps; then, for every step k and the fault kinds planned for it (disk full, I/O error,
timeout, torn write; see ``fault_plan``), it runs again on a fresh copy with the fault at step
k. After each fault:

* the operation raised a ``BackupError`` subclass whose message names the problem (or, for a
  fault the design swallows after the commit point, such as releasing the lease, it succeeded);
  no other exception type, no leaked file descriptor;
* a fresh, fault-free manager finds the repository clean (``check_repository``; temp leftovers
  and orphans allowed), every backup committed before restores equal and verifies, and a new
  backup is either not listed or complete;
* retrying the operation fault-free succeeds and leaves a clean repository.

``short_write`` leaves a torn object under its final key, which LocalStore and S3 never do
(both write atomically): its failures show what a store that tears writes would cost. A prune
lock left behind by a faulted prune (it blocks the next prune in the same process until its
TTL) is reported, not failed.

``python -m bench.tallies faults`` runs this module with every kind at every step
(``$PEAK_FAULTS_FULL=1``) and prints the totals per operation.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from src.infra.backup import BackupConfig, BackupError, BackupManager, RecoveryManager
from src.infra.backup.errors import RepositoryBusyError, RepositoryNotFoundError
from src.infra.backup.format.layout import chunk_key, fossil_key
from src.infra.backup.format.manifest import Collection
from src.infra.backup.repository.check import check_repository
from src.infra.backup.repository.locks import LeaseRecord
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.testing.faulty import FAULT_KINDS, FaultKind, FaultyStore

pytestmark = pytest.mark.timeout(240)
FULL_MATRIX_ENV = "PEAK_FAULTS_FULL"  # set: every fault kind at every write step
SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD")
MESSAGES: dict[FaultKind, tuple[str, ...]] = {
    "ENOSPC": ("disk full", "no space left"),
    "EIO": ("input/output error",),
    "timeout": ("timed out",),
    "short_write": ("short write",),
}


# -- data --------------------------------------------------------------------------------------


def trades(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` small trade dicts; ``seed`` makes them distinct between histories."""
    rng = random.Random(seed)
    return [
        {
            "id": j,
            "symbol": SYMBOLS[j % 4],
            "side": "buy" if j % 3 else "sell",
            "size": round(0.001 * (j % 100 + 1), 6),
            "price": 50000.0 + (j % 1000) * 0.5 + (rng.random() if seed else 0.0),
        }
        for j in range(count)
    ]


def bot_state(count: int, seed: int = 0, equity: float = 10000.0) -> dict[str, Any]:
    return {
        "portfolio": {
            "equity": equity,
            "as_of": datetime(2025, 12, 17, 10, 0, tzinfo=timezone.utc),
            "positions": [{"symbol": s, "size": 0.1 * (k + 1)} for k, s in enumerate(SYMBOLS)],
        },
        "history": trades(count, seed),
    }


def jsonl(lines: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(
        json.dumps({"t": i, "px": rng.random(), "note": f"fill {i}"}).encode() + b"\n"
        for i in range(lines)
    )


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    """A prepared repository (``template``), an operation on it, and what must survive."""

    name: str
    template: Path
    sources_root: Path
    op: Callable[[BackupManager], object]
    committed: dict[str, dict[str, Any]]  # backups that exist before the operation
    new_data: dict[str, Any] | None = None  # create: what the new backup holds
    target: str | None = None  # delete: the backup being deleted


def config_for(repo: Path, sources_root: Path) -> BackupConfig:
    return BackupConfig(
        backup_path=repo,
        retention_days=0,
        sources=["files/"],
        base_dir=sources_root,
        auto_prune=False,
    )


def make_sources(root: Path, seed: int) -> None:
    files = root / "files"
    (files / "live_runs").mkdir(parents=True)
    (files / "config.toml").write_text("[strategy]\nname = 'ma_crossover'\nfast = 10\n")
    (files / "live_runs" / "fills.jsonl").write_bytes(jsonl(6000, seed))


def create_scenario(base: Path, *, dedup: bool) -> Scenario:
    name = "create_dedup" if dedup else "create_first"
    template, sources = base / name / "repo", base / name / "src"
    make_sources(sources, seed=1)
    committed: dict[str, dict[str, Any]] = {}
    new_data = bot_state(40_000)
    if dedup:
        manager = BackupManager(config_for(template, sources))
        first = bot_state(40_000)
        committed[manager.create_backup(first)] = first
        # The next backup appends trades, changes the portfolio and one file.
        new_data = bot_state(40_500, equity=10250.5)
        with open(sources / "files" / "live_runs" / "fills.jsonl", "ab") as handle:
            handle.write(jsonl(200, seed=2))
    else:
        template.mkdir(parents=True)
    data = new_data
    return Scenario(
        name, template, sources, lambda m: m.create_backup(data, "pre_trade"), committed, data
    )


def delete_scenario(base: Path) -> Scenario:
    template, sources = base / "delete" / "repo", base / "delete" / "src"
    make_sources(sources, seed=3)
    manager = BackupManager(config_for(template, sources))
    committed = {}
    for n in range(3):
        data = bot_state(20_000 + 1000 * n, seed=n)
        committed[manager.create_backup(data)] = data
    target = sorted(committed)[1]
    return Scenario(
        "delete", template, sources, lambda m: m.delete_backup(target), committed, target=target
    )


def prune_scenario(base: Path) -> Scenario:
    """Format 2: unreferenced packs to collect and delete, a pack a pending collection named
    that a backup uses again (kept), an old temp leftover and a stale lease to remove."""
    template, sources = base / "prune" / "repo", base / "prune" / "src"
    make_sources(sources, seed=4)
    manager = BackupManager(config_for(template, sources))
    ids = []
    states = [bot_state(2_500, seed=10 + n, equity=float(n)) for n in range(4)]
    for n, data in enumerate(states):
        (sources / "files" / "config.toml").write_text(f"[strategy]\nversion = {n}\n")
        ids.append(manager.create_backup(data))
    manager.delete_backup(ids[0])
    manager.prune(grace=timedelta(0))  # collects and deletes what only ids[0] used
    manager.delete_backup(ids[1])  # what only it used: to collect
    store = LocalStore(template)
    repository = manager.repository
    manifest = repository.read_manifest(ids[3])
    cid = repository.entry_refs(manifest.entries[0])[0].id
    location = repository.pack_index.locate(cid)
    assert location is not None
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    record = Collection(old, packs=[location.pack], dead=[cid])  # (simulated) earlier prune
    store.put("gc/collection-20200101T000000000000ZP-00000.json", msgspec.json.encode(record))
    leftover = template / "packs" / location.pack[:2] / ".tmp-0123456789abcdef"
    leftover.write_bytes(b"partial")
    two_hours_ago = datetime.now().timestamp() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    lease = LeaseRecord("backup", "elsewhere", 4242, old, old + timedelta(minutes=10))
    store.put("locks/backup-0000000000000000.json", msgspec.json.encode(lease))
    committed = {ids[2]: states[2], ids[3]: states[3]}
    return Scenario("prune", template, sources, lambda m: m.prune(grace=timedelta(0)), committed)


def prune_format1_scenario(base: Path) -> Scenario:
    """Format 1: collected fossils to delete, unreferenced chunks to collect, a referenced
    fossil to bring back, an old temp leftover and a stale lease to remove."""
    template, sources = base / "prune" / "repo", base / "prune" / "src"
    make_sources(sources, seed=4)
    Repository.open(LocalStore(template), repo_format=1)
    manager = BackupManager(config_for(template, sources))
    ids = []
    states = [bot_state(2_500, seed=10 + n, equity=float(n)) for n in range(4)]
    for n, data in enumerate(states):
        (sources / "files" / "config.toml").write_text(f"[strategy]\nversion = {n}\n")
        ids.append(manager.create_backup(data))
    manager.delete_backup(ids[0])
    manager.prune(grace=timedelta(0))  # collects the chunks of ids[0]
    manager.delete_backup(ids[1])  # its chunks: to collect
    store = LocalStore(template)
    # A referenced chunk that a (simulated) earlier collection moved to fossils/.
    repository = manager.repository
    manifest = repository.read_manifest(ids[3])
    cid = repository.entry_refs(manifest.entries[0])[0].id
    store.move(chunk_key(cid), fossil_key(cid))
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    store.put(
        "gc/collection-20200101T000000000000Z.json", msgspec.json.encode(Collection(old, [cid]))
    )
    # Leftover of a crashed write, two hours old; a lease of a backup long gone.
    leftover = template / "chunks" / cid[:2] / ".tmp-0123456789abcdef"
    leftover.write_bytes(b"partial")
    two_hours_ago = datetime.now().timestamp() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    lease = LeaseRecord("backup", "elsewhere", 4242, old, old + timedelta(minutes=10))
    store.put("locks/backup-0000000000000000.json", msgspec.json.encode(lease))
    committed = {ids[2]: states[2], ids[3]: states[3]}
    op = lambda m: m.prune(grace=timedelta(0))  # noqa: E731
    return Scenario("prune_format1", template, sources, op, committed)


# -- running one case --------------------------------------------------------------------------


@dataclass
class Outcome:
    store: FaultyStore
    error: BackupError | None = None
    result: object = None


@dataclass
class Tally:
    steps: int = 0
    planned: list[int] = field(default_factory=list)  # the steps faulted with this kind
    injected: Counter[str] = field(default_factory=Counter)
    unclean: int = 0
    absorbed: int = 0  # faults the operation survived by design (after its commit point)
    new_after_error: int = 0  # create raised, but its backup was committed (e.g. a timeout)
    lock_leaks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_op(scenario: Scenario, repo: Path, arm: tuple[FaultKind, int] | None) -> Outcome:
    """Run the scenario's operation on ``repo`` through a FaultyStore (opened inside the run,
    so a first backup's ``repo.json`` write is one of its steps)."""
    manager = BackupManager(config_for(repo, scenario.sources_root))
    store = FaultyStore(LocalStore(repo))
    if arm is not None:
        store.arm(*arm)
    outcome = Outcome(store)
    try:
        manager._repository = Repository.open(store, compression=manager.config.compression_setting)
        outcome.result = scenario.op(manager)
    except BackupError as exc:
        outcome.error = exc
    return outcome


def file_contents(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in (root / "files").rglob("*")
        if path.is_file()
    }


def audit(scenario: Scenario, repo: Path, known: set[str], label: str) -> tuple[list[str], bool]:
    """Fault-free checks on ``repo``: (problems, clean). ``known`` = ids that may be listed
    without being checked as new."""
    problems: list[str] = []
    manager = BackupManager(config_for(repo, scenario.sources_root))
    recovery = RecoveryManager(manager)
    try:
        try:
            report = check_repository(manager.repository)
        except RepositoryNotFoundError:
            # The fault hit the very first write (repo.json): nothing exists, nothing to check.
            if scenario.committed:
                return [f"{label}: the repository vanished"], False
            return problems, True
        listed = {info.backup_id for info in manager.list_backups()}
    except BackupError as exc:
        return [f"{label}: the repository cannot be checked: {exc!r}"], False
    if not report.clean:
        problems.append(f"{label}: check not clean: {report.to_json()}")
    for backup_id, data in scenario.committed.items():
        if backup_id == scenario.target and backup_id not in listed:
            continue
        try:
            if manager.load_backup(backup_id) != data:
                problems.append(f"{label}: {backup_id} restores different data")
        except BackupError as exc:
            problems.append(f"{label}: {backup_id} does not restore: {exc!r}")
        if not recovery.verify_backup(backup_id):
            problems.append(f"{label}: {backup_id} does not verify")
    for backup_id in sorted(listed - known):
        problems.extend(check_new_backup(scenario, manager, backup_id, label))
    return problems, report.clean


def check_new_backup(
    scenario: Scenario, manager: BackupManager, backup_id: str, label: str
) -> list[str]:
    if scenario.new_data is None:
        return [f"{label}: unexpected new backup {backup_id}"]
    problems = []
    try:
        if manager.load_backup(backup_id) != scenario.new_data:
            problems.append(f"{label}: new backup {backup_id} holds different data")
        repository = manager.repository
        manifest = repository.read_manifest(backup_id)
        files = {e.name: repository.read_entry(e) for e in manifest.entries if e.kind == "file"}
        if files != file_contents(scenario.sources_root):
            problems.append(f"{label}: new backup {backup_id} holds different files")
    except BackupError as exc:
        problems.append(f"{label}: new backup {backup_id} is incomplete: {exc!r}")
    if not RecoveryManager(manager).verify_backup(backup_id):
        problems.append(f"{label}: new backup {backup_id} does not verify")
    return problems


def fault_plan(
    write_log: list[tuple[str, str]], *, full: bool = False
) -> dict[int, tuple[FaultKind, ...]]:
    """The fault kinds to inject at each write step (1-based) of an operation.

    Coverage argument. A write step is identified by its operation and the first part of its
    key (``move chunks/...``, ``delete fossils/...``). Consecutive steps of the same shape are
    one loop in the code (prune moves 60 chunks to fossils/, then deletes 60 fossils): inside
    such a run, a fault differs from its neighbours only in how much of the loop was done
    before it. So:

    * every step that is alone, or first or last of its run, gets all four kinds; this covers
      each (operation, key prefix, kind) that occurs, at the start and at the end of each loop;
    * every other step gets one kind, in rotation (step k: kind k mod 4), so every step is
      still faulted, and each kind lands at every fourth step of each long run.

    Operations without repeated steps (create, delete) thus get the full matrix. Prune (126
    steps today) gets 12 steps x 4 kinds + 114 x 1 instead of 126 x 4. ``full=True``: all
    kinds at every step (``python -m bench.tallies faults``).
    """
    shapes = [(op, key.split("/", 1)[0]) for op, key in write_log]
    plan: dict[int, tuple[FaultKind, ...]] = {}
    for index, shape in enumerate(shapes):
        inside_run = 0 < index < len(shapes) - 1 and shapes[index - 1] == shape == shapes[index + 1]
        step = index + 1
        plan[step] = FAULT_KINDS if full or not inside_run else (FAULT_KINDS[step % 4],)
    return plan


def run_scenario(scenario: Scenario, work: Path, kind: FaultKind) -> Tally:
    """Fault ``kind`` at each write step ``fault_plan`` gives it, one fresh copy each."""
    tally = Tally()
    # Count the write steps (and find the commit point) on an unarmed copy.
    probe = work / "probe"
    shutil.copytree(scenario.template, probe)
    dry = run_op(scenario, probe, None)
    assert dry.error is None, dry.error
    if scenario.new_data is not None:  # the large entry must go through chunk lists
        manifest = Repository.open(LocalStore(probe), create=False).read_manifest(str(dry.result))
        assert any(entry.lists for entry in manifest.entries), "no chunk lists in the backup"
    write_log = list(dry.store.write_log)
    tally.steps = len(write_log)
    # The commit point: the manifest's write, or a delete's removal of it.
    commit = next(
        (
            i + 1
            for i, (op, key) in enumerate(write_log)
            if op in ("put", "delete") and key.startswith("snapshots/")
        ),
        None,
    )
    before = set(scenario.committed)
    plan = fault_plan(write_log, full=bool(os.environ.get(FULL_MATRIX_ENV)))
    assert set(plan) == set(range(1, tally.steps + 1))  # every step is faulted by some kind
    tally.planned = [step for step, kinds in plan.items() if kind in kinds]
    for step in tally.planned:
        repo = work / f"step{step}"
        shutil.copytree(scenario.template, repo)
        label = f"{scenario.name} {kind} at step {step}/{tally.steps} {write_log[step - 1]}"
        fds = open_fds()
        try:
            outcome = run_op(scenario, repo, (kind, step))
        except Exception as exc:  # anything but a BackupError is a finding
            tally.problems.append(f"{label}: leaked {type(exc).__name__}: {exc}")
            continue
        if open_fds() != fds:
            tally.problems.append(f"{label}: {open_fds() - fds} file descriptors leaked")
        if len(outcome.store.injected) != 1:
            tally.problems.append(f"{label}: fault fired {len(outcome.store.injected)} times")
            continue
        tally.injected[kind] += 1
        if outcome.error is None:
            # Allowed only where the design swallows it: after the commit point (releasing a
            # backup's lease, renewing the snapshots token after a delete) or when prune
            # releases its lock.
            tally.absorbed += 1
            if not scenario.name.startswith("prune") and (commit is None or step <= commit):
                tally.problems.append(f"{label}: fault before the commit point swallowed")
        else:
            message = str(outcome.error).lower()
            if not any(marker in message for marker in MESSAGES[kind]):
                tally.problems.append(f"{label}: unclear message {outcome.error!s}")
        problems, clean = audit(scenario, repo, before, label)
        tally.unclean += not clean
        new_keys = set(LocalStore(repo).list("snapshots/")) - {
            f"snapshots/{i}.json" for i in before
        }
        if new_keys and outcome.error is not None:
            tally.new_after_error += 1
            if commit is None or step < commit:
                problems.append(f"{label}: a backup was committed before the commit step")
        # Retry fault-free: it must succeed and leave everything intact.
        tally.problems.extend(problems + retry(scenario, repo, label, tally))
        shutil.rmtree(repo)
    return tally


def retry(scenario: Scenario, repo: Path, label: str, tally: Tally) -> list[str]:
    manager = BackupManager(config_for(repo, scenario.sources_root))
    try:
        known = {info.backup_id for info in manager.list_backups()}
        if scenario.target is None or scenario.target in known:
            scenario.op(manager)  # (else the faulted delete went through: a timeout)
    except RepositoryBusyError as exc:
        # A prune lock left behind blocks the next prune until it expires (PRUNE_LOCK_TTL) or
        # its process dies: reported, not counted as damage.
        tally.lock_leaks.append(f"{label}: {exc}")
        return []
    except BackupError as exc:
        return [f"{label}: fault-free retry failed: {exc!r}"]
    problems, _ = audit(scenario, repo, known, f"{label} (after retry)")
    return problems


SCENARIOS: dict[str, Callable[[Path], Scenario]] = {
    "create_first": lambda base: create_scenario(base, dedup=False),
    "create_dedup": lambda base: create_scenario(base, dedup=True),
    "delete": delete_scenario,
    "prune": prune_scenario,
    "prune_format1": prune_format1_scenario,
}
TOTALS: dict[str, Tally] = {}  # per operation, for bench/tallies.py


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Scenario]:
    """Each scenario's template, built on first use and shared by its fault kinds."""
    return {}


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_at_every_write_step(
    name: str,
    kind: FaultKind,
    scenarios: dict[str, Scenario],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    if name not in scenarios:
        scenarios[name] = SCENARIOS[name](tmp_path_factory.mktemp(name))
    scenario = scenarios[name]
    tally = run_scenario(scenario, tmp_path, kind)
    total = TOTALS.setdefault(name, Tally())
    total.steps = tally.steps
    total.injected.update(tally.injected)
    total.unclean += tally.unclean
    total.absorbed += tally.absorbed
    total.new_after_error += tally.new_after_error
    total.lock_leaks.extend(tally.lock_leaks)
    total.problems.extend(tally.problems)
    assert tally.steps > 0
    assert tally.planned, f"{kind} is never injected into {name}"
    assert sum(tally.injected.values()) == len(tally.planned)
    assert tally.unclean == 0
    assert tally.problems == [], "\n".join(tally.problems)
