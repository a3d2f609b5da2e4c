"""check --read-data: packs streamed in ranged reads, blobs verified without keeping them.

The defaults (64 KiB tail, 4 MiB ranges) cover a whole test pack in one read,
so these tests shrink both: blobs then cross range boundaries and the tail's
start, and every path of the streaming reader runs.
"""

from __future__ import annotations

import os
import random
import threading

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend import layout
from resurgo.backend.faults import FaultyBackend
from resurgo.errors import CorruptObject, InjectedFault, UnsupportedVersion
from resurgo.repo import BlobType, Repository, verify
from resurgo.repo.crypto import Kind, Sealer
from resurgo.repo.pack import PackedBlob
from resurgo.repo.repository import blob_context
from resurgo.repo.verify import CheckReport, check_structure, read_data

from .helpers import PASSWORD, QUICK, blobs_of, copy_backend, flip, keys_under, new_repo, save_all

# (tail read, range): the tail holding part of the last blob, one blob per
# range, ranges smaller than most blobs, and the defaults.
SIZES = [(7, 1), (100, 2000), (5000, 700), (verify.TAIL_READ, verify.READ_RANGE)]


@pytest.fixture(scope="module")
def store() -> FaultyBackend:
    backend = FaultyBackend(copy_backend(new_repo().backend))
    repo = Repository.open(backend, PASSWORD)
    rng = random.Random(5)
    # Compressible and incompressible blobs, some larger than the ranges.
    data = blobs_of(70, 60) + [rng.choice([b"abc", b"xyz"]) * rng.randrange(200, 9000) for _ in range(30)]
    save_all(repo, data)
    repo.flush()
    return backend


def fresh(store: FaultyBackend) -> tuple[FaultyBackend, Repository]:
    backend = FaultyBackend(copy_backend(store))
    return backend, Repository.open(backend, PASSWORD)


def sized(monkeypatch: pytest.MonkeyPatch, tail: int, range_: int) -> None:
    monkeypatch.setattr(verify, "TAIL_READ", tail)
    monkeypatch.setattr(verify, "READ_RANGE", range_)


@pytest.mark.parametrize(("tail", "range_"), SIZES)
def test_every_blob_of_every_pack_is_read_once_whatever_the_range_size(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch, tail: int, range_: int
) -> None:
    sized(monkeypatch, tail, range_)
    backend, repo = fresh(store)
    structure = CheckReport()
    trailers = check_structure(repo, structure)
    report = CheckReport()
    read_data(repo, report)
    assert report.ok, report.problems
    assert report.packs_read == structure.packs_checked == len(trailers) >= 3
    assert report.blobs_read == sum(len(t) for t in trailers.values())
    assert report.bytes_read == sum(o.size for o in backend.list("data/"))


@QUICK
@given(
    lengths=st.lists(st.integers(1, 5000), max_size=30),
    trailer=st.integers(1, 3000),
    tail=st.integers(1, 40000),
    range_=st.integers(1, 6000),
)
def test_ranges_tile_the_head_of_the_pack_at_blob_boundaries(
    lengths: list[int], trailer: int, tail: int, range_: int
) -> None:
    blobs, offset = [], 0
    for n in lengths:
        blobs.append(PackedBlob(0, b"\0" * 32, offset, n, n))
        offset += n
    size = offset + trailer + 4
    end = size - min(size, tail)
    ends = {b.offset + b.length for b in blobs}
    old = verify.READ_RANGE
    verify.READ_RANGE = range_
    try:
        ranges = verify._plan_ranges(blobs, end)
    finally:
        verify.READ_RANGE = old
    # Contiguous from 0 to the tail.
    assert [a for a, _ in ranges] == [0, *(b for _, b in ranges[:-1])] if ranges else end == 0
    assert (ranges[-1][1] if ranges else 0) == end
    for a, b in ranges:
        assert b > a
        inside = [x for x in blobs if a <= x.offset and x.offset + x.length <= b]
        if b != end and blobs:
            assert b in ends  # cut at a blob boundary
            assert b - a <= range_ or len(inside) == 1  # one blob larger than a range
    # Each blob is whole in one range, or is the one crossing into the tail.
    if not blobs:  # an unreadable trailer: plain ranges, for the pack's hash only
        assert all(b - a <= range_ for a, b in ranges)
    crossing = [x for x in blobs if x.offset < end < x.offset + x.length]
    assert len(crossing) <= 1
    for x in blobs:
        if x.offset + x.length <= end:
            assert any(a <= x.offset and x.offset + x.length <= b for a, b in ranges)


