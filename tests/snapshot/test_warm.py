"""Warming the caches while the key is derived: the targets' directories
(snapshot/warm.py, dirscan.subdirs) and the cache directory (repo/cache.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from resurgo.repo.cache import warm_cache
from resurgo.snapshot import dirscan, warm
from resurgo.snapshot.warm import warm_tree


def make_tree(root: Path, depth: int = 3, width: int = 3) -> int:
    """A tree of directories with a file each; the number of directories in it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "file").write_bytes(b"x")
    (root / "link").symlink_to(".")  # a symlink to a directory is not followed
    count = 1
    if depth:
        for i in range(width):
            count += make_tree(root / f"d{i}", depth - 1, width)
    return count


def test_subdirs_are_the_directories_on_the_device(subdirs, tmp_path):
    make_tree(tmp_path / "t", depth=1)
    fd = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    try:
        dev = os.fstat(fd).st_dev
        assert sorted(subdirs(fd, dev)) == [b"d0", b"d1", b"d2"]
        assert subdirs(fd, dev + 1) == []  # another device: not descended into
        assert sorted(subdirs(fd, dev)) == [b"d0", b"d1", b"d2"]  # the descriptor is left rewound
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "t" / "file", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            subdirs(fd, dev)
    finally:
        os.close(fd)


@pytest.mark.parametrize("native", [True, False])
def test_warm_tree_lists_every_directory_of_every_target(subdirs, tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(dirscan, "subdirs", None)
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b", depth=1)
    (tmp_path / "f").write_bytes(b"not a directory")
    targets = [os.fsencode(tmp_path / n) for n in ("a", "b", "f", "missing")]
    assert warm_tree(targets, threading.Event()) == a + b


def test_warm_tree_stops_when_told(tmp_path, monkeypatch):
    make_tree(tmp_path / "a")
    stop = threading.Event()
    listed: list[bytes] = []
    real = warm._list

    def slow(path: bytes, dev: int, since: int | None):
        listed.append(path)
        stop.set()  # as if the key were derived now
        time.sleep(0.01)
        return real(path, dev, since)

    monkeypatch.setattr(warm, "_list", slow)
    assert warm_tree([os.fsencode(tmp_path / "a")], stop) <= warm.WARM_THREADS
    assert len(listed) <= warm.WARM_THREADS  # one directory per thread at the most
    stop.clear()
    listed.clear()
    stop.set()
    assert warm_tree([os.fsencode(tmp_path / "a")], stop) == 0 and not listed


def test_warm_tree_leaves_directory_atimes_as_they_were(tmp_path):
    make_tree(tmp_path / "a", depth=1)
    dirs = [tmp_path / "a", tmp_path / "a" / "d0"]
    for d in dirs:
        os.utime(d, ns=(1_000_000_000, 2_000_000_000))  # atime far behind mtime: relatime would move it
    assert warm_tree([os.fsencode(tmp_path / "a")], threading.Event()) == 4
    assert [os.stat(d).st_atime_ns for d in dirs] == [1_000_000_000, 1_000_000_000]


def test_warm_cache_asks_for_the_newest_files_within_the_budget(tmp_path):
    root = tmp_path / "cache"
    (root / "repo-a" / "packs" / "ab").mkdir(parents=True)
    files = [root / "repo-a" / "index", root / "repo-a" / "packs" / "ab" / "pack", root / "old"]
    for i, (f, size) in enumerate(zip(files, [3000, 5000, 7000], strict=True)):
        f.write_bytes(b"x" * size)
        os.utime(f, ns=(10**18 - i * 10**9, 10**18 - i * 10**9))  # index newest, old oldest
    assert warm_cache(root, threading.Event()) == 15000
    assert warm_cache(root, threading.Event(), budget=8000) == 8000  # the two newest
    assert warm_cache(root, threading.Event(), budget=2000) == 0
    stop = threading.Event()
    stop.set()
    assert warm_cache(root, stop) == 0
    assert warm_cache(tmp_path / "absent", threading.Event()) == 0


def _cached(path: Path) -> bool:
    """Whether the first page of ``path`` is in the page cache (``mincore``, which,
    unlike a read that must not wait, starts no read-ahead)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE, access=mmap.ACCESS_COPY) as m:
        vec = (ctypes.c_ubyte * 1)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return bool(vec[0] & 1)


def _evicted(path: Path) -> bool:
    """Drop ``path``'s pages from the page cache; whether they are out of it now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return not _cached(path)


@pytest.mark.parametrize("native", [True, False])
def test_warm_tree_reads_ahead_the_small_files_changed_since_the_last_backup(
        subdirs, tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(dirscan, "subdirs", None)
    root = tmp_path / "t"
    make_tree(root, depth=1)
    old, large = root / "d0" / "old", root / "d1" / "large"
    old.write_bytes(b"o" * 100_000)
    since = os.stat(old).st_ctime_ns + 1
    time.sleep(0.01)
    new = root / "d2" / "new"
    new.write_bytes(b"n" * 100_000)
    large.write_bytes(b"l" * (warm.CHANGED_FILE_BYTES + 1))
    os.utime(new, ns=(0, 0))  # an old mtime: the ctime says it changed
    files = (old, new, large)
    # The file system must let these pages go, or nothing here can be told.
    assert all(_evicted(f) for f in files)
    assert warm_tree([os.fsencode(root)], threading.Event(), changed_since_ns=since) == 4
    deadline = time.monotonic() + 5
    while not _cached(new) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _cached(new)
    assert not _cached(old) and not _cached(large)  # unchanged, and too large


def test_last_backup_is_the_newest_directory_cache_of_any_repository(tmp_path):
    assert warm.last_backup_ns(None) is None
    assert warm.last_backup_ns(tmp_path / "missing") is None
    (tmp_path / "repo-a").mkdir()
    (tmp_path / "repo-b").mkdir()
    (tmp_path / "repo-a" / "index").write_bytes(b"not a directory cache")
    assert warm.last_backup_ns(tmp_path) is None
    for name, t in (("repo-a/dirs-1", 5_000_000_000), ("repo-b/dirs-2", 7_000_000_000),
                    ("repo-b/index", 9_000_000_000), ("dirs-at-the-root", 9_000_000_000)):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(t, t))
    assert warm.last_backup_ns(tmp_path) == 7_000_000_000
