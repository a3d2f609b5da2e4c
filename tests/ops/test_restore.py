"""The restore pipeline and dump, driven through their engine API on real files."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from resurgo.backend import Backend, layout
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import Interrupted, RestoreError, UsageError
from resurgo.ops import restore as restore_mod
from resurgo.ops.backup import backup_paths
from resurgo.ops.dump import dump_file
from resurgo.ops.restore import (
    RestoreIntegrityError,
    UnsafeTree,
    restore_snapshot,
    tmp_name,
    verify_restore,
)
from resurgo.progress import RecordingReporter
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.snapshot import newfiles
from resurgo.snapshot.model import Node, NodeType, Snapshot
from resurgo.snapshot.store import find_snapshot, save_snapshot, walk_tree
from resurgo.testing.environment import as_root
from resurgo.testing.forwarding import ForwardingBackend


class CountingBackend(ForwardingBackend):
    """Counts gets per key; everything else passes through."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.gets[key] += 1
        return self.inner.get(key, offset, length)


def new_repo(backend: Backend | None = None) -> Repository:
    return Repository.init(
        backend if backend is not None else MemoryBackend(), "pw",
        params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests(),
    )


@pytest.fixture
def repo() -> Repository:
    return new_repo()


def rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def backup(repo: Repository, src: Path) -> Snapshot:
    s = backup_paths(repo, [src])
    assert not s.warnings, s.warnings
    return find_snapshot(repo, s.snapshot_id or "")


def sub(src: Path) -> bytes:
    return os.fsencode(src)


def files_under(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every regular file (temp files included, to catch leftovers)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def everything_under(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            out.add(str((Path(dirpath) / n).relative_to(root)))
    return out


def make_small_files(src: Path, n: int, size: int = 1500) -> dict[str, bytes]:
    src.mkdir(parents=True, exist_ok=True)
    data = {}
    for i in range(n):
        d = src / f"d{i % 5}"
        d.mkdir(exist_ok=True)
        content = rand(size + i, i)
        (d / f"f{i}").write_bytes(content)
        data[f"d{i % 5}/f{i}"] = content
    return data


# --- round trip --------------------------------------------------------------------------


def test_restore_round_trips_content_and_metadata(repo, tmp_path):
    src = tmp_path / "src"
    (src / "dir" / "empty").mkdir(parents=True)
    (src / "dir" / "f").write_bytes(rand(50_000, 1))
    (src / "empty-file").write_bytes(b"")
    (src / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "exec", 0o4755)
    os.symlink("dir/f", src / "link")
    os.setxattr(src / "dir" / "f", b"user.note", b"hello")
    os.utime(src / "dir" / "f", ns=(1_000_000_001, 2_000_000_002))
    os.utime(src / "dir", ns=(3_000_000_003, 4_000_000_004))
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    st = os.stat(dst / "dir" / "f")  # before reading it changes the atime
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    assert files_under(dst) == files_under(src)
    assert s.files_restored == 3 and s.files_skipped == 0 and not s.warnings
    assert s.bytes_restored == 50_000 + len(b"#!/bin/sh\n")
    assert stat.S_IMODE(os.stat(dst / "exec").st_mode) == 0o4755
    assert os.readlink(dst / "link") == "dir/f"
    assert os.getxattr(dst / "dir" / "f", b"user.note") == b"hello"
    # The directory's times are set after its contents were written.
    assert os.stat(dst / "dir").st_mtime_ns == 4_000_000_004
    assert (dst / "dir" / "empty").is_dir() and not any((dst / "dir" / "empty").iterdir())


def test_restore_of_a_file_path_puts_it_in_the_target(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "one").write_bytes(b"the one")
    (src / "two").write_bytes(b"the other")
    snap = backup(repo, src)
    s = restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src / "one"))
    assert files_under(tmp_path / "dst") == {"one": b"the one"}
    assert s.files_restored == 1


# --- reads grouped per pack ---------------------------------------------------------------


