"""Known-answer vectors of the repository format, read out of the documentation.

``docs/FORMAT-VECTORS.md`` (and a few examples in ``docs/FORMAT.md``) hold fenced blocks whose
info string is ``<kind> vector=<name> role=<role>``. This module parses them and checks each
vector against the code both ways:

- **decode**: the code's readers turn the documented bytes into the documented object or value;
- **encode**: the code's writers turn the documented input into the documented bytes, wherever
  encoding is deterministic (a fixed nonce stands in for the random one; compressed bytes are
  compared exactly only with the compressor versions the vectors were made with).

Most vectors are also checked by an independent reading of the rules in FORMAT.md, with the
``blake3``, ``zstandard``, ``zlib`` and ``cryptography`` primitives instead of the project's
classes. So the documentation, the code and the specification cannot drift apart unnoticed.
The last tests check that ``docs/VALUES.md`` is what ``tools/gen_values_doc.py`` makes of the
codec's docstring, and that FORMAT.md's table of ext codes agrees with it.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import http
import json
import pathlib
import re
import types
import uuid
import zlib
import zoneinfo
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from test_format_compat import assert_same

from src.infra.backup.format import crypto
from src.infra.backup.format.blobs import BlobCodec, Compression
from src.infra.backup.format.crypto import EncryptionHeader, RepositoryKeys, rewrap, unlock
from src.infra.backup.format.index import decode_index, encode_index, summarize
from src.infra.backup.format.manifest import (
    UNSIGNED,
    Collection,
    Manifest,
    RepoConfig,
    decode_checked,
    decode_chunk_list,
    encode_checked,
    encode_chunk_list,
    manifest_format,
    open_manifest,
    seal_manifest,
)
from src.infra.backup.format.values import decode_value, encode_value
from src.infra.backup.repository.history import HostStatus
from src.infra.backup.repository.locks import LeaseRecord
from tools.gen_values_doc import VALUES_MD, codec_docstring, render

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = PROJECT_ROOT / "docs"
VECTOR_FILES = (DOCS / "FORMAT.md", DOCS / "FORMAT-VECTORS.md")
#: The compressor versions the vectors were made with (compressed bytes are compared exactly
#: only with these; with others, a round trip is checked).
ZSTD_VERSION = (1, 5, 7)
ZLIB_VERSION = "1.2.13"

_BLOCK = re.compile(
    r"^```(?P<kind>[a-z]+) vector=(?P<name>\S+) role=(?P<role>\S+)\n(?P<body>.*?)\n```$",
    re.MULTILINE | re.DOTALL,
)
_HEX_LINE = re.compile(r"^(?P<offset>[0-9a-f]{4,8}):(?P<bytes>(?: [0-9a-f]{2})*)$")
_WRAP_DOMAIN = b"peak-trade-backup key wrap v1\x00"
_OBJECT_DOMAIN = b"peak-trade-backup object v1\x00"


class Block(msgspec.Struct, frozen=True):
    """One fenced block: its kind (``hex``, ``json``, ...), text and where it is."""

    kind: str
    text: str
    where: str


def _load_vectors() -> dict[str, dict[str, Block]]:
    vectors: dict[str, dict[str, Block]] = {}
    for path in VECTOR_FILES:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            roles = vectors.setdefault(match["name"], {})
            where = f"{path.name}:{line}"
            assert match["role"] not in roles, f"{where}: {match['name']} {match['role']} twice"
            roles[match["role"]] = Block(match["kind"], match["body"], where)
    return vectors


VECTORS = _load_vectors()


def names(prefix: str) -> list[str]:
    """The vector names starting with ``prefix`` (at least one must exist)."""
    found = sorted(name for name in VECTORS if name.startswith(prefix))
    assert found, f"no vectors {prefix}* in the documentation"
    return found


def hex_bytes(block: Block) -> bytes:
    """The bytes of a ``hex`` block (``offset: b b b ...`` lines, offsets checked)."""
    assert block.kind == "hex", f"{block.where}: not a hex block"
    data = bytearray()
    for line in block.text.splitlines():
        match = _HEX_LINE.match(line)
        assert match, f"{block.where}: bad hex line {line!r}"
        assert int(match["offset"], 16) == len(data), f"{block.where}: offset of {line!r}"
        data += bytes.fromhex(match["bytes"])
    return bytes(data)


def text_bytes(block: Block) -> bytes:
    """The exact bytes of a ``json`` or ``text`` block (no trailing newline)."""
    assert block.kind in ("json", "text"), f"{block.where}: not a text block"
    return block.text.encode("utf-8")


def params(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(VECTORS[name]["params"].text)
    return parsed


def spec_checksum_ok(raw: bytes) -> bool:
    """FORMAT.md's rule: BLAKE3-256 of the file with the 64 checksum digits set to ``0``."""
    head, digest, tail = raw[:-66], raw[-66:-2], raw[-2:]
    assert raw[-78:-66] == b'"checksum":"' and tail == b'"}'
    return blake3.blake3(head + b"0" * 64 + tail).hexdigest().encode() == digest


