"""The envelope: how every encrypted byte string in a repository is framed.

An *envelope* is ``header(4) || nonce(12) || AES-256-GCM(ciphertext || tag(16))``.
The header names the format version, the cipher, the compression of the
plaintext and the *kind* of object (data blob, tree blob, pack trailer, index,
snapshot, config, cache), so stored data describes itself. The header and a
caller-chosen *context* (a blob's ID) are the AEAD's associated data: a blob
cannot be moved under another ID or kind without failing authentication.

Nonces are 96 random bits from the OS CSPRNG per envelope. With random nonces
the collision risk stays below 2^-32 up to 2^32 envelopes per key (NIST SP
800-38D, 8.3); at the default 1 MiB average chunk that is about 4 PiB of unique
data per repository key, far beyond the target. A deterministic nonce
(derived from the blob ID) was rejected: a blob re-encoded with another
compression level would reuse a nonce with different plaintext.
"""

from __future__ import annotations

import os
import struct
import threading
from enum import IntEnum
from typing import Protocol

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resurgo.errors import CorruptObject, UnsupportedVersion

FORMAT_VERSION = 1
CIPHER_AES256GCM = 1
HEADER_LEN = 4
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = HEADER_LEN + NONCE_LEN + TAG_LEN


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1


class Kind(IntEnum):
    DATA = 0
    TREE = 1
    TRAILER = 2
    INDEX = 3
    SNAPSHOT = 4
    CONFIG = 5
    CACHE = 6


_HEADER = struct.Struct("<BBBB")
# zstd decompression must not be fooled into allocating absurd sizes by a
# hostile object: no legitimate object exceeds this.
MAX_PLAINTEXT = 1 << 30


class Sealer:
    """Seals and opens envelopes with one 256-bit key. Thread-safe, GIL-free hot path."""

    def __init__(self, key: bytes, compression_level: int = 3) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)
        self.compression_level = compression_level
        # zstd contexts are not thread-safe, so each thread keeps its own:
        # creating one per blob costs ~100 us (its workspace is allocated and
        # initialised), more than compressing a small file.
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        cached: tuple[int, zstandard.ZstdCompressor] | None = getattr(self._local, "cctx", None)
        if cached is None or cached[0] != self.compression_level:
            cached = self._local.cctx = (
                self.compression_level, zstandard.ZstdCompressor(level=self.compression_level)
            )
        return cached[1]

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "dctx", None)
        if d is None:
            d = self._local.dctx = zstandard.ZstdDecompressor()
        return d

    def seal(
        self,
        kind: Kind,
        plaintext: bytes | memoryview,
        context: bytes = b"",
        *,
        compress: bool = True,
    ) -> bytes:
        """Compress (when it helps) and encrypt ``plaintext`` into an envelope."""
        comp = Compression.NONE
        body: bytes | memoryview = plaintext
        if compress and self.compression_level > 0 and len(plaintext) > 64:
            packed = self._compressor().compress(plaintext)
            # Stored raw when compression does not help (random data, media).
            if len(packed) < len(plaintext) - len(plaintext) // 64:
                body = packed
                comp = Compression.ZSTD
        header = _HEADER.pack(FORMAT_VERSION, CIPHER_AES256GCM, comp, kind)
        nonce = os.urandom(NONCE_LEN)
        return header + nonce + self._aead.encrypt(nonce, body, header + context)

    def open(
        self, kind: Kind, envelope: bytes | memoryview, context: bytes = b"", *, name: str
    ) -> bytes:
        """Authenticate, decrypt and decompress an envelope; ``name`` is for error messages."""
        header, comp = _check_header(kind, envelope, name)
        nonce = envelope[HEADER_LEN : HEADER_LEN + NONCE_LEN]
        try:
            body = self._aead.decrypt(nonce, envelope[HEADER_LEN + NONCE_LEN :], header + context)
        except InvalidTag:
            raise CorruptObject(name, "authentication failed (damaged, or not written with this key)")
        if comp == Compression.NONE:
            return body
        if comp == Compression.ZSTD:
            try:
                return self._decompressor().decompress(body, max_output_size=MAX_PLAINTEXT)
            except zstandard.ZstdError as e:
                raise CorruptObject(name, f"bad compressed data: {e}")
        raise CorruptObject(name, f"unknown compression {comp}")

    def open_digest(
        self, kind: Kind, envelope: bytes | memoryview, context: bytes, hasher: _Hasher, *,
        expect: int, name: str,
    ) -> int:
        """``hasher.update(open(...))`` without keeping the plaintext; returns its length.

        ``expect`` is the plaintext length the caller expects. The plaintext
        goes through two buffers this thread keeps for the next call (fresh
        megabyte-sized buffers per blob cost page faults, and the kernel
        zeroing them): the envelope is decrypted into one, decompressed into
        the other, and hashed in one call: the fewer times a verifying thread
        gives up the GIL, the less it waits to get it back while other threads
        run Python code. The length returned is exact up to ``expect + 1``;
        a longer plaintext returns ``expect + 1`` without being hashed whole.
        As in ``open``, only the first zstd frame counts.
        """
        header, comp = _check_header(kind, envelope, name)
        size = len(envelope) - OVERHEAD
        local = self._local
        body = _scratch(local, "open_buf", size)
        try:
            self._aead.decrypt_into(
                envelope[HEADER_LEN : HEADER_LEN + NONCE_LEN], envelope[HEADER_LEN + NONCE_LEN :],
                header + context, body,
            )
        except InvalidTag:
            raise CorruptObject(name, "authentication failed (damaged, or not written with this key)")
        if comp == Compression.NONE:
            hasher.update(body)
            return size
        if comp != Compression.ZSTD:
            raise CorruptObject(name, f"unknown compression {comp}")
        out = _scratch(local, "plain_buf", min(expect, MAX_PLAINTEXT) + 1)
        try:
            # One call: the reader stops at the end of the first frame (as
            # ``decompress`` does) or once ``out`` is full.
            with self._decompressor().stream_reader(body) as reader:
                n = reader.readinto(out)
        except zstandard.ZstdError as e:
            raise CorruptObject(name, f"bad compressed data: {e}")
        if n <= expect:
            hasher.update(out[:n])
        return int(n)


def _scratch(local: threading.local, name: str, size: int) -> memoryview:
    """``size`` bytes of a buffer kept per thread, grown to the largest size asked for."""
    buf: bytearray | None = getattr(local, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        setattr(local, name, buf)
    return memoryview(buf)[:size]


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...


def _check_header(kind: Kind, envelope: bytes | memoryview, name: str) -> tuple[bytes, int]:
    """(header, compression) of an envelope of ``kind``, or the error that makes it unreadable."""
    if len(envelope) < OVERHEAD:
        raise CorruptObject(name, "too short to be an envelope")
    header = bytes(envelope[:HEADER_LEN])
    version, cipher, comp, got_kind = _HEADER.unpack(header)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(
            f"{name}: format version {version} is not supported (this resurgo reads {FORMAT_VERSION})"
        )
    if cipher != CIPHER_AES256GCM:
        raise CorruptObject(name, f"unknown cipher {cipher}")
    if got_kind != kind:
        raise CorruptObject(name, f"expected a {Kind(kind).name.lower()} object, found kind {got_kind}")
    return header, comp


def peek_header(envelope: bytes | memoryview) -> tuple[int, int, int, int]:
    """(version, cipher, compression, kind) of an envelope without decrypting it."""
    return _HEADER.unpack(bytes(envelope[:HEADER_LEN]))
