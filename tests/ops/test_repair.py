"""repair: random packs, index objects and snapshots deleted or corrupted; check names
each one, repair recovers everything recoverable and lists what it could not."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from resurgo.backend import layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import RepositoryLocked
from resurgo.ops.backup import backup_paths
from resurgo.ops.check import check_repository
from resurgo.ops.repair import repair_index, repair_snapshots
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.lock import ExclusiveLock
from resurgo.repo.pack import parse_trailer, trailer_length
from resurgo.snapshot.model import NodeType
from resurgo.snapshot.store import list_snapshots, load_snapshot, walk_tree

PASSWORD = "pw"


def open_repo(backend: MemoryBackend) -> Repository:
    return Repository.open(backend, PASSWORD)


@dataclass
class Original:
    """What each snapshot held, read before any damage."""

    files: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # snap -> path -> bytes
    file_blobs: dict[str, dict[bytes, list[bytes]]] = field(default_factory=dict)
    dir_trees: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # snap -> dir -> tree
    roots: dict[str, bytes] = field(default_factory=dict)


def build(tmp_path: Path, seed: int) -> tuple[MemoryBackend, Original]:
    rng = random.Random(seed)
    backend = MemoryBackend()
    repo = Repository.init(backend, PASSWORD, params=RepoParams.tiny_for_tests(),
                           kdf=KDFParams.weak_for_tests())
    src = tmp_path / "src"
    for round_ in range(4):
        for d in range(3):
            sub = src / f"d{d}" / f"e{rng.randrange(2)}"
            sub.mkdir(parents=True, exist_ok=True)
            for f in range(3):
                (sub / f"f{round_}-{f}").write_bytes(rng.randbytes(rng.randrange(500, 12_000)))
        # Some files change, some stay: snapshots share most of their data.
        victim = rng.choice([p for p in src.rglob("*") if p.is_file()])
        victim.write_bytes(rng.randbytes(3000))
        backup_paths(repo, [src])
    orig = Original()
    for snap in list_snapshots(repo):
        assert snap.id
        orig.roots[snap.id] = snap.tree
        files, blobs, dirs = {}, {}, {}
        for path, node in walk_tree(repo, snap.tree):
            if node.type is NodeType.FILE:
                files[path] = b"".join(repo.load_blob(BlobType.DATA, b) for b in node.content)
                blobs[path] = list(node.content)
            elif node.type is NodeType.DIR and node.subtree:
                dirs[path] = node.subtree
        orig.files[snap.id], orig.file_blobs[snap.id], orig.dir_trees[snap.id] = files, blobs, dirs
    repo.close()
    return backend, orig


def pack_blobs(backend: MemoryBackend, repo: Repository, key: str):
    raw = backend.get(key)
    tlen = trailer_length(raw, key)
    return parse_trailer(repo.sealer(), raw[len(raw) - 4 - tlen : len(raw) - 4],
                         pack_size=len(raw), name=key)


def flip(backend: MemoryBackend, key: str, offset: int) -> None:
    data = bytearray(backend.get(key))
    data[offset] ^= 0x55
    backend.put(key, bytes(data))


def expected_losses(orig: Original, snap: str, destroyed: set[bytes]) -> set[str]:
    """Paths repair snapshots must report lost (a lost directory hides what is below it)."""
    if orig.roots[snap] in destroyed:
        return {"/ (the root directory)"}
    lost_dirs = {d for d, t in orig.dir_trees[snap].items() if t in destroyed}

    def under_lost(path: bytes) -> bool:
        return any(path.startswith(d + b"/") for d in lost_dirs)

    out = {d.decode() + "/" for d in lost_dirs if not under_lost(d)}
    for path, blobs in orig.file_blobs[snap].items():
        if not under_lost(path) and any(b in destroyed for b in blobs):
            out.add(path.decode())
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_damage_is_reported_repaired_and_what_is_lost_is_listed(tmp_path, seed):
    backend, orig = build(tmp_path, seed)
    rng = random.Random(seed * 7919)
    repo = open_repo(backend)
    data_keys = sorted(o.key for o in backend.list(layout.DATA))
    index_keys = sorted(o.key for o in backend.list(layout.INDEX))
    snap_keys = sorted(o.key for o in backend.list("snapshots/"))
    assert len(data_keys) >= 6 and len(index_keys) >= 2 and len(snap_keys) == 4

    destroyed: set[bytes] = set()
    # The deleted pack holds data a surviving snapshot uses, so the damage
    # costs files whatever the chunker and packing made of the tree.
    corrupted_snap = rng.choice(snap_keys)
    survivors = {s: fb for s, fb in orig.file_blobs.items() if s != layout.name_of(corrupted_snap)}
    used = {b for fb in survivors.values() for blobs in fb.values() for b in blobs}
    costly = [k for k in data_keys if any(b.id in used for b in pack_blobs(backend, repo, k))]
    deleted_pack = rng.choice(costly)
    corrupted_pack = rng.choice([k for k in data_keys if k != deleted_pack])
    destroyed |= {b.id for b in pack_blobs(backend, repo, deleted_pack)}
    victim = rng.choice(pack_blobs(backend, repo, corrupted_pack))
    destroyed.add(victim.id)
    backend.delete(deleted_pack)
    flip(backend, corrupted_pack, victim.offset + victim.length // 2)
    deleted_index, corrupted_index = rng.sample(index_keys, 2)
    backend.delete(deleted_index)
    flip(backend, corrupted_index, 40)
    flip(backend, corrupted_snap, 30)

    # check names every damaged object it can see.
    report = check_repository(open_repo(backend), read_all_data=True)
    named = {p.object for p in report.problems}
    assert corrupted_index in named
    assert corrupted_snap in named
    assert any(corrupted_pack in o for o in named)
    assert any(p.kind in ("missing-pack", "missing-blob", "missing-tree") for p in report.problems)
    assert report.unused_packs  # the packs of the lost index objects look unused

    ri = repair_index(open_repo(backend), read_data=True)
    assert corrupted_pack.rsplit("/", 1)[1] in {d.pack for d in ri.damaged}
    assert victim.id.hex() in ri.blobs_lost
    assert not ri.complete
    rs = repair_snapshots(open_repo(backend), forget=True)
    bad_snap = layout.name_of(corrupted_snap)
    assert [u["id"] for u in rs.unreadable] == [bad_snap]
    assert bad_snap in rs.removed

    # What could not be recovered is listed, exactly.
    reported = {r.original: set(r.lost) for r in rs.repaired}
    assert any(reported.values())  # the damage did cost files
    for snap in orig.files:
        if snap == bad_snap:
            continue
        assert reported.get(snap, set()) == expected_losses(orig, snap, destroyed), snap

    # After repair the repository checks clean, and everything else is still there.
    fresh = open_repo(backend)
    after = check_repository(fresh, read_all_data=True)
    assert after.ok, after.problems
    assert after.unused_packs == []
    survivors = {s.id: s for s in list_snapshots(fresh)}
    by_original = {r.original: r.new for r in rs.repaired}
    for snap, files in orig.files.items():
        if snap == bad_snap:
            assert snap not in survivors
            continue
        new_id = by_original.get(snap, snap)
        assert new_id in survivors
        s = survivors[new_id]
        assert s.damaged == (snap in by_original)
        restored = {p: b"".join(fresh.load_blob(BlobType.DATA, b) for b in n.content)
                    for p, n in walk_tree(fresh, s.tree) if n.type is NodeType.FILE}
        lost = expected_losses(orig, snap, destroyed)
        for path, content in files.items():
            gone = path.decode() in lost or any(
                path.decode().startswith(x) for x in lost if x.endswith("/"))
            if "/ (the root directory)" in lost or gone:
                assert path not in restored
            else:
                assert restored[path] == content, path


def test_repair_index_after_every_index_object_is_lost_recovers_everything(tmp_path):
    backend, orig = build(tmp_path, 11)
    for o in list(backend.list(layout.INDEX)):
        backend.delete(o.key)
    broken = check_repository(open_repo(backend))
    assert not broken.ok and broken.unused_packs
    r = repair_index(open_repo(backend))
    assert r.complete and not r.damaged and r.index_written >= 1
    assert repair_snapshots(open_repo(backend)).repaired == []
    fresh = open_repo(backend)
    report = check_repository(fresh, read_all_data=True)
    assert report.ok and report.unused_packs == []
    for snap, files in orig.files.items():
        s = load_snapshot(fresh, snap)
        got = {p: b"".join(fresh.load_blob(BlobType.DATA, b) for b in n.content)
               for p, n in walk_tree(fresh, s.tree) if n.type is NodeType.FILE}
        assert got == files


def test_pack_with_an_unreadable_trailer_is_salvaged_through_the_old_index(tmp_path):
    backend, _ = build(tmp_path, 12)
    repo = open_repo(backend)
    key = max((o for o in backend.list(layout.DATA)), key=lambda o: o.size).key
    blobs = pack_blobs(backend, repo, key)
    raw = backend.get(key)
    flip(backend, key, len(raw) - 10)  # inside the trailer
    r = repair_index(open_repo(backend))
    damaged = {d.pack: d for d in r.damaged}
    assert layout.name_of(key) in damaged
    assert damaged[layout.name_of(key)].salvaged == len(blobs)
    assert r.complete
    assert key not in {o.key for o in backend.list(layout.DATA)}
    fresh = open_repo(backend)
    assert check_repository(fresh, read_all_data=True).ok
    for b in blobs:
        assert fresh.has_blob(b.type, b.id)


def test_repair_snapshots_keeps_the_originals_unless_asked_to_forget(tmp_path):
    backend, orig = build(tmp_path, 13)
    repo = open_repo(backend)
    some_file_blob = next(iter(next(iter(orig.file_blobs.values())).values()))[0]
    key = layout.pack(repo.lookup(BlobType.DATA, some_file_blob).pack_hex)  # type: ignore[union-attr]
    backend.delete(key)
    repair_index(open_repo(backend))
    before = {o.key for o in backend.list("snapshots/")}
    r = repair_snapshots(open_repo(backend))
    assert r.repaired and not r.removed
    after = {o.key for o in backend.list("snapshots/")}
    assert before < after
    assert all(r_.new and f"snapshots/{r_.new}" in after for r_ in r.repaired)
    again = repair_snapshots(open_repo(backend), forget=True)
    # The rewritten snapshots are intact; the originals go now.
    assert {x.original for x in again.repaired} == {x.original for x in r.repaired}
    assert set(again.removed) == {x.original for x in r.repaired}


def test_dry_runs_change_nothing(tmp_path):
    backend, _ = build(tmp_path, 14)
    backend.delete(sorted(o.key for o in backend.list(layout.DATA))[0])
    backend.delete(sorted(o.key for o in backend.list(layout.INDEX))[0])
    before = {o.key: backend.get(o.key) for o in backend.list()}
    ri = repair_index(open_repo(backend), read_data=True, dry_run=True)
    rs = repair_snapshots(open_repo(backend), forget=True, dry_run=True)
    assert {o.key: backend.get(o.key) for o in backend.list()} == before
    assert ri.dry_run and ri.packs_indexed > 0
    assert rs.dry_run and rs.repaired and all(r.new is None for r in rs.repaired)


def test_repair_index_waits_for_no_one_but_refuses_beside_a_prune(tmp_path):
    backend, _ = build(tmp_path, 15)
    repo = open_repo(backend)
    lock = ExclusiveLock(repo, operation="prune")
    lock.acquire()
    try:
        with pytest.raises(RepositoryLocked, match="prune"):
            repair_index(open_repo(backend))
    finally:
        lock.release()
    assert repair_index(open_repo(backend)).complete


def test_lost_root_tree_becomes_an_empty_damaged_snapshot(tmp_path):
    backend, orig = build(tmp_path, 16)
    repo = open_repo(backend)
    snap_id = sorted(orig.roots)[0]
    root = orig.roots[snap_id]
    loc = repo.lookup(BlobType.TREE, root)
    assert loc is not None
    backend.delete(layout.pack(loc.pack_hex))
    repair_index(open_repo(backend))
    r = repair_snapshots(open_repo(backend), forget=True)
    rep = {x.original: x for x in r.repaired}
    assert rep[snap_id].lost == ["/ (the root directory)"]
    fresh = open_repo(backend)
    new = load_snapshot(fresh, rep[snap_id].new or "")
    assert new.damaged and list(walk_tree(fresh, new.tree)) == []
    assert check_repository(fresh, read_all_data=True).ok
