"""AES-256-GCM of one message at a time: the cipher of envelopes and key files.

``AESGCM`` has the four calls crypto.py and keys.py use, each message
``ciphertext || 16-byte tag`` with a 12-byte nonce and associated data. It
runs in the native ``_seal`` extension (OpenSSL's EVP, as the batches of
small blobs there do) when that is built: importing ``cryptography``, whose
AESGCM did this before, cost 30-80 ms of every command's start, and held the
GIL while it encrypted a large blob. Without the extension, ``cryptography``
does it, imported on first use. Either way a tag that does not hold raises
``InvalidTag``: ``decrypt`` then returns nothing, and what ``decrypt_into``
wrote into its buffer (the cipher decrypts before the tag is checked) must
not be used.
"""

from __future__ import annotations

from typing import Any

from resurgo.repo import batch

_Buf = bytes | bytearray | memoryview


class InvalidTag(Exception):
    """The tag does not authenticate the message and its associated data."""


class AESGCM:
    """AES-256-GCM with one 32-byte key."""

    __slots__ = ("_fallback", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._key = bytes(key)
        self._fallback: Any = None
        if batch.gcm is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM as Library

            self._fallback = Library(self._key)

    def encrypt(self, nonce: _Buf, data: _Buf, aad: _Buf) -> bytes:
        if self._fallback is not None:
            return bytes(self._fallback.encrypt(nonce, data, aad))
        assert batch.gcm is not None
        out = batch.gcm(False, self._key, nonce, data, aad)
        assert isinstance(out, bytes)
        return out

    def encrypt_into(self, nonce: _Buf, data: _Buf, aad: _Buf, out: memoryview) -> None:
        """Write ``ciphertext || tag`` into ``out``, exactly ``len(data) + 16`` bytes."""
        if self._fallback is not None:
            self._fallback.encrypt_into(nonce, data, aad, out)
            return
        assert batch.gcm is not None
        batch.gcm(False, self._key, nonce, data, aad, out)

    def decrypt(self, nonce: _Buf, data: _Buf, aad: _Buf) -> bytes:
        if self._fallback is not None:
            return bytes(self._library_call(self._fallback.decrypt, nonce, data, aad))
        assert batch.gcm is not None
        plain = batch.gcm(True, self._key, nonce, data, aad)
        if plain is None:
            raise InvalidTag
        assert isinstance(plain, bytes)
        return plain

    def decrypt_into(self, nonce: _Buf, data: _Buf, aad: _Buf, out: memoryview) -> None:
        """Write the plaintext into ``out``, exactly ``len(data) - 16`` bytes."""
        if self._fallback is not None:
            self._library_call(self._fallback.decrypt_into, nonce, data, aad, out)
            return
        assert batch.gcm is not None
        if not batch.gcm(True, self._key, nonce, data, aad, out):  # False also when shorter than the tag
            raise InvalidTag

    @staticmethod
    def _library_call(call: Any, *args: Any) -> Any:
        from cryptography.exceptions import InvalidTag as LibraryInvalidTag

        try:
            return call(*args)
        except LibraryInvalidTag:
            raise InvalidTag from None
