"""Packs: writer and trailer agree, offsets tile the pack, names are content hashes."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.errors import CorruptObject
from resurgo.repo.crypto import OVERHEAD, Kind, Sealer
from resurgo.repo.pack import PackWriter, parse_trailer, trailer_length, verify_pack_bytes

from .helpers import QUICK

SEALER = Sealer(bytes(range(32)))

blob_specs = st.lists(
    st.tuples(st.sampled_from([0, 1]), st.binary(min_size=32, max_size=32), st.binary(max_size=600)),
    max_size=30,
)


def build(specs: list[tuple[int, bytes, bytes]]) -> tuple[str, bytes, list[bytes]]:
    w = PackWriter()
    envs = []
    for t, bid, plain in specs:
        env = SEALER.seal(Kind(t), plain, bytes([t]) + bid)
        envs.append(env)
        w.add(t, bid, env, len(plain))
    pack_id, data, _ = w.finish(SEALER)
    return pack_id, bytes(data), envs


def trailer_of(data: bytes) -> bytes:
    tlen = trailer_length(data, "p")
    return data[len(data) - 4 - tlen : len(data) - 4]


@QUICK
@given(specs=blob_specs)
def test_trailer_lists_every_blob_and_offsets_tile_the_pack(specs: list[tuple[int, bytes, bytes]]) -> None:
    pack_id, data, envs = build(specs)
    assert pack_id == blake3.blake3(data).hexdigest()
    verify_pack_bytes(data, pack_id)
    trailer = trailer_of(data)
    # docs/format.md section 7: u32 count, then 41 bytes per blob (compressed when it helps).
    assert len(SEALER.open(Kind.TRAILER, trailer, name="p")) == 4 + 41 * len(specs)
    assert len(trailer) <= OVERHEAD + 4 + 41 * len(specs)
    blobs = parse_trailer(SEALER, trailer, pack_size=len(data), name="p")
    assert [(b.type, b.id, b.raw_length) for b in blobs] == [(t, i, len(d)) for t, i, d in specs]
    offset = 0
    for b, env in zip(blobs, envs, strict=True):
        assert b.offset == offset
        assert b.length == len(env)
        assert data[b.offset : b.offset + b.length] == env
        offset += b.length
    assert offset + len(trailer) + 4 == len(data)


@QUICK
@given(specs=blob_specs, delta=st.integers(-3, 3).filter(bool))
def test_trailer_is_rejected_when_the_pack_size_disagrees(
    specs: list[tuple[int, bytes, bytes]], delta: int
) -> None:
    _, data, _ = build(specs)
    with pytest.raises(CorruptObject, match="layout"):
        parse_trailer(SEALER, trailer_of(data), pack_size=len(data) + delta, name="p")


def test_pack_bytes_must_match_the_pack_name() -> None:
    pack_id, data, _ = build([(0, bytes(32), b"abc")])
    with pytest.raises(CorruptObject, match="hash mismatch"):
        verify_pack_bytes(data[:-1] + bytes([data[-1] ^ 1]), pack_id)


def test_trailer_length_needs_four_bytes() -> None:
    with pytest.raises(CorruptObject, match="truncated"):
        trailer_length(b"abc", "p")


def test_trailer_with_a_wrong_blob_count_is_rejected() -> None:
    plain = (3).to_bytes(4, "little") + bytes(41)  # claims 3 entries, holds 1
    env = SEALER.seal(Kind.TRAILER, plain, compress=False)
    with pytest.raises(CorruptObject, match="blob count"):
        parse_trailer(SEALER, env, pack_size=len(env) + 4 + 0, name="p")


def test_empty_pack_has_only_a_trailer() -> None:
    _, data, _ = build([])
    assert parse_trailer(SEALER, trailer_of(data), pack_size=len(data), name="p") == []
    assert len(data) == OVERHEAD + 4 + 4
