"""Storage backends: the small key/value interface every repository lives on.

A *backend* stores *objects*: immutable byte strings under string *keys*. Keys
use ``/`` as separator whatever the medium, and every backend maps them the same
way (see ``layout``), so a repository copied file-by-file between media stays
valid.

The contract (checked for every implementation by ``resurgo.testing.contract``):

* ``put`` is atomic: a reader sees either no object or the whole new object,
  never a prefix; temporary files are never listed. ``put`` of an existing key
  replaces it (atomically) unless ``create_only=True``, which raises
  ``ObjectExists`` instead and leaves the old object untouched. When ``put``
  returns, the object is durable (fsynced, or acknowledged by the server).
* ``get(key, offset, length)`` returns exactly ``length`` bytes starting at
  ``offset`` (``length=None``: to the end). A range that extends past the end
  raises ``InvalidRange``; short data is never returned silently. A missing key
  raises ``ObjectNotFound``.
* ``stat`` returns an ``ObjectInfo`` or raises ``ObjectNotFound``.
* ``list(prefix)`` yields ``ObjectInfo`` for every key starting with ``prefix``
  (recursively, in no particular order). Listing a prefix with no objects
  yields nothing.
* ``delete`` is idempotent: deleting a missing key succeeds (object stores
  cannot tell cheaply, and a crashed prune must be able to redo its deletes).
* Backends raise only ``resurgo.errors.BackendError`` subclasses, with
  ``retryable`` set: True for transient conditions (timeouts, resets,
  throttling, 5xx), False for permanent ones (not found, permission denied,
  disk full, bad credentials). Backends do not retry on their own beyond a
  bounded SDK-level attempt; ``wrappers.RetryBackend`` is the one retry layer.
* Every method may be called concurrently from several threads.
* ``close`` releases connections; calling it twice is harmless.

Optional capability, *staging* (``stager``): a backend that stores objects as
local files may offer ``stage()``, which returns a ``StagedObject``: a
temporary object written piece by piece, at any offsets and from several
threads, then committed under a key with the same guarantees as ``put`` (atomic,
durable when ``commit`` returns), or discarded. The repository writes packs
this way when it can, so a pack never has to be held in memory whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float | None = None  # seconds since the epoch, when the medium knows it


@runtime_checkable
class Backend(Protocol):
    """See the module docstring for the contract every method obeys."""

    @property
    def url(self) -> str:
        """Where this backend points, with any secret redacted; safe to print."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


class StagedObject(Protocol):
    """A temporary object being written; see "staging" in the module docstring.

    ``write_at`` may be called from several threads at once for disjoint
    ranges; ``read_at`` reads back what was written. ``commit`` and ``discard``
    end it (exactly one of them, once). Errors are backend errors, as for ``put``.
    """

    def write_at(self, offset: int, parts: list[bytes | memoryview]) -> None: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def commit(self, key: str) -> None: ...

    def discard(self) -> None: ...


def stager(backend: Backend) -> Callable[[], StagedObject] | None:
    """The backend's ``stage`` method if it offers staging, else None."""
    stage = getattr(backend, "stage", None)
    return stage if callable(stage) else None


class layout:  # a namespace of key-naming rules, not a class to instantiate
    """One key layout for every backend (ARCHITECTURE.md, point 5).

    config                 the repository config (encrypted)
    keys/<id>              key files (password-wrapped master key)
    snapshots/<id>         snapshot objects
    index/<id>             index objects
    data/<2 hex>/<id>      packs, fanned out by the first byte of their ID
    locks/<id>             lock objects (used by maintenance operations)
    sessions/<id>          writer sessions: one per process writing (heartbeats)
    prune/<id>             prune marks: packs set aside for deletion
    dicts/<id>             compression dictionaries (never deleted)
    """

    CONFIG = "config"
    KEYS = "keys/"
    SNAPSHOTS = "snapshots/"
    INDEX = "index/"
    DATA = "data/"
    LOCKS = "locks/"
    SESSIONS = "sessions/"
    PRUNE = "prune/"
    DICTS = "dicts/"

    @staticmethod
    def pack(pack_id_hex: str) -> str:
        return f"data/{pack_id_hex[:2]}/{pack_id_hex}"

    @staticmethod
    def name_of(key: str) -> str:
        """The object's own name (its ID) without the directory part."""
        return key.rsplit("/", 1)[-1]


def validate_key(key: str) -> None:
    """Reject keys no backend can store identically (shared by implementations)."""
    from resurgo.errors import BackendError

    if (
        not key
        or key.startswith("/")
        or key.endswith("/")
        or "\x00" in key
        or "//" in key
        or any(part in (".", "..") for part in key.split("/"))
    ):
        raise BackendError(f"invalid object key {key!r}")
