"""Damage detection: flipped bytes, truncation and swapped blobs never go unnoticed."""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend import layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import (
    BlobNotFound,
    CorruptObject,
    InvalidRange,
    ResurgoError,
    UnsupportedVersion,
    WrongPassword,
)
from resurgo.repo import BlobType, Repository
from resurgo.repo.crypto import Kind
from resurgo.repo.index import encode_index
from resurgo.repo.pack import PackedBlob, parse_trailer, trailer_length
from resurgo.repo.repository import object_id
from resurgo.repo.verify import CheckReport, check_index_objects, check_structure, read_data

from .helpers import PASSWORD, QUICK, blobs_of, copy_backend, flip, keys_under, new_repo, save_all


class Base:
    """A small repository: a few packs, two index objects, a snapshot."""

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        repo = new_repo(self.backend)
        self.data = blobs_of(20, 70)
        self.ids = save_all(repo, self.data[:40])
        repo.flush()
        self.ids += save_all(repo, self.data[40:])
        self.tree_id, _ = repo.save_blob(BlobType.TREE, b'{"nodes": []}' * 20)
        # Two incompressible blobs of equal size: equal stored lengths.
        rng = random.Random(21)
        twins = [rng.randbytes(1000), rng.randbytes(1000)]
        self.twins = [repo.save_blob(BlobType.DATA, t)[0] for t in twins]
        self.data += twins
        self.ids += self.twins
        repo.flush()
        self.snapshot = repo.save_object("snapshots", b'{"tree": "abc", "paths": ["/x"]}')
        self.key_id = repo.key_id
        self.packs = keys_under(self.backend, "data/")
        self.indexes = keys_under(self.backend, "index/")
        sealer = repo.sealer()
        self.trailers: dict[str, list[PackedBlob]] = {}
        for key in self.packs:
            raw = self.backend.get(key)
            tlen = trailer_length(raw, key)
            self.trailers[key] = parse_trailer(
                sealer, raw[len(raw) - 4 - tlen : len(raw) - 4], pack_size=len(raw), name=key
            )
        self.by_id = dict(zip(self.ids, self.data, strict=True))
        assert len(self.packs) >= 3 and len(self.indexes) == 2
        assert len(set(self.ids)) == len(self.ids)

    def damaged(self) -> MemoryBackend:
        return copy_backend(self.backend)


@functools.cache
def base() -> Base:
    return Base()


def problems_of(repo: Repository, *, data: bool) -> CheckReport:
    report = CheckReport()
    check_structure(repo, report)
    check_index_objects(repo, report)
    if data:
        read_data(repo, report)
    return report


def test_undamaged_repository_checks_clean() -> None:
    b = base()
    repo = Repository.open(b.damaged(), PASSWORD)
    report = problems_of(repo, data=True)
    assert report.ok, report.problems
    assert report.unused_packs == []
    assert report.packs_checked == report.packs_read == len(b.packs)
    assert report.blobs_read == len(b.ids) + 1


@QUICK
@given(which=st.integers(0), offset=st.integers(0), near_end=st.booleans(), mask=st.integers(1, 255))
def test_flipped_byte_in_a_pack_is_detected_and_named(
    which: int, offset: int, near_end: bool, mask: int
) -> None:
    b = base()
    backend = b.damaged()
    key = b.packs[which % len(b.packs)]
    size = backend.stat(key).size
    blobs_end = b.trailers[key][-1].offset + b.trailers[key][-1].length
    # Half the examples aim at the trailer and its length field.
    offset = blobs_end + offset % (size - blobs_end) if near_end else offset % size
    check_flipped_pack(b, backend, key, offset, mask)


@pytest.mark.parametrize("header_byte", [0, 1, 2, 3, 4, 20])
@pytest.mark.parametrize("where", ["first blob", "trailer"])
def test_flipped_envelope_header_byte_in_a_pack_is_detected(header_byte: int, where: str) -> None:
    b = base()
    backend = b.damaged()
    key = b.packs[1]
    size = backend.stat(key).size
    last = b.trailers[key][-1]
    start = 0 if where == "first blob" else last.offset + last.length
    assert start + header_byte < size
    check_flipped_pack(b, backend, key, start + header_byte, 0x01)


