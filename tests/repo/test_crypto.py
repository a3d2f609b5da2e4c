"""The envelope codec: round trips, compression choice, and what it refuses."""

from __future__ import annotations

import os

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from resurgo.errors import CorruptObject, UnsupportedVersion
from resurgo.repo.crypto import (
    CIPHER_AES256GCM,
    FORMAT_VERSION,
    HEADER_LEN,
    NONCE_LEN,
    OVERHEAD,
    READ_VERSIONS,
    Compression,
    Kind,
    Sealer,
    peek_header,
)

from .helpers import QUICK

KEY = bytes(range(32))
SEALER = Sealer(KEY, compression_level=3)

kinds = st.sampled_from(list(Kind))
contexts = st.binary(max_size=40)
random_data = st.binary(max_size=5000)
# Compressible: a short random motif repeated, sometimes with a random tail.
compressible = st.builds(
    lambda motif, n, tail: motif * n + tail,
    st.binary(min_size=1, max_size=40),
    st.integers(2, 400),
    st.binary(max_size=50),
)
any_data = st.one_of(random_data, compressible)


def expected_compression(data: bytes, level: int = 3) -> Compression:
    if level == 0 or len(data) <= 64:
        return Compression.NONE
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    return Compression.ZSTD if len(packed) < len(data) - len(data) // 64 else Compression.NONE


@QUICK
@given(kind=kinds, data=any_data, context=contexts)
def test_sealed_envelope_opens_to_the_same_plaintext(kind: Kind, data: bytes, context: bytes) -> None:
    env = SEALER.seal(kind, data, context)
    assert SEALER.open(kind, env, context, name="x") == data
    version, cipher, comp, got_kind = peek_header(env)
    assert (version, cipher, got_kind) == (FORMAT_VERSION, CIPHER_AES256GCM, kind)
    assert comp == expected_compression(data)
    if comp == Compression.NONE:
        assert len(env) == OVERHEAD + len(data)
    else:
        assert len(env) < OVERHEAD + len(data)


@QUICK
@given(data=compressible)
def test_compressible_data_is_stored_compressed(data: bytes) -> None:
    if len(data) > 200:
        env = SEALER.seal(Kind.DATA, data)
        assert peek_header(env)[2] == Compression.ZSTD
        assert len(env) < len(data)


def test_random_data_is_stored_raw() -> None:
    data = os.urandom(100_000)
    env = SEALER.seal(Kind.DATA, data)
    assert peek_header(env)[2] == Compression.NONE
    assert len(env) == len(data) + OVERHEAD


@QUICK
@given(data=compressible)
def test_compression_can_be_turned_off(data: bytes) -> None:
    for env in (SEALER.seal(Kind.DATA, data, compress=False),
                Sealer(KEY, compression_level=0).seal(Kind.DATA, data)):
        assert peek_header(env)[2] == Compression.NONE
        assert len(env) == OVERHEAD + len(data)
        assert SEALER.open(Kind.DATA, env, name="x") == data


def test_two_seals_of_the_same_data_use_different_nonces() -> None:
    a = SEALER.seal(Kind.DATA, b"same")
    b = SEALER.seal(Kind.DATA, b"same")
    assert a[HEADER_LEN : HEADER_LEN + NONCE_LEN] != b[HEADER_LEN : HEADER_LEN + NONCE_LEN]


@QUICK
@given(kind=kinds, other=kinds, data=any_data, context=contexts, other_context=contexts)
def test_envelope_is_rejected_under_another_context_or_kind(
    kind: Kind, other: Kind, data: bytes, context: bytes, other_context: bytes
) -> None:
    env = SEALER.seal(kind, data, context)
    if other_context != context:
        with pytest.raises(CorruptObject, match="authentication failed"):
            SEALER.open(kind, env, other_context, name="obj")
    if other != kind:
        with pytest.raises(CorruptObject) as e:
            SEALER.open(other, env, context, name="obj")
        assert e.value.name == "obj"


