"""Listing a directory, and reading its small files, for a backup in one native call each.

``scan(fd)`` is ``resurgo.snapshot._dirscan.scan`` (``_dirscan.c``): the
entries of the directory open as ``fd`` (or, given a path as bytes, of that
directory, opened as ``fsmeta.open_dir_for_backup`` opens it and closed in the
same call), sorted by name, each as
``(name, lstat, row)``, where ``lstat`` is what ``os.lstat`` returns and
``row`` is the entry's part of its directory's signature
(``resurgo.ops.dircache.entry_row``). The listing, the ``fstatat`` calls and
the packing run without the GIL, so the backup's scanner threads list
directories in parallel instead of handing the GIL to each other at every
``lstat`` (docs/benchmarks.md, optimisation log).

It returns None for a directory it leaves to Python (an entry that vanished
or cannot be stat'ed, an entry whose row Python writes in its wide form), and
raises ``OSError`` when the directory cannot be read.

``read_small(items, limit)`` reads a directory's small files in one call
without the GIL (``_dirscan.c`` says how, as ``fsmeta.open_for_backup`` and
``ops/backup.py`` would): ``items`` are ``(path, inode, device, size)`` as the
listing saw them. It returns ``(data, results)``: all the files' bytes in one
``bytes`` object, and per file ``(READ_OK, offset, size, mtime_ns, ctime_ns,
changed)``, the file being ``data[offset:offset + size]``, the size and
times those of the ``fstat`` before the read, ``changed`` whether the
``fstat`` after it differs (size, times, inode, device); or ``(status,
errno)``: ``READ_OPEN_ERROR`` and ``READ_ERROR`` with the error,
``READ_REPLACED`` (not the listed regular file any more), ``READ_FALLBACK``
for a file to read in Python (sparse, larger than ``limit``, grown since it
was listed, shrunk or grown since its ``fstat``, or a time beyond 64 bits).

``subdirs(fd, dev[, since_ns, max_bytes])`` lists the directory open as ``fd``
and ``lstat``s every entry without the GIL, building nothing per entry: it
returns the names of the subdirectories on device ``dev`` (for
``warm.warm_tree``). Given ``since_ns``, it also asks the kernel to read ahead
(``POSIX_FADV_WILLNEED``) each regular file changed since then (its ctime) of
1 to ``max_bytes`` bytes.

``xattr_free(paths)`` asks ``llistxattr`` about each path without the GIL:
one byte per path, 1 when it has no extended attributes, 0 when it has some
or the call failed (then ``fsmeta.read_xattrs`` reads them, or reports why
not, as without it).

``scan``, ``read_small``, ``subdirs`` and ``xattr_free`` are None when the extension is not built (no C
compiler at install time, another platform): the backup then lists every
directory with ``os.scandir`` and reads every file in Python, with the same
result. ``NATIVE_EXPECTED`` says whether this
platform should have it (tests fail in CI when it is missing).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

ScanEntry = tuple[bytes, os.stat_result, bytes]
ReadResult = tuple[int, int, int, int, int, bool] | tuple[int, int]
READ_OK, READ_OPEN_ERROR, READ_ERROR, READ_REPLACED, READ_FALLBACK = range(5)

NATIVE_EXPECTED = sys.platform.startswith("linux")

scan: Callable[[int | bytes], list[ScanEntry] | None] | None
read_small: Callable[[list[tuple[bytes, int, int, int]], int],
                     tuple[bytes, list[ReadResult]]] | None
subdirs: Callable[..., list[bytes]] | None
xattr_free: Callable[[list[bytes]], bytes] | None
try:
    from resurgo.snapshot._dirscan import read_small, scan, subdirs, xattr_free
except ImportError:
    scan = read_small = subdirs = xattr_free = None