def _aead(name: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if name == "aes-256-gcm" else ChaCha20Poly1305(key)


@pytest.fixture
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``fixed_nonce(nonce)`` makes the crypto module's next random draws ``nonce``."""

    def install(*values: bytes) -> None:
        pending = list(values)

        def urandom(size: int) -> bytes:
            value = pending.pop(0)
            assert len(value) == size, f"asked for {size} random bytes"
            return value

        monkeypatch.setattr(crypto, "os", types.SimpleNamespace(urandom=urandom))

    return install


def _same_compressor() -> bool:
    return zstandard.ZSTD_VERSION == ZSTD_VERSION and zlib.ZLIB_RUNTIME_VERSION == ZLIB_VERSION


# -- the blocks ------------------------------------------------------------------------------


def test_the_documentation_holds_every_vector() -> None:
    required = {
        "blob/": {"params", "plaintext", "id", "blob"},
        "chunk-list/": {"json"},
        "repo-json/": {"json"},
        "manifest/": {"json"},
        "envelope/": {"params", "json", "hex"},
        "index/": {"hex"},
        "values/": {"value", "hex"},
        "record/": {"json"},
    }
    for name, roles in VECTORS.items():
        prefix = name.split("/", 1)[0] + "/"
        assert prefix in required, f"{name}: unknown kind of vector"
        assert required[prefix] <= set(roles), f"{name}: roles {sorted(roles)}"
    for prefix in required:
        names(prefix)
    # One value per ext code: the code byte follows the ext header (fixext or ext 8).
    codes = set()
    for name in names("values/"):
        data = hex_bytes(VECTORS[name]["hex"])
        if 0xD4 <= data[0] <= 0xD8:
            codes.add(data[1])
        elif data[0] == 0xC7:
            codes.add(data[2])
    assert codes == set(range(1, 22))
    assert {"blob/plain-none", "blob/plain-zstd", "blob/plain-gzip"} <= set(VECTORS)
    assert {params(n)["aead"] for n in names("blob/")} >= {"aes-256-gcm", "chacha20-poly1305"}


# -- chunk blobs -----------------------------------------------------------------------------


def _blob_keys(p: dict[str, Any]) -> RepositoryKeys | None:
    if p["aead"] is None:
        return None
    return RepositoryKeys(bytes.fromhex(p["enc_key"]), bytes.fromhex(p["id_key"]), p["aead"])


def _spec_decode_blob(blob: bytes, cid: str, size: int, p: dict[str, Any]) -> bytes:
    """FORMAT.md, "Blobs", read without the project's classes."""
    assert blob[:4] == b"PTCK" and blob[4] == 1 and blob[7] == 0
    encrypted = blob[6] == 1
    assert encrypted == (p["aead"] is not None)
    payload = blob[8:]
    if encrypted:
        aad = _OBJECT_DOMAIN + b"chunk\x00" + cid.encode("ascii") + blob[:8]
        cipher = _aead(p["aead"], bytes.fromhex(p["enc_key"]))
        payload = cipher.decrypt(payload[:12], payload[12:], aad)
        assert blob[8:20] == bytes.fromhex(p["nonce"])
    codec = blob[5]
    if codec == 0:
        plain = payload
    elif codec == 1:
        plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    else:
        assert codec == 2
        plain = zlib.decompress(payload, 31)
    hasher = blake3.blake3(plain, key=bytes.fromhex(p["id_key"])) if encrypted else None
    assert (hasher or blake3.blake3(plain)).hexdigest() == cid
    assert len(plain) == size
    return plain


@pytest.mark.parametrize("name", names("blob/"))
def test_blob_decodes(name: str) -> None:
    vector = VECTORS[name]
    p = params(name)
    plain, blob = hex_bytes(vector["plaintext"]), hex_bytes(vector["blob"])
    cid = vector["id"].text
    codec = BlobCodec(Compression(*_codec(p["compression"])), _blob_keys(p))
    assert codec.chunk_id(plain) == cid
    assert codec.decode(blob, cid, len(plain)) == plain
    assert _spec_decode_blob(blob, cid, len(plain), p) == plain


@pytest.mark.parametrize("name", names("blob/"))
def test_blob_encodes(name: str, fixed_nonce: Any) -> None:
    vector = VECTORS[name]
    p = params(name)
    plain, blob = hex_bytes(vector["plaintext"]), hex_bytes(vector["blob"])
    keys = _blob_keys(p)
    if keys is not None:
        fixed_nonce(bytes.fromhex(p["nonce"]))
    written = BlobCodec(Compression(*_codec(p["compression"])), keys).encode(
        plain, vector["id"].text
    )
    if blob[5] == 0 or _same_compressor():
        assert written == blob
    else:  # another compressor: another valid frame, the same header and plaintext
        assert written[:8] == blob[:8]
        assert _spec_decode_blob(written, vector["id"].text, len(plain), p) == plain


def _codec(label: str) -> tuple[str, int]:
    codec, _, level = label.partition("-")
    return codec, int(level or 0)


# -- chunk lists, repo.json, manifests -------------------------------------------------------


def test_chunk_list() -> None:
    raw = text_bytes(VECTORS["chunk-list/two"]["json"])
    refs = decode_chunk_list(raw, "vector")
    assert encode_chunk_list(refs) == raw
    # It lists the two plain blobs above: [id, plaintext size, stored size].
    for ref, blob_name in zip(refs, ("blob/plain-none", "blob/plain-zstd"), strict=True):
        blob = VECTORS[blob_name]
        assert ref.id == blob["id"].text
        assert ref.size == len(hex_bytes(blob["plaintext"]))
        assert ref.stored == len(hex_bytes(blob["blob"]))


@pytest.mark.parametrize("name", names("repo-json/"))
def test_repo_json(name: str) -> None:
    raw = text_bytes(VECTORS[name]["json"])
    assert spec_checksum_ok(raw)
    config = decode_checked(raw, RepoConfig, name)
    assert encode_checked(msgspec.structs.replace(config, checksum=UNSIGNED)) == raw
    assert config.format == 1 and config.hash == "blake3-256"
    assert (config.encryption is None) == (name == "repo-json/plain")


def test_repo_json_key_wrap(fixed_nonce: Any) -> None:
    name = "repo-json/aes-256-gcm"
    p = params(name)
    config = decode_checked(text_bytes(VECTORS[name]["json"]), RepoConfig, name)
    assert config.encryption is not None
    master = bytes.fromhex(p["enc_key"]) + bytes.fromhex(p["id_key"])
    # The code: the passphrase unlocks the documented keys.
    header = EncryptionHeader.from_json(config.encryption)
    keys = unlock(header, p["passphrase"])
    assert keys.master == master
    # The specification: scrypt, then the AEAD with the canonical parameters as AAD.
    kdf = config.encryption["kdf"]
    salt = base64.b64decode(kdf["salt"])
    kek = Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
        p["passphrase"].encode()
    )
    assert kek.hex() == p["kek"]
    canonical = {"aead": config.encryption["aead"], "kdf": kdf}
    aad = _WRAP_DOMAIN + json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    wrapped = base64.b64decode(config.encryption["wrapped_key"])
    assert len(wrapped) == 92 and wrapped[:12] == bytes.fromhex(p["wrap_nonce"])
    assert AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], aad) == master
    assert wrapped[:12] + AESGCM(kek).encrypt(wrapped[:12], master, aad) == wrapped
    # The code wraps the same way: rewrapping under the same passphrase, with the documented
    # salt and nonce as its random draws, gives the documented header.
    fixed_nonce(salt, bytes.fromhex(p["wrap_nonce"]))
    assert rewrap(header, p["passphrase"], p["passphrase"]) == header


