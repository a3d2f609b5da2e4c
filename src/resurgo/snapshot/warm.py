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


# Files read ahead when changed since the last backup: those a backup reads
# whole (ops/backup.py, SMALL_FILE_BYTES); a large one is read around the page
# cache anyway (snapshot/direct.py).
CHANGED_FILE_BYTES = 2 << 20


def warm_tree(paths: Sequence[bytes], stop: threading.Event, *, threads: int = WARM_THREADS,
              changed_since_ns: int | None = None) -> int:
    """List the directories under ``paths`` (breadth first, each on its target's
    file system) until ``stop`` is set or all are listed; the directories listed.

    With ``changed_since_ns`` (when the last backup ended, ``last_backup_ns``),
    each small regular file changed since then (its ctime) is read ahead too
    (``POSIX_FADV_WILLNEED``): the files an incremental backup reads. On the
    benchmark's incremental backup, having its 300 changed files in the cache
    saved ~0.06 s of 1.1 s."""
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
            subdirs: list[tuple[bytes, int]] = []
            count = 0
            try:
                subdirs, count = _list(path, dev, changed_since_ns)
            finally:  # whatever happens, the others are not left waiting for this one
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


def _list(path: bytes, dev: int, since: int | None) -> tuple[list[tuple[bytes, int]], int]:
    """The subdirectories of ``path`` on device ``dev``, and 1 (or 0 when
    ``path`` could not be listed), its files changed ``since`` read ahead;
    errors ignored."""
    try:
        fd = open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return [], 0
    try:
        if dirscan.subdirs is not None:
            if since is None:
                names = dirscan.subdirs(fd, dev)
            else:
                names = dirscan.subdirs(fd, dev, since, CHANGED_FILE_BYTES)
        else:
            names = []
            with os.scandir(fd) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if _on(st, dev):
                        names.append(os.fsencode(e.name))
                    elif since is not None and _changed(st, since):
                        _read_ahead(fd, e.name, st.st_size)
    except OSError:
        return [], 0
    finally:
        os.close(fd)
    return [(os.path.join(path, name), dev) for name in names], 1


def _changed(st: os.stat_result, since: int) -> bool:
    """Whether ``st`` is a small regular file changed at or after ``since``."""
    return stat.S_ISREG(st.st_mode) and 0 < st.st_size <= CHANGED_FILE_BYTES and st.st_ctime_ns >= since


def _read_ahead(dir_fd: int, name: str, size: int) -> None:
    """Ask the kernel to read the file ``name`` of ``dir_fd`` ahead, not moving its atime."""
    try:
        fd = open_noatime(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=dir_fd)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_backup_ns(cache_root: str | os.PathLike[str] | None) -> int | None:
    """When the last backup into a repository cached under ``cache_root`` ended:
    the newest modification time of a directory cache (``<repository>/dirs-*``,
    ops/dircache.py), read without the key; None if there is none. Which
    repository and which set of paths are this backup's is known only once the
    key is derived, so this is a hint, as ``warm_tree``'s read-ahead is."""
    if cache_root is None:
        return None
    newest: int | None = None
    try:
        repos = os.scandir(cache_root)
    except OSError:
        return None
    with repos:
        for repo in repos:
            try:
                if not repo.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(repo.path) as it:
                    for e in it:
                        if e.name.startswith("dirs-"):
                            t = e.stat(follow_symlinks=False).st_mtime_ns
                            newest = t if newest is None else max(newest, t)
            except OSError:
                continue
    return newest


def _on(st: os.stat_result, dev: int) -> bool:
    """Whether ``st`` is a directory on device ``dev``."""
    return stat.S_ISDIR(st.st_mode) and st.st_dev == dev
