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

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from resurgo.backend import Backend, layout, stager
from resurgo.errors import (
    BlobNotFound,
    CorruptObject,
    KeyError_,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    UnsupportedVersion,
    UsageError,
)
from resurgo.repo import batch
from resurgo.repo.cache import RepoCache, read_file, write_atomic
from resurgo.repo.chunker import Chunker
from resurgo.repo.config import RepoConfig, RepoParams
from resurgo.repo.crypto import Dictionary, Kind, Sealer
from resurgo.repo.dictionary import DictionaryStore
from resurgo.repo.index import (
    BlobLocation,
    DecodedIndex,
    MemoryIndex,
    decode_index,
    encode_index,
    encode_index_arrays,
)
from resurgo.repo.keys import (
    KDFParams,
    KeyFile,
    MasterKey,
    NewKey,
    Unlocked,
    key_owner,
    make_key_file,
    parse_key_file,
    unlock,
)
from resurgo.repo.marks import SWEEPING, list_marks
from resurgo.repo.pack import PackedBlob, PackWriter, verify_pack_bytes
from resurgo.repo.sessions import SessionLost, SessionSettings, WriterSession

if TYPE_CHECKING:
    import numpy as np


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


_BLOB_KIND = {BlobType.DATA: Kind.DATA, BlobType.TREE: Kind.TREE}
# By plain int: the write path runs once per blob, and BlobType(n) costs about a microsecond.
_KIND_OF_TYPE: dict[int, Kind] = {int(t): k for t, k in _BLOB_KIND.items()}
_OBJECT_KINDS = {"snapshots": Kind.SNAPSHOT}
# Write an index object at least every this many packs, or this many seconds
# after the last one (whichever comes first), so a writer that dies or is
# interrupted leaves most of its uploaded data findable by the next run.
INDEX_EVERY_PACKS = 8
INDEX_EVERY_SECONDS = 60.0
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


def _openings(blobs: Sequence[BlobLocation | PackedBlob], start: int) -> list[batch.Opening]:
    """``batch.open_blobs`` items for blobs of a pack range read from ``start``
    (a type this version does not know gets kind -1, which no envelope has)."""
    return [(b.offset - start, b.length, _KIND_OF_TYPE.get(b.type, -1), blob_context(b.type, b.id),
             b.raw_length, b.id) for b in blobs]


