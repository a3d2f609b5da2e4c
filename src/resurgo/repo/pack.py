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
from dataclasses import dataclass

import blake3
import numpy as np

from resurgo.errors import CorruptObject
from resurgo.repo.crypto import Kind, Sealer

_ENTRY = struct.Struct("<B32sII")
_COUNT = struct.Struct("<I")
TRAILER_LEN_SIZE = 4
# Packs are read by offset/length pairs stored in u32 fields.
MAX_PACK_SIZE = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class PackedBlob:
    type: int
    id: bytes
    offset: int
    length: int  # stored (envelope) length
    raw_length: int  # plaintext length


class PackWriter:
    """Accumulates blob envelopes in memory until the pack is finished. Not thread-safe.

    ``add`` runs under the repository's lock, so it only keeps a reference to
    the envelope. ``finish`` (outside that lock) copies the envelopes into one
    buffer of the pack's exact size, dropping each envelope once copied, so a
    pack costs little more than its own size in memory. The buffer is a NumPy
    array because NumPy copies with the GIL released and does not zero new
    memory first; ``bytearray`` does both under the GIL, and the writer
    threads then wait on each other (docs/benchmarks-engine.md, "Packs").
    """

    def __init__(self) -> None:
        self._parts: list[bytes | None] = []
        self.size = 0
        self.blobs: list[PackedBlob] = []

    def add(self, blob_type: int, blob_id: bytes, envelope: bytes | memoryview, raw_length: int) -> None:
        n = len(envelope)
        self.blobs.append(PackedBlob(blob_type, blob_id, self.size, n, raw_length))
        self._parts.append(envelope if isinstance(envelope, bytes) else bytes(envelope))
        self.size += n

    def __len__(self) -> int:
        return len(self.blobs)

    def finish(self, sealer: Sealer) -> tuple[str, memoryview, list[PackedBlob]]:
        """(pack ID hex, pack bytes, blobs). The writer must not be used afterwards."""
        plain = bytearray(_COUNT.pack(len(self.blobs)))
        for b in self.blobs:
            plain += _ENTRY.pack(b.type, b.id, b.length, b.raw_length)
        trailer = sealer.seal(Kind.TRAILER, bytes(plain))
        total = self.size + len(trailer) + TRAILER_LEN_SIZE
        if total > MAX_PACK_SIZE:
            raise ValueError("pack too large")
        buf = np.empty(total, dtype=np.uint8)
        parts, self._parts = self._parts, []
        parts += (trailer, _COUNT.pack(len(trailer)))
        pos = 0
        for i, part in enumerate(parts):
            assert part is not None
            buf[pos : pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
            pos += len(part)
            parts[i] = None  # free it now: peak memory stays near one pack
        data = buf.data  # a memoryview of the array, no copy
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(), data, self.blobs


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
