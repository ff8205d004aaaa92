"""Encryption primitives: sealing, key wrapping, passphrase handling, header parsing."""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.infra.backup.app.passphrase import read_passphrase
from src.infra.backup.errors import (
    BackupError,
    CorruptDataError,
    InvalidInputError,
    PassphraseRequiredError,
    WrongPassphraseError,
)
from src.infra.backup.format import crypto
from src.infra.backup.format.crypto import (
    AEAD_ALGORITHMS,
    EncryptionHeader,
    KdfParams,
    RepositoryKeys,
    create_encryption,
    rewrap,
    unlock,
)


def cheap_kdf() -> KdfParams:
    """Fast parameters for tests (1 MiB, about 3 ms)."""
    return KdfParams(n=2**10)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    crypto.clear_key_cache()
    yield
    crypto.clear_key_cache()


class CountingScrypt:
    """Stands in for ``Scrypt`` in the module and counts derivations."""

    calls = 0

    def __init__(self, **kwargs: Any) -> None:
        self._inner = _REAL_SCRYPT(**kwargs)

    def derive(self, key_material: bytes) -> bytes:
        type(self).calls += 1
        return bytes(self._inner.derive(key_material))


_REAL_SCRYPT: Any = getattr(crypto, "Scrypt")  # noqa: B009


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingScrypt]:
    CountingScrypt.calls = 0
    monkeypatch.setattr(crypto, "Scrypt", CountingScrypt)
    return CountingScrypt


def make_keys(aead: str = "chacha20-poly1305") -> RepositoryKeys:
    return RepositoryKeys.from_master(os.urandom(64), aead)


# --- seal / open -----------------------------------------------------------------------------


@pytest.mark.parametrize("aead", AEAD_ALGORITHMS)
@pytest.mark.parametrize("size", [0, 1, 100, 65536])
def test_seal_open_round_trip(aead: str, size: int) -> None:
    keys = make_keys(aead)
    plain = os.urandom(size)
    sealed = keys.seal(plain, b"aad")
    assert len(sealed) == size + crypto.SEAL_OVERHEAD
    assert keys.open(sealed, b"aad") == plain
    assert keys.open(memoryview(sealed), b"aad") == plain
    assert keys.seal(memoryview(plain), b"aad") != sealed  # fresh nonce every time


@pytest.mark.parametrize("aead", AEAD_ALGORITHMS)
def test_every_flipped_byte_is_detected(aead: str) -> None:
    keys = make_keys(aead)
    sealed = keys.seal(b"short secret", b"chunk")
    for position in range(len(sealed)):
        for mask in (0x01, 0x80):
            damaged = bytearray(sealed)
            damaged[position] ^= mask
            with pytest.raises(CorruptDataError, match="authentication failed"):
                keys.open(bytes(damaged), b"chunk")


@pytest.mark.parametrize("aead", AEAD_ALGORITHMS)
def test_wrong_aad_truncation_and_wrong_key_are_detected(aead: str) -> None:
    keys = make_keys(aead)
    sealed = keys.seal(b"payload", crypto.object_aad("chunk", "a" * 64))
    with pytest.raises(CorruptDataError, match="authentication failed"):
        keys.open(sealed, crypto.object_aad("chunk", "b" * 64))
    with pytest.raises(CorruptDataError, match="authentication failed"):
        keys.open(sealed, b"")
    for cut in (0, 5, crypto.SEAL_OVERHEAD - 1, len(sealed) - 1):
        with pytest.raises(CorruptDataError, match="authentication failed"):
            keys.open(sealed[:cut], crypto.object_aad("chunk", "a" * 64))
    with pytest.raises(CorruptDataError):
        keys.open(sealed + b"\x00", crypto.object_aad("chunk", "a" * 64))
    with pytest.raises(CorruptDataError):
        make_keys(aead).open(sealed, crypto.object_aad("chunk", "a" * 64))


def test_keys_hide_their_bytes_and_are_immutable() -> None:
    keys = make_keys()
    assert keys.enc_key.hex() not in repr(keys)
    assert keys.id_key.hex() not in repr(keys)
    with pytest.raises(AttributeError):
        keys.enc_key = b"x" * 32
    with pytest.raises(InvalidInputError):
        RepositoryKeys(b"short", b"x" * 32)
    with pytest.raises(InvalidInputError):
        RepositoryKeys(b"x" * 32, b"x" * 32, "rot13")


# --- keyed chunk ids -------------------------------------------------------------------------


