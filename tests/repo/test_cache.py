"""The client cache: snapshots and tree packs are downloaded once, refreshed, never trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3
import pytest

from resurgo.backend import layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import CorruptObject
from resurgo.ops.backup import backup_paths
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, Repository
from resurgo.snapshot.model import NodeType
from resurgo.snapshot.store import list_snapshots, load_tree, walk_tree

from .helpers import PASSWORD, RecordingBackend, blobs_of, flip, new_repo, save_all


def make_tree(root: Path, seed: int, dirs: int = 6) -> Path:
    """A small directory tree: ``dirs`` directories of a few files each."""
    for d in range(dirs):
        sub = root / f"dir{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(3):
            (sub / f"f{f}.txt").write_bytes(f"file {seed} {d} {f}\n".encode() * 20)
        (root / f"dir{d}" / "top.bin").write_bytes(os.urandom(500))
    return root


def browse_everything(repo: Repository) -> dict[str, list[bytes]]:
    """What ``snapshots`` and ``ls`` of every snapshot read: all snapshots and every tree."""
    listing: dict[str, list[bytes]] = {}
    for snap in list_snapshots(repo):
        assert snap.id is not None
        listing[snap.id] = [path for path, _ in walk_tree(repo, snap.tree)]
    return listing


@pytest.fixture
def backend(tmp_path: Path) -> MemoryBackend:
    """A repository with two snapshots written by another host (no cache there)."""
    inner = MemoryBackend()
    writer = new_repo(inner)
    backup_paths(writer, [make_tree(tmp_path / "src1", 1)])
    backup_paths(writer, [make_tree(tmp_path / "src2", 2)])
    return inner


def open_counting(backend: MemoryBackend, cache: Path | None) -> tuple[Repository, RecordingBackend]:
    recording = RecordingBackend(backend)
    return Repository.open(recording, PASSWORD, cache_dir=cache), recording


def cache_root(cache: Path, repo: Repository) -> Path:
    return cache / repo.config.id


def test_second_snapshots_and_ls_download_no_snapshot_objects_and_no_tree_packs(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first, rec1 = open_counting(backend, cache)
    listing = browse_everything(first)
    assert len(listing) == 2
    assert rec1.count("get", "snapshots/") == 2
    assert rec1.count("get", "data/") >= 1

    second, rec2 = open_counting(backend, cache)
    assert browse_everything(second) == listing
    assert rec2.count("get", "snapshots/") == 0
    assert rec2.count("get", "data/") == 0
    assert rec2.count("get", "index/") == 0  # the index cache, as before
    assert rec2.count("list", "snapshots/") == 1  # the listing is what refreshes the cache


def test_the_cache_lives_in_a_directory_per_repository(backend: MemoryBackend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    browse_everything(repo)
    other = new_repo(MemoryBackend(), cache_dir=cache)
    backup_paths(other, [make_tree(tmp_path / "other", 9, dirs=1)])
    root = cache_root(cache, repo)
    assert sorted(p.name for p in cache.iterdir()) == sorted([repo.config.id, other.config.id])
    snapshot_files = {p.name for p in (root / "snapshots").iterdir()}
    assert snapshot_files == set(repo.list_objects("snapshots"))
    for path in (root / "snapshots").iterdir():  # envelope bytes, named by their hash
        assert blake3.blake3(path.read_bytes()).hexdigest() == path.name
        assert path.read_bytes() == backend.get(f"snapshots/{path.name}")
    packs = {p.name for p in (root / "packs").rglob("*") if p.is_file()}
    tree_packs = {
        loc.pack_hex for loc in repo.index.entries() if loc.type == BlobType.TREE
    }
    assert packs == tree_packs
    data_packs = {loc.pack_hex for loc in repo.index.entries() if loc.type == BlobType.DATA}
    assert not packs & data_packs  # tree packs only: data is never cached


def test_a_snapshot_added_by_another_writer_appears_and_a_removed_one_disappears(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reader, _ = open_counting(backend, cache)
    before = browse_everything(reader)

    writer = Repository.open(backend, PASSWORD)
    added = backup_paths(writer, [make_tree(tmp_path / "src3", 3)]).snapshot_id
    removed = sorted(before)[0]
    writer.delete_object("snapshots", removed)

    again, rec = open_counting(backend, cache)
    after = browse_everything(again)
    assert set(after) == set(before) - {removed} | {added}
    assert rec.count("get", "snapshots/") == 1  # only the new one
    assert not (cache_root(cache, again) / "snapshots" / removed).exists()
    assert (cache_root(cache, again) / "snapshots" / str(added)).exists()


def test_index_objects_added_by_other_writers_are_picked_up_on_open(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inner = MemoryBackend()
    first_blobs = blobs_of(1, 20)
    writer = new_repo(inner)
    first_ids = save_all(writer, first_blobs)
    writer.flush()
    reader, _ = open_counting(inner, cache)  # writes the index cache
    assert all(reader.has_blob(BlobType.DATA, b) for b in first_ids)

    other = Repository.open(inner, PASSWORD)  # another host, its own (no) cache
    more = blobs_of(2, 20)
    more_ids = save_all(other, more)
    other.flush()
    new_index = set(other.index_ids) - set(reader.index_ids)
    assert new_index

    again, rec = open_counting(inner, cache)
    assert all(again.has_blob(BlobType.DATA, b) for b in first_ids + more_ids)
    assert [again.load_blob(BlobType.DATA, b) for b in more_ids] == more
    fetched = {key for verb, key in rec.events if verb == "get" and key.startswith("index/")}
    assert fetched == {layout.INDEX + name for name in new_index}


def test_a_corrupt_cached_snapshot_is_detected_and_fetched_again(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    listing = browse_everything(repo)
    victim = cache_root(cache, repo) / "snapshots" / sorted(listing)[0]
    good = victim.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x40
    victim.write_bytes(bytes(damaged))

    again, rec = open_counting(backend, cache)
    assert browse_everything(again) == listing
    assert rec.count("get", f"snapshots/{victim.name}") == 1
    assert rec.count("get", "snapshots/") == 1
    assert victim.read_bytes() == good  # repaired


def test_a_truncated_cached_snapshot_is_fetched_again(backend: MemoryBackend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    listing = browse_everything(repo)
    victim = cache_root(cache, repo) / "snapshots" / sorted(listing)[1]
    good = victim.read_bytes()
    victim.write_bytes(good[:10])
    again, rec = open_counting(backend, cache)
    assert browse_everything(again) == listing
    assert rec.count("get", "snapshots/") == 1
    assert victim.read_bytes() == good


def cached_packs(cache: Path, repo: Repository) -> list[Path]:
    return sorted(p for p in (cache_root(cache, repo) / "packs").rglob("*") if p.is_file())


def test_a_corrupt_cached_tree_pack_is_detected_and_fetched_again(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    listing = browse_everything(repo)
    packs = cached_packs(cache, repo)
    assert packs
    victim = packs[0]
    good = victim.read_bytes()
    flip_file(victim, len(good) // 3)

    again, rec = open_counting(backend, cache)
    assert browse_everything(again) == listing
    assert rec.count("get", layout.pack(victim.name)) == 1
    assert rec.count("get", "data/") == 1
    assert victim.read_bytes() == good


def flip_file(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def tree_pack_readers(tmp_path: Path, cache: Path) -> tuple[Repository, Repository, list[bytes]]:
    """A repository with one small snapshot, opened twice on ``cache`` (the
    second through a RecordingBackend), and its trees, root first: the
    first reader has cached their pack."""
    inner = MemoryBackend()
    writer = new_repo(inner)
    backup_paths(writer, [make_tree(tmp_path / "src", 5, dirs=3)])
    repo = Repository.open(inner, PASSWORD, cache_dir=cache)
    (snap,) = list_snapshots(repo)
    trees = [snap.tree] + [
        node.subtree for _, node in walk_tree(repo, snap.tree)
        if node.type is NodeType.DIR and node.subtree is not None
    ]
    return repo, Repository.open(RecordingBackend(inner), PASSWORD, cache_dir=cache), trees


def test_a_cached_pack_damaged_after_it_was_verified_fails_authentication_and_is_fetched_again(
    tmp_path: Path,
) -> None:
    # Several trees in one pack: the first read caches the pack, then the
    # file is damaged under the blob the second read wants.
    cache = tmp_path / "cache"
    repo, fresh, trees = tree_pack_readers(tmp_path, cache)
    locs = [fresh.lookup(BlobType.TREE, t) for t in trees]
    first = locs[0]
    assert first is not None
    same_pack = [loc for loc in locs[1:] if loc is not None and loc.pack_id == first.pack_id]
    assert same_pack, "the trees should share a pack"
    target = same_pack[0]
    expected = fresh.load_blob(BlobType.TREE, first.id)
    assert load_tree(fresh, first.id)  # pack now cached
    assert expected
    pack_file = cache_root(cache, fresh) / "packs" / first.pack_hex[:2] / first.pack_hex
    flip_file(pack_file, target.offset + target.length // 2)
    recording = fresh.backend
    assert isinstance(recording, RecordingBackend)
    recording.clear()
    assert load_tree(fresh, target.id) == load_tree(repo, target.id)
    assert recording.count("get", layout.pack(first.pack_hex)) == 1
    assert blake3.blake3(pack_file.read_bytes()).hexdigest() == first.pack_hex


def test_a_tree_is_read_from_its_cached_pack_alone(tmp_path: Path, monkeypatch) -> None:
    """Using one tree reads its blob, not the whole pack: damage elsewhere in
    the cached copy is not noticed (nor needed) until a blob there is read."""
    cache = tmp_path / "cache"
    repo, fresh, trees = tree_pack_readers(tmp_path, cache)
    a, b = (fresh.lookup(BlobType.TREE, t) for t in trees[1:3])
    assert a is not None and b is not None and a.pack_id == b.pack_id
    pack_file = cache_root(cache, fresh) / "packs" / a.pack_hex[:2] / a.pack_hex
    flip_file(pack_file, b.offset + b.length // 2)
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    assert load_tree(fresh, a.id) == load_tree(repo, a.id)
    assert sum(reads) == a.length
    recording = fresh.backend
    assert isinstance(recording, RecordingBackend)
    assert recording.count("get", "data/") == 0
    # The damaged blob fails authentication: the pack is fetched again.
    assert load_tree(fresh, b.id) == load_tree(repo, b.id)
    assert recording.count("get", layout.pack(a.pack_hex)) == 1


def test_deleting_the_cache_directory_only_costs_downloads(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    listing = browse_everything(repo)
    shutil.rmtree(cache)
    again, rec = open_counting(backend, cache)
    assert browse_everything(again) == listing
    assert rec.count("get", "snapshots/") == 2
    third, rec3 = open_counting(backend, cache)
    assert browse_everything(third) == listing
    assert rec3.count("get", "snapshots/") + rec3.count("get", "data/") == 0


def test_without_a_cache_directory_every_run_downloads(backend: MemoryBackend) -> None:
    repo, _ = open_counting(backend, None)
    listing = browse_everything(repo)
    again, rec = open_counting(backend, None)
    assert browse_everything(again) == listing
    assert rec.count("get", "snapshots/") == 2 and rec.count("get", "data/") >= 1


def test_a_pack_damaged_in_the_repository_is_not_cached(backend: MemoryBackend, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    clean, _ = open_counting(backend, cache / "elsewhere")
    listing = browse_everything(clean)
    tree_packs = sorted({loc.pack_hex for loc in clean.index.entries() if loc.type == BlobType.TREE})
    # Damage the trailer length at the very end: the pack fails its hash,
    # but every blob in it is still intact.
    key = layout.pack(tree_packs[0])
    flip(backend, key, backend.stat(key).size - 1)
    repo, rec = open_counting(backend, cache)
    assert browse_everything(repo) == listing
    cached = {p.name for p in cached_packs(cache, repo)}
    assert tree_packs[0] not in cached
    assert set(tree_packs[1:]) <= cached
    assert rec.count("get", key) >= 2  # the whole pack (refused), then the blob's range


def test_a_tree_damaged_in_the_repository_is_an_error_naming_the_pack(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    probe, _ = open_counting(backend, None)
    (snap, *_) = list_snapshots(probe)
    loc = probe.lookup(BlobType.TREE, snap.tree)
    assert loc is not None
    flip(backend, layout.pack(loc.pack_hex), loc.offset + loc.length // 2)
    repo, _ = open_counting(backend, tmp_path / "cache")
    with pytest.raises(CorruptObject) as caught:
        repo.load_blob(BlobType.TREE, snap.tree)
    assert loc.pack_hex in str(caught.value)
    assert not cached_packs(tmp_path / "cache", repo)


def test_check_reads_the_repository_not_a_good_cached_copy(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    repo, _ = open_counting(backend, cache)
    listing = browse_everything(repo)
    victim = sorted(listing)[0]
    flip(backend, f"snapshots/{victim}", 40)
    # Reads through the cache still see the good copy ...
    assert browse_everything(Repository.open(backend, PASSWORD, cache_dir=cache)) == listing
    # ... but check goes to the repository and reports the damage.
    checking, rec = open_counting(backend, cache)
    report = check_repository(checking)
    assert [p.kind for p in report.problems] == ["corrupt-snapshot"]
    assert victim in report.problems[0].object
    tree_packs = {loc.pack_hex for loc in checking.index.entries() if loc.type == BlobType.TREE}
    # Each tree pack is fetched once for the whole check, not once per tree.
    for pack_hex in tree_packs:
        assert rec.count("get", layout.pack(pack_hex)) <= 2  # trailer + the whole pack


def test_a_pack_read_from_again_is_held_in_memory_until_dropped(tmp_path: Path, monkeypatch) -> None:
    """The second read of a cached pack keeps the whole file in memory (a
    backup reads many trees from one pack); dropping the pack forgets it."""
    from resurgo.repo import cache as cache_mod

    rc = cache_mod.RepoCache(tmp_path)
    data = os.urandom(4000)
    name = blake3.blake3(data).hexdigest()
    rc.store_pack(name, data)
    path = tmp_path / "packs" / name[:2] / name
    assert rc.read_pack(name, 10, 20) == data[10:30]  # read from the file
    assert rc.read_pack(name, 100, 50) == data[100:150]  # the file read whole, and held
    path.write_bytes(b"x" * 4000)
    assert rc.read_pack(name, 200, 10) == data[200:210]  # from memory
    assert rc.read_pack(name, 3990, 20) is None  # past the end: short
    rc.drop_pack(name)
    assert rc.read_pack(name, 0, 10) is None
    rc.store_pack(name, data)
    assert rc.read_pack(name, 0, 10) == data[:10]

    # A pack larger than the limit is read a blob at a time, every time.
    monkeypatch.setattr(cache_mod, "HELD_PACK_BYTES", 1000)
    other = os.urandom(3000)
    other_name = blake3.blake3(other).hexdigest()
    rc.store_pack(other_name, other)
    assert rc.read_pack(other_name, 0, 10) == other[:10]
    assert rc.read_pack(other_name, 0, 10) == other[:10]
    (tmp_path / "packs" / other_name[:2] / other_name).write_bytes(b"y" * 3000)
    assert rc.read_pack(other_name, 0, 10) == b"y" * 10
    # Packs that are pruned are forgotten too.
    assert rc.retain_packs(set()) == 2
    assert rc.read_pack(name, 0, 10) is None


def test_a_writer_keeps_the_tree_packs_it_uploads_and_the_next_backup_downloads_none(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    inner = MemoryBackend()
    recording = RecordingBackend(inner)
    writer = new_repo(recording, cache_dir=cache)
    src = make_tree(tmp_path / "src", 1)
    backup_paths(writer, [src])
    tree_packs = {
        loc.pack_hex for snap in list_snapshots(writer)
        for _, node in walk_tree(writer, snap.tree) if node.subtree is not None
        if (loc := writer.index.lookup(BlobType.TREE, node.subtree)) is not None
    }
    assert tree_packs
    for pack_hex in tree_packs:  # kept, and intact
        copy = cache_root(cache, writer) / "packs" / pack_hex[:2] / pack_hex
        assert blake3.blake3(copy.read_bytes()).hexdigest() == pack_hex
    (src / "dir0" / "inner" / "new.txt").write_bytes(b"a change")
    recording.clear()
    backup_paths(writer, [src])  # compares with the parent's trees
    assert recording.count("get", "data/") == 0
    # Another process on the same cache reads the trees without downloading.
    reader, reads = open_counting(inner, cache)
    assert browse_everything(reader)
    assert reads.count("get", "data/") == 0
