"""Index objects and the compact in-memory index."""

from __future__ import annotations

import struct
from collections.abc import Callable
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from resurgo.errors import CorruptObject
from resurgo.repo.index import (
    _LAZY_LOOKUPS,
    _MANY_LOOKUPS,
    ENTRY_DTYPE,
    MAGIC,
    BlobLocation,
    DecodedIndex,
    MemoryIndex,
    decode_index,
    encode_index,
)

from .helpers import QUICK


def numpy_unloaded() -> mock._patch:  # type: ignore[type-arg]
    """As in a process that has not imported NumPy (this one has)."""
    return mock.patch("resurgo.repo.index._np_loaded", lambda: False)

ids32 = st.binary(min_size=32, max_size=32)
# A small pool, with IDs that start or end in NUL bytes (NumPy "S" items drop
# trailing NULs), so duplicates and same-ID-different-type cases are common.
POOL = [bytes(32), b"\x00" * 31 + b"\x01", b"\x01" + b"\x00" * 31, b"\xff" * 32,
        bytes(range(32)), bytes(range(1, 33))[::-1], b"ab" + bytes(30)]
pool_ids = st.one_of(st.sampled_from(POOL), ids32)
u32 = st.integers(0, 2**32 - 1)
entry = st.tuples(st.sampled_from([0, 1]), pool_ids, u32, u32, u32)
pack_tables = st.dictionaries(ids32, st.lists(entry, max_size=20), max_size=6)


@QUICK
@given(packs=pack_tables, supersedes=st.lists(ids32, max_size=4))
def test_index_object_round_trips(
    packs: dict[bytes, list[tuple[int, bytes, int, int, int]]], supersedes: list[bytes]
) -> None:
    raw = encode_index(packs, supersedes)
    n = sum(len(v) for v in packs.values())
    assert len(raw) == 16 + 32 * (len(packs) + len(supersedes)) + 52 * n
    assert raw[:4] == MAGIC
    d = decode_index(raw, name="i")
    assert d.pack_ids == list(packs)
    assert d.supersedes == supersedes
    got = [
        (d.pack_ids[int(e["pack"])], int(e["type"]), bytes(e["id"]).ljust(32, b"\0"),
         int(e["offset"]), int(e["length"]), int(e["raw"]))
        for e in d.entries
    ]
    want = [(pid, t, bid, off, ln, raw_) for pid, es in packs.items() for t, bid, off, ln, raw_ in es]
    assert got == want


def test_index_entry_layout_is_52_bytes_little_endian() -> None:
    raw = encode_index({b"P" * 32: [(1, b"B" * 32, 5, 6, 7)]})
    assert raw == (
        b"RIX1" + struct.pack("<III", 1, 1, 0) + b"P" * 32
        + b"B" * 32 + struct.pack("<IIIIB", 0, 5, 6, 7, 1) + b"\0\0\0"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw[:10], "too short"),
        (lambda raw: b"XXXX" + raw[4:], "not an index"),
        (lambda raw: raw[:-1], "length does not match"),
        (lambda raw: raw + b"\0", "length does not match"),
        # pack number 1 in a table of one pack
        (lambda raw: raw[: 16 + 32 + 32] + struct.pack("<I", 1) + raw[16 + 32 + 36 :], "outside its table"),
    ],
)
def test_malformed_index_object_is_rejected(mutate: Callable[[bytes], bytes], message: str) -> None:
    raw = encode_index({b"P" * 32: [(0, b"B" * 32, 0, 10, 10)]})
    with pytest.raises(CorruptObject, match=message):
        decode_index(mutate(raw), name="index/x")


def _decoded(packs: dict[bytes, list[tuple[int, bytes, int, int, int]]]) -> DecodedIndex:
    return decode_index(encode_index(packs), name="i")


