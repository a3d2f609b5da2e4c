"""The repository over the fault-injecting backend and the retry wrapper."""

from __future__ import annotations

import pytest

from resurgo.backend import layout
from resurgo.backend.faults import FaultyBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.backend.wrappers import RetryBackend
from resurgo.errors import CorruptObject, InjectedFault
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.verify import CheckReport, check_structure, read_data

from .helpers import PASSWORD, blobs_of, keys_under, new_repo, save_all


def retrying(inner: FaultyBackend) -> RetryBackend:
    return RetryBackend(inner, sleep=lambda _: None, max_attempts=50, base_delay=0.0)


def test_transient_failures_and_lost_replies_are_retried_without_damage() -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store).fail_randomly(0.25, seed=7)
    backend = retrying(faulty)
    repo = Repository.init(backend, PASSWORD, params=RepoParams.tiny_for_tests(),
                           kdf=KDFParams.weak_for_tests())
    data = blobs_of(60, 120)
    ids = save_all(repo, data)
    repo.flush()
    snap = repo.save_object("snapshots", b'{"v": 1}')
    assert faulty.injected["put"] >= 5  # the faults really happened

    again = Repository.open(backend, PASSWORD)
    assert [again.load_blob(BlobType.DATA, i) for i in ids] == data
    assert again.load_object("snapshots", snap) == b'{"v": 1}'
    assert faulty.injected["get"] >= 5
    faulty.clear()
    report = CheckReport()
    check_structure(Repository.open(store, PASSWORD), report)
    read_data(Repository.open(store, PASSWORD), report)
    assert report.ok, report.problems
    assert report.unused_packs == []


def test_failed_index_put_surfaces_and_a_second_flush_completes() -> None:
    store = MemoryBackend()
    new_repo(store)
    faulty = FaultyBackend(store).fail_next("put", 1, key_prefix="index/")
    repo = Repository.open(faulty, PASSWORD)
    ids = save_all(repo, blobs_of(61, 20))
    with pytest.raises(InjectedFault):
        repo.flush()
    assert keys_under(store, "index/") == []
    repo.flush()  # the batch was kept: the retry indexes it
    again = Repository.open(store, PASSWORD)
    assert all(again.has_blob(BlobType.DATA, i) for i in ids)


def test_storage_that_corrupts_reads_is_caught_on_load() -> None:
    store = MemoryBackend()
    repo = new_repo(store)
    ids = save_all(repo, blobs_of(62, 10))
    repo.flush()
    loc = repo.lookup(BlobType.DATA, ids[3])
    assert loc is not None
    faulty = FaultyBackend(store).flip_byte_on_get(layout.pack(loc.pack_hex))
    reader = Repository.open(faulty, PASSWORD)
    with pytest.raises(CorruptObject) as e:
        reader.load_blob(BlobType.DATA, ids[3])
    assert ids[3].hex() in str(e.value)


def test_storage_that_truncates_packs_is_caught_by_check() -> None:
    store = MemoryBackend()
    repo = new_repo(store)
    save_all(repo, blobs_of(63, 40))
    repo.flush()
    victim = keys_under(store, "data/")[0]
    faulty = FaultyBackend(store).truncate_on_get(victim, store.stat(victim).size - 10)
    report = CheckReport()
    check_structure(Repository.open(faulty, PASSWORD), report)
    assert [(p.kind, p.object) for p in report.problems] == [("corrupt-pack", victim)]
