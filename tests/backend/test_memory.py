"""MemoryBackend: the contract suite, instance independence, and the shared range rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend.memory import MemoryBackend, resolve_range
from resurgo.errors import InvalidRange
from resurgo.testing.contract import BackendContract


class TestMemoryBackendContract(BackendContract):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()


def test_each_memory_backend_is_an_independent_store() -> None:
    first, second = MemoryBackend(), MemoryBackend()
    first.put("config", b"one")
    assert list(second.list()) == []
    second.put("config", b"two")
    assert first.get("config") == b"one"


def test_objects_stay_readable_after_close() -> None:
    backend = MemoryBackend()
    backend.put("config", b"kept")
    backend.close()
    assert backend.get("config") == b"kept"


@given(
    size=st.integers(0, 1000),
    offset=st.integers(-5, 1100),
    length=st.one_of(st.none(), st.integers(-5, 1100)),
)
def test_resolve_range_returns_exactly_the_requested_bytes_or_raises(
    size: int, offset: int, length: int | None
) -> None:
    data = bytes(i % 251 for i in range(size))
    want = size - offset if length is None else length
    valid = offset >= 0 and want >= 0 and offset + want <= size
    if not valid:
        with pytest.raises(InvalidRange):
            resolve_range("k", offset, length, size)
        return
    start, end = resolve_range("k", offset, length, size)
    assert data[start:end] == data[offset : offset + want]
    assert end - start == want
