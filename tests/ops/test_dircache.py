"""The directory cache: a backup skips the parent trees of unchanged directories,
and the trees it saves are exactly those of a backup without the cache."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resurgo.backend.memory import MemoryBackend
from resurgo.ops import backup as backup_mod
from resurgo.ops import dircache
from resurgo.ops.backup import BackupOptions, backup_paths
from resurgo.ops.check import check_repository
from resurgo.ops.excludes import Excluder
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.snapshot import dirscan
from resurgo.snapshot.store import find_snapshot, list_snapshots, walk_tree
from resurgo.testing.environment import unavailable

PW = "pw"


def make_repo(cache: Path) -> Repository:
    return Repository.init(MemoryBackend(), PW, params=RepoParams.tiny_for_tests(),
                           kdf=KDFParams.weak_for_tests(), cache_dir=cache)


def without_cache(repo: Repository) -> Repository:
    """The same repository (same keys, same blob IDs), opened with no local state."""
    return Repository.open(repo.backend, PW)


def populate(src: Path, seed: int, dirs: int = 6, files: int = 4) -> None:
    rnd = random.Random(seed)
    for d in range(dirs):
        sub = src / f"d{d}" / f"e{d % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (sub / f"f{f}.txt").write_bytes(rnd.randbytes(rnd.randrange(0, 3000)))
        (src / f"d{d}" / "top.txt").write_bytes(b"top %d" % d)
    (src / "link").symlink_to("d0/top.txt")
    settle_link(src / "link")


def settle_link(link: Path) -> None:
    """Reading a symlink sets its atime (relatime: while it is not after the
    mtime and ctime, and once a day), which its node records: an atime in the
    future makes it stay, so that only a test's own changes differ between
    backups."""
    now = time.time_ns()
    os.utime(link, ns=(now + 10**10, now - 10**9), follow_symlinks=False)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_repo(tmp_path / "cache")


def src_tree(repo: Repository, snapshot_id: str | None, src: Path) -> bytes | None:
    """The tree of ``src`` in a snapshot (the directories above it change as
    the tests run)."""
    assert snapshot_id is not None
    nodes = dict(walk_tree(repo, find_snapshot(repo, snapshot_id).tree))
    return nodes[os.fsencode(src).lstrip(b"/")].subtree


class TreeLoads:
    """Counts the parent trees the backup decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = backup_mod.load_tree

        def counted(repo, tree_id):  # type: ignore[no-untyped-def]
            self.count += 1
            return real(repo, tree_id)

        monkeypatch.setattr(backup_mod, "load_tree", counted)