def test_each_pack_is_fetched_once_for_a_fresh_restore_of_many_small_files(tmp_path):
    backend = CountingBackend(MemoryBackend())
    repo = new_repo(backend)
    src = tmp_path / "src"
    data = make_small_files(src, 120, size=4000)
    snap = backup(repo, src)
    data_packs = set()
    from resurgo.snapshot.store import walk_tree

    for _p, node in walk_tree(repo, snap.tree):
        for bid in node.content:
            loc = repo.lookup(BlobType.DATA, bid)
            assert loc is not None
            data_packs.add(layout.pack(loc.pack_hex))
    assert len(data_packs) > 3  # tiny packs: the data really spans many packs
    backend.gets.clear()
    s = restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src))
    assert files_under(tmp_path / "dst") == data
    assert {k: backend.gets[k] for k in data_packs} == dict.fromkeys(data_packs, 1)
    assert s.packs_read == len(data_packs)


def test_a_blob_used_by_many_files_is_fetched_once_and_written_everywhere(tmp_path):
    backend = CountingBackend(MemoryBackend())
    repo = new_repo(backend)
    src = tmp_path / "src"
    src.mkdir()
    same = rand(200, 7)  # below the minimum chunk (256 B in tests): one blob
    for i in range(30):
        (src / f"copy{i}").write_bytes(same)
    snap = backup(repo, src)
    backend.gets.clear()
    s = restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src))
    assert files_under(tmp_path / "dst") == {f"copy{i}": same for i in range(30)}
    loc = repo.lookup(BlobType.DATA, repo.blob_id(same))
    assert loc is not None
    assert backend.gets[layout.pack(loc.pack_hex)] == 1
    assert s.packs_read == 1 and s.bytes_restored == 30 * 200


# --- hostile trees ---------------------------------------------------------------------------


def hostile_snapshot(repo: Repository, raw_nodes: list[dict], *, nest: bool = False) -> Snapshot:
    """A snapshot whose tree is written by hand, bypassing every encoder check."""
    blob = repo.save_blob(BlobType.DATA, b"pwned")[0].hex()
    for n in raw_nodes:
        if n.get("type") == "file":
            n.setdefault("content", [blob])
            n.setdefault("size", 5)
    tree = repo.save_blob(BlobType.TREE, json.dumps({"v": 1, "nodes": raw_nodes}).encode())[0]
    if nest:
        outer = {"v": 1, "nodes": [
            {"name": "ok", "type": "file", "size": 5, "content": [blob]},
            {"name": "sub", "type": "dir", "mode": 0o755, "subtree": tree.hex()},
        ]}
        tree = repo.save_blob(BlobType.TREE, json.dumps(outer).encode())[0]
    repo.flush()
    snap = Snapshot(time_ns=time.time_ns(), tree=tree, paths=["/x"])
    save_snapshot(repo, snap)
    return snap


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "x\x00y", "../../escape", "/abs"])
@pytest.mark.parametrize("nest", [False, True])
def test_hostile_names_are_refused_and_nothing_is_written(repo, tmp_path, name, nest):
    snap = hostile_snapshot(repo, [{"name": name, "type": "file"}], nest=nest)
    box = tmp_path / "box"
    dst = box / "a" / "target"
    dst.mkdir(parents=True)
    before = everything_under(tmp_path)
    with pytest.raises(RestoreError) as info:
        restore_snapshot(repo, snap, dst, overwrite="always")
    assert isinstance(info.value, UnsafeTree)
    assert everything_under(tmp_path) == before
    assert "pwned" not in {p.read_bytes().decode(errors="replace")
                           for p in tmp_path.rglob("*") if p.is_file()}


def test_hostile_names_are_refused_even_if_the_tree_decoder_let_them_through(
        repo, tmp_path, monkeypatch):
    good = hostile_snapshot(repo, [{"name": "fine", "type": "file"}])
    real = restore_mod.load_tree

    def sneaky(r, tree_id):
        nodes = real(r, tree_id)
        nodes.append(Node(name=b"..", type=NodeType.FILE, size=5, content=nodes[0].content))
        return nodes

    monkeypatch.setattr(restore_mod, "load_tree", sneaky)
    dst = tmp_path / "dst"
    with pytest.raises(UnsafeTree, match="hostile entry"):
        restore_snapshot(repo, good, dst)
    assert not dst.exists() or not any(dst.iterdir())