class MemoryIndexModel(RuleBasedStateMachine):
    """MemoryIndex against a dict of every location ever added per (type, ID)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = MemoryIndex()
        self.index.MERGE_AT = 4  # exercise the merge path with little data
        self.model: dict[tuple[int, bytes], set[tuple[bytes, int, int, int]]] = {}

    def _note(self, t: int, bid: bytes, pack: bytes, off: int, ln: int, raw: int) -> None:
        self.model.setdefault((t, bid), set()).add((pack, off, ln, raw))

    @rule(t=st.sampled_from([0, 1]), bid=pool_ids, pack=st.sampled_from([b"p" * 32, b"q" * 32, bytes(32)]),
          off=u32, ln=u32, raw=u32)
    def add(self, t: int, bid: bytes, pack: bytes, off: int, ln: int, raw: int) -> None:
        # add() of a known key may or may not keep the new location (both
        # are valid copies of the blob); lookups must return one of them.
        self.index.add(t, bid, pack, off, ln, raw)
        self._note(t, bid, pack, off, ln, raw)

    @rule(batch=st.lists(pack_tables, max_size=3))
    def add_decoded(self, batch: list[dict[bytes, list[tuple[int, bytes, int, int, int]]]]) -> None:
        self.index.add_decoded([_decoded(p) for p in batch])
        for packs in batch:
            for pid, es in packs.items():
                for t, bid, off, ln, raw in es:
                    self._note(t, bid, pid, off, ln, raw)

    @rule()
    def compact(self) -> None:
        self.index.compact()

    @rule()
    def dump_and_load(self) -> None:
        before = {k: self.index.lookup(*k) for k in self.model}
        self.index = MemoryIndex.load(self.index.dump())
        self.index.MERGE_AT = 4
        assert {k: self.index.lookup(*k) for k in self.model} == before

    @rule(t=st.sampled_from([0, 1]), bid=pool_ids)
    def lookup(self, t: int, bid: bytes) -> None:
        loc = self.index.lookup(t, bid)
        if (t, bid) not in self.model:
            assert loc is None
            assert not self.index.has(t, bid)
        else:
            assert loc is not None
            assert (loc.type, loc.id) == (t, bid)
            assert (loc.pack_id, loc.offset, loc.length, loc.raw_length) in self.model[(t, bid)]

    @rule(t=st.sampled_from([0, 1]), bids=st.lists(pool_ids, max_size=90), lazy=st.booleans())
    def lookup_many(self, t: int, bids: list[bytes], lazy: bool) -> None:
        # Past _MANY_LOOKUPS a NumPy search, below it (or without NumPy) one by one.
        asked = bids + [bid for _, bid in self.model][: 2 * _MANY_LOOKUPS]
        if lazy:
            self.index = MemoryIndex.load(self.index.dump())
            self.index.MERGE_AT = 4
        assert self.index.lookup_many(t, asked) == [self.index.lookup(t, b) for b in asked]
        with numpy_unloaded():
            assert self.index.lookup_many(t, asked) == [self.index.lookup(t, b) for b in asked]

    @invariant()
    def every_known_key_is_found(self) -> None:
        for (t, bid), locs in self.model.items():
            loc = self.index.lookup(t, bid)
            assert loc is not None
            assert (loc.pack_id, loc.offset, loc.length, loc.raw_length) in locs

    @invariant()
    def entries_cover_exactly_the_known_keys(self) -> None:
        seen = set()
        for loc in self.index.entries():
            assert isinstance(loc, BlobLocation)
            assert len(loc.id) == 32
            assert (loc.pack_id, loc.offset, loc.length, loc.raw_length) in self.model[(loc.type, loc.id)]
            seen.add((loc.type, loc.id))
        assert seen == set(self.model)
        assert len(self.index) >= len(self.model)
        assert self.index.pack_ids() <= {p for locs in self.model.values() for p, *_ in locs}


TestMemoryIndexModel = MemoryIndexModel.TestCase
TestMemoryIndexModel.settings = QUICK


def test_same_id_with_different_types_are_separate_entries() -> None:
    idx = MemoryIndex()
    bid = b"\x07" * 31 + b"\x00"
    idx.add(0, bid, b"A" * 32, 1, 2, 3)
    idx.compact()
    assert idx.lookup(1, bid) is None
    idx.add(1, bid, b"B" * 32, 4, 5, 6)
    assert idx.lookup(0, bid) == BlobLocation(0, bid, b"A" * 32, 1, 2, 3)
    assert idx.lookup(1, bid) == BlobLocation(1, bid, b"B" * 32, 4, 5, 6)
    idx.compact()
    assert idx.lookup(1, bid) == BlobLocation(1, bid, b"B" * 32, 4, 5, 6)
    assert len(idx) == 2


def test_compact_index_holds_49_bytes_per_blob_plus_32_per_pack() -> None:
    rng = np.random.default_rng(1)
    n, packs = 50_000, 40
    e = np.zeros(n, dtype=ENTRY_DTYPE)
    e["id"] = [bytes(x) for x in rng.integers(0, 256, size=(n, 32), dtype=np.uint8)]
    e["pack"] = rng.integers(0, packs, size=n)
    idx = MemoryIndex()
    idx.add_decoded([DecodedIndex([bytes([i]) * 32 for i in range(packs)], [], e)])
    assert len(idx) == n
    assert idx.nbytes() == 49 * n + 32 * packs
    probe = bytes(e["id"][123]).ljust(32, b"\0")
    loc = idx.lookup(0, probe)
    assert loc is not None and loc.pack_id == bytes([int(e["pack"][123])]) * 32


def test_damaged_cache_bytes_fail_to_load() -> None:
    idx = MemoryIndex()
    idx.add(0, b"x" * 32, b"p" * 32, 0, 1, 1)
    raw = idx.dump()
    with pytest.raises(ValueError):
        MemoryIndex.load(raw[:-1])
    with pytest.raises(ValueError):
        MemoryIndex.load(raw + b"\0")


def test_cache_bytes_load_as_views_when_aligned_and_as_copies_otherwise() -> None:
    idx = MemoryIndex()
    for i in range(100):
        idx.add(i % 2, bytes([i]) * 32, bytes([i % 7]) * 32, i * 10, i + 1, i + 2)
    for prefix, views in ((b"pad8pad8", True), (b"odd", False)):
        raw = idx.dump(prefix=(prefix,))
        loaded = MemoryIndex.load(raw, len(prefix))
        # views into ``raw`` are read-only; copies are the loader's own
        assert all(not a.flags.writeable for a in (loaded._ids, loaded._type))
        assert loaded._pack.flags.writeable is not views
        assert [loaded.lookup(i % 2, bytes([i]) * 32) for i in range(100)] == [
            idx.lookup(i % 2, bytes([i]) * 32) for i in range(100)
        ]


@QUICK
@given(packs=pack_tables, probes=st.lists(st.tuples(st.sampled_from([0, 1]), pool_ids), max_size=30))
def test_a_loaded_index_answers_lookups_before_its_arrays_exist(
    packs: dict[bytes, list[tuple[int, bytes, int, int, int]]], probes: list[tuple[int, bytes]]
) -> None:
    built = MemoryIndex()
    built.add_decoded([_decoded(packs)])
    raw = built.dump(prefix=(b"8 bytes!",))
    lazy = MemoryIndex.load(raw, 8)
    keys = [(t, bid) for es in packs.values() for t, bid, *_ in es] + probes
    with numpy_unloaded():
        for t, bid in keys:
            assert lazy.lookup(t, bid) == built.lookup(t, bid)
            assert lazy.has(t, bid) == built.has(t, bid)
    assert len(lazy) == len(built)
    if 2 * len(keys) <= _LAZY_LOOKUPS:
        assert lazy._lazy is not None  # answered from the dumped bytes alone
    assert lazy.pack_ids() == built.pack_ids()  # a bulk use makes the arrays
    assert lazy._lazy is None
    assert [lazy.lookup(t, bid) for t, bid in keys] == [built.lookup(t, bid) for t, bid in keys]


def test_enough_lookups_make_the_prefix_table() -> None:
    built = MemoryIndex()
    for i in range(300):
        built.add(i % 2, i.to_bytes(2, "big") * 16, bytes([i % 5]) * 32, i, i + 1, i + 2)
    lazy = MemoryIndex.load(built.dump())
    with numpy_unloaded():
        for i in range(_LAZY_LOOKUPS):
            assert lazy.has(i % 300 % 2, (i % 300).to_bytes(2, "big") * 16)
        assert lazy._bucket is None
        assert not lazy.has(1, bytes(32))
    assert lazy._bucket is not None
    # Where NumPy is loaded anyway (restore, check), the first lookup makes them.
    loaded = MemoryIndex.load(built.dump())
    assert loaded.has(1, (1).to_bytes(2, "big") * 16) and loaded._bucket is not None
    assert all(lazy.lookup(i % 2, i.to_bytes(2, "big") * 16) == built.lookup(i % 2, i.to_bytes(2, "big") * 16)
               for i in range(300))


@QUICK
@given(packs=pack_tables,
       added=st.lists(st.tuples(st.sampled_from([0, 1]), pool_ids,
                                st.sampled_from([b"p" * 32, bytes(32)]), u32, u32, u32), max_size=12))
def test_a_loaded_index_dumps_its_additions_as_a_merge_would(
    packs: dict[bytes, list[tuple[int, bytes, int, int, int]]],
    added: list[tuple[int, bytes, bytes, int, int, int]],
) -> None:
    built = MemoryIndex()
    built.add_decoded([_decoded(packs)])
    raw = built.dump()
    lazy, merged = MemoryIndex.load(raw), MemoryIndex.load(raw)
    for t, bid, pack, off, ln, r in added:
        lazy.add(t, bid, pack, off, ln, r)
        merged.add(t, bid, pack, off, ln, r)
    merged.compact()  # NumPy's stable merge
    assert merged._lazy is None or not added
    assert lazy.dump(prefix=(b"x",)) == merged.dump(prefix=(b"x",))
    assert lazy._lazy is not None


def _no_numpy() -> None:
    raise AssertionError("NumPy was asked for")


@QUICK
@given(added=st.lists(st.tuples(st.sampled_from([0, 1]), pool_ids,
                                st.sampled_from([b"p" * 32, bytes(32)]), u32, u32, u32), max_size=40))
def test_a_new_index_dumps_its_entries_as_a_merge_would_without_numpy(
    added: list[tuple[int, bytes, bytes, int, int, int]],
) -> None:
    # A new repository's first backup: every entry is recent, none loaded.
    fresh, merged = MemoryIndex(), MemoryIndex()
    for t, bid, pack, off, ln, r in added:
        fresh.add(t, bid, pack, off, ln, r)
        merged.add(t, bid, pack, off, ln, r)
    merged.compact()  # NumPy's stable merge
    with mock.patch("resurgo.repo.index._np", _no_numpy), numpy_unloaded():
        raw = fresh.dump(prefix=(b"x",))
    assert raw == merged.dump(prefix=(b"x",))
    assert MemoryIndex.load(raw, 1).dump() == merged.dump()


def test_a_new_index_answers_any_number_of_lookups_without_numpy() -> None:
    idx = MemoryIndex()
    with mock.patch("resurgo.repo.index._np", _no_numpy), numpy_unloaded():
        for i in range(2 * _LAZY_LOOKUPS):
            assert not idx.has(0, i.to_bytes(32, "big"))
            idx.add(0, i.to_bytes(32, "big"), b"p" * 32, i, 1, 1)
            assert idx.has(0, i.to_bytes(32, "big"))
        assert idx.lookup(0, (7).to_bytes(32, "big")) is not None
        assert idx._bucket is None
        raw = idx.dump()  # more entries than _dump_lazy splices
    idx.compact()
    assert raw == idx.dump() and len(MemoryIndex.load(raw)) == 2 * _LAZY_LOOKUPS