def test_keyed_chunk_ids() -> None:
    one, two = make_keys(), make_keys()
    data = b"the same chunk content" * 100
    cid = one.chunk_id(data)
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    assert cid == one.chunk_id(memoryview(data))  # deterministic: dedup works
    assert cid != blake3.blake3(data).hexdigest()
    assert cid != two.chunk_id(data)
    assert cid != one.chunk_id(data + b"!")


# --- key wrapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("aead", AEAD_ALGORITHMS)
def test_create_then_unlock(aead: str) -> None:
    header, keys = create_encryption("correct horse", aead, cheap_kdf())
    assert header.aead == aead and keys.aead == aead
    crypto.clear_key_cache()
    again = unlock(header, "correct horse")
    assert again == keys
    sealed = keys.seal(b"data", b"x")
    assert again.open(sealed, b"x") == b"data"
    restored = EncryptionHeader.from_json(header.to_json())
    assert restored == header
    assert unlock(restored, "correct horse") == keys


def test_wrong_passphrase() -> None:
    header, _ = create_encryption("right", kdf=cheap_kdf())
    with pytest.raises(WrongPassphraseError, match="wrong passphrase for this repository"):
        unlock(header, "wrong")
    with pytest.raises(WrongPassphraseError):
        unlock(header, "Right")
    assert WrongPassphraseError("x").exit_code == 8
    assert issubclass(WrongPassphraseError, BackupError)


def test_passphrase_is_unicode_normalised() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    header, keys = create_encryption(composed, kdf=cheap_kdf())
    crypto.clear_key_cache()
    assert unlock(header, decomposed) == keys


def test_empty_passphrase_refused() -> None:
    with pytest.raises(InvalidInputError):
        create_encryption("", kdf=cheap_kdf())
    header, _ = create_encryption("pw", kdf=cheap_kdf())
    with pytest.raises(InvalidInputError):
        unlock(header, "")
    with pytest.raises(InvalidInputError):
        rewrap(header, "pw", "")


