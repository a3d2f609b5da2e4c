"""Shared helpers for the repository-layer tests: settings, wrappers, builders."""

from __future__ import annotations

import builtins
import random
import threading
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, settings

from resurgo.backend import Backend, ObjectInfo, layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import InjectedFault
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.crypto import Kind
from resurgo.repo.index import DecodedIndex, decode_index
from resurgo.testing.forwarding import ForwardingBackend

PASSWORD = "correct horse"

# Every property test uses one of these, so the whole tests/repo run stays
# well within its time budget on two cores.
QUICK = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOWER = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def new_repo(
    backend: Backend | None = None,
    *,
    cache_dir: Path | None = None,
    params: RepoParams | None = None,
) -> Repository:
    return Repository.init(
        backend if backend is not None else MemoryBackend(),
        PASSWORD,
        params=params or RepoParams.tiny_for_tests(),
        kdf=KDFParams.weak_for_tests(),
        cache_dir=cache_dir,
    )


def blobs_of(seed: int, count: int, *, size: int = 3000) -> list[bytes]:
    """Distinct incompressible blobs, reproducible from ``seed``."""
    r = random.Random(seed)
    return [r.randbytes(r.randrange(size // 2, size)) for _ in range(count)]


def copy_backend(src: Backend) -> MemoryBackend:
    dst = MemoryBackend()
    for o in src.list():
        dst.put(o.key, src.get(o.key))
    return dst


def flip(backend: Backend, key: str, offset: int, mask: int = 0x01) -> None:
    data = bytearray(backend.get(key))
    data[offset] ^= mask
    backend.put(key, bytes(data))


def keys_under(backend: Backend, prefix: str) -> list[str]:
    return sorted(o.key for o in backend.list(prefix))


def decode_index_object(repo: Repository, key: str) -> DecodedIndex:
    plain = repo.sealer().open(Kind.INDEX, repo.backend.get(key), name=key)
    return decode_index(plain, name=key)


def indexed_packs(repo: Repository, key: str) -> set[str]:
    return {layout.pack(p.hex()) for p in decode_index_object(repo, key).pack_ids}


class RecordingBackend(ForwardingBackend):
    """Records every call in order; counts gets per key prefix."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _log(self, verb: str, key: str) -> None:
        with self._lock:
            self.events.append((verb, key))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._log("get", key)
        return self.inner.get(key, offset, length)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self._log("put-start", key)
        self.inner.put(key, data, create_only=create_only)
        self._log("put-done", key)

    def stat(self, key: str) -> ObjectInfo:
        self._log("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._log("list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._log("delete", key)
        self.inner.delete(key)

    def count(self, verb: str, prefix: str) -> int:
        with self._lock:
            return sum(1 for v, k in self.events if v == verb and k.startswith(prefix))

    def writes(self) -> builtins.list[tuple[str, str]]:
        with self._lock:
            return [(v, k) for v, k in self.events if v in ("put-start", "put-done", "delete")]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


class FailPutsUnder(ForwardingBackend):
    """Fails every put whose key starts with ``prefix`` (a writer dying there)."""

    def __init__(self, inner: Backend, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.failed: list[str] = []

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        if key.startswith(self.prefix):
            self.failed.append(key)
            raise InjectedFault(f"injected failure writing {key}")
        self.inner.put(key, data, create_only=create_only)


def save_all(repo: Repository, blobs: list[bytes], blob_type: int = BlobType.DATA) -> list[bytes]:
    return [repo.save_blob(blob_type, b)[0] for b in blobs]
