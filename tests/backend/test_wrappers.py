"""Wrappers and fault injection: retry, read-only, limits, the faulty backend and fault specs."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resurgo.backend import Backend, ObjectInfo
from resurgo.backend.faults import Fault, FaultyBackend, fault_spec_from_string, wrap_with_faults
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.backend.wrappers import LimitBackend, ReadOnlyBackend, RetryBackend
from resurgo.errors import (
    EXIT_BACKEND,
    BackendError,
    BackendFull,
    BackendPermissionError,
    BackendUnavailable,
    InjectedFault,
    InvalidRange,
    ObjectExists,
    ObjectNotFound,
    ReadOnlyError,
    UsageError,
)
from resurgo.testing.contract import BackendContract


def no_sleep(seconds: float) -> None:
    pass


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class UpperBoundRandom(random.Random):
    """Jitter that always picks the top of the range, to observe the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- the contract through wrapper stacks ---------------------------------------------


class TestRetryLimitFaultyMemoryContract(BackendContract):
    """Transient faults (before and after the real call) are absorbed by the retry layer."""

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        faulty = FaultyBackend(MemoryBackend()).fail_randomly(0.1, seed=1)
        stack = RetryBackend(LimitBackend(faulty, 4), base_delay=0.0, sleep=no_sleep)
        yield stack
        stack.close()


class TestRetryFaultyLocalContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        faulty = FaultyBackend(LocalBackend(tmp_path / "repo")).fail_randomly(0.1, seed=2)
        stack = RetryBackend(faulty, base_delay=0.0, sleep=no_sleep)
        yield stack
        stack.close()


class TestReadOnlyOverMemoryReadsContractSubset:
    """Reads through ReadOnlyBackend behave like the inner backend's."""

    def test_reads_pass_through(self) -> None:
        inner = MemoryBackend()
        inner.put("data/ab/obj", b"0123456789")
        ro = ReadOnlyBackend(inner)
        assert ro.get("data/ab/obj", 2, 3) == b"234"
        assert ro.stat("data/ab/obj").size == 10
        assert [i.key for i in ro.list("data/")] == ["data/ab/obj"]
        assert ro.url == inner.url
        with pytest.raises(ObjectNotFound):
            ro.get("missing")


def test_random_faults_really_are_injected_and_absorbed() -> None:
    faulty = FaultyBackend(MemoryBackend()).fail_randomly(0.3, seed=3)
    retries: list[tuple[str, int]] = []
    stack = RetryBackend(
        faulty,
        base_delay=0.0,
        sleep=no_sleep,
        on_retry=lambda v, k, a, e, d: retries.append((v, a)),
    )
    for i in range(50):
        stack.put(f"k/{i}", bytes([i]) * 10, create_only=True)
    assert {i.key for i in stack.list("k/")} == {f"k/{i}" for i in range(50)}
    assert all(stack.get(f"k/{i}") == bytes([i]) * 10 for i in range(50))
    assert sum(faulty.injected.values()) > 10
    assert len(retries) == sum(faulty.injected.values())


# --- RetryBackend --------------------------------------------------------------------