def _tampered_headers(header: EncryptionHeader) -> Iterator[dict[str, Any]]:
    base: dict[str, Any] = header.to_json()
    other_aead = next(a for a in AEAD_ALGORITHMS if a != header.aead)
    edits: list[tuple[str, Any]] = [
        ("aead", other_aead),
        ("n", 2**11),
        ("n", 2**14),
        ("r", 7),
        ("r", 1),
        ("p", 2),
        ("salt", crypto._b64encode(os.urandom(16))),
        ("salt", crypto._b64encode(os.urandom(32))),
    ]
    for field, value in edits:
        data = copy.deepcopy(base)
        if field == "aead":
            data["aead"] = value
        else:
            data["kdf"][field] = value
        yield data
    raw = bytearray(header.wrapped_key)
    for position in (0, 11, 12, 50, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[position] ^= 0x04
        data = copy.deepcopy(base)
        data["wrapped_key"] = crypto._b64encode(bytes(damaged))
        yield data


def test_tampered_header_never_unlocks() -> None:
    header, _ = create_encryption("pw", kdf=cheap_kdf())
    for data in _tampered_headers(header):
        with pytest.raises((WrongPassphraseError, CorruptDataError)):
            unlock(EncryptionHeader.from_json(data), "pw")


def test_tampered_params_out_of_range_are_corrupt() -> None:
    header, _ = create_encryption("pw", kdf=cheap_kdf())
    for field, value in [
        ("n", 2**30),
        ("n", 2**16),
        ("n", 3000),
        ("n", 2**9),
        ("r", 0),
        ("r", 64),
        ("p", 0),
        ("p", 17),
        ("n", True),
        ("name", "argon2id"),
        ("salt", crypto._b64encode(b"short")),
        ("salt", crypto._b64encode(os.urandom(65))),
    ]:
        data = header.to_json()
        kdf = dict(data["kdf"])  # type: ignore[call-overload]
        kdf[field] = value
        if field == "n" and value == 2**16:
            kdf["r"] = 1  # scrypt needs n < 2**(16 r)
        data["kdf"] = kdf
        with pytest.raises(CorruptDataError):
            EncryptionHeader.from_json(data)
    # Each limit alone is in range, together they would need 16 GiB: refused.
    data = header.to_json()
    data["kdf"] = {**data["kdf"], "n": 2**22, "r": 32}  # type: ignore[dict-item]
    with pytest.raises(CorruptDataError, match="MiB"):
        EncryptionHeader.from_json(data)


def test_kdf_params_validated_in_code() -> None:
    with pytest.raises(InvalidInputError):
        KdfParams(n=1000)
    with pytest.raises(InvalidInputError):
        KdfParams(salt=b"x")
    with pytest.raises(InvalidInputError, match="too large for r"):
        KdfParams(n=2**16, r=1)
    KdfParams(n=2**15, r=1).derive("pw")  # the largest n scrypt accepts with r = 1
    params = KdfParams()
    assert (params.n, params.r, params.p, len(params.salt)) == (2**15, 8, 1, 16)
    assert KdfParams().salt != params.salt


def test_rewrap_keeps_master_key() -> None:
    header, keys = create_encryption("old", kdf=cheap_kdf())
    sealed = keys.seal(b"written before the change", b"m")
    new_header = rewrap(header, "old", "new")
    assert new_header.kdf.salt != header.kdf.salt
    assert new_header.wrapped_key != header.wrapped_key
    crypto.clear_key_cache()
    new_keys = unlock(new_header, "new")
    assert new_keys == keys
    assert new_keys.open(sealed, b"m") == b"written before the change"
    assert new_keys.chunk_id(b"abc") == keys.chunk_id(b"abc")
    with pytest.raises(WrongPassphraseError):
        unlock(new_header, "old")
    with pytest.raises(WrongPassphraseError):
        rewrap(header, "not old", "newer")


def test_rewrap_can_change_cost() -> None:
    header, keys = create_encryption("old", kdf=cheap_kdf())
    new_header = rewrap(header, "old", "new", kdf=KdfParams(n=2**11, r=4))
    assert (new_header.kdf.n, new_header.kdf.r) == (2**11, 4)
    crypto.clear_key_cache()
    assert unlock(new_header, "new") == keys


# --- derivation cache ------------------------------------------------------------------------


def test_unlock_derives_once_per_process(counting: type[CountingScrypt]) -> None:
    header, keys = create_encryption("pw", kdf=cheap_kdf())
    assert counting.calls == 1
    crypto.clear_key_cache()
    for _ in range(200):
        assert unlock(header, "pw", cache_key="/srv/repo") == keys
    assert counting.calls == 2
    unlock(header, "pw", cache_key="/srv/other")  # another cache key derives again
    assert counting.calls == 3
    with pytest.raises(WrongPassphraseError):  # failures are not cached...
        unlock(header, "bad", cache_key="/srv/repo")
    with pytest.raises(WrongPassphraseError):
        unlock(header, "bad", cache_key="/srv/repo")
    assert counting.calls == 5
    # ...and a cached success does not leak to an altered header with the same salt.
    other = EncryptionHeader(
        next(a for a in AEAD_ALGORITHMS if a != header.aead), header.kdf, header.wrapped_key
    )
    with pytest.raises(WrongPassphraseError):
        unlock(other, "pw", cache_key="/srv/repo")


def test_create_and_rewrap_prime_the_cache(counting: type[CountingScrypt]) -> None:
    header, keys = create_encryption("pw", kdf=cheap_kdf())
    assert unlock(header, "pw") == keys
    new_header = rewrap(header, "pw", "pw2")
    assert unlock(new_header, "pw2") == keys
    assert counting.calls == 2  # create + the new wrap
    crypto.clear_key_cache()
    header, keys = create_encryption("pw", kdf=cheap_kdf(), cache_key="/srv/repo")
    assert unlock(header, "pw", cache_key="/srv/repo") == keys
    new_header = rewrap(header, "pw", "pw2", cache_key="/srv/repo")
    assert unlock(new_header, "pw2", cache_key="/srv/repo") == keys
    assert counting.calls == 4


def test_cache_does_not_hold_the_passphrase() -> None:
    passphrase = "a very distinctive passphrase"
    header, _ = create_encryption(passphrase, kdf=cheap_kdf())
    unlock(header, passphrase)
    for slot in crypto._cache:
        assert passphrase.encode() not in slot
        assert slot != blake3.blake3(passphrase.encode() + header.kdf.salt).digest()


# --- read_passphrase -------------------------------------------------------------------------


class FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_read_passphrase_env_first(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("from file\n")
    env = {"PEAK_BACKUP_PASSWORD": "from env", "PEAK_BACKUP_PASSWORD_FILE": str(path)}
    assert read_passphrase(env=env, password_file=str(path)) == "from env"


def test_read_passphrase_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pw"
    path.write_bytes("s3cret p\u00e4ss\r\nsecond line\n".encode())
    path.chmod(0o600)
    other = tmp_path / "other"
    other.write_text("from env file")
    other.chmod(0o600)
    env = {"PEAK_BACKUP_PASSWORD_FILE": str(other)}
    with caplog.at_level(logging.WARNING):
        assert read_passphrase(env=env, password_file=str(path)) == "s3cret p\u00e4ss"
        assert read_passphrase(env=env) == "from env file"
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_passphrase(env={}, password_file=str(path))
    assert any("group or others" in record.getMessage() for record in caplog.records)


def test_read_passphrase_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InvalidInputError, match="cannot read the password file"):
        read_passphrase(env={}, password_file=str(missing))
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_passphrase(env={"PEAK_BACKUP_PASSWORD_FILE": str(tmp_path)})  # a directory
    for content in (b"", b"\n", b"\nsecond"):
        empty = tmp_path / "empty"
        empty.write_bytes(content)
        with pytest.raises(InvalidInputError, match="empty"):
            read_passphrase(env={}, password_file=str(empty))
    long = tmp_path / "long"
    long.write_bytes(b"x" * 10_000)
    with pytest.raises(InvalidInputError, match="longer"):
        read_passphrase(env={}, password_file=str(long))


def test_read_passphrase_without_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeTty(False))
    with pytest.raises(PassphraseRequiredError) as info:
        read_passphrase(env={})
    message = str(info.value)
    assert "PEAK_BACKUP_PASSWORD" in message and "PEAK_BACKUP_PASSWORD_FILE" in message
    assert "terminal" in message
    assert info.value.exit_code == 8
    monkeypatch.setattr("sys.stdin", FakeTty(True))
    with pytest.raises(PassphraseRequiredError):
        read_passphrase(env={}, prompt=False)
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(PassphraseRequiredError):
        read_passphrase(env={})


