"""The native maker of small new files (snapshot/_newfiles.c through snapshot/newfiles.py):
files made as a restore's _write_new makes them, and every failure reported per file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.snapshot import newfiles

TIMES = st.integers(-(2**63), 2**63 - 1)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_files_are_made_whole_with_their_mode_times_and_name(native_newfiles, tmp_path: Path) -> None:
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    old = os.umask(0o022)
    try:
        got = native_newfiles([
            (dfd, b"a", b"alpha" * 1000, 5000, 0o640, 1_000_000_123, 2_000_000_456),
            (dfd, b"empty-then-hole", b"", 4096, 0o600, 0, 0),
            (dfd, b"\xff name", bytearray(b"x"), 1, 0o777, -1, -1_500_000_000),
        ])
    finally:
        os.umask(old)
        os.close(dfd)
    assert got == [(newfiles.MADE, 0)] * 3
    a = os.lstat(tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == b"alpha" * 1000
    assert (stat.S_IMODE(a.st_mode), a.st_atime_ns, a.st_mtime_ns, a.st_nlink) == (
        0o640, 1_000_000_123, 2_000_000_456, 1)
    assert (tmp_path / "empty-then-hole").read_bytes() == bytes(4096)
    b = os.lstat(os.fsdecode(os.fsencode(tmp_path) + b"/\xff name"))
    assert (stat.S_IMODE(b.st_mode), b.st_atime_ns, b.st_mtime_ns) == (0o755, -1, -1_500_000_000)
    assert listing(tmp_path) == sorted(["a", "empty-then-hole", os.fsdecode(b"\xff name")])


@given(atime=TIMES, mtime=TIMES)
def test_times_are_split_as_os_utime_splits_them(native_newfiles, tmp_path_factory, atime: int,
                                                 mtime: int) -> None:
    d = tmp_path_factory.mktemp("t")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        status, err = native_newfiles([(dfd, b"native", b"x", 1, 0o644, atime, mtime)])[0]
    finally:
        os.close(dfd)
    ref = d / "python"
    ref.write_bytes(b"x")
    try:
        os.utime(ref, ns=(atime, mtime))
    except OSError as exc:  # a time the file system cannot store
        assert (status, err) == (newfiles.MADE_NO_TIMES, exc.errno)
        return
    assert status == newfiles.MADE
    a, b = os.lstat(d / "native"), os.lstat(ref)
    assert (a.st_atime_ns, a.st_mtime_ns) == (b.st_atime_ns, b.st_mtime_ns)


def test_a_file_that_cannot_be_made_leaves_nothing_and_the_rest_are_made(native_newfiles,
                                                                        tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"already here")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = native_newfiles([
            (dfd, b"taken", b"new content", 11, 0o644, 0, 0),
            (999_999, b"nowhere", b"x", 1, 0o644, 0, 0),
            (dfd, b"made", b"y", 1, 0o644, 0, 0),
        ])
    finally:
        os.close(dfd)
    assert got == [(newfiles.FAILED, errno.EEXIST), (newfiles.FAILED, errno.EBADF), (newfiles.MADE, 0)]
    assert (tmp_path / "taken").read_bytes() == b"already here"
    assert listing(tmp_path) == ["made", "taken"]  # no anonymous file ever shows


@pytest.mark.parametrize("item, error", [
    ((b"a/b", b"x", 1, 0o644), ValueError),
    ((b"", b"x", 1, 0o644), ValueError),
    ((b"a\0b", b"x", 1, 0o644), ValueError),
    ((b"short", b"xx", 1, 0o644), ValueError),
    ((b"mode", b"x", 1, 0o10000), ValueError),
    (("text", b"x", 1, 0o644), TypeError),
])
def test_bad_arguments_are_refused_before_anything_is_made(native_newfiles, tmp_path: Path, item,
                                                           error) -> None:
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(error):
            native_newfiles([(dfd, b"first", b"x", 1, 0o644, 0, 0), (dfd, *item, 0, 0)])
        with pytest.raises(TypeError):
            native_newfiles((dfd, b"x", b"x", 1, 0o644, 0, 0))
    finally:
        os.close(dfd)
    assert listing(tmp_path) == []
