"""Warming the kernel's caches for a backup's walk while the key is derived.

Opening a repository first derives the key (Argon2id, ~0.2 s by default),
which keeps the CPUs busy but not the disk. A backup's walk then waits on
the disk for every directory and inode it has not read since the page cache
was last emptied: on the benchmark dataset, cold, that wait is ~0.15 s of an
incremental backup (docs/benchmarks.md). ``warm_tree`` lists the targets'
directories and ``lstat``s their entries in the meantime, the way the walk
will (``dirscan.scan``, or ``os.scandir`` without the extension), so that the
walk finds them cached. It only reads metadata, never file contents, keeps
to the file system each target is on, and stops as soon as it is told to
(when the key is derived), whatever it has not reached by then left to the
walk as before. It is a hint: every error is ignored.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Sequence

from resurgo.snapshot import dirscan
from resurgo.snapshot.fsmeta import open_noatime

# Threads listing at once: the disk serves several requests at a time, and
# the work is waiting, not computing (the key derivation has the CPUs). Two
# listed 557-836 of the benchmark dataset's 1,005 directories before the key
# was derived; with four, a cold incremental backup took 1.22 s against
# 1.275 s (medians of 6 alternating runs; eight measured no better than four).
WARM_THREADS = 4


def warm_tree(paths: Sequence[bytes], stop: threading.Event, *, threads: int = WARM_THREADS) -> int:
    """List the directories under ``paths`` (breadth first, each on its target's
    file system) until ``stop`` is set or all are listed; the directories listed."""
    pending: deque[tuple[bytes, int]] = deque()  # breadth first: popped from the left
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            pending.append((path, st.st_dev))
    cond = threading.Condition()
    busy = 0
    seen = 0

    def work() -> None:
        nonlocal busy, seen
        while True:
            with cond:
                while not pending and busy and not stop.is_set():
                    cond.wait(0.05)
                if stop.is_set() or not pending:
                    cond.notify_all()
                    return
                path, dev = pending.popleft()
                busy += 1
            subdirs, count = _list(path, dev)
            with cond:
                busy -= 1
                seen += count
                pending.extend(subdirs)
                cond.notify_all()

    workers = [threading.Thread(target=work, name="resurgo-warm", daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return seen


def _list(path: bytes, dev: int) -> tuple[list[tuple[bytes, int]], int]:
    """The subdirectories of ``path`` on device ``dev``, and 1 (or 0 when
    ``path`` could not be listed); errors ignored."""
    try:
        fd = open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return [], 0
    try:
        if dirscan.subdirs is not None:
            names = dirscan.subdirs(fd, dev)
        else:
            with os.scandir(fd) as it:
                names = [os.fsencode(e.name) for e in it
                         if _on(e.stat(follow_symlinks=False), dev)]
    except OSError:
        return [], 0
    finally:
        os.close(fd)
    return [(os.path.join(path, name), dev) for name in names], 1


def _on(st: os.stat_result, dev: int) -> bool:
    """Whether ``st`` is a directory on device ``dev``."""
    return stat.S_ISDIR(st.st_mode) and st.st_dev == dev