def test_a_backup_with_no_change_decodes_no_tree_below_the_targets(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    populate(src, 1)
    first = backup_paths(repo, [src])
    loads = TreeLoads(monkeypatch)
    second = backup_paths(repo, [src])
    # Only the virtual root's trees above the target (tmp_path's components).
    assert loads.count == len(src.parts) - 1
    assert src_tree(repo, second.snapshot_id, src) == src_tree(repo, first.snapshot_id, src)
    assert (second.files_unchanged, second.files_new, second.files_changed) == (30, 0, 0)
    assert second.others == first.others == 1 and second.dirs == first.dirs
    assert second.bytes_total == first.bytes_total


def test_a_change_deep_down_rebuilds_its_ancestors_only(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    populate(src, 2)
    backup_paths(repo, [src])
    (src / "d3" / "e1" / "f2.txt").write_bytes(b"new content")
    loads = TreeLoads(monkeypatch)
    s = backup_paths(repo, [src])
    # d3 and src matched their signatures (the file's own directory did not):
    # their files' nodes come from their parent trees, e1 is compared with its.
    assert loads.count == len(src.parts) - 1 + 3
    assert (s.files_changed, s.files_unchanged, s.files_new) == (1, 29, 0)
    assert tree_without_cache(repo, src) == src_tree(repo, s.snapshot_id, src)


def test_listing_directories_between_backups_changes_no_tree(repo, tmp_path, monkeypatch):
    """Listing a directory moves its atime (under relatime, the first listing
    after a change): ``updatedb`` or an ``ls -R`` between backups must not make
    its tree, or its parents', differ; a directory's atime is not recorded."""
    src = tmp_path / "src"
    populate(src, 3)
    dirs = sorted(p for p in src.rglob("*") if p.is_dir())
    for d in dirs:
        st_ = d.stat()  # an atime before the mtime: the next listing moves it
        os.utime(d, ns=(st_.st_mtime_ns - 10**12, st_.st_mtime_ns))
    first = backup_paths(repo, [src])
    for d in dirs:
        os.listdir(d)
    moved = [d for d in dirs if d.stat().st_atime_ns > d.stat().st_mtime_ns - 10**12]
    if not moved:
        unavailable("the file system does not update atimes")
    assert moved == dirs
    loads = TreeLoads(monkeypatch)
    second = backup_paths(repo, [src])
    assert loads.count == len(src.parts) - 1  # every directory matched its signature
    assert src_tree(repo, second.snapshot_id, src) == src_tree(repo, first.snapshot_id, src)
    nodes = dict(walk_tree(repo, find_snapshot(repo, second.snapshot_id).tree))
    assert {nodes[os.fsencode(d).lstrip(b"/")].atime_ns for d in dirs} == {0}
    assert tree_without_cache(repo, src) == src_tree(repo, first.snapshot_id, src)


def tree_without_cache(repo: Repository, src: Path,
                       opts: BackupOptions | None = None) -> bytes | None:
    """The tree of ``src`` that a backup without the directory cache saves,
    with the same parent (and excludes) as the last backup."""
    excluder = opts.excluder if opts is not None else None
    other = without_cache(repo)
    last = backup_paths(other, [src],
                        BackupOptions(excluder=excluder, parent=latest_parent(repo, src)))
    # Read through the instance that saved it: the trees above src (/tmp...)
    # may have changed under parallel tests, and ``repo`` has not seen those.
    return src_tree(other, last.snapshot_id, src)


def latest_parent(repo: Repository, src: Path) -> str:
    snaps = [s for s in list_snapshots(repo) if s.paths == [str(src)]]
    parent = snaps[-1].parent
    assert parent is not None
    return parent


def mutate(src: Path, rnd: random.Random, op: str) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in src.rglob("*") if p.is_dir() and not p.is_symlink())
    if op == "edit" and files:
        rnd.choice(files).write_bytes(rnd.randbytes(rnd.randrange(0, 2000)))
    elif op == "append" and files:
        with rnd.choice(files).open("ab") as f:
            f.write(b"more")
    elif op == "touch" and files:
        t = rnd.randrange(1, 2_000_000_000)
        os.utime(rnd.choice(files), ns=(t, t))
    elif op == "chmod" and files:
        rnd.choice(files).chmod(rnd.choice([0o600, 0o640, 0o755]))
    elif op == "delete" and files:
        rnd.choice(files).unlink()
    elif op == "add" and dirs:
        (rnd.choice(dirs) / f"n{rnd.randrange(10**6)}").write_bytes(rnd.randbytes(100))
    elif op == "mkdir" and dirs:
        (rnd.choice(dirs) / f"m{rnd.randrange(10**6)}").mkdir(exist_ok=True)
    elif op == "rmtree" and dirs:
        shutil.rmtree(rnd.choice(dirs))
    elif op == "rename" and files:
        f = rnd.choice(files)
        f.rename(f.with_name(f.name + ".r"))
    elif op == "relink":
        link = src / "link"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(f"target{rnd.randrange(100)}")
        settle_link(link)
    elif op == "hardlink" and files:
        f = rnd.choice(files)
        os.link(f, f.with_name(f"h{rnd.randrange(10**6)}"))


OPS = ["edit", "append", "touch", "chmod", "delete", "add", "mkdir", "rmtree", "rename",
       "relink", "hardlink"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6),
       rounds=st.lists(st.lists(st.sampled_from(OPS), max_size=4), min_size=1, max_size=3))
def test_trees_with_the_cache_are_the_trees_without_it(seed, rounds):
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        populate(src, seed, dirs=4, files=3)
        repo = make_repo(Path(tmp) / "cache")
        backup_paths(repo, [src])
        for ops in rounds:
            for op in ops:
                mutate(src, rnd, op)
            s = backup_paths(repo, [src])
            assert not s.warnings
            assert src_tree(repo, s.snapshot_id, src) == tree_without_cache(repo, src)
        assert check_repository(repo, read_all_data=True).ok


