"""The chunker: content-defined cut points (FastCDC 2020) over buffers and files.

A *chunk* is a slice of a file whose boundaries depend only on nearby content,
so an insertion shifts at most the chunks around it. Cutting runs in pyfastcdc's
Cython loop with the GIL released. The gear table is XORed with the repository's
secret seed so that boundaries differ between repositories (docs/design.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pyfastcdc import FastCDC

from resurgo.repo.config import RepoConfig

# Read size for files: large reads amortise syscalls and Python overhead per byte.
READ_SIZE = 16 << 20


class Chunker:
    def __init__(self, config: RepoConfig) -> None:
        p = config.params
        self.min_size = p.chunk_min
        self.max_size = p.chunk_max
        self._cdc = FastCDC(
            avg_size=p.chunk_avg,
            min_size=p.chunk_min,
            max_size=p.chunk_max,
            normalized_chunking=1,
            seed=config.chunker_seed,
        )

    def cut(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        """Cut a whole buffer (its end is the end of the data)."""
        mv = memoryview(buf)
        for c in self._cdc.cut_buf(mv):
            yield mv[c.offset : c.offset + c.length]

    def fd_chunks(self, fd: int, *, read_size: int = READ_SIZE) -> Iterator[memoryview]:
        """Chunks of everything readable from ``fd`` from its current offset.

        Yields read-only views into immutable ``bytes`` read buffers: zero-copy,
        and safe to hand to other threads (a view keeps its buffer alive).
        A cut is trusted only when at least ``max_size`` bytes follow its start
        or the data has ended, because FastCDC decides a boundary from at most
        ``max_size`` bytes: so results equal ``cut()`` over the whole stream.
        """
        carry = b""
        eof = False
        while not eof:
            block = os.read(fd, read_size)
            if not block:
                eof = True
                buf = carry
            else:
                buf = carry + block if carry else block
                # Drop the read block now: it would stay alive (a second copy of
                # up to ``read_size`` bytes) while the chunks below are used.
                del block
                # os.read may return short reads on pipes: keep reading until we
                # hold enough to cut with confidence, or the stream ends.
                if len(buf) < self.max_size * 2:
                    carry = buf
                    continue
            if not buf:
                break
            mv = memoryview(buf)
            carry = b""
            for c in self._cdc.cut_buf(mv):
                if not eof and c.offset + self.max_size > len(buf):
                    carry = bytes(mv[c.offset :])
                    break
                yield mv[c.offset : c.offset + c.length]
