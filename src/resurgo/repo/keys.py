"""Keys: the master key material and the password-wrapped key files that hold it.

The *master key* is 64 random bytes drawn at ``init``: 32 bytes of AES-256-GCM
encryption key and 32 bytes of BLAKE3 MAC key for blob IDs. It never changes
for the life of a repository, so keys can be added, removed and re-passworded
without re-encrypting any data.

A *key file* (``keys/<id>``) is a small JSON document holding the Argon2id
parameters and salt plus the master key sealed with the key derived from a
password. Its ID is the BLAKE3 hash of its bytes. Any key file opens the whole
repository; ``docs/format.md`` has the exact layout.

*Unlocking* (``unlock``) finds the key file a password opens and returns the
master key with the decrypted config. It needs only this module's light
imports until the first key is derived, so callers can run Argon2id (and its
64 MiB) before importing and allocating anything else (docs/design.md,
"Start-up"); AES-GCM and the envelope codec are imported after it.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import blake3
from argon2.low_level import Type, hash_secret_raw

from resurgo.backend import layout
from resurgo.errors import (
    CorruptObject,
    ObjectNotFound,
    RepositoryNotFound,
    UnsupportedVersion,
    WrongPassword,
)

if TYPE_CHECKING:
    from resurgo.backend import Backend

KEY_FILE_VERSION = 1
_KEY_AAD = b"resurgo key file v1"


@dataclass(frozen=True)
class KDFParams:
    """Argon2id cost of new key files (each key file records its own; any cost opens).

    The default, 48 MiB and 7 passes over 4 lanes, keeps the attacker's cost
    per guess (memory x time) above both the former default (64 MiB, 3 passes:
    RFC 9106's second recommended option) and restic's scrypt (32 MiB), while
    the 48 MiB, on top of the ~20 MiB a command holds when it derives its key,
    stays under restic's peak memory. docs/design.md, "Keys", has the figures.
    """

    time_cost: int = 7
    memory_kib: int = 48 * 1024
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
    # Imported after the derivation: see the module docstring.
    from resurgo.repo.aead import AESGCM

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


def key_owner() -> tuple[str, str]:
    """(host name, user name) recorded in new key files (informational)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return socket.gethostname(), user


@dataclass(frozen=True)
class NewKey:
    """The master key and first key file of a repository about to be created."""

    master: MasterKey
    key_id: str
    raw: bytes  # the key file's bytes


def new_key(password: str, kdf: KDFParams) -> NewKey:
    """Draw a master key and wrap it with ``password`` (``Repository.init(key=...)``).

    Made before the repository module is imported, for the same reason as
    ``unlock`` (see the module docstring).
    """
    master = MasterKey.generate()
    host, user = key_owner()
    key_id, raw = make_key_file(master, password, kdf, hostname=host, username=user)
    return NewKey(master, key_id, raw)


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
    # Imported after the derivation: see the module docstring.
    from resurgo.repo.aead import AESGCM, InvalidTag

    try:
        plain = AESGCM(kek).decrypt(key.sealed[:12], key.sealed[12:], _KEY_AAD)
    except InvalidTag:
        return None
    doc = json.loads(plain)
    return MasterKey(
        encrypt=base64.b64decode(doc["encrypt"]), id_mac=base64.b64decode(doc["id_mac"])
    )


@dataclass(frozen=True)
class Unlocked:
    """What a password opened: the master key, the key file used, the config plaintext."""

    master: MasterKey
    key_id: str
    config: bytes  # the decrypted ``config`` object (JSON, see repo/config.py)


def unlock(backend: Backend, password: str) -> Unlocked:
    """Find a key file that ``password`` opens and decrypt the config with it.

    Raises ``RepositoryNotFound`` when there is no config, ``WrongPassword``
    when no key file opens with the password, and ``CorruptObject`` when a
    key opens but the config does not authenticate under it (a damaged
    config, or a stray key of another repository) and no other key does.
    Key files that are damaged (or removed while we read) are skipped: one
    bad key must not lock everybody out.
    """
    try:
        config_env = backend.get(layout.CONFIG)
    except ObjectNotFound:
        raise RepositoryNotFound(f"no repository at {backend.url} (run 'resurgo init' first)")
    key_ids = sorted(layout.name_of(o.key) for o in backend.list(layout.KEYS))
    damaged: list[str] = []
    config_error: CorruptObject | None = None
    for key_id in key_ids:
        try:
            kf = parse_key_file(key_id, backend.get(layout.KEYS + key_id))
        except (CorruptObject, UnsupportedVersion, ObjectNotFound):
            damaged.append(key_id)
            continue
        master = unwrap(kf, password)
        if master is None:
            continue
        from resurgo.repo.crypto import Kind, Sealer

        try:
            raw = Sealer(master.encrypt).open(Kind.CONFIG, config_env, name="config")
        except CorruptObject as e:
            config_error = e
            continue
        return Unlocked(master, key_id, raw)
    if config_error is not None:
        raise config_error
    extra = f" ({len(damaged)} damaged key files: {', '.join(damaged)})" if damaged else ""
    raise WrongPassword(f"wrong password: no key in {backend.url} opens with it{extra}")
