"""copy: snapshots move between repositories with their own keys, deduplicated, only once."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from resurgo.backend import Backend, layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import CorruptObject, WrongPassword
from resurgo.ops.backup import backup_paths
from resurgo.ops.check import check_repository
from resurgo.ops.copy import (
    SAME_IDS,
    TRANSLATED,
    copy_snapshots,
    translation_map_path,
)
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.keys import MasterKey
from resurgo.snapshot.model import NodeType, Snapshot, decode_snapshot, encode_snapshot
from resurgo.snapshot.store import list_snapshots, walk_tree
from resurgo.testing.forwarding import ForwardingBackend

SRC_PW, DST_PW = "source password", "destination password"


class Counting(ForwardingBackend):
    """Counts gets and puts (with bytes) per key prefix."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.gets: list[tuple[str, int]] = []
        self.puts: list[tuple[str, int]] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        with self._lock:
            self.gets.append((key, len(data)))
        return data

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self.inner.put(key, data, create_only=create_only)
        with self._lock:
            self.puts.append((key, len(memoryview(data))))

    def bytes_got(self, prefix: str) -> int:
        return sum(n for key, n in self.gets if key.startswith(prefix))

    def put_keys(self) -> list[str]:
        return [key for key, _ in self.puts]


def make_files(root: Path, seed: int, files: int = 12, size: int = 20_000) -> Path:
    rng = random.Random(seed)
    for n in range(files):
        sub = root / f"d{n % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n}.bin").write_bytes(rng.randbytes(size))
    (root / "shared.txt").write_bytes(b"the same in every tree\n" * 500)
    os.symlink("shared.txt", root / "link")
    return root


def new_repo(backend: Backend, password: str, like: Repository | None = None) -> Repository:
    return Repository.init(
        backend, password, params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests(),
        chunker_params_from=like,
    )


def contents(repo: Repository, snap: Snapshot) -> dict[bytes, bytes]:
    """Every entry of a snapshot: file bytes, symlink targets, directory markers."""
    out: dict[bytes, bytes] = {}
    for path, node in walk_tree(repo, snap.tree):
        if node.type is NodeType.FILE:
            out[path] = b"".join(repo.load_blob(BlobType.DATA, b) for b in node.content)
        elif node.type is NodeType.SYMLINK:
            out[path] = b"-> " + (node.linktarget or b"")
        else:
            out[path] = node.type.value.encode()
    return out


@pytest.fixture
def source(tmp_path: Path) -> tuple[MemoryBackend, list[Path]]:
    backend = MemoryBackend()
    repo = new_repo(backend, SRC_PW)
    trees = [make_files(tmp_path / "a", 1), make_files(tmp_path / "b", 2)]
    for tree in trees:
        backup_paths(repo, [tree])
    return backend, trees


