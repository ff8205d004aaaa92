"""Fuzzing the parsers and the read paths with damaged and hostile input.

Property everywhere: the code either succeeds or raises a ``BackupError`` subclass: never
another exception type, never a hang, never wrong data. Inputs: random bytes; valid objects
with flipped, truncated, inserted or deleted bytes; and, the hard case, structurally valid JSON
with a VALID checksum (recomputed after editing) but hostile content: negative or huge sizes,
bad chunk ids, traversal names, duplicate names, lying chunk-list counts, future formats, odd
timestamps. Restores of hostile manifests must write nothing outside the target.

Each property runs as ``fuzz_*`` (hypothesis drives it) inside a ``test_*`` that then asserts on
the outcomes of all its examples: at least that some damaged or hostile inputs were refused, so
a reader that stops checking (e.g. ignores a checksum) fails here even though it raises nothing.
``python -m bench.tallies fuzz`` runs this module and prints the outcome counts per target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from layout_helpers import preserved, write_stored
from stored_chunks import is_packed, read_stored

from src.infra.backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    FormatVersionError,
    RecoveryManager,
)
from src.infra.backup.errors import CorruptDataError
from src.infra.backup.format.blobs import MAGIC, BlobCodec, chunk_id
from src.infra.backup.format.manifest import (
    FORMAT_VERSION,
    REPO_FORMAT_VERSION,
    ChunkRef,
    Collection,
    Entry,
    Manifest,
    RepoConfig,
    decode_checked,
    decode_chunk_list,
    encode_checked,
    encode_chunk_list,
)
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.repository.check import check_repository
from src.infra.backup.repository.locks import LeaseRecord
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore

pytestmark = pytest.mark.timeout(240)  # a hang fails instead of blocking the suite
# derandomize: the same examples on every run, so a failure here is reproducible and a fix
# turns it green for good (drop it locally to explore further).
FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Whole-repository examples are slow to shrink: report the first failing example as found.
FULL = settings(
    FUZZ,
    max_examples=50,
    deadline=timedelta(seconds=10),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TALLY: dict[str, Counter[str]] = {}  # outcome counts per target, for bench/tallies.py
ZERO_SUM = "0" * 64
# A target key naming the stored blob of a chunk (in a pack, by default), not a file.
CHUNK = "chunk:"


def chunk_target(cid: str) -> str:
    return f"{CHUNK}{cid}"


def stored_bytes(repo: Path, key: str) -> bytes:
    """The bytes of the object ``key`` names (a file, or a chunk's stored blob)."""
    if key.startswith(CHUNK):
        return read_stored(repo, key[len(CHUNK) :])
    return (repo / key).read_bytes()


def tally(target: str, outcome: str) -> None:
    TALLY.setdefault(target, Counter())[outcome] += 1


def run_fuzz(fuzz: Callable[..., None], target: str, *fixtures: object) -> Counter[str]:
    """Run the property ``fuzz`` (every example) and return what it tallied under ``target``."""
    before = Counter(TALLY.get(target, Counter()))
    fuzz(*fixtures)
    counts = TALLY.get(target, Counter()) - before
    assert counts, f"{target}: no example ran"
    return counts


def refused(counts: Counter[str], prefix: str = "") -> int:
    """How many outcomes (``prefix`` + the outcome) were a refusal: a BackupError class."""
    return sum(n for key, n in counts.items() if key.startswith(prefix) and key.endswith("Error"))


def outcome_of(call: Callable[[], object]) -> tuple[str, object]:
    """Run ``call``: ("ok", result), or (error class name, the BackupError). Any other
    exception propagates (that is the failure the fuzzing looks for)."""
    try:
        return "ok", call()
    except BackupError as exc:
        return type(exc).__name__, exc


# -- strategies --------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with 1-4 byte flips, high bytes (invalid UTF-8 in text), truncations,
    insertions, deletions or overwrites."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "high", "truncate", "insert", "delete", "overwrite"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "high" and data:
            data[where] |= 0x80
        elif kind == "truncate":
            del data[where:]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        else:
            piece = draw(st.binary(min_size=1, max_size=8))
            data[where : where + len(piece)] = piece
    return bytes(data)


def decode_as(raw: bytes, repo_json: bool) -> Manifest | RepoConfig:
    """``decode_checked`` as ``repo.json`` or as a manifest."""
    if repo_json:
        return decode_checked(raw, RepoConfig, "x")
    return decode_checked(raw, Manifest, "x")


def checksummed(doc: dict[str, Any]) -> bytes:
    """``doc`` as a manifest/repo.json file with a valid checksum, whatever it holds (the
    checksum recomputed exactly as ``encode_checked`` does, for documents no schema allows)."""
    doc = {k: v for k, v in doc.items() if k != "checksum"}
    doc["checksum"] = ZERO_SUM
    raw = msgspec.json.encode(doc)
    return raw[:-66] + blake3.blake3(raw).hexdigest().encode() + b'"}'


HUGE = [2**31, 2**53 + 1, 2**62, 2**63 - 1, 2**64 - 1]
BAD_INTS = st.sampled_from([-1, -(2**63), 0, 1, *HUGE]) | st.integers(-(2**63), 2**64 - 1)
BAD_IDS = st.sampled_from(
    [
        "",
        "..",
        "../" + "a" * 61,
        "../../../../etc/passwd",
        "/etc/passwd",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "0" * 64,
        "ab/" + "c" * 61,
        "\x00" * 64,
        "é" * 64,
    ]
) | st.text(max_size=70)
TRAVERSAL_NAMES = [
    "..",
    ".",
    "",
    "/",
    "../x",
    "../../x",
    "../../../outside/pwned",
    "a/../../../outside/pwned",
    "a/./b",
    "a//b",
    "x\x00y",
    "a\\..\\..\\b",
    "/etc/passwd",
    "//etc/passwd",
    "sub/dir/file.txt",
]
BAD_TIMES = [
    "2025-12-17T10:00:00",  # naive
    "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "not a time",
    "",
]


# -- a real repository to damage ---------------------------------------------------------------


class Template:
    """A small real repository: an older backup with a large entry (chunk lists), a data
    entry and two files; a newer one sharing most chunks. (A plain class, so hypothesis
    prints it short.)"""

    def __init__(
        self,
        root: Path,
        sources: Path,
        ids: list[str],
        data: dict[str, dict[str, Any]],
        files: dict[str, bytes],
    ) -> None:
        self.root = root
        self.sources = sources
        self.ids = ids  # oldest first
        self.data = data
        self.files = files

    def __repr__(self) -> str:
        return f"Template({self.root})"

    def config(self, repo: Path) -> BackupConfig:
        return BackupConfig(
            backup_path=repo,
            retention_days=0,
            sources=["files/"],
            base_dir=self.sources,
            auto_prune=False,
        )

    def manifest(self, backup_id: str) -> Manifest:
        raw = (self.root / "snapshots" / f"{backup_id}.json").read_bytes()
        return decode_checked(raw, Manifest, backup_id)

    def targets(self) -> dict[str, str]:
        """Keys of interesting objects: both manifests, repo.json, a small chunk, a chunk of
        the large entry, and a chunk-list blob (their stored blobs: ``chunk:<id>``)."""
        old = self.manifest(self.ids[0])
        history = next(e for e in old.entries if e.name == "history")
        portfolio = next(e for e in old.entries if e.name == "portfolio")
        repo = Repository.open(LocalStore(self.root), create=False)
        return {
            "manifest_new": f"snapshots/{self.ids[1]}.json",
            "manifest_old": f"snapshots/{self.ids[0]}.json",
            "repo_json": "repo.json",
            "chunk_small": chunk_target(portfolio.chunks[0].id),
            "chunk_large": chunk_target(repo.entry_refs(history)[3].id),
            "chunk_list": chunk_target(history.lists[0].id),
        }


TICKS = b"".join(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(60_000))


def trades(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": j,
            "symbol": ("BTC/USD", "ETH/USD")[j % 2],
            "price": 50000.0 + j * 0.25,
            "size": round(0.001 * (j % 100 + 1), 6),
        }
        for j in range(count)
    ]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("fuzz")
    sources = base / "src"
    (sources / "files" / "live_runs").mkdir(parents=True)
    files = {
        "files/config.toml": b"[strategy]\nname = 'ma'\n",
        "files/live_runs/fills.jsonl": b"".join(b'{"t": %d}\n' % i for i in range(500)),
    }
    for name, content in files.items():
        (sources / name).write_bytes(content)
    root = base / "repo"
    manager = BackupManager(Template(root, sources, [], {}, {}).config(root))
    data: dict[str, dict[str, Any]] = {}
    ids = []
    for n in range(2):
        state = {
            "portfolio": {
                "equity": 10000.0 + n,
                "as_of": datetime(2025, 12, 17, tzinfo=timezone.utc),
            },
            # Large enough for chunk lists (> 32 chunks), cheap to decode: fast examples.
            "history": {"trades": trades(200 + n), "ticks": TICKS[: len(TICKS) - 4096 * n]},
        }
        ids.append(manager.create_backup(state))
        data[ids[-1]] = state
    tpl = Template(root, sources, ids, data, files)
    history = [e for e in tpl.manifest(ids[0]).entries if e.name == "history"]
    assert history[0].lists, "the large entry must use chunk lists"
    assert is_packed(root)  # the default format: chunks are stored in packs
    return tpl


