"""The chunker: streaming equals whole-buffer cutting, sizes, locality, per-repository seeds."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.repo.chunker import Chunker
from resurgo.repo.config import SEED_MASK, RepoConfig, RepoParams

from .helpers import QUICK, SLOWER

PARAMS = RepoParams.tiny_for_tests()  # min 256, avg 2 KiB, max 8 KiB
seeds = st.integers(1, SEED_MASK)


def chunker(seed: int, params: RepoParams = PARAMS) -> Chunker:
    return Chunker(RepoConfig(id="t", params=params, chunker_seed=seed))


def data_from(seed: int, size: int, *, compressible: bool) -> bytes:
    r = random.Random(seed)
    if not compressible:
        return r.randbytes(size)
    words = [r.randbytes(r.randrange(1, 12)) for _ in range(50)]
    out = bytearray()
    while len(out) < size:
        out += r.choice(words)
    return bytes(out[:size])


sources = st.builds(
    data_from, st.integers(0, 2**32), st.integers(0, 120_000), compressible=st.booleans()
)


def lengths(chunks: list[memoryview]) -> list[int]:
    return [len(c) for c in chunks]


def cut_pipe(c: Chunker, data: bytes, read_size: int, write_sizes: list[int]) -> list[bytes]:
    """fd_chunks over a pipe fed in uneven writes (so reads come back short)."""
    r, w = os.pipe()

    def feed() -> None:
        pos, i = 0, 0
        try:
            while pos < len(data):
                n = write_sizes[i % len(write_sizes)]
                os.write(w, data[pos : pos + n])
                pos += n
                i += 1
        finally:
            os.close(w)

    t = threading.Thread(target=feed)
    t.start()
    try:
        out = [bytes(x) for x in c.fd_chunks(r, read_size=read_size)]
    finally:
        # Closed first: should fd_chunks fail, the feeder's next write fails
        # too (EPIPE) instead of blocking the join for ever.
        os.close(r)
        t.join()
    return out


@QUICK
@given(data=sources, seed=seeds, read_size=st.integers(1, 40_000),
       write_sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=5))
def test_streaming_a_pipe_cuts_exactly_like_the_whole_buffer(
    data: bytes, seed: int, read_size: int, write_sizes: list[int]
) -> None:
    c = chunker(seed)
    whole = [bytes(x) for x in c.cut(data)]
    assert cut_pipe(c, data, read_size, write_sizes) == whole


@SLOWER
@given(data=sources, seed=seeds, read_size=st.integers(1, 70_000))
def test_streaming_a_file_cuts_exactly_like_the_whole_buffer(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, seed: int, read_size: int
) -> None:
    path = tmp_path_factory.mktemp("chunk") / "f"
    path.write_bytes(data)
    c = chunker(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        streamed = [bytes(x) for x in c.fd_chunks(fd, read_size=read_size)]
    finally:
        os.close(fd)
    assert streamed == [bytes(x) for x in c.cut(data)]


def test_streamed_chunks_are_read_only_and_stay_valid_while_later_ones_are_read(tmp_path: Path) -> None:
    data = data_from(4, 300_000, compressible=False)
    path = tmp_path / "f"
    path.write_bytes(data)
    c = chunker(4)
    fd = os.open(path, os.O_RDONLY)
    try:
        kept = list(c.fd_chunks(fd, read_size=10_000))  # many buffers
    finally:
        os.close(fd)
    assert all(x.readonly for x in kept)
    assert b"".join(kept) == data
    assert [bytes(x) for x in kept] == [bytes(x) for x in c.cut(data)]


@QUICK
@given(data=sources, seed=seeds)
def test_chunks_concatenate_to_the_input_within_size_bounds(data: bytes, seed: int) -> None:
    chunks = list(chunker(seed).cut(data))
    assert b"".join(chunks) == data
    sizes = lengths(chunks)
    assert all(PARAMS.chunk_min <= n <= PARAMS.chunk_max for n in sizes[:-1])
    if sizes:
        assert 0 < sizes[-1] <= PARAMS.chunk_max


def test_empty_input_has_no_chunks() -> None:
    c = chunker(5)
    assert list(c.cut(b"")) == []
    r, w = os.pipe()
    os.close(w)
    try:
        assert list(c.fd_chunks(r)) == []
    finally:
        os.close(r)


def test_mean_chunk_size_is_near_min_plus_avg() -> None:
    # pyfastcdc's effective average is avg + min (docs/design.md).
    data = random.Random(3).randbytes(4 << 20)
    sizes = lengths(list(chunker(77).cut(data)))
    mean = sum(sizes) / len(sizes)
    assert 0.7 * (PARAMS.chunk_avg + PARAMS.chunk_min) < mean < 1.4 * (PARAMS.chunk_avg + PARAMS.chunk_min)


@SLOWER
@given(seed=seeds, data_seed=st.integers(0, 2**32), where=st.floats(0, 1),
       inserted=st.binary(min_size=1, max_size=2000))
def test_an_insertion_changes_only_nearby_chunks(
    seed: int, data_seed: int, where: float, inserted: bytes
) -> None:
    data = random.Random(data_seed).randbytes(256 * 1024)
    pos = int(where * len(data))
    edited = data[:pos] + inserted + data[pos:]
    c = chunker(seed)
    before = [bytes(x) for x in c.cut(data)]
    after = [bytes(x) for x in c.cut(edited)]
    # Chunks that end before the edit are cut exactly as before.
    prefix, end = [], 0
    for ch in before:
        end += len(ch)
        if end >= pos:
            break
        prefix.append(ch)
    assert after[: len(prefix)] == prefix
    # Boundaries resynchronise soon after the edit: only a few chunks differ.
    new = [ch for ch in after if ch not in set(before)]
    gone = [ch for ch in before if ch not in set(after)]
    slack = 4 * PARAMS.chunk_max
    assert sum(map(len, new)) <= len(inserted) + slack
    assert sum(map(len, gone)) <= slack
    assert len(after) - len(new) >= len(before) - 8


def test_repositories_with_different_seeds_cut_differently() -> None:
    data = random.Random(9).randbytes(512 * 1024)
    cuts = {tuple(lengths(list(chunker(s).cut(data)))) for s in (1, 2, 0x5DEECE66D, SEED_MASK)}
    assert len(cuts) == 4


def test_every_seed_a_new_repository_can_draw_is_accepted() -> None:
    # pyfastcdc converts the seed to a C uint64 after shifting it left by one.
    for seed in (1, 2**62, SEED_MASK):
        assert b"".join(chunker(seed).cut(b"x" * 20_000)) == b"x" * 20_000
    for _ in range(64):
        cfg = RepoConfig.new(PARAMS)
        assert 0 < cfg.chunker_seed <= SEED_MASK
        assert RepoConfig.from_json(cfg.to_json()) == cfg
        assert len(list(Chunker(cfg).cut(os.urandom(30_000)))) > 1


# --- the native cutter (repo/_cdc.c) against pyfastcdc -----------------------------


def reference_spans(params: RepoParams, seed: int, data: bytes) -> list[tuple[int, int]]:
    """pyfastcdc's cut points, which the format names (docs/format.md, section 5)."""
    from pyfastcdc import FastCDC

    cdc = FastCDC(avg_size=params.chunk_avg, min_size=params.chunk_min, max_size=params.chunk_max,
                  normalized_chunking=1, seed=seed)
    return [(c.offset, c.length) for c in cdc.cut_buf(memoryview(data))]


