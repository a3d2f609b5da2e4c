"""Blob IDs and envelopes for a window of small blobs, in one native call each.

The functions are ``resurgo.repo._seal`` (``_seal.c``), which hashes, compresses
and encrypts without the GIL, so that a backup's other thread runs Python
meanwhile instead of taking turns with it at every call (docs/benchmarks.md,
optimisation log). They decide nothing: which blobs are new is the
repository's (``Repository.save_data_window``), each blob's compression level
and dictionary the sealer's (``Sealer.plan``); what they produce is byte for
byte what ``keys.MasterKey.blob_id`` and ``crypto.Sealer`` would (the nonces
aside, which are random).

- ``blob_ids(key, data, spans)``: the keyed BLAKE3-256 of ``data[offset:offset
  + size]`` for each ``(offset, size)`` of ``spans``.
- ``seal(key, kind, data, items)``: each item ``(offset, size, context, level,
  cdict, tag)`` of ``data`` sealed into an envelope of ``kind`` with the
  AES-256-GCM ``key`` and associated data ``header || context``, compressed
  at ``level`` (0: stored as it is) with the digested dictionary ``cdict``
  (``CDict(data, level)``, None for none) named by its 8-byte ``tag``.
  Returns ``(envelopes, spans)``: envelope ``i`` is ``envelopes[offset:offset
  + length]`` for ``spans[i]``.

Both keep the GIL when there is little work (``HASH_HOLDS_GIL_UPTO``,
``SEAL_HOLDS_GIL_UPTO`` bytes in all): taking it back after releasing it
waits for the other thread, which costs more than hashing or sealing a
directory's tree. The repository uses them for every blob that small
(``Repository.blob_id``, ``_seal_one``) for that reason.

- ``open_small(key, kind, envelope, context)``: the plaintext of a small
  envelope without a dictionary, holding the GIL; None for anything else or
  anything wrong, which ``crypto.Sealer.open`` then opens (or names the error
  of) itself. It is called for envelopes up to ``OPEN_SMALL_UPTO`` bytes.

- ``open_blobs(key, id_key, data, items, dicts)``: each item ``(offset,
  length, kind, context, raw_length, blob_id)`` of ``data`` (the envelopes of
  a range read from a pack) authenticated, decrypted, decompressed (with the
  ``DDict`` of its dictionary, from ``dicts``: ``(tag, DDict)`` pairs) and
  checked against its length and its keyed BLAKE3 ID, all without the GIL
  beyond ``OPEN_HOLDS_GIL_UPTO`` bytes; None for each one that does not open
  cleanly, which ``crypto.Sealer.open`` then opens or names the error of. For
  a restore's small files.
- ``check_blobs(key, id_key, data, items, dicts)``: ``open_blobs`` without
  keeping the plaintexts (each is decompressed into one scratch buffer and
  hashed); one byte per item, 1 when it opens cleanly with its length and
  ID. For check --read-data.
- ``gcm(decrypt, key, nonce, data, aad[, out])``: AES-256-GCM of one
  message (``ciphertext || tag``), for ``aead.AESGCM``: the result as bytes
  (None when decrypting and the tag does not hold), or written into ``out``
  (exactly the result's size) and whether the tag held; the GIL released
  over ``SEAL_HOLDS_GIL_UPTO`` bytes.
- ``digest(parts)``: the plain BLAKE3-256 of the concatenation of ``parts``
  (a list of bytes-like objects), equal to ``blake3.blake3``'s, holding the
  GIL up to ``HASH_HOLDS_GIL_UPTO`` bytes: for the signature of each
  directory a backup lists (ops/dircache.py), a few KB that blake3-py hashes
  with the GIL released.

All of them are None when the extension is not built (no compiler, no libzstd
or libcrypto headers at install time, another platform): every blob is then
hashed and sealed in Python, with the same result. ``NATIVE_EXPECTED`` says
whether this platform should have it (tests fail in CI when it is missing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

NATIVE_EXPECTED = sys.platform.startswith("linux")

# _seal.c's limits (kept equal there): more bytes than these in one call, and
# the call releases the GIL.
HASH_HOLDS_GIL_UPTO = 64 * 1024
SEAL_HOLDS_GIL_UPTO = 16 * 1024
OPEN_SMALL_UPTO = 16 * 1024
OPEN_HOLDS_GIL_UPTO = 16 * 1024

Span = tuple[int, int]
# (offset, size, context, level, cdict or None, tag or None)
Item = tuple[int, int, bytes, int, Any, bytes | None]

blob_ids: Callable[[bytes, bytes | memoryview, list[Span]], list[bytes]] | None
seal: Callable[[bytes, int, bytes | memoryview, list[Item]], tuple[bytes, list[Span]]] | None
CDict: Callable[[bytes, int], Any] | None
open_small: Callable[[bytes, int, bytes | memoryview, bytes], bytes | None] | None
digest: Callable[[list[bytes | bytearray | memoryview]], bytes] | None
DDict: Callable[[bytes], Any] | None
# (offset, length, kind, context, raw length, blob ID)
Opening = tuple[int, int, int, bytes, int, bytes]
open_blobs: Callable[
    [bytes, bytes, bytes | memoryview, list[Opening], list[tuple[bytes, Any]]], list[bytes | None]
] | None
check_blobs: Callable[
    [bytes, bytes, bytes | memoryview, list[Opening], list[tuple[bytes, Any]]], bytes
] | None
gcm: Callable[..., bytes | bool | None] | None
try:
    from resurgo.repo._seal import (
        CDict,
        DDict,
        blob_ids,
        check_blobs,
        digest,
        gcm,
        open_blobs,
        open_small,
        seal,
    )
except ImportError:
    blob_ids = seal = CDict = open_small = digest = DDict = open_blobs = check_blobs = gcm = None