@pytest.fixture(scope="module")
def workdir(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One working copy of the template, restored after each example."""
    work = tmp_path_factory.mktemp("fuzz-work")
    shutil.copytree(template.root, work / "repo")
    yield work / "repo"


class _Unexpected(logging.Handler):
    """Collects "failed unexpectedly" records: ``verify_backup`` swallows every exception
    into ``False``, so this is how a non-BackupError inside it becomes visible."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def exercise(
    tpl: Template,
    repo: Path,
    target: str,
    *,
    trusted: bool,
    restore: Callable[[RecoveryManager], None] | None = None,
    planted_id: str | None = None,
) -> dict[str, str]:
    """Every read path on ``repo`` with a fresh manager: open, list, load, verify,
    restore_latest, check. ``trusted``: no valid-checksum hostile content was planted, so any
    data that loads must equal what was backed up. ``planted_id``: a planted backup, loaded
    and verified first (before the good ones fill the caches)."""
    outcomes: dict[str, str] = {}
    manager = BackupManager(tpl.config(repo))
    recovery = RecoveryManager(manager)
    watcher = _Unexpected()
    logging.getLogger("src.infra.backup").addHandler(watcher)
    try:
        outcomes["open"], _ = outcome_of(lambda: Repository.open(LocalStore(repo), create=False))
        outcomes["list"], _ = outcome_of(manager.list_backups)
        if planted_id is not None:
            outcomes["load_planted"], _ = outcome_of(lambda: manager.load_backup(planted_id))
            outcomes["verify_planted"] = str(recovery.verify_backup(planted_id))
        for n, backup_id in enumerate(tpl.ids):
            outcomes[f"load{n}"], loaded = outcome_of(partial(manager.load_backup, backup_id))
            if trusted and outcomes[f"load{n}"] == "ok":
                assert loaded == tpl.data[backup_id], f"{target}: wrong data loaded for {backup_id}"
            ok = recovery.verify_backup(backup_id)  # a bool; unexpected errors are logged
            outcomes[f"verify{n}"] = str(ok)
            if trusted and ok:
                assert outcomes[f"load{n}"] == "ok", f"{target}: verifies but does not load"
        outcomes["restore_latest"], latest = outcome_of(recovery.restore_latest_backup)
        if trusted and outcomes["restore_latest"] == "ok":
            assert latest in tpl.data.values(), f"{target}: restore_latest gave wrong data"
        outcomes["check"], report = outcome_of(lambda: check_repository(manager.repository))
        if outcomes["check"] == "ok" and not getattr(report, "clean", True):
            outcomes["check"] = "damage reported"
        if restore is not None:
            restore(recovery)
    finally:
        logging.getLogger("src.infra.backup").removeHandler(watcher)
    leaked = [
        f"{r.getMessage()}: {r.exc_info[1]!r}"
        for r in watcher.records
        if r.exc_info and not isinstance(r.exc_info[1], BackupError)
    ]
    assert not leaked, leaked
    return outcomes