def test_retry_absorbs_transient_failures() -> None:
    inner = MemoryBackend()
    inner.put("config", b"cfg")
    faulty = FaultyBackend(inner).fail_next("get", n=3)
    seen: list[tuple[str, str, int, type]] = []
    retry = RetryBackend(
        faulty, sleep=no_sleep, on_retry=lambda v, k, a, e, d: seen.append((v, k, a, type(e)))
    )
    assert retry.get("config") == b"cfg"
    assert faulty.calls["get"] == 4
    assert seen == [("get", "config", n, InjectedFault) for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "error",
    [
        BackendPermissionError("access denied"),
        BackendFull("bucket quota exceeded"),
        BackendError("malformed request"),
        InvalidRange("past the end"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retry_does_not_retry_permanent_errors(error: BackendError) -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend()).fail_next("put", n=5, error=error)
    retry = RetryBackend(faulty, sleep=clock.sleep, clock=clock)
    with pytest.raises(BackendError) as caught:
        retry.put("config", b"x")
    assert caught.value is error
    assert faulty.calls["put"] == 1
    assert clock.sleeps == []


def test_retry_does_not_retry_a_missing_object() -> None:
    faulty = FaultyBackend(MemoryBackend())
    retry = RetryBackend(faulty, sleep=no_sleep)
    with pytest.raises(ObjectNotFound):
        retry.get("missing")
    assert faulty.calls["get"] == 1


def test_retry_gives_up_after_its_time_bound_with_the_last_error() -> None:
    clock = FakeClock()
    made: list[BackendUnavailable] = []

    def numbered_error(message: str) -> BackendUnavailable:
        made.append(BackendUnavailable(f"timeout #{len(made) + 1}"))
        return made[-1]

    faulty = FaultyBackend(MemoryBackend()).fail_next("put", n=10_000, error=numbered_error)
    retry = RetryBackend(
        faulty, max_elapsed=30.0, base_delay=1.0, max_delay=4.0, sleep=clock.sleep, clock=clock
    )
    with pytest.raises(BackendUnavailable) as caught:
        retry.put("snapshots/s", b"x")
    assert caught.value is made[-1]
    assert len(made) == faulty.calls["put"] > 2
    assert sum(clock.sleeps) == pytest.approx(30.0)
    assert any("gave up after" in note for note in caught.value.__notes__)
    with pytest.raises(ObjectNotFound):
        faulty.inner.get("snapshots/s")


def test_retry_gives_up_after_its_attempt_cap() -> None:
    faulty = FaultyBackend(MemoryBackend()).fail_next("stat", n=100)
    retry = RetryBackend(faulty, max_attempts=4, sleep=no_sleep)
    with pytest.raises(InjectedFault):
        retry.stat("config")
    assert faulty.calls["stat"] == 4


def test_retry_backoff_doubles_up_to_the_maximum_delay() -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend()).fail_next("delete", n=7)
    retry = RetryBackend(
        faulty,
        base_delay=0.5,
        max_delay=5.0,
        sleep=clock.sleep,
        clock=clock,
        rng=UpperBoundRandom(),
    )
    retry.delete("locks/l")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_retry_jitter_stays_within_the_backoff_ceiling() -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend()).fail_next("delete", n=8)
    retry = RetryBackend(
        faulty, base_delay=0.5, max_delay=3.0, sleep=clock.sleep, clock=clock, rng=random.Random(7)
    )
    retry.delete("locks/l")
    ceilings = [min(3.0, 0.5 * 2**n) for n in range(8)]
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) == 8  # randomised, not a fixed schedule


def test_create_only_put_retried_after_a_lost_reply_succeeds() -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner).fail_next("put", n=1, after=True)
    retry = RetryBackend(faulty, sleep=no_sleep)
    retry.put("snapshots/s1", b"snapshot body", create_only=True)
    assert faulty.calls["put"] == 2
    assert inner.get("snapshots/s1") == b"snapshot body"


def test_create_only_put_retried_still_refuses_another_writers_object() -> None:
    inner = MemoryBackend()
    inner.put("locks/l", b"lock of another process")
    faulty = FaultyBackend(inner).fail_next("put", n=1)
    retry = RetryBackend(faulty, sleep=no_sleep)
    with pytest.raises(ObjectExists):
        retry.put("locks/l", b"our lock", create_only=True)
    assert inner.get("locks/l") == b"lock of another process"


def test_create_only_put_refuses_identical_content_without_an_ambiguous_failure() -> None:
    inner = MemoryBackend()
    inner.put("keys/k", b"same")
    retry = RetryBackend(inner, sleep=no_sleep)
    with pytest.raises(ObjectExists):
        retry.put("keys/k", b"same", create_only=True)


def test_retry_restarts_a_listing_that_fails_half_way() -> None:
    inner = MemoryBackend()
    for i in range(10):
        inner.put(f"index/{i}", b"x")
    faulty = FaultyBackend(inner).fail_next("list", n=2, after=True)
    retry = RetryBackend(faulty, sleep=no_sleep)
    keys = [info.key for info in retry.list("index/")]
    assert sorted(keys) == sorted(f"index/{i}" for i in range(10))
    assert faulty.calls["list"] == 3


# --- ReadOnlyBackend -------------------------------------------------------------------


def test_read_only_refuses_writes_and_leaves_the_inner_backend_untouched() -> None:
    inner = MemoryBackend()
    inner.put("config", b"cfg")
    ro = ReadOnlyBackend(inner)
    for write in (
        lambda: ro.put("config", b"new"),
        lambda: ro.put("snapshots/s", b"new", create_only=True),
        lambda: ro.delete("config"),
    ):
        with pytest.raises(ReadOnlyError) as caught:
            write()
        assert caught.value.exit_code == EXIT_BACKEND
        assert caught.value.retryable is False
    assert inner.get("config") == b"cfg"
    assert [i.key for i in inner.list()] == ["config"]


# --- LimitBackend ----------------------------------------------------------------------


class ConcurrencyProbe(MemoryBackend):
    """Counts how many calls are inside the backend at once."""

    def __init__(self) -> None:
        super().__init__()
        self._probe_lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._probe_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(0.01)
            return super().get(key, offset, length)
        finally:
            with self._probe_lock:
                self.active -= 1


