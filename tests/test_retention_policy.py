"""Retention policies (``retention.apply_policy``): hand-checked cases across DST changes and
month ends, hypothesis properties, the ``[backup.retention]`` config, the manager and ``prune``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.app.config import load_backup_config
from src.infra.backup.app.config_sections import parse_retention
from src.infra.backup.errors import ConfigError
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.policy.retention import (
    COUNT_RULES,
    DEFAULT_POLICY,
    Decision,
    RetentionPolicy,
    SnapshotRef,
    apply_policy,
)
from src.infra.backup.repository.snapshot_writer import DataInput
from tests.helpers import run_cli_inline

BERLIN = "Europe/Berlin"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def decide(
    snapshots: list[SnapshotRef],
    policies: dict[str, RetentionPolicy],
    now: datetime,
    protect: tuple[str, ...] = (),
) -> dict[str, Decision]:
    decisions = apply_policy(snapshots, policies, now, protect=protect)
    assert [d.backup_id for d in decisions] == [s.backup_id for s in snapshots]
    return {d.backup_id: d for d in decisions}


# -- hand-checked cases --------------------------------------------------------------------------
# Each case: policy, now, snapshots (id, UTC time, tags) and the expected reason of every kept
# backup (None: forgotten). Local Berlin times are in the comments.

CASES: list[
    tuple[str, RetentionPolicy, str, list[tuple[str, str, dict[str, str]]], dict[str, str | None]]
] = [
    (
        "daily across spring forward (2025-03-30 has 23 hours)",
        RetentionPolicy(keep_daily=3, timezone=BERLIN),
        "2025-03-31T12:00Z",
        [
            ("d1", "2025-03-29T22:30Z", {}),  # Sat 29 23:30 CET
            ("d2", "2025-03-29T23:30Z", {}),  # Sun 30 00:30 CET
            ("d3", "2025-03-30T21:30Z", {}),  # Sun 30 23:30 CEST
            ("d4", "2025-03-30T22:30Z", {}),  # Mon 31 00:30 CEST
        ],
        {
            "d4": "newest scheduled backup; daily 2025-03-31",
            "d3": "daily 2025-03-30",
            "d2": None,
            "d1": "daily 2025-03-29",
        },
    ),
    (
        "hourly across spring forward (there is no 02:00 hour)",
        RetentionPolicy(keep_hourly=3, timezone=BERLIN),
        "2025-03-30T12:00Z",
        [
            ("h1", "2025-03-30T00:10Z", {}),  # 01:10 CET
            ("h2", "2025-03-30T00:50Z", {}),  # 01:50 CET
            ("h3", "2025-03-30T01:10Z", {}),  # 03:10 CEST
            ("h4", "2025-03-30T01:20Z", {}),  # 03:20 CEST
        ],
        {
            "h4": "newest scheduled backup; hourly 2025-03-30 03:00",
            "h3": None,
            "h2": "hourly 2025-03-30 01:00",
            "h1": None,
        },
    ),
    (
        "hourly across fall back (02:00-03:00 happens twice: one wall-clock bucket, as restic)",
        RetentionPolicy(keep_hourly=3, timezone=BERLIN),
        "2025-10-26T12:00Z",
        [
            ("f0", "2025-10-25T23:30Z", {}),  # 01:30 CEST
            ("f1", "2025-10-26T00:15Z", {}),  # 02:15 CEST
            ("f2", "2025-10-26T01:15Z", {}),  # 02:15 CET
            ("f3", "2025-10-26T01:45Z", {}),  # 02:45 CET
            ("f4", "2025-10-26T02:15Z", {}),  # 03:15 CET
        ],
        {
            "f4": "newest scheduled backup; hourly 2025-10-26 03:00",
            "f3": "hourly 2025-10-26 02:00",
            "f2": None,
            "f1": None,
            "f0": "hourly 2025-10-26 01:00",
        },
    ),
    (
        "daily across fall back (2025-10-26 has 25 hours), with keep_within",
        RetentionPolicy(keep_daily=2, keep_within=timedelta(days=1), timezone=BERLIN),
        "2025-10-27T12:00Z",
        [
            ("g1", "2025-10-25T21:30Z", {}),  # Sat 25 23:30 CEST
            ("g2", "2025-10-25T22:30Z", {}),  # Sun 26 00:30 CEST
            ("g3", "2025-10-26T22:30Z", {}),  # Sun 26 23:30 CET
            ("g4", "2025-10-26T23:30Z", {}),  # Mon 27 00:30 CET
        ],
        {
            "g4": "newest scheduled backup; daily 2025-10-27; within 1d",
            "g3": "daily 2025-10-26; within 1d",
            "g2": None,
            "g1": None,
        },
    ),
    (
        "month ends: Jan 31 and Feb 28 (2025), local midnight is 23:00 UTC",
        RetentionPolicy(keep_daily=2, keep_monthly=3, timezone=BERLIN),
        "2025-03-15T12:00Z",
        [
            ("m1", "2025-01-31T12:00Z", {}),  # Jan 31 13:00
            ("m2", "2025-01-31T23:30Z", {}),  # Feb 1 00:30
            ("m3", "2025-02-28T22:59Z", {}),  # Feb 28 23:59
            ("m4", "2025-02-28T23:00Z", {}),  # Mar 1 00:00
        ],
        {
            "m4": "newest scheduled backup; daily 2025-03-01; monthly 2025-03",
            "m3": "daily 2025-02-28; monthly 2025-02",
            "m2": None,
            "m1": "monthly 2025-01",
        },
    ),
    (
        "leap day Feb 29 2024, and a year end",
        RetentionPolicy(keep_daily=2, keep_monthly=2, keep_yearly=2, timezone=BERLIN),
        "2024-03-10T00:00Z",
        [
            ("l1", "2023-12-31T22:59Z", {}),  # Dec 31 2023 23:59
            ("l2", "2024-02-28T12:00Z", {}),  # Feb 28 13:00
            ("l3", "2024-02-29T22:30Z", {}),  # Feb 29 23:30
            ("l4", "2024-02-29T23:30Z", {}),  # Mar 1 00:30
        ],
        {
            "l4": "newest scheduled backup; daily 2024-03-01; monthly 2024-03; yearly 2024",
            "l3": "daily 2024-02-29; monthly 2024-02",
            "l2": None,
            "l1": "yearly 2023",
        },
    ),
    (
        "ISO weeks across the year end, in local time",
        RetentionPolicy(keep_weekly=2, timezone=BERLIN),
        "2026-01-05T00:00Z",
        [
            ("w1", "2025-12-22T10:00Z", {}),  # Mon Dec 22: 2025-W52
            ("w2", "2025-12-28T23:00Z", {}),  # Mon Dec 29 00:00: 2026-W01 (Sunday in UTC)
            ("w3", "2025-12-29T01:00Z", {}),  # Mon Dec 29 02:00: 2026-W01
        ],
        {
            "w3": "newest scheduled backup; weekly 2026-W01",
            "w2": None,
            "w1": "weekly 2025-W52",
        },
    ),
    (
        "every rule that keeps a backup is listed",
        RetentionPolicy(keep_daily=3, keep_within=timedelta(days=30), timezone=BERLIN),
        "2025-12-17T20:00Z",
        [
            ("y0", "2025-12-18T09:00Z", {}),  # dated in the future
            ("y1", "2025-12-17T09:00Z", {}),
            ("y2", "2025-12-17T08:00Z", {}),
            ("y3", "2025-12-16T08:00Z", {}),
            ("y4", "2025-10-01T08:00Z", {}),
            ("y5", "2025-09-30T08:00Z", {}),
        ],
        {
            "y0": "dated in the future",
            "y1": "newest scheduled backup; daily 2025-12-17; within 30d",
            "y2": "within 30d",
            "y3": "daily 2025-12-16; within 30d",
            "y4": "daily 2025-10-01",
            "y5": None,
        },
    ),
    (
        "keep_last, keep_tags (key, key=value), a future backup is not counted",
        RetentionPolicy(keep_last=2, keep_tags=("release", "order=42"), timezone="UTC"),
        "2025-12-17T12:00Z",
        [
            ("x0", "2025-12-20T00:00Z", {}),
            ("x1", "2025-12-17T11:00Z", {}),
            ("x2", "2025-12-17T10:00Z", {}),
            ("x3", "2025-12-16T10:00Z", {"release": "v1"}),
            ("x4", "2025-12-15T10:00Z", {"order": "41"}),
            ("x5", "2025-12-14T10:00Z", {"order": "42"}),
            ("x6", "2025-12-13T10:00Z", {}),
        ],
        {
            "x0": "dated in the future",
            "x1": "newest scheduled backup; last 1",
            "x2": "last 2",
            "x3": "tag release",
            "x4": None,
            "x5": "tag order=42",
            "x6": None,
        },
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hand_checked_cases(case: Any) -> None:
    _name, policy, now, rows, expected = case
    snapshots = [SnapshotRef(i, "scheduled", utc(t), tags) for i, t, tags in rows]
    decisions = decide(snapshots, {"scheduled": policy}, utc(now))
    got = {i: (d.reason if d.keep else None) for i, d in decisions.items()}
    assert got == expected
    for decision in decisions.values():
        assert decision.reason


def test_forget_reason_names_the_policy_and_protect_keeps() -> None:
    now = utc("2025-12-17T12:00Z")
    snapshots = [SnapshotRef(f"s{i}", "scheduled", now - timedelta(days=i)) for i in range(4)]
    policy = RetentionPolicy(keep_last=1, keep_within=timedelta(hours=12))
    decisions = decide(snapshots, {DEFAULT_POLICY: policy}, now, protect=("s3",))
    assert decisions["s0"] == Decision("s0", True, "newest scheduled backup; last 1; within 12h")
    assert decisions["s1"] == Decision("s1", False, "no rule keeps it (last 1, within 12h)")
    assert decisions["s3"] == Decision("s3", True, "protected")


def test_policy_per_type_default_and_types_without_policy() -> None:
    now = utc("2025-12-17T12:00Z")
    snapshots = [
        SnapshotRef(f"{kind}_{i}", kind, now - timedelta(days=i))
        for kind in ("pre_trade", "scheduled", "manual")
        for i in range(10)
    ]
    policies = {
        "pre_trade": RetentionPolicy(keep_within=timedelta(days=7)),
        DEFAULT_POLICY: RetentionPolicy(keep_last=2),
    }
    decisions = decide(snapshots, policies, now)
    kept = {i for i, d in decisions.items() if d.keep}
    assert kept == {f"pre_trade_{i}" for i in range(8)} | {
        "scheduled_0",
        "scheduled_1",
        "manual_0",
        "manual_1",
    }
    # Without a default, a type without its own policy keeps everything.
    only = decide(snapshots, {"pre_trade": policies["pre_trade"]}, now)
    assert all(only[f"manual_{i}"].keep for i in range(10))
    assert only["manual_5"].reason == "no retention policy for manual"


# -- properties ----------------------------------------------------------------------------------

NOW = utc("2025-10-26T03:00Z")  # just after the fall-back change in Berlin
TYPES = ("pre_trade", "scheduled")
TAGS = ("release", "order=42")


@st.composite
def snapshot_lists(draw: st.DrawFn, future: bool = False) -> list[SnapshotRef]:
    count = draw(st.integers(0, 40))
    low = -3 * 86400 if future else 0
    snapshots = []
    for index in range(count):
        seconds = draw(st.integers(low, 400 * 86400))
        tags = draw(st.sampled_from([{}, {"release": "v1"}, {"order": "42"}, {"order": "7"}]))
        snapshots.append(
            SnapshotRef(
                f"b{index}", draw(st.sampled_from(TYPES)), NOW - timedelta(seconds=seconds), tags
            )
        )
    return snapshots


counts = st.one_of(st.none(), st.integers(1, 8))


@st.composite
def policies(draw: st.DrawFn) -> RetentionPolicy:
    policy = RetentionPolicy(
        **{name: draw(counts) for name in COUNT_RULES},
        keep_within=draw(st.one_of(st.none(), st.integers(1, 90).map(lambda d: timedelta(d)))),
        keep_tags=tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))),
        timezone=draw(st.sampled_from([BERLIN, "UTC", "America/New_York", "Australia/Sydney"])),
    )
    if policy.empty:
        policy = replace(policy, keep_last=1)
    return policy


def policy_maps(draw: st.DrawFn) -> dict[str, RetentionPolicy]:
    mapping = {DEFAULT_POLICY: draw(policies())}
    if draw(st.booleans()):
        mapping["pre_trade"] = draw(policies())
    return mapping


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.data())
def test_never_forgets_the_newest_of_a_type_nor_future_backups(data: st.DataObject) -> None:
    snapshots = data.draw(snapshot_lists(future=True))
    mapping = policy_maps(data.draw)
    decisions = decide(snapshots, mapping, NOW)
    for kind in TYPES:
        current = [s for s in snapshots if s.backup_type == kind and s.time_utc <= NOW]
        if current:
            newest = max(current, key=lambda s: (s.time_utc, s.backup_id))
            assert decisions[newest.backup_id].keep
            assert f"newest {kind} backup" in decisions[newest.backup_id].reason
    for snap in snapshots:
        if snap.time_utc > NOW:
            assert decisions[snap.backup_id].keep
            assert "dated in the future" in decisions[snap.backup_id].reason


@PROPERTY
@given(st.data())
def test_applying_twice_changes_nothing(data: st.DataObject) -> None:
    snapshots = data.draw(snapshot_lists(future=True))
    mapping = policy_maps(data.draw)
    first = decide(snapshots, mapping, NOW)
    remaining = [s for s in snapshots if first[s.backup_id].keep]
    second = decide(remaining, mapping, NOW)
    assert all(d.keep for d in second.values()), [d for d in second.values() if not d.keep]


@PROPERTY
@given(st.data())
def test_raising_a_keep_count_never_forgets_more(data: st.DataObject) -> None:
    snapshots = data.draw(snapshot_lists(future=True))
    policy = data.draw(policies())
    rule = data.draw(st.sampled_from(COUNT_RULES))
    raised = replace(policy, **{rule: (getattr(policy, rule) or 0) + data.draw(st.integers(1, 5))})
    before = decide(snapshots, {DEFAULT_POLICY: policy}, NOW)
    after = decide(snapshots, {DEFAULT_POLICY: raised}, NOW)
    forgotten_before = {i for i, d in before.items() if not d.keep}
    forgotten_after = {i for i, d in after.items() if not d.keep}
    assert forgotten_after <= forgotten_before


@PROPERTY
@given(st.data())
def test_future_backups_are_not_counted(data: st.DataObject) -> None:
    """Adding backups dated in the future changes no decision (nor reason) of the others."""
    snapshots = data.draw(snapshot_lists())
    mapping = policy_maps(data.draw)
    future = [
        SnapshotRef(
            f"future{i}",
            data.draw(st.sampled_from(TYPES)),
            NOW + timedelta(seconds=data.draw(st.integers(1, 5 * 86400))),
        )
        for i in range(data.draw(st.integers(1, 5)))
    ]
    alone = decide(snapshots, mapping, NOW)
    mixed = decide(snapshots + future, mapping, NOW)
    assert {i: mixed[i] for i in alone} == alone
    assert all(mixed[f.backup_id].keep for f in future)


def test_plan_time_for_10000_backups() -> None:
    """Retention after every ``create_backup`` must stay cheap: time the pure function on
    10,000 backups (printed with ``-s``; no timing assertion)."""
    now = utc("2025-12-17T12:00Z")
    snapshots = [
        SnapshotRef(f"b{i}", TYPES[i % 2], now - timedelta(minutes=53 * i), {"n": str(i)})
        for i in range(10_000)
    ]
    policy = RetentionPolicy(
        keep_last=10,
        keep_hourly=48,
        keep_daily=30,
        keep_weekly=12,
        keep_monthly=12,
        keep_yearly=5,
        keep_within=timedelta(days=7),
        keep_tags=("release",),
        timezone=BERLIN,
    )
    started = time.perf_counter()
    decisions = apply_policy(snapshots, {DEFAULT_POLICY: policy}, now)
    elapsed = time.perf_counter() - started
    kept = sum(d.keep for d in decisions)
    print(f"\nretention plan: 10,000 backups in {elapsed * 1000:.1f} ms ({kept} kept)")
    assert len(decisions) == 10_000


# -- config --------------------------------------------------------------------------------------

RETENTION_TOML = """
[backup]
backup_path = "./repo"
retention_days = 3