@contextlib.contextmanager
def planted(
    repo: Path, files: dict[str, bytes], sizes: dict[str, int] | None = None
) -> Iterator[None]:
    """Write ``files`` (key -> bytes) into ``repo``; put the originals back afterwards. A key
    ``chunk:<id>`` is the stored blob of that chunk (see tests/layout_helpers.py
    ``write_stored``: in a pack, a chunk not stored yet in a new pack; ``sizes``: the
    plaintext sizes of such new chunks)."""
    chunks = {key[len(CHUNK) :]: raw for key, raw in files.items() if key.startswith(CHUNK)}
    originals: dict[str, bytes | None] = {}
    with preserved(repo) if chunks else contextlib.nullcontext():
        for cid, content in chunks.items():
            write_stored(repo, cid, content, size=(sizes or {}).get(cid))
        for key, content in files.items():
            if key.startswith(CHUNK):
                continue
            path = repo / key
            originals[key] = path.read_bytes() if path.exists() else None
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        try:
            yield
        finally:
            for key, old in originals.items():
                if old is None:
                    (repo / key).unlink(missing_ok=True)
                else:
                    (repo / key).write_bytes(old)


def blob_of(plain: bytes, codec: int = 1, *, content_size: bool = True) -> bytes:
    """A chunk blob in the documented format (header + payload), built by hand."""
    if codec == 1:
        payload = zstandard.ZstdCompressor(write_content_size=content_size).compress(plain)
    elif codec == 2:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        payload = compressor.compress(plain) + compressor.flush()
    else:
        payload = plain
    return MAGIC + bytes((1, codec, 0, 0)) + payload


def document(raw: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(raw)
    return doc


def seal(doc: dict[str, Any], kind: type[Manifest] | type[RepoConfig]) -> bytes:
    """A file for ``doc`` with a valid checksum: by ``encode_checked`` when the document
    still fits the schema, else computed the same way by hand."""
    try:
        typed = msgspec.convert({k: v for k, v in doc.items() if k != "checksum"}, kind)
    except (msgspec.ValidationError, TypeError, ValueError):
        return checksummed(doc)
    return encode_checked(typed)


# -- 1. decoders on their own ------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=3000), as_manifest=st.booleans())
def fuzz_decode_checked_random_bytes(raw: bytes, as_manifest: bool) -> None:
    result, _ = outcome_of(lambda: decode_as(raw, not as_manifest))
    tally("decode_checked random bytes", result)


def test_decode_checked_random_bytes() -> None:
    counts = run_fuzz(fuzz_decode_checked_random_bytes, "decode_checked random bytes")
    assert "ok" not in counts, counts  # random bytes never carry a valid checksum


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from(["format", "backup_id", "entries", "stats", "time_utc", "chunker", "hash"])
        | st.text(max_size=8),
        JSON_VALUES,
        max_size=8,
    ),
    as_manifest=st.booleans(),
)
def fuzz_decode_checked_random_json_with_valid_checksum(
    doc: dict[str, Any], as_manifest: bool
) -> None:
    result, _ = outcome_of(lambda: decode_as(checksummed(doc), not as_manifest))
    tally("decode_checked random JSON, valid checksum", result)


def test_decode_checked_random_json_with_valid_checksum() -> None:
    target = "decode_checked random JSON, valid checksum"
    counts = run_fuzz(fuzz_decode_checked_random_json_with_valid_checksum, target)
    assert refused(counts) > 0, counts  # the schema refuses what the checksum lets through


@FUZZ
@given(data=st.data(), which=st.sampled_from(["manifest_new", "manifest_old", "repo_json"]))
def test_decode_checked_detects_every_change(
    template: Template, data: st.DataObject, which: str
) -> None:
    original = (template.root / template.targets()[which]).read_bytes()
    raw = data.draw(mutated(original))
    result, _ = outcome_of(lambda: decode_as(raw, which == "repo_json"))
    if raw != original:
        tally("corruptions (manifest/repo.json bytes)", "tried")
        assert result != "ok", "a changed manifest passed its checksum"
        tally("corruptions (manifest/repo.json bytes)", "detected")


def rechecksum(raw: bytes) -> bytes:
    """``raw`` (a manifest or repo.json whose body was edited byte-wise) with its checksum
    recomputed, so the damage gets past the checksum to the parser."""
    body = raw[:-66] + ZERO_SUM.encode() + b'"}'
    return raw[:-66] + blake3.blake3(body).hexdigest().encode() + b'"}'


@st.composite
def mutated_body(draw: st.DrawFn, original: bytes) -> bytes:
    """Byte-level damage to the body, checksum recomputed (invalid UTF-8 inside strings,
    broken numbers, truncated structure, ...)."""
    body = draw(mutated(original[:-66]))
    return rechecksum(body + original[-66:])


@FUZZ
@given(data=st.data(), which=st.sampled_from(["manifest_new", "manifest_old", "repo_json"]))
def fuzz_decode_checked_mutated_with_valid_checksum(
    template: Template, data: st.DataObject, which: str
) -> None:
    original = (template.root / template.targets()[which]).read_bytes()
    raw = data.draw(mutated_body(original))
    result, _ = outcome_of(lambda: decode_as(raw, which == "repo_json"))
    tally("decode_checked byte damage, valid checksum", result)


def test_decode_checked_mutated_with_valid_checksum(template: Template) -> None:
    target = "decode_checked byte damage, valid checksum"
    counts = run_fuzz(fuzz_decode_checked_mutated_with_valid_checksum, target, template)
    assert refused(counts) > 0, counts


@FUZZ
@given(raw=st.binary(max_size=2000) | JSON_VALUES.map(msgspec.json.encode))
def fuzz_decode_chunk_list_random(raw: bytes) -> None:
    result, refs = outcome_of(lambda: decode_chunk_list(raw, "x"))
    if result == "ok":
        assert isinstance(refs, list) and all(isinstance(r, ChunkRef) for r in refs)
    tally("decode_chunk_list random", result)


def test_decode_chunk_list_random() -> None:
    counts = run_fuzz(fuzz_decode_chunk_list_random, "decode_chunk_list random")
    assert refused(counts) > 0, counts


@FUZZ
@given(data=st.data())
def fuzz_decode_chunk_list_mutated(data: st.DataObject) -> None:
    refs = [ChunkRef(chunk_id(bytes([n])), n + 1, n + 9) for n in range(5)]
    raw = data.draw(mutated(encode_chunk_list(refs)))
    result, _ = outcome_of(lambda: decode_chunk_list(raw, "x"))
    tally("decode_chunk_list mutated", result)


