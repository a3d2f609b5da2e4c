"""The native directory listing (snapshot/_dirscan.c) against os.lstat and entry_row.

A backup trusts its result as it trusts os.lstat: every field of every
entry's stat_result, the name order and the signature rows must be exactly
what the Python listing gives, or the directory cache would miss (or worse,
match) on the wrong evidence.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resurgo.ops import dircache
from resurgo.testing.environment import as_nobody, as_root, unavailable

STAT_FIELDS = [
    "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
    "st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
    "st_blksize", "st_blocks", "st_rdev",
]


def listing(scan, path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return scan(fd)
    finally:
        os.close(fd)


def assert_as_python(found, path: Path) -> None:
    names = sorted(os.fsencode(n) for n in os.listdir(path))
    assert [name for name, _, _ in found] == names
    for name, st_native, row in found:
        st_py = os.lstat(os.path.join(os.fsencode(path), name))
        assert tuple(st_native) == tuple(st_py)
        for f in STAT_FIELDS:
            assert getattr(st_native, f) == getattr(st_py, f), (name, f)
        assert row == dircache.entry_row(name, st_py)


names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b
                                                  and b not in (b".", b".."))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(names, st.sampled_from(["file", "dir", "link", "fifo", "big"]),
                               max_size=40),
       mtime=st.integers(min_value=-(2**40), max_value=2**33), nsec=st.integers(0, 999_999_999))
def test_entries_are_what_lstat_and_entry_row_give(scan, tmp_path_factory, entries, mtime, nsec):
    d = tmp_path_factory.mktemp("d")
    bd = os.fsencode(d)
    for name, kind in entries.items():
        p = os.path.join(bd, name)
        if kind == "file":
            with open(p, "wb") as f:
                f.write(name)
        elif kind == "big":
            with open(p, "wb") as f:
                f.truncate(1 << 33)  # sparse: st_size beyond 32 bits, few blocks
        elif kind == "dir":
            os.mkdir(p)
        elif kind == "link":
            os.symlink(b"target/" + name, p)
        else:
            os.mkfifo(p)
        if kind != "link":
            os.utime(p, ns=(mtime * 1_000_000_000 + nsec, mtime * 1_000_000_000))
    found = listing(scan, d)
    assert found is not None
    assert_as_python(found, d)


def test_an_empty_directory_and_the_descriptor_left_rewound(scan, tmp_path):
    assert listing(scan, tmp_path) == []
    for i in range(300):  # more than one getdents buffer
        (tmp_path / f"f{i:03d}").write_bytes(b"x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = scan(fd)
        # The caller lists it again after a fallback: nothing may be consumed.
        assert scan(fd) == first
        with os.scandir(fd) as it:
            assert len(list(it)) == 300
    finally:
        os.close(fd)
    assert first is not None
    assert_as_python(first, tmp_path)


def test_a_time_past_2262_is_left_to_python(scan, tmp_path):
    (tmp_path / "a").write_bytes(b"")
    late = tmp_path / "late"
    late.write_bytes(b"")
    try:
        os.utime(late, (2**34, 2**34))  # year 2514: more than 64 bits of ns
    except OverflowError:
        unavailable("the file system cannot store a time past 2262")
    if os.lstat(late).st_mtime_ns < 2**63:
        unavailable("the file system clamps times to 2262 (ext4 stores them to 2446)")
    # Python writes such a row in its wide form; the native listing defers.
    assert listing(scan, tmp_path) is None


@as_root
def test_an_entry_that_cannot_be_stated_is_left_to_python(scan):
    # A directory that "nobody" may list but not search: the names come back,
    # their lstat fails with EACCES. The scan runs in a child that dropped to
    # that user (root may search anything).
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        top.chmod(0o755)
        d = top / "d"
        d.mkdir()
        (d / "f").write_bytes(b"")
        d.chmod(0o744)

        def check() -> bool:
            with pytest.raises(PermissionError):
                os.lstat(d / "f")
            return listing(scan, d) is None

        assert as_nobody(check)
    finally:
        shutil.rmtree(top)


def test_a_descriptor_that_is_not_a_directory_raises(scan, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            scan(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        scan(987654)  # not open
    with pytest.raises(ValueError):
        scan(-1)


def test_a_path_is_opened_listed_and_closed_in_the_same_call(scan, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x" * i)
    (d / "sub").mkdir()
    os.utime(d, ns=(1_000_000_000, 2_000_000_000))
    open_before = len(os.listdir("/proc/self/fd"))
    found = scan(os.fsencode(d))
    assert os.stat(d).st_atime_ns == 1_000_000_000  # O_NOATIME: the atime stays
    assert len(os.listdir("/proc/self/fd")) == open_before  # closed again
    assert found == listing(scan, d)
    assert_as_python(found, d)
    # Open errors are what os.open raises for that path.
    with pytest.raises(FileNotFoundError) as missing:
        scan(os.fsencode(tmp_path / "missing"))
    assert missing.value.filename == os.fsencode(tmp_path / "missing")
    os.symlink(d, tmp_path / "link")
    with pytest.raises(OSError):  # a symlink swapped in is not followed
        scan(os.fsencode(tmp_path / "link"))
    with pytest.raises(NotADirectoryError):
        scan(os.fsencode(d / "f1"))
    with pytest.raises(ValueError):
        scan(b"a\0b")


def test_xattr_free_says_which_paths_have_no_extended_attributes(xattr_free, tmp_path):
    plain, marked, d = tmp_path / "plain", tmp_path / "marked", tmp_path / "dir"
    plain.write_bytes(b"x")
    marked.write_bytes(b"x")
    d.mkdir()
    try:
        os.setxattr(marked, b"user.note", b"1")
        os.setxattr(d, b"user.note", b"1")
    except OSError as e:
        unavailable(f"no user xattrs here: {e}")
    (tmp_path / "link").symlink_to(marked)  # the link itself has none
    paths = [os.fsencode(tmp_path / n) for n in ("plain", "marked", "dir", "link", "missing")]
    # A path with a NUL would name another file: never answered "none".
    paths.append(os.fsencode(tmp_path / "plain") + b"\0suffix")
    assert list(xattr_free(paths)) == [1, 0, 0, 1, 0, 0]
    assert xattr_free([]) == b""
    with pytest.raises(TypeError):
        xattr_free([str(plain)])
    with pytest.raises(TypeError):
        xattr_free(tuple(paths))
