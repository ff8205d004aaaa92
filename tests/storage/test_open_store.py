""":func:`open_store`: the store of a location, as ``BackupConfig.store_at`` builds it, and the
imports it avoids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.infra.backup.errors import ConfigError, StorageError
from src.infra.backup.storage import LocalStore, open_store
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.s3_location import S3Options
from tests.helpers import PROJECT_ROOT


def test_a_path_is_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path / "repo")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "repo"
    monkeypatch.chdir(tmp_path)
    relative = open_store("backups")
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "backups"
    monkeypatch.setenv("HOME", str(tmp_path))
    home = open_store("~/in home")
    assert isinstance(home, LocalStore) and home.root == tmp_path / "in home"


def test_a_file_url_is_a_local_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/my%20repo")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "my repo"
    local = open_store(f"file://localhost{tmp_path}")
    assert isinstance(local, LocalStore) and local.root == tmp_path
    with pytest.raises(ConfigError, match="not a host"):
        open_store("file://server/share")


def test_an_s3_url_is_an_s3_store() -> None:
    options = S3Options(endpoint_url="http://127.0.0.1:1", region="us-east-1", max_retries=0)
    store = open_store("s3://peak-bucket/some/prefix", options)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.options) == ("peak-bucket", "some/prefix", options)
    assert store.location == "s3://peak-bucket/some/prefix"
    default = open_store("s3://peak-bucket")
    assert isinstance(default, S3Store) and default.options == S3Options()


@pytest.mark.parametrize("url", ["s3://x/", "s3://", "gs://bucket/x"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


def test_a_bad_prefix_is_an_invalid_key() -> None:
    with pytest.raises(StorageError, match="invalid object key"):  # as BackupConfig.store_at
        open_store("s3://bucket/../up")


def test_importing_the_engine_loads_neither_obstore_nor_the_test_kit() -> None:
    """``import src.infra.backup`` (and the storage package, and the S3 module's names) stays
    light: obstore loads with the first S3 store, pytest and the test kit never."""
    code = (
        "import sys, src.infra.backup, src.infra.backup.storage\n"
        "from src.infra.backup.storage import open_store\n"
        "from src.infra.backup.storage.s3_location import S3Options, parse_s3_url\n"
        "loaded = [m for m in ('obstore', 'pytest', 'src.infra.backup.storage.testing')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "open_store('s3://peak-bucket/x')\n"
        "assert 'obstore' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