def test_decode_chunk_list_mutated() -> None:
    counts = run_fuzz(fuzz_decode_chunk_list_mutated, "decode_chunk_list mutated")
    assert refused(counts) > 0, counts


PLAIN = b"fills and positions " * 40


@FUZZ
@given(
    blob=st.binary(max_size=600)
    | st.builds(lambda tail: MAGIC + tail, st.binary(max_size=600))
    | st.builds(
        lambda head, payload: MAGIC + bytes(head) + payload,
        st.lists(st.integers(0, 255), min_size=4, max_size=4),
        st.sampled_from([blob_of(PLAIN)[8:], blob_of(PLAIN, 2)[8:], PLAIN, b""]),
    ),
    size=st.sampled_from([len(PLAIN)]) | BAD_INTS,
    cid=st.sampled_from([chunk_id(PLAIN)]) | BAD_IDS,
)
def fuzz_blob_decode_random(blob: bytes, size: int, cid: str) -> None:
    result, plain = outcome_of(lambda: BlobCodec().decode(blob, cid, size))
    if result == "ok":
        assert plain == PLAIN and cid == chunk_id(PLAIN)
    tally("BlobCodec.decode random", result)


def test_blob_decode_random() -> None:
    counts = run_fuzz(fuzz_blob_decode_random, "BlobCodec.decode random")
    assert refused(counts) > 0, counts


@FUZZ
@given(data=st.data(), codec=st.sampled_from([0, 1, 2]))
def fuzz_blob_decode_mutated_never_wrong_data(data: st.DataObject, codec: int) -> None:
    original = blob_of(PLAIN, codec)
    blob = data.draw(mutated(original))
    result, plain = outcome_of(lambda: BlobCodec().decode(blob, chunk_id(PLAIN), len(PLAIN)))
    if blob != original:
        tally("corruptions (chunk blobs)", "tried")
        tally("corruptions (chunk blobs)", "detected" if result != "ok" else "harmless")
    if result == "ok":
        assert plain == PLAIN  # a change that still decodes must decode to the right bytes


def test_blob_decode_mutated_never_wrong_data() -> None:
    target = "corruptions (chunk blobs)"
    counts = run_fuzz(fuzz_blob_decode_mutated_never_wrong_data, target)
    assert counts["detected"] > 0, counts


@FUZZ
@given(
    codec=st.sampled_from([1, 2]),
    content_size=st.booleans(),
    size=BAD_INTS,
)
def fuzz_blob_decode_hostile_expected_size(codec: int, content_size: bool, size: int) -> None:
    """The expected size comes from a manifest or chunk list, i.e. from the repository: a
    negative or huge one must be refused, not passed on to the decompressor."""
    blob = blob_of(PLAIN, codec, content_size=content_size)
    result, _ = outcome_of(lambda: BlobCodec().decode(blob, chunk_id(PLAIN), size))
    if size != len(PLAIN):
        assert result != "ok", f"expected size {size} accepted for {len(PLAIN)} bytes"
    tally("BlobCodec.decode hostile sizes", result)


def test_blob_decode_hostile_expected_size() -> None:
    counts = run_fuzz(fuzz_blob_decode_hostile_expected_size, "BlobCodec.decode hostile sizes")
    assert refused(counts) > 0, counts


# -- 2. full read paths on a real repository ---------------------------------------------------


TARGETS = ["manifest_new", "manifest_old", "repo_json", "chunk_small", "chunk_large", "chunk_list"]


@FULL
@given(which=st.sampled_from(TARGETS), raw=st.binary(max_size=4096))
def fuzz_read_paths_random_bytes(template: Template, workdir: Path, which: str, raw: bytes) -> None:
    key = template.targets()[which]
    with planted(workdir, {key: raw}):
        outcomes = exercise(template, workdir, which, trusted=True)
    errors = set(outcomes.values()) - {"ok", "True"}
    assert errors, f"random bytes in place of {key} went unnoticed: {outcomes}"
    tally("read paths, random bytes", "some error")


def test_read_paths_random_bytes(template: Template, workdir: Path) -> None:
    run_fuzz(fuzz_read_paths_random_bytes, "read paths, random bytes", template, workdir)


@FULL
@given(which=st.sampled_from(TARGETS), data=st.data())
def fuzz_read_paths_mutated_files(
    template: Template, workdir: Path, which: str, data: st.DataObject
) -> None:
    key = template.targets()[which]
    original = stored_bytes(template.root, key)
    raw = data.draw(mutated(original))
    with planted(workdir, {key: raw}):
        outcomes = exercise(template, workdir, which, trusted=True)
    if raw != original:
        detected = bool(set(outcomes.values()) - {"ok", "True"})
        tally("corruptions (repository files)", "tried")
        tally("corruptions (repository files)", "detected" if detected else "harmless")


def test_read_paths_mutated_files(template: Template, workdir: Path) -> None:
    target = "corruptions (repository files)"
    counts = run_fuzz(fuzz_read_paths_mutated_files, target, template, workdir)
    assert counts["detected"] > 0, counts


@FULL
@given(which=st.sampled_from(["manifest_new", "manifest_old", "repo_json"]), data=st.data())
def fuzz_read_paths_byte_damage_with_valid_checksum(
    template: Template, workdir: Path, which: str, data: st.DataObject
) -> None:
    key = template.targets()[which]
    raw = data.draw(mutated_body((template.root / key).read_bytes()))
    with planted(workdir, {key: raw}):
        outcomes = exercise(template, workdir, which, trusted=False)
    target = "read paths, byte damage with valid checksum"
    tally(target, f"list {outcomes['list']}")
    tally(target, "some error" if set(outcomes.values()) - {"ok", "True"} else "all ok")


def test_read_paths_byte_damage_with_valid_checksum(template: Template, workdir: Path) -> None:
    target = "read paths, byte damage with valid checksum"
    fuzz = fuzz_read_paths_byte_damage_with_valid_checksum
    counts = run_fuzz(fuzz, target, template, workdir)
    assert counts["some error"] > 0, counts


HOSTILE_ID = "manual_20991231_235959"