def test_a_directory_with_a_warning_is_compared_with_its_parent_next_time(repo, tmp_path,
                                                                          monkeypatch, deny_open):
    src = tmp_path / "src"
    populate(src, 3)
    deny_open(b"/d1/e1/f0.txt")
    first = backup_paths(repo, [src])
    assert len(first.warnings) == 1
    monkeypatch.undo()  # readable again
    loads = TreeLoads(monkeypatch)
    second = backup_paths(repo, [src])
    # The file left out is read now, with nothing changed on disk: its
    # directory had no signature, so it was compared with its parent tree;
    # its tree changed, so its two ancestors take their files' nodes from theirs.
    assert not second.warnings and second.files_new == 1 and second.files_unchanged == 29
    assert loads.count == len(src.parts) - 1 + 3
    third = backup_paths(repo, [src])
    assert third.files_unchanged == 30
    assert src_tree(repo, third.snapshot_id, src) == src_tree(repo, second.snapshot_id, src)


def test_an_unreadable_parent_tree_after_a_match_rereads_the_files(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    populate(src, 4)
    backup_paths(repo, [src])
    expected_files = 30
    (src / "d2" / "e0" / "f1.txt").write_bytes(b"changed")
    real = backup_mod.load_tree

    def broken(repo_: Repository, tree_id: bytes):  # type: ignore[no-untyped-def]
        nodes = real(repo_, tree_id)
        if any(n.name == b"top.txt" for n in nodes):  # the tree of d2 (d0..d5 alike)
            raise OSError("damaged pack")
        return nodes

    monkeypatch.setattr(backup_mod, "load_tree", broken)
    s = backup_paths(repo, [src])
    assert s.files_total == expected_files and s.files_changed == 1
    assert s.files_new == 1  # d2/top.txt, read again since its parent tree failed
    monkeypatch.setattr(backup_mod, "load_tree", real)
    assert src_tree(repo, s.snapshot_id, src) == tree_without_cache(repo, src)


def test_a_cache_dir_becoming_valid_or_invalid_changes_the_tree(repo, tmp_path):
    src = tmp_path / "src"
    populate(src, 5)
    tag = src / "d4" / "CACHEDIR.TAG"
    tag.write_bytes(b"not a valid tag\n")
    opts = BackupOptions(excluder=Excluder(exclude_caches=True))
    backup_paths(repo, [src], opts)
    # Valid now: d4 is left out, though nothing changed in its parent directory.
    tag.write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    s = backup_paths(repo, [src], opts)
    assert s.files_total == 30 - 5
    assert src_tree(repo, s.snapshot_id, src) == tree_without_cache(repo, src, opts)
    tag.write_bytes(b"invalid again\n")
    s = backup_paths(repo, [src], opts)
    assert s.files_total == 31
    assert src_tree(repo, s.snapshot_id, src) == tree_without_cache(repo, src, opts)


def cache_file(repo: Repository) -> Path:
    root = repo._cache_dir
    assert root is not None
    (found,) = root.glob("dirs-*")
    return found


def test_the_cache_is_ignored_for_another_parent_other_excludes_or_a_removed_index(
        repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    populate(src, 6)
    first = backup_paths(repo, [src])
    backup_paths(repo, [src])
    loads = TreeLoads(monkeypatch)
    base = len(src.parts) - 1
    # Another parent than the one the cache was written for.
    backup_paths(repo, [src], BackupOptions(parent=first.snapshot_id))
    assert loads.count > base
    backup_paths(repo, [src])  # writes the cache for the latest again
    loads.count = 0
    backup_paths(repo, [src], BackupOptions(excluder=Excluder(exclude=["*.nomatch"])))
    assert loads.count > base
    loads.count = 0
    backup_paths(repo, [src])  # the cache was for the excludes
    assert loads.count > base
    loads.count = 0
    backup_paths(repo, [src])
    assert loads.count == base
    # An index object the cache recorded leaves (as prune or repair do).
    gone = sorted(repo.index_ids)[0]
    repo.index_ids.discard(gone)
    loads.count = 0
    backup_paths(repo, [src])
    assert loads.count > base


@pytest.mark.parametrize("damage", ["flip", "truncate", "rename"])
def test_a_damaged_or_misplaced_cache_is_ignored(repo, tmp_path, monkeypatch, damage):
    src = tmp_path / "src"
    populate(src, 7)
    backup_paths(repo, [src])
    path = cache_file(repo)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-10]))
    else:
        # The cache of other paths, put in this one's place: sealed for its name.
        other = tmp_path / "other"
        populate(other, 8)
        backup_paths(repo, [other])
        other_file = next(p for p in path.parent.glob("dirs-*") if p != path)
        shutil.copyfile(other_file, path)
    loads = TreeLoads(monkeypatch)
    s = backup_paths(repo, [src])
    assert loads.count > len(src.parts) - 1 and s.files_unchanged == 30
    assert src_tree(repo, s.snapshot_id, src) == tree_without_cache(repo, src)