def test_a_preexisting_symlink_in_the_target_is_never_followed(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0")
    (outside / "victim").write_bytes(b"precious")
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "passwd").write_bytes(b"evil")
    (src / "f").write_bytes(b"new content")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "a")  # a directory in the snapshot, a symlink out here
    os.symlink(outside / "victim", dst / "f")  # a file in the snapshot
    os.symlink(outside / "victim", dst / tmp_name(b"f").decode())  # a planted temp name

    s = restore_snapshot(repo, snap, dst, subpath=sub(src))  # never
    assert s.conflicts == 2 and len(s.warnings) == 2
    assert os.path.islink(dst / "a") and os.path.islink(dst / "f")
    assert (outside / "passwd").read_bytes() == b"root:x:0:0"
    assert (outside / "victim").read_bytes() == b"precious"

    s = restore_snapshot(repo, snap, dst, subpath=sub(src), overwrite="always")
    assert not os.path.islink(dst / "a") and (dst / "a" / "passwd").read_bytes() == b"evil"
    assert not os.path.islink(dst / "f") and (dst / "f").read_bytes() == b"new content"
    assert (outside / "passwd").read_bytes() == b"root:x:0:0"
    assert (outside / "victim").read_bytes() == b"precious"
    assert sorted(os.listdir(outside)) == ["passwd", "victim"]
    assert not any(n.startswith(".resurgo-tmp-") for n in os.listdir(dst))


# --- resume -----------------------------------------------------------------------------------


def test_an_interrupted_restore_resumes_and_skips_completed_files(repo, tmp_path):
    src = tmp_path / "src"
    data = make_small_files(src, 40, size=3000)
    snap = backup(repo, src)
    dst = tmp_path / "dst"

    def done_files() -> int:
        return sum(1 for p in dst.rglob("f*") if p.is_file())

    with pytest.raises(Interrupted):
        restore_snapshot(repo, snap, dst, subpath=sub(src), threads=1,
                         should_stop=lambda: dst.exists() and done_files() >= 8)
    first = done_files()
    assert 8 <= first < 40
    # Whatever is under a real name is complete; the rest is still in temp files.
    for rel, content in files_under(dst).items():
        if not Path(rel).name.startswith(".resurgo-tmp-"):
            assert content == data[rel]
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), verify=True)
    assert files_under(dst) == data  # complete, and no temp files left
    assert s.files_skipped == first
    assert s.files_restored == 40 - first
    assert s.files_verified == 40
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert s.files_skipped == 40 and s.files_restored == 0 and s.packs_read == 0


def test_a_half_written_temp_file_keeps_its_good_chunks(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = rand(400_000, 3)  # many chunks, several packs
    (src / "big").write_bytes(big)
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    half = bytearray(big)
    half[200_000:] = bytes(200_000)  # the first half arrived before the interruption
    (dst / tmp_name(b"big").decode()).write_bytes(half)
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert (dst / "big").read_bytes() == big
    assert s.bytes_skipped > 150_000
    assert s.bytes_restored < 250_000
    assert s.bytes_skipped + s.bytes_restored == len(big)
    assert os.listdir(dst) == ["big"]


# --- overwrite modes ----------------------------------------------------------------------------


@pytest.fixture
def conflict_setup(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "same").write_bytes(b"same content")
    (src / "changed").write_bytes(b"snapshot version")
    (src / "meta").write_bytes(b"only metadata differs")
    (src / "dir-in-way").write_bytes(b"a file in the snapshot")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    restore_snapshot(repo, snap, dst, subpath=sub(src))
    (dst / "changed").write_bytes(b"local edit")
    os.chmod(dst / "meta", 0o600)
    os.utime(dst / "meta", ns=(5, 5))
    os.unlink(dst / "dir-in-way")
    (dst / "dir-in-way").mkdir()
    (dst / "dir-in-way" / "keep").write_bytes(b"local")
    return snap, src, dst


def test_overwrite_never_leaves_differing_entries_untouched_and_warns(repo, conflict_setup):
    snap, src, dst = conflict_setup
    meta_ino = os.stat(dst / "meta").st_ino
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert s.conflicts == 3 and s.files_skipped == 1
    assert {w["path"].rsplit("/", 1)[-1] for w in s.warnings} == {"changed", "meta", "dir-in-way"}
    assert (dst / "changed").read_bytes() == b"local edit"
    assert stat.S_IMODE(os.stat(dst / "meta").st_mode) == 0o600
    assert os.stat(dst / "meta").st_ino == meta_ino
    assert (dst / "dir-in-way" / "keep").read_bytes() == b"local"


def test_overwrite_if_changed_replaces_differing_files_but_not_directories(repo, conflict_setup):
    snap, src, dst = conflict_setup
    same_ino = os.stat(dst / "same").st_ino
    meta_ino = os.stat(dst / "meta").st_ino
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), overwrite="if-changed")
    assert (dst / "changed").read_bytes() == b"snapshot version"
    assert os.stat(dst / "same").st_ino == same_ino  # identical: untouched
    assert os.stat(dst / "meta").st_ino == meta_ino  # metadata fixed in place
    assert stat.S_IMODE(os.stat(dst / "meta").st_mode) == stat.S_IMODE(os.stat(src / "meta").st_mode)
    assert os.stat(dst / "meta").st_mtime_ns == os.stat(src / "meta").st_mtime_ns
    assert (dst / "dir-in-way" / "keep").read_bytes() == b"local"
    assert s.files_restored == 1 and s.metadata_updated == 1 and s.files_skipped == 1
    assert s.conflicts == 1