@st.composite
def hostile_manifest(draw: st.DrawFn, base: dict[str, Any], sandbox: Path) -> dict[str, Any]:
    """The newer backup's manifest under ``HOSTILE_ID`` with 1-3 hostile edits."""
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(base))
    doc["backup_id"] = HOSTILE_ID
    names = [*TRAVERSAL_NAMES, f"{sandbox}/outside/pwned", f"{sandbox}/outside/decoy.txt"]
    for _ in range(draw(st.integers(1, 3))):
        entries = doc["entries"] if isinstance(doc.get("entries"), list) else []
        entry = draw(st.sampled_from(entries)) if entries else {}
        edit = draw(
            st.sampled_from(
                [
                    "entry_size",
                    "chunk_size",
                    "chunk_stored",
                    "chunk_id",
                    "list_id",
                    "list_count",
                    "list_size",
                    "name",
                    "file",
                    "duplicate",
                    "collide",
                    "format",
                    "backup_id",
                    "time",
                    "encoding",
                    "kind",
                    "wrong_type",
                    "no_entries",
                    "file_meta",
                    "swap_chunks",
                    "stats",
                    "tags",
                ]
            )
        )
        chunks = entry.get("chunks") or []
        lists = entry.get("lists") or []
        if edit == "entry_size" and entry:
            entry["size"] = draw(BAD_INTS)
        elif edit in ("chunk_size", "chunk_stored") and chunks:
            draw(st.sampled_from(chunks))[1 if edit == "chunk_size" else 2] = draw(BAD_INTS)
        elif edit == "chunk_id" and chunks:
            draw(st.sampled_from(chunks))[0] = draw(BAD_IDS)
        elif edit == "list_id" and lists:
            draw(st.sampled_from(lists))[0] = draw(BAD_IDS)
        elif edit == "list_count" and lists:
            ref = draw(st.sampled_from(lists))
            ref[1] = draw(st.sampled_from([ref[1] - 1, ref[1] + 1, 0]) | BAD_INTS)
        elif edit == "list_size" and lists:
            draw(st.sampled_from(lists))[2] = draw(BAD_INTS)
        elif edit == "name" and entry:
            entry["name"] = draw(st.sampled_from(names))
        elif edit == "file" and entry:
            entry.update(kind="file", path=draw(st.sampled_from(names)), mode=0o644)
            entry["name"] = draw(st.sampled_from(names))
            entry.pop("encoding", None)
        elif edit == "duplicate" and entry:
            entries.append(dict(entry))
        elif edit == "collide" and entry:
            # data entry "x" restores to "x.json"; a file entry named "x.json" collides.
            twin = dict(entry, kind="file", name=f"{entry.get('name')}.json", mode=0o600)
            twin.pop("encoding", None)
            entries.append(twin)
        elif edit == "format":
            doc["format"] = draw(st.sampled_from([2, 0, -1, 2**63 - 1, "1", None]))
        elif edit == "backup_id":
            doc["backup_id"] = draw(BAD_IDS)
        elif edit == "time":
            doc["time_utc"] = draw(st.sampled_from(BAD_TIMES))
        elif edit == "encoding" and entry:
            entry["encoding"] = draw(st.sampled_from([None, "", "pickle", "x" * 300, 5]))
        elif edit == "kind" and entry:
            entry["kind"] = draw(st.sampled_from(["symlink", "", None, 5, "DATA"]))
        elif edit == "wrong_type":
            field_name = draw(st.sampled_from(sorted(doc)))
            if field_name != "checksum":
                doc[field_name] = draw(st.sampled_from([None, 1, -1, "x", [], {}, 1.5, True]))
        elif edit == "no_entries":
            doc["entries"] = []
        elif edit == "file_meta" and entry:
            entry.update(kind="file", mode=draw(BAD_INTS), mtime_ns=draw(BAD_INTS))
            entry.pop("encoding", None)
        elif edit == "swap_chunks" and len(entries) > 1:
            a, b = entries[0], entries[-1]
            a["chunks"], b["chunks"] = b.get("chunks", []), a.get("chunks", [])
            a["lists"], b["lists"] = b.get("lists", []), a.get("lists", [])
        elif edit == "stats" and isinstance(doc.get("stats"), dict):
            doc["stats"]["logical_bytes"] = draw(BAD_INTS)
        elif edit == "tags":
            doc["tags"] = {"../x": "y" * 10_000, "": ""}
            doc["note"] = "\x00" * 5000
    return doc


@pytest.fixture(scope="module")
def sandbox(workdir: Path) -> Path:
    path = workdir.parent / "sandbox"
    (path / "outside").mkdir(parents=True)
    (path / "a" / "b").mkdir(parents=True)
    (path / "outside" / "decoy.txt").write_text("do not touch")
    return path


def fingerprint(root: Path, skip: Path) -> dict[str, tuple[int, int, bytes | None]]:
    found: dict[str, tuple[int, int, bytes | None]] = {}
    for directory, subdirs, files in os.walk(root):
        if Path(directory) == skip or skip in Path(directory).parents:
            subdirs[:] = []
            continue
        for name in subdirs + files:
            path = Path(directory) / name
            if path == skip:
                continue
            st_ = path.lstat()
            if path.is_dir() and not path.is_symlink():  # its mtime moves with its entries
                found[str(path.relative_to(root))] = (st_.st_mode, 0, None)
                continue
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            found[str(path.relative_to(root))] = (st_.st_mode, st_.st_mtime_ns, content)
    return found


def planted_verdict(outcomes: dict[str, str]) -> str:
    """Whether the planted backup was refused: it did not load, or did not verify."""
    refused = outcomes["load_planted"] != "ok" or outcomes["verify_planted"] != "True"
    return "planted refused" if refused else "planted accepted"


def restore_checked(sandbox: Path, backup_id: str, stats: str) -> Callable[[RecoveryManager], None]:
    """A restore of ``backup_id`` into ``sandbox/a/b/target`` that must write nothing else."""

    def run(recovery: RecoveryManager) -> None:
        target = sandbox / "a" / "b" / "target"
        outer = sandbox.parent  # holds the working repository too
        before = fingerprint(outer, target)
        try:
            result, _ = outcome_of(lambda: recovery.restore_to_directory(backup_id, target))
            tally(stats, f"restore_to_directory {result}")
            after = fingerprint(outer, target)
            assert after == before, f"restore wrote outside its target: {set(after) ^ set(before)}"
        finally:
            shutil.rmtree(target, ignore_errors=True)

    return run