@st.composite
def chunk_params(draw: st.DrawFn) -> RepoParams:
    """Any sizes the configuration accepts (repo/config.py)."""
    avg = draw(st.integers(256, 4 << 20))
    low = draw(st.integers(64, min(avg, 1 << 20)))
    high = draw(st.integers(max(1024, avg), 16 << 20))
    return RepoParams(chunk_min=low, chunk_avg=avg, chunk_max=high)


@QUICK
@given(data=sources, seed=st.integers(0, SEED_MASK), params=st.one_of(st.just(PARAMS), chunk_params()))
def test_the_native_cutter_cuts_exactly_like_pyfastcdc(
    native_cutter: type, data: bytes, seed: int, params: RepoParams
) -> None:
    native = native_cutter(seed, params.chunk_min, params.chunk_avg, params.chunk_max, 1)
    assert native.spans(data) == reference_spans(params, seed, data)
    assert native.spans(memoryview(data)[1:]) == reference_spans(params, seed, data[1:])


@pytest.mark.parametrize("compressible", [False, True])
def test_the_native_cutter_agrees_on_large_buffers_with_the_default_sizes(
    native_cutter: type, compressible: bool
) -> None:
    # The default sizes (512 KiB on average): large buffers, the GIL released.
    params = RepoParams()
    data = data_from(11, 24 << 20, compressible=compressible)
    seed = 0x1234_5678_9ABC_DEF
    native = native_cutter(seed, params.chunk_min, params.chunk_avg, params.chunk_max, 1)
    assert native.spans(data) == reference_spans(params, seed, data)
    assert Chunker(RepoConfig(id="t", params=params, chunker_seed=seed)).spans(data) == native.spans(data)


@QUICK
@given(data=sources, seed=seeds)
def test_the_chunker_without_the_native_cutter_cuts_the_same(
    native_cutter: type, data: bytes, seed: int
) -> None:
    from resurgo.repo import chunker as chunker_mod

    with_native = chunker(seed)
    assert with_native._native is not None
    saved = chunker_mod.Cutter
    chunker_mod.Cutter = None
    try:
        without = chunker(seed)
    finally:
        chunker_mod.Cutter = saved
    assert without._native is None
    assert without.spans(data) == with_native.spans(data)
    assert [bytes(c) for c in without.cut(data)] == [bytes(c) for c in with_native.cut(data)]


def test_the_native_cutter_refuses_what_pyfastcdc_refuses(native_cutter: type) -> None:
    for args in [(1, 63, 2048, 8192, 1), (1, 256, 255, 8192, 1), (1, 256, 2048, 1023, 1),
                 (1, 4096, 2048, 8192, 1), (1, 256, 2048, 8192, 4), (1, 256, 2048, 8192, -1),
                 (1 << 63, 256, 2048, 8192, 1), (1, 256, 8 << 20, 16 << 20, 1)]:
        with pytest.raises(ValueError):
            native_cutter(*args)
    with pytest.raises(ValueError, match="not initialised"):
        native_cutter.__new__(native_cutter).spans(b"x" * 10_000)
    with pytest.raises(TypeError):
        native_cutter(1, 256, 2048, 8192, 1).spans("text")
