"""Packs: the backend objects that hold blobs.

A *pack* is the concatenation of blob envelopes, followed by the *trailer*
(an envelope of kind TRAILER listing every blob in order) and the trailer's
length as a 4-byte little-endian integer. The pack's ID is the BLAKE3-256 hash
of all its bytes, and its key is ``data/<first 2 hex>/<id>``: any pack can be
verified against its name, and the whole index can be rebuilt from trailers.

Trailer plaintext: ``u32 count`` then ``count`` records of
``type u8 | blob id 32 | length u32 | raw length u32`` (41 bytes); the blob
offsets are implied: the first blob starts at 0, each next one where the
previous ended.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import blake3

from resurgo.backend import StagedObject
from resurgo.errors import CorruptObject
from resurgo.repo.crypto import Kind, Sealer
from resurgo.repo.lazynumpy import numpy

_ENTRY = struct.Struct("<B32sII")
_COUNT = struct.Struct("<I")
TRAILER_LEN_SIZE = 4
# Packs are read by offset/length pairs stored in u32 fields.
MAX_PACK_SIZE = (1 << 32) - 1
# A staged pack is written (and hashed) whenever this much is waiting (PackWriter).
SPILL_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PackedBlob:
    type: int
    id: bytes
    offset: int
    length: int  # stored (envelope) length
    raw_length: int  # plaintext length


class PackWriter:
    """Collects blob envelopes until the pack is finished. ``add`` is not thread-safe.

    ``add`` runs under the repository's lock, so it only keeps a reference to
    the envelope. Two ways to build the pack:

    * In memory (backends without staging, e.g. object stores): ``finish``
      (outside that lock) copies the envelopes into one buffer of the pack's
      exact size, dropping each envelope once copied, so a pack costs little
      more than its own size in memory. The buffer is a NumPy array because
      NumPy copies with the GIL released and does not zero new memory first;
      ``bytearray`` does both under the GIL, and the writer threads then wait
      on each other (docs/benchmarks-engine.md, "Packs").
    * Staged (backends that store local files, ``backend.stager``): once
      ``SPILL_BYTES`` of envelopes are waiting, ``add`` hands them out as a
      ``Spill`` that the caller writes with ``spill`` after releasing the lock
      (one ``pwritev``, without the GIL), at the offsets ``add`` reserved. A pack
      being filled then holds at most about ``SPILL_BYTES`` in memory instead
      of up to the pack size, and a finished one nothing. Each spill is also
      fed to the pack's hash, in pack order whatever order the spills are
      written in (``_hash_in_order``), so ``finish`` never reads the file back
      (that cost a copy of every pack and megabyte-sized buffers that
      fragment the heap); ``commit`` moves it into place.
    """

    def __init__(self, stage: Callable[[], StagedObject] | None = None) -> None:
        self._parts: list[bytes | memoryview | None] = []
        self.size = 0
        self.blobs: list[PackedBlob] = []
        self._stage = stage
        self._staged: StagedObject | None = None
        self._parts_start = 0  # pack offset of _parts[0] when staged
        self._cond = threading.Condition()
        self._spilling = 0
        self._error: BaseException | None = None
        # Hashing in pack order: spills are numbered as ``add`` hands them out;
        # a spill written before its predecessors were hashed waits in ``_ready``
        # for the thread that is hashing (``_hashing``) to reach it.
        self._hasher = blake3.blake3()
        self._spills = 0
        self._next_hash = 0
        self._ready: dict[int, list[bytes | memoryview | None]] = {}
        self._hashing = False

    def add(
        self, blob_type: int, blob_id: bytes, envelope: bytes | memoryview, raw_length: int
    ) -> Spill | None:
        """Append a blob; when staged, may return envelopes for the caller to ``spill``."""
        n = len(envelope)
        self.blobs.append(PackedBlob(blob_type, blob_id, self.size, n, raw_length))
        self._parts.append(envelope)  # bytes or a read-only view (Sealer.seal_view): kept, not copied
        self.size += n
        if self._stage is None or self.size - self._parts_start < SPILL_BYTES:
            return None
        return self._next_spill(self._parts)

    def _next_spill(self, parts: list[bytes | memoryview | None]) -> Spill:
        spill = Spill(self._parts_start, parts, self._spills)
        self._spills += 1
        self._parts = []
        self._parts_start = self.size
        with self._cond:
            self._spilling += 1
        return spill

    def spill(self, spill: Spill) -> None:
        """Write envelopes ``add`` handed out (any thread; errors surface in ``finish``)."""
        try:
            try:
                self._staged_object().write_at(spill.offset, cast(list[bytes | memoryview], spill.parts))
            finally:
                self._hash_in_order(spill)  # even after an error: later spills wait for it
        except BaseException as e:
            with self._cond:
                self._error = self._error or e
        finally:
            with self._cond:
                self._spilling -= 1
                self._cond.notify_all()

    def _hash_in_order(self, spill: Spill) -> None:
        """Feed ``spill`` (and the spills after it that are ready) to the pack's hash.

        One thread hashes at a time; a spill whose predecessors are not hashed
        yet is left in ``_ready`` for that thread, so no thread ever waits.
        """
        with self._cond:
            self._ready[spill.seq] = spill.parts
            spill.parts = []
            if self._hashing:
                return
            self._hashing = True
        while True:
            with self._cond:
                parts = self._ready.pop(self._next_hash, None)
                if parts is None:
                    self._hashing = False
                    return
                self._next_hash += 1
            try:
                for p in parts:
                    assert p is not None
                    self._hasher.update(p)
            except BaseException:
                with self._cond:
                    self._hashing = False
                raise

    def _staged_object(self) -> StagedObject:
        with self._cond:
            if self._staged is None:
                assert self._stage is not None
                self._staged = self._stage()
            return self._staged

    def __len__(self) -> int:
        return len(self.blobs)

    def finish(self, sealer: Sealer) -> tuple[str, memoryview | None, list[PackedBlob]]:
        """(pack ID hex, pack bytes or None if staged, blobs). Then only ``commit``/``discard``."""
        plain = bytearray(_COUNT.pack(len(self.blobs)))
        for b in self.blobs:
            plain += _ENTRY.pack(b.type, b.id, b.length, b.raw_length)
        trailer = sealer.seal(Kind.TRAILER, bytes(plain))
        total = self.size + len(trailer) + TRAILER_LEN_SIZE
        if total > MAX_PACK_SIZE:
            raise ValueError("pack too large")
        parts, self._parts = self._parts, []
        parts += (trailer, _COUNT.pack(len(trailer)))
        if self._stage is not None:
            return self._finish_staged(parts)
        np = numpy()
        buf = np.empty(total, dtype=np.uint8)
        pos = 0
        for i, part in enumerate(parts):
            assert part is not None
            buf[pos : pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
            pos += len(part)
            parts[i] = None  # free it now: peak memory stays near one pack
        data = buf.data  # a memoryview of the array, no copy
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(), data, self.blobs

    def _finish_staged(self, parts: list[bytes | memoryview | None]) -> tuple[str, None, list[PackedBlob]]:
        self.spill(self._next_spill(parts))
        with self._cond:
            while self._spilling > 0:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._next_hash != self._spills or self._ready:
                raise AssertionError("a staged pack was not hashed whole")
        return self._hasher.hexdigest(), None, self.blobs

    def commit(self, key: str) -> None:
        """Store a staged pack under ``key`` (atomic and durable, like a put)."""
        self._staged_object().commit(key)

    def discard(self) -> None:
        """Drop a staged pack's temporary file, if any (unfinished or failed packs)."""
        with self._cond:
            staged, self._staged, self._stage = self._staged, None, None
        if staged is not None:
            staged.discard()