def test_limit_caps_calls_in_flight() -> None:
    probe = ConcurrencyProbe()
    probe.put("config", b"cfg")
    limited = LimitBackend(probe, max_concurrency=3)

    def reader() -> None:
        for _ in range(5):
            assert limited.get("config") == b"cfg"

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert probe.peak == 3


def test_limit_does_not_hold_a_slot_while_the_caller_consumes_a_listing() -> None:
    inner = MemoryBackend()
    for i in range(5):
        inner.put(f"snapshots/{i}", bytes([i]))
    limited = LimitBackend(inner, max_concurrency=1)
    seen = {info.key: limited.get(info.key) for info in limited.list("snapshots/")}
    assert seen == {f"snapshots/{i}": bytes([i]) for i in range(5)}


def test_limit_refuses_a_limit_below_one() -> None:
    with pytest.raises(UsageError):
        LimitBackend(MemoryBackend(), 0)


# --- FaultyBackend -----------------------------------------------------------------------


@pytest.fixture
def stored() -> MemoryBackend:
    inner = MemoryBackend()
    inner.put("data/ab/pack", bytes(range(100)))
    inner.put("index/i1", b"index bytes")
    return inner


def test_flip_byte_on_get_corrupts_exactly_one_byte_of_matching_keys(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).flip_byte_on_get("data/")
    original = bytes(range(100))
    got = faulty.get("data/ab/pack")
    diff = [i for i in range(100) if got[i] != original[i]]
    assert diff == [50]
    assert got[50] == original[50] ^ 0xFF
    assert faulty.get("index/i1") == b"index bytes"
    assert stored.get("data/ab/pack") == original  # the stored object is untouched


def test_flip_byte_at_an_offset_hits_only_reads_that_cover_it(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).flip_byte_on_get("data/ab/pack", offset=10)
    assert faulty.get("data/ab/pack", 0, 5) == bytes(range(5))
    assert faulty.get("data/ab/pack", 8, 4) == bytes([8, 9, 10 ^ 0xFF, 11])


def test_truncate_on_get_makes_the_object_look_short(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).truncate_on_get("data/", 30)
    assert faulty.get("data/ab/pack") == bytes(range(30))
    assert faulty.get("data/ab/pack", 20) == bytes(range(20, 30))
    assert faulty.get("data/ab/pack", 25, 5) == bytes(range(25, 30))
    with pytest.raises(InvalidRange):
        faulty.get("data/ab/pack", 25, 10)
    with pytest.raises(InvalidRange):
        faulty.get("data/ab/pack", 31)
    assert faulty.stat("data/ab/pack").size == 30
    assert {i.key: i.size for i in faulty.list()} == {"data/ab/pack": 30, "index/i1": 11}


def test_fail_next_uses_the_given_error_then_recovers(stored: MemoryBackend) -> None:
    denied = BackendPermissionError("access denied")
    faulty = FaultyBackend(stored).fail_next("get", n=2, error=denied)
    for _ in range(2):
        with pytest.raises(BackendPermissionError) as caught:
            faulty.get("index/i1")
        assert caught.value is denied
    assert faulty.get("index/i1") == b"index bytes"
    assert faulty.calls["get"] == 3
    assert faulty.injected["get"] == 2


def test_fail_next_defaults_to_a_retryable_injected_fault(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).fail_next("put")
    with pytest.raises(InjectedFault) as caught:
        faulty.put("snapshots/s", b"x")
    assert caught.value.retryable is True
    with pytest.raises(ObjectNotFound):
        stored.get("snapshots/s")  # failed before reaching the backend


def test_fail_next_after_performs_the_call_then_fails(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).fail_next("put", after=True).fail_next("delete", after=True)
    with pytest.raises(InjectedFault):
        faulty.put("snapshots/s", b"stored anyway")
    assert stored.get("snapshots/s") == b"stored anyway"
    with pytest.raises(InjectedFault):
        faulty.delete("index/i1")
    with pytest.raises(ObjectNotFound):
        stored.get("index/i1")


def test_fail_next_only_counts_calls_on_matching_keys(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).fail_next("get", n=1, key_prefix="data/")
    assert faulty.get("index/i1") == b"index bytes"
    with pytest.raises(InjectedFault):
        faulty.get("data/ab/pack")
    assert faulty.get("data/ab/pack") == bytes(range(100))


def test_delay_sleeps_before_each_call_of_the_verb(stored: MemoryBackend) -> None:
    slept: list[float] = []
    faulty = FaultyBackend(stored, sleep=slept.append).delay("stat", 0.25)
    faulty.stat("index/i1")
    faulty.stat("index/i1")
    faulty.get("index/i1")
    assert slept == [0.25, 0.25]