@pytest.mark.parametrize(("tail", "range_"), SIZES)
def test_flipped_byte_names_the_pack_first_then_exactly_the_damaged_blob(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch, tail: int, range_: int
) -> None:
    sized(monkeypatch, tail, range_)
    backend, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    for pack_hex, blobs in sorted(trailers.items())[:3]:
        key = layout.pack(pack_hex)
        for victim in (blobs[0], blobs[len(blobs) // 2], blobs[-1]):
            damaged = copy_backend(backend)
            flip(damaged, key, victim.offset + victim.length // 2)
            report = CheckReport()
            read_data(Repository.open(damaged, PASSWORD), report)
            assert [(p.kind, p.object) for p in report.problems] == [
                ("corrupt-pack", key), ("corrupt-blob", f"blob {victim.id.hex()} in {key}"),
            ]
            assert "content hash mismatch" in report.problems[0].message
            assert report.blobs_read == sum(len(t) for t in trailers.values()) - 1


@pytest.mark.parametrize(("tail", "range_"), SIZES)
def test_damaged_trailer_is_reported_after_the_hash_and_no_blob_is_read(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch, tail: int, range_: int
) -> None:
    sized(monkeypatch, tail, range_)
    backend, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    pack_hex, blobs = sorted(trailers.items())[0]
    key = layout.pack(pack_hex)
    flip(backend, key, blobs[-1].offset + blobs[-1].length + 20)  # inside the trailer
    report = CheckReport()
    read_data(Repository.open(backend, PASSWORD), report)
    assert [p.kind for p in report.problems] == ["corrupt-pack", "corrupt-pack"]
    assert {p.object for p in report.problems} == {key}
    assert "content hash mismatch" in report.problems[0].message
    assert "authentication failed" in report.problems[1].message
    assert report.packs_read == len(trailers)
    assert report.blobs_read == sum(len(t) for t in trailers.values()) - len(blobs)


@pytest.mark.parametrize("which", ["tail", "trailer", 0, 1, 3, -1])
def test_failed_ranged_read_is_reported_against_its_pack_and_the_check_goes_on(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch, which: str | int
) -> None:
    sized(monkeypatch, 100, 2000)
    backend, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    sizes = {layout.name_of(o.key): o.size for o in backend.list("data/")}
    pack_hex = max(trailers, key=lambda p: sizes[p])
    key = layout.pack(pack_hex)
    size = sizes[pack_hex]
    head = verify._plan_ranges(trailers[pack_hex], size - 100)
    assert len(head) > 3
    last = trailers[pack_hex][-1]
    fail_at = {"tail": size - 100, "trailer": last.offset + last.length}.get(str(which))
    if fail_at is None:
        fail_at = head[int(which)][0]
    real_get = backend.get

    def failing_get(k: str, offset: int = 0, length: int | None = None) -> bytes:
        if k == key and offset == fail_at:
            raise InjectedFault(f"injected fault: get {k}")
        return real_get(k, offset, length)

    monkeypatch.setattr(backend, "get", failing_get)
    report = CheckReport()
    read_data(repo, report)
    assert [(p.kind, p.object) for p in report.problems] == [("corrupt-pack", key)]
    assert "injected fault" in report.problems[0].message
    every = sum(len(t) for t in trailers.values())
    if which == "trailer":  # the pack is still hashed whole; its blobs cannot be found
        assert report.packs_read == len(trailers)
        assert report.blobs_read == every - len(trailers[pack_hex])
    else:
        assert report.packs_read == len(trailers) - 1
        assert report.blobs_read < every


def test_truncated_pack_is_reported_once_the_whole_pack_is_hashed(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sized(monkeypatch, 100, 2000)
    backend, _ = fresh(store)
    key = keys_under(backend, "data/")[0]
    backend.truncate_on_get(key, backend.stat(key).size - 3)
    report = CheckReport()
    read_data(Repository.open(backend, PASSWORD), report)
    assert [(p.kind, p.object) for p in report.problems] == [("corrupt-pack", key), ("corrupt-pack", key)]


def test_small_blobs_are_verified_one_thread_at_a_time_and_problems_keep_pack_order(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sized(monkeypatch, 100, 5000)
    monkeypatch.setattr(verify, "SMALL_BLOB", 2500)  # test blobs are 1.5-3 KB (or larger, compressible)
    backend, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    inside = 0
    most = 0
    lock = threading.Lock()
    real = repo.verify_blob_envelope

    def counting(blob: PackedBlob, envelope: bytes | memoryview, pack_hex: str) -> None:
        nonlocal inside, most
        small = blob.raw_length < 2500
        if small:
            with lock:
                inside += 1
                most = max(most, inside)
        try:
            real(blob, envelope, pack_hex)
        finally:
            if small:
                with lock:
                    inside -= 1

    monkeypatch.setattr(repo, "verify_blob_envelope", counting)
    # Damage two blobs of one pack, a large one after a small one: the
    # large blobs of a range are verified after its small ones, the problems
    # still come in pack order.
    pack_hex = max(trailers, key=lambda p: len(trailers[p]))
    blobs = trailers[pack_hex]
    first = next(x for x in blobs if x.raw_length < 2500)
    second = next(x for x in blobs if x.offset > first.offset and x.raw_length >= 2500)
    key = layout.pack(pack_hex)
    for victim in (first, second):
        flip(backend, key, victim.offset + victim.length // 2)
    report = CheckReport()
    read_data(repo, report)
    assert most == 1
    assert [(p.kind, p.object) for p in report.problems] == [
        ("corrupt-pack", key),
        ("corrupt-blob", f"blob {first.id.hex()} in {key}"),
        ("corrupt-blob", f"blob {second.id.hex()} in {key}"),
    ]


# -- Sealer.open_digest: the same verdict as Sealer.open, without the plaintext ------------


class _Hasher:
    def __init__(self) -> None:
        self.data = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        self.data += data


def _open_digest(sealer: Sealer, env: bytes, context: bytes, expect: int = 3000) -> bytes:
    h = _Hasher()
    n = sealer.open_digest(Kind.DATA, env, context, h, expect=expect, name="x")
    assert n == len(h.data)
    return bytes(h.data)


@QUICK
@given(
    plain=st.one_of(
        st.binary(max_size=3000),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=20), st.integers(1, 20_000)),
    ),
    context=st.binary(max_size=40),
)
def test_open_digest_yields_exactly_what_open_returns(plain: bytes, context: bytes) -> None:
    sealer = Sealer(os.urandom(32))
    env = sealer.seal(Kind.DATA, plain, context)
    assert _open_digest(sealer, env, context, len(plain)) == sealer.open(Kind.DATA, env, context, name="x")


@pytest.mark.parametrize("where", [0, 1, 2, 3, 5, 20, -1])
def test_open_digest_rejects_what_open_rejects_with_the_same_error(where: int) -> None:
    sealer = Sealer(os.urandom(32))
    env = bytearray(sealer.seal(Kind.DATA, b"hello " * 500, b"ctx"))
    env[where] ^= 0x40
    with pytest.raises((CorruptObject, UnsupportedVersion)) as expected:
        sealer.open(Kind.DATA, bytes(env), b"ctx", name="x")
    with pytest.raises(type(expected.value)) as got:
        _open_digest(sealer, bytes(env), b"ctx")
    assert str(got.value) == str(expected.value)
    with pytest.raises(CorruptObject, match="authentication failed"):
        _open_digest(sealer, sealer.seal(Kind.DATA, b"a" * 100, b"ctx"), b"other")
    with pytest.raises(CorruptObject, match="expected a tree object"):
        sealer.open_digest(Kind.TREE, sealer.seal(Kind.DATA, b"a", b""), b"", _Hasher(), expect=1, name="x")


def test_open_digest_reuses_one_buffer_per_thread_grown_to_the_largest_envelope() -> None:
    sealer = Sealer(os.urandom(32))
    big = os.urandom(100_000)
    for plain in (b"x" * 10, big, b"y" * 5000, big[:7], b"z" * 200_000, b"w" * 70):
        env = sealer.seal(Kind.DATA, plain, b"")
        assert _open_digest(sealer, env, b"", len(plain)) == plain
    assert len(sealer._local.open_buf) == len(big)
    assert len(sealer._local.piece) == 200_001


@pytest.mark.parametrize("compressible", [True, False])
def test_open_digest_tells_a_longer_or_shorter_plaintext_apart(compressible: bool) -> None:
    sealer = Sealer(os.urandom(32))
    plain = b"abc" * 2000 if compressible else os.urandom(6000)
    env = sealer.seal(Kind.DATA, plain, b"")
    for expect in (0, 1, 5999, 6001, 100_000):
        h = _Hasher()
        n = sealer.open_digest(Kind.DATA, env, b"", h, expect=expect, name="x")
        assert n == (min(6000, expect + 1) if compressible else 6000)
        assert n != expect


def test_open_digest_counts_the_first_zstd_frame_only_as_open_does() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = os.urandom(32)
    sealer = Sealer(key)
    cctx = zstandard.ZstdCompressor()
    body = cctx.compress(b"first " * 100) + cctx.compress(b"second " * 100)
    header = bytes([1, 1, 1, Kind.DATA])
    nonce = os.urandom(12)
    env = header + nonce + AESGCM(key).encrypt(nonce, body, header)
    plain = sealer.open(Kind.DATA, env, name="x")
    assert plain == b"first " * 100
    assert _open_digest(sealer, env, b"", len(plain)) == plain


@pytest.mark.parametrize("states_size", [True, False], ids=["size-in-header", "no-size"])
def test_open_digest_of_a_small_frame_with_or_without_its_size_in_the_header(states_size: bool) -> None:
    # Small blobs stating their size are decompressed in one call, the others streamed.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = os.urandom(32)
    sealer = Sealer(key)
    plain = b"small and compressible " * 100
    body = zstandard.ZstdCompressor(write_content_size=states_size).compress(plain)
    assert (zstandard.frame_content_size(body) == len(plain)) is states_size
    header = bytes([1, 1, 1, Kind.DATA])
    nonce = os.urandom(12)
    env = header + nonce + AESGCM(key).encrypt(nonce, body, header)
    assert _open_digest(sealer, env, b"", len(plain)) == plain
    for expect in (len(plain) - 1, 0):  # stated larger than expected: streamed, cut at expect + 1
        n = sealer.open_digest(Kind.DATA, env, b"", _Hasher(), expect=expect, name="x")
        assert n == expect + 1


def test_open_digest_reports_bad_compressed_data() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    # A well-sealed envelope whose body claims zstd but is not a zstd frame.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = bytes([1, 1, 1, Kind.DATA])
    nonce = os.urandom(12)
    env = header + nonce + AESGCM(key).encrypt(nonce, b"not zstd at all", header)
    with pytest.raises(CorruptObject, match="bad compressed data"):
        sealer.open(Kind.DATA, env, name="x")
    with pytest.raises(CorruptObject, match="bad compressed data"):
        _open_digest(sealer, env, b"", 100)
    assert zstandard  # the codec under test


def test_verify_blob_envelope_names_wrong_length_id_and_type(store: FaultyBackend) -> None:
    _, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    pack_hex, blobs = sorted(trailers.items())[0]
    b = blobs[0]
    env = repo.backend.get(layout.pack(pack_hex), b.offset, b.length)
    repo.verify_blob_envelope(b, env, pack_hex)
    bad = [
        (PackedBlob(b.type, b.id, b.offset, b.length, b.raw_length + 1), "length differs from the index"),
        (PackedBlob(b.type, b.id, b.offset, b.length, b.raw_length - 1), "length differs from the index"),
        (PackedBlob(7, b.id, b.offset, b.length, b.raw_length), "unknown blob type 7"),
        (PackedBlob(BlobType.TREE, b.id, b.offset, b.length, b.raw_length), "expected a tree object"),
    ]
    for blob, message in bad:
        with pytest.raises(CorruptObject, match=message):
            repo.verify_blob_envelope(blob, env, pack_hex)
    # An envelope sealed for another ID opens, but its content hashes to its own ID.
    other = bytes(32)
    sealed = repo.sealer().seal(Kind.DATA, b"some content", blob_context(BlobType.DATA, other))
    with pytest.raises(CorruptObject, match="content does not match its ID"):
        repo.verify_blob_envelope(PackedBlob(BlobType.DATA, other, 0, len(sealed), 12), sealed, pack_hex)


def test_open_digest_opens_dictionary_compressed_envelopes_as_open_does() -> None:
    from resurgo.repo.crypto import Dictionary
    from resurgo.repo.dictionary import train

    r = random.Random(9)
    words = [bytes(r.choice(b"abcdefgh") for _ in range(r.randrange(3, 9))) for _ in range(200)]
    samples = [b" ".join(r.choice(words) for _ in range(r.randrange(50, 400))) for _ in range(300)]
    trained = train(samples, 3)
    assert trained is not None
    dictionary = Dictionary(b"dict-tag", trained)

    def resolve(tag: bytes) -> Dictionary:
        if tag != dictionary.tag:
            raise CorruptObject(f"dictionary {tag.hex()}", "not found")
        return dictionary

    key = os.urandom(32)
    sealer = Sealer(key, dictionaries=resolve)
    for plain in samples[:20]:
        env = sealer.seal(Kind.DATA, plain, b"ctx", dictionary=dictionary)
        assert env[2] == 2  # compressed with the dictionary
        assert _open_digest(sealer, env, b"ctx", len(plain)) == sealer.open(Kind.DATA, env, b"ctx", name="x")
    without = Sealer(key)  # no way to load dictionaries: the same error as open's
    with pytest.raises(CorruptObject, match="needs a dictionary"):
        without.open(Kind.DATA, env, b"ctx", name="x")
    with pytest.raises(CorruptObject, match="needs a dictionary"):
        _open_digest(without, env, b"ctx", len(plain))


@pytest.mark.parametrize("size", [1, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_open_digest_hashes_large_plaintexts_piece_by_piece_whatever_their_size(size: int) -> None:
    sealer = Sealer(os.urandom(32))
    plain = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    env = sealer.seal(Kind.DATA, plain, b"")
    assert _open_digest(sealer, env, b"", size) == plain
    for wrong in (size - 1, size + 1):
        h = _Hasher()
        assert sealer.open_digest(Kind.DATA, env, b"", h, expect=wrong, name="x") != wrong


@pytest.mark.parametrize(("tail", "range_"), SIZES)
def test_blobs_a_range_holds_whole_are_checked_natively_with_the_same_report(
    store: FaultyBackend, monkeypatch: pytest.MonkeyPatch, native_seal, tail: int, range_: int
) -> None:
    sized(monkeypatch, tail, range_)
    backend, repo = fresh(store)
    trailers = check_structure(repo, CheckReport())
    key = layout.pack(sorted(trailers)[0])
    victim = trailers[sorted(trailers)[0]][1]
    flip(backend, key, victim.offset + victim.length // 2)

    def run(native: bool) -> tuple[CheckReport, int]:
        repo = Repository.open(backend, PASSWORD)
        in_python = []
        real = repo.verify_blob_envelope
        monkeypatch.setattr(repo, "verify_blob_envelope",
                            lambda blob, *a: (in_python.append(blob), real(blob, *a))[1])
        if not native:
            monkeypatch.setattr(repo, "check_blobs", lambda *a: None)
        report = CheckReport()
        read_data(repo, report)
        return report, len(in_python)

    native, in_python = run(True)
    python, all_in_python = run(False)
    assert [(p.kind, p.object, p.message) for p in native.problems] == [
        (p.kind, p.object, p.message) for p in python.problems]
    assert native.blobs_read == python.blobs_read == sum(len(t) for t in trailers.values()) - 1
    assert all_in_python == python.blobs_read + 1
    # Natively, Python sees only the damaged blob and those that end in the tail.
    sizes = verify.list_packs(repo)

    def ends_in_tail(pack_hex: str, b: PackedBlob) -> bool:
        return b.offset + b.length > sizes[pack_hex].size - min(sizes[pack_hex].size, tail)

    in_tail = sum(ends_in_tail(p, b) for p, blobs in trailers.items() for b in blobs)
    assert in_python == in_tail + (not ends_in_tail(sorted(trailers)[0], victim))