def test_no_cache_is_kept_without_a_cache_directory(tmp_path, monkeypatch):
    repo = Repository.init(MemoryBackend(), PW, params=RepoParams.tiny_for_tests(),
                           kdf=KDFParams.weak_for_tests())
    src = tmp_path / "src"
    populate(src, 9)
    backup_paths(repo, [src])
    loads = TreeLoads(monkeypatch)
    assert backup_paths(repo, [src]).files_unchanged == 30
    assert loads.count > len(src.parts) - 1


# --- the format and the signature ---------------------------------------------------------


def test_encode_decode_round_trip_and_refusals():
    dirs = {b"/a": (bytes(range(32)), bytes(32)), b"/a/\xff b": (bytes(32), None), b"": (b"x" * 32, b"y" * 32)}
    ids = {"ab" * 32, "cd" * 32}
    plain = dircache.encode("snap", "opts", ids, dirs)
    got = dircache.decode(plain, "snap", "opts", ids | {"ef" * 32})
    assert got is not None and got.dirs == dirs
    assert got.signature(b"/a", bytes(range(32))) == bytes(32)
    assert got.signature(b"/a", bytes(32)) is None  # another tree there now
    assert got.tree(b"/a/\xff b") == bytes(32) and got.tree(b"/nope") is None
    assert dircache.decode(plain, "other", "opts", ids) is None
    assert dircache.decode(plain, "snap", "other", ids) is None
    assert dircache.decode(plain, "snap", "opts", {"ab" * 32}) is None
    assert dircache.decode(plain[:-3], "snap", "opts", ids) is None


_FIELDS = ["st_mode", "st_ino", "st_dev", "st_size", "st_mtime_ns", "st_atime_ns",
           "st_ctime_ns", "st_uid", "st_gid", "st_nlink", "st_rdev"]


class FakeStat:
    def __init__(self, **values: int) -> None:
        for k in _FIELDS:
            setattr(self, k, values.get(k, 1))


@given(field=st.sampled_from(_FIELDS), value=st.integers(2, 2**31))
def test_every_lstat_field_and_the_name_change_the_signature(field, value):
    def sig(name: bytes, **kw: int) -> bytes:
        s = FakeStat(**kw)
        return dircache.signature([dircache.entry_row(name, s)], {(s.st_uid, s.st_gid)})  # type: ignore[arg-type]

    assert sig(b"a") == sig(b"a")
    assert sig(b"a", **{field: value}) != sig(b"a")
    assert sig(b"b") != sig(b"a")
    # Names are length-prefixed: two entries cannot pass for one.
    two = dircache.signature([dircache.entry_row(b"a", FakeStat()), dircache.entry_row(b"b", FakeStat())], {(1, 1)})  # type: ignore[arg-type]
    assert two != sig(b"ab")


@given(names=st.lists(st.binary(min_size=1, max_size=300), max_size=60),
       owners=st.sets(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=3))
def test_the_signature_is_the_same_with_and_without_the_native_hash(native_seal, names, owners):
    from resurgo.repo import batch

    rows = [dircache.entry_row(n, FakeStat(st_ino=i)) for i, n in enumerate(names)]  # type: ignore[arg-type]
    native = dircache.signature(rows, owners)
    saved, batch.digest = batch.digest, None
    try:
        assert dircache.signature(rows, owners) == native
    finally:
        batch.digest = saved


@pytest.mark.parametrize("mtime_ns", [2**63 + 5, 13_600_000_000 * 10**9, -(2**63) - 1])
def test_a_time_beyond_64_bits_still_gets_a_signature_of_its_own(mtime_ns):
    far = FakeStat(st_mtime_ns=mtime_ns)
    near = FakeStat(st_mtime_ns=mtime_ns - 1)
    rows = [dircache.entry_row(b"a", far)]  # type: ignore[arg-type]
    assert dircache.signature(rows, {(1, 1)}) != dircache.signature(
        [dircache.entry_row(b"a", near)], {(1, 1)})  # type: ignore[arg-type]
    assert dircache.signature(rows, {(1, 1)}) != dircache.signature(
        [dircache.entry_row(b"a", FakeStat())], {(1, 1)})  # type: ignore[arg-type]


