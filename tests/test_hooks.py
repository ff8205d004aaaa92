"""``[backup.hooks]`` and ``[[backup.command_sources]]``: config validation, and real processes
run around ``create_backup`` and streamed by ``open_command_source`` (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    ConfigError,
    RecoveryManager,
    load_backup_config,
)
from src.infra.backup.app.config_sections import HooksSettings
from src.infra.backup.app.hooks import run_hooks
from src.infra.backup.app.outcome import BackupOutcome
from src.infra.backup.errors import CommandSourceError, HookError
from src.infra.backup.files.commands import open_command_source
from src.infra.backup.files.settings import CommandSourceSettings, HookCommand
from tests.helpers import run_cli_inline

PY = sys.executable
MISSING_PROGRAM = "peak-backup-no-such-program-7f3a"
# Writes the PEAK_BACKUP_* variables it sees as one JSON line to the file named by argv[1].
DUMP_ENV = (
    "import json, os, sys\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith('PEAK_BACKUP_')}\n"
    "env['cwd'] = os.getcwd()\n"
    "with open(sys.argv[1], 'a') as f: f.write(json.dumps(env) + '\\n')\n"
)


def toml_list(*commands: str | list[str]) -> str:
    """A TOML array of commands (JSON strings and arrays are valid TOML)."""
    return json.dumps(list(commands))


def bot_config(tmp_path: Path, body: str) -> BackupConfig:
    """Write ``bot/config.toml`` (repository ``bot/backups``, retention off) and load it."""
    bot = tmp_path / "bot"
    bot.mkdir(exist_ok=True)
    path = bot / "config.toml"
    path.write_text('[backup]\nbackup_path = "backups"\nretention_days = 0\n' + body)
    return load_backup_config(path)


def read_env_lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def process_gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_pid(path: Path, within: float = 5.0) -> int:
    deadline = time.monotonic() + within
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.02)
    return int(path.read_text())


# -- config ------------------------------------------------------------------------------------


def test_hooks_and_command_sources_are_parsed(tmp_path: Path) -> None:
    config = bot_config(
        tmp_path,
        "sqlite_detect = false\n"
        'sqlite_check = "full"\n'
        "[backup.hooks]\n"
        """before = ["sh -c 'echo hi'", ["python3", "dump.py"]]\n"""
        'after = ["notify-send backup"]\n'
        'timeout = "90s"\n'
        "[[backup.command_sources]]\n"
        'name = "db/trading.sql"\n'
        'command = ["pg_dump", "trading"]\n'
        'timeout = "30m"\n'
        "[[backup.command_sources]]\n"
        'name = "positions.json"\n'
        'command = "curl -s localhost:8080/positions"\n',
    )
    assert config.hooks == HooksSettings(
        before=(HookCommand("sh -c 'echo hi'"), HookCommand(("python3", "dump.py"))),
        after=(HookCommand("notify-send backup"),),
        timeout=timedelta(seconds=90),
    )
    assert config.hooks.before[0].args == ["/bin/sh", "-c", "sh -c 'echo hi'"]
    assert config.hooks.before[1].args == ["python3", "dump.py"]
    assert config.command_sources == (
        CommandSourceSettings(
            "db/trading.sql", HookCommand(("pg_dump", "trading")), timedelta(minutes=30)
        ),
        CommandSourceSettings(
            "positions.json", HookCommand("curl -s localhost:8080/positions"), timedelta(hours=1)
        ),
    )
    assert config.sqlite_detect is False
    assert config.sqlite_check == "full"
    assert config.has_file_sources


def test_defaults() -> None:
    config = BackupConfig()
    assert config.hooks == HooksSettings((), (), timedelta(minutes=5))
    assert config.command_sources == ()
    assert config.sqlite_detect is True
    assert config.sqlite_check == "quick"
    # Parsed settings pass through the constructor (e.g. dataclasses.replace) unchanged.
    parsed = BackupConfig.from_table({"hooks": {"after": ["true"]}, "sqlite_check": "full"})
    again = BackupConfig(hooks=parsed.hooks, sqlite_check="full")
    assert again.hooks == parsed.hooks


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('[backup.hooks]\nbefor = ["true"]\n', ["befor", "before", "after, before, timeout"]),
        ('[backup.hooks]\nbefore = [""]\n', ["before[0]"]),
        ('[backup.hooks]\nbefore = ["true", "   "]\n', ["before[1]"]),
        ("[backup.hooks]\nafter = [[]]\n", ["after[0]"]),
        ('[backup.hooks]\nbefore = [["python3", 3]]\n', ["before[0][1]", "3"]),
        ("[backup.hooks]\nbefore = [3]\n", ["before[0]"]),
        ('[backup.hooks]\nafter = "notify-send x"\n', ["after", "list of commands"]),
        ('[backup.hooks]\ntimeout = "5 minutes"\n', ["timeout", "5 minutes"]),
        ('[backup.hooks]\ntimeout = "0s"\n', ["timeout", "positive"]),
        ("[backup.hooks]\ntimeout = 300\n", ["timeout", "300"]),
        ('hooks = "before"\n', ["[backup.hooks]", "table"]),
        ('sqlite_check = "fast"\n', ["sqlite_check", "fast", "'quick', 'full'"]),
        ('sqlite_detect = "yes"\n', ["sqlite_detect", "yes"]),
        ("[backup.command_sources]\nname = 'a'\n", ["command_sources", "array of tables"]),
    ],
)
def test_bad_hooks_and_sqlite_settings_name_the_key(
    tmp_path: Path, body: str, named: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        bot_config(tmp_path, body)
    for text in named:
        assert text in str(info.value)
    assert info.value.exit_code == 6
    assert not (tmp_path / "bot" / "backups").exists()


def source(name: str, command: str = '["true"]', extra: str = "") -> str:
    return f"[[backup.command_sources]]\nname = {name}\ncommand = {command}\n{extra}"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (source("'../escape.sql'"), ["#1", "name", "../escape.sql"]),
        (source("'db/../../x'"), ["name", "db/../../x"]),
        (source("'/etc/passwd'"), ["name", "/etc/passwd"]),
        (source("'db\\dump.sql'"), ["name", "db\\\\dump.sql"]),
        (source("''"), ["name", "''"]),
        (source("'db//x.sql'"), ["name"]),
        (source("'./x.sql'"), ["name"]),
        (source('"a\\u0000b"'), ["name"]),
        (source("'a.sql'") + source("'b.sql'") + source("'a.sql'"), ["#3", "a.sql", "duplicate"]),
        (source("'a.sql'", "[]"), ["#1", "command"]),
        (source("'a.sql'", "''"), ["command"]),
        (source("'a.sql'", '["pg_dump", 5]'), ["command[1]"]),
        (source("'a.sql'", "42"), ["command", "42"]),
        (source("'a.sql'", extra="timeout = 'forever'\n"), ["timeout", "forever"]),
        (source("'a.sql'", extra="timout = '1m'\n"), ["timout", "timeout"]),
        ("[[backup.command_sources]]\nname = 'a.sql'\n", ["command is missing"]),
        ("[[backup.command_sources]]\ncommand = 'true'\n", ["name is missing"]),
        (source("7"), ["name", "7"]),
    ],
)
def test_bad_command_sources_name_the_key(tmp_path: Path, body: str, named: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        bot_config(tmp_path, body)
    message = str(info.value)
    assert "[[backup.command_sources]]" in message
    for text in named:
        assert text in message
    assert not (tmp_path / "bot" / "backups").exists()


def test_unknown_hook_key_from_the_cli_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "backups"\n[backup.hooks]\nbefor = ["touch ran"]\n'
    )
    result = run_cli_inline("create", cwd=tmp_path)
    assert result.returncode == 6, result.stderr
    assert "befor" in result.stderr and "known keys" in result.stderr
    assert not (tmp_path / "backups").exists()
    assert not (tmp_path / "ran").exists()


def test_a_missing_program_is_not_a_config_error(tmp_path: Path) -> None:
    config = bot_config(
        tmp_path,
        f"[backup.hooks]\nbefore = [[{MISSING_PROGRAM!r}]]\n"
        + source("'x.sql'", f"[{MISSING_PROGRAM!r}]"),
    )
    assert config.hooks.before[0].program == MISSING_PROGRAM


# -- before hooks ------------------------------------------------------------------------------


def test_before_hook_runs_first_in_the_config_directory_and_sees_its_env(tmp_path: Path) -> None:
    # The hook writes the file the backup then takes: it ran before, in the config's directory.
    script = (
        "import json, os\n"
        "json.dump({'type': os.environ['PEAK_BACKUP_TYPE'], 'cwd': os.getcwd()},"
        " open('dump.json', 'w'))\n"
    )
    config = bot_config(
        tmp_path,
        'sources = ["dump.json"]\n' + f"[backup.hooks]\nbefore = {toml_list([PY, '-c', script])}\n",
    )
    manager = BackupManager(config)
    backup_id = manager.create_backup(backup_type="daily")
    written = json.loads((tmp_path / "bot" / "dump.json").read_text())
    assert written == {"type": "daily", "cwd": str(tmp_path / "bot")}
    assert "dump.json" in manager.get_backup_info(backup_id).file_paths


def test_failing_before_hook_fails_the_backup_and_commits_nothing(tmp_path: Path) -> None:
    config = bot_config(tmp_path, "")
    manager = BackupManager(config)
    first = manager.create_backup({"a": 1})
    failing = "echo 'database is locked' >&2; echo more >&2; exit 3"
    manager = BackupManager(
        BackupConfig.from_table(
            {"backup_path": str(config.backup_path), "hooks": {"before": ["true", failing]}},
            base_dir=tmp_path / "bot",
        )
    )
    outcomes: list[BackupOutcome] = []

    def record(outcome: BackupOutcome) -> None:
        outcomes.append(outcome)

    manager.hooks.append(record)
    repository = tmp_path / "bot" / "backups"
    files_before = sorted(p for p in repository.rglob("*") if "status" not in p.parts)
    with pytest.raises(HookError) as info:
        manager.create_backup({"a": 2})
    message = str(info.value)
    assert "before hook #2" in message
    assert failing in message
    assert "exit status 3" in message
    assert "database is locked" in message and "more" in message
    assert isinstance(info.value, BackupError)
    assert [b.backup_id for b in manager.list_backups()] == [first]
    # Recorded as a failed backup (run history, monitoring hooks); no chunk, no manifest.
    assert len(outcomes) == 1 and not outcomes[0].ok and "exit status 3" in str(outcomes[0].error)
    history = "".join(p.read_text() for p in (repository / "status").glob("*.json"))
    assert "exit status 3" in history
    assert sorted(p for p in repository.rglob("*") if "status" not in p.parts) == files_before


def test_failing_before_hook_does_not_create_a_repository(tmp_path: Path) -> None:
    config = bot_config(tmp_path, '[backup.hooks]\nbefore = ["exit 1"]\n')
    with pytest.raises(HookError, match="exit status 1"):
        BackupManager(config).create_backup({"a": 1})
    assert not (tmp_path / "bot" / "backups").exists()


def test_before_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    config = bot_config(
        tmp_path,
        "[backup.hooks]\n"
        'before = ["sleep 60 & echo $! > grandchild.pid; echo $$ > shell.pid; sleep 60"]\n'
        'timeout = "1s"\n',
    )
    manager = BackupManager(config)
    started = time.monotonic()
    with pytest.raises(HookError) as info:
        manager.create_backup({"a": 1})
    assert time.monotonic() - started < 10
    assert "timed out after 1s" in str(info.value)
    assert "sleep 60 &" in str(info.value)
    assert process_gone(read_pid(tmp_path / "bot" / "grandchild.pid"))
    assert process_gone(read_pid(tmp_path / "bot" / "shell.pid"))
    assert manager.list_backups() == []


@pytest.mark.parametrize(
    "command", [[MISSING_PROGRAM, "--all"], f"{MISSING_PROGRAM} --all && echo done"]
)
def test_before_hook_with_a_missing_program_names_it(
    tmp_path: Path, command: str | list[str]
) -> None:
    config = bot_config(tmp_path, f"[backup.hooks]\nbefore = {toml_list(command)}\n")
    with pytest.raises(HookError, match=f"program not found: {MISSING_PROGRAM}"):
        BackupManager(config).create_backup({"a": 1})


def test_run_hooks_stops_at_the_first_failing_before_hook(tmp_path: Path) -> None:
    commands = [HookCommand("echo 1 >> ran"), HookCommand(("false",)), HookCommand("echo 3 >> ran")]
    with pytest.raises(HookError, match=r"before hook #2 `false` failed: exit status 1"):
        run_hooks(commands, phase="before", timeout=timedelta(seconds=10), cwd=tmp_path)
    assert (tmp_path / "ran").read_text() == "1\n"


# -- after hooks -------------------------------------------------------------------------------


def after_config(tmp_path: Path, before: str = "", extra: str = "") -> BackupConfig:
    env_file = tmp_path / "after.jsonl"
    after = toml_list([PY, "-c", DUMP_ENV, str(env_file)], "exit 7", "echo ok >> after-ran")
    return bot_config(tmp_path, f"{extra}[backup.hooks]\nafter = {after}\n{before}")


def test_after_hooks_get_the_outcome_of_a_success(tmp_path: Path) -> None:
    manager = BackupManager(after_config(tmp_path))
    backup_id = manager.create_backup({"a": 1}, backup_type="hourly")
    [env] = read_env_lines(tmp_path / "after.jsonl")
    assert env["PEAK_BACKUP_OUTCOME"] == "success"
    assert env["PEAK_BACKUP_ID"] == backup_id
    assert env["PEAK_BACKUP_TYPE"] == "hourly"
    assert env["PEAK_BACKUP_ERROR"] == ""
    assert env["PEAK_BACKUP_WARNINGS"] == "0"
    assert 0 <= float(env["PEAK_BACKUP_DURATION"]) < 60
    assert env["cwd"] == str(tmp_path / "bot")
    # The failing second hook (exit 7) did not stop the third, nor fail the backup.
    assert (tmp_path / "bot" / "after-ran").read_text() == "ok\n"
    assert [b.backup_id for b in manager.list_backups()] == [backup_id]


def test_after_hooks_count_the_warnings(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "state.json").write_text("{}")
    manager = BackupManager(after_config(tmp_path, extra='sources = ["state.json", "gone.db"]\n'))
    manager.create_backup()
    [env] = read_env_lines(tmp_path / "after.jsonl")
    assert env["PEAK_BACKUP_OUTCOME"] == "success"
    assert env["PEAK_BACKUP_WARNINGS"] == "1"  # gone.db does not exist


def test_after_hooks_get_the_outcome_of_a_failure(tmp_path: Path) -> None:
    manager = BackupManager(after_config(tmp_path))
    with pytest.raises(BackupError) as info:
        manager.create_backup({"bad": object()}, backup_type="daily")
    [env] = read_env_lines(tmp_path / "after.jsonl")
    assert env["PEAK_BACKUP_OUTCOME"] == "failure"
    assert env["PEAK_BACKUP_ID"] == ""
    assert env["PEAK_BACKUP_TYPE"] == "daily"
    assert env["PEAK_BACKUP_ERROR"] == str(info.value)
    assert "bad" in env["PEAK_BACKUP_ERROR"]
    assert float(env["PEAK_BACKUP_DURATION"]) >= 0


def test_after_hooks_run_when_a_before_hook_failed(tmp_path: Path) -> None:
    manager = BackupManager(after_config(tmp_path, before='before = ["exit 9"]\n'))
    with pytest.raises(HookError):
        manager.create_backup({"a": 1})
    [env] = read_env_lines(tmp_path / "after.jsonl")
    assert env["PEAK_BACKUP_OUTCOME"] == "failure"
    assert "exit status 9" in env["PEAK_BACKUP_ERROR"]
    assert "PEAK_BACKUP_ID" in env and env["PEAK_BACKUP_ID"] == ""


def test_hooks_do_not_run_for_a_pre_restore_backup(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    (bot / "state.json").write_text('{"v": 1}')
    config = bot_config(
        tmp_path,
        'sources = ["state.json"]\n'
        "[backup.hooks]\n"
        'before = ["echo before >> hooks.log"]\nafter = ["echo after >> hooks.log"]\n',
    )
    manager = BackupManager(config)
    backup_id = manager.create_backup()
    (bot / "state.json").write_text('{"v": 2}')
    result = RecoveryManager(manager).restore_in_place(backup_id)
    assert result.pre_restore_id is not None
    assert (bot / "state.json").read_text() == '{"v": 1}'
    assert {b.backup_type for b in manager.list_backups()} == {"manual", "pre_restore"}
    assert (bot / "hooks.log").read_text() == "before\nafter\n"  # only the manual backup's


# -- command sources ---------------------------------------------------------------------------


def command_source(command: str | list[str], timeout: str = "1m") -> CommandSourceSettings:
    table = {"command_sources": [{"name": "out.bin", "command": command, "timeout": timeout}]}
    return BackupConfig.from_table(table).command_sources[0]


def read_all(stream: Any, size: int = 64 * 1024) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


PIECES = (
    "import hashlib, sys\n"
    "out = sys.stdout.buffer\n"
    "for i in range(2000):\n"
    "    seed = hashlib.sha256(str(i).encode()).digest()\n"
    "    out.write(seed * (320 + i % 7))\n"
    "    if i % 97 == 0: out.flush()\n"
)


def test_command_source_streams_20_mb(tmp_path: Path) -> None:
    expected = hashlib.sha256()
    size = 0
    for i in range(2000):
        piece = hashlib.sha256(str(i).encode()).digest() * (320 + i % 7)
        expected.update(piece)
        size += len(piece)
    assert size > 20_000_000
    got = hashlib.sha256()
    read = 0
    largest = 0
    with open_command_source(command_source([PY, "-c", PIECES]), tmp_path) as stream:
        for chunk in read_all(stream):
            got.update(chunk)
            read += len(chunk)
            largest = max(largest, len(chunk))
    assert read == size
    assert got.hexdigest() == expected.hexdigest()
    assert largest <= 64 * 1024  # read in chunks, never as a whole


def test_command_source_streams_a_sqlite_dump(tmp_path: Path) -> None:
    database = tmp_path / "trading.db"
    with sqlite3.connect(database) as con:
        con.execute("CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL)")
        con.executemany(
            "INSERT INTO fills (symbol, qty) VALUES (?, ?)",
            [(f"SYM{i % 13}", i * 0.5) for i in range(5000)],
        )
    con.close()
    dump = (
        "import sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "for line in con.iterdump(): sys.stdout.write(line + '\\n')\n"
    )
    with open_command_source(command_source([PY, "-c", dump, "trading.db"]), tmp_path) as stream:
        text = b"".join(read_all(stream)).decode()
    con = sqlite3.connect(database)
    assert text == "".join(line + "\n" for line in con.iterdump())
    con.close()
    restored = sqlite3.connect(":memory:")
    restored.executescript(text)
    assert restored.execute("SELECT count(*), sum(qty) FROM fills").fetchone() == (
        5000,
        sum(i * 0.5 for i in range(5000)),
    )


def test_command_source_failing_after_output_is_an_error(tmp_path: Path) -> None:
    script = "echo 'partial dump'; echo 'pg_dump: error: connection refused' >&2; exit 3"
    with (
        pytest.raises(CommandSourceError) as info,
        open_command_source(command_source(script), tmp_path) as stream,
    ):
        assert b"".join(read_all(stream)) == b"partial dump\n"
    message = str(info.value)
    assert "'out.bin'" in message
    assert script in message
    assert "exit status 3" in message
    assert "connection refused" in message


def test_command_source_past_its_timeout_is_killed(tmp_path: Path) -> None:
    script = "echo started; sleep 60 & echo $! > child.pid; sleep 60"
    started = time.monotonic()
    with (
        pytest.raises(CommandSourceError, match="timed out after 1s"),
        open_command_source(command_source(script, "1s"), tmp_path) as stream,
    ):
        data = b"".join(read_all(stream))  # blocks until the kill closes the pipe
    assert data == b"started\n"
    assert time.monotonic() - started < 10
    assert process_gone(read_pid(tmp_path / "child.pid"))


@pytest.mark.parametrize("command", [[MISSING_PROGRAM, "trading"], f"{MISSING_PROGRAM} trading"])
def test_command_source_with_a_missing_program_names_it(
    tmp_path: Path, command: str | list[str]
) -> None:
    with (
        pytest.raises(CommandSourceError, match=f"program not found: {MISSING_PROGRAM}"),
        open_command_source(command_source(command), tmp_path) as stream,
    ):
        b"".join(read_all(stream))


def test_command_source_is_killed_when_the_body_raises(tmp_path: Path) -> None:
    script = "echo $$ > leader.pid; sleep 60 & echo $! > child.pid; yes"
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="upload failed"),
        open_command_source(command_source(script), tmp_path) as stream,
    ):
        stream.read(1024)
        raise RuntimeError("upload failed")
    assert time.monotonic() - started < 10
    assert process_gone(read_pid(tmp_path / "leader.pid"))
    assert process_gone(read_pid(tmp_path / "child.pid"))


def test_command_source_output_not_read_to_the_end_is_an_error(tmp_path: Path) -> None:
    with (
        pytest.raises(CommandSourceError, match="not read to the end"),
        open_command_source(command_source("yes"), tmp_path) as stream,
    ):
        stream.read(10)


def test_command_source_environment_and_directory(tmp_path: Path) -> None:
    script = [PY, "-c", "import os; print(os.getcwd(), os.environ['EXTRA'])"]
    settings = command_source(script)
    with open_command_source(settings, tmp_path, env={"EXTRA": "yes"}) as stream:
        assert stream.read().decode() == f"{tmp_path} yes\n"
    assert os.environ.get("EXTRA") is None