def test_overwrite_always_also_replaces_a_directory_in_the_way(repo, conflict_setup):
    snap, src, dst = conflict_setup
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), overwrite="always")
    assert files_under(dst) == files_under(src)
    assert s.conflicts == 0 and not s.warnings and s.files_skipped == 1


def test_unknown_overwrite_mode_is_a_usage_error(repo, tmp_path):
    snap = hostile_snapshot(repo, [{"name": "f", "type": "file"}])
    with pytest.raises(UsageError):
        restore_snapshot(repo, snap, tmp_path / "dst", overwrite="sometimes")


def test_a_target_that_is_a_file_is_refused(repo, tmp_path):
    snap = hostile_snapshot(repo, [{"name": "f", "type": "file"}])
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(RestoreError, match="not a directory"):
        restore_snapshot(repo, snap, tmp_path / "file")


# --- verify and damage -----------------------------------------------------------------------


def test_verify_detects_a_file_modified_before_verification(repo, tmp_path):
    src = tmp_path / "src"
    data = make_small_files(src, 6)
    snap = backup(repo, src)
    dst = tmp_path / "dst"

    class Saboteur(RecordingReporter):
        def event(self, kind, /, **fields):
            super().event(kind, **fields)
            if kind == "verify":
                with open(dst / "d1" / "f1", "r+b") as f:
                    f.write(b"X")

    with pytest.raises(RestoreIntegrityError) as info:
        restore_snapshot(repo, snap, dst, subpath=sub(src), verify=True, reporter=Saboteur())
    assert info.value.paths == [str(dst / "d1" / "f1")]
    assert info.value.exit_code == 4
    assert info.value.summary.files_verified == 5
    # verify_restore checks an existing tree without writing.
    with pytest.raises(RestoreIntegrityError, match="1 file"):
        verify_restore(repo, snap, dst, subpath=sub(src))
    (dst / "d1" / "f1").write_bytes(data["d1/f1"])
    assert verify_restore(repo, snap, dst, subpath=sub(src)).files_verified == 6
    os.truncate(dst / "d2" / "f2", 10)
    with pytest.raises(RestoreIntegrityError):
        verify_restore(repo, snap, dst, subpath=sub(src))


def test_damaged_data_is_reported_and_everything_else_is_restored(tmp_path):
    backend = MemoryBackend()
    repo = new_repo(backend)
    src = tmp_path / "src"
    data = make_small_files(src, 60)
    snap = backup(repo, src)
    # Corrupt one data pack: the files with a blob in it cannot be restored.
    from resurgo.snapshot.store import walk_tree

    victim = next(n for _p, n in walk_tree(repo, snap.tree) if n.content)
    loc = repo.lookup(BlobType.DATA, victim.content[0])
    assert loc is not None
    key = layout.pack(loc.pack_hex)
    raw = bytearray(backend.get(key))
    raw[loc.offset + 20] ^= 0xFF
    backend.put(key, bytes(raw))
    dst = tmp_path / "dst"
    with pytest.raises(RestoreIntegrityError) as info:
        restore_snapshot(repo, snap, dst, subpath=sub(src))
    s = info.value.summary
    assert s.damaged and len(info.value.paths) == len(s.damaged)
    bad = {p.split(str(dst) + "/", 1)[1] for p in info.value.paths}
    restored = files_under(dst)
    assert set(restored) == set(data) - bad  # no temp files and no partial files left
    assert all(restored[k] == data[k] for k in restored)