def test_clear_removes_every_fault(stored: MemoryBackend) -> None:
    faulty = FaultyBackend(stored).fail_next("get", n=5).flip_byte_on_get("").fail_randomly(1.0)
    faulty.clear()
    assert faulty.get("index/i1") == b"index bytes"


def test_fault_counters_are_exact_under_concurrency() -> None:
    faulty = FaultyBackend(MemoryBackend()).fail_next("put", n=50)
    failures = 0
    lock = threading.Lock()

    def writer(t: int) -> None:
        nonlocal failures
        for i in range(25):
            try:
                faulty.put(f"t{t}/{i}", b"x")
            except InjectedFault:
                with lock:
                    failures += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == 50
    assert faulty.calls["put"] == 200
    assert len(list(faulty.inner.list())) == 150


def test_unknown_verbs_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown backend verb"):
        FaultyBackend(MemoryBackend()).fail_next("write")


# --- fault specs -------------------------------------------------------------------------


def test_fault_spec_parses_every_action() -> None:
    spec = (
        "put:fail:2, get:fail:1:denied, put:lost, *:random:0.5:9, get:flip:data/:7, "
        "get:truncate:index/:10, list:delay:0.1, get:flip:data/"
    )
    assert fault_spec_from_string(spec) == [
        Fault("put", "fail", count=2),
        Fault("get", "fail", count=1, kind="denied"),
        Fault("put", "lost", count=1),
        Fault("*", "random", probability=0.5, seed=9),
        Fault("get", "flip", prefix="data/", offset=7),
        Fault("get", "truncate", prefix="index/", length=10),
        Fault("list", "delay", seconds=0.1),
        Fault("get", "flip", prefix="data/", offset=None),
    ]
    assert fault_spec_from_string("") == []


@pytest.mark.parametrize(
    "spec",
    [
        "put",
        "put:explode",
        "write:fail",
        "put:fail:x",
        "put:fail:0",
        "put:fail:1:weird",
        "put:fail:1:denied:extra",
        "get:truncate:data/",
        "get:truncate:data/:-1",
        "put:flip:data/",
        "*:random:2",
        "get:delay:-1",
    ],
)
def test_malformed_fault_specs_are_usage_errors_naming_the_item(spec: str) -> None:
    with pytest.raises(UsageError) as caught:
        fault_spec_from_string(f"get:fail, {spec}")
    assert repr(spec) in str(caught.value)


def test_wrap_with_faults_applies_the_spec(stored: MemoryBackend) -> None:
    faulty = wrap_with_faults(stored, "put:fail:2,get:flip:data/,stat:fail:1:full")
    for _ in range(2):
        with pytest.raises(InjectedFault):
            faulty.put("snapshots/s", b"x")
    faulty.put("snapshots/s", b"x")
    assert stored.get("snapshots/s") == b"x"
    assert faulty.get("data/ab/pack") != bytes(range(100))
    assert faulty.get("index/i1") == b"index bytes"
    with pytest.raises(BackendFull):
        faulty.stat("index/i1")


def test_wrap_with_faults_star_verb_hits_every_verb(stored: MemoryBackend) -> None:
    faulty = wrap_with_faults(stored, "*:fail:1:permanent")
    calls = [
        lambda: faulty.get("index/i1"),
        lambda: faulty.put("x", b"x"),
        lambda: faulty.stat("index/i1"),
        lambda: list(faulty.list()),
        lambda: faulty.delete("index/i1"),
    ]
    for call in calls:
        with pytest.raises(BackendError) as caught:
            call()
        assert caught.value.retryable is False
        call()  # the second call of each verb goes through


def test_fault_spec_notfound_kind_names_the_key(stored: MemoryBackend) -> None:
    faulty = wrap_with_faults(stored, "get:fail:1:notfound")
    with pytest.raises(ObjectNotFound) as caught:
        faulty.get("index/i1")
    assert caught.value.key == "index/i1"


def test_wrapped_backends_satisfy_the_protocol() -> None:
    inner = MemoryBackend()
    for wrapper in (
        RetryBackend(inner),
        ReadOnlyBackend(inner),
        LimitBackend(inner, 2),
        FaultyBackend(inner),
    ):
        assert isinstance(wrapper, Backend)
        assert wrapper.url == "memory://"


def test_object_info_passes_through_wrappers_unchanged() -> None:
    inner = MemoryBackend()
    inner.put("config", b"abc")
    info = inner.stat("config")
    stack = RetryBackend(LimitBackend(FaultyBackend(inner), 2))
    assert stack.stat("config") == info
    assert list(stack.list()) == [ObjectInfo("config", 3, info.mtime)]