@pytest.mark.parametrize("name", names("manifest/"))
def test_manifest(name: str) -> None:
    raw = text_bytes(VECTORS[name]["json"])
    assert spec_checksum_ok(raw)
    manifest = decode_checked(raw, Manifest, name)
    assert encode_checked(msgspec.structs.replace(manifest, checksum=UNSIGNED)) == raw
    # The writer chooses the lowest format that expresses the manifest.
    assert manifest_format(manifest.entries, manifest.warnings) == manifest.format
    assert name.endswith(f"format-{manifest.format}")


def test_the_format_1_manifest_leads_to_the_value() -> None:
    """manifest -> chunk reference -> blob -> plaintext -> value, all documented."""
    manifest = decode_checked(
        text_bytes(VECTORS["manifest/format-1"]["json"]), Manifest, "manifest/format-1"
    )
    entries = {entry.name: entry for entry in manifest.entries}
    for entry_name, blob_name in (("portfolio", "blob/plain-zstd"), ("notes/hello.txt", None)):
        blob_name = blob_name or "blob/plain-none"
        (ref,) = entries[entry_name].chunks
        vector = VECTORS[blob_name]
        blob = hex_bytes(vector["blob"])
        assert (ref.id, ref.stored) == (vector["id"].text, len(blob))
        plain = BlobCodec().decode(blob, ref.id, ref.size)
        assert len(plain) == entries[entry_name].size
    portfolio = entries["portfolio"]
    assert portfolio.encoding == "msgpack-tagged-1"
    plain = BlobCodec().decode(
        hex_bytes(VECTORS["blob/plain-zstd"]["blob"]), portfolio.chunks[0].id, portfolio.size
    )
    assert plain == hex_bytes(VECTORS["values/worked-example"]["hex"])
    assert_same(decode_value(plain), _value("values/worked-example"))