# --- file kinds ---------------------------------------------------------------------------------


def test_sparse_files_keep_their_holes(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"middle")
        f.seek((64 << 20) - 5)
        f.write(b"tail!")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), verify=True)
    st = os.stat(dst / "sparse")
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 <= 64 << 10
    with open(dst / "sparse", "rb") as f:
        f.seek(10 << 20)
        assert f.read(6) == b"middle"
        f.seek((64 << 20) - 5)
        assert f.read() == b"tail!"
        f.seek(0)
        assert f.read(1 << 20) == bytes(1 << 20)
    assert s.bytes_restored <= 16 << 10  # the two data blocks, not the holes


def test_hard_links_come_back_as_links(repo, tmp_path):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "a").write_bytes(b"linked")
    os.link(src / "a", src / "x" / "b")
    os.link(src / "a", src / "c")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), verify=True)
    inos = {os.stat(dst / p).st_ino for p in ("a", "x/b", "c")}
    assert len(inos) == 1 and os.stat(dst / "a").st_nlink == 3
    assert (dst / "x" / "b").read_bytes() == b"linked"
    assert s.files_restored == 1 and s.others_restored == 2
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert s.files_skipped == 3 and s.others_restored == 0


def test_hard_links_outside_the_selection_are_restored_as_files(repo, tmp_path):
    src = tmp_path / "src"
    (src / "in").mkdir(parents=True)
    (src / "out").mkdir()
    (src / "out" / "a").write_bytes(b"linked")
    os.link(src / "out" / "a", src / "in" / "b")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    restore_snapshot(repo, snap, dst, subpath=sub(src), includes=["in/"])
    assert files_under(dst) == {"in/b": b"linked"}


def test_fifos_and_sockets_are_recreated(repo, tmp_path):
    import socket

    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo", 0o640)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(dst / "fifo").st_mode) == 0o640
    assert stat.S_ISSOCK(os.lstat(dst / "sock").st_mode)
    assert s.others_restored == 2


