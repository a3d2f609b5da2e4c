"""A writer indexes its uploaded packs as it goes: every N packs or T seconds, and on demand."""

from __future__ import annotations

from resurgo.backend.memory import MemoryBackend
from resurgo.repo import BlobType, Repository
from resurgo.repo.repository import INDEX_EVERY_PACKS, INDEX_EVERY_SECONDS

from .helpers import PASSWORD, blobs_of, indexed_packs, keys_under, new_repo, save_all


def test_defaults_index_at_least_every_eight_packs_or_every_minute() -> None:
    assert INDEX_EVERY_PACKS == 8
    assert INDEX_EVERY_SECONDS == 60.0


def test_an_index_object_is_written_every_n_packs_without_flush() -> None:
    inner = MemoryBackend()
    repo = new_repo(inner)
    repo.index_every_packs = 3
    save_all(repo, blobs_of(1, 400))  # tiny packs: many of them, no flush
    packs = keys_under(inner, "data/")
    indexes = keys_under(inner, "index/")
    assert len(packs) >= 9
    assert len(indexes) == len(packs) // 3
    covered = set().union(*(indexed_packs(repo, key) for key in indexes))
    assert len(covered) == 3 * len(indexes) and covered <= set(packs)


def test_an_index_object_is_written_when_the_time_is_up_even_before_n_packs() -> None:
    inner = MemoryBackend()
    repo = new_repo(inner)
    now = [1000.0]
    repo._clock = lambda: now[0]
    repo._last_index_time = now[0]
    repo.index_every_packs = 1000
    repo.index_every_seconds = 30.0
    save_all(repo, blobs_of(2, 100))
    before = set(keys_under(inner, "data/"))
    assert before and keys_under(inner, "index/") == []
    now[0] += 31.0
    save_all(repo, blobs_of(3, 60))  # the next pack upload finds the time is up
    indexes = keys_under(inner, "index/")
    assert len(indexes) == 1  # and the clock restarts: no second one right after
    indexed = indexed_packs(repo, indexes[0])
    assert before < indexed <= set(keys_under(inner, "data/"))


def test_index_uploaded_names_uploaded_packs_only_and_the_next_writer_reuses_them() -> None:
    inner = MemoryBackend()
    repo = new_repo(inner)
    data = blobs_of(4, 200)
    ids = save_all(repo, data)
    uploaded = set(keys_under(inner, "data/"))
    assert uploaded
    repo.index_uploaded()
    indexes = keys_under(inner, "index/")
    assert set().union(*(indexed_packs(repo, key) for key in indexes)) == uploaded
    assert not keys_under(inner, "snapshots/")

    # A later writer finds the uploaded blobs and stores only the rest.
    later = Repository.open(inner, PASSWORD)
    found = [later.has_blob(BlobType.DATA, b) for b in ids]
    assert any(found) and not all(found)  # the last, unfinished pack was not stored
    results = [later.save_blob(BlobType.DATA, d) for d in data]
    assert [added for _, added in results] == [not f for f in found]
    later.flush()
    again = Repository.open(inner, PASSWORD)
    assert [again.load_blob(BlobType.DATA, b) for b in ids] == data