def check_flipped_pack(b: Base, backend: MemoryBackend, key: str, offset: int, mask: int) -> None:
    flip(backend, key, offset, mask)
    repo = Repository.open(backend, PASSWORD)

    report = problems_of(repo, data=True)
    assert not report.ok
    assert all(layout.name_of(key) in p.object or layout.name_of(key) in p.message
               for p in report.problems), report.problems

    hit = [blob for blob in b.trailers[key] if blob.offset <= offset < blob.offset + blob.length]
    if hit:
        # Only the blob that holds the byte is lost; its neighbours still load.
        with pytest.raises((CorruptObject, UnsupportedVersion)) as e:
            repo.load_blob(hit[0].type, hit[0].id)
        assert hit[0].id.hex() in str(e.value) and layout.name_of(key) in str(e.value)
        # check --read-data names the pack (hash) and exactly the damaged blob.
        assert sorted((p.kind, p.object) for p in report.problems) == [
            ("corrupt-blob", f"blob {hit[0].id.hex()} in {key}"), ("corrupt-pack", key)
        ]
        for other in b.trailers[key]:
            if other is not hit[0] and other.type == BlobType.DATA:
                assert repo.load_blob(BlobType.DATA, other.id) == b.by_id[other.id]
    else:
        # The trailer or its length: the structure check already sees it.
        structure = problems_of(repo, data=False)
        assert [(p.kind, p.object) for p in structure.problems] == [("corrupt-pack", key)]


@QUICK
@given(which=st.integers(0), cut=st.integers(1))
def test_truncated_pack_is_detected(which: int, cut: int) -> None:
    b = base()
    backend = b.damaged()
    key = b.packs[which % len(b.packs)]
    raw = backend.get(key)
    cut = 1 + cut % (len(raw) - 1)
    backend.put(key, raw[:-cut])
    repo = Repository.open(backend, PASSWORD)
    structure = problems_of(repo, data=False)
    assert [(p.kind, p.object) for p in structure.problems] == [("corrupt-pack", key)]
    full = problems_of(repo, data=True)
    assert ("corrupt-pack", key) in [(p.kind, p.object) for p in full.problems]
    last = b.trailers[key][-1]
    if len(raw) - cut < last.offset + last.length:
        with pytest.raises((InvalidRange, CorruptObject)):
            repo.load_blob(last.type, last.id)
    else:  # only the trailer was cut: the blobs themselves are intact
        assert repo.load_blob(last.type, last.id)


@QUICK
@given(which=st.integers(0), offset=st.integers(0), mask=st.integers(1, 255))
def test_flipped_byte_in_an_index_object_is_detected_and_named(which: int, offset: int, mask: int) -> None:
    b = base()
    backend = b.damaged()
    key = b.indexes[which % len(b.indexes)]
    flip(backend, key, offset % backend.stat(key).size, mask)
    repo = Repository.open(backend, PASSWORD)
    name = layout.name_of(key)
    assert set(repo.index_problems) == {name}
    assert "hash mismatch" in repo.index_problems[name]
    report = problems_of(repo, data=False)
    assert ("corrupt-index", key) in [(p.kind, p.object) for p in report.problems]
    # The packs it described are still intact; check reports them as unindexed.
    assert report.unused_packs
    loaded = dict(repo.iter_index_objects())
    error = loaded[name]
    assert isinstance(error, str) and key in error
    missing = [i for i in b.ids if not repo.has_blob(BlobType.DATA, i)]
    assert missing
    with pytest.raises(BlobNotFound):
        repo.load_blob(BlobType.DATA, missing[0])


@QUICK
@given(offset=st.integers(0), mask=st.integers(1, 255))
def test_flipped_byte_in_a_snapshot_object_is_detected_and_named(offset: int, mask: int) -> None:
    b = base()
    backend = b.damaged()
    key = f"snapshots/{b.snapshot}"
    flip(backend, key, offset % backend.stat(key).size, mask)
    repo = Repository.open(backend, PASSWORD)
    with pytest.raises(CorruptObject) as e:
        repo.load_object("snapshots", b.snapshot)
    assert e.value.name == key
    assert "hash mismatch" in e.value.reason


@QUICK
@given(offset=st.integers(0), mask=st.integers(1, 255))
def test_flipped_byte_in_the_config_is_detected_and_named(offset: int, mask: int) -> None:
    b = base()
    backend = b.damaged()
    offset %= backend.stat("config").size
    flip(backend, "config", offset, mask)
    with pytest.raises((CorruptObject, UnsupportedVersion)) as e:
        Repository.open(backend, PASSWORD)
    assert "config" in str(e.value)
    if isinstance(e.value, CorruptObject):
        assert e.value.name == "config"
    else:
        assert offset == 0  # the format version byte