def test_device_nodes_are_only_restored_with_owner_and_warn_otherwise(repo, tmp_path):
    snap = hostile_snapshot(repo, [{"name": "null", "type": "chardev", "rdev": os.makedev(1, 3),
                                    "mode": 0o666}])
    s = restore_snapshot(repo, snap, tmp_path / "no", owner=False)
    assert not os.path.lexists(tmp_path / "no" / "null")
    assert len(s.warnings) == 1 and "device" in s.warnings[0]["error"]
    if os.geteuid() == 0:
        s = restore_snapshot(repo, snap, tmp_path / "yes")
        st = os.lstat(tmp_path / "yes" / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


# --- selection ----------------------------------------------------------------------------------


def test_include_restores_matching_entries_and_their_parents(repo, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "keep.txt").write_bytes(b"1")
    (src / "a" / "drop.bin").write_bytes(b"2")
    (src / "c").mkdir()
    (src / "c" / "also.txt").write_bytes(b"3")
    (src / "c" / "x.bin").write_bytes(b"4")
    os.utime(src / "a", ns=(7, 7_000_000_000))
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    restore_snapshot(repo, snap, dst, subpath=sub(src), includes=["*.txt"])
    assert files_under(dst) == {"a/b/keep.txt": b"1", "c/also.txt": b"3"}
    assert os.stat(dst / "a").st_mtime_ns == 7_000_000_000  # parents get their metadata
    dst2 = tmp_path / "dst2"
    restore_snapshot(repo, snap, dst2, subpath=sub(src), excludes=["*.bin", "/" + str(src)[1:] + "/c"])
    assert files_under(dst2) == {"a/b/keep.txt": b"1"}
    assert everything_under(dst2) == {"a", "a/b", "a/b/keep.txt"}


def test_include_of_a_directory_restores_everything_below_it(repo, tmp_path):
    src = tmp_path / "src"
    (src / "p" / "q").mkdir(parents=True)
    (src / "p" / "q" / "deep").write_bytes(b"d")
    (src / "p" / "top").write_bytes(b"t")
    (src / "other").write_bytes(b"o")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    restore_snapshot(repo, snap, dst, subpath=sub(src), includes=["p/"])
    assert files_under(dst) == {"p/q/deep": b"d", "p/top": b"t"}


# --- dump ---------------------------------------------------------------------------------------


def test_dump_writes_exact_bytes_with_holes_as_zeros(tmp_path):
    repo = new_repo(LocalBackend(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    big = rand(300_000, 9)
    (src / "big").write_bytes(big)
    with open(src / "sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"data")
    (src / "empty").write_bytes(b"")
    snap = backup(repo, src)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        assert dump_file(repo, snap, sub(src / "big"), f) == len(big)
    assert out.read_bytes() == big
    with open(out, "wb") as f:
        dump_file(repo, snap, sub(src / "sparse"), f)
    assert out.read_bytes() == (src / "sparse").read_bytes()
    with open(out, "wb") as f:
        assert dump_file(repo, snap, sub(src / "empty"), f) == 0
    with open(out, "wb") as f, pytest.raises(UsageError, match="is a directory"):
        dump_file(repo, snap, sub(src), f)


def test_overwrite_if_changed_replaces_a_file_standing_where_a_directory_belongs(repo, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "inner").write_bytes(b"inside")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "d").write_bytes(b"a file in the way")
    s = restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert s.conflicts == 1 and (dst / "d").read_bytes() == b"a file in the way"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), overwrite="if-changed")
    assert files_under(dst) == {"d/inner": b"inside"} and s.conflicts == 0


# --- how files are written ------------------------------------------------------------------------


def test_large_blobs_are_written_before_the_next_decode_and_small_ones_in_bounded_batches(
        tmp_path, monkeypatch):
    repo = new_repo()
    src = tmp_path / "src"
    src.mkdir()
    text = b"".join(b"line %d of the log, all alike\n" % i for i in range(8000))
    (src / "log").write_bytes(text)  # compressible: decodes to more than it stores
    (src / "rand").write_bytes(rand(150_000, 5))
    make_small_files(src / "small", 30, size=500)
    (src / "small" / "d0" / "copy").write_bytes((src / "small" / "d0" / "f0").read_bytes())
    snap = backup(repo, src)
    events: list[tuple[str, bytes, int]] = []
    real_open, real_open_many, real_write = repo.open_blob, repo.open_blobs, restore_mod._write_pieces

    def open_blob(loc, env):
        if loc.type == BlobType.DATA:
            events.append(("decode", loc.id, loc.raw_length))
        return real_open(loc, env)

    def open_blobs(view, start, locs):  # the small ones, natively (those it opens)
        plains = real_open_many(view, start, locs)
        events.extend(("decode", loc.id, loc.raw_length) for loc, plain in zip(locs, plains, strict=True)
                      if plain is not None and loc.type == BlobType.DATA)
        return plains

    def write_pieces(fd, chunk, plain):
        events.append(("write", chunk.blob_id, len(plain)))
        real_write(fd, chunk, plain)

    batch = 2000  # a few of the small files per batch
    real_many = restore_mod._Restore._write_new_many

    def write_new_many(self, fresh):  # small fresh files, natively: recorded as they are handed over
        events.extend(("write", chunk.blob_id, len(plain)) for _, chunk, plain in fresh)
        return real_many(self, fresh)

    monkeypatch.setattr(restore_mod._Restore, "_write_new_many", write_new_many)
    monkeypatch.setattr(repo, "open_blob", open_blob)
    monkeypatch.setattr(repo, "open_blobs", open_blobs)
    monkeypatch.setattr(restore_mod, "_write_pieces", write_pieces)
    monkeypatch.setattr(restore_mod, "_SMALL_BLOB", 1024)  # the small files, not the chunks
    monkeypatch.setattr(restore_mod, "_SMALL_BATCH", batch)
    restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src), threads=1)
    assert files_under(tmp_path / "dst") == files_under(src)
    # One thread: a large blob is written (once per file using it) before the
    # next blob is decoded; small ones wait to be written in batches of less
    # than _SMALL_BATCH bytes plus one blob.
    unwritten: dict[bytes, int] = {}
    largest_batch = 0
    for i, (what, bid, n) in enumerate(events):
        if what == "decode":
            if n >= 1024:
                assert events[i + 1][:2] == ("write", bid)
            else:
                unwritten[bid] = n
                largest_batch = max(largest_batch, sum(unwritten.values()))
        else:
            unwritten.pop(bid, None)
    assert not unwritten
    assert batch <= largest_batch < batch + 1024
    # Each blob is decoded once and written once per place that uses it: the
    # copy shares f0's blob, and tiny chunks of the log may repeat.
    refs = [b for _, n in walk_tree(repo, snap.tree) if n.type == NodeType.FILE for b in n.content]
    kinds = Counter(what for what, _, _ in events)
    assert kinds["decode"] == len(set(refs)) > 40
    assert kinds["write"] == len(refs) > len(set(refs))


