"""Keys: the master key material and the password-wrapped key files that hold it.

The *master key* is 64 random bytes drawn at ``init``: 32 bytes of AES-256-GCM
encryption key and 32 bytes of BLAKE3 MAC key for blob IDs. It never changes
for the life of a repository, so keys can be added, removed and re-passworded
without re-encrypting any data.

A *key file* (``keys/<id>``) is a small JSON document holding the Argon2id
parameters and salt plus the master key sealed with the key derived from a
password. Its ID is the BLAKE3 hash of its bytes. Any key file opens the whole
repository; ``docs/format.md`` has the exact layout.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resurgo.errors import CorruptObject, UnsupportedVersion

KEY_FILE_VERSION = 1
_KEY_AAD = b"resurgo key file v1"


@dataclass(frozen=True)
class KDFParams:
    """Argon2id cost. The default follows RFC 9106's second recommended option."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    @classmethod
    def weak_for_tests(cls) -> KDFParams:
        """Cheap parameters: for test suites only, never for real repositories."""
        return cls(time_cost=1, memory_kib=64, parallelism=1)


@dataclass(frozen=True)
class MasterKey:
    encrypt: bytes  # 32 bytes, AES-256-GCM
    id_mac: bytes  # 32 bytes, keyed BLAKE3 for blob IDs

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(encrypt=os.urandom(32), id_mac=os.urandom(32))

    def blob_id(self, data: bytes | memoryview) -> bytes:
        # blake3 releases the GIL for large inputs; max_threads lets one big
        # chunk use both cores when the pipeline is not already saturating them.
        return blake3.blake3(data, key=self.id_mac).digest()


@dataclass(frozen=True)
class KeyFile:
    id: str
    created: datetime
    hostname: str
    username: str
    kdf: KDFParams
    salt: bytes
    sealed: bytes  # nonce(12) || AES-GCM(master JSON) || tag


def _derive(password: str, salt: bytes, kdf: KDFParams) -> bytes:
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=kdf.time_cost,
        memory_cost=kdf.memory_kib,
        parallelism=kdf.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def make_key_file(
    master: MasterKey, password: str, kdf: KDFParams, *, hostname: str, username: str
) -> tuple[str, bytes]:
    """Wrap ``master`` with ``password``; returns (key ID, key file bytes)."""
    salt = os.urandom(16)
    kek = _derive(password, salt, kdf)
    nonce = os.urandom(12)
    plain = json.dumps({"encrypt": _b64(master.encrypt), "id_mac": _b64(master.id_mac)}).encode()
    sealed = nonce + AESGCM(kek).encrypt(nonce, plain, _KEY_AAD)
    doc = {
        "v": KEY_FILE_VERSION,
        "created": datetime.now(UTC).isoformat(),
        "hostname": hostname,
        "username": username,
        "kdf": {
            "algorithm": "argon2id",
            "time_cost": kdf.time_cost,
            "memory_kib": kdf.memory_kib,
            "parallelism": kdf.parallelism,
            "salt": _b64(salt),
        },
        "data": _b64(sealed),
    }
    raw = json.dumps(doc, sort_keys=True, indent=1).encode()
    return blake3.blake3(raw).hexdigest(), raw


def parse_key_file(key_id: str, raw: bytes) -> KeyFile:
    name = f"keys/{key_id}"
    # Key files are named by the hash of their bytes: check it before trusting
    # anything inside (a damaged KDF cost could otherwise ask for huge memory).
    if blake3.blake3(raw).hexdigest() != key_id:
        raise CorruptObject(name, "content does not match its name (hash mismatch)")
    try:
        doc = json.loads(raw)
        if doc.get("v") != KEY_FILE_VERSION:
            raise UnsupportedVersion(f"{name}: key file version {doc.get('v')} is not supported")
        k = doc["kdf"]
        if k["algorithm"] != "argon2id":
            raise CorruptObject(name, f"unknown KDF {k['algorithm']!r}")
        return KeyFile(
            id=key_id,
            created=datetime.fromisoformat(doc["created"]),
            hostname=str(doc.get("hostname", "")),
            username=str(doc.get("username", "")),
            kdf=KDFParams(int(k["time_cost"]), int(k["memory_kib"]), int(k["parallelism"])),
            salt=base64.b64decode(k["salt"], validate=True),
            sealed=base64.b64decode(doc["data"], validate=True),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptObject(name, f"malformed key file: {e}")


def unwrap(key: KeyFile, password: str) -> MasterKey | None:
    """The master key, or None if ``password`` does not open this key file."""
    kek = _derive(password, key.salt, key.kdf)
    try:
        plain = AESGCM(kek).decrypt(key.sealed[:12], key.sealed[12:], _KEY_AAD)
    except InvalidTag:
        return None
    doc = json.loads(plain)
    return MasterKey(
        encrypt=base64.b64decode(doc["encrypt"]), id_mac=base64.b64decode(doc["id_mac"])
    )
