"""Encryption at rest: key derivation, key wrapping, keyed chunk ids and AEAD sealing.

Standalone primitives; the repository layer decides what to seal and with which associated
data. The scheme:

* A repository has 64 random bytes of master key material: ``enc_key`` (32 bytes, the AEAD key
  every object is sealed with) followed by ``id_key`` (32 bytes, the key of the keyed BLAKE3
  hash that names chunks, so equal content in two repositories, or a guessed plaintext, is not
  recognisable from chunk ids).
* The master material is stored in ``repo.json`` only wrapped (AEAD-encrypted) under a key
  encryption key (KEK) derived from the passphrase with scrypt. Changing the passphrase
  rewraps these 64 bytes (:func:`rewrap`); no data object is rewritten.
* The associated data of the wrap is a canonical encoding of the AEAD name and the KDF
  parameters, so any edit of them in ``repo.json`` makes the unwrap fail instead of silently
  weakening or changing anything.
* A sealed object is ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``. Any changed,
  missing or added byte, or different associated data, fails authentication
  (:class:`CorruptDataError`).

Random 96-bit nonces are safe for well over 2**32 seals per key (about 256 TiB of 64 KiB
chunks), far beyond what a bot's repository holds.

Deriving the KEK is deliberately slow and memory-hard (about 85 ms and 32 MiB with the default
parameters), so :func:`unlock` caches unlocked keys per process: a bot that takes 200 backups
derives once. The cache is keyed by a BLAKE3 hash, keyed with a per-process random key, of the
passphrase and the header, never by the passphrase itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import blake3

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from src.infra.backup.errors import (
    CorruptDataError,
    InvalidInputError,
    WrongPassphraseError,
)

log = logging.getLogger(__name__)

AEAD_ALGORITHMS = ("chacha20-poly1305", "aes-256-gcm")
# AES-256-GCM by measurement on this project's machines (AES-NI): 6.6 GB/s sealing, and no
# effect on backup latency, whereas ChaCha20-Poly1305 (2.7 GB/s) made the whole pre-trade
# backup ~15 ms slower on the trading-day bench (55-58 ms against 39-41 ms; the time shows up in
# the value encoder, most likely the CPU clocking down after OpenSSL's wide-vector ChaCha code).
# ChaCha20-Poly1305 stays available for CPUs without AES instructions.
DEFAULT_AEAD = "aes-256-gcm"
KDF_NAME = "scrypt"

KEY_SIZE = 32
MASTER_SIZE = 2 * KEY_SIZE  # enc_key || id_key
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
WRAPPED_KEY_SIZE = NONCE_SIZE + MASTER_SIZE + TAG_SIZE
SALT_SIZE = 16

# Accepted KDF parameters. Besides the per-parameter ranges, the memory scrypt needs
# (128 * n * r bytes) and its work (n * r * p) are bounded, so a hostile repo.json can make
# unlock neither allocate more than 256 MiB nor run for more than a few seconds.
N_RANGE = (2**10, 2**22)
R_RANGE = (1, 32)
P_RANGE = (1, 16)
SALT_RANGE = (16, 64)
MAX_KDF_MEMORY = 256 * 2**20
MAX_KDF_WORK = 2**23  # n * r * p; the default is 2**18


_WRAP_DOMAIN = b"peak-trade-backup key wrap v1\x00"
_AAD_DOMAIN = b"peak-trade-backup object v1\x00"
_CACHE_DOMAIN = b"peak-trade-backup key cache v1\x00"
_CACHE_LIMIT = 64

_AeadCipher = Union["ChaCha20Poly1305", "AESGCM"]


def __getattr__(name: str) -> Any:
    """``Scrypt`` is imported on first use (cryptography is slow to import, and unencrypted
    repositories never need it); tests may replace the module attribute."""
    if name == "Scrypt":
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        globals()["Scrypt"] = Scrypt
        return Scrypt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scrypt_class() -> Any:
    return globals().get("Scrypt") or __getattr__("Scrypt")


def _aead_cipher(name: str, key: bytes) -> _AeadCipher:
    # cryptography is imported on first use: an unencrypted repository never loads it.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    if name == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    if name == "aes-256-gcm":
        return AESGCM(key)
    raise InvalidInputError(f"unknown AEAD {name!r}: expected one of {', '.join(AEAD_ALGORITHMS)}")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: object, what: str) -> bytes:
    """Strict, canonical base64: anything else is a :class:`CorruptDataError`."""
    if not isinstance(value, str):
        raise CorruptDataError(f"encryption header: {what} must be a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise CorruptDataError(f"encryption header: {what} is not valid base64") from exc
    if _b64encode(data) != value:
        raise CorruptDataError(f"encryption header: {what} is not canonical base64")
    return data


def _strict_int(value: object, what: str) -> int:
    if type(value) is not int:  # bool is an int subclass; refuse it too
        raise CorruptDataError(f"encryption header: {what} must be an integer")
    return value


def _check_keys(data: object, expected: set[str], what: str) -> Mapping[str, object]:
    if not isinstance(data, Mapping):
        raise CorruptDataError(f"encryption header: {what} must be an object")
    keys = set(data)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(str(key) for key in keys - expected)
        raise CorruptDataError(
            f"encryption header: {what} has missing fields {missing} or unknown fields {extra}"
        )
    return data


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters and salt of the key encryption key.

    The defaults (``n=2**15, r=8, p=1``: 32 MiB, about 85 ms on a small 2-core machine) are
    the interactive-login level. Tests may use ``KdfParams(n=2**10)`` to stay fast. Values
    outside the accepted ranges are an :class:`InvalidInputError` when constructed in code and
    a :class:`CorruptDataError` when loaded by :meth:`from_json`.
    """

    name: str = KDF_NAME
    n: int = 2**15
    r: int = 8
    p: int = 1
    salt: bytes = field(default_factory=lambda: os.urandom(SALT_SIZE), repr=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise InvalidInputError(f"invalid KDF parameters: {problem}")

    def _problem(self) -> str | None:
        if self.name != KDF_NAME:
            return f"unknown KDF {self.name!r}: expected {KDF_NAME!r}"
        for label, value, (low, high) in (
            ("n", self.n, N_RANGE),
            ("r", self.r, R_RANGE),
            ("p", self.p, P_RANGE),
        ):
            if type(value) is not int or not low <= value <= high:
                return f"{label} = {value!r} is not an integer in {low}..{high}"
        if self.n & (self.n - 1):
            return f"n = {self.n} is not a power of two"
        if self.n >= 2 ** (16 * self.r):  # scrypt's own limit (RFC 7914: n < 2**(128*r/8))
            return f"n = {self.n} is too large for r = {self.r}"
        if 128 * self.n * self.r > MAX_KDF_MEMORY:
            return f"n * r = {self.n * self.r} needs more than {MAX_KDF_MEMORY >> 20} MiB"
        if self.n * self.r * self.p > MAX_KDF_WORK:
            return f"n * r * p = {self.n * self.r * self.p} exceeds {MAX_KDF_WORK}"
        if not isinstance(self.salt, bytes) or not (
            SALT_RANGE[0] <= len(self.salt) <= SALT_RANGE[1]
        ):
            return f"salt must be {SALT_RANGE[0]} to {SALT_RANGE[1]} bytes"
        return None

    def with_new_salt(self) -> KdfParams:
        """The same cost parameters with a fresh random salt."""
        return KdfParams(self.name, self.n, self.r, self.p, os.urandom(SALT_SIZE))

    def derive(self, passphrase: str) -> bytes:
        """The 32-byte key encryption key for ``passphrase`` (slow by design)."""
        secret = _passphrase_bytes(passphrase)
        try:
            kdf = _scrypt_class()(salt=self.salt, length=KEY_SIZE, n=self.n, r=self.r, p=self.p)
            key: bytes = kdf.derive(secret)
            return key
        except (ValueError, MemoryError) as exc:  # validated parameters should not get here
            raise InvalidInputError(f"cannot derive a key with {self}: {exc}") from exc

    def to_json(self) -> dict[str, object]:
        """JSON form: ``{"name", "n", "r", "p", "salt"}`` with the salt in base64."""
        return {
            "name": self.name,
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": _b64encode(self.salt),
        }

    @classmethod
    def from_json(cls, data: object) -> KdfParams:
        """Parse and validate :meth:`to_json` output; anything malformed is corrupt."""
        fields = _check_keys(data, {"name", "n", "r", "p", "salt"}, "kdf")
        name = fields["name"]
        if not isinstance(name, str):
            raise CorruptDataError("encryption header: kdf name must be a string")
        n = _strict_int(fields["n"], "kdf n")
        r = _strict_int(fields["r"], "kdf r")
        p = _strict_int(fields["p"], "kdf p")
        salt = _b64decode(fields["salt"], "kdf salt")
        try:
            return cls(name, n, r, p, salt)
        except InvalidInputError as exc:
            raise CorruptDataError(f"encryption header: {exc}") from exc


@dataclass(frozen=True)
class EncryptionHeader:
    """What ``repo.json`` stores under ``"encryption"``.

    ``wrapped_key`` is ``nonce || AEAD(KEK, enc_key || id_key) || tag`` (92 bytes), sealed with
    ``aead`` under the key derived by ``kdf``, with :func:`_wrap_aad` as associated data.
    """

    aead: str
    kdf: KdfParams
    wrapped_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.aead not in AEAD_ALGORITHMS:
            raise InvalidInputError(
                f"unknown AEAD {self.aead!r}: expected one of {', '.join(AEAD_ALGORITHMS)}"
            )
        if not isinstance(self.kdf, KdfParams):
            raise InvalidInputError("kdf must be a KdfParams")
        if not isinstance(self.wrapped_key, bytes) or len(self.wrapped_key) != WRAPPED_KEY_SIZE:
            raise InvalidInputError(f"wrapped_key must be {WRAPPED_KEY_SIZE} bytes")

    def to_json(self) -> dict[str, object]:
        """JSON form: ``{"aead", "kdf": {...}, "wrapped_key"}`` (bytes in base64)."""
        return {
            "aead": self.aead,
            "kdf": self.kdf.to_json(),
            "wrapped_key": _b64encode(self.wrapped_key),
        }

    @classmethod
    def from_json(cls, data: object) -> EncryptionHeader:
        """Parse and validate :meth:`to_json` output.

        Any missing, extra, mistyped or out-of-range field is a :class:`CorruptDataError`.
        """
        fields = _check_keys(data, {"aead", "kdf", "wrapped_key"}, "encryption")
        aead = fields["aead"]
        if not isinstance(aead, str) or aead not in AEAD_ALGORITHMS:
            raise CorruptDataError(
                f"encryption header: unknown AEAD {aead!r}: expected one of "
                f"{', '.join(AEAD_ALGORITHMS)}"
            )
        kdf = KdfParams.from_json(fields["kdf"])
        wrapped = _b64decode(fields["wrapped_key"], "wrapped_key")
        try:
            return cls(aead, kdf, wrapped)
        except InvalidInputError as exc:
            raise CorruptDataError(f"encryption header: {exc}") from exc


class RepositoryKeys:
    """The unlocked master key material of a repository.

    ``enc_key`` seals and opens objects with ``aead``; ``id_key`` keys the chunk-id hash.
    Instances are immutable, safe to share between threads, and never show key bytes in their
    ``repr``.
    """

    __slots__ = ("_cipher", "aead", "enc_key", "id_key")

    enc_key: bytes
    id_key: bytes
    aead: str
    _cipher: _AeadCipher

    def __init__(self, enc_key: bytes, id_key: bytes, aead: str = DEFAULT_AEAD) -> None:
        if len(enc_key) != KEY_SIZE or len(id_key) != KEY_SIZE:
            raise InvalidInputError(f"keys must be {KEY_SIZE} bytes each")
        cipher = _aead_cipher(aead, bytes(enc_key))
        object.__setattr__(self, "enc_key", bytes(enc_key))
        object.__setattr__(self, "id_key", bytes(id_key))
        object.__setattr__(self, "aead", aead)
        object.__setattr__(self, "_cipher", cipher)

    @classmethod
    def from_master(cls, master: bytes, aead: str) -> RepositoryKeys:
        """Split 64 bytes of master material into ``enc_key || id_key``."""
        if len(master) != MASTER_SIZE:
            raise InvalidInputError(f"master key material must be {MASTER_SIZE} bytes")
        return cls(master[:KEY_SIZE], master[KEY_SIZE:], aead)

    @property
    def master(self) -> bytes:
        """``enc_key || id_key``: what :func:`create_encryption` wraps."""
        return self.enc_key + self.id_key

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"RepositoryKeys(aead={self.aead!r}, keys=<hidden>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RepositoryKeys):
            return NotImplemented
        import hmac  # loads OpenSSL's hash module: only when keys are compared

        return self.aead == other.aead and hmac.compare_digest(self.master, other.master)

    def __hash__(self) -> int:
        return hash((self.aead, blake3.blake3(self.master).digest()))

    def chunk_id(self, plaintext: bytes | memoryview) -> str:
        """Keyed BLAKE3-256 of ``plaintext``: 64 lowercase hex digits."""
        return str(blake3.blake3(plaintext, key=self.id_key).hexdigest())

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """Encrypt and authenticate: ``nonce (12 random bytes) || ciphertext || tag``.

        ``aad`` is authenticated but not stored; :meth:`open` needs the same value.
        """
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._cipher.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """Verify and decrypt :meth:`seal` output.

        Raises :class:`CorruptDataError` if ``sealed`` is too short, any byte of it changed, or
        ``aad`` differs from the value it was sealed with.
        """
        view = memoryview(sealed)
        if len(view) < SEAL_OVERHEAD:
            raise CorruptDataError(
                f"encrypted object: authentication failed (only {len(view)} bytes, "
                f"at least {SEAL_OVERHEAD} expected)"
            )
        from cryptography.exceptions import InvalidTag

        try:
            return self._cipher.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise CorruptDataError(
                "encrypted object: authentication failed (damaged, tampered with, "
                "or stored under another name)"
            ) from None


def object_aad(kind: str, name: str) -> bytes:
    """Suggested associated data binding a sealed object to its kind and name.

    For example ``object_aad("chunk", chunk_id)`` or ``object_aad("manifest", backup_id)``:
    a blob moved to another name then fails :meth:`RepositoryKeys.open`.
    """
    if "\x00" in kind:
        raise InvalidInputError("object kind must not contain NUL")
    return _AAD_DOMAIN + kind.encode("utf-8") + b"\x00" + name.encode("utf-8")


def _passphrase_bytes(passphrase: str) -> bytes:
    """NFC-normalised UTF-8 (non-UTF-8 bytes from the environment survive unchanged)."""
    if not isinstance(passphrase, str):
        raise InvalidInputError("the passphrase must be a string")
    if not passphrase:
        raise InvalidInputError("the passphrase must not be empty")
    try:
        return unicodedata.normalize("NFC", passphrase).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidInputError("the passphrase is not valid text") from exc


def _wrap_aad(aead: str, kdf: KdfParams) -> bytes:
    """Canonical encoding of the header's parameters, authenticated by the key wrap."""
    params = {"aead": aead, "kdf": kdf.to_json()}
    return _WRAP_DOMAIN + json.dumps(params, sort_keys=True, separators=(",", ":")).encode()


def _wrap(master: bytes, aead: str, kdf: KdfParams, kek: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _aead_cipher(aead, kek).encrypt(nonce, master, _wrap_aad(aead, kdf))


# --- process-wide cache of unlocked keys ----------------------------------------------------

_cache_lock = threading.Lock()
_cache: OrderedDict[bytes, RepositoryKeys] = OrderedDict()
# Keys the cache's hash so it is useless outside this process (no offline guessing).
_cache_secret = os.urandom(KEY_SIZE)


def _cache_slot(header: EncryptionHeader, passphrase: str, cache_key: str | None) -> bytes:
    hasher = blake3.blake3(key=_cache_secret)
    for part in (
        _CACHE_DOMAIN,
        b"" if cache_key is None else b"\x01" + cache_key.encode("utf-8", "surrogatepass"),
        _wrap_aad(header.aead, header.kdf),  # includes the salt
        header.wrapped_key,
        _passphrase_bytes(passphrase),
    ):
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return bytes(hasher.digest())


def _cache_put(slot: bytes, keys: RepositoryKeys) -> None:
    _cache[slot] = keys
    _cache.move_to_end(slot)
    while len(_cache) > _CACHE_LIMIT:
        _cache.popitem(last=False)


def clear_key_cache() -> None:
    """Forget every unlocked key of this process (the next :func:`unlock` derives again)."""
    with _cache_lock:
        _cache.clear()


# --- public operations ----------------------------------------------------------------------


def create_encryption(
    passphrase: str,
    aead: str = DEFAULT_AEAD,
    kdf: KdfParams | None = None,
    *,
    cache_key: str | None = None,
) -> tuple[EncryptionHeader, RepositoryKeys]:
    """Create the key material of a new encrypted repository.

    Returns the header to store in ``repo.json`` and the unlocked keys (also cached under
    ``cache_key``, so a following :func:`unlock` with the same passphrase and ``cache_key``
    does not derive again).
    """
    if aead not in AEAD_ALGORITHMS:
        raise InvalidInputError(
            f"unknown AEAD {aead!r}: expected one of {', '.join(AEAD_ALGORITHMS)}"
        )
    kdf = kdf if kdf is not None else KdfParams()
    keys = RepositoryKeys.from_master(os.urandom(MASTER_SIZE), aead)
    header = EncryptionHeader(aead, kdf, _wrap(keys.master, aead, kdf, kdf.derive(passphrase)))
    with _cache_lock:
        _cache_put(_cache_slot(header, passphrase, cache_key), keys)
    return header, keys


def unlock(
    header: EncryptionHeader, passphrase: str, *, cache_key: str | None = None
) -> RepositoryKeys:
    """Unwrap the repository's keys with ``passphrase``.

    The key derivation runs at most once per process for the same ``cache_key`` (for example
    the repository path), header and passphrase; later calls return the cached keys. A wrong
    passphrase, or a header whose parameters were altered, is a :class:`WrongPassphraseError`.
    """
    slot = _cache_slot(header, passphrase, cache_key)
    with _cache_lock:  # held while deriving, so concurrent unlocks derive once
        cached = _cache.get(slot)
        if cached is not None:
            _cache.move_to_end(slot)
            return cached
        try:
            kek = header.kdf.derive(passphrase)
        except InvalidInputError as exc:  # the passphrase itself was checked by _cache_slot
            raise CorruptDataError(f"encryption header: {exc}") from exc
        wrapped = header.wrapped_key
        from cryptography.exceptions import InvalidTag

        try:
            master = _aead_cipher(header.aead, kek).decrypt(
                wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], _wrap_aad(header.aead, header.kdf)
            )
        except InvalidTag:
            raise WrongPassphraseError("wrong passphrase for this repository") from None
        keys = RepositoryKeys.from_master(master, header.aead)
        _cache_put(slot, keys)
        return keys


def rewrap(
    header: EncryptionHeader,
    old_passphrase: str,
    new_passphrase: str,
    *,
    kdf: KdfParams | None = None,
    cache_key: str | None = None,
) -> EncryptionHeader:
    """Wrap the same master key under ``new_passphrase`` (fresh salt; data untouched).

    ``kdf`` optionally changes the cost parameters (its salt is replaced by a fresh one).
    Raises :class:`WrongPassphraseError` if ``old_passphrase`` is wrong. The new header and
    passphrase are cached under ``cache_key`` like :func:`unlock`.
    """
    _passphrase_bytes(new_passphrase)  # refuse an empty one before the slow part
    keys = unlock(header, old_passphrase, cache_key=cache_key)
    new_kdf = (kdf if kdf is not None else header.kdf).with_new_salt()
    wrapped = _wrap(keys.master, header.aead, new_kdf, new_kdf.derive(new_passphrase))
    new_header = EncryptionHeader(header.aead, new_kdf, wrapped)
    with _cache_lock:
        _cache_put(_cache_slot(new_header, new_passphrase, cache_key), keys)
    return new_header
