"""docs/format.md is exact: a reader written only from it reads what resurgo writes.

``SpecReader`` uses the primitives the document names (Argon2id, AES-256-GCM,
BLAKE3, zstd) and nothing from ``resurgo.repo`` to decode. The tests check it
against repositories written by ``Repository``, and check that objects the
spec reader can build (a handmade snapshot, a handmade index object) are
accepted by ``Repository``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import zstandard
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resurgo.backend import Backend
from resurgo.backend.memory import MemoryBackend
from resurgo.repo import BlobType, Repository

from .helpers import PASSWORD, blobs_of, new_repo, save_all


class SpecError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    type: int
    id: bytes
    pack: str
    offset: int
    length: int
    raw: int


class SpecReader:
    """A from-the-document reader of format version 1 (and envelope version 2)."""

    def __init__(self, backend: Backend, password: str) -> None:
        self.b = backend
        config_env = backend.get("config")
        for o in sorted(backend.list("keys/"), key=lambda o: o.key):
            raw = backend.get(o.key)
            name = o.key.split("/")[-1]
            assert blake3.blake3(raw).hexdigest() == name  # section 1
            doc = json.loads(raw)
            assert doc["v"] == 1 and doc["kdf"]["algorithm"] == "argon2id"
            k = doc["kdf"]
            kek = hash_secret_raw(
                password.encode("utf-8"), base64.b64decode(k["salt"]), time_cost=k["time_cost"],
                memory_cost=k["memory_kib"], parallelism=k["parallelism"], hash_len=32,
                type=Type.ID, version=0x13,
            )
            data = base64.b64decode(doc["data"])
            try:
                plain = AESGCM(kek).decrypt(data[:12], data[12:], b"resurgo key file v1")
            except InvalidTag:
                continue
            master = json.loads(plain)
            self.encrypt = base64.b64decode(master["encrypt"])
            self.id_mac = base64.b64decode(master["id_mac"])
            assert len(self.encrypt) == len(self.id_mac) == 32
            self.config = json.loads(self.open(config_env, 5))
            self.key_name = name
            return
        raise SpecError("no key opens with this password")

    # section 4
    def open(self, env: bytes, kind: int, context: bytes = b"") -> bytes:
        if len(env) < 32:
            raise SpecError("short")
        version, cipher, comp, got_kind = env[0], env[1], env[2], env[3]
        if version not in (1, 2) or cipher != 1 or got_kind != kind:
            raise SpecError(f"header {env[:4].hex()}")
        body = AESGCM(self.encrypt).decrypt(env[4:16], env[16:], env[:4] + context)
        if comp == 0:
            return body
        if comp == 1:
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
        if comp == 2 and version == 2 and kind != 7:
            d = zstandard.ZstdCompressionDict(self.dictionary(body[:8].hex()))
            return zstandard.ZstdDecompressor(dict_data=d).decompress(body[8:], max_output_size=1 << 30)
        raise SpecError("compression")

    # section 13
    def dictionary(self, tag_hex: str) -> bytes:
        (key,) = [o.key for o in self.b.list("dicts/") if o.key.split("/")[-1].startswith(tag_hex)]
        plain = self.open(self.get_named(key), 7)
        assert plain[:4] == bytes.fromhex("37a430ec")  # zstd dictionary magic, little-endian
        return plain

    def seal(self, kind: int, plain: bytes, context: bytes = b"") -> bytes:
        header = bytes([1, 1, 0, kind])
        nonce = os.urandom(12)
        return header + nonce + AESGCM(self.encrypt).encrypt(nonce, plain, header + context)

    def get_named(self, key: str) -> bytes:
        raw = self.b.get(key)
        if blake3.blake3(raw).hexdigest() != key.split("/")[-1]:
            raise SpecError(f"{key}: hash mismatch")
        return raw

    # section 6
    def blob_id(self, plain: bytes) -> bytes:
        return blake3.blake3(plain, key=self.id_mac).digest()

    # section 7
    def trailer(self, pack_key: str) -> list[Entry]:
        data = self.get_named(pack_key)
        (tlen,) = struct.unpack("<I", data[-4:])
        plain = self.open(data[len(data) - 4 - tlen : len(data) - 4], 2)
        (n,) = struct.unpack_from("<I", plain, 0)
        assert len(plain) == 4 + 41 * n
        out, offset = [], 0
        for i in range(n):
            t, bid, length, raw = struct.unpack_from("<B32sII", plain, 4 + 41 * i)
            out.append(Entry(t, bid, pack_key.split("/")[-1], offset, length, raw))
            offset += length
        assert offset + tlen + 4 == len(data)
        return out

    # section 8
    def index(self) -> list[Entry]:
        out = []
        for o in self.b.list("index/"):
            plain = self.open(self.get_named(o.key), 3)
            magic, p, e, s = struct.unpack_from("<4sIII", plain, 0)
            assert magic == b"RIX1"
            assert len(plain) == 16 + 32 * (p + s) + 52 * e
            packs = [plain[16 + 32 * i : 48 + 32 * i].hex() for i in range(p)]
            base = 16 + 32 * (p + s)
            for i in range(e):
                bid, pno, off, ln, raw, t, pad = struct.unpack_from("<32sIIIIB3s", plain, base + 52 * i)
                assert pad == b"\0\0\0"
                out.append(Entry(t, bid, packs[pno], off, ln, raw))
        return out

    def load_blob(self, entry: Entry) -> bytes:
        env = self.b.get(f"data/{entry.pack[:2]}/{entry.pack}", entry.offset, entry.length)
        plain = self.open(env, entry.type, bytes([entry.type]) + entry.id)
        assert len(plain) == entry.raw
        return plain


def written_repo() -> tuple[MemoryBackend, Repository, list[bytes], list[bytes], bytes, str]:
    backend = MemoryBackend()
    repo = new_repo(backend)
    data = [*blobs_of(50, 60), b"compressible " * 500]
    ids = save_all(repo, data)
    tree = json.dumps({"nodes": [], "v": 1}).encode()
    tree_id, _ = repo.save_blob(BlobType.TREE, tree)
    repo.flush()
    snap = repo.save_object("snapshots", json.dumps({"tree": tree_id.hex(), "v": 1}).encode())
    return backend, repo, data, ids, tree_id, snap


def test_spec_reader_opens_keys_config_index_and_every_blob() -> None:
    backend, repo, data, ids, tree_id, snap = written_repo()
    r = SpecReader(backend, PASSWORD)
    assert r.key_name == repo.key_id
    assert r.config["id"] == repo.config.id
    assert r.config["chunker"]["seed"] == repo.config.chunker_seed
    assert r.config["pack_size"] == repo.config.params.pack_size

    entries = r.index()
    assert len(entries) == len(ids) + 1
    by_key = {(e.type, e.id): e for e in entries}
    for bid, d in zip(ids, data, strict=True):
        assert r.blob_id(d) == bid
        assert r.load_blob(by_key[(0, bid)]) == d
    tree = r.load_blob(by_key[(1, tree_id)])
    assert json.loads(tree) == {"nodes": [], "v": 1}

    # Every index entry matches its pack's trailer exactly.
    trailers = {e.pack: None for e in entries}
    from_trailers = {(t.type, t.id, t.pack, t.offset, t.length, t.raw)
                     for p in trailers for t in r.trailer(f"data/{p[:2]}/{p}")}
    assert from_trailers == {(e.type, e.id, e.pack, e.offset, e.length, e.raw) for e in entries}

    doc = json.loads(r.open(r.get_named(f"snapshots/{snap}"), 4))
    assert doc["tree"] == tree_id.hex()


def test_spec_reader_reads_blobs_compressed_with_a_dictionary() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    repo.dictionaries.sample_bytes = 32 << 10
    lines = [f"value_{i} = compute({i}, {i * 7 % 13})\n".encode() for i in range(300)]
    r0 = random.Random(5)
    data = [b"".join(r0.choice(lines) for _ in range(r0.randrange(20, 60))) for _ in range(300)]
    ids = save_all(repo, data)
    repo.flush()
    r = SpecReader(backend, PASSWORD)
    (dict_key,) = [o.key for o in backend.list("dicts/")]
    by_key = {(e.type, e.id): e for e in r.index()}
    versions = set()
    for bid, d in zip(ids, data, strict=True):
        e = by_key[(0, bid)]
        assert r.load_blob(e) == d
        versions.add(backend.get(f"data/{e.pack[:2]}/{e.pack}", e.offset, 1)[0])
    assert versions == {2}
    assert r.dictionary(dict_key.split("/")[-1][:16])


def test_compressed_blob_is_a_zstd_frame_with_its_size() -> None:
    backend, _, data, ids, _, _ = written_repo()
    r = SpecReader(backend, PASSWORD)
    e = {x.id: x for x in r.index()}[ids[-1]]
    env = backend.get(f"data/{e.pack[:2]}/{e.pack}", e.offset, e.length)
    assert env[2] == 1
    body = AESGCM(r.encrypt).decrypt(env[4:16], env[16:], env[:4] + b"\x00" + ids[-1])
    assert zstandard.get_frame_parameters(body).content_size == len(data[-1])


def test_objects_built_from_the_spec_are_read_by_resurgo() -> None:
    backend, repo, data, ids, _, _ = written_repo()
    r = SpecReader(backend, PASSWORD)
    # A handmade snapshot object.
    env = r.seal(4, b'{"handmade": true}')
    name = blake3.blake3(env).hexdigest()
    backend.put(f"snapshots/{name}", env)
    assert repo.load_object("snapshots", name) == b'{"handmade": true}'
    # A handmade pack with one blob, and a handmade index object for it.
    plain = b"written by the spec reader"
    bid = r.blob_id(plain)
    blob_env = r.seal(0, plain, b"\x00" + bid)
    trailer = r.seal(2, struct.pack("<I", 1) + struct.pack("<B32sII", 0, bid, len(blob_env), len(plain)))
    pack = blob_env + trailer + struct.pack("<I", len(trailer))
    pack_id = blake3.blake3(pack).digest()
    backend.put(f"data/{pack_id.hex()[:2]}/{pack_id.hex()}", pack)
    index = (b"RIX1" + struct.pack("<III", 1, 1, 0) + pack_id
             + struct.pack("<32sIIIIB3s", bid, 0, 0, len(blob_env), len(plain), 0, b"\0\0\0"))
    ienv = r.seal(3, index)
    backend.put(f"index/{blake3.blake3(ienv).hexdigest()}", ienv)
    again = Repository.open(backend, PASSWORD)
    assert again.blob_id(plain) == bid
    assert again.load_blob(BlobType.DATA, bid) == plain
    assert again.load_blob(BlobType.DATA, ids[0]) == data[0]


def test_blob_moved_to_another_id_fails_authentication_per_spec() -> None:
    backend, _, _, ids, _, _ = written_repo()
    r = SpecReader(backend, PASSWORD)
    entries = {e.id: e for e in r.index()}
    e = entries[ids[0]]
    env = backend.get(f"data/{e.pack[:2]}/{e.pack}", e.offset, e.length)
    with pytest.raises(InvalidTag):
        r.open(env, 0, b"\x00" + ids[1])
    with pytest.raises(SpecError):
        r.open(env, 1, b"\x01" + ids[0])


def test_index_cache_file_matches_the_spec(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = new_repo(backend, cache_dir=tmp_path)
    ids = save_all(repo, blobs_of(51, 40))
    repo.flush()
    r = SpecReader(backend, PASSWORD)
    plain = r.open((tmp_path / repo.config.id / "index").read_bytes(), 6)
    (h,) = struct.unpack_from("<I", plain, 0)
    header = json.loads(plain[4 : 4 + h])
    assert header["index"] == sorted(o.key.split("/")[-1] for o in backend.list("index/"))
    assert header["superseded"] == []
    pos = 4 + h
    n, q = struct.unpack_from("<QQ", plain, pos)
    pos += 16
    packs = [plain[pos + 32 * i : pos + 32 * i + 32] for i in range(q)]
    pos += 32 * q
    col_ids = [plain[pos + 32 * i : pos + 32 * i + 32] for i in range(n)]
    pos += 32 * n
    cols = []
    for fmt, size in (("<I", 4), ("<I", 4), ("<I", 4), ("<I", 4), ("<B", 1)):
        cols.append([struct.unpack_from(fmt, plain, pos + size * i)[0] for i in range(n)])
        pos += size * n
    assert pos == len(plain)
    assert col_ids == sorted(col_ids) and set(col_ids) == set(ids)
    spec_index = {e.id: e for e in r.index()}
    for i, bid in enumerate(col_ids):
        e = spec_index[bid]
        pno, off, ln, raw, t = (c[i] for c in cols)
        assert (packs[pno].hex(), off, ln, raw, t) == (e.pack, e.offset, e.length, e.raw, e.type)


def test_writer_session_object_matches_the_spec() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    assert list(backend.list("sessions/")) == []  # nothing written before the first write
    repo.save_blob(BlobType.DATA, b"x" * 100)
    repo.flush()
    r = SpecReader(backend, PASSWORD)
    (info,) = list(backend.list("sessions/"))
    sid = info.key.split("/")[-1]
    doc = json.loads(r.open(backend.get(info.key), 5, b"resurgo-control:sessions"))
    assert doc["v"] == 1 and doc["id"] == sid and len(sid) == 32
    assert doc["start"] <= doc["heartbeat"]
    assert {"host", "pid", "user", "operation", "stale_timeout", "heartbeat_interval"} <= set(doc)
    with pytest.raises(InvalidTag):  # bound to its directory
        r.open(backend.get(info.key), 5, b"resurgo-control:locks")
    repo.close()
    assert list(backend.list("sessions/")) == []