def test_default_threads_are_two_for_a_local_repository_and_four_for_a_remote_one(tmp_path):
    from types import SimpleNamespace

    from resurgo.ops.restore import default_threads, is_remote

    local = new_repo(LocalBackend(tmp_path / "repo"))
    assert (is_remote(local), default_threads(local)) == (False, 2)
    for url, remote in [("s3://bucket/prefix?endpoint=http://x", True), ("sftp://me@host/r", True),
                        ("memory://", False), ("/srv/repo", False)]:
        repo = SimpleNamespace(backend=SimpleNamespace(url=url))
        assert (is_remote(repo), default_threads(repo)) == (remote, 4 if remote else 2), url  # type: ignore[arg-type]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_new_files_get_their_exact_modes_owners_and_times_whatever_the_umask(
        repo, tmp_path, umask):
    src = tmp_path / "src"
    src.mkdir()
    modes = {"rw-r--r--": 0o644, "group-w": 0o664, "private": 0o600, "none": 0o000,
             "setuid": 0o4755, "setgid": 0o2750, "sticky": 0o1644, "all": 0o777}
    for i, (name, mode) in enumerate(modes.items()):
        (src / name).write_bytes(name.encode() * 10)
        os.chmod(src / name, mode)
        os.utime(src / name, ns=(1_000_000_000 + i, 2_000_000_000 + i))
    if os.geteuid() == 0:
        os.chown(src / "group-w", 12345, 54321)
        os.chown(src / "setuid", 12345, 0)
        os.chmod(src / "setuid", 0o4755)  # chown cleared it
    snap = backup(repo, src)
    old = os.umask(umask)
    try:
        restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src))
    finally:
        os.umask(old)
    for name in modes:
        a, b = os.lstat(src / name), os.lstat(tmp_path / "dst" / name)
        assert (stat.S_IMODE(b.st_mode), b.st_uid, b.st_gid, b.st_atime_ns, b.st_mtime_ns) == (
            stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid, a.st_atime_ns, a.st_mtime_ns), name
        assert (tmp_path / "dst" / name).read_bytes() == name.encode() * 10


def test_new_files_do_not_keep_acls_inherited_from_the_target(repo, tmp_path):
    import subprocess

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"no acl here")
    os.chmod(src / "sub" / "f", 0o640)
    (src / "g").write_bytes(b"nor here")
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(dst)], check=True)
    restore_snapshot(repo, snap, dst, subpath=sub(src))
    for rel in ("sub/f", "g", "sub"):
        assert b"system.posix_acl_access" not in os.listxattr(dst / rel), rel
        assert stat.S_IMODE(os.lstat(dst / rel).st_mode) == stat.S_IMODE(os.lstat(src / rel).st_mode)
    assert b"system.posix_acl_default" not in os.listxattr(dst / "sub")