def test_a_file_dated_past_2262_is_backed_up_and_found_unchanged(repo, tmp_path):
    src = tmp_path / "src"
    populate(src, 10)
    far = src / "d0" / "far.txt"
    far.write_bytes(b"from the future")
    t = 13_600_000_000 * 10**9  # 2400-12-29
    try:
        os.utime(far, ns=(t, t))
    except (OSError, OverflowError) as e:
        pytest.fail(f"this file system cannot store a time past 2262: {e}")
    assert far.stat().st_mtime_ns == t
    backup_paths(repo, [src])
    s = backup_paths(repo, [src])
    assert s.files_unchanged == 31 and not s.warnings
    assert tree_without_cache(repo, src) == src_tree(repo, s.snapshot_id, src)


def test_signatures_of_the_native_and_the_python_listing_agree(repo, tmp_path, monkeypatch,
                                                             scan):
    """A cache written by one listing is matched by the other, and both save
    the same trees (snapshot/_dirscan.c against os.scandir + lstat)."""
    src = tmp_path / "src"
    populate(src, 7)
    native = backup_paths(repo, [src])
    monkeypatch.setattr(dirscan, "scan", None)
    loads = TreeLoads(monkeypatch)
    python = backup_paths(repo, [src])
    assert loads.count == len(src.parts) - 1  # every directory matched the native signatures
    assert src_tree(repo, python.snapshot_id, src) == src_tree(repo, native.snapshot_id, src)
    (src / "d2" / "e0" / "f1.txt").write_bytes(b"changed")
    (src / "d5" / "new").mkdir()
    monkeypatch.undo()
    loads = TreeLoads(monkeypatch)
    again = backup_paths(repo, [src])
    assert loads.count == len(src.parts) - 1 + 4  # the two changed directories and their parents
    assert src_tree(repo, again.snapshot_id, src) == tree_without_cache(repo, src)


def test_a_directory_the_native_listing_leaves_to_python_is_listed_in_python(repo, tmp_path,
                                                                            monkeypatch, scan):
    src = tmp_path / "src"
    populate(src, 8)
    native = scan
    deferred: list[bytes] = []

    def defer_d3(path: bytes):  # type: ignore[no-untyped-def]
        found = native(path)
        if found is not None and b"e1" in [name for name, _, _ in found]:
            deferred.append(path)
            return None
        return found

    monkeypatch.setattr(dirscan, "scan", defer_d3)
    first = backup_paths(repo, [src])
    assert sorted(deferred) == sorted(os.fsencode(src / f"d{d}") for d in (1, 3, 5))
    assert first.files_new == 30
    monkeypatch.setattr(dirscan, "scan", None)
    fresh = without_cache(repo)
    python = backup_paths(fresh, [src], BackupOptions(force=True))  # every file read again
    assert src_tree(fresh, python.snapshot_id, src) == src_tree(repo, first.snapshot_id, src)


def test_with_the_cache_valid_the_parents_blobs_are_not_looked_up_again(repo, tmp_path, monkeypatch):
    """The cache holds only while no index object of the parent's backup left
    the index, so the content of an unchanged file in a changed directory is
    reused without asking the index about each of its blobs; without the cache
    each one is asked."""
    src = tmp_path / "src"
    populate(src, 9)
    backup_paths(repo, [src])
    asked: list[bytes] = []
    real_has = repo.has_blob

    def counted(t: int, b: bytes) -> bool:
        if t == BlobType.DATA:
            asked.append(b)
        return real_has(t, b)

    monkeypatch.setattr(repo, "has_blob", counted)
    (src / "d1" / "e1" / "f0.txt").write_bytes(b"edited")
    s = backup_paths(repo, [src])
    assert (s.files_changed, s.files_unchanged) == (1, 29)
    assert asked == []
    (src / "d1" / "e1" / "f0.txt").write_bytes(b"edited again")
    cache_file(repo).unlink()
    s = backup_paths(repo, [src])
    assert (s.files_changed, s.files_unchanged) == (1, 29)
    assert len(asked) >= 3  # the directory's other files' blobs (empty files have none)
