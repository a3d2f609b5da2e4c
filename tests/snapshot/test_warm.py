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

    def slow(path: bytes, dev: int):
        listed.append(path)
        stop.set()  # as if the key were derived now
        time.sleep(0.01)
        return real(path, dev)

    monkeypatch.setattr(warm, "_list", slow)
    assert warm_tree([os.fsencode(tmp_path / "a")], stop) <= 2
    assert len(listed) <= 2  # one directory per thread at the most
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