def test_envelope(fixed_nonce: Any) -> None:
    name = "envelope/aes-256-gcm"
    p = params(name)
    vector = VECTORS[name]
    raw, stored = text_bytes(vector["json"]), hex_bytes(vector["hex"])
    enc_key = bytes.fromhex(p["enc_key"])
    keys = RepositoryKeys(enc_key, bytes(32), p["aead"])
    assert open_manifest(stored, keys, p["backup_id"]) == raw
    manifest = decode_checked(raw, Manifest, name)
    assert manifest.backup_id == p["backup_id"]
    assert manifest.entries[0].chunks[0].id == VECTORS["blob/aes-256-gcm-zstd"]["id"].text
    # The specification: PTEM 01, nonce, AEAD(ciphertext || tag) bound to the backup id.
    aad = _OBJECT_DOMAIN + b"manifest\x00" + p["backup_id"].encode()
    assert stored[:5] == b"PTEM\x01" and stored[5:17] == bytes.fromhex(p["nonce"])
    assert AESGCM(enc_key).decrypt(stored[5:17], stored[17:], aad) == raw
    fixed_nonce(bytes.fromhex(p["nonce"]))
    assert seal_manifest(raw, keys, p["backup_id"]) == stored


def test_snapshot_index() -> None:
    stored = hex_bytes(VECTORS["index/plain"]["hex"])
    assert stored[:5] == b"PTIX\x01"
    assert blake3.blake3(stored[37:]).digest() == stored[5:37]
    entries = decode_index(stored, None)
    assert encode_index(entries, None) == stored
    manifest = decode_checked(
        text_bytes(VECTORS["manifest/format-1"]["json"]), Manifest, "manifest/format-1"
    )
    ((version, summary),) = [(e.version, e.summary) for e in entries]
    assert summary == summarize(manifest)
    assert version == "2004a-187b0a7c3a3e1d55-1c5"


