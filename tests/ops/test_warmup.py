"""The metadata warm-up that runs while a backup opens its repository."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from resurgo.ops import warmup as warmup_mod
from resurgo.ops.warmup import MetadataWarmup


def make_tree(root: Path, dirs: int, files: int) -> int:
    for d in range(dirs):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x")
    return dirs * (2 + files)  # d<n>, inner, and the files


def test_it_lists_every_entry_of_every_path_and_ignores_what_it_cannot_read(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    n = make_tree(a, 3, 4) + make_tree(b, 2, 1)
    (a / "link").symlink_to("d0")  # not followed
    w = MetadataWarmup([a, os.fsencode(b), tmp_path / "missing", a / "d0" / "inner" / "f0"])
    w.start()
    w._thread.join(timeout=30)
    assert not w._thread.is_alive()
    assert w.entries == n + 1
    w.stop()  # after the end: returns at once


def test_it_stops_at_its_entry_budget(tmp_path: Path):
    make_tree(tmp_path, 5, 10)
    w = MetadataWarmup([tmp_path], max_entries=7).start()
    w._thread.join(timeout=30)
    assert w.entries == 7


def test_stop_ends_the_thread_between_entries(tmp_path: Path, monkeypatch):
    make_tree(tmp_path, 4, 5)
    listed = threading.Event()
    release = threading.Event()
    real_scandir = os.scandir

    def slow_scandir(path):  # type: ignore[no-untyped-def]
        listed.set()
        release.wait(30)
        return real_scandir(path)

    monkeypatch.setattr(warmup_mod.os, "scandir", slow_scandir)
    w = MetadataWarmup([tmp_path]).start()
    assert listed.wait(30)
    w._stop.set()
    release.set()
    w.stop()
    assert not w._thread.is_alive()
    assert w.entries == 0  # stopped before the first entry of the first listing


def test_directories_keep_their_atimes(tmp_path: Path):
    # The backup records directory atimes after the warm-up has listed them.
    make_tree(tmp_path, 3, 2)
    dirs = [tmp_path, *(p for p in tmp_path.rglob("*") if p.is_dir())]
    old = 1_000_000_000 * 10**9
    for d in dirs:
        os.utime(d, ns=(old, d.stat().st_mtime_ns))
    w = MetadataWarmup([tmp_path]).start()
    w._thread.join(timeout=30)
    assert w.entries == 3 * 4
    assert [d.stat().st_atime_ns for d in dirs] == [old] * len(dirs)