@QUICK
@given(data=any_data, context=contexts)
def test_envelope_is_rejected_under_another_key(data: bytes, context: bytes) -> None:
    env = SEALER.seal(Kind.TREE, data, context)
    with pytest.raises(CorruptObject, match="authentication failed"):
        Sealer(bytes(32)).open(Kind.TREE, env, context, name="x")


@QUICK
@given(data=any_data, context=contexts, where=st.integers(0), mask=st.integers(1, 255))
def test_any_changed_byte_is_rejected(data: bytes, context: bytes, where: int, mask: int) -> None:
    env = bytearray(SEALER.seal(Kind.DATA, data, context))
    where %= len(env)
    env[where] ^= mask
    # A changed version byte reads as a format this build does not know, or,
    # if it becomes another known version, fails authentication.
    expected = UnsupportedVersion if where == 0 and env[0] not in READ_VERSIONS else CorruptObject
    with pytest.raises(expected):
        SEALER.open(Kind.DATA, bytes(env), context, name="blob")


@QUICK
@given(data=any_data, cut=st.integers(1))
def test_truncated_envelope_is_rejected(data: bytes, cut: int) -> None:
    env = SEALER.seal(Kind.SNAPSHOT, data)
    short = env[: len(env) - 1 - cut % len(env)]
    with pytest.raises(CorruptObject):
        SEALER.open(Kind.SNAPSHOT, short, name="s")


def _handmade(version: int, cipher: int, comp: int, kind: int, body: bytes, context: bytes = b"") -> bytes:
    header = bytes([version, cipher, comp, kind])
    nonce = os.urandom(12)
    return header + nonce + AESGCM(KEY).encrypt(nonce, body, header + context)


def test_envelope_of_a_newer_format_version_is_unsupported() -> None:
    env = _handmade(max(READ_VERSIONS) + 1, CIPHER_AES256GCM, 0, Kind.DATA, b"future")
    with pytest.raises(UnsupportedVersion, match="format version 3"):
        SEALER.open(Kind.DATA, env, name="x")


def test_handmade_envelope_matches_the_documented_layout() -> None:
    # docs/format.md: header | nonce | AES-256-GCM(body) with AAD = header || context.
    env = _handmade(1, 1, 0, Kind.TREE, b"tree bytes", b"\x01" + bytes(32))
    assert SEALER.open(Kind.TREE, env, b"\x01" + bytes(32), name="x") == b"tree bytes"
    packed = zstandard.ZstdCompressor(level=19).compress(b"a" * 1000)
    env = _handmade(1, 1, 1, Kind.INDEX, packed)
    assert SEALER.open(Kind.INDEX, env, name="x") == b"a" * 1000


def test_unknown_cipher_and_compression_are_corruption() -> None:
    with pytest.raises(CorruptObject, match="unknown cipher"):
        SEALER.open(Kind.DATA, _handmade(1, 9, 0, Kind.DATA, b"x"), name="x")
    with pytest.raises(CorruptObject, match="unknown compression"):
        SEALER.open(Kind.DATA, _handmade(1, 1, 7, Kind.DATA, b"x"), name="x")
    with pytest.raises(CorruptObject, match="bad compressed data"):
        SEALER.open(Kind.DATA, _handmade(1, 1, 1, Kind.DATA, b"not zstd"), name="x")


def test_sealer_refuses_a_short_key() -> None:
    with pytest.raises(ValueError):
        Sealer(b"short")


@QUICK
@given(kind=kinds, data=any_data, context=contexts)
def test_envelope_sealed_into_a_buffer_is_an_envelope_like_any_other(
    kind: Kind, data: bytes, context: bytes
) -> None:
    env = SEALER.seal_view(kind, data, context)
    assert env.readonly
    assert SEALER.open(kind, env, context, name="x") == data
    assert SEALER.open(kind, bytes(env), context, name="x") == data
    assert peek_header(env)[2] == expected_compression(data)
    assert len(env) == len(SEALER.seal(kind, data, context))
