"""A backend that passes every call to another: the base of the tests' observing wrappers.

A test that counts, records, slows down or breaks one kind of call subclasses
``ForwardingBackend`` and overrides that call only, so every wrapper keeps the
whole Backend protocol without writing it out again.
"""

from __future__ import annotations

from collections.abc import Iterator

from resurgo.backend import Backend, ObjectInfo


class ForwardingBackend:
    """Every Backend call goes to ``inner`` unchanged."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self.inner.put(key, data, create_only=create_only)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