@FULL
@given(data=st.data())
def fuzz_read_paths_hostile_manifest(
    template: Template, workdir: Path, sandbox: Path, data: st.DataObject
) -> None:
    base = document((template.root / template.targets()["manifest_new"]).read_bytes())
    doc = data.draw(hostile_manifest(base, sandbox))
    raw = seal(doc, Manifest)
    what = "read paths, hostile manifest (valid checksum)"
    with planted(workdir, {f"snapshots/{HOSTILE_ID}.json": raw}):
        outcomes = exercise(
            template,
            workdir,
            "hostile manifest",
            trusted=False,
            restore=restore_checked(sandbox, HOSTILE_ID, what),
            planted_id=HOSTILE_ID,
        )
        # A hostile sibling must not stop the good backups from loading.
        manager = BackupManager(template.config(workdir))
        for backup_id in template.ids:
            assert manager.load_backup(backup_id) == template.data[backup_id]
    tally(what, f"list {outcomes['list']}")
    tally(what, planted_verdict(outcomes))


def test_read_paths_hostile_manifest(template: Template, workdir: Path, sandbox: Path) -> None:
    target = "read paths, hostile manifest (valid checksum)"
    counts = run_fuzz(fuzz_read_paths_hostile_manifest, target, template, workdir, sandbox)
    assert counts["planted refused"] > 0, counts


@FULL
@given(data=st.data())
def fuzz_read_paths_hostile_chunk_content(
    template: Template, workdir: Path, sandbox: Path, data: st.DataObject
) -> None:
    """Chunks with a VALID id but hostile content: a data entry whose bytes are not a valid
    value encoding, and a chunk list whose refs are hostile or whose count lies."""
    base = document((template.root / template.targets()["manifest_new"]).read_bytes())
    doc = msgspec.json.decode(msgspec.json.encode(base))
    doc["backup_id"] = HOSTILE_ID
    history = next(e for e in doc["entries"] if e["name"] == "history")
    portfolio = next(e for e in doc["entries"] if e["name"] == "portfolio")
    extra: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    if data.draw(st.booleans()):
        valid = encode_value({"equity": 1.5, "positions": [1, 2, 3]})
        plain = data.draw(st.binary(max_size=300) | mutated(valid))
        cid = chunk_id(plain)
        extra[chunk_target(cid)] = blob_of(plain)
        sizes[cid] = len(plain)
        portfolio.update(chunks=[[cid, len(plain), len(extra[chunk_target(cid)])]], size=len(plain))
        portfolio["encoding"] = ENCODING_NAME
        what = "read paths, hostile value bytes (valid chunk id)"
    else:
        real = Repository.open(LocalStore(template.root), create=False)
        refs = real.entry_refs(msgspec.convert(dict(history, lists=history["lists"][:1]), Entry))
        rows = [[r.id, r.size, r.stored] for r in refs]
        for _ in range(data.draw(st.integers(1, 3))):
            row = data.draw(st.sampled_from(rows))
            column = data.draw(st.integers(0, 2))
            row[column] = data.draw(BAD_IDS) if column == 0 else data.draw(BAD_INTS)
        if data.draw(st.booleans()):
            del rows[data.draw(st.integers(0, len(rows) - 1))]  # the count now lies
        plain = msgspec.json.encode(rows)
        cid = chunk_id(plain)
        extra[chunk_target(cid)] = blob_of(plain)
        sizes[cid] = len(plain)
        history["lists"][0] = [cid, len(refs), len(plain), len(extra[chunk_target(cid)])]
        what = "read paths, hostile chunk list (valid chunk id)"
    extra[f"snapshots/{HOSTILE_ID}.json"] = seal(doc, Manifest)
    with planted(workdir, extra, sizes):
        outcomes = exercise(
            template,
            workdir,
            what,
            trusted=False,
            restore=restore_checked(sandbox, HOSTILE_ID, what),
            planted_id=HOSTILE_ID,
        )
    tally(what, "examples")
    tally("read paths, hostile chunk content (valid chunk id)", planted_verdict(outcomes))


def test_read_paths_hostile_chunk_content(template: Template, workdir: Path, sandbox: Path) -> None:
    target = "read paths, hostile chunk content (valid chunk id)"
    counts = run_fuzz(fuzz_read_paths_hostile_chunk_content, target, template, workdir, sandbox)
    assert counts["planted refused"] > 0, counts


REPO_EDITS = st.sampled_from(
    [
        "format",
        "hash",
        "chunker_value",
        "chunker_missing",
        "chunker_type",
        "encryption",
        "created",
        "repository_id",
        "wrong_type",
    ]
)


@FULL
@given(edits=st.lists(REPO_EDITS, min_size=1, max_size=3), data=st.data())
def fuzz_read_paths_hostile_repo_json(
    template: Template, workdir: Path, edits: list[str], data: st.DataObject
) -> None:
    doc = document((template.root / "repo.json").read_bytes())
    for edit in edits:
        chunker = doc["chunker"] if isinstance(doc.get("chunker"), dict) else {}
        if edit == "format":
            doc["format"] = data.draw(st.sampled_from([2, 0, -1, 2**63 - 1]))
        elif edit == "hash":
            doc["hash"] = data.draw(st.sampled_from(["md5", "", "blake3-256 ", "BLAKE3-256"]))
        elif edit == "chunker_value":
            key = data.draw(st.sampled_from(sorted(chunker) or ["avg_size"]))
            chunker[key] = data.draw(BAD_INTS | st.sampled_from(["", "fastcdc", "x" * 100]))
        elif edit == "chunker_missing" and chunker:
            chunker.pop(data.draw(st.sampled_from(sorted(chunker))))
        elif edit == "chunker_type":
            doc["chunker"] = data.draw(st.sampled_from([[], None, "x", 5, {"avg_size": [1]}]))
        elif edit == "encryption":
            doc["encryption"] = data.draw(
                st.sampled_from([{}, [], "aes", 1, {"aead": "x", "kdf": {}, "wrapped_key": ""}])
                | st.dictionaries(st.sampled_from(["aead", "kdf", "wrapped_key"]), JSON_VALUES)
            )
        elif edit == "created":
            doc["created_utc"] = data.draw(st.sampled_from(BAD_TIMES))
        elif edit == "repository_id":
            doc["repository_id"] = data.draw(st.sampled_from(["", "../x", "x" * 10_000]))
        elif edit == "wrong_type":
            doc[data.draw(st.sampled_from(["format", "hash", "repository_id"]))] = None
    with planted(workdir, {"repo.json": seal(doc, RepoConfig)}):
        outcomes = exercise(template, workdir, "hostile repo.json", trusted=True)
    tally("read paths, hostile repo.json (valid checksum)", f"open {outcomes['open']}")


