"""Fault injection: a Backend wrapper that fails, corrupts or slows chosen calls.

``FaultyBackend`` wraps a working backend and, on request, makes it misbehave
the way real storage does. Its fluent methods return the backend itself:

    faulty = FaultyBackend(MemoryBackend()).fail_next("put", n=2).flip_byte_on_get("data/")

* ``fail_next(verb, n, error)`` fails the next ``n`` calls of ``verb`` (default
  error: ``InjectedFault``, which is retryable). ``after=True`` performs the
  call first and then fails it: a *lost reply*, the ambiguous case where the
  server did the work but the client saw an error.
* ``fail_randomly(probability)`` fails calls at random, before or after
  performing them, with ``InjectedFault``.
* ``flip_byte_on_get(prefix, offset)`` XORs one byte of what ``get`` returns.
* ``truncate_on_get(prefix, length)`` makes matching objects look ``length``
  bytes long (``get``, ``stat`` and ``list`` agree, as for a file truncated on disk).
* ``delay(verb, seconds)`` sleeps before each call of ``verb``.
* ``calls[verb]`` counts calls per verb, ``injected[verb]`` the faults raised.

A *fault spec* is the same in compact text form, so end-to-end tests can pass
faults to the CLI through an environment variable (the CLI reads it; this
module only parses): comma-separated items ``VERB:ACTION[:ARG...]``, where
VERB is one of get, put, stat, list, delete or ``*`` (all)::

    put:fail[:N[:KIND]]       fail the next N calls (N=1); KIND is transient
                              (default), permanent, denied, full or notfound
    put:lost[:N]              perform the next N calls, then fail them (lost reply)
    *:random:P[:SEED]         fail each call with probability P (0..1)
    get:flip:PREFIX[:OFFSET]  flip a byte of every get of keys under PREFIX
    get:truncate:PREFIX:LEN   objects under PREFIX look LEN bytes long
    get:delay:SECONDS         sleep before each call

Example: ``put:fail:2,get:flip:data/``. ``wrap_with_faults(backend, spec)``
returns the wrapped backend. Everything here is thread-safe.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Self

from resurgo.backend import Backend, ObjectInfo
from resurgo.backend.memory import resolve_range
from resurgo.errors import (
    BackendError,
    BackendFull,
    BackendPermissionError,
    InjectedFault,
    InvalidRange,
    ObjectNotFound,
    UsageError,
)

VERBS: tuple[str, ...] = ("get", "put", "stat", "list", "delete")

ErrorSpec = BaseException | Callable[[str], BaseException] | None
"""An exception instance to raise, or a callable that builds one from a message."""


@dataclass
class _Failure:
    remaining: int
    error: ErrorSpec
    after: bool
    key_prefix: str


def _check_verb(verb: str) -> None:
    if verb not in VERBS:
        raise UsageError(f"unknown backend verb {verb!r}: expected one of {', '.join(VERBS)}")


class FaultyBackend:
    """Wraps ``inner`` and injects the faults configured by its fluent methods."""

    def __init__(self, inner: Backend, *, sleep: Callable[[float], object] = time.sleep) -> None:
        self._inner = inner
        self._sleep = sleep
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._failures: dict[str, list[_Failure]] = {verb: [] for verb in VERBS}
        self._random: dict[str, float] = {}
        self._rng = random.Random()
        self._flips: list[tuple[str, int | None]] = []
        self._truncations: list[tuple[str, int]] = []
        self._delays: dict[str, float] = {}

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def inner(self) -> Backend:
        return self._inner

    # --- configuration (fluent) ------------------------------------------------

    def fail_next(
        self,
        verb: str,
        n: int = 1,
        error: ErrorSpec = None,
        *,
        after: bool = False,
        key_prefix: str = "",
    ) -> Self:
        """Fail the next ``n`` calls of ``verb`` on keys starting with ``key_prefix``."""
        _check_verb(verb)
        with self._lock:
            self._failures[verb].append(_Failure(n, error, after, key_prefix))
        return self

    def fail_randomly(
        self, probability: float, *, verbs: Iterable[str] = VERBS, seed: int | None = None
    ) -> Self:
        """Fail each call of ``verbs`` with ``probability``, half of them after performing it."""
        if not 0.0 <= probability <= 1.0:
            raise UsageError(f"fault probability must be between 0 and 1, not {probability}")
        with self._lock:
            for verb in verbs:
                _check_verb(verb)
                self._random[verb] = probability
            if seed is not None:
                self._rng.seed(seed)
        return self

    def flip_byte_on_get(self, key_or_prefix: str, offset: int | None = None) -> Self:
        """XOR 0xFF into one byte of every get of a matching key.

        ``offset`` is a position in the object, flipped when a get returns it;
        ``None`` flips the middle byte of whatever each get returns.
        """
        with self._lock:
            self._flips.append((key_or_prefix, offset))
        return self

    def truncate_on_get(self, key_or_prefix: str, length: int) -> Self:
        """Make matching objects look ``length`` bytes long to get, stat and list."""
        if length < 0:
            raise UsageError(f"truncation length must not be negative, not {length}")
        with self._lock:
            self._truncations.append((key_or_prefix, length))
        return self

    def delay(self, verb: str, seconds: float) -> Self:
        """Sleep ``seconds`` before each call of ``verb`` (0 removes the delay)."""
        _check_verb(verb)
        with self._lock:
            self._delays[verb] = seconds
        return self

    def clear(self) -> Self:
        """Remove every configured fault (counters are kept)."""
        with self._lock:
            for failures in self._failures.values():
                failures.clear()
            self._random.clear()
            self._flips.clear()
            self._truncations.clear()
            self._delays.clear()
        return self

    # --- machinery -------------------------------------------------------------

    def _enter(self, verb: str, key: str) -> tuple[BaseException, bool] | None:
        """Count the call, apply its delay, and pick the fault to inject, if any."""
        with self._lock:
            self.calls[verb] += 1
            delay = self._delays.get(verb, 0.0)
            fault = self._pick_fault(verb, key)
        if delay > 0:
            self._sleep(delay)
        if fault is not None and not fault[1]:
            raise fault[0]
        return fault

    def _pick_fault(self, verb: str, key: str) -> tuple[BaseException, bool] | None:
        message = f"injected fault: {verb} {key}"
        for failure in self._failures[verb]:
            if failure.remaining > 0 and key.startswith(failure.key_prefix):
                failure.remaining -= 1
                self.injected[verb] += 1
                return _build_error(failure.error, message), failure.after
        probability = self._random.get(verb, 0.0)
        if probability and self._rng.random() < probability:
            self.injected[verb] += 1
            return InjectedFault(message), self._rng.random() < 0.5
        return None

    def _truncation(self, key: str) -> int | None:
        with self._lock:
            lengths = [n for prefix, n in self._truncations if key.startswith(prefix)]
        return min(lengths) if lengths else None

    # --- the Backend protocol --------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        fault = self._enter("get", key)
        cut = self._truncation(key)
        if cut is None:
            data = self._inner.get(key, offset, length)
        elif length is None:
            if offset > cut:
                raise InvalidRange(f"range past the end of {key}: offset={offset} size={cut}")
            data = self._inner.get(key, offset)[: cut - offset]
        else:
            resolve_range(key, offset, length, cut)
            data = self._inner.get(key, offset, length)
        data = self._flip(key, offset, data)
        if fault is not None:
            raise fault[0]
        return data

    def _flip(self, key: str, offset: int, data: bytes) -> bytes:
        with self._lock:
            flips = [at for prefix, at in self._flips if key.startswith(prefix)]
        if not flips or not data:
            return data
        buf = bytearray(data)
        for at in flips:
            pos = len(buf) // 2 if at is None else at - offset
            if 0 <= pos < len(buf):
                buf[pos] ^= 0xFF
        return bytes(buf)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        fault = self._enter("put", key)
        self._inner.put(key, data, create_only=create_only)
        if fault is not None:
            raise fault[0]

    def stat(self, key: str) -> ObjectInfo:
        fault = self._enter("stat", key)
        info = self._truncated_info(self._inner.stat(key))
        if fault is not None:
            raise fault[0]
        return info

    def _truncated_info(self, info: ObjectInfo) -> ObjectInfo:
        cut = self._truncation(info.key)
        if cut is None or cut >= info.size:
            return info
        return ObjectInfo(info.key, cut, info.mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        fault = self._enter("list", prefix)
        infos = [self._truncated_info(info) for info in self._inner.list(prefix)]
        if fault is None:
            yield from infos
            return
        # A lost reply on a listing: part of it arrives, then the connection fails.
        yield from infos[: len(infos) // 2]
        raise fault[0]

    def delete(self, key: str) -> None:
        fault = self._enter("delete", key)
        self._inner.delete(key)
        if fault is not None:
            raise fault[0]

    def close(self) -> None:
        self._inner.close()


def _build_error(error: ErrorSpec, message: str) -> BaseException:
    if error is None:
        return InjectedFault(message)
    if isinstance(error, BaseException):
        return error
    return error(message)


# --- fault specs -------------------------------------------------------------------


def _permanent(message: str) -> BaseException:
    return BackendError(message, retryable=False)


_ERROR_KINDS: dict[str, Callable[[str], BaseException]] = {
    "transient": InjectedFault,
    "permanent": _permanent,
    "denied": BackendPermissionError,
    "full": BackendFull,
    "notfound": lambda message: ObjectNotFound(message.rsplit(" ", 1)[-1]),
}

_ACTIONS = ("fail", "lost", "random", "flip", "truncate", "delay")


@dataclass(frozen=True)
class Fault:
    """One item of a fault spec; ``apply`` configures it on a ``FaultyBackend``."""

    verb: str  # a verb of VERBS, or "*"
    action: str  # one of _ACTIONS
    count: int = 1
    kind: str = "transient"
    prefix: str = ""
    offset: int | None = None
    length: int = 0
    seconds: float = 0.0
    probability: float = 0.0
    seed: int | None = None

    def apply(self, backend: FaultyBackend) -> None:
        verbs = VERBS if self.verb == "*" else (self.verb,)
        if self.action == "fail":
            for verb in verbs:
                backend.fail_next(verb, self.count, _ERROR_KINDS[self.kind])
        elif self.action == "lost":
            for verb in verbs:
                backend.fail_next(verb, self.count, after=True)
        elif self.action == "random":
            backend.fail_randomly(self.probability, verbs=verbs, seed=self.seed)
        elif self.action == "flip":
            backend.flip_byte_on_get(self.prefix, self.offset)
        elif self.action == "truncate":
            backend.truncate_on_get(self.prefix, self.length)
        elif self.action == "delay":
            for verb in verbs:
                backend.delay(verb, self.seconds)


def fault_spec_from_string(spec: str) -> list[Fault]:
    """Parse a compact fault spec (see the module docstring); raise ``UsageError`` if malformed."""
    faults = []
    for raw in spec.split(","):
        item = raw.strip()
        if item:
            faults.append(_parse_item(item))
    return faults


def _parse_item(item: str) -> Fault:
    parts = item.split(":")
    if len(parts) < 2:
        raise _spec_error(item, "expected VERB:ACTION[:ARG...]")
    verb, action, args = parts[0].strip(), parts[1].strip(), [a.strip() for a in parts[2:]]
    if verb != "*" and verb not in VERBS:
        raise _spec_error(item, f"unknown verb {verb!r} (expected {', '.join(VERBS)} or *)")
    if action not in _ACTIONS:
        raise _spec_error(item, f"unknown action {action!r} (expected {', '.join(_ACTIONS)})")
    try:
        if action in ("fail", "lost"):
            _arity(item, args, 0, 2 if action == "fail" else 1)
            count = int(args[0]) if args and args[0] else 1
            kind = args[1] if len(args) > 1 else "transient"
            if count < 1:
                raise _spec_error(item, "the count must be at least 1")
            if kind not in _ERROR_KINDS:
                raise _spec_error(
                    item, f"unknown error kind {kind!r} (expected {', '.join(_ERROR_KINDS)})"
                )
            return Fault(verb, action, count=count, kind=kind)
        if action == "random":
            _arity(item, args, 1, 2)
            probability = float(args[0])
            if not 0.0 <= probability <= 1.0:
                raise _spec_error(item, "the probability must be between 0 and 1")
            seed = int(args[1]) if len(args) > 1 else None
            return Fault(verb, action, probability=probability, seed=seed)
        if action == "delay":
            _arity(item, args, 1, 1)
            seconds = float(args[0])
            if seconds < 0:
                raise _spec_error(item, "the delay must not be negative")
            return Fault(verb, action, seconds=seconds)
        # flip and truncate act on what get returns
        if verb != "get":
            raise _spec_error(item, f"{action} applies to get only")
        if action == "flip":
            _arity(item, args, 1, 2)
            offset = int(args[1]) if len(args) > 1 and args[1] else None
            return Fault(verb, action, prefix=args[0], offset=offset)
        _arity(item, args, 2, 2)
        length = int(args[1])
        if length < 0:
            raise _spec_error(item, "the length must not be negative")
        return Fault(verb, action, prefix=args[0], length=length)
    except ValueError as err:
        raise _spec_error(item, f"bad number ({err})") from None


def _arity(item: str, args: list[str], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise _spec_error(item, f"expected {want} argument(s), got {len(args)}")


def _spec_error(item: str, reason: str) -> UsageError:
    return UsageError(f"bad fault spec item {item!r}: {reason}")


def wrap_with_faults(backend: Backend, spec: str) -> FaultyBackend:
    """Wrap ``backend`` in a ``FaultyBackend`` configured by the fault ``spec``."""
    faulty = FaultyBackend(backend)
    for fault in fault_spec_from_string(spec):
        fault.apply(faulty)
    return faulty