@QUICK
@given(offset=st.integers(0), mask=st.integers(1, 127))
def test_flipped_byte_in_a_key_file_is_detected_and_named(offset: int, mask: int) -> None:
    b = base()
    backend = b.damaged()
    key = f"keys/{b.key_id}"
    repo = Repository.open(backend, PASSWORD)
    flip(backend, key, offset % backend.stat(key).size, mask)
    with pytest.raises(CorruptObject) as e:
        repo.list_keys()
    assert e.value.name == key
    with pytest.raises(WrongPassword, match="damaged key"):
        Repository.open(backend, PASSWORD)


def test_one_damaged_key_file_does_not_lock_out_the_others() -> None:
    from resurgo.repo import KDFParams

    b = base()
    backend = b.damaged()
    repo = Repository.open(backend, PASSWORD)
    second = repo.add_key("second", kdf=KDFParams.weak_for_tests())
    flip(backend, f"keys/{b.key_id}", 5)
    again = Repository.open(backend, "second")
    assert again.key_id == second
    assert again.load_blob(BlobType.DATA, b.ids[0]) == b.data[0]


def test_blob_envelope_copied_over_another_blob_is_rejected() -> None:
    b = base()
    backend = b.damaged()
    where = {blob.id: (key, blob) for key, blobs in b.trailers.items() for blob in blobs}
    (a_key, a), (key, victim) = where[b.twins[0]], where[b.twins[1]]
    assert a.length == victim.length
    raw = bytearray(backend.get(key))
    raw[victim.offset : victim.offset + victim.length] = backend.get(a_key, a.offset, a.length)
    backend.put(key, bytes(raw))
    repo = Repository.open(backend, PASSWORD)
    assert repo.load_blob(BlobType.DATA, a.id) == b.by_id[a.id]
    with pytest.raises(CorruptObject, match="authentication failed") as e:
        repo.load_blob(BlobType.DATA, victim.id)
    assert victim.id.hex() in e.value.name
    report = problems_of(repo, data=True)
    kinds = {(p.kind, p.object) for p in report.problems}
    assert ("corrupt-pack", key) in kinds  # the pack no longer matches its name


def test_index_pointing_a_blob_at_another_blobs_place_is_rejected() -> None:
    b = base()
    backend = b.damaged()
    repo = Repository.open(backend, PASSWORD)
    a_id, victim_id = b.ids[0], b.ids[1]
    a = repo.lookup(BlobType.DATA, a_id)
    assert a is not None
    # A well-formed, correctly encrypted index object that lies about the victim.
    lying = {a.pack_id: [(int(BlobType.DATA), victim_id, a.offset, a.length, a.raw_length)]}
    env = repo.sealer().seal(Kind.INDEX, encode_index(lying), compress=False)
    for key in b.indexes:
        backend.delete(key)
    backend.put(f"index/{object_id(env)}", env)
    repo = Repository.open(backend, PASSWORD)
    with pytest.raises(CorruptObject, match="authentication failed"):
        repo.load_blob(BlobType.DATA, victim_id)
    report = problems_of(repo, data=False)
    assert ("index-mismatch", f"blob {victim_id.hex()}") in {(p.kind, p.object) for p in report.problems}


def test_tree_blob_cannot_be_read_as_a_data_blob() -> None:
    b = base()
    backend = b.damaged()
    repo = Repository.open(backend, PASSWORD)
    loc = repo.lookup(BlobType.TREE, b.tree_id)
    assert loc is not None
    lying = {loc.pack_id: [(int(BlobType.DATA), b.tree_id, loc.offset, loc.length, loc.raw_length)]}
    env = repo.sealer().seal(Kind.INDEX, encode_index(lying), compress=False)
    backend.put(f"index/{object_id(env)}", env)
    repo = Repository.open(backend, PASSWORD)
    with pytest.raises(CorruptObject):
        repo.load_blob(BlobType.DATA, b.tree_id)


def test_deleted_pack_is_reported_as_missing() -> None:
    b = base()
    backend = b.damaged()
    backend.delete(b.packs[0])
    repo = Repository.open(backend, PASSWORD)
    report = problems_of(repo, data=True)
    assert [(p.kind, p.object) for p in report.problems] == [("missing-pack", b.packs[0])]
    lost = b.trailers[b.packs[0]][0]
    with pytest.raises(ResurgoError):
        repo.load_blob(lost.type, lost.id)