@dataclass(slots=True)
class Spill:
    """Envelopes to write at ``offset`` of a staged pack (from ``PackWriter.add``)."""

    offset: int
    parts: list[bytes | memoryview | None]
    seq: int  # its place in the pack's order of spills (hashing follows it)


def trailer_length(tail: bytes, name: str) -> int:
    if len(tail) < TRAILER_LEN_SIZE:
        raise CorruptObject(name, "truncated: no trailer length")
    return int(_COUNT.unpack(tail[-TRAILER_LEN_SIZE:])[0])


def parse_trailer(sealer: Sealer, envelope: bytes, *, pack_size: int, name: str) -> list[PackedBlob]:
    """Decrypt and validate a trailer; offsets must tile the pack exactly."""
    plain = sealer.open(Kind.TRAILER, envelope, name=name)
    if len(plain) < 4:
        raise CorruptObject(name, "trailer too short")
    (count,) = _COUNT.unpack_from(plain, 0)
    if len(plain) != 4 + count * _ENTRY.size:
        raise CorruptObject(name, "trailer length does not match its blob count")
    blobs: list[PackedBlob] = []
    offset = 0
    for i in range(count):
        t, bid, length, raw = _ENTRY.unpack_from(plain, 4 + i * _ENTRY.size)
        blobs.append(PackedBlob(t, bid, offset, length, raw))
        offset += length
    if offset + len(envelope) + TRAILER_LEN_SIZE != pack_size:
        raise CorruptObject(name, "trailer does not describe the pack's layout")
    return blobs


def verify_pack_bytes(data: bytes, pack_id: str) -> None:
    got = blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    if got != pack_id:
        raise CorruptObject(f"pack {pack_id}", f"content hash mismatch (got {got[:16]}…)")
