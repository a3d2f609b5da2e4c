"""The repository facade: create/open, keys, blobs, dedup, threads, write order, index cache."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from resurgo.backend import layout
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import (
    BlobNotFound,
    KeyError_,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
    UsageError,
    WrongPassword,
)
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.crypto import Kind
from resurgo.repo.repository import INDEX_EVERY_PACKS

from .helpers import (
    PASSWORD,
    RecordingBackend,
    blobs_of,
    decode_index_object,
    indexed_packs,
    keys_under,
    new_repo,
    save_all,
)

WEAK = KDFParams.weak_for_tests()


def snapshot_of(backend: MemoryBackend, prefixes: tuple[str, ...]) -> dict[str, bytes]:
    return {o.key: backend.get(o.key) for p in prefixes for o in backend.list(p)}


# ------------------------------------------------------------------ init / open


def test_init_then_open_with_the_same_password(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    repo = new_repo(backend)
    again = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD)
    assert again.config == repo.config
    assert again.key_id == repo.key_id
    assert len(repo.config.id) == 32
    data = b"the same key material" * 10
    assert again.blob_id(data) == repo.blob_id(data)
    assert len(repo.blob_id(data)) == 32
    assert keys_under(backend, "") == ["config", f"keys/{repo.key_id}"]


def test_open_with_a_wrong_password_raises_wrong_password() -> None:
    backend = MemoryBackend()
    new_repo(backend)
    with pytest.raises(WrongPassword) as e:
        Repository.open(backend, "not it")
    assert e.value.exit_code == 12


def test_open_where_there_is_no_repository_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound) as e:
        Repository.open(LocalBackend(tmp_path / "empty"), PASSWORD)
    assert e.value.exit_code == 10


def test_init_twice_raises_repository_exists() -> None:
    backend = MemoryBackend()
    first = new_repo(backend)
    with pytest.raises(RepositoryExists) as e:
        new_repo(backend)
    assert e.value.exit_code == 16
    assert keys_under(backend, "keys/") == [f"keys/{first.key_id}"]


def test_init_refuses_an_empty_password() -> None:
    with pytest.raises(UsageError):
        Repository.init(MemoryBackend(), "", kdf=WEAK)


def test_init_rejects_invalid_params() -> None:
    with pytest.raises(UsageError):
        new_repo(params=RepoParams(chunk_min=1))
    with pytest.raises(UsageError):
        new_repo(params=RepoParams(pack_size=100))


def test_blob_ids_are_keyed_per_repository() -> None:
    a, b = new_repo(), new_repo()
    assert a.blob_id(b"same") != b.blob_id(b"same")
    assert a.config.chunker_seed != b.config.chunker_seed


# ------------------------------------------------------------------ keys


def test_added_key_opens_the_repository_and_lists_as_not_current() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    kid = repo.add_key("second", kdf=WEAK, hostname="h2", username="u2")
    keys = {k.id: k for k in repo.list_keys()}
    assert set(keys) == {repo.key_id, kid}
    assert keys[repo.key_id].current and not keys[kid].current
    assert (keys[kid].hostname, keys[kid].username) == ("h2", "u2")
    other = Repository.open(backend, "second")
    assert other.key_id == kid
    assert other.blob_id(b"x") == repo.blob_id(b"x")


def test_removed_key_no_longer_opens_the_repository() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    kid = repo.add_key("second", kdf=WEAK)
    assert repo.remove_key(kid[:10]) == kid
    with pytest.raises(WrongPassword):
        Repository.open(backend, "second")
    Repository.open(backend, PASSWORD)


def test_removing_the_key_in_use_is_refused() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    with pytest.raises(KeyError_):
        repo.remove_key(repo.key_id)
    assert keys_under(backend, "keys/") == [f"keys/{repo.key_id}"]


def test_unknown_or_ambiguous_key_prefix_is_refused() -> None:
    repo = new_repo()
    with pytest.raises(KeyError_):
        repo.remove_key("zz")
    with pytest.raises(KeyError_):
        repo.remove_key("")
    ids = [repo.add_key(f"pw{i}", kdf=WEAK) for i in range(20)]
    every = [*ids, repo.key_id]
    shared = next(c for c in {i[0] for i in every} if sum(k.startswith(c) for k in every) > 1)
    with pytest.raises(UsageError, match="ambiguous"):
        repo.remove_key(shared)


def test_changed_password_opens_and_old_one_stops_working_without_rewriting_data() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    blobs = blobs_of(1, 40)
    ids = save_all(repo, blobs)
    repo.flush()
    snap = repo.save_object("snapshots", b'{"tree": "x"}')
    before = snapshot_of(backend, ("config", "data/", "index/", "snapshots/"))

    new_id = repo.change_password("new password", kdf=WEAK)

    assert repo.key_id == new_id
    assert keys_under(backend, "keys/") == [f"keys/{new_id}"]
    assert snapshot_of(backend, ("config", "data/", "index/", "snapshots/")) == before
    with pytest.raises(WrongPassword):
        Repository.open(backend, PASSWORD)
    reopened = Repository.open(backend, "new password")
    assert [reopened.load_blob(BlobType.DATA, i) for i in ids] == blobs
    assert reopened.load_object("snapshots", snap) == b'{"tree": "x"}'


# ------------------------------------------------------------------ blobs


def test_blobs_round_trip_across_many_packs() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    data = [*blobs_of(2, 200), b"tree " * 300]
    ids = [*save_all(repo, data[:-1]), repo.save_blob(BlobType.TREE, data[-1])[0]]
    repo.flush()
    assert len(keys_under(backend, "data/")) > 5
    for kind, i, d in zip([BlobType.DATA] * 200 + [BlobType.TREE], ids, data, strict=True):
        assert repo.load_blob(kind, i) == d
    reopened = Repository.open(backend, PASSWORD)
    assert len(reopened.index) == 201
    for kind, i, d in zip([BlobType.DATA] * 200 + [BlobType.TREE], ids, data, strict=True):
        assert reopened.has_blob(kind, i)
        assert reopened.load_blob(kind, i) == d
    # Every pack key is data/<first two hex of ID>/<ID>.
    for key in keys_under(backend, "data/"):
        name = layout.name_of(key)
        assert key == f"data/{name[:2]}/{name}"


def test_same_data_saved_twice_is_stored_once() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    data = b"duplicate me " * 100
    first = repo.save_blob(BlobType.DATA, data)
    second = repo.save_blob(BlobType.DATA, data)
    assert first == (repo.blob_id(data), True)
    assert second == (repo.blob_id(data), False)
    repo.flush()
    third = Repository.open(backend, PASSWORD).save_blob(BlobType.DATA, data)
    assert third == (repo.blob_id(data), False)
    assert repo.stats_added["blobs"] == 1
    assert len(Repository.open(backend, PASSWORD).index) == 1


def test_same_bytes_as_data_and_tree_are_two_blobs() -> None:
    repo = new_repo()
    bid, _ = repo.save_blob(BlobType.DATA, b"both")
    assert repo.save_blob(BlobType.TREE, b"both") == (bid, True)
    repo.flush()
    assert repo.load_blob(BlobType.DATA, bid) == repo.load_blob(BlobType.TREE, bid) == b"both"


def test_unknown_blob_raises_blob_not_found() -> None:
    repo = new_repo()
    with pytest.raises(BlobNotFound):
        repo.load_blob(BlobType.DATA, bytes(32))
    assert not repo.has_blob(BlobType.DATA, bytes(32))


def test_empty_blob_round_trips() -> None:
    repo = new_repo()
    bid, _ = repo.save_blob(BlobType.DATA, b"")
    repo.flush()
    assert repo.load_blob(BlobType.DATA, bid) == b""


def test_eight_threads_saving_overlapping_data_store_each_blob_once() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    pool = blobs_of(3, 120)
    results: list[list[tuple[bytes, bool]]] = [[] for _ in range(8)]
    chosen: set[bytes] = set()
    start = threading.Barrier(8)

    def work(n: int) -> None:
        r = random.Random(n)
        mine = r.sample(pool, 80)
        chosen.update(mine)
        start.wait()
        for d in mine:
            results[n].append(repo.save_blob(BlobType.DATA, memoryview(d)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo.flush()
    added = [bid for rs in results for bid, new in rs if new]
    saved_ids = {bid for rs in results for bid, _ in rs}
    assert saved_ids == {repo.blob_id(d) for d in chosen}
    # Exactly one thread reports each blob as newly added.
    assert len(added) == len(set(added))
    assert set(added) == saved_ids
    assert repo.stats_added["blobs"] == len(saved_ids)
    reopened = Repository.open(backend, PASSWORD)
    assert len(reopened.index) == len(saved_ids)
    by_id = {repo.blob_id(d): d for d in pool}
    for bid in saved_ids:
        assert reopened.load_blob(BlobType.DATA, bid) == by_id[bid]


def test_save_blob_with_a_given_id_trusts_the_caller() -> None:
    repo = new_repo()
    bid = repo.blob_id(b"payload")
    assert repo.save_blob(BlobType.DATA, b"payload", blob_id=bid) == (bid, True)
    repo.flush()
    assert repo.load_blob(BlobType.DATA, bid) == b"payload"


# ------------------------------------------------------------------ write order


def test_every_index_object_is_written_after_the_packs_it_names() -> None:
    rec = RecordingBackend(MemoryBackend())
    repo = new_repo(rec)
    pool = blobs_of(4, 800)  # ~1.8 MiB, ~27 packs: index objects are also written mid-stream

    def work(part: list[bytes]) -> None:
        save_all(repo, part)

    threads = [threading.Thread(target=work, args=(pool[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo.flush()

    writes = rec.writes()
    done_at = {k: i for i, (v, k) in enumerate(writes) if v == "put-done"}
    index_starts = [(i, k) for i, (v, k) in enumerate(writes) if v == "put-start" and k.startswith("index/")]
    assert len(index_starts) >= 2  # at least one written every INDEX_EVERY_PACKS packs, plus flush
    named: set[str] = set()
    for start, key in index_starts:
        packs = indexed_packs(repo, key)
        assert packs
        for p in packs:
            assert done_at[p] < start, f"{key} was written before {p} was durable"
        named |= packs
    assert named == set(keys_under(rec, "data/"))
    assert len(decode_index_object(repo, index_starts[0][1]).pack_ids) == INDEX_EVERY_PACKS


def test_flush_with_nothing_pending_writes_nothing() -> None:
    rec = RecordingBackend(MemoryBackend())
    repo = new_repo(rec)
    rec.clear()
    repo.flush()
    assert rec.writes() == []


def test_object_names_are_the_hash_of_their_bytes() -> None:
    import blake3

    backend = MemoryBackend()
    repo = new_repo(backend)
    save_all(repo, blobs_of(5, 30))
    repo.flush()
    repo.save_object("snapshots", b"{}")
    for prefix in ("keys/", "index/", "data/", "snapshots/"):
        for key in keys_under(backend, prefix):
            assert blake3.blake3(backend.get(key)).hexdigest() == layout.name_of(key)


# ------------------------------------------------------------------ small objects


def test_snapshot_objects_round_trip_and_list() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    a = repo.save_object("snapshots", b'{"a": 1}')
    b = repo.save_object("snapshots", b'{"b": 2}')
    assert repo.list_objects("snapshots") == sorted([a, b])
    assert repo.load_object("snapshots", a) == b'{"a": 1}'
    repo.delete_object("snapshots", a)
    assert repo.list_objects("snapshots") == [b]
    env = backend.get(f"snapshots/{b}")
    assert env[3] == Kind.SNAPSHOT
    with pytest.raises(ValueError):
        repo.save_object("index", b"x")


# ------------------------------------------------------------------ index cache


def test_second_open_reads_the_index_from_the_cache(tmp_path: Path) -> None:
    rec = RecordingBackend(MemoryBackend())
    repo = new_repo(rec, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(6, 300)[:150])
    repo.flush()
    ids += save_all(repo, blobs_of(6, 300)[150:])
    repo.flush()
    n_index = len(keys_under(rec, "index/"))
    assert n_index == 2

    rec.clear()
    first = Repository.open(rec, PASSWORD, cache_dir=tmp_path)
    # flush() already wrote the cache: nothing to fetch.
    assert rec.count("get", "index/") == 0
    assert len(first.index) == 300
    assert first.load_blob(BlobType.DATA, ids[7]) == blobs_of(6, 300)[7]

    rec.clear()
    Repository.open(rec, PASSWORD, cache_dir=tmp_path / "other")
    assert rec.count("get", "index/") == n_index


def test_cache_picks_up_index_objects_written_by_another_writer(tmp_path: Path) -> None:
    rec = RecordingBackend(MemoryBackend())
    mine = new_repo(rec, cache_dir=tmp_path / "a")
    save_all(mine, blobs_of(7, 50))
    mine.flush()
    before = set(keys_under(rec, "index/"))

    other = Repository.open(rec, PASSWORD, cache_dir=tmp_path / "b")
    new_ids = save_all(other, blobs_of(8, 50))
    other.flush()
    added = set(keys_under(rec, "index/")) - before
    assert added

    rec.clear()
    again = Repository.open(rec, PASSWORD, cache_dir=tmp_path / "a")
    fetched = {k for v, k in rec.events if v == "get" and k.startswith("index/")}
    assert fetched == added
    assert len(again.index) == 100
    assert again.load_blob(BlobType.DATA, new_ids[3]) == blobs_of(8, 50)[3]

    rec.clear()
    Repository.open(rec, PASSWORD, cache_dir=tmp_path / "a")
    assert rec.count("get", "index/") == 0  # the refreshed cache covers both writers


def test_damaged_cache_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    rec = RecordingBackend(MemoryBackend())
    repo = new_repo(rec, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(9, 80))
    repo.flush()
    cache = tmp_path / repo.config.id / "index"
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    cache.write_bytes(bytes(raw))

    rec.clear()
    again = Repository.open(rec, PASSWORD, cache_dir=tmp_path)
    assert rec.count("get", "index/") == len(keys_under(rec, "index/"))
    assert [again.load_blob(BlobType.DATA, i) for i in ids] == blobs_of(9, 80)
    assert cache.read_bytes() != bytes(raw)

    rec.clear()
    Repository.open(rec, PASSWORD, cache_dir=tmp_path)
    assert rec.count("get", "index/") == 0


def test_cache_of_garbage_or_of_another_key_is_ignored(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = new_repo(backend, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(10, 20))
    repo.flush()
    cache = tmp_path / repo.config.id / "index"
    for junk in (b"", b"garbage", new_repo(cache_dir=tmp_path / "x").sealer().seal(Kind.CACHE, b"x")):
        cache.write_bytes(junk)
        again = Repository.open(backend, PASSWORD, cache_dir=tmp_path)
        assert again.load_blob(BlobType.DATA, ids[0]) == blobs_of(10, 20)[0]


def test_cache_covering_removed_index_objects_is_discarded(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = new_repo(backend, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(11, 30))
    repo.flush()
    for key in keys_under(backend, "index/"):
        backend.delete(key)
    again = Repository.open(backend, PASSWORD, cache_dir=tmp_path)
    assert len(again.index) == 0
    assert not again.has_blob(BlobType.DATA, ids[0])


def test_reads_do_not_write_to_the_backend(tmp_path: Path) -> None:
    rec = RecordingBackend(MemoryBackend())
    repo = new_repo(rec, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(12, 60))
    repo.flush()
    snap = repo.save_object("snapshots", b"{}")
    rec.clear()
    again = Repository.open(rec, PASSWORD, cache_dir=tmp_path / "fresh")
    for i in ids:
        again.load_blob(BlobType.DATA, i)
    again.load_object("snapshots", snap)
    again.list_objects("snapshots")
    again.list_keys()
    assert rec.writes() == []


# ------------------------------------------------------------------ versions


def test_config_of_an_unsupported_envelope_version_is_refused() -> None:
    backend = MemoryBackend()
    new_repo(backend)
    env = bytearray(backend.get("config"))
    env[0] = 3  # versions 1 and 2 are known (2: dictionary compression)
    backend.put("config", bytes(env))
    with pytest.raises(UnsupportedVersion) as e:
        Repository.open(backend, PASSWORD)
    assert e.value.exit_code == 14


def test_snapshot_of_an_unsupported_envelope_version_is_refused() -> None:
    import os

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    backend = MemoryBackend()
    repo = new_repo(backend)
    header = bytes([3, 1, 0, Kind.SNAPSHOT])
    nonce = os.urandom(12)
    env = header + nonce + AESGCM(repo._master.encrypt).encrypt(nonce, b"{}", header)
    name = blake3.blake3(env).hexdigest()
    backend.put(f"snapshots/{name}", env)
    with pytest.raises(UnsupportedVersion, match="format version 3"):
        repo.load_object("snapshots", name)


def test_config_of_an_unsupported_config_version_is_refused() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    doc = repo.config.to_json().replace(b'"v": 1', b'"v": 2')
    backend.put("config", repo.sealer().seal(Kind.CONFIG, doc))
    with pytest.raises(UnsupportedVersion):
        Repository.open(backend, PASSWORD)


def test_key_file_of_an_unsupported_version_is_refused() -> None:
    import json

    from resurgo.repo.keys import parse_key_file

    backend = MemoryBackend()
    repo = new_repo(backend)
    doc = json.loads(backend.get(f"keys/{repo.key_id}"))
    doc["v"] = 2
    raw = json.dumps(doc).encode()
    import blake3

    with pytest.raises(UnsupportedVersion):
        parse_key_file(blake3.blake3(raw).hexdigest(), raw)
