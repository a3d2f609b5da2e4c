"""The envelope: how every encrypted byte string in a repository is framed.

An *envelope* is ``header(4) || nonce(12) || AES-256-GCM(ciphertext || tag(16))``.
The header names the format version, the cipher, the compression of the
plaintext and the *kind* of object (data blob, tree blob, pack trailer, index,
snapshot, config, cache), so stored data describes itself. The header and a
caller-chosen *context* (a blob's ID) are the AEAD's associated data: a blob
cannot be moved under another ID or kind without failing authentication.

Compression is zstd, optionally with a *dictionary* (repo/dictionary.py): the
body is then the dictionary's 8-byte tag followed by the zstd frame, and the
envelope says format version 2, so that a reader that predates dictionaries
refuses it as an unsupported version instead of calling it damaged.

Nonces are 96 random bits from the OS CSPRNG per envelope. With random nonces
the collision risk stays below 2^-32 up to 2^32 envelopes per key (NIST SP
800-38D, 8.3); at the default 640 KiB mean chunk that is about 2.5 PiB of
unique data per repository key, far beyond the target. A deterministic nonce
(derived from the blob ID) was rejected: a blob re-encoded with another
compression level would reuse a nonce with different plaintext.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

import zstandard

from resurgo.errors import CorruptObject, UnsupportedVersion
from resurgo.repo import batch
from resurgo.repo.aead import AESGCM, InvalidTag
from resurgo.repo.lazynumpy import buffer, numpy
from resurgo.repo.lazynumpy import loaded as numpy_loaded

FORMAT_VERSION = 1
# Envelopes whose body needs a dictionary (compression ZSTD_DICT) say version 2;
# everything else is still written as version 1. Readers accept both.
FORMAT_VERSION_DICT = 2
READ_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_DICT)
CIPHER_AES256GCM = 1
HEADER_LEN = 4
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = HEADER_LEN + NONCE_LEN + TAG_LEN


DICT_TAG_LEN = 8


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1
    ZSTD_DICT = 2  # body = dictionary tag (8) || zstd frame made with that dictionary


class Kind(IntEnum):
    DATA = 0
    TREE = 1
    TRAILER = 2
    INDEX = 3
    SNAPSHOT = 4
    CONFIG = 5
    CACHE = 6
    DICT = 7


_HEADER = struct.Struct("<BBBB")
# zstd decompression must not be fooled into allocating absurd sizes by a
# hostile object: no legitimate object exceeds this.
MAX_PLAINTEXT = 1 << 30
# Blobs up to this size are compressed one level higher when a dictionary is
# used: with a dictionary, level 4 stores small text ~8 % smaller than level 3
# for ~20 % more time, and small blobs are a small share of the CPU time.
SMALL_BLOB = 64 << 10
# Plaintext bytes per step of ``Sealer.open_digest``.
DIGEST_PIECE = 1 << 20
# Plaintexts shorter than this are decompressed by open_digest in one call.
DIGEST_ONE_CALL = 64 << 10
# Plaintexts larger than POOLED_ABOVE are compressed with contexts shared by
# all threads (``_ContextPool``), at most LARGE_CONTEXTS per dictionary and
# level: a context keeps the workspace of the largest input it has seen (3.5
# MiB for a 4 MiB chunk at level 3; with a dictionary, zstd copies the
# digested dictionary's tables, 2.1 MiB at level 4, into the context for any
# input over 16 KiB), and more contexts than cores only take turns on them.
# Up to POOLED_ABOVE, a thread's own contexts stay at ~0.3 MiB.
POOLED_ABOVE = 16 << 10
# While NumPy is not loaded, this many envelopes are built in buffers that do
# not need it, the others in uninitialised NumPy buffers (``Sealer.seal_view``).
ENVELOPES_WITHOUT_NUMPY = 4096
LARGE_CONTEXTS = max(2, os.cpu_count() or 2)


def dictionary_level(level: int) -> int:
    """The zstd level of a blob sealed with a dictionary, for a repository at ``level``:
    one higher (such blobs are small, so the higher level costs little)."""
    return min(level + 1, 22)


class Dictionary:
    """A zstd dictionary stored in the repository, named in envelopes by its 8-byte tag.

    Thread-safe: the digested forms zstd needs (one per compression level, and
    one for decompression) are built once and shared by every thread.
    """

    def __init__(self, tag: bytes, data: bytes) -> None:
        if len(tag) != DICT_TAG_LEN:
            raise ValueError("a dictionary tag is 8 bytes")
        self.tag = tag
        self.data = data
        self._lock = threading.Lock()
        self._by_level: dict[int, zstandard.ZstdCompressionDict] = {}
        self._native: dict[int, object] = {}
        self._for_reading: zstandard.ZstdCompressionDict | None = None
        self._native_reading: object = None

    def for_level(self, level: int) -> zstandard.ZstdCompressionDict:
        d = self._by_level.get(level)
        if d is None:
            with self._lock:
                d = self._by_level.get(level)
                if d is None:
                    d = zstandard.ZstdCompressionDict(self.data)
                    d.precompute_compress(level=level)
                    self._by_level[level] = d
        return d

    def native(self, level: int) -> object:
        """This dictionary digested for ``batch.seal`` at ``level`` (a ``batch.CDict``)."""
        d = self._native.get(level)
        if d is None:
            assert batch.CDict is not None
            with self._lock:
                d = self._native.get(level)
                if d is None:
                    d = self._native[level] = batch.CDict(self.data, level)
        return d

    def native_reading(self) -> object:
        """This dictionary digested for ``batch.open_blobs`` (a ``batch.DDict``)."""
        d = self._native_reading
        if d is None:
            assert batch.DDict is not None
            with self._lock:
                d = self._native_reading
                if d is None:
                    d = self._native_reading = batch.DDict(self.data)
        return d

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        """A new zstd context compressing with this dictionary at ``level``.

        Frames carry no dictionary ID: the envelope names the dictionary by tag.
        """
        return zstandard.ZstdCompressor(dict_data=self.for_level(level), write_dict_id=False)

    def for_reading(self) -> zstandard.ZstdCompressionDict:
        d = self._for_reading
        if d is None:
            with self._lock:
                d = self._for_reading
                if d is None:
                    d = self._for_reading = zstandard.ZstdCompressionDict(self.data)
        return d


# Given a tag, the dictionary it names; raises CorruptObject if there is none.
DictionaryResolver = Callable[[bytes], Dictionary]


class _ContextPool:
    """zstd contexts for larger inputs, shared by every thread, a few per (dictionary, level).

    Per-thread contexts suit small blobs (a context sized for a few kilobytes
    is small). For larger ones, every thread that ever compressed one
    (scanners, savers, the thread that seals trailers) would keep megabytes
    of workspace; a pool bounds that to ``limit`` contexts per key. A thread that finds none free waits: the cores are busy
    compressing for the others meanwhile.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: dict[tuple[bytes, int], list[zstandard.ZstdCompressor]] = {}
        self._turns: dict[tuple[bytes, int], threading.BoundedSemaphore] = {}

    def compress(
        self, key: tuple[bytes, int], make: Callable[[], zstandard.ZstdCompressor],
        data: bytes | memoryview,
    ) -> bytes:
        with self._lock:
            turns = self._turns.get(key)
            if turns is None:
                turns = self._turns[key] = threading.BoundedSemaphore(self._limit)
                self._idle[key] = []
            idle = self._idle[key]
        turns.acquire()
        try:
            with self._lock:
                cctx = idle.pop() if idle else None
            if cctx is None:
                cctx = make()
            try:
                return cctx.compress(data)
            finally:
                with self._lock:
                    idle.append(cctx)
        finally:
            turns.release()


