"""Listing a directory for a backup in one native call, when it is built.

``scan(fd)`` is ``resurgo.snapshot._dirscan.scan`` (``_dirscan.c``): the
entries of the directory open as ``fd``, sorted by name, each as
``(name, lstat, row)``, where ``lstat`` is what ``os.lstat`` returns and
``row`` is the entry's part of its directory's signature
(``resurgo.ops.dircache.entry_row``). The listing, the ``fstatat`` calls and
the packing run without the GIL, so the backup's scanner threads list
directories in parallel instead of handing the GIL to each other at every
``lstat`` (docs/benchmarks.md, optimisation log).

It returns None for a directory it leaves to Python (an entry that vanished
or cannot be stat'ed, an entry whose row Python writes in its wide form), and
raises ``OSError`` when the directory cannot be read.

``scan`` is None when the extension is not built (no C compiler at install
time, another platform): the backup then lists every directory with
``os.scandir``, with the same result. ``NATIVE_EXPECTED`` says whether this
platform should have it (tests fail in CI when it is missing).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

ScanEntry = tuple[bytes, os.stat_result, bytes]

NATIVE_EXPECTED = sys.platform.startswith("linux")

scan: Callable[[int], list[ScanEntry] | None] | None
try:
    from resurgo.snapshot._dirscan import scan
except ImportError:
    scan = None
