"""The in-memory backend, and the contract's range rule as a reusable function.

``MemoryBackend`` keeps objects in a dict guarded by one lock. It obeys the
whole backend contract (atomic puts, create-only, ranged gets, prefix listing,
idempotent delete, thread safety), so unit tests of upper layers can run on it
at memory speed. Each instance is independent: there is no process-wide
registry of named stores (global backend state is what fsspec regrets).

``resolve_range`` is the contract's rule for ``get(key, offset, length)``
against an object of known size; every backend that knows the size before
reading uses it so they all refuse the same ranges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from resurgo.backend import ObjectInfo, validate_key
from resurgo.errors import InvalidRange, ObjectExists, ObjectNotFound


def resolve_range(key: str, offset: int, length: int | None, size: int) -> tuple[int, int]:
    """Return ``(start, end)`` for a read of ``key`` (``size`` bytes), or raise ``InvalidRange``.

    ``length=None`` reads to the end. ``offset == size`` is a valid empty read;
    any byte past the end makes the whole range invalid, because silently
    returning short data is how truncated objects go unnoticed.
    """
    if offset < 0 or (length is not None and length < 0):
        raise InvalidRange(f"invalid range for {key}: offset={offset} length={length}")
    end = size if length is None else offset + length
    if offset > size or end > size:
        raise InvalidRange(
            f"range past the end of {key}: offset={offset} length={length} size={size}"
        )
    return offset, end


class MemoryBackend:
    """A dict of ``key -> (bytes, mtime)``; thread-safe, nothing persists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, float]] = {}

    @property
    def url(self) -> str:
        return "memory://"

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFound(key)
        data = entry[0]
        start, end = resolve_range(key, offset, length, len(data))
        return data[start:end]

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        validate_key(key)
        # Copy outside the lock: the caller may reuse its buffer after put returns.
        stored = bytes(data)
        with self._lock:
            if create_only and key in self._objects:
                raise ObjectExists(key)
            self._objects[key] = (stored, time.time())

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFound(key)
        return ObjectInfo(key, len(entry[0]), entry[1])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Snapshot under the lock so concurrent puts/deletes cannot break the iteration.
        with self._lock:
            infos = [
                ObjectInfo(key, len(data), mtime)
                for key, (data, mtime) in self._objects.items()
                if key.startswith(prefix)
            ]
        yield from infos

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def close(self) -> None:
        # Nothing to release; the objects stay readable so tests can inspect them.
        pass
