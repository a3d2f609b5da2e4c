"""The native reader of small files (snapshot/_dirscan.c, ``read_small``).

A backup stores what it returns as a file's content and metadata, so each
result must be what ``ops/backup.py``'s Python path would have read: the
bytes, the size and times of the ``fstat`` before the read, and every case
it handles differently (an error, a replaced file, one to read in Python).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resurgo.snapshot import dirscan
from resurgo.testing.environment import as_nobody, as_root

LIMIT = 1 << 20


def item(path: Path) -> tuple[bytes, int, int, int]:
    st_ = os.lstat(path)
    return os.fsencode(path), st_.st_ino, st_.st_dev, st_.st_size


def statuses(found: tuple[bytes, list[dirscan.ReadResult]]) -> list[dirscan.ReadResult]:
    return found[1]


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])  # a function, no state
@given(sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=12))
def test_files_come_back_as_python_reads_them(read_small, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, size in enumerate(sizes):
            p = Path(tmp) / f"f{i}"
            p.write_bytes(os.urandom(size))
            paths.append(p)
        window, got = read_small([item(p) for p in paths], LIMIT)
        assert len(got) == len(paths)
        for p, result in zip(paths, got, strict=True):
            st_ = os.stat(p)
            assert result[0] == dirscan.READ_OK and len(result) == 6
            offset = result[1]
            assert window[offset : offset + st_.st_size] == p.read_bytes()
            assert result[2:] == (st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns, False)


def test_reading_does_not_move_the_atime(read_small, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    st_ = os.stat(f)
    os.utime(f, ns=(st_.st_mtime_ns - 10**12, st_.st_mtime_ns))  # relatime would move it
    assert statuses(read_small([item(f)], LIMIT))[0][0] == dirscan.READ_OK
    assert os.stat(f).st_atime_ns == st_.st_mtime_ns - 10**12


def test_every_case_python_handles_otherwise_is_reported(read_small, tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(b"x" * 100)
    link = tmp_path / "link"
    link.symlink_to(regular)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 19)
    large = tmp_path / "large"
    large.write_bytes(b"y" * (LIMIT + 1))
    ino, dev = os.lstat(regular).st_ino, os.lstat(regular).st_dev
    got = statuses(read_small([
        (os.fsencode(tmp_path / "missing"), 1, dev, 0),
        (os.fsencode(link), ino, dev, 100),         # O_NOFOLLOW: a symlink is not followed
        item(tmp_path),                             # a directory is not a regular file
        item(fifo),                                 # opened without blocking, not read
        (os.fsencode(regular), ino + 1, dev, 100),  # another file than the one listed
        item(sparse),                               # holes: the Python path finds them
        item(large),                                # over the limit: streamed in Python
        (os.fsencode(regular), ino, dev, 50),       # grown since it was listed
    ], LIMIT))
    assert got == [
        (dirscan.READ_OPEN_ERROR, errno.ENOENT),
        (dirscan.READ_OPEN_ERROR, errno.ELOOP),
        (dirscan.READ_REPLACED, 0),
        (dirscan.READ_REPLACED, 0),
        (dirscan.READ_REPLACED, 0),
        (dirscan.READ_FALLBACK, 0),
        (dirscan.READ_FALLBACK, 0),
        (dirscan.READ_FALLBACK, 0),
    ]


@as_root
def test_a_file_that_cannot_be_opened_reports_the_error(read_small) -> None:
    # Root may open anything: the read runs in a child that dropped to "nobody".
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        top.chmod(0o755)
        f = top / "secret"
        f.write_bytes(b"secret")
        f.chmod(0o600)
        items = [item(f)]
        assert as_nobody(
            lambda: statuses(read_small(items, LIMIT)) == [(dirscan.READ_OPEN_ERROR, errno.EACCES)])
    finally:
        shutil.rmtree(top)


def test_bad_arguments_raise(read_small, tmp_path: Path) -> None:
    assert read_small([], LIMIT) == (b"", [])
    with pytest.raises(TypeError):
        read_small((item(tmp_path),), LIMIT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_small([("not bytes", 1, 2, 3)], LIMIT)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        read_small([[os.fsencode(tmp_path), 1, 2, 3]], LIMIT)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        read_small([(os.fsencode(tmp_path), 1, 2)], LIMIT)  # type: ignore[list-item]