def test_read_paths_hostile_repo_json(template: Template, workdir: Path) -> None:
    target = "read paths, hostile repo.json (valid checksum)"
    counts = run_fuzz(fuzz_read_paths_hostile_repo_json, target, template, workdir)
    assert refused(counts, "open ") > 0, counts


LEASE = msgspec.json.encode(
    LeaseRecord(
        "backup",
        "elsewhere",
        4242,
        datetime(2020, 1, 1, tzinfo=timezone.utc),
        datetime(2020, 1, 1, 0, 10, tzinfo=timezone.utc),
    )
)
COLLECTION = msgspec.json.encode(
    Collection(datetime(2020, 1, 1, tzinfo=timezone.utc), [chunk_id(b"gone")])
)
COORDINATION = {
    "locks/backup-00000000fuzzfuzz.json": LEASE,
    "locks/prune.lock": msgspec.json.encode(
        LeaseRecord(
            "prune",
            "elsewhere",
            4242,
            datetime(2020, 1, 1, tzinfo=timezone.utc),
            datetime(2020, 1, 1, 0, 30, tzinfo=timezone.utc),
        )
    ),
    "gc/collection-20200101T000000000000Z.json": COLLECTION,
}


@FULL
@given(which=st.sampled_from(sorted(COORDINATION)), data=st.data())
def fuzz_prune_reads_damaged_leases_locks_and_collection_records(
    template: Template, workdir: Path, which: str, data: st.DataObject
) -> None:
    original = COORDINATION[which]
    raw = data.draw(
        st.binary(max_size=300)
        | mutated(original)
        | st.sampled_from(
            [
                original.replace(b'"elsewhere"', b'"\xff\xfe"'),
                original.replace(b'"time"', b'"\xb2"'),
            ]
        )
    )
    manager = BackupManager(template.config(workdir))
    with planted(workdir, {which: raw}):
        result, _ = outcome_of(lambda: manager.prune())
        (workdir / "locks" / "prune.lock").unlink(missing_ok=True)
    tally("prune with damaged lease/lock/collection files", result)


def test_prune_reads_damaged_leases_locks_and_collection_records(
    template: Template, workdir: Path
) -> None:
    """Leases, the prune lock and collection records carry no checksum: any damage (a torn
    write, a flipped bit, a stray file) must give a BackupError or be tolerated, and some of
    it must be refused (the files are parsed and checked, not ignored)."""
    target = "prune with damaged lease/lock/collection files"
    fuzz = fuzz_prune_reads_damaged_leases_locks_and_collection_records
    counts = run_fuzz(fuzz, target, template, workdir)
    assert refused(counts) > 0, counts


# -- 3. concrete cases -------------------------------------------------------------------------


def _entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in doc["entries"] if e["name"] == name)
    return found


def _set(path: str, value: object) -> Callable[[dict[str, Any], Path], None]:
    """An edit setting ``entry:<name>.<field>``, ``chunk:<name>.<column>`` (first chunk),
    ``list:<name>.<column>`` (first list) or a top-level field."""

    def edit(doc: dict[str, Any], _sandbox: Path) -> None:
        where, _, field_name = path.rpartition(".")
        if where.startswith("entry:"):
            _entry(doc, where[6:])[field_name] = value
        elif where.startswith("chunk:"):
            _entry(doc, where[6:])["chunks"][0][int(field_name)] = value
        elif where.startswith("list:"):
            _entry(doc, where[5:])["lists"][0][int(field_name)] = value
        else:
            doc[field_name] = value

    return edit


def _file_named(name: str) -> Callable[[dict[str, Any], Path], None]:
    def edit(doc: dict[str, Any], sandbox: Path) -> None:
        entry = _entry(doc, "portfolio")
        entry.update(kind="file", name=name.replace("@SANDBOX@", str(sandbox)), mode=0o644)
        entry.pop("encoding", None)

    return edit


def _extreme_file_meta(doc: dict[str, Any], sandbox: Path) -> None:
    _file_named("f.bin")(doc, sandbox)
    _entry(doc, "f.bin").update(mode=2**64 - 1, mtime_ns=2**64 - 1)


def _duplicate(doc: dict[str, Any], _sandbox: Path) -> None:
    doc["entries"].append(dict(_entry(doc, "portfolio")))


def _collide(doc: dict[str, Any], _sandbox: Path) -> None:
    twin = dict(_entry(doc, "portfolio"), kind="file", name="portfolio.json", mode=0o600)
    twin.pop("encoding", None)
    doc["entries"].append(twin)


HOSTILE_CASES: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "naive time": _set("time_utc", "2025-12-17T10:00:00"),
    "time before year 1 in UTC": _set("time_utc", "0001-01-01T00:00:00+05:00"),
    "time after year 9999 in UTC": _set("time_utc", "9999-12-31T23:59:59-05:00"),
    "format 2": _set("format", 2),
    "negative entry size": _set("entry:portfolio.size", -1),
    "huge entry size": _set("entry:portfolio.size", 2**64 - 1),
    "negative chunk size": _set("chunk:portfolio.1", -5),
    "huge chunk size": _set("chunk:portfolio.1", 2**64 - 1),
    "chunk id ../": _set("chunk:portfolio.0", "../../../../../../etc/passwd"),
    "chunk id upper case": _set("chunk:portfolio.0", "A" * 64),
    "list id ../": _set("list:history.0", "../" + "a" * 61),
    "list count lies": _set("list:history.1", 31),
    "huge list size": _set("list:history.2", 2**64 - 1),
    "kind symlink": _set("entry:portfolio.kind", "symlink"),
    "unknown encoding": _set("entry:portfolio.encoding", "pickle"),
    "data name ../": _set("entry:portfolio.name", "../../../outside/pwned"),
    "file name ../": _file_named("../../../outside/pwned"),
    "file name a/../../": _file_named("a/../../../../outside/pwned"),
    "file name absolute": _file_named("@SANDBOX@/outside/pwned"),
    "file name /etc/passwd": _file_named("/etc/passwd"),
    "file name empty": _file_named(""),
    "file name with NUL": _file_named("x\x00y"),
    "file mode and mtime extreme": _extreme_file_meta,
    "duplicate names": _duplicate,
    "data x and file x.json": _collide,
    "no entries": _set("entries", []),
    "backup id ../": _set("backup_id", "../../x"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CASES))
