"""Small new files made in one native call each batch: for a restore's fresh files.

``create(files)`` is ``resurgo.snapshot._newfiles.create`` (``_newfiles.c``):
each file ``(dir_fd, name, data, size, mode, atime_ns, mtime_ns)`` is created
as an anonymous file (``O_TMPFILE``) in the directory open as ``dir_fd``, with
``mode`` (less the umask), written with ``data``, extended with a hole up to
``size`` when that is longer, given its access and modification times, and
linked in under ``name`` through ``/proc/self/fd``, all without the GIL. It
returns ``(status, errno)`` per file:

- ``MADE``: the file is in place;
- ``MADE_NO_TIMES``: in place, but its times could not be set (``errno``);
- ``NO_TMPFILE``: the file system makes no anonymous files, and nothing was
  made, for this file and every one after it in the batch;
- ``FAILED``: nothing visible was made (``errno`` says why).

It decides nothing: ``ops/restore.py`` sends it only the files it would make
that way itself (``_Restore._write_new``: a fresh file of one blob that needs
only its times) and makes every other one, or any that failed here, as
before, which also reports the error.

``create`` is None when the extension is not built (no C compiler at install
time, another platform): a restore then makes every file in Python, with the
same result. ``NATIVE_EXPECTED`` says whether this platform should have it
(tests fail in CI when it is missing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

NATIVE_EXPECTED = sys.platform.startswith("linux")

MADE, MADE_NO_TIMES, NO_TMPFILE, FAILED = range(4)

# (dir_fd, name, data, size, mode, atime_ns, mtime_ns)
NewFile = tuple[int, bytes, bytes | bytearray | memoryview, int, int, int, int]

create: Callable[[list[NewFile]], list[tuple[int, int]]] | None
try:
    from resurgo.snapshot._newfiles import create
except ImportError:
    create = None