def object_id(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


_whoami = key_owner


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
        sessions: SessionSettings | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.key_id = key_id
        self._master = master
        # Compression dictionaries (repo/dictionary.py): the sealer finds the
        # ones envelopes name through the store.
        self.dictionaries = DictionaryStore(backend)
        self._sealer = Sealer(
            master.encrypt, config.params.compression_level, dictionaries=self.dictionaries.resolve
        )
        self.dictionaries.bind(self._sealer)
        self._cache_dir = cache_dir / config.id if cache_dir else None
        # Snapshot objects and tree packs kept locally (repo/cache.py).
        self._cache = RepoCache(self._cache_dir) if self._cache_dir else None
        # False: reads go to the backend (and refresh the cache), as check
        # needs, so that damage in the repository is not hidden by a good copy.
        self.read_through_cache = True
        self._fresh_packs: set[str] = set()
        self.index = MemoryIndex()
        self.index_ids: set[str] = set()
        # Index objects that could not be read at open: name -> error. They are
        # skipped (their blobs look absent) and check/repair report them.
        self.index_problems: dict[str, str] = {}
        # Index objects still listed but replaced by another's ``supersedes``.
        self.index_superseded: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._pending: set[tuple[int, bytes]] = set()
        self._packers: dict[int, PackWriter] = {}
        # Packs go straight to temporary files when the backend offers it
        # (local directories), instead of being held in memory (repo/pack.py).
        self._stage = stager(backend)
        self._unindexed: dict[bytes, list[PackedBlob]] = {}
        self._tree_cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._tree_cache_bytes = 0
        self.stats_added = {"blobs": 0, "bytes_raw": 0, "bytes_stored": 0, "packs": 0}
        # Writer sessions (repo/sessions.py, docs/design.md "Prune beside
        # running backups"): created before the first write, ended by close().
        self.session_settings = sessions or SessionSettings()
        self.session_operation = "write"
        self._session: WriterSession | None = None
        self._session_lock = threading.Lock()
        # Wall time just before the first index listing this process relies on.
        self._epoch: float | None = None
        # Packs that left the index between loads made before the session began.
        self._gone_packs: set[bytes] = set()
        # When to write an index object for uploaded packs (see INDEX_EVERY_PACKS).
        self.index_every_packs = INDEX_EVERY_PACKS
        self.index_every_seconds = INDEX_EVERY_SECONDS
        self._clock = time.monotonic
        self._last_index_time = self._clock()

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
        sessions: SessionSettings | None = None,
        chunker_params_from: Repository | None = None,
        key: NewKey | None = None,
    ) -> Repository:
        """Create a repository at ``backend``.

        With ``chunker_params_from``, the new repository takes that open
        repository's chunker parameters, chunker seed and blob-ID key (its
        encryption key and password stay its own), so the same data gets the
        same blob IDs in both and ``copy`` moves blobs without re-hashing them
        (docs/design.md, "Copying between repositories"). ``params`` then only
        chooses the pack size and compression level.

        ``key`` is a master key and key file made beforehand with
        ``keys.new_key(password, ...)`` (docs/design.md, "Start-up"); ``kdf``
        is then unused.
        """
        if key is not None and chunker_params_from is not None:
            raise ValueError("a prepared key cannot share another repository's blob-ID key")
        if not password:
            raise UsageError("an empty password is not allowed")
        try:
            backend.stat(layout.CONFIG)
            raise RepositoryExists(f"a repository already exists at {backend.url}")
        except ObjectNotFound:
            pass
        master = key.master if key is not None else MasterKey.generate()
        config = RepoConfig.new(params or RepoParams())
        if chunker_params_from is not None:
            master, config = chunker_params_from._sharing_blob_ids(master, config)
        if key is not None:
            key_id, raw = key.key_id, key.raw
        else:
            host, user = _whoami()
            key_id, raw = make_key_file(master, password, kdf or KDFParams(), hostname=host,
                                        username=user)
        # The key goes first: a config without any key would be unopenable.
        backend.put(layout.KEYS + key_id, raw, create_only=True)
        sealer = Sealer(master.encrypt)
        try:
            backend.put(layout.CONFIG, sealer.seal(Kind.CONFIG, config.to_json()), create_only=True)
        except ObjectExists:
            backend.delete(layout.KEYS + key_id)  # lost a race with another init
            raise RepositoryExists(f"a repository already exists at {backend.url}")
        repo = cls(backend, master, config, key_id, cache_dir=cache_dir, sessions=sessions)
        repo._epoch = repo.session_settings.clock.time()  # the empty index is loaded
        return repo

    @classmethod
    def open(
        cls, backend: Backend, password: str, *, cache_dir: Path | None = None,
        sessions: SessionSettings | None = None,
    ) -> Repository:
        """Open the repository with ``password`` (see ``keys.unlock`` for the errors)."""
        return cls.open_unlocked(backend, unlock(backend, password), cache_dir=cache_dir,
                                 sessions=sessions)

    @classmethod
    def open_unlocked(
        cls, backend: Backend, unlocked: Unlocked, *, cache_dir: Path | None = None,
        sessions: SessionSettings | None = None,
    ) -> Repository:
        """Open the repository with a key already found by ``keys.unlock``.

        The split lets a caller derive the key before importing this module
        (docs/design.md, "Start-up").
        """
        repo = cls(backend, unlocked.master, RepoConfig.from_json(unlocked.config),
                   unlocked.key_id, cache_dir=cache_dir, sessions=sessions)
        repo.load_index()
        return repo

    def close(self) -> None:
        with self._lock:
            unfinished, self._packers = list(self._packers.values()), {}
        for p in unfinished:  # blobs never stored (no flush): drop their temporary files
            p.discard()
        self._end_session()
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
        if batch.blob_ids is not None and len(data) <= batch.HASH_HOLDS_GIL_UPTO:
            # Hashed holding the GIL: a backup's main thread names every tree
            # it saves, and each hand-off of the GIL waited for a worker.
            return batch.blob_ids(self._master.id_mac, data, [(0, len(data))])[0]
        return self._master.blob_id(data)

    def blob_ids(self, data: bytes | memoryview, spans: list[tuple[int, int]]) -> list[bytes]:
        """``blob_id`` of ``data[offset:offset + size]`` for each ``(offset, size)``
        of ``spans``: with the native stage built, in one call (the GIL released
        once for all of them, rather than once per chunk of a large file)."""
        if batch.blob_ids is not None:
            return batch.blob_ids(self._master.id_mac, data, spans)
        view = memoryview(data)
        return [self._master.blob_id(view[offset : offset + size]) for offset, size in spans]

    def shares_blob_ids_with(self, other: Repository) -> bool:
        """Whether ``other`` names every blob as this repository does (same blob-ID key)."""
        import hmac  # here, not at the top: it loads OpenSSL's libcrypto (3.4 MiB)

        return hmac.compare_digest(self._master.id_mac, other._master.id_mac)

    def _sharing_blob_ids(self, master: MasterKey, config: RepoConfig) -> tuple[MasterKey, RepoConfig]:
        """``master`` and ``config`` of a new repository, given this one's ID key and chunker."""
        mine = self.config.params
        params = dataclasses.replace(
            config.params,
            chunk_min=mine.chunk_min,
            chunk_avg=mine.chunk_avg,
            chunk_max=mine.chunk_max,
        )
        params.validate()
        return (
            MasterKey(encrypt=master.encrypt, id_mac=self._master.id_mac),
            RepoConfig(id=config.id, params=params, chunker_seed=self.config.chunker_seed),
        )

    def chunker(self) -> Chunker:
        return Chunker(self.config)

    # ------------------------------------------------------------ index

    def _index_cache_path(self) -> Path | None:
        return self._cache_dir / "index" if self._cache_dir else None

    def load_index(self) -> None:
        """(Re)load the index from the backend, via the local cache when valid.

        An index object named in another one's ``supersedes`` list is ignored:
        prune and repair write the replacement before deleting the old object,
        and a reader that lists in between must not see the entries the
        replacement dropped. The local cache records which objects it holds
        and which it knows to be superseded, so it cannot bring those back.
        """
        epoch = self.session_settings.clock.time()
        names = {layout.name_of(o.key) for o in self.backend.list(layout.INDEX)}
        index, covered, superseded = self._read_index_cache(names)
        missing = sorted(names - covered - superseded)
        fetched, problems = self._fetch_named_indexes(missing)
        superseded = (superseded | _superseded_by(fetched)) & names
        if covered & superseded:
            # The cache holds entries of objects replaced since: start afresh.
            index, covered = MemoryIndex(), set()
            rest = sorted(names - superseded - set(fetched) - set(problems))
            more, more_problems = self._fetch_named_indexes(rest)
            fetched.update(more)
            problems.update(more_problems)
            superseded = (superseded | _superseded_by(fetched)) & names
        index.add_decoded([d for n, d in fetched.items() if n not in superseded])
        index.compact()
        problems = {n: e for n, e in problems.items() if n not in superseded}
        good = names - set(problems) - superseded
        with self._lock:
            old_index, old_ids = self.index, self.index_ids
        gone: set[bytes] = set()
        if self._session is None and self._epoch is not None and not old_ids <= names:
            # Index objects this process relied on were replaced before it
            # started writing: remember which packs left, so the session start
            # can check they were not deleted (_check_not_pruned_underneath).
            gone = old_index.pack_ids() - index.pack_ids()
        with self._lock:
            if self._epoch is None:
                self._epoch = epoch
            self._gone_packs |= gone
            self.index = index
            self.index_ids = good
            self.index_problems = problems
            self.index_superseded = superseded
        if missing or covered != good:
            self._write_index_cache(index, good, superseded)
            if self._cache is not None:
                # Packs that left the index (prune) leave the local cache too.
                self._cache.retain_packs({p.hex() for p in index.pack_ids()})

    def _fetch_named_indexes(
        self, names: list[str]
    ) -> tuple[dict[str, DecodedIndex], dict[str, str]]:
        """Fetch and decode index objects: ({name: decoded}, {name: error})."""
        found = self.fetch_index_objects(names)
        return (
            {n: d for n, d in found.items() if not isinstance(d, str)},
            {n: d for n, d in found.items() if isinstance(d, str)},
        )

    def fetch_index_objects(self, names: Iterable[str]) -> dict[str, DecodedIndex | str]:
        """Index objects by name, decoded, or the error text for a damaged one."""
        todo = list(names)
        if not todo:
            return {}

        def one(name: str) -> DecodedIndex | str:
            try:
                plain = self._sealer.open(
                    Kind.INDEX, self._get_verified(layout.INDEX + name, name), name=f"index/{name}"
                )
                return decode_index(plain, name=f"index/{name}")
            except (CorruptObject, ObjectNotFound, UnsupportedVersion) as e:
                return str(e)

        with ThreadPoolExecutor(min(FETCH_THREADS, len(todo))) as ex:
            return dict(zip(todo, ex.map(one, todo), strict=True))

    def _read_index_cache(self, names: set[str]) -> tuple[MemoryIndex, set[str], set[str]]:
        """(cached index, objects it covers, objects known superseded), or empty."""
        path = self._index_cache_path()
        if path is None or not path.exists():
            return MemoryIndex(), set(), set()
        try:
            # A memoryview, so that no slice copies the envelope or the plaintext;
            # the loaded arrays are views into the decrypted bytes.
            plain = self._sealer.open(Kind.CACHE, memoryview(path.read_bytes()),
                                      name="index cache")
            hlen = int.from_bytes(plain[:4], "little")
            header = json.loads(plain[4 : 4 + hlen])
            covered = set(header["index"])
            superseded = set(header["superseded"])
            if not covered <= names:
                # Index objects were removed (compaction): start afresh rather
                # than keep entries for packs that may be gone.
                return MemoryIndex(), set(), set()
            return MemoryIndex.load(plain, 4 + hlen), covered, superseded & names
        except Exception:
            # A damaged cache is never trusted: rebuild from the repository.
            return MemoryIndex(), set(), set()

    def _write_index_cache(
        self, index: MemoryIndex, names: set[str], superseded: set[str] | None = None
    ) -> None:
        path = self._index_cache_path()
        if path is None:
            return
        header = json.dumps(
            {"index": sorted(names), "superseded": sorted(superseded or ())}
        ).encode()
        # Padded (JSON allows trailing spaces) so that the arrays after it are
        # aligned and load as views, not copies (MemoryIndex.load).
        header += b" " * (-(4 + len(header)) % 8)
        plain = index.dump(prefix=(len(header).to_bytes(4, "little"), header))
        # The cache is an optimisation; failing to write it is harmless.
        write_atomic(path, self._sealer.seal(Kind.CACHE, plain, compress=False))

    @property
    def keeps_local_state(self) -> bool:
        """Whether this repository has a local cache directory for local state."""
        return self._cache_dir is not None

    def load_local_state(self, name: str) -> bytes | None:
        """The local state ``name`` (in this repository's cache directory), or None
        when there is none, or it is damaged, foreign or not ours (sealed with
        another key or for another name): local state is never trusted unsealed."""
        if self._cache_dir is None:
            return None
        env = read_file(self._cache_dir / name)
        if env is None:
            return None
        try:
            return self._sealer.open(Kind.CACHE, env, _local_context(name), name=name)
        except (CorruptObject, UnsupportedVersion):
            return None

    def save_local_state(self, name: str, plain: bytes) -> None:
        """Seal ``plain`` as the local state ``name``; a failure to write only costs
        the optimisation the state is for."""
        if self._cache_dir is not None:
            write_atomic(self._cache_dir / name,
                         self._sealer.seal(Kind.CACHE, plain, _local_context(name)))

    def lookup(self, blob_type: int, blob_id: bytes) -> BlobLocation | None:
        return self.index.lookup(blob_type, blob_id)

    def lookup_many(self, blob_type: int, blob_ids: list[bytes]) -> list[BlobLocation | None]:
        """``lookup`` of each of ``blob_ids`` (in one search of the index's arrays)."""
        return self.index.lookup_many(blob_type, blob_ids)

    def has_blob(self, blob_type: int, blob_id: bytes) -> bool:
        return self.index.has(blob_type, blob_id)

    # ------------------------------------------------------------ write path

    def save_blob(
        self, blob_type: int, data: bytes | memoryview, *, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless a blob with the same ID exists. Returns (ID, added)."""
        if self._session is None:
            self._writer_session()
        bid = blob_id if blob_id is not None else self.blob_id(data)
        key = (blob_type, bid)
        with self._lock:
            if key in self._pending or self.index.has(blob_type, bid):
                return bid, False
            self._pending.add(key)
        self._seal_and_pack(blob_type, bid, data)
        return bid, True

    def _seal_and_pack(self, blob_type: int, bid: bytes, data: bytes | memoryview) -> None:
        """Seal a blob already marked pending and add it to its type's pack.

        Data blobs may be kept back as dictionary training samples and sealed
        later, with the dictionary (repo/dictionary.py; ``flush`` seals them all).
        """
        if blob_type != BlobType.DATA:
            self._seal_batch(blob_type, [(bid, data)], None)
            return
        try:
            admitted = self.dictionaries.admit(bid, data)
        except BaseException:
            with self._lock:
                self._pending.discard((blob_type, bid))
            raise
        if admitted is not None:
            self._seal_batch(blob_type, admitted[1], admitted[0])

    def _seal_batch(
        self, blob_type: int, blobs: list[tuple[bytes, bytes | memoryview]], dictionary: Dictionary | None
    ) -> None:
        done = 0  # blobs stored, or forgotten by their own error handling
        try:
            if batch.seal is not None and len(blobs) > 1:
                # The samples kept back while the dictionary was trained: joined,
                # they are sealed in one native call without the GIL, rather
                # than one by one holding it (_seal_one).
                items, offset = [], 0
                for bid, data in blobs:
                    items.append((offset, len(data), blob_context(blob_type, bid), dictionary))
                    offset += len(data)
                envelopes = self._sealer.seal_window(
                    _KIND_OF_TYPE[blob_type], b"".join([data for _, data in blobs]), items
                )
                for (bid, data), env in zip(blobs, envelopes, strict=True):
                    done += 1
                    self._add_sealed(blob_type, bid, env, len(data))
            else:
                for bid, data in blobs:
                    done += 1
                    self._seal_one(blob_type, bid, data, dictionary)
        except BaseException:
            with self._lock:  # the rest were never stored either
                for later, _ in blobs[done:]:
                    self._pending.discard((blob_type, later))
            raise

    def save_data_window(self, data: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
        """``save_blob`` of the data blob ``data[offset:offset + size]`` for each
        ``(offset, size)`` of ``spans`` (files a backup read together); their IDs.

        With the native stage built (repo/batch.py), one call hashes every
        blob and one seals the new ones, each without the GIL. A blob small
        enough for the dictionary while this writer has not settled on one
        (``DictionaryStore.settled``) goes through ``admit`` as in ``save_blob``,
        as a copy: a training sample kept must not keep ``data`` alive.
        """
        if batch.seal is None or batch.blob_ids is None:
            return [self.save_blob(BlobType.DATA, data[o : o + n])[0] for o, n in spans]
        if self._session is None:
            self._writer_session()
        limit = self.dictionaries.sample_max
        settled = self.dictionaries.settled()
        ids = batch.blob_ids(self._master.id_mac, data, spans)
        native: list[tuple[bytes, int, int]] = []
        admit: list[tuple[bytes, int, int]] = []
        with self._lock:
            for bid, (offset, size) in zip(ids, spans, strict=True):
                key = (BlobType.DATA, bid)
                if key in self._pending or self.index.has(BlobType.DATA, bid):
                    continue  # stored, or being stored (an earlier span of this window)
                self._pending.add(key)
                (admit if settled is None and size <= limit else native).append((bid, offset, size))
        todo = native + admit
        done = 0  # blobs of todo stored, or forgotten by their own error handling
        try:
            envelopes = self._sealer.seal_window(Kind.DATA, data, [
                (offset, size, blob_context(BlobType.DATA, bid),
                 settled[0] if settled is not None and size <= limit else None)
                for bid, offset, size in native
            ]) if native else []
            for bid, offset, size in todo:
                done += 1
                if done <= len(native):
                    self._add_sealed(BlobType.DATA, bid, envelopes[done - 1], size)
                else:
                    self._seal_and_pack(BlobType.DATA, bid, data[offset : offset + size])
        except BaseException:
            with self._lock:  # the rest were never stored
                for bid, _, _ in todo[done:]:
                    self._pending.discard((BlobType.DATA, bid))
            raise
        return ids

    def _seal_one(
        self, blob_type: int, bid: bytes, data: bytes | memoryview, dictionary: Dictionary | None
    ) -> None:
        """Seal one blob and add it to its type's pack.

        On a sealing error the blob leaves the pending set, so a later save can store it.
        """
        key = (blob_type, bid)
        kind = _KIND_OF_TYPE[blob_type]
        try:
            if batch.seal is not None and len(data) <= batch.SEAL_HOLDS_GIL_UPTO:
                # Natively, holding the GIL (batch.py): the same envelope, without
                # the three hand-offs of compressing, drawing a nonce and encrypting.
                env = self._sealer.seal_window(
                    kind, data, [(0, len(data), blob_context(blob_type, bid), dictionary)]
                )[0]
            else:
                env = self._sealer.seal_view(kind, data, blob_context(blob_type, bid), dictionary=dictionary)
        except BaseException:
            with self._lock:
                self._pending.discard(key)
            raise
        self._add_sealed(blob_type, bid, env, len(data))

    def _add_sealed(self, blob_type: int, bid: bytes, env: bytes | memoryview, raw_length: int) -> None:
        """Add a sealed blob to its type's pack; upload the pack when it reaches the target size."""
        finished: PackWriter | None = None
        with self._lock:
            packer = self._packers.get(blob_type)
            if packer is None:
                packer = self._packers[blob_type] = PackWriter(self._stage)
            spill = packer.add(blob_type, bid, env, raw_length)
            self.stats_added["blobs"] += 1
            self.stats_added["bytes_raw"] += raw_length
            self.stats_added["bytes_stored"] += len(env)
            if packer.size >= self.config.params.pack_size:
                finished = self._packers.pop(blob_type)
                self._inflight += 1
        if spill is not None:
            packer.spill(spill)
        if finished is not None:
            self._upload(finished)

    def _upload(self, packer: PackWriter) -> None:
        """Upload a finished pack (``_inflight`` already counted it)."""
        try:
            try:
                pack_hex, data, blobs = packer.finish(self._sealer)
                if data is None:
                    packer.commit(layout.pack(pack_hex))
                else:
                    self.backend.put(layout.pack(pack_hex), data)
            except BaseException:
                packer.discard()
                # The blobs were never stored: forget them, or a later save of
                # the same data would be skipped as "pending" and never written.
                with self._lock:
                    for b in packer.blobs:
                        self._pending.discard((b.type, b.id))
                raise
            if self._cache is not None and blobs and all(b.type == BlobType.TREE for b in blobs):
                self._keep_tree_pack(self._cache, pack_hex, data)
            pack_id = bytes.fromhex(pack_hex)
            write_index = False
            with self._lock:
                for b in blobs:
                    self.index.add(b.type, b.id, pack_id, b.offset, b.length, b.raw_length)
                    self._pending.discard((b.type, b.id))
                self._unindexed[pack_id] = blobs
                self.stats_added["packs"] += 1
                write_index = (
                    len(self._unindexed) >= self.index_every_packs
                    or self._clock() - self._last_index_time >= self.index_every_seconds
                )
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()
        if write_index:
            self._write_index()

    def _keep_tree_pack(self, cache: RepoCache, pack_hex: str, data: memoryview | None) -> None:
        """Keep a tree pack this writer uploaded in the local cache, as a fetched
        one is kept: the next backup reads its trees back (as the parent's),
        and would otherwise download them. A staged pack (only the local
        backend stages) is read back from the repository. Checked against its
        name like a fetched pack; any failure only costs that download later."""
        try:
            raw = bytes(data) if data is not None else self.backend.get(layout.pack(pack_hex))
            verify_pack_bytes(raw, pack_hex)
        except Exception:
            return
        cache.store_pack(pack_hex, raw)
        with self._lock:
            self._fresh_packs.add(pack_hex)

    def _write_index(self) -> None:
        with self._lock:
            batch, self._unindexed = self._unindexed, {}
            self._last_index_time = self._clock()
        if not batch:
            return
        packs = {
            pid: [(b.type, b.id, b.offset, b.length, b.raw_length) for b in blobs]
            for pid, blobs in batch.items()
        }
        env = self._sealer.seal(Kind.INDEX, encode_index(packs))
        name = object_id(env)
        try:
            self._writer_session().check("write an index object")
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
        dictionary, kept = self.dictionaries.release()
        self._seal_batch(BlobType.DATA, kept, dictionary)
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

    def index_uploaded(self) -> None:
        """Index the packs already uploaded, without uploading the ones still being filled.

        For a writer that stops early (interrupted backup): uploads in flight
        are waited for, then one index object names every uploaded pack not
        yet indexed, so the next run finds that data instead of uploading it
        again. Blobs still in unfinished packs are not stored. No snapshot may
        be saved on the strength of this (use ``flush`` for that).
        """
        with self._lock:
            while self._inflight:
                self._idle.wait()
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

    def open_blobs(self, data: bytes | memoryview, start: int, locs: list[BlobLocation]) -> list[bytes | None]:
        """``open_blob`` and ``verify_blob_id`` of each blob of ``locs`` in ``data``
        (a range of their pack read from offset ``start``), in one native call
        (``Sealer.open_blobs``): the plaintext of each that opens cleanly, has
        its index length and matches its ID; None for every other one, which
        the caller opens with ``open_blob`` to learn what is wrong."""
        return self._sealer.open_blobs(data, _openings(locs, start), self._master.id_mac,
                                       self.dictionaries.for_reading())

    def check_blobs(self, data: bytes | memoryview, start: int, blobs: list[PackedBlob]) -> bytes | None:
        """For each blob of a pack's trailer (``blobs``) held whole in ``data``
        (the pack from offset ``start``): 1 when it opens cleanly, has its
        trailer length and matches its ID, 0 otherwise (``verify_blob_envelope``
        then says what is wrong), in one native call without keeping any
        plaintext; None without the native stage."""
        return self._sealer.check_blobs(data, _openings(blobs, start), self._master.id_mac,
                                        self.dictionaries.for_reading())

    def load_blob(self, blob_type: int, blob_id: bytes, *, keep: bool = True) -> bytes:
        """A blob's plaintext.

        Trees stay in memory for the next call (up to ``TREE_CACHE_BYTES``)
        unless ``keep`` is false: for a caller that reads each tree once.
        """
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
        if blob_type == BlobType.TREE and self._cache is not None:
            plain = self._load_tree_via_cache(loc)
        else:
            plain = self.open_blob(loc, self.read_pack_range(loc.pack_id, loc.offset, loc.length))
        if blob_type == BlobType.TREE and keep:
            with self._lock:
                self._tree_cache[blob_id] = plain
                self._tree_cache_bytes += len(plain)
                while self._tree_cache_bytes > TREE_CACHE_BYTES and self._tree_cache:
                    _, old = self._tree_cache.popitem(last=False)
                    self._tree_cache_bytes -= len(old)
        return plain

    def _load_tree_via_cache(self, loc: BlobLocation) -> bytes:
        """A tree blob from the locally cached copy of its pack, fetching the pack once.

        A cached pack that fails its hash or the blob's authentication is
        dropped and fetched again; a pack that is damaged in the repository
        itself is not cached, and the blob is read from it directly (it may
        still be intact), so the error, if any, names the repository's object.
        """
        cache = self._cache
        assert cache is not None
        plain = self._tree_from_cached_pack(cache, loc)
        if plain is not None:
            return plain
        with cache.fetch_lock(loc.pack_hex):
            # Another thread may have fetched it while we waited.
            plain = self._tree_from_cached_pack(cache, loc)
            if plain is not None:
                return plain
            data = self.backend.get(layout.pack(loc.pack_hex))
            try:
                verify_pack_bytes(data, loc.pack_hex)
            except CorruptObject:
                return self.open_blob(loc, self.read_pack_range(loc.pack_id, loc.offset, loc.length))
            cache.store_pack(loc.pack_hex, data)
            with self._lock:
                self._fresh_packs.add(loc.pack_hex)
        return self.open_blob(loc, data[loc.offset : loc.offset + loc.length])

    def _tree_from_cached_pack(self, cache: RepoCache, loc: BlobLocation) -> bytes | None:
        """The blob at ``loc`` from the cached copy of its pack, if that copy may
        be used and holds it intact; None otherwise (a bad copy is dropped)."""
        # Without read-through, packs this instance fetched itself still count:
        # their copies were checked against the repository moments ago.
        with self._lock:
            trusted = self.read_through_cache or loc.pack_hex in self._fresh_packs
        if not trusted:
            return None
        envelope = cache.read_pack(loc.pack_hex, loc.offset, loc.length)
        if envelope is None:
            return None
        try:
            return self.open_blob(loc, envelope)
        except (CorruptObject, UnsupportedVersion):
            cache.drop_pack(loc.pack_hex)
            return None

    def verify_blob_id(self, blob_id: bytes, plain: bytes | memoryview) -> bool:
        return self.blob_id(plain) == blob_id

    def verify_blob_envelope(self, blob: PackedBlob, envelope: bytes | memoryview, pack_hex: str) -> None:
        """Raise unless ``envelope`` opens as ``blob`` says: its type, length and content ID.

        What ``open_blob`` and ``verify_blob_id`` check together, without
        keeping the plaintext (``Sealer.open_digest``): for check --read-data.
        """
        name = f"blob {blob.id.hex()} in pack {pack_hex}"
        kind = _BLOB_KIND.get(blob.type)  # type: ignore[call-overload]  # any int: unknown types are damage
        if kind is None:
            raise CorruptObject(name, f"unknown blob type {blob.type}")
        hasher = blake3.blake3(key=self._master.id_mac)
        length = self._sealer.open_digest(
            kind, envelope, blob_context(blob.type, blob.id), hasher, expect=blob.raw_length, name=name
        )
        if length != blob.raw_length:
            raise CorruptObject(name, "length differs from the index")
        if hasher.digest() != blob.id:
            raise CorruptObject(f"blob {blob.id.hex()}", "content does not match its ID")

    # ------------------------------------------------------------ small objects

    def _kind(self, kind: str) -> Kind:
        try:
            return _OBJECT_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown object kind {kind!r}")

    def save_object(self, kind: str, data: bytes) -> str:
        env = self._sealer.seal(self._kind(kind), data)
        name = object_id(env)
        session = self._writer_session()
        if kind == "snapshots":
            # A snapshot must not point at data a prune may have deleted
            # (docs/design.md, "Prune beside running backups").
            session.check("save a snapshot", remote=True)
        self.backend.put(f"{kind}/{name}", env)
        if kind == "snapshots" and session.fenced:
            # The put took so long that prune may have judged this writer stale
            # before it landed: take it back rather than leave it unprotected.
            self.backend.delete(f"{kind}/{name}")
            session.check("save a snapshot")
        if self._cache is not None:
            self._cache.store_object(kind, name, env)
        return name

    def load_object(self, kind: str, object_id_hex: str) -> bytes:
        key = f"{kind}/{object_id_hex}"
        obj_kind = self._kind(kind)
        cache = self._cache
        if cache is not None and self.read_through_cache:
            env = cache.load_object(kind, object_id_hex)
            if env is not None:
                try:
                    return self._sealer.open(obj_kind, env, name=key)
                except (CorruptObject, UnsupportedVersion):
                    cache.drop_object(kind, object_id_hex)  # never trusted: fetch again
        env = self._get_verified(key, object_id_hex)
        plain = self._sealer.open(obj_kind, env, name=key)
        if cache is not None:
            cache.store_object(kind, object_id_hex, env)
        return plain

    def list_objects(self, kind: str) -> list[str]:
        self._kind(kind)
        names = sorted(layout.name_of(o.key) for o in self.backend.list(f"{kind}/"))
        if self._cache is not None:
            # The listing is the truth: cached copies of removed objects go.
            self._cache.retain_objects(kind, names)
        return names

    def delete_object(self, kind: str, object_id_hex: str) -> None:
        self._kind(kind)
        self.backend.delete(f"{kind}/{object_id_hex}")
        if self._cache is not None:
            self._cache.drop_object(kind, object_id_hex)

    # ------------------------------------------------------------ maintenance reads

    def sealer(self) -> Sealer:
        """The envelope codec (for check and repair, which read raw objects)."""
        return self._sealer

    def iter_index_objects(self) -> Iterator[tuple[str, DecodedIndex | str]]:
        """Every index object, decoded, or the error text for a damaged one."""
        for o in self.backend.list(layout.INDEX):
            name = layout.name_of(o.key)
            yield name, self.fetch_index_objects([name])[name]

    # ------------------------------------------------------------ writer sessions

    @property
    def session(self) -> WriterSession | None:
        """This process's writer session, once it has written anything."""
        return self._session

    def _writer_session(self) -> WriterSession:
        """The writer session, created (and checked) before this process's first write."""
        s = self._session
        if s is not None:
            return s
        with self._session_lock:
            if self._session is not None:
                return self._session
            start = self._epoch if self._epoch is not None else self.session_settings.clock.time()
            s = WriterSession(self, self.session_settings, start=start,
                              operation=self.session_operation)
            s.begin()
            try:
                self._check_not_pruned_underneath()
            except BaseException:
                s.end()
                raise
            self._session = s
            return s

    def _check_not_pruned_underneath(self) -> None:
        """Refuse to start writing if a prune swept packs this process's index showed it.

        Runs after the session object exists, so every sweep that starts later
        waits for this process. Sweeps that started earlier are caught here:
        one still running is ``sweeping`` in its mark; a finished one deleted
        packs that left our index (docs/design.md, "Prune beside running
        backups", the writer's first write).
        """
        names = {layout.name_of(o.key) for o in self.backend.list(layout.INDEX)}
        with self._lock:
            rewritten = not self.index_ids <= names
        if rewritten:
            self.load_index()  # also records the packs that left the index
        with self._lock:
            gone = {p.hex() for p in self._gone_packs}
        if not gone:
            return
        marks, _ = list_marks(self)
        for m in marks:
            if m.state == SWEEPING and gone & m.candidates.keys():
                raise SessionLost(
                    "refusing to write: a prune is deleting packs this process may reuse; "
                    "nothing was written, run it again"
                )
        if len(gone) > 32:
            present = {layout.name_of(o.key) for o in self.backend.list(layout.DATA)} & gone
        else:
            present = set()
            for p in gone:
                try:
                    self.backend.stat(layout.pack(p))
                    present.add(p)
                except ObjectNotFound:
                    pass
        lost = gone - present
        if lost:
            raise SessionLost(
                f"refusing to write: a prune deleted {len(lost)} pack(s) this process may "
                "reuse; nothing was written, run it again"
            )
        with self._lock:
            self._gone_packs.clear()

    def _end_session(self) -> None:
        with self._session_lock:
            s, self._session = self._session, None
        if s is not None:
            s.end()

    def end_session(self) -> None:
        """End this process's writer session and reload the index: a fresh start.

        For long-lived processes between jobs: prune waits for sessions that
        began before its mark, and a writer's first write checks everything
        pruned since its first index load, so a process that keeps a
        repository open for days should call this after each job (and before
        the next one, even if the last one only read). The next write starts a
        new session on the fresh view. Pending blobs must have been flushed.
        """
        with self._lock:
            if self._pending or self._unindexed or any(len(p) for p in self._packers.values()):
                raise UsageError("flush before ending the writer session")
        self._end_session()
        with self._lock:
            self._epoch = None
            self._gone_packs.clear()
        self.load_index()

    # ------------------------------------------------------------ control objects

    def put_control(self, key: str, doc: dict[str, Any], *, create_only: bool = False) -> None:
        """Write a small encrypted JSON object (sessions, locks, prune marks)."""
        env = self._sealer.seal(Kind.CONFIG, json.dumps(doc, sort_keys=True).encode(),
                                _control_context(key))
        self.backend.put(key, env, create_only=create_only)

    def get_control(self, key: str) -> dict[str, Any]:
        plain = self._sealer.open(Kind.CONFIG, self.backend.get(key), _control_context(key),
                                  name=key)
        try:
            doc = json.loads(plain)
        except ValueError as e:
            raise CorruptObject(key, f"not JSON: {e}")
        if not isinstance(doc, dict):
            raise CorruptObject(key, "not a JSON object")
        return doc

    # ------------------------------------------------------------ maintenance writes

    def repack_blob(self, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> bool:
        """Store a new copy of a blob the index already has (prune's repack).

        The copy takes the normal write path: packed, uploaded, then indexed by
        ``flush``. Returns False if a copy is already pending in this process
        (``flush`` stores it).
        """
        self._writer_session()
        key = (blob_type, blob_id)
        with self._lock:
            if key in self._pending:
                return False
            self._pending.add(key)
        self._seal_and_pack(blob_type, blob_id, data)
        return True

    def write_index_object(
        self, pack_ids: list[bytes], entries: np.ndarray, supersedes: Iterable[str] = ()
    ) -> str:
        """Write one index object naming existing packs (prune, repair); returns its name.

        ``entries`` is an ``index.ENTRY_DTYPE`` array numbering ``pack_ids``.
        ``supersedes`` names the index objects whose still-valid entries this
        one carries. The in-memory index is not changed (``load_index`` does).
        """
        session = self._writer_session()
        plain = encode_index_arrays(pack_ids, entries, [bytes.fromhex(n) for n in supersedes])
        env = self._sealer.seal(Kind.INDEX, plain)
        name = object_id(env)
        session.check("write an index object")
        self.backend.put(layout.INDEX + name, env)
        return name

    def delete_index_object(self, name: str) -> None:
        self.backend.delete(layout.INDEX + name)


def _superseded_by(decoded: dict[str, DecodedIndex]) -> set[str]:
    return {s.hex() for d in decoded.values() for s in d.supersedes}


def _local_context(name: str) -> bytes:
    return b"local " + name.encode()


def _control_context(key: str) -> bytes:
    # Bound into the envelope: a session object cannot pass for a lock or a mark.
    return b"resurgo-control:" + key.split("/", 1)[0].encode()