def test_hostile_manifest_cases(
    template: Template, workdir: Path, sandbox: Path, case: str
) -> None:
    """Each hostile edit on its own, valid checksum: every read path gives a BackupError or
    succeeds; nothing is written outside the restore target; the good backups still load."""
    doc = document((template.root / template.targets()["manifest_new"]).read_bytes())
    doc["backup_id"] = HOSTILE_ID
    HOSTILE_CASES[case](doc, sandbox)
    what = "hostile manifest cases"
    with planted(workdir, {f"snapshots/{HOSTILE_ID}.json": seal(doc, Manifest)}):
        exercise(
            template,
            workdir,
            case,
            trusted=False,
            restore=restore_checked(sandbox, HOSTILE_ID, what),
            planted_id=HOSTILE_ID,
        )
        manager = BackupManager(template.config(workdir))
        for backup_id in template.ids:
            assert manager.load_backup(backup_id) == template.data[backup_id]
    tally(what, "passed")


def test_sealing_matches_encode_checked(template: Template) -> None:
    """``checksummed`` (used for documents no schema allows) computes exactly what
    ``encode_checked`` writes."""
    for key in ("repo.json", f"snapshots/{template.ids[1]}.json"):
        raw = (template.root / key).read_bytes()
        assert checksummed(document(raw)) == raw


def test_newer_format_is_refused(template: Template, workdir: Path) -> None:
    manifest = template.manifest(template.ids[1])
    raw = encode_checked(msgspec.structs.replace(manifest, format=FORMAT_VERSION + 1))
    with pytest.raises(FormatVersionError):
        decode_checked(raw, Manifest, "x")
    with planted(workdir, {f"snapshots/{template.ids[1]}.json": raw}):
        manager = BackupManager(template.config(workdir))
        with pytest.raises(FormatVersionError):
            manager.load_backup(template.ids[1])
        assert [i.backup_id for i in manager.list_backups()] == [template.ids[0]]
    config = Repository.open(LocalStore(template.root), create=False).config
    newer = encode_checked(msgspec.structs.replace(config, format=REPO_FORMAT_VERSION + 1))
    with planted(workdir, {"repo.json": newer}), pytest.raises(FormatVersionError):
        Repository.open(LocalStore(workdir), create=False)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"kind": "hardlink", "target": "nowhere"}, "no earlier file entry"),
        ({"kind": "symlink", "target": None}, "without a valid target"),
        ({"kind": "symlink", "target": "a\0b"}, "without a valid target"),
        ({"kind": "dir", "target": "x"}, "a directory with a target"),
        ({"kind": "file", "target": "x"}, "a target on a data or file entry"),
        ({"origin": "pickle"}, "unknown origin"),
    ],
)
def test_format_2_entries_are_checked(
    template: Template, changes: dict[str, object], problem: str
) -> None:
    """Forged format-2 entries (a hard link to nothing, a link without text, content on a
    directory) are damage, found before anything is restored."""
    manifest = template.manifest(template.ids[1])
    entry = manifest.entries[0]
    if changes.get("kind") in ("hardlink", "symlink", "dir"):
        entry = msgspec.structs.replace(entry, chunks=[], lists=[], size=0)
    forged = msgspec.structs.replace(
        manifest, format=2, entries=[msgspec.structs.replace(entry, **changes)]
    )
    with pytest.raises(CorruptDataError, match=problem):
        decode_checked(encode_checked(forged), Manifest, "x")


def claim_content_size(frame: bytes, size: int) -> bytes:
    """A zstd frame whose header claims ``size`` bytes of content (an 8-byte Frame_Content_Size
    field), blocks unchanged: what a few flipped bits in a stored frame header can do."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    fhd = frame[4]
    single, dict_flag = (fhd >> 5) & 1, fhd & 3
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    old_len = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    header = frame[:4] + bytes([0xC0 | (fhd & 0x3F)]) + frame[5:start]
    return header + size.to_bytes(8, "little") + frame[start + old_len :]


def test_zstd_frame_claiming_a_huge_size_is_corrupt_data() -> None:
    """A damaged frame header claiming 2**62 bytes: zstandard sizes its output buffer from the
    header (``max_output_size`` only applies when the frame has no content size), so decode
    raises MemoryError instead of CorruptDataError."""
    frame = zstandard.ZstdCompressor().compress(PLAIN)
    blob = MAGIC + bytes((1, 1, 0, 0)) + claim_content_size(frame, 2**62)
    with pytest.raises(BackupError):
        BlobCodec().decode(blob, chunk_id(PLAIN), len(PLAIN))


def test_stored_chunk_with_damaged_frame_header(template: Template, workdir: Path) -> None:
    """The same damage in a real repository's chunk (bit rot, no hostile manifest needed):
    load, verify, restore_latest and check must report it, not raise MemoryError."""
    repo = Repository.open(LocalStore(template.root), create=False)
    manifest = template.manifest(template.ids[0])
    keys = [chunk_target(lref.id) for entry in manifest.entries for lref in entry.lists]
    keys += [chunk_target(r.id) for entry in manifest.entries for r in repo.entry_refs(entry)]
    key = next(k for k in keys if stored_bytes(template.root, k)[5] == 1)  # a zstd blob
    blob = stored_bytes(template.root, key)
    damaged = blob[:8] + claim_content_size(blob[8:], 2**62)
    with planted(workdir, {key: damaged}):
        outcomes = exercise(template, workdir, "zstd frame header", trusted=True)
    assert outcomes["check"] != "ok"
