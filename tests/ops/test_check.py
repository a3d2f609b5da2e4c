"""check_repository: the snapshot walk (batched index lookups) and its problems."""

from __future__ import annotations

from resurgo.backend import layout
from resurgo.backend.memory import MemoryBackend
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.snapshot.model import Node, NodeType, Snapshot, encode_tree
from resurgo.snapshot.store import save_snapshot


def new_repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", params=RepoParams.tiny_for_tests(),
                           kdf=KDFParams.weak_for_tests())


def file_node(name: bytes, content: list[bytes]) -> Node:
    return Node(name=name, type=NodeType.FILE, size=1, content=content)


def snapshot_of(repo: Repository, nodes: list[Node], when: int) -> str:
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    repo.flush()
    return save_snapshot(repo, Snapshot(time_ns=when, tree=tree, paths=["/x"]))


def test_clean_repository_checks_and_reads_every_blob() -> None:
    repo = new_repo()
    blobs = [repo.save_blob(BlobType.DATA, bytes([i]) * 3000)[0] for i in range(40)]
    sub, _ = repo.save_blob(BlobType.TREE, encode_tree([file_node(b"f", blobs[:10])]))
    snapshot_of(repo, [file_node(b"a", blobs[10:]), Node(name=b"d", type=NodeType.DIR, subtree=sub)], 1)
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    assert report.snapshots_checked == 1 and report.trees_checked == 2
    assert report.blobs_read == 42 and report.packs_read == report.packs_checked


def test_missing_blobs_and_trees_are_named_with_their_file_and_snapshot() -> None:
    repo = new_repo()
    good = [repo.save_blob(BlobType.DATA, bytes([i]) * 3000)[0] for i in range(5)]
    intact = snapshot_of(repo, [file_node(b"ok", good)], 1)
    lost, lost_too = bytes(range(32)), bytes(range(1, 33))
    # A tree's ID is not a data blob's, even where the bytes are the same.
    tree_only, _ = repo.save_blob(BlobType.TREE, encode_tree([]))
    broken = snapshot_of(repo, [
        file_node(b"half", [good[0], lost, good[1]]),
        file_node(b"tree-as-data", [tree_only]),
        file_node(b"gone", [lost_too]),
        Node(name=b"dir", type=NodeType.DIR, subtree=bytes(32)),
    ], 2)
    report = check_repository(repo)
    found = sorted((p.kind, p.object) for p in report.problems)
    assert found == sorted([
        ("missing-blob", f"blob {lost.hex()}"), ("missing-blob", f"blob {tree_only.hex()}"),
        ("missing-blob", f"blob {lost_too.hex()}"), ("missing-tree", f"tree {bytes(32).hex()}"),
    ])
    messages = {p.object: p.message for p in report.problems}
    assert messages[f"blob {lost.hex()}"] == f"data of /half in snapshot {broken[:8]} is not in the index"
    assert messages[f"tree {bytes(32).hex()}"] == f"not in the index (snapshot {broken[:8]} /dir/)"
    assert report.damaged_snapshots == [broken]
    assert intact not in report.damaged_snapshots


def test_walk_problems_come_before_data_problems() -> None:
    repo = new_repo()
    blobs = [repo.save_blob(BlobType.DATA, bytes([i]) * 3000)[0] for i in range(5)]
    snapshot_of(repo, [file_node(b"a", [*blobs, bytes(32)])], 1)
    loc = repo.lookup(BlobType.DATA, blobs[0])
    assert loc is not None
    key = layout.pack(loc.pack_hex)
    data = bytearray(repo.backend.get(key))
    data[loc.offset + 20] ^= 1
    repo.backend.put(key, bytes(data))
    report = check_repository(repo, read_all_data=True)
    assert [p.kind for p in report.problems] == ["missing-blob", "corrupt-pack", "corrupt-blob"]


def test_the_garbage_collector_is_paused_during_the_check_and_restored_after(monkeypatch) -> None:
    import gc

    from resurgo.ops import check as check_mod

    repo = new_repo()
    snapshot_of(repo, [file_node(b"a", [repo.save_blob(BlobType.DATA, b"x" * 3000)[0]])], 1)
    seen: list[bool] = []
    real_walk, real_read = check_mod.check_snapshots, check_mod.read_data

    def walk(*args, **kwargs):
        seen.append(gc.isenabled())
        return real_walk(*args, **kwargs)

    def read(*args, **kwargs):
        seen.append(gc.isenabled())
        return real_read(*args, **kwargs)

    monkeypatch.setattr(check_mod, "check_snapshots", walk)
    monkeypatch.setattr(check_mod, "read_data", read)
    assert gc.isenabled()
    assert check_repository(repo, read_all_data=True).ok
    assert seen == [False, False] and gc.isenabled()
