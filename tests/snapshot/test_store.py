"""Saving, listing, finding snapshots and walking trees, over a small in-memory object store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from resurgo.errors import (
    AmbiguousSnapshot,
    CorruptObject,
    ObjectNotFound,
    ResurgoError,
    SnapshotNotFound,
    UsageError,
)
from resurgo.repo import BlobType
from resurgo.snapshot.model import Node, NodeType, Snapshot, encode_tree
from resurgo.snapshot.store import (
    PathNotInSnapshot,
    filter_snapshots,
    find_node,
    find_snapshot,
    list_snapshots,
    load_snapshot,
    load_tree,
    save_snapshot,
    walk_tree,
)


class FakeRepo:
    """Objects keyed by the SHA-256 of their bytes (or by IDs handed out in order)."""

    def __init__(self, ids: Iterator[str] | None = None) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[tuple[int, bytes], bytes] = {}
        self._ids = ids

    def save_object(self, kind: str, data: bytes) -> str:
        obj_id = next(self._ids) if self._ids else hashlib.sha256(data).hexdigest()
        self.objects[(kind, obj_id)] = data
        return obj_id

    def load_object(self, kind: str, id_hex: str) -> bytes:
        try:
            return self.objects[(kind, id_hex)]
        except KeyError:
            raise ObjectNotFound(f"{kind}/{id_hex}") from None

    def list_objects(self, kind: str) -> list[str]:
        return [i for k, i in self.objects if k == kind]

    def delete_object(self, kind: str, id_hex: str) -> None:
        self.objects.pop((kind, id_hex), None)

    def save_blob(self, blob_type: int, data: bytes) -> bytes:
        blob_id = hashlib.sha256(data).digest()
        self.blobs[(blob_type, blob_id)] = data
        return blob_id

    def load_blob(self, blob_type: int, blob_id: bytes) -> bytes:
        return self.blobs[(blob_type, blob_id)]


TREE = bytes(32)


def snap(t: int, host: str = "h1", paths: tuple[str, ...] = ("/home",),
         tags: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(time_ns=t, tree=TREE, hostname=host, paths=list(paths), tags=list(tags))


# --- snapshots ---------------------------------------------------------------------


def test_save_then_load_returns_equal_snapshot_with_its_id() -> None:
    repo = FakeRepo()
    original = snap(10, tags=("daily",))
    snap_id = save_snapshot(repo, original)
    assert original.id == snap_id
    loaded = load_snapshot(repo, snap_id)
    assert loaded == original
    assert loaded.id == snap_id


def test_list_snapshots_sorts_by_time() -> None:
    repo = FakeRepo()
    for t in (30, 10, 20):
        save_snapshot(repo, snap(t))
    assert [s.time_ns for s in list_snapshots(repo)] == [10, 20, 30]


def test_list_snapshots_skips_a_snapshot_deleted_after_listing() -> None:
    repo = FakeRepo()
    save_snapshot(repo, snap(1))
    gone = save_snapshot(repo, snap(2))
    real_list = repo.list_objects
    listed = real_list("snapshots")
    repo.delete_object("snapshots", gone)
    repo.list_objects = lambda kind: listed  # type: ignore[method-assign]
    assert [s.time_ns for s in list_snapshots(repo)] == [1]


def test_list_snapshots_raises_on_a_corrupt_snapshot_without_error_callback() -> None:
    repo = FakeRepo()
    save_snapshot(repo, snap(1))
    repo.objects[("snapshots", "bad")] = b"{not json"
    with pytest.raises(CorruptObject, match="snapshot bad"):
        list_snapshots(repo)


def test_list_snapshots_reports_corrupt_snapshots_and_returns_the_rest() -> None:
    repo = FakeRepo()
    good = save_snapshot(repo, snap(1))
    repo.objects[("snapshots", "bad")] = b'{"v":1}'
    seen: list[tuple[str, ResurgoError]] = []
    snaps = list_snapshots(repo, on_error=lambda i, e: seen.append((i, e)))
    assert [s.id for s in snaps] == [good]
    assert [i for i, _ in seen] == ["bad"]
    assert isinstance(seen[0][1], CorruptObject)


def test_find_snapshot_by_unique_prefix_any_case() -> None:
    repo = FakeRepo(iter(["abc123", "abd456", "ff0000"]))
    for t in (1, 2, 3):
        save_snapshot(repo, snap(t))
    assert find_snapshot(repo, "abc").time_ns == 1
    assert find_snapshot(repo, "ABD").time_ns == 2
    assert find_snapshot(repo, "ff0000").id == "ff0000"


def test_find_snapshot_with_ambiguous_prefix_raises_and_names_candidates() -> None:
    repo = FakeRepo(iter(["abc123", "abd456"]))
    save_snapshot(repo, snap(1))
    save_snapshot(repo, snap(2))
    with pytest.raises(AmbiguousSnapshot, match="abc123, abd456"):
        find_snapshot(repo, "ab")


def test_find_snapshot_with_unknown_prefix_raises_not_found() -> None:
    repo = FakeRepo(iter(["abc123"]))
    save_snapshot(repo, snap(1))
    with pytest.raises(SnapshotNotFound):
        find_snapshot(repo, "abd")


@pytest.mark.parametrize("ref", ["", "xyz", "latest~1", "../x"])
def test_find_snapshot_rejects_references_that_are_not_hex(ref: str) -> None:
    with pytest.raises(UsageError):
        find_snapshot(FakeRepo(), ref)


def test_find_latest_returns_newest_snapshot_matching_filters() -> None:
    repo = FakeRepo()
    save_snapshot(repo, snap(1, host="a", tags=("x", "y")))
    save_snapshot(repo, snap(2, host="a", paths=("/etc",)))
    save_snapshot(repo, snap(3, host="b", tags=("x",)))
    assert find_snapshot(repo, "latest").time_ns == 3
    assert find_snapshot(repo, "latest", hosts=["a"]).time_ns == 2
    assert find_snapshot(repo, "latest", tags=["x"]).time_ns == 3
    assert find_snapshot(repo, "latest", tags=["x", "y"]).time_ns == 1
    assert find_snapshot(repo, "latest", paths=["/home/"]).time_ns == 3
    assert find_snapshot(repo, "latest", hosts=["a", "b"], paths=["/etc"]).time_ns == 2


def test_find_latest_without_match_raises_not_found_naming_the_filters() -> None:
    repo = FakeRepo()
    save_snapshot(repo, snap(1, host="a"))
    with pytest.raises(SnapshotNotFound, match="host=zz"):
        find_snapshot(repo, "latest", hosts=["zz"])
    with pytest.raises(SnapshotNotFound):
        find_snapshot(FakeRepo(), "latest")


def test_filter_snapshots_requires_all_paths_and_all_tags() -> None:
    snaps = [
        snap(1, paths=("/a", "/b"), tags=("t1",)),
        snap(2, paths=("/a",), tags=("t1", "t2")),
        snap(3, paths=("/",), host="other"),
    ]
    assert [s.time_ns for s in filter_snapshots(snaps, paths=["/a", "/b/"])] == [1]
    assert [s.time_ns for s in filter_snapshots(snaps, tags=["t2", "t1"])] == [2]
    assert [s.time_ns for s in filter_snapshots(snaps, hosts=["other"], paths=["//"])] == [3]
    assert [s.time_ns for s in filter_snapshots(snaps)] == [1, 2, 3]


# --- trees ---------------------------------------------------------------------------


def store_tree(repo: FakeRepo, nodes: list[Node]) -> bytes:
    return repo.save_blob(BlobType.TREE, encode_tree(nodes))


def sample_tree(repo: FakeRepo) -> bytes:
    """/a (file), /d/{x, sub/{y}}, /l -> d, /\\xff (non-UTF-8 file), /u (unreadable dir)."""
    sub = store_tree(repo, [Node(name=b"y", type=NodeType.FILE, size=1)])
    d = store_tree(repo, [
        Node(name=b"x", type=NodeType.FILE),
        Node(name=b"sub", type=NodeType.DIR, subtree=sub),
    ])
    return store_tree(repo, [
        Node(name=b"l", type=NodeType.SYMLINK, linktarget=b"d"),
        Node(name=b"\xff", type=NodeType.FILE),
        Node(name=b"d", type=NodeType.DIR, subtree=d),
        Node(name=b"a", type=NodeType.FILE),
        Node(name=b"u", type=NodeType.DIR, error="permission denied"),
    ])


def test_walk_tree_yields_paths_depth_first_in_sorted_order() -> None:
    repo = FakeRepo()
    root = sample_tree(repo)
    walked = [(p, n.type) for p, n in walk_tree(repo, root)]
    assert walked == [
        (b"a", NodeType.FILE),
        (b"d", NodeType.DIR),
        (b"d/sub", NodeType.DIR),
        (b"d/sub/y", NodeType.FILE),
        (b"d/x", NodeType.FILE),
        (b"l", NodeType.SYMLINK),
        (b"u", NodeType.DIR),
        (b"\xff", NodeType.FILE),
    ]


def test_walk_tree_prefixes_paths() -> None:
    repo = FakeRepo()
    root = sample_tree(repo)
    assert [p for p, _ in walk_tree(repo, root, b"srv")][:3] == [b"srv/a", b"srv/d", b"srv/d/sub"]


def test_walk_tree_handles_nesting_deeper_than_the_recursion_limit() -> None:
    repo = FakeRepo()
    tree = store_tree(repo, [Node(name=b"leaf", type=NodeType.FILE)])
    for _ in range(1500):
        tree = store_tree(repo, [Node(name=b"n", type=NodeType.DIR, subtree=tree)])
    paths = [p for p, _ in walk_tree(repo, tree)]
    assert len(paths) == 1501
    assert paths[-1] == b"/".join([b"n"] * 1500 + [b"leaf"])


def test_walk_tree_raises_corrupt_object_naming_the_damaged_tree() -> None:
    repo = FakeRepo()
    bad = repo.save_blob(BlobType.TREE, b'{"v":1,"nodes":[{"name":"..","type":"file"}]}')
    root = store_tree(repo, [Node(name=b"d", type=NodeType.DIR, subtree=bad)])
    with pytest.raises(CorruptObject) as info:
        list(walk_tree(repo, root))
    assert info.value.name == f"tree {bad.hex()}"


def test_load_tree_reads_tree_blobs() -> None:
    repo = FakeRepo()
    tree = store_tree(repo, [Node(name=b"f", type=NodeType.FILE)])
    assert load_tree(repo, tree) == [Node(name=b"f", type=NodeType.FILE)]


def test_find_node_follows_nested_paths() -> None:
    repo = FakeRepo()
    root = sample_tree(repo)
    assert find_node(repo, root, b"d/sub/y").size == 1
    assert find_node(repo, root, b"/d//sub/./y").size == 1
    assert find_node(repo, root, b"\xff").name == b"\xff"
    top = find_node(repo, root, b"/")
    assert (top.type, top.subtree) == (NodeType.DIR, root)


@pytest.mark.parametrize("path", [b"nope", b"d/nope", b"a/x", b"l/x", b"u/x"])
def test_find_node_raises_for_missing_or_non_directory_components(path: bytes) -> None:
    repo = FakeRepo()
    with pytest.raises(PathNotInSnapshot):
        find_node(repo, sample_tree(repo), path)


def test_find_node_refuses_dotdot() -> None:
    repo = FakeRepo()
    with pytest.raises(UsageError):
        find_node(repo, sample_tree(repo), b"d/../a")