class Sealer:
    """Seals and opens envelopes with one 256-bit key. Thread-safe, GIL-free hot path."""

    def __init__(
        self, key: bytes, compression_level: int = 3, *, dictionaries: DictionaryResolver | None = None
    ) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)
        self._key = key  # for batch.seal
        self.compression_level = compression_level
        self._dictionaries = dictionaries
        # zstd contexts are not thread-safe, so each thread keeps its own:
        # creating one per blob costs ~100 us (its workspace is allocated and
        # initialised), more than compressing a small file. Inputs over
        # POOLED_ABOVE use the shared pool instead.
        self._local = threading.local()
        self._large = _ContextPool(LARGE_CONTEXTS)
        self._unloaded_envelopes = 0  # envelopes built without NumPy (seal_view)

    def compressor(self) -> zstandard.ZstdCompressor:
        """This thread's zstd context at the sealer's level (no dictionary)."""
        cached: tuple[int, zstandard.ZstdCompressor] | None = getattr(self._local, "cctx", None)
        if cached is None or cached[0] != self.compression_level:
            cached = self._local.cctx = (
                self.compression_level, zstandard.ZstdCompressor(level=self.compression_level)
            )
        return cached[1]

    def compress(self, data: bytes | memoryview) -> bytes:
        """``data`` as one zstd frame at the sealer's level, without a dictionary."""
        level = self.compression_level
        if len(data) > POOLED_ABOVE:
            return self._large.compress((b"", level), lambda: zstandard.ZstdCompressor(level=level), data)
        return self.compressor().compress(data)

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "dctx", None)
        if d is None:
            d = self._local.dctx = zstandard.ZstdDecompressor()
        return d

    def _dict_compressor(self, dictionary: Dictionary, level: int) -> zstandard.ZstdCompressor:
        # One context per thread, dictionary and level; a context is reused
        # with its digested dictionary, so each blob pays only for its own data.
        cache: dict[tuple[bytes, int], zstandard.ZstdCompressor] | None = getattr(
            self._local, "dict_cctx", None
        )
        if cache is None:
            cache = self._local.dict_cctx = {}
        c = cache.get((dictionary.tag, level))
        if c is None:
            c = cache[(dictionary.tag, level)] = dictionary.compressor(level)
        return c

    def _dict_decompressor(self, dictionary: Dictionary) -> zstandard.ZstdDecompressor:
        cache: dict[bytes, zstandard.ZstdDecompressor] | None = getattr(self._local, "dict_dctx", None)
        if cache is None:
            cache = self._local.dict_dctx = {}
        d = cache.get(dictionary.tag)
        if d is None:
            d = cache[dictionary.tag] = zstandard.ZstdDecompressor(dict_data=dictionary.for_reading())
        return d

    def seal(
        self,
        kind: Kind,
        plaintext: bytes | memoryview,
        context: bytes = b"",
        *,
        compress: bool = True,
        dictionary: Dictionary | None = None,
    ) -> bytes:
        """Compress (when it helps, with ``dictionary`` if given) and encrypt into an envelope."""
        header, body = self._encode(kind, plaintext, compress, dictionary)
        nonce = os.urandom(NONCE_LEN)
        return header + nonce + self._aead.encrypt(nonce, body, header + context)

    def seal_view(
        self,
        kind: Kind,
        plaintext: bytes | memoryview,
        context: bytes = b"",
        *,
        compress: bool = True,
        dictionary: Dictionary | None = None,
    ) -> memoryview:
        """``seal``, returning a read-only view of a buffer the ciphertext was encrypted into.

        The path for blobs: ``seal`` builds ``header + nonce + ciphertext``,
        two fresh allocations and a copy of the whole envelope with the GIL
        held; encrypting into a NumPy buffer (not zeroed first) after the
        header and nonce avoids both (1.3 ms -> 0.13 ms per MiB, measured).
        """
        header, body = self._encode(kind, plaintext, compress, dictionary)
        nonce = os.urandom(NONCE_LEN)
        size = len(body) + OVERHEAD
        if not numpy_loaded() and self._unloaded_envelopes < ENVELOPES_WITHOUT_NUMPY:
            # Until something else needs NumPy, envelopes go in buffers that
            # do not import it (``lazynumpy.buffer``), so a backup that saves
            # a few trees and files never does. Only so many: a million small
            # files sealed in bytearrays peaked 35 MiB higher (521 against 485
            # MiB), and 14 MiB when only the first 65,536 were.
            self._unloaded_envelopes += 1  # a race only lets a few more through
            view = buffer(size)
        else:
            view = numpy().empty(size, dtype="u1").data
        view[:HEADER_LEN] = header
        view[HEADER_LEN : HEADER_LEN + NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, body, header + context, view[HEADER_LEN + NONCE_LEN :])
        return view.toreadonly()

    def plan(
        self, size: int, compress: bool, dictionary: Dictionary | None
    ) -> tuple[int, Dictionary | None]:
        """(zstd level, dictionary) to try on a plaintext of ``size`` bytes; level 0: store it.

        Whether the result is kept is decided after compressing (``_encode``).
        """
        if not compress or self.compression_level <= 0 or size <= 64:
            return 0, None
        if dictionary is not None and size <= SMALL_BLOB:
            return dictionary_level(self.compression_level), dictionary
        return self.compression_level, dictionary

    def _encode(
        self, kind: Kind, plaintext: bytes | memoryview, compress: bool, dictionary: Dictionary | None
    ) -> tuple[bytes, bytes | memoryview]:
        """(header, body): the envelope's header, and the plaintext compressed when it helps."""
        comp = Compression.NONE
        version = FORMAT_VERSION
        body: bytes | memoryview = plaintext
        n = len(plaintext)
        level, dictionary = self.plan(n, compress, dictionary)
        if level:
            if dictionary is None:
                packed = self.compress(plaintext)
            elif n > POOLED_ABOVE:
                d = dictionary
                packed = self._large.compress(
                    (d.tag, level),
                    lambda: d.compressor(level),
                    plaintext,
                )
            else:
                packed = self._dict_compressor(dictionary, level).compress(plaintext)
            packed_len = len(packed) if dictionary is None else len(packed) + DICT_TAG_LEN
            # Stored raw when compression does not help (random data, media).
            # batch.seal (_seal.c) applies the same rule.
            if packed_len < n - n // 64:
                if dictionary is None:
                    body = packed
                    comp = Compression.ZSTD
                else:
                    body = dictionary.tag + packed
                    comp = Compression.ZSTD_DICT
                    version = FORMAT_VERSION_DICT
        return _HEADER.pack(version, CIPHER_AES256GCM, comp, kind), body

    def seal_window(
        self, kind: Kind, data: bytes | memoryview, items: list[tuple[int, int, bytes, Dictionary | None]]
    ) -> list[memoryview]:
        """``seal_view`` of each ``(offset, size, context, dictionary)`` of ``data``,
        in one native call without the GIL (``batch.seal``; it must be built).

        The envelopes are read-only views of one ``bytes`` object.
        """
        assert batch.seal is not None
        planned: list[batch.Item] = []
        for offset, size, context, dictionary in items:
            level, d = self.plan(size, True, dictionary)
            if d is None:
                planned.append((offset, size, context, level, None, None))
            else:
                planned.append((offset, size, context, level, d.native(level), d.tag))
        envelopes, spans = batch.seal(self._key, kind, data, planned)
        view = memoryview(envelopes)
        return [view[offset : offset + length] for offset, length in spans]

    def open(
        self, kind: Kind, envelope: bytes | memoryview, context: bytes = b"", *, name: str
    ) -> bytes:
        """Authenticate, decrypt and decompress an envelope; ``name`` is for error messages."""
        if batch.open_small is not None and len(envelope) <= batch.OPEN_SMALL_UPTO:
            # A tree read back to be compared: natively, holding the GIL (batch.py).
            plain = batch.open_small(self._key, kind, envelope, context)
            if plain is not None:
                return plain
        header, version, comp = _check_header(kind, envelope, name)
        nonce = envelope[HEADER_LEN : HEADER_LEN + NONCE_LEN]
        try:
            body = self._aead.decrypt(nonce, envelope[HEADER_LEN + NONCE_LEN :], header + context)
        except InvalidTag:
            raise CorruptObject(name, "authentication failed (damaged, or not written with this key)")
        if comp == Compression.NONE:
            return body
        dctx, frame = self._frame(version, comp, body, name)
        try:
            return dctx.decompress(frame, max_output_size=MAX_PLAINTEXT)
        except zstandard.ZstdError as e:
            raise CorruptObject(name, f"bad compressed data: {e}")

    def open_blobs(
        self, data: bytes | memoryview, items: list[batch.Opening], id_key: bytes,
        dictionaries: list[Dictionary],
    ) -> list[bytes | None]:
        """The plaintext of each item ``(offset, length, kind, context, raw length,
        blob ID)`` of ``data`` that opens cleanly, is that long and has that keyed
        BLAKE3 ID (``id_key``), natively in one call (``batch.open_blobs``); None
        for every other one, and for all of them without the native stage: the
        caller opens those with ``open``, which names what is wrong.
        ``dictionaries``: those the envelopes may name (any other is left to ``open``)."""
        if batch.open_blobs is None:
            return [None] * len(items)
        dicts = [(d.tag, d.native_reading()) for d in dictionaries]
        return batch.open_blobs(self._key, id_key, data, items, dicts)

    def check_blobs(
        self, data: bytes | memoryview, items: list[batch.Opening], id_key: bytes,
        dictionaries: list[Dictionary],
    ) -> bytes | None:
        """``open_blobs`` without keeping the plaintexts: one byte per item, 1 when
        it opens cleanly with its length and ID; None without the native stage."""
        if batch.check_blobs is None:
            return None
        dicts = [(d.tag, d.native_reading()) for d in dictionaries]
        return batch.check_blobs(self._key, id_key, data, items, dicts)

    def open_digest(
        self, kind: Kind, envelope: bytes | memoryview, context: bytes, hasher: _Hasher, *,
        expect: int, name: str,
    ) -> int:
        """``hasher.update(open(...))`` without keeping the plaintext; returns its length.

        ``expect`` is the plaintext length the caller expects. The plaintext
        goes through buffers this thread keeps for the next call (fresh
        megabyte-sized buffers per blob cost page faults, and the kernel
        zeroing them): the envelope is decrypted into one (as large as the
        largest envelope), decompressed into another ``DIGEST_PIECE`` bytes at
        a time, each piece hashed in one call: few enough calls that a
        verifying thread seldom gives up the GIL (and waits to get it back
        while other threads run Python code). The length returned is exact up
        to ``expect + 1``; a longer plaintext returns more than ``expect``
        without being hashed whole. As in ``open``, a zstd stream ends with its
        first frame (unless that frame ends exactly at the end of a piece).
        """
        header, version, comp = _check_header(kind, envelope, name)
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
        dctx, frame = self._frame(version, comp, body, name)
        if expect < DIGEST_ONE_CALL and 0 <= _content_size(frame) <= expect:
            # A small blob whose frame states a size no larger than expected,
            # in one call: a stream reader costs more to set up (~2 us) than
            # decompressing a few kilobytes, and the stated size bounds the
            # output. Anything unusual (no size, too long, damaged) takes the
            # streaming path below, which says exactly what is wrong.
            try:
                plain = dctx.decompress(frame)
            except zstandard.ZstdError:
                pass
            else:
                hasher.update(plain)
                return len(plain)
        piece = _scratch(local, "piece", min(DIGEST_PIECE, expect + 1))
        total = 0
        try:
            with dctx.stream_reader(frame) as reader:
                # A short read is the end of the first frame (or of the data).
                while total <= expect and (n := reader.readinto(piece)):
                    total += n
                    if total <= expect:
                        hasher.update(piece[:n])
                    if n < len(piece):
                        break
        except zstandard.ZstdError as e:
            raise CorruptObject(name, f"bad compressed data: {e}")
        return total

    def _frame(
        self, version: int, comp: int, body: bytes | memoryview, name: str
    ) -> tuple[zstandard.ZstdDecompressor, bytes | memoryview]:
        """The decompression context for a compressed body, and the zstd frame in it."""
        if comp == Compression.ZSTD:
            return self._decompressor(), body
        if comp == Compression.ZSTD_DICT and version == FORMAT_VERSION_DICT:
            if len(body) < DICT_TAG_LEN:
                raise CorruptObject(name, "too short for a dictionary tag")
            if self._dictionaries is None:
                raise CorruptObject(name, "needs a dictionary, and none can be loaded here")
            dictionary = self._dictionaries(bytes(body[:DICT_TAG_LEN]))
            return self._dict_decompressor(dictionary), memoryview(body)[DICT_TAG_LEN:]
        raise CorruptObject(name, f"unknown compression {comp}")


