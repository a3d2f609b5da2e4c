"""Pausing Python's cyclic garbage collector for the run of a pipeline (backup, restore, check).

Backup and restore hold one or a few objects per file for a long time (nodes,
plan entries, chunk lists) and create almost no reference cycles: 8
unreachable objects after backing up the benchmark's 20,205 files. The
collector would only traverse that growing set again and again, with every
thread stopped: 0.27 s of the initial backup, a tenth of the CPU time of
restoring 20,000 small files. check walks every tree the same way (a node
per entry, no cycles). It is enabled again afterwards, and collects then
whatever other threads left meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (restored as it was after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
