"""Process-wide settings of native libraries, made by the CLI (the engine never touches them).

Malloc arenas (``limit_malloc_arenas``, once at start):

glibc gives each thread that calls malloc its own *arena* (up to 8 per core).
resurgo's worker threads allocate and free buffers of 1-24 MiB (read blocks,
compressed and encrypted blobs); freed memory stays inside the arena that
served it and can only be reused by threads that happen to map to that arena,
so with several arenas the process holds several copies of its working set.
Backing up 1 GB measured a peak RSS of ~340 MiB with one arena against ~430 MiB
with the default, at the same CPU time: the threads spend their time in
compression, hashing and encryption, not in malloc, so one arena's lock is not
contended. (Lowering M_MMAP_THRESHOLD saves more memory but costs ~30 % more
CPU in page faults, so it is left alone.)

BLAS threads (``one_blas_thread``, around opening the repository): NumPy loads
OpenBLAS, which starts a pool of one worker per core that busy-waits for work
before it sleeps. resurgo never calls BLAS (the index only sorts and searches),
so on 2 cores that pool cost ~60 ms of CPU per command, half of NumPy's import.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas; returns whether the setting was applied.

    A no-op elsewhere than glibc-based Linux (other allocators, other systems).
    Call before starting threads: arenas that already exist are kept.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbol table (dlopen(NULL)) already holds the C
        # library; ctypes.util.find_library would run `ldconfig -p` in a
        # subprocess, ~10 ms of every command's start-up.
        libc = ctypes.CDLL(None, use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and other libcs have no mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Load OpenBLAS (with NumPy) inside this block with no worker threads.

    OpenBLAS reads its thread count from the environment once, when it is
    loaded; the variable is removed again afterwards so that child processes
    (password commands, ``--stdin-from-command``, plan hooks) see the
    environment they were given. A value the user set is left alone.
    """
    if BLAS_THREADS_VARIABLE in os.environ:
        yield
        return
    os.environ[BLAS_THREADS_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(BLAS_THREADS_VARIABLE, None)
