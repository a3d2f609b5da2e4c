"""The repository facade: the only door the rest of resurgo uses into stored data.

It owns the write order (docs/design.md, "Write order"): blobs go into packs;
a pack is uploaded whole; an index object naming uploaded packs is written only
after they are durable; callers save a snapshot only after ``flush()``. So a
reader that finds a snapshot also finds every index entry and pack it needs.
Writers only ever add objects (packs, index objects, snapshots) under names that
are hashes of their content, so any number of processes on any number of hosts
can write at once without coordination; nothing shared is ever rewritten.

Read paths (open, load, list) never write to the backend; the only thing they
write is the local index cache.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path

import blake3

from resurgo.backend import Backend, layout
from resurgo.errors import (
    BlobNotFound,
    CorruptObject,
    KeyError_,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from resurgo.repo.chunker import Chunker
from resurgo.repo.config import RepoConfig, RepoParams
from resurgo.repo.crypto import Kind, Sealer
from resurgo.repo.index import BlobLocation, DecodedIndex, MemoryIndex, decode_index, encode_index
from resurgo.repo.keys import KDFParams, KeyFile, MasterKey, make_key_file, parse_key_file, unwrap
from resurgo.repo.pack import PackedBlob, PackWriter


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


_BLOB_KIND = {BlobType.DATA: Kind.DATA, BlobType.TREE: Kind.TREE}
_OBJECT_KINDS = {"snapshots": Kind.SNAPSHOT}
# Write an index object at least every this many packs, so an interrupted
# backup leaves most of its uploaded data findable by the next run.
INDEX_EVERY_PACKS = 16
TREE_CACHE_BYTES = 64 << 20
FETCH_THREADS = 8


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: datetime
    hostname: str
    username: str
    current: bool


def blob_context(blob_type: int, blob_id: bytes) -> bytes:
    """Associated data binding a blob envelope to its type and ID."""
    return bytes([blob_type]) + blob_id


def object_id(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _whoami() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return socket.gethostname(), user


class Repository:
    """An open repository. Thread-safe; see the module docstring for the write order."""

    def __init__(
        self,
        backend: Backend,
        master: MasterKey,
        config: RepoConfig,
        key_id: str,
        *,
        cache_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.key_id = key_id
        self._master = master
        self._sealer = Sealer(master.encrypt, config.params.compression_level)
        self._cache_dir = cache_dir / config.id if cache_dir else None
        self.index = MemoryIndex()
        self.index_ids: set[str] = set()
        # Index objects that could not be read at open: name -> error. They are
        # skipped (their blobs look absent) and check/repair report them.
        self.index_problems: dict[str, str] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._pending: set[tuple[int, bytes]] = set()
        self._packers: dict[int, PackWriter] = {}
        self._unindexed: dict[bytes, list[PackedBlob]] = {}
        self._tree_cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._tree_cache_bytes = 0
        self.stats_added = {"blobs": 0, "bytes_raw": 0, "bytes_stored": 0, "packs": 0}

    # ------------------------------------------------------------ create / open

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        *,
        params: RepoParams | None = None,
        kdf: KDFParams | None = None,
        cache_dir: Path | None = None,
    ) -> Repository:
        if not password:
            raise UsageError("an empty password is not allowed")
        try:
            backend.stat(layout.CONFIG)
            raise RepositoryExists(f"a repository already exists at {backend.url}")
        except ObjectNotFound:
            pass
        master = MasterKey.generate()
        config = RepoConfig.new(params or RepoParams())
        host, user = _whoami()
        key_id, raw = make_key_file(master, password, kdf or KDFParams(), hostname=host, username=user)
        # The key goes first: a config without any key would be unopenable.
        backend.put(layout.KEYS + key_id, raw, create_only=True)
        sealer = Sealer(master.encrypt)
        try:
            backend.put(layout.CONFIG, sealer.seal(Kind.CONFIG, config.to_json()), create_only=True)
        except ObjectExists:
            backend.delete(layout.KEYS + key_id)  # lost a race with another init
            raise RepositoryExists(f"a repository already exists at {backend.url}")
        repo = cls(backend, master, config, key_id, cache_dir=cache_dir)
        return repo

    @classmethod
    def open(
        cls, backend: Backend, password: str, *, cache_dir: Path | None = None
    ) -> Repository:
        try:
            config_env = backend.get(layout.CONFIG)
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {backend.url} (run 'resurgo init' first)")
        key_ids = sorted(layout.name_of(o.key) for o in backend.list(layout.KEYS))
        for key_id in key_ids:
            kf = parse_key_file(key_id, backend.get(layout.KEYS + key_id))
            master = unwrap(kf, password)
            if master is None:
                continue
            try:
                raw = Sealer(master.encrypt).open(Kind.CONFIG, config_env, name="config")
            except CorruptObject:
                continue  # a stray key of another repository (lost init race)
            repo = cls(backend, master, RepoConfig.from_json(raw), key_id, cache_dir=cache_dir)
            repo.load_index()
            return repo
        raise WrongPassword(f"wrong password: no key in {backend.url} opens with it")

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------ keys

    def list_keys(self) -> list[KeyInfo]:
        out = []
        for o in self.backend.list(layout.KEYS):
            kid = layout.name_of(o.key)
            kf = parse_key_file(kid, self.backend.get(o.key))
            out.append(KeyInfo(kid, kf.created, kf.hostname, kf.username, kid == self.key_id))
        return sorted(out, key=lambda k: k.created)

    def add_key(
        self, password: str, *, kdf: KDFParams | None = None, hostname: str | None = None,
        username: str | None = None,
    ) -> str:
        if not password:
            raise UsageError("an empty password is not allowed")
        host, user = _whoami()
        key_id, raw = make_key_file(
            self._master, password, kdf or KDFParams(),
            hostname=hostname or host, username=username or user,
        )
        self.backend.put(layout.KEYS + key_id, raw, create_only=True)
        return key_id

    def _resolve_key(self, prefix: str) -> KeyFile:
        matches = [
            layout.name_of(o.key) for o in self.backend.list(layout.KEYS)
            if layout.name_of(o.key).startswith(prefix)
        ]
        if not prefix or not matches:
            raise KeyError_(f"no key with ID {prefix!r}")
        if len(matches) > 1:
            raise UsageError(f"key ID prefix {prefix!r} is ambiguous")
        return parse_key_file(matches[0], self.backend.get(layout.KEYS + matches[0]))

    def remove_key(self, key_id_prefix: str) -> str:
        kf = self._resolve_key(key_id_prefix)
        if kf.id == self.key_id:
            raise KeyError_("refusing to remove the key in use (open with another key first)")
        self.backend.delete(layout.KEYS + kf.id)
        return kf.id

    def change_password(self, new_password: str, *, kdf: KDFParams | None = None) -> str:
        """Write a key for ``new_password``, then remove the key in use."""
        old = self.key_id
        new = self.add_key(new_password, kdf=kdf)
        self.key_id = new
        self.backend.delete(layout.KEYS + old)
        return new

    # ------------------------------------------------------------ blob naming

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self._master.blob_id(data)

    def chunker(self) -> Chunker:
        return Chunker(self.config)

    # ------------------------------------------------------------ index

    def _index_cache_path(self) -> Path | None:
        return self._cache_dir / "index" if self._cache_dir else None

    def load_index(self) -> None:
        """(Re)load the index from the backend, via the local cache when valid."""
        names = {layout.name_of(o.key) for o in self.backend.list(layout.INDEX)}
        index, covered = self._read_index_cache(names)
        missing = sorted(names - covered)
        decoded, problems = self._fetch_indexes(missing)
        index.add_decoded(decoded)
        index.compact()
        good = names - set(problems)
        with self._lock:
            self.index = index
            self.index_ids = good
            self.index_problems = problems
        if missing or covered != good:
            self._write_index_cache(index, good)

    def _fetch_indexes(self, names: list[str]) -> tuple[list[DecodedIndex], dict[str, str]]:
        """Fetch and decode index objects: (decoded, {name: error} for damaged ones)."""
        if not names:
            return [], {}

        def one(name: str) -> DecodedIndex | str:
            try:
                plain = self._sealer.open(
                    Kind.INDEX, self._get_verified(layout.INDEX + name, name), name=f"index/{name}"
                )
                return decode_index(plain, name=f"index/{name}")
            except (CorruptObject, ObjectNotFound) as e:
                return str(e)

        with ThreadPoolExecutor(min(FETCH_THREADS, len(names))) as ex:
            results = list(ex.map(one, names))
        decoded = [r for r in results if not isinstance(r, str)]
        problems = {n: r for n, r in zip(names, results, strict=True) if isinstance(r, str)}
        return decoded, problems

    def _read_index_cache(self, names: set[str]) -> tuple[MemoryIndex, set[str]]:
        path = self._index_cache_path()
        if path is None or not path.exists():
            return MemoryIndex(), set()
        try:
            plain = self._sealer.open(Kind.CACHE, path.read_bytes(), name="index cache")
            hlen = int.from_bytes(plain[:4], "little")
            covered = set(json.loads(plain[4 : 4 + hlen])["index"])
            if not covered <= names:
                # Index objects were removed (compaction): start afresh rather
                # than keep entries for packs that may be gone.
                return MemoryIndex(), set()
            return MemoryIndex.load(plain[4 + hlen :]), covered
        except Exception:
            # A damaged cache is never trusted: rebuild from the repository.
            return MemoryIndex(), set()

    def _write_index_cache(self, index: MemoryIndex, names: set[str]) -> None:
        path = self._index_cache_path()
        if path is None:
            return
        header = json.dumps({"index": sorted(names)}).encode()
        plain = len(header).to_bytes(4, "little") + header + index.dump()
        env = self._sealer.seal(Kind.CACHE, plain, compress=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".index.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(env)
            os.replace(tmp, path)
        except OSError:
            pass  # the cache is an optimisation; failing to write it is harmless

    def lookup(self, blob_type: int, blob_id: bytes) -> BlobLocation | None:
        return self.index.lookup(blob_type, blob_id)

    def has_blob(self, blob_type: int, blob_id: bytes) -> bool:
        return self.index.has(blob_type, blob_id)

    # ------------------------------------------------------------ write path

    def save_blob(
        self, blob_type: int, data: bytes | memoryview, *, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless a blob with the same ID exists. Returns (ID, added)."""
        bid = blob_id if blob_id is not None else self._master.blob_id(data)
        key = (blob_type, bid)
        with self._lock:
            if key in self._pending or self.index.has(blob_type, bid):
                return bid, False
            self._pending.add(key)
        try:
            env = self._sealer.seal(_BLOB_KIND[BlobType(blob_type)], data, blob_context(blob_type, bid))
        except BaseException:
            with self._lock:
                self._pending.discard(key)
            raise
        finished: PackWriter | None = None
        with self._lock:
            packer = self._packers.get(blob_type)
            if packer is None:
                packer = self._packers[blob_type] = PackWriter()
            packer.add(blob_type, bid, env, len(data))
            self.stats_added["blobs"] += 1
            self.stats_added["bytes_raw"] += len(data)
            self.stats_added["bytes_stored"] += len(env)
            if packer.size >= self.config.params.pack_size:
                finished = self._packers.pop(blob_type)
                self._inflight += 1
        if finished is not None:
            self._upload(finished)
        return bid, True

    def _upload(self, packer: PackWriter) -> None:
        """Upload a finished pack (``_inflight`` already counted it)."""
        try:
            pack_hex, data, blobs = packer.finish(self._sealer)
            self.backend.put(layout.pack(pack_hex), data)
            pack_id = bytes.fromhex(pack_hex)
            write_index = False
            with self._lock:
                for b in blobs:
                    self.index.add(b.type, b.id, pack_id, b.offset, b.length, b.raw_length)
                    self._pending.discard((b.type, b.id))
                self._unindexed[pack_id] = blobs
                self.stats_added["packs"] += 1
                write_index = len(self._unindexed) >= INDEX_EVERY_PACKS
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()
        if write_index:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            batch, self._unindexed = self._unindexed, {}
        if not batch:
            return
        packs = {
            pid: [(b.type, b.id, b.offset, b.length, b.raw_length) for b in blobs]
            for pid, blobs in batch.items()
        }
        env = self._sealer.seal(Kind.INDEX, encode_index(packs), compress=False)
        name = object_id(env)
        try:
            self.backend.put(layout.INDEX + name, env)
        except BaseException:
            with self._lock:  # keep them for the next attempt (flush)
                for pid, blobs in batch.items():
                    self._unindexed.setdefault(pid, blobs)
            raise
        with self._lock:
            self.index_ids.add(name)

    def flush(self) -> None:
        """Upload every pending pack, wait for in-flight uploads, then write the index.

        After ``flush`` returns, every blob saved so far is durable and indexed,
        so a snapshot referencing them may be saved.
        """
        with self._lock:
            packers = [p for p in self._packers.values() if len(p)]
            self._packers = {}
            self._inflight += len(packers)
        errors: list[BaseException] = []
        for p in packers:
            try:
                self._upload(p)
            except BaseException as e:  # finish the others, then raise the first
                errors.append(e)
        with self._lock:
            while self._inflight:
                self._idle.wait()
        if errors:
            raise errors[0]
        self._write_index()
        self._write_index_cache(self.index, set(self.index_ids))

    # ------------------------------------------------------------ read path

    def _get_verified(self, key: str, name: str) -> bytes:
        data = self.backend.get(key)
        if object_id(data) != name:
            raise CorruptObject(key, "content does not match its name (hash mismatch)")
        return data

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        return self.backend.get(layout.pack(pack_id.hex()), offset, length)

    def open_blob(self, loc: BlobLocation, envelope: bytes | memoryview) -> bytes:
        """Authenticate and decode a blob's envelope read from its pack."""
        name = f"blob {loc.id.hex()} in pack {loc.pack_hex}"
        plain = self._sealer.open(
            _BLOB_KIND[BlobType(loc.type)], envelope, blob_context(loc.type, loc.id), name=name
        )
        if len(plain) != loc.raw_length:
            raise CorruptObject(name, "length differs from the index")
        return plain

    def load_blob(self, blob_type: int, blob_id: bytes) -> bytes:
        if blob_type == BlobType.TREE:
            with self._lock:
                cached = self._tree_cache.get(blob_id)
                if cached is not None:
                    self._tree_cache.move_to_end(blob_id)
                    return cached
        loc = self.index.lookup(blob_type, blob_id)
        if loc is None:
            raise BlobNotFound(
                f"{BlobType(blob_type).name.lower()} blob {blob_id.hex()} is not in the index"
            )
        plain = self.open_blob(loc, self.read_pack_range(loc.pack_id, loc.offset, loc.length))
        if blob_type == BlobType.TREE:
            with self._lock:
                self._tree_cache[blob_id] = plain
                self._tree_cache_bytes += len(plain)
                while self._tree_cache_bytes > TREE_CACHE_BYTES and self._tree_cache:
                    _, old = self._tree_cache.popitem(last=False)
                    self._tree_cache_bytes -= len(old)
        return plain

    def verify_blob_id(self, blob_id: bytes, plain: bytes | memoryview) -> bool:
        return self._master.blob_id(plain) == blob_id

    # ------------------------------------------------------------ small objects

    def _kind(self, kind: str) -> Kind:
        try:
            return _OBJECT_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown object kind {kind!r}")

    def save_object(self, kind: str, data: bytes) -> str:
        env = self._sealer.seal(self._kind(kind), data)
        name = object_id(env)
        self.backend.put(f"{kind}/{name}", env)
        return name

    def load_object(self, kind: str, object_id_hex: str) -> bytes:
        key = f"{kind}/{object_id_hex}"
        return self._sealer.open(
            self._kind(kind), self._get_verified(key, object_id_hex), name=key
        )

    def list_objects(self, kind: str) -> list[str]:
        self._kind(kind)
        return sorted(layout.name_of(o.key) for o in self.backend.list(f"{kind}/"))

    def delete_object(self, kind: str, object_id_hex: str) -> None:
        self._kind(kind)
        self.backend.delete(f"{kind}/{object_id_hex}")

    # ------------------------------------------------------------ maintenance reads

    def sealer(self) -> Sealer:
        """The envelope codec (for check and repair, which read raw objects)."""
        return self._sealer

    def iter_index_objects(self) -> Iterator[tuple[str, DecodedIndex | str]]:
        """Every index object, decoded, or the error text for a damaged one."""
        for o in self.backend.list(layout.INDEX):
            name = layout.name_of(o.key)
            decoded, problems = self._fetch_indexes([name])
            yield name, (decoded[0] if decoded else problems[name])
