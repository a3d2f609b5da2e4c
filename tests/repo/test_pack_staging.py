"""Staged packs: written to a temporary file as they fill, never held whole in memory."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend import StagedObject, layout, stager
from resurgo.backend.local import TEMP_PREFIX, LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.backend.wrappers import ReadOnlyBackend, RetryBackend
from resurgo.errors import BackendFull, ObjectNotFound
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, Repository
from resurgo.repo.crypto import Kind, Sealer
from resurgo.repo.pack import SPILL_BYTES, PackWriter, Spill, parse_trailer, trailer_length

from .helpers import PASSWORD, QUICK, blobs_of, keys_under, new_repo

SEALER = Sealer(bytes(range(32)))


class MemoryStaged:
    """A StagedObject in memory that records the order of writes."""

    def __init__(self, store: dict[str, bytes], fail_writes: bool = False) -> None:
        self.buf = bytearray()
        self.store = store
        self.fail_writes = fail_writes
        self.discarded = False
        self.writes: list[int] = []
        self._lock = threading.Lock()

    def write_at(self, offset: int, parts: list[bytes]) -> None:
        if self.fail_writes:
            raise BackendFull("disk full")
        data = b"".join(parts)
        with self._lock:
            self.writes.append(offset)
            if len(self.buf) < offset + len(data):
                self.buf.extend(bytes(offset + len(data) - len(self.buf)))
            self.buf[offset : offset + len(data)] = data

    def read_at(self, offset: int, length: int) -> bytes:
        return bytes(self.buf[offset : offset + length])

    def commit(self, key: str) -> None:
        self.store[key] = bytes(self.buf)

    def discard(self) -> None:
        self.discarded = True


def envelopes(seed: int, sizes: list[int]) -> list[tuple[bytes, bytes, int]]:
    r = random.Random(seed)
    out = []
    for n in sizes:
        plain = r.randbytes(n)
        bid = r.randbytes(32)
        out.append((bid, SEALER.seal(Kind.DATA, plain, b"\0" + bid), n))
    return out


@QUICK
@given(
    seed=st.integers(0, 2**32),
    sizes=st.lists(st.sampled_from([0, 10, 3000, SPILL_BYTES // 3, SPILL_BYTES + 5]), max_size=12),
    shuffle=st.booleans(),
)
def test_staged_pack_is_byte_for_byte_the_in_memory_pack(seed: int, sizes: list[int], shuffle: bool) -> None:
    blobs = envelopes(seed, sizes)
    memory = PackWriter()
    store: dict[str, bytes] = {}
    staged_obj = MemoryStaged(store)
    staged = PackWriter(lambda: staged_obj)
    spills: list[Spill] = []
    for bid, env, n in blobs:
        memory.add(0, bid, env, n)
        spill = staged.add(0, bid, env, n)
        if spill is not None:
            spills.append(spill)
    if shuffle:  # savers may write their batches in any order
        random.Random(seed).shuffle(spills)
    for s in spills:
        staged.spill(s)
    mem_id, mem_data, mem_blobs = memory.finish(SEALER)
    st_id, st_data, st_blobs = staged.finish(SEALER)
    assert st_data is None and mem_data is not None
    assert mem_id == blake3.blake3(bytes(mem_data)).hexdigest()
    assert st_blobs == mem_blobs
    staged.commit("data/x")
    got = store["data/x"]
    assert st_id == blake3.blake3(got).hexdigest()
    # Same blobs at the same offsets; the trailers differ only by their nonces.
    size = memory.size
    assert got[:size] == bytes(mem_data)[:size]
    assert len(got) == len(mem_data)
    tlen = trailer_length(got, "p")
    assert parse_trailer(SEALER, got[size : size + tlen], pack_size=len(got), name="p") == mem_blobs


def test_a_filling_pack_holds_little_more_than_one_spill() -> None:
    staged = PackWriter(lambda: MemoryStaged({}))
    held = []
    for bid, env, n in envelopes(1, [100_000] * 100):  # ~10 MB of envelopes
        spill = staged.add(0, bid, env, n)
        if spill is not None:
            staged.spill(spill)
        held.append(sum(len(p) for p in staged._parts if p is not None))
    assert max(held) < SPILL_BYTES + 100_100


def test_a_staged_pack_is_hashed_as_written_never_read_back() -> None:
    store: dict[str, bytes] = {}
    obj = MemoryStaged(store)
    obj.read_at = None  # type: ignore[assignment,method-assign]  # any read back fails
    staged = PackWriter(lambda: obj)
    spills = [s for bid, env, n in envelopes(3, [SPILL_BYTES // 2] * 9)
              if (s := staged.add(0, bid, env, n)) is not None]
    assert len(spills) > 2
    done = [threading.Thread(target=staged.spill, args=(s,)) for s in reversed(spills)]
    for t in done:
        t.start()
    for t in done:
        t.join()
    pack_id, _, _ = staged.finish(SEALER)
    staged.commit("k")
    assert pack_id == blake3.blake3(store["k"]).hexdigest()


def test_write_errors_surface_when_the_pack_is_finished() -> None:
    obj = MemoryStaged({}, fail_writes=True)
    staged = PackWriter(lambda: obj)
    for bid, env, n in envelopes(2, [SPILL_BYTES, 10]):
        spill = staged.add(0, bid, env, n)
        if spill is not None:
            staged.spill(spill)  # does not raise here
    with pytest.raises(BackendFull):
        staged.finish(SEALER)
    staged.discard()
    assert obj.discarded


# -- the local backend ----------------------------------------------------------------


def test_local_staging_commits_atomically_under_the_key(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    s = backend.stage()
    s.write_at(5, [b"world"])
    s.write_at(0, [b"hello", b""])
    assert s.read_at(0, 10) == b"helloworld"
    assert list(backend.list()) == []  # temporary files are never listed
    with pytest.raises(ObjectNotFound):
        backend.get("data/ab/abcd")
    s.commit("data/ab/abcd")
    assert backend.get("data/ab/abcd") == b"helloworld"
    assert not [p for p in (tmp_path / "repo").rglob(TEMP_PREFIX + "*")]


def test_local_staging_discard_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    s = backend.stage()
    s.write_at(0, [b"x" * 5000] * 3)
    s.discard()
    assert not list((tmp_path / "repo").iterdir())


def test_local_staging_writes_many_small_parts(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    parts = [os.urandom(7) for _ in range(5000)]  # more than one pwritev can take
    s = backend.stage()
    s.write_at(3, parts)
    s.write_at(0, [b"abc"])
    s.commit("k")
    assert backend.get("k") == b"abc" + b"".join(parts)


def test_staging_is_offered_through_retries_but_not_read_only_or_memory(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    assert stager(local) is not None
    assert stager(RetryBackend(local)) is not None
    assert stager(ReadOnlyBackend(local)) is None
    assert stager(RetryBackend(MemoryBackend())) is None


# -- the repository ---------------------------------------------------------------------


def test_repository_on_a_local_directory_stages_packs_and_checks_clean(tmp_path: Path) -> None:
    backend = RetryBackend(LocalBackend(tmp_path / "repo"))
    repo = new_repo(backend)
    data = blobs_of(3, 200)
    ids = [repo.save_blob(BlobType.DATA, d)[0] for d in data]
    repo.flush()
    packs = keys_under(backend, layout.DATA)
    assert len(packs) > 3
    for key in packs:  # a valid pack under its own hash
        raw = backend.get(key)
        assert blake3.blake3(raw).hexdigest() == layout.name_of(key)
        tlen = trailer_length(raw, key)
        parse_trailer(repo.sealer(), raw[len(raw) - 4 - tlen : len(raw) - 4], pack_size=len(raw), name=key)
    fresh = Repository.open(backend, PASSWORD)
    assert [fresh.load_blob(BlobType.DATA, b) for b in ids] == data
    assert check_repository(fresh, read_all_data=True).ok
    assert not [p for p in (tmp_path / "repo").rglob(TEMP_PREFIX + "*")]


def test_closing_without_flush_removes_unfinished_staged_packs(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    repo = new_repo(backend)
    repo.index_every_packs = 10**6
    for d in blobs_of(4, 30):
        repo.save_blob(BlobType.DATA, d)
    repo.close()
    assert not [p for p in (tmp_path / "repo").rglob(TEMP_PREFIX + "*")]


def test_a_failed_staged_write_forgets_the_blobs_so_a_later_save_stores_them(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    repo = new_repo(backend)
    store: dict[str, bytes] = {}
    failing: list[MemoryStaged] = []

    def stage() -> StagedObject:
        failing.append(MemoryStaged(store, fail_writes=True))
        return failing[-1]

    repo._stage = stage
    data = blobs_of(5, 5)
    for d in data:
        repo.save_blob(BlobType.DATA, d)
    with pytest.raises(BackendFull):
        repo.flush()
    assert failing and all(f.discarded for f in failing)
    repo._stage = stager(backend)
    ids = [repo.save_blob(BlobType.DATA, d) for d in data]
    assert all(added for _, added in ids)
    repo.flush()
    assert [repo.load_blob(BlobType.DATA, b) for b, _ in ids] == data
