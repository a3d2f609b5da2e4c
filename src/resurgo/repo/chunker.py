"""The chunker: content-defined cut points (FastCDC 2020) over buffers and files.

A *chunk* is a slice of a file whose boundaries depend only on nearby content,
so an insertion shifts at most the chunks around it. The gear table is XORed
with the repository's secret seed so that boundaries differ between
repositories (docs/design.md).

Cutting runs natively without the GIL: in ``resurgo.repo._cdc`` (``_cdc.c``),
which returns every cut of a buffer from one call, or, where that extension is
not built, in pyfastcdc's Cython loop, which hands out one chunk per call and
so releases and retakes the GIL at each chunk. Both give the same cut points
(tests/repo/test_chunker.py compares them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

from resurgo.repo.config import RepoConfig
from resurgo.repo.lazynumpy import buffer

Cutter: Any
try:
    from resurgo.repo._cdc import Cutter
except ImportError:
    Cutter = None

# FastCDC's normalised chunking level, as the format fixes it (docs/format.md).
NORMALIZATION: Literal[1] = 1

# Read size for files: large reads amortise syscalls and Python overhead per byte.
READ_SIZE = 16 << 20


class Chunker:
    def __init__(self, config: RepoConfig) -> None:
        p = config.params
        self.min_size = p.chunk_min
        self.max_size = p.chunk_max
        self._config = config
        self._fastcdc: Any = None
        self._native: Any = None
        if Cutter is not None:
            self._native = Cutter(config.chunker_seed, p.chunk_min, p.chunk_avg, p.chunk_max,
                                  NORMALIZATION)

    @property
    def _cdc(self) -> Any:
        # Made (and pyfastcdc imported, ~16 ms from a cold disk) on the first
        # cut: a backup in which nothing changed never cuts anything. Two
        # threads racing here make two equal cutters; either serves.
        if self._fastcdc is None:
            from pyfastcdc import FastCDC

            p = self._config.params
            self._fastcdc = FastCDC(
                avg_size=p.chunk_avg,
                min_size=p.chunk_min,
                max_size=p.chunk_max,
                normalized_chunking=NORMALIZATION,
                seed=self._config.chunker_seed,
            )
        return self._fastcdc

    def cut(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        """Cut a whole buffer (its end is the end of the data)."""
        mv = memoryview(buf)
        for offset, length in self.spans(mv):
            yield mv[offset : offset + length]

    def spans(self, buf: bytes | memoryview) -> list[tuple[int, int]]:
        """``cut``'s chunks as (offset, length) in ``buf``: each chunk of the whole
        buffer, the last one ending at its end."""
        if self._native is not None:
            return self._native.spans(buf)
        return [(c.offset, c.length) for c in self._cdc.cut_buf(memoryview(buf))]

    def fd_chunks(self, fd: int, *, read_size: int = READ_SIZE) -> Iterator[memoryview]:
        """Chunks of everything readable from ``fd`` from its current offset.

        Yields read-only views into read buffers that are never written again
        once a view of them is out: zero-copy, and safe to hand to other
        threads (a view keeps its buffer alive). Each buffer is fresh
        (``lazynumpy.buffer``: not zeroed first, and without importing NumPy)
        and starts with the previous buffer's undecided tail, then is filled by
        ``readv`` straight from the kernel: each byte is copied once, where
        ``carry + os.read(...)`` copied it twice.
        A cut is trusted only when at least ``max_size`` bytes follow its start
        or the data has ended, because FastCDC decides a boundary from at most
        ``max_size`` bytes: so results equal ``cut()`` over the whole stream.
        """
        fresh = max(read_size, 2 * self.max_size)
        carry: memoryview | None = None
        eof = False
        while not eof:
            keep = len(carry) if carry is not None else 0
            view = buffer(keep + fresh)
            if carry is not None:
                view[:keep] = carry
                carry = None
            filled = keep
            # Fill it (pipes return short reads): a cut needs max_size bytes after it.
            while filled < len(view):
                n = os.readv(fd, [view[filled:]])
                if n == 0:
                    eof = True
                    break
                filled += n
            if not filled:
                break
            data = view[:filled].toreadonly()
            del view
            for offset, length in self.spans(data):
                if not eof and offset + self.max_size > filled:
                    carry = data[offset:]
                    break
                yield data[offset : offset + length]