# -- records documented in FORMAT.md -----------------------------------------------------------


def test_collection_and_lease_records() -> None:
    groups = {
        Collection: (
            "record/collection",
            "record/collection-packs",
            "record/collection-full-disk",
        ),
        LeaseRecord: ("record/lease",),
    }
    for kind, names in groups.items():
        documented: set[str] = set()
        for name in names:
            raw = text_bytes(VECTORS[name]["json"])
            record = msgspec.json.decode(raw, type=kind)
            assert msgspec.json.encode(record) == raw, name
            documented |= set(json.loads(raw))
        assert documented == set(kind.__struct_fields__), names


def test_status_record() -> None:
    raw = text_bytes(VECTORS["record/status"]["json"])
    document = json.loads(raw)
    status = HostStatus.from_json(document)
    assert status.to_json() == document
    # As written by the code: indented by 1, sorted keys.
    assert json.dumps(status.to_json(), indent=1, sort_keys=True).encode() == raw


# -- values ----------------------------------------------------------------------------------


def _namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "__builtins__": {"complex": complex, "frozenset": frozenset},
        "datetime": dt.datetime,
        "date": dt.date,
        "time": dt.time,
        "timedelta": dt.timedelta,
        "timezone": dt.timezone,
        "ZoneInfo": zoneinfo.ZoneInfo,
        "Decimal": Decimal,
        "Fraction": Fraction,
        "UUID": uuid.UUID,
        "OrderedDict": collections.OrderedDict,
        "PurePosixPath": pathlib.PurePosixPath,
        "PureWindowsPath": pathlib.PureWindowsPath,
        "PosixPath": pathlib.PosixPath,
        "HTTPStatus": http.HTTPStatus,
        "nan": float("nan"),
        "inf": float("inf"),
    }
    return namespace


def _value(name: str) -> Any:
    expression = VECTORS[name]["value"].text
    namespace = _namespace()
    for alias, module in (("np", "numpy"), ("pd", "pandas")):
        if f"{alias}." in expression:
            namespace[alias] = pytest.importorskip(module)
    return eval(expression, namespace)


@pytest.mark.parametrize("name", names("values/"))
def test_value_decodes(name: str) -> None:
    expected = _value(name)
    assert_same(decode_value(hex_bytes(VECTORS[name]["hex"])), expected, name)


@pytest.mark.parametrize("name", names("values/"))
def test_value_encodes(name: str) -> None:
    assert encode_value(_value(name)) == hex_bytes(VECTORS[name]["hex"])


# -- VALUES.md and FORMAT.md's table of ext codes --------------------------------------------


def test_values_md_is_generated_from_the_codec_docstring() -> None:
    assert VALUES_MD.read_text(encoding="utf-8") == render(codec_docstring()), (
        "docs/VALUES.md differs from the codec's docstring: run python -m tools.gen_values_doc"
    )


def test_format_md_lists_the_ext_codes_of_the_codec() -> None:
    """FORMAT.md's table (code, type, payload kind) agrees with the codec's own table."""
    row = re.compile(r"^(\d{1,2})\s+(?:.+?)\s{2,}(msgpack|raw)\s", re.MULTILINE)
    in_codec = {int(code): kind for code, kind in row.findall(codec_docstring())}
    assert set(in_codec) == set(range(1, 22))
    format_md = (DOCS / "FORMAT.md").read_text(encoding="utf-8")
    md_row = re.compile(r"^\| (\d{1,2}) \| [^|]+ \| (msgpack|raw) \|", re.MULTILINE)
    in_format = {int(code): kind for code, kind in md_row.findall(format_md)}
    assert in_format == in_codec
