"""Backend wrappers: cross-cutting behaviour as a Backend around another Backend.

Each wrapper satisfies the ``Backend`` protocol itself, so they stack:
``RetryBackend(LimitBackend(s3, 8))``.

* ``RetryBackend`` is the one retry layer (backends do not retry on their
  own): it retries only errors whose ``retryable`` flag is set, with
  exponential backoff and full jitter, bounded by total elapsed time and an
  attempt cap; permanent errors propagate at once.
* ``ReadOnlyBackend`` refuses ``put`` and ``delete`` with ``ReadOnlyError``.
* ``LimitBackend`` caps the number of calls in flight on the inner backend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from resurgo.backend import Backend, ObjectInfo, StagedObject, stager
from resurgo.errors import BackendError, ObjectExists, ObjectNotFound, ReadOnlyError, UsageError

T = TypeVar("T")

OnRetry = Callable[[str, str, int, BackendError, float], None]
"""``on_retry(verb, key_or_prefix, attempt, error, delay)``, called before each backoff sleep."""


class RetryBackend:
    """Retry transient failures of ``inner``; see the module docstring.

    ``max_elapsed`` bounds the time spent on one call including its retries;
    ``max_attempts`` caps the attempts whatever the clock says. When either
    runs out, the last error is raised unchanged (same type, same exit code),
    with a note saying how many attempts were made.

    ``list`` is materialised inside the retry loop: a listing that fails half
    way is started again from scratch, so callers never see a key twice.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        max_elapsed: float = 60.0,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        max_attempts: int = 30,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry: OnRetry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise UsageError("max_attempts must be at least 1")
        self._inner = inner
        self._max_elapsed = max_elapsed
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._clock = clock
        self._on_retry = on_retry
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def inner(self) -> Backend:
        return self._inner

    @property
    def stage(self) -> Callable[[], StagedObject] | None:
        """The inner backend's staging, if any: local files, nothing to retry."""
        return stager(self._inner)

    def _call(self, verb: str, key: str, fn: Callable[[], T]) -> T:
        start = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except BackendError as err:
                if not err.retryable:
                    raise
                remaining = self._max_elapsed - (self._clock() - start)
                if attempt >= self._max_attempts or remaining <= 0:
                    err.add_note(
                        f"gave up after {attempt} attempts in {self._clock() - start:.1f}s"
                    )
                    raise
                # Full jitter (AWS architecture blog): a random delay in
                # [0, min(cap, base * 2**n)] spreads retrying clients apart.
                ceiling = min(self._max_delay, self._base_delay * 2 ** min(attempt - 1, 60))
                with self._rng_lock:
                    delay = self._rng.uniform(0, ceiling)
                delay = min(delay, remaining)
                if self._on_retry is not None:
                    self._on_retry(verb, key, attempt, err, delay)
                self._sleep(delay)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("get", key, lambda: self._inner.get(key, offset, length))

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        ambiguous = False

        def attempt() -> None:
            nonlocal ambiguous
            try:
                self._inner.put(key, data, create_only=create_only)
            except ObjectExists:
                # A retryable failure is ambiguous: the server may have stored
                # the object and only the reply was lost (timeout, reset after
                # commit). The retry then finds our own object. If the stored
                # bytes are exactly ours, the caller's aim (these bytes under
                # this key, nothing overwritten) is met, so it is a success.
                # Callers that use create_only as a mutex (locks) must
                # therefore put content unique to the writer, e.g. a nonce.
                if ambiguous and self._holds(key, data):
                    return
                raise
            except BackendError as err:
                if err.retryable:
                    ambiguous = True
                raise

        self._call("put", key, attempt)

    def _holds(self, key: str, data: bytes | memoryview) -> bool:
        """Whether ``key`` holds exactly ``data``; retryable read errors propagate."""
        expected = memoryview(data).cast("B")
        try:
            if self._inner.stat(key).size != len(expected):
                return False
            return self._inner.get(key) == expected
        except ObjectNotFound:
            return False

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", key, lambda: self._inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._call("list", prefix, lambda: list(self._inner.list(prefix)))

    def delete(self, key: str) -> None:
        # Safe to retry: delete is idempotent by contract.
        self._call("delete", key, lambda: self._inner.delete(key))

    def close(self) -> None:
        self._inner.close()


class ReadOnlyBackend:
    """Reads pass through; ``put`` and ``delete`` raise ``ReadOnlyError``."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def inner(self) -> Backend:
        return self._inner

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._inner.get(key, offset, length)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        raise ReadOnlyError(f"{self.url} is open read-only: refusing to write {key}")

    def stat(self, key: str) -> ObjectInfo:
        return self._inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._inner.list(prefix)

    def delete(self, key: str) -> None:
        raise ReadOnlyError(f"{self.url} is open read-only: refusing to delete {key}")

    def close(self) -> None:
        self._inner.close()


class LimitBackend:
    """At most ``max_concurrency`` calls run on ``inner`` at once (remote backends).

    ``list`` holds a slot only while it fetches the next entry, not while the
    caller works on it: a caller that reads objects while iterating a listing
    through the same limiter must not deadlock on its own slot.
    """

    def __init__(self, inner: Backend, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise UsageError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._inner = inner
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.max_concurrency = max_concurrency

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def inner(self) -> Backend:
        return self._inner

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._slots:
            return self._inner.get(key, offset, length)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        with self._slots:
            self._inner.put(key, data, create_only=create_only)

    def stat(self, key: str) -> ObjectInfo:
        with self._slots:
            return self._inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._slots:
            entries = iter(self._inner.list(prefix))
        while True:
            with self._slots:
                info = next(entries, None)
            if info is None:
                return
            yield info

    def delete(self, key: str) -> None:
        with self._slots:
            self._inner.delete(key)

    def close(self) -> None:
        self._inner.close()
