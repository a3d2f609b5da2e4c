"""Reading large source files around the page cache (``O_DIRECT``), when that is safe and pays.

A buffered read copies every byte twice: the disk fills the page cache, then
the kernel copies the pages into the reader's buffer (and allocates, ages and
later evicts those pages). For a large file nobody has read recently, a
backup gains nothing from the cache: with ``O_DIRECT`` the disk writes
straight into the buffer. Reading the benchmark's four 150 MiB files that way
saves ~0.8 ms of kernel CPU per MB, and the backup no longer pushes the
machine's working set out of the cache (docs/backup.md).

A file that is in the cache (written or read a moment ago) is read through
it, as before: the cache is faster than the disk. ``uncached`` tells by
asking for a byte of four pages with ``RWF_NOWAIT``, which fails instead of
waiting for the disk. The switch is made with ``fcntl(F_SETFL)`` on the
descriptor already open, and undone the same way: a file system that refuses
``O_DIRECT`` (tmpfs, some FUSE and network file systems) or a read it
rejects (``EINVAL``) just stays buffered. Direct reads see data written
through the cache: the kernel writes dirty pages back before it reads
around them.

Direct reads need the buffer's address, the file offset and the length to
be multiples of the device's logical block size; ``ALIGN`` (4 KiB, a page)
covers every common device, and ``aligned_buffer`` gives page-aligned memory.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

ALIGN = 4096
# Smaller files are read buffered: the saving is per byte, the switch costs
# two system calls and the probe three.
DIRECT_MIN_BYTES = 16 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# Where ``uncached`` probes, in eighths of the file's length, from the end backwards.
_PROBES = (7, 5, 3, 1)


def aligned_buffer(size: int) -> mmap.mmap:
    """``size`` bytes of page-aligned, writable memory (anonymous, private)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def uncached(fd: int, size: int) -> bool:
    """Whether most of the file is out of the page cache: at least three of
    four pages probed at 7/8, 5/8, 3/8 and 1/8 of its length.

    The last page is not probed: it is the page most often cached alone (a
    log's latest write, or the buffered read of a file's unaligned end by the
    previous backup, which emptying the cache sometimes leaves behind), and
    then reading the whole file buffered cost ~0.3 s of kernel CPU per
    150 MiB. One probe may hit a stray page; when most do, the file is read
    through the cache. False whenever the kernel cannot tell (no
    ``RWF_NOWAIT``): reading buffered is never wrong.
    """
    if not _RWF_NOWAIT or size <= 0:
        return False
    probe = bytearray(1)
    misses = 0
    # From the end backwards: a probe that misses still starts read-ahead from
    # its page on, which a later probe of a page after it could then find
    # cached (a small file's whole length fits in one read-ahead).
    for eighths in _PROBES:
        try:
            os.preadv(fd, [probe], size * eighths // 8, _RWF_NOWAIT)
        except BlockingIOError:
            misses += 1  # not in the cache
        except OSError:
            return False
    return misses >= len(_PROBES) - 1


def start_direct(fd: int, size: int) -> bool:
    """Switch ``fd`` to direct reads if the file is large and not cached; whether it did."""
    if not _O_DIRECT or size < DIRECT_MIN_BYTES or not uncached(fd, size):
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False  # the file system does not do direct I/O
    return True


def stop_direct(fd: int) -> None:
    """Back to buffered reads (from any offset, of any length)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


def read_into(fd: int, view: memoryview, direct: bool) -> tuple[int, bool]:
    """One ``readv`` into ``view``; returns (bytes read, whether reads are still direct).

    With ``direct``, ``view`` must start at an aligned address and the file
    offset be aligned; its length is rounded down to ``ALIGN`` (a shorter
    view is read buffered). A read the file system rejects is retried
    buffered. A short direct read that ends off the alignment (the end of
    the file) switches to buffered reads, so the next read needs no
    alignment.
    """
    if direct:
        whole = len(view) - len(view) % ALIGN
        if whole:
            try:
                got = os.readv(fd, [view[:whole]])
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                stop_direct(fd)
                return os.readv(fd, [view]), False
            if got % ALIGN:
                stop_direct(fd)
                return got, False
            return got, True
        stop_direct(fd)
    return os.readv(fd, [view]), False
