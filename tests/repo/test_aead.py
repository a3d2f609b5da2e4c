"""AES-256-GCM of one message (repo/aead.py): the native path against cryptography's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as Library
from hypothesis import given, settings
from hypothesis import strategies as st

from resurgo.repo import batch
from resurgo.repo.aead import AESGCM, InvalidTag

KEY = bytes(range(32))
NONCE = bytes(range(100, 112))

# Around the size over which the native call releases the GIL, and one large.
_SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(batch.SEAL_HOLDS_GIL_UPTO - 20, batch.SEAL_HOLDS_GIL_UPTO + 20),
    st.just(3 << 20),
)


@pytest.fixture(params=["native", "library"])
def cipher(request, native_seal, monkeypatch):
    """``AESGCM`` natively, and with the extension's AEAD taken away (cryptography)."""
    if request.param == "library":
        monkeypatch.setattr(batch, "gcm", None)
    return AESGCM(KEY)


@settings(max_examples=40, deadline=None)
@given(size=_SIZES, aad=st.binary(max_size=80), seed=st.integers(0, 2**32 - 1))
def test_both_paths_encrypt_to_the_librarys_bytes_and_back(native_seal, size, aad, seed) -> None:
    data = os.urandom(size) if size > 64 else bytes((seed + i) % 256 for i in range(size))
    expected = Library(KEY).encrypt(NONCE, data, aad)
    native = AESGCM(KEY)
    assert native.encrypt(NONCE, data, aad) == expected
    assert native.decrypt(NONCE, expected, aad) == data
    out = bytearray(size + 16)
    native.encrypt_into(NONCE, memoryview(data), aad, memoryview(out))
    assert bytes(out) == expected
    plain = bytearray(size)
    native.decrypt_into(NONCE, memoryview(expected), aad, memoryview(plain))
    assert bytes(plain) == data


def test_the_native_path_does_not_use_the_library(native_seal) -> None:
    assert AESGCM(KEY)._fallback is None


@pytest.mark.parametrize("damage", ["ciphertext", "tag", "aad", "nonce", "key"])
def test_a_damaged_message_fails_authentication_on_both_paths(cipher, damage) -> None:
    data = os.urandom(batch.SEAL_HOLDS_GIL_UPTO * 2)
    sealed = bytearray(cipher.encrypt(NONCE, data, b"header"))
    aad, nonce, key = b"header", NONCE, KEY
    if damage == "ciphertext":
        sealed[100] ^= 1
    elif damage == "tag":
        sealed[-1] ^= 0x80
    elif damage == "aad":
        aad = b"headeR"
    elif damage == "nonce":
        nonce = bytes(12)
    else:
        key = bytes(32)
    opener = AESGCM(key)
    with pytest.raises(InvalidTag):
        opener.decrypt(nonce, bytes(sealed), aad)
    with pytest.raises(InvalidTag):
        opener.decrypt_into(nonce, bytes(sealed), aad, memoryview(bytearray(len(data))))


def test_a_message_shorter_than_its_tag_fails_authentication(cipher) -> None:
    for short in (b"", b"x" * 15):
        with pytest.raises(InvalidTag):
            cipher.decrypt(NONCE, short, b"")
        with pytest.raises(InvalidTag):
            cipher.decrypt_into(NONCE, short, b"", memoryview(bytearray(0)))


def test_bad_arguments_are_refused_with_a_clear_error(native_seal) -> None:
    with pytest.raises(ValueError, match="32-byte key"):
        AESGCM(b"short")
    c = AESGCM(KEY)
    with pytest.raises(ValueError, match="12-byte nonce"):
        c.encrypt(b"n" * 8, b"data", b"")
    with pytest.raises(ValueError, match="holds 3 bytes, not 20"):
        c.encrypt_into(NONCE, b"data", b"", memoryview(bytearray(3)))


def test_opening_a_repository_and_backing_up_never_imports_cryptography(native_seal, tmp_path) -> None:
    # The point of the native AEAD: cryptography's import cost 30-80 ms of
    # every command's start.
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"hello" * 1000)
    code = f"""
import sys
from resurgo.repo.keys import KDFParams
from resurgo.session import open_repo
from resurgo.ops.backup import backup_paths
from resurgo.progress import NullReporter
repo = open_repo({str(tmp_path / 'repo')!r}, "pw", create=True, kdf=KDFParams.weak_for_tests())
repo.close()
repo = open_repo({str(tmp_path / 'repo')!r}, "pw", cache_dir=None)
backup_paths(repo, [{str(src)!r}], reporter=NullReporter())
repo.close()
print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