@as_root  # chown
def test_new_files_in_a_set_group_id_target_get_their_recorded_group(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"root's group")
    os.chown(src / "f", 0, 0)
    snap = backup(repo, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    os.chown(dst, 0, 54321)
    os.chmod(dst, 0o2775)  # new files would get group 54321
    restore_snapshot(repo, snap, dst, subpath=sub(src))
    assert (os.lstat(dst / "f").st_uid, os.lstat(dst / "f").st_gid) == (0, 0)


def test_files_are_written_under_temp_names_where_anonymous_files_are_not_supported(
        tmp_path, monkeypatch):
    repo = new_repo()
    src = tmp_path / "src"
    data = make_small_files(src, 20)
    snap = backup(repo, src)
    # O_TMPFILE needs write access: a read-only one fails like a file system without it.
    monkeypatch.setattr(restore_mod, "_ANONYMOUS", os.O_TMPFILE | os.O_RDONLY)
    # ... and the native maker says so for its whole batch (snapshot/_newfiles.c).
    monkeypatch.setattr(restore_mod.newfiles, "create",
                        lambda files: [(newfiles.NO_TMPFILE, errno.EOPNOTSUPP)] * len(files))
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(restore_mod.os, "rename", lambda *a, **k: (renames.append(a[0]),
                                                                    real_rename(*a, **k)))
    dst = tmp_path / "dst"
    s = restore_snapshot(repo, snap, dst, subpath=sub(src), verify=True)
    assert files_under(dst) == data  # and no temp files left
    assert s.files_restored == 20 and s.files_verified == 20
    assert len(renames) == 20 and all(n.startswith(restore_mod.TMP_PREFIX) for n in renames)


def _metadata_of(root: Path) -> dict[str, tuple[int, int, int, int, int, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns, st.st_mtime_ns)
    return out


def test_small_files_made_natively_equal_those_made_in_python(tmp_path, monkeypatch, native_newfiles):
    repo = new_repo()
    src = tmp_path / "src"
    data = make_small_files(src, 40, size=100)  # one blob each
    os.chmod(src / "d0" / "f0", 0o4755)  # special bits: made in Python either way
    os.utime(src / "d1" / "f1", ns=(-5, 3))
    snap = backup(repo, src)
    made: list[int] = []
    real = restore_mod.newfiles.create
    monkeypatch.setattr(restore_mod.newfiles, "create", lambda files: made.append(len(files)) or real(files))
    # Not verified: reading the files back would move their atimes.
    native = restore_snapshot(repo, snap, tmp_path / "native", subpath=sub(src))
    assert sum(made) == 39  # all but the set-user-ID one natively
    monkeypatch.setattr(restore_mod.newfiles, "create", None)
    python = restore_snapshot(repo, snap, tmp_path / "python", subpath=sub(src))
    assert _metadata_of(tmp_path / "native") == _metadata_of(tmp_path / "python")
    assert files_under(tmp_path / "native") == files_under(tmp_path / "python") == data
    assert native.as_dict() | {"duration": 0} == python.as_dict() | {"duration": 0}


def test_files_the_native_maker_cannot_make_are_made_in_python_and_its_warnings_kept(
        tmp_path, monkeypatch, native_newfiles):
    repo = new_repo()
    src = tmp_path / "src"
    data = make_small_files(src, 12, size=100)
    snap = backup(repo, src)
    real = restore_mod.newfiles.create

    def flaky(files):  # the first file of each batch fails, the second loses its times
        got = [(newfiles.FAILED, errno.EIO), *real(files[1:])]
        if len(got) > 1 and got[1][0] == newfiles.MADE:
            got[1] = (newfiles.MADE_NO_TIMES, errno.EPERM)
        return got

    monkeypatch.setattr(restore_mod.newfiles, "create", flaky)
    s = restore_snapshot(repo, snap, tmp_path / "dst", subpath=sub(src), verify=True)
    assert files_under(tmp_path / "dst") == data
    assert s.files_restored == 12 and s.files_verified == 12
    assert s.warnings and all(w["error"] == f"cannot set times: {os.strerror(errno.EPERM)}"
                              for w in s.warnings)


def test_many_blob_ranges_run_on_one_thread_at_a_time_while_large_ones_remain():
    def job(name: bytes, size: int, blobs: int):
        return (name, 0, size, [object()] * blobs)  # type: ignore[list-item]

    small = [job(b"s%d" % i, 1 << 20, 200) for i in range(3)]
    large = [job(b"l%d" % i, 8 << 20, 4) for i in range(2)]
    jobs = restore_mod._Jobs(small + large, max_many=1)  # type: ignore[arg-type]
    first = jobs.take(False)
    assert first is not None and first[1]  # many-blob ranges first ...
    second, third = jobs.take(False), jobs.take(False)
    assert second is not None and third is not None
    assert not second[1] and not third[1]  # ... but one thread at a time, while large ones remain
    fourth = jobs.take(False)
    assert fourth is not None and fourth[1]  # none left: every thread takes many-blob ranges
    fifth = jobs.take(True)
    assert fifth is not None and fifth[1]
    assert jobs.take(True) is None
