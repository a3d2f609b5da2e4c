"""NumPy, imported on first use, with one OpenBLAS thread.

Importing NumPy costs ~65 ms of CPU warm and ~0.1 s from a cold disk. The
index serves lookups without it (``MemoryIndex.load``), so commands that
only look up a few blobs, such as a backup in which nothing changed, never
import it; everything in resurgo that needs NumPy gets it from ``numpy()``.

NumPy loads OpenBLAS, which resurgo never calls, and OpenBLAS starts a
busy-waiting worker thread per core unless told otherwise when it is loaded
(``import numpy``: 120-135 ms of CPU with them, 63-68 ms without). The
variable that tells it is set only for the import and removed again, so that
child processes (password commands, ``--stdin-from-command``, plan hooks)
see the environment they were given; a value the user set is left alone.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"

_lock = threading.Lock()
_module: Any = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Load OpenBLAS (with NumPy) inside this block with no worker threads."""
    if BLAS_THREADS_VARIABLE in os.environ:
        yield
        return
    os.environ[BLAS_THREADS_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(BLAS_THREADS_VARIABLE, None)


def loaded() -> bool:
    """Whether NumPy has been imported (by ``numpy()``) in this process."""
    return _module is not None


def buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, contents unspecified, that costs
    neither NumPy's import nor a zeroing pass over a large buffer.

    An uninitialised NumPy array once NumPy is loaded; until then an anonymous
    mapping (whose pages the kernel zeroes when first written, as it does for
    the large ``malloc`` behind a NumPy array) from 64 KiB up, and a
    ``bytearray`` below that. A backup that changes a few files, one of them
    large, thus never imports NumPy: that import stalled every thread of a
    cold incremental backup for ~0.23 s.
    """
    if _module is not None:
        return _module.empty(size, dtype="u1").data
    if size >= 64 << 10:
        return memoryview(mmap.mmap(-1, size))
    return memoryview(bytearray(size))


def numpy() -> Any:
    """The ``numpy`` module, imported on the first call."""
    global _module
    if _module is None:
        with _lock:
            if _module is None:
                with one_blas_thread():
                    import numpy as np
                _module = np
    return _module