def _content_size(frame: bytes | memoryview) -> int:
    """The plaintext size a zstd frame's header states; -1 if it states none or is unreadable."""
    try:
        return zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        return -1


def _scratch(local: threading.local, name: str, size: int) -> memoryview:
    """``size`` bytes of a buffer kept per thread, grown to the largest size asked for."""
    buf: bytearray | None = getattr(local, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        setattr(local, name, buf)
    return memoryview(buf)[:size]


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...


def _check_header(kind: Kind, envelope: bytes | memoryview, name: str) -> tuple[bytes, int, int]:
    """(header, version, compression) of an envelope of ``kind``, or the error that makes it unreadable."""
    if len(envelope) < OVERHEAD:
        raise CorruptObject(name, "too short to be an envelope")
    header = bytes(envelope[:HEADER_LEN])
    version, cipher, comp, got_kind = _HEADER.unpack(header)
    if version not in READ_VERSIONS:
        raise UnsupportedVersion(
            f"{name}: format version {version} is not supported "
            f"(this resurgo reads {' and '.join(map(str, READ_VERSIONS))})"
        )
    if cipher != CIPHER_AES256GCM:
        raise CorruptObject(name, f"unknown cipher {cipher}")
    if got_kind != kind:
        raise CorruptObject(name, f"expected a {Kind(kind).name.lower()} object, found kind {got_kind}")
    return header, version, comp


def peek_header(envelope: bytes | memoryview) -> tuple[int, int, int, int]:
    """(version, cipher, compression, kind) of an envelope without decrypting it."""
    return _HEADER.unpack(bytes(envelope[:HEADER_LEN]))