def test_copy_with_different_keys_translates_ids_and_the_copies_restore_identically(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    src = Repository.open(source[0], SRC_PW)
    dst = new_repo(MemoryBackend(), DST_PW)
    assert not dst.shares_blob_ids_with(src)
    snaps = list_snapshots(src)
    summary = copy_snapshots(src, dst, snaps, cache_dir=tmp_path / "cache")
    assert summary.mode == TRANSLATED
    assert [s for s, _ in summary.copied] == [s.id for s in snaps]
    assert summary.blobs_rehashed == summary.blobs_copied > 0

    copies = list_snapshots(dst)
    assert [c.original for c in copies] == [s.id for s in snaps]
    for orig, copy in zip(snaps, copies, strict=True):
        assert copy.tree != orig.tree  # another ID key: other IDs
        assert (copy.paths, copy.hostname, copy.time_ns, copy.tags) == (
            orig.paths, orig.hostname, orig.time_ns, orig.tags)
        assert contents(dst, copy) == contents(src, orig)
    assert check_repository(dst, read_all_data=True).ok
    # The source password does not open the destination: its own key.
    with pytest.raises(WrongPassword):
        Repository.open(dst.backend, SRC_PW)


def test_shared_content_is_stored_once_in_the_destination(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    src = Repository.open(source[0], SRC_PW)
    dst = new_repo(MemoryBackend(), DST_PW)
    summary = copy_snapshots(src, dst, list_snapshots(src), cache_dir=tmp_path / "cache")
    src_data = sum(loc.raw_length for loc in src.index.entries() if loc.type == BlobType.DATA)
    dst_data = sum(loc.raw_length for loc in dst.index.entries() if loc.type == BlobType.DATA)
    assert dst_data == src_data  # "shared.txt" and its chunks once, like in the source
    assert summary.blobs_present >= 1


def test_a_second_copy_transfers_nothing_and_downloads_no_data(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    src_backend = Counting(source[0])
    src = Repository.open(src_backend, SRC_PW, cache_dir=cache)
    dst_inner = MemoryBackend()
    dst = new_repo(dst_inner, DST_PW)
    copy_snapshots(src, dst, list_snapshots(src), cache_dir=cache)
    assert translation_map_path(cache, src, dst).exists()

    # Another run, new processes: nothing to store, nothing to download.
    src_backend2 = Counting(source[0])
    src2 = Repository.open(src_backend2, SRC_PW, cache_dir=cache)
    dst_backend2 = Counting(dst_inner)
    dst2 = Repository.open(dst_backend2, DST_PW, cache_dir=cache)
    again = copy_snapshots(src2, dst2, list_snapshots(src2), cache_dir=cache)
    assert again.copied == [] and len(again.skipped) == 2
    assert dst_backend2.puts == []
    assert src_backend2.bytes_got("data/") == 0


def test_after_a_new_source_snapshot_only_its_new_data_is_downloaded(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    src = Repository.open(source[0], SRC_PW, cache_dir=cache)
    dst = new_repo(MemoryBackend(), DST_PW)
    copy_snapshots(src, dst, list_snapshots(src), cache_dir=cache)

    tree = source[1][0]
    (tree / "new.bin").write_bytes(random.Random(9).randbytes(30_000))
    backup_paths(Repository.open(source[0], SRC_PW), [tree])

    counting = Counting(source[0])
    src2 = Repository.open(counting, SRC_PW, cache_dir=cache)
    dst2 = Repository.open(dst.backend, DST_PW, cache_dir=cache)
    summary = copy_snapshots(src2, dst2, list_snapshots(src2), cache_dir=cache)
    assert len(summary.copied) == 1 and len(summary.skipped) == 2
    # Only the new file's chunks came down (the new snapshot's other files
    # were translated before), plus ranges merged around them.
    assert 30_000 <= summary.bytes_downloaded <= 40_000
    newest = list_snapshots(dst2)[-1]
    assert contents(dst2, newest) == contents(src2, list_snapshots(src2)[-1])
    assert newest.parent is not None  # the source parent was copied: translated
    assert newest.parent in {s.id for s in list_snapshots(dst2)}


def test_a_damaged_translation_map_is_ignored_and_the_copy_is_still_right(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    src = Repository.open(source[0], SRC_PW)
    dst = new_repo(MemoryBackend(), DST_PW)
    first = list_snapshots(src)[:1]
    copy_snapshots(src, dst, first, cache_dir=cache)
    path = translation_map_path(cache, src, dst)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    summary = copy_snapshots(src, dst, list_snapshots(src), cache_dir=cache)
    assert len(summary.copied) == 1
    latest = list_snapshots(dst)[-1]
    assert contents(dst, latest) == contents(src, list_snapshots(src)[-1])
    assert check_repository(dst, read_all_data=True).ok


def count_blob_id_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = MasterKey.blob_id

    def counting(self: MasterKey, data: bytes | memoryview) -> bytes:
        calls[0] += 1
        return original(self, data)

    monkeypatch.setattr(MasterKey, "blob_id", counting)
    return calls


def test_into_a_repository_sharing_the_id_key_copy_moves_only_missing_blobs_without_rehashing(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = Repository.open(source[0], SRC_PW)
    dst = new_repo(MemoryBackend(), DST_PW, like=src)
    assert dst.shares_blob_ids_with(src)
    assert dst.config.chunker_seed == src.config.chunker_seed
    assert dst.config.params.chunk_avg == src.config.params.chunk_avg
    assert dst.config.id != src.config.id
    with pytest.raises(WrongPassword):  # its own encryption key and password
        Repository.open(dst.backend, SRC_PW)
    # Part of the data reached the destination directly (a backup there):
    # same chunker, same IDs, so copy finds it present.
    backup_paths(dst, [source[1][0]])
    present_before = sum(1 for loc in dst.index.entries() if loc.type == BlobType.DATA)

    calls = count_blob_id_calls(monkeypatch)
    counting = Counting(source[0])
    src2 = Repository.open(counting, SRC_PW)
    summary = copy_snapshots(src2, dst, list_snapshots(src2), cache_dir=tmp_path / "cache")
    assert summary.mode == SAME_IDS
    assert calls[0] == 0  # nothing re-hashed
    assert summary.blobs_rehashed == 0
    copies = [s for s in list_snapshots(dst) if s.original]
    originals = list_snapshots(src2)
    assert [c.tree for c in copies] == [o.tree for o in originals]  # same IDs
    assert summary.blobs_present >= present_before
    # Only the second tree's files came down: the first one's were there.
    second_tree = sum(p.stat().st_size for p in source[1][1].rglob("*.bin"))
    assert counting.bytes_got("data/") - summary.bytes_downloaded < 70_000  # trees only
    assert summary.bytes_downloaded <= second_tree * 1.1
    assert summary.bytes_downloaded >= second_tree * 0.9
    for copy, orig in zip(copies, originals, strict=True):
        assert contents(dst, copy) == contents(src2, orig)
    assert check_repository(dst, read_all_data=True).ok


def test_copying_back_skips_snapshots_that_came_from_there(
    source: tuple[MemoryBackend, list[Path]], tmp_path: Path
) -> None:
    src = Repository.open(source[0], SRC_PW)
    dst = new_repo(MemoryBackend(), DST_PW)
    copy_snapshots(src, dst, list_snapshots(src))
    back = copy_snapshots(dst, src, list_snapshots(dst))
    assert back.copied == [] and len(back.skipped) == 2
    # A copy of a copy records the first original.
    third = new_repo(MemoryBackend(), "third")
    copy_snapshots(dst, third, list_snapshots(dst))
    assert [s.original for s in list_snapshots(third)] == [s.id for s in list_snapshots(src)]


def test_a_damaged_source_blob_fails_the_copy_and_writes_no_snapshot(
    source: tuple[MemoryBackend, list[Path]],
) -> None:
    src = Repository.open(source[0], SRC_PW)
    first = list_snapshots(src)[0]
    shared = next(n for p, n in walk_tree(src, first.tree) if p.endswith(b"shared.txt"))
    loc = src.lookup(BlobType.DATA, shared.content[0])  # in every snapshot
    assert loc is not None
    key = layout.pack(loc.pack_hex)
    data = bytearray(source[0].get(key))
    data[loc.offset + loc.length // 2] ^= 1
    source[0].put(key, bytes(data))
    dst = new_repo(MemoryBackend(), DST_PW)
    with pytest.raises(CorruptObject):
        copy_snapshots(src, dst, list_snapshots(src))
    assert dst.list_objects("snapshots") == []


def test_snapshot_original_round_trips_and_is_validated() -> None:
    snap = Snapshot(time_ns=1, tree=bytes(32), original="ab" * 32)
    raw = encode_snapshot(snap)
    assert b'"original":"' + b"ab" * 32 + b'"' in raw
    assert decode_snapshot(raw).original == "ab" * 32
    assert b"original" not in encode_snapshot(Snapshot(time_ns=1, tree=bytes(32)))
    bad = raw.replace(b"ab" * 32, b"XY")
    with pytest.raises(CorruptObject, match="original"):
        decode_snapshot(bad)
