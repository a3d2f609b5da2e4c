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

(NumPy's BLAS threads are kept to one where NumPy is imported,
``resurgo.repo.lazynumpy``.)
"""

from __future__ import annotations

import ctypes
import sys

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