def test_read_passphrase_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeTty(True))
    answers: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="": answers.pop(0))
    answers[:] = ["typed"]
    assert read_passphrase(env={}) == "typed"
    answers[:] = ["typed", "typed"]
    assert read_passphrase(env={}, confirm=True) == "typed"
    answers[:] = ["typed", "typo"]
    with pytest.raises(InvalidInputError, match="do not match"):
        read_passphrase(env={}, confirm=True)
    answers[:] = [""]
    with pytest.raises(InvalidInputError, match="empty"):
        read_passphrase(env={})


def test_read_passphrase_empty_env() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        read_passphrase(env={"PEAK_BACKUP_PASSWORD": ""})


# --- header JSON -----------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_HEADER = create_encryption("fuzz", kdf=KdfParams(n=2**10))[0]


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_from_json_rejects_arbitrary_values(value: object) -> None:
    with pytest.raises(CorruptDataError):
        EncryptionHeader.from_json(value)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "aead",
            "kdf",
            "wrapped_key",
            "kdf.name",
            "kdf.n",
            "kdf.r",
            "kdf.p",
            "kdf.salt",
            "extra",
            "kdf.extra",
        ]
    ),
    _json_values | st.binary(max_size=100).map(crypto._b64encode),
    st.booleans(),
)
def test_from_json_rejects_mutated_headers(field: str, value: object, delete: bool) -> None:
    data: dict[str, Any] = copy.deepcopy(_HEADER.to_json())
    target, key = (data["kdf"], field[4:]) if field.startswith("kdf.") else (data, field)
    if not isinstance(target, dict):
        return
    if delete and key in target:
        del target[key]
    else:
        target[key] = value
    try:
        header = EncryptionHeader.from_json(data)
    except CorruptDataError:
        return
    assert EncryptionHeader.from_json(header.to_json()) == header


def test_from_json_specific_malformations() -> None:
    good = _HEADER.to_json()
    bad_values: list[tuple[str, object]] = [
        ("aead", "aes-128-gcm"),
        ("aead", None),
        ("aead", 1),
        ("wrapped_key", "not base64!"),
        ("wrapped_key", crypto._b64encode(b"x" * 91)),
        ("wrapped_key", crypto._b64encode(b"x" * 93)),
        ("wrapped_key", b"raw"),
        ("wrapped_key", "\u00e9\u00e9\u00e9\u00e9"),
        ("kdf", None),
        ("kdf", []),
    ]
    for key, value in bad_values:
        with pytest.raises(CorruptDataError):
            EncryptionHeader.from_json({**good, key: value})
    wrapped = str(good["wrapped_key"])
    with pytest.raises(CorruptDataError):  # whitespace / non-canonical base64
        EncryptionHeader.from_json({**good, "wrapped_key": wrapped[:10] + "\n" + wrapped[10:]})
    with pytest.raises(CorruptDataError):
        EncryptionHeader.from_json({**good, "extra": 1})
    with pytest.raises(CorruptDataError):
        EncryptionHeader.from_json(None)
    with pytest.raises(CorruptDataError):
        EncryptionHeader.from_json({"aead": "chacha20-poly1305"})
