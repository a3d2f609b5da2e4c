"""Warming the kernel's metadata caches for a backup while the repository opens.

Opening a repository costs a fixed few tenths of a second before the walk can
start: the interpreter loads its modules and Argon2id derives the key (which
releases the GIL). On a cold cache the walk then waits on the disk for every
directory block and inode it reads. A warm-up thread lists the source
directories and ``lstat``s their entries during the opening, so the disk works
while the CPU derives the key, and the walk finds most metadata in memory.

The warm-up only reads (it never opens a file, and lists directories with
``O_NOATIME`` so that their atimes stay as the backup will record them),
keeps nothing (the kernel's dentry and inode caches hold the result), and is
bounded: it stops when the
backup starts walking, after ``max_entries``, or at the end of the tree.
Errors are ignored; the walk reports them.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence

# Enough for the opening's few tenths of a second on any disk (a cold ext4
# tree is listed at ~80,000 entries per second; a warm one ten times faster).
MAX_ENTRIES = 200_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME


class MetadataWarmup:
    """Lists ``paths`` in a daemon thread until ``stop()``; see the module docstring."""

    def __init__(self, paths: Sequence[str | bytes], *, max_entries: int = MAX_ENTRIES) -> None:
        self._paths = [os.fsencode(p) for p in paths]
        self._max = max_entries
        self._stop = threading.Event()
        self.entries = 0
        self._thread = threading.Thread(target=self._run, name="resurgo-warmup", daemon=True)

    def start(self) -> MetadataWarmup:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (it checks between entries)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # Depth first, like the backup's walk, so what is warmed first is what
        # the walk needs first.
        stack = []
        for path in reversed(self._paths):
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    stack.append(path)
            except OSError:
                pass
        stopped = self._stop.is_set
        while stack and not stopped():
            path = stack.pop()
            try:
                # O_NOATIME: listing a directory moves its atime, which the
                # backup records after the warm-up ran. A directory that cannot
                # be opened so (not ours, no CAP_FOWNER) is left to the walk.
                fd = os.open(path, _DIR_FLAGS)
            except OSError:
                continue
            subdirs: list[bytes] = []
            try:
                # Listed by descriptor, entries are str; lstat goes through it too.
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    if stopped() or self.entries >= self._max:
                        return
                    self.entries += 1
                    try:
                        if stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
                            subdirs.append(os.path.join(path, os.fsencode(entry.name)))
                    except OSError:
                        pass
            except OSError:
                continue
            finally:
                os.close(fd)
            stack.extend(reversed(subdirs))