[backup.retention]
timezone = "Europe/Berlin"
keep_last = 2
keep_daily = 7

[backup.retention.pre_trade]
keep_within = "7d"
keep_tags = ["release"]

[backup.retention.scheduled]
keep_daily = 30
keep_monthly = 12
timezone = "UTC"
"""


def test_config_file_with_retention_tables(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(RETENTION_TOML)
    config = load_backup_config(tmp_path / "config.toml")
    assert config.retention == {
        DEFAULT_POLICY: RetentionPolicy(keep_last=2, keep_daily=7, timezone=BERLIN),
        "pre_trade": RetentionPolicy(
            keep_within=timedelta(days=7), keep_tags=("release",), timezone=BERLIN
        ),
        "scheduled": RetentionPolicy(keep_daily=30, keep_monthly=12, timezone="UTC"),
    }
    (tmp_path / "config.toml").write_text("[backup]\nretention_days = 3\n")
    assert load_backup_config(tmp_path / "config.toml").retention is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "no retention rule"),
        ({"timezone": BERLIN}, "no retention rule"),
        ({"keep_dayly": 3}, "unknown key 'keep_dayly' (did you mean 'keep_daily'?)"),
        ({"keep_daily": 0}, "keep_daily = 0"),
        ({"keep_last": -1}, "keep_last = -1"),
        ({"keep_daily": "3"}, "keep_daily = '3' is invalid"),
        ({"keep_hourly": True}, "keep_hourly = True is invalid"),
        ({"keep_within": "30x"}, "keep_within = '30x' is invalid"),
        ({"keep_within": "0d"}, "keep_within"),
        ({"keep_tags": [""]}, "keep_tags"),
        ({"keep_last": 1, "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"keep_last": 1, "pre_trade": {}}, "[backup.retention.pre_trade]: no retention rule"),
        ({"pre_trade": {"keep_lats": 1}}, "[backup.retention.pre_trade]: unknown key 'keep_lats'"),
        ({"Pre Trade": {"keep_last": 1}}, "is not a backup type"),
        ({"timezone": 5, "pre_trade": {"keep_last": 1}}, "timezone = 5"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        BackupConfig.from_table({"retention": table})
    assert message in str(info.value)
    assert "retention" in str(info.value)


def test_config_refuses_a_non_table_and_accepts_parsed_policies() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        BackupConfig.from_table({"retention": 30})
    config = BackupConfig(retention={"keep_last": 3, "manual": {"keep_daily": 2}})  # type: ignore[dict-item]
    assert config.retention == parse_retention({"keep_last": 3, "manual": {"keep_daily": 2}})
    assert replace(config).retention == config.retention  # idempotent
    with pytest.raises(ConfigError, match="no retention rule"):
        BackupConfig(retention={DEFAULT_POLICY: RetentionPolicy()})


# -- manager and CLI -----------------------------------------------------------------------------


def backdated(manager: BackupManager, backup_type: str, days_ago: float, now: datetime) -> str:
    when = now - timedelta(days=days_ago)
    backup_id = f"{backup_type}_{when:%Y%m%d_%H%M%S}"
    payload = encode_value({"days_ago": days_ago})
    manager.open_repository(create=True).create_snapshot_as(
        backup_id, when, backup_type, [DataInput("state", payload, ENCODING_NAME)]
    )
    return backup_id


def test_manager_plans_and_applies_the_policy(repo_dir: Path) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    config = BackupConfig(
        backup_path=repo_dir,
        retention={"keep_last": 2, "pre_trade": {"keep_within": "3d"}},  # type: ignore[dict-item]
        auto_prune=False,
    )
    manager = BackupManager(config)
    assert manager.plan_retention() == []  # no repository yet
    old = {days: backdated(manager, "pre_trade", days, now) for days in (1, 2, 5, 9)}
    sched = {days: backdated(manager, "scheduled", days, now) for days in (1, 2, 5, 9)}
    plan = {d.backup_id: d for d in manager.plan_retention()}
    assert {i for i, d in plan.items() if not d.keep} == {old[5], old[9], sched[5], sched[9]}
    assert plan[old[2]].reason == "within 3d"
    assert plan[sched[2]].reason == "last 2"
    assert len(manager.list_backups()) == 8  # a plan deletes nothing

    new = manager.create_backup({"x": 1}, backup_type="scheduled")  # applies the policy
    remaining = {b.backup_id for b in manager.list_backups()}
    assert remaining == {new, sched[1], old[1], old[2]}


def test_retention_days_is_the_fallback(repo_dir: Path) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manager = BackupManager(BackupConfig(backup_path=repo_dir, retention_days=3))
    ids = [backdated(manager, "manual", days, now) for days in (1, 5)]
    plan = {d.backup_id: d for d in manager.plan_retention()}
    assert plan[ids[0]].keep and not plan[ids[1]].keep
    assert manager.apply_retention(auto_prune=False) == [ids[1]]


def test_prune_dry_run_lists_decisions_then_prune_applies_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{repo}"\n\n[backup.retention]\nkeep_last = 2\n'
    )
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0))
    ids = [backdated(manager, "scheduled", days, now) for days in (1, 2, 3)]

    text = run_cli_inline("prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "Dry run: retention: 3 backups, 2 kept, 1 would be forgotten" in lines[0]
    assert lines[1].split() == ["keep", ids[0], "newest", "scheduled", "backup;", "last", "1"]
    assert lines[2].split() == ["keep", ids[1], "last", "2"]
    assert lines[3].split()[:3] == ["forget", ids[2], "no"]
    assert lines[4].startswith("Dry run: ") and "chunks in use" in lines[4]
    assert {b.backup_id for b in manager.list_backups()} == set(ids)

    result = run_cli_inline("--json", "prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert [(r["backup_id"], r["keep"]) for r in report["retention"]] == [
        (ids[0], True),
        (ids[1], True),
        (ids[2], False),
    ]
    assert report["retention"][1]["reason"] == "last 2"

    done = run_cli_inline("prune", "--grace", "0s", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "retention: 3 backups, 2 kept, 1 forgotten (deleted)" in done.stdout
    assert "chunks in use" in done.stdout
    assert {b.backup_id for b in manager.list_backups()} == set(ids[:2])
