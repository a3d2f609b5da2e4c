"""The backend contract suite: the tests every ``Backend`` implementation must pass.

The contract itself is written in ``resurgo.backend``'s docstring; this module
checks it. Subclass ``BackendContract`` in a test module and give it a
``backend`` fixture that returns a fresh, empty backend::

    class TestLocal(BackendContract):
        @pytest.fixture
        def backend(self, tmp_path):
            backend = LocalBackend(tmp_path / "repo")
            yield backend
            backend.close()

The tests use nothing but the ``Backend`` protocol, move at most a few MiB
each, and run unchanged against remote servers (S3, SFTP). Subclasses may
lower ``LARGE_SIZE`` or ``THREADS`` for slow targets.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from resurgo.backend import Backend, ObjectInfo
from resurgo.errors import BackendError, InvalidRange, ObjectExists, ObjectNotFound, ResurgoError

MiB = 1 << 20

INVALID_KEYS = [
    "",
    "/absolute",
    "trailing/",
    "double//slash",
    "dot/./part",
    "dotdot/../part",
    "..",
    ".",
    "nul\x00byte",
]


def payload(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, so no layer can cheat)."""
    return random.Random(seed).randbytes(size)


def keys_of(backend: Backend, prefix: str = "") -> set[str]:
    return {info.key for info in backend.list(prefix)}


def run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` for ``i`` in ``range(count)`` on ``count`` threads; re-raise failures."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(target, i) for i in range(count)]
        return [future.result(timeout=120) for future in futures]


class BackendContract:
    """Contract tests; subclasses provide the ``backend`` fixture (a fresh, empty backend)."""

    LARGE_SIZE = 3 * MiB + 17  # not a multiple of any buffer size
    THREADS = 8

    # --- put / get round trips --------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 4096, LARGE_SIZE], ids=["empty", "1B", "4KiB", "large"])
    def test_put_then_get_returns_the_same_bytes(self, backend: Backend, size: int) -> None:
        data = payload(size, seed=size)
        backend.put("snapshots/object", data)
        assert backend.get("snapshots/object") == data
        assert backend.stat("snapshots/object").size == size

    def test_put_accepts_a_memoryview(self, backend: Backend) -> None:
        buffer = bytearray(payload(1000, seed=1))
        backend.put("index/view", memoryview(buffer)[100:900])
        buffer[:] = bytes(len(buffer))  # the backend must not keep a reference to our buffer
        assert backend.get("index/view") == payload(1000, seed=1)[100:900]

    def test_put_replaces_an_existing_object(self, backend: Backend) -> None:
        backend.put("config", payload(5000, seed=1))
        backend.put("config", b"short")
        assert backend.get("config") == b"short"
        assert backend.stat("config").size == 5
        assert keys_of(backend) == {"config"}

    def test_put_create_only_stores_a_new_key(self, backend: Backend) -> None:
        backend.put("locks/new", b"lock body", create_only=True)
        assert backend.get("locks/new") == b"lock body"

    def test_put_create_only_refuses_an_existing_key_and_keeps_the_old_content(
        self, backend: Backend
    ) -> None:
        backend.put("keys/k1", b"original")
        with pytest.raises(ObjectExists) as caught:
            backend.put("keys/k1", b"replacement", create_only=True)
        assert caught.value.retryable is False
        assert backend.get("keys/k1") == b"original"
        assert keys_of(backend) == {"keys/k1"}

    def test_create_only_race_has_exactly_one_winner(self, backend: Backend) -> None:
        start = threading.Barrier(self.THREADS)

        def contender(i: int) -> bytes | None:
            data = payload(10_000 + i, seed=100 + i)
            start.wait()
            try:
                backend.put("locks/contended", data, create_only=True)
            except ObjectExists:
                return None
            return data

        winners = [data for data in run_threads(self.THREADS, contender) if data is not None]
        assert len(winners) == 1
        assert backend.get("locks/contended") == winners[0]

    # --- ranged gets -----------------------------------------------------------------

    def test_get_range_from_the_start(self, backend: Backend) -> None:
        data = payload(10_000, seed=2)
        backend.put("data/00/obj", data)
        assert backend.get("data/00/obj", 0, 100) == data[:100]

    def test_get_range_in_the_middle(self, backend: Backend) -> None:
        data = payload(10_000, seed=3)
        backend.put("data/00/obj", data)
        assert backend.get("data/00/obj", 4321, 1234) == data[4321:5555]

    def test_get_range_ending_exactly_at_the_end(self, backend: Backend) -> None:
        data = payload(10_000, seed=4)
        backend.put("data/00/obj", data)
        assert backend.get("data/00/obj", 9_000, 1_000) == data[9_000:]

    def test_get_from_an_offset_to_the_end(self, backend: Backend) -> None:
        data = payload(10_000, seed=5)
        backend.put("data/00/obj", data)
        assert backend.get("data/00/obj", 7_777) == data[7_777:]
        assert backend.get("data/00/obj", 7_777, None) == data[7_777:]

    @pytest.mark.parametrize("offset", [0, 5_000, 10_000], ids=["start", "middle", "end"])
    def test_get_range_of_length_zero_returns_empty_bytes(
        self, backend: Backend, offset: int
    ) -> None:
        backend.put("data/00/obj", payload(10_000, seed=6))
        assert backend.get("data/00/obj", offset, 0) == b""

    def test_get_at_the_end_without_length_returns_empty_bytes(self, backend: Backend) -> None:
        backend.put("data/00/obj", payload(10_000, seed=7))
        assert backend.get("data/00/obj", 10_000) == b""

    def test_get_ranges_of_an_empty_object(self, backend: Backend) -> None:
        backend.put("data/00/empty", b"")
        assert backend.get("data/00/empty", 0, 0) == b""
        assert backend.get("data/00/empty", 0) == b""
        with pytest.raises(InvalidRange):
            backend.get("data/00/empty", 0, 1)

    @pytest.mark.parametrize(
        ("offset", "length"),
        [(0, 10_001), (9_999, 2), (10_000, 1), (10_001, 0), (10_001, None), (50_000, 10)],
        ids=["whole+1", "straddles-end", "at-end", "past-end-empty", "past-end-open", "far"],
    )
    def test_get_range_past_the_end_raises_invalid_range(
        self, backend: Backend, offset: int, length: int | None
    ) -> None:
        backend.put("data/00/obj", payload(10_000, seed=8))
        with pytest.raises(InvalidRange) as caught:
            backend.get("data/00/obj", offset, length)
        assert caught.value.retryable is False

    @pytest.mark.parametrize(("offset", "length"), [(-1, None), (-1, 5), (0, -1)])
    def test_get_negative_range_raises_invalid_range(
        self, backend: Backend, offset: int, length: int | None
    ) -> None:
        backend.put("data/00/obj", payload(100, seed=9))
        with pytest.raises(InvalidRange):
            backend.get("data/00/obj", offset, length)

    # --- missing objects -------------------------------------------------------------

    def test_get_missing_key_raises_object_not_found_not_retryable(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound) as caught:
            backend.get("snapshots/missing")
        assert caught.value.retryable is False
        assert caught.value.key == "snapshots/missing"

    def test_ranged_get_of_a_missing_key_raises_object_not_found(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound):
            backend.get("data/00/missing", 10, 10)

    def test_stat_missing_key_raises_object_not_found_not_retryable(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound) as caught:
            backend.stat("index/missing")
        assert caught.value.retryable is False

    def test_a_prefix_of_existing_keys_is_not_an_object(self, backend: Backend) -> None:
        backend.put("data/ab/abcdef", b"pack")
        for key in ("data/ab", "data"):
            with pytest.raises(ObjectNotFound):
                backend.get(key)
            with pytest.raises(ObjectNotFound):
                backend.stat(key)
        assert backend.get("data/ab/abcdef") == b"pack"

    # --- stat --------------------------------------------------------------------------

    def test_stat_reports_key_size_and_a_plausible_mtime(self, backend: Backend) -> None:
        backend.put("snapshots/s1", payload(12_345, seed=10))
        info = backend.stat("snapshots/s1")
        assert isinstance(info, ObjectInfo)
        assert (info.key, info.size) == ("snapshots/s1", 12_345)
        if info.mtime is not None:
            assert abs(info.mtime - time.time()) < 86_400

    # --- list ----------------------------------------------------------------------------

    NESTED = {
        "config": 3,
        "keys/k1": 10,
        "snapshots/s1": 20,
        "snapshots/s2": 21,
        "index/i1": 30,
        "data/ab/ab01": 40,
        "data/ab/ab02": 41,
        "data/ac/ac01": 42,
        "data/ff/ff01": 0,
    }

    def _put_nested(self, backend: Backend) -> None:
        for n, (key, size) in enumerate(self.NESTED.items()):
            backend.put(key, payload(size, seed=n))

    def test_list_everything_yields_every_key_exactly_as_put(self, backend: Backend) -> None:
        self._put_nested(backend)
        assert sorted(info.key for info in backend.list()) == sorted(self.NESTED)
        assert keys_of(backend, "") == set(self.NESTED)

    def test_list_reports_each_object_size(self, backend: Backend) -> None:
        self._put_nested(backend)
        assert {info.key: info.size for info in backend.list()} == self.NESTED

    @pytest.mark.parametrize(
        ("prefix", "expected"),
        [
            ("data/", {"data/ab/ab01", "data/ab/ab02", "data/ac/ac01", "data/ff/ff01"}),
            ("data/ab/", {"data/ab/ab01", "data/ab/ab02"}),
            ("data/a", {"data/ab/ab01", "data/ab/ab02", "data/ac/ac01"}),
            ("data/ab/ab0", {"data/ab/ab01", "data/ab/ab02"}),
            ("data/ab/ab01", {"data/ab/ab01"}),
            ("snap", {"snapshots/s1", "snapshots/s2"}),
            ("snapshots/", {"snapshots/s1", "snapshots/s2"}),
            ("config", {"config"}),
            ("c", {"config"}),
        ],
    )
    def test_list_by_prefix_yields_exactly_the_matching_keys(
        self, backend: Backend, prefix: str, expected: set[str]
    ) -> None:
        self._put_nested(backend)
        listed = [info.key for info in backend.list(prefix)]
        assert sorted(listed) == sorted(expected)

    @pytest.mark.parametrize("prefix", ["locks/", "nothing", "data/zz/", "data/ab/ab03", "zz"])
    def test_list_of_a_prefix_without_objects_yields_nothing(
        self, backend: Backend, prefix: str
    ) -> None:
        self._put_nested(backend)
        assert list(backend.list(prefix)) == []

    def test_list_of_an_empty_backend_yields_nothing(self, backend: Backend) -> None:
        assert list(backend.list()) == []
        assert list(backend.list("data/")) == []

    def test_list_never_shows_temporary_or_partial_objects(self, backend: Backend) -> None:
        expected = {f"data/{i:02x}/obj{i}": 256 * 1024 + i for i in range(12)}
        done = threading.Event()

        def writer() -> None:
            try:
                for n, (key, size) in enumerate(expected.items()):
                    backend.put(key, payload(size, seed=n))
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        listings = 0
        try:
            while not done.is_set() or listings == 0:
                for prefix in ("", "data/"):
                    for info in backend.list(prefix):
                        assert info.key in expected, f"unexpected key listed: {info.key!r}"
                        assert info.size == expected[info.key], f"partial object {info.key!r}"
                listings += 1
        finally:
            thread.join()
        assert {info.key: info.size for info in backend.list()} == expected

    # --- delete --------------------------------------------------------------------------

    def test_delete_removes_the_object(self, backend: Backend) -> None:
        backend.put("snapshots/gone", b"x")
        backend.put("snapshots/kept", b"y")
        backend.delete("snapshots/gone")
        with pytest.raises(ObjectNotFound):
            backend.get("snapshots/gone")
        with pytest.raises(ObjectNotFound):
            backend.stat("snapshots/gone")
        assert keys_of(backend) == {"snapshots/kept"}

    def test_delete_of_a_missing_key_succeeds(self, backend: Backend) -> None:
        backend.delete("snapshots/never-existed")
        backend.put("snapshots/once", b"x")
        backend.delete("snapshots/once")
        backend.delete("snapshots/once")
        assert list(backend.list()) == []

    def test_put_create_only_works_again_after_delete(self, backend: Backend) -> None:
        backend.put("locks/l", b"first", create_only=True)
        backend.delete("locks/l")
        backend.put("locks/l", b"second", create_only=True)
        assert backend.get("locks/l") == b"second"

    # --- keys --------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=[repr(k) for k in INVALID_KEYS])
    def test_invalid_keys_are_rejected_by_every_verb(self, backend: Backend, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: backend.put(key, b"data"),
            lambda: backend.put(key, b"data", create_only=True),
            lambda: backend.get(key),
            lambda: backend.stat(key),
            lambda: backend.delete(key),
        ]
        for call in calls:
            with pytest.raises(BackendError) as caught:
                call()
            assert caught.value.retryable is False
        assert list(backend.list()) == []

    def test_keys_with_spaces_dashes_and_unicode_round_trip(self, backend: Backend) -> None:
        keys = ["misc/name with spaces", "misc/dash-and_under.score", "misc/ünïcødé-ключ"]
        for n, key in enumerate(keys):
            backend.put(key, payload(100, seed=n))
        for n, key in enumerate(keys):
            assert backend.get(key) == payload(100, seed=n)
        assert keys_of(backend, "misc/") == set(keys)

    def test_hex_pack_keys_in_the_fanout_layout_round_trip(self, backend: Backend) -> None:
        ids = [payload(32, seed=n).hex() for n in range(5)]
        for pack_id in ids:
            backend.put(f"data/{pack_id[:2]}/{pack_id}", bytes.fromhex(pack_id))
        assert keys_of(backend, "data/") == {f"data/{p[:2]}/{p}" for p in ids}
        for pack_id in ids:
            assert backend.get(f"data/{pack_id[:2]}/{pack_id}") == bytes.fromhex(pack_id)

    # --- concurrency ---------------------------------------------------------------------

    def test_concurrent_puts_and_gets_from_many_threads(self, backend: Backend) -> None:
        shared = {payload(20_000, seed=900 + i) for i in range(self.THREADS)}

        def worker(i: int) -> None:
            for j in range(6):
                data = payload(64 * 1024 + j, seed=i * 100 + j)
                key = f"conc/{i}/{j}"
                backend.put(key, data)
                assert backend.get(key) == data
                backend.put("conc/shared", payload(20_000, seed=900 + i))
                assert backend.get("conc/shared") in shared
                assert backend.get(key, 10, 100) == data[10:110]

        run_threads(self.THREADS, worker)
        expected = {f"conc/{i}/{j}" for i in range(self.THREADS) for j in range(6)}
        assert keys_of(backend, "conc/") == expected | {"conc/shared"}
        assert backend.get("conc/shared") in shared

    def _read_while(
        self,
        backend: Backend,
        key: str,
        write: Callable[[Callable[[], None]], None],
        allowed: Iterable[bytes],
        missing_ok: bool,
    ) -> int:
        """Read ``key`` in a loop while ``write`` runs on a thread; every read must be allowed.

        ``write`` gets a function that waits until the reader has read once
        more, so writes and reads interleave even on a fast machine.
        """
        allowed = set(allowed)
        done = threading.Event()
        progress = threading.Condition()
        reads = 0
        failure: list[BaseException] = []

        def wait_for_a_read() -> None:
            with progress:
                target = reads + 1
                progress.wait_for(lambda: reads >= target, timeout=60)

        def writer() -> None:
            try:
                write(wait_for_a_read)
            except BaseException as err:  # re-raised by the reading thread
                failure.append(err)
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while not done.is_set():
                try:
                    data: bytes | None = backend.get(key)
                except ObjectNotFound:
                    assert missing_ok, f"{key} disappeared during an overwrite"
                    data = None
                if data is not None:
                    assert data in allowed, f"read {len(data)} bytes: a partial or mixed object"
                with progress:
                    reads += 1
                    progress.notify_all()
        finally:
            thread.join()
        if failure:
            raise failure[0]
        return reads

    def test_reader_never_sees_a_partial_object_during_overwrites(self, backend: Backend) -> None:
        small, large = payload(MiB, seed=11), payload(2 * MiB + 3, seed=12)
        backend.put("index/hot", small)

        def overwrite(wait_for_a_read: Callable[[], None]) -> None:
            for n in range(6):
                wait_for_a_read()
                backend.put("index/hot", large if n % 2 == 0 else small)

        reads = self._read_while(backend, "index/hot", overwrite, {small, large}, missing_ok=False)
        assert reads >= 6
        assert backend.get("index/hot") == small

    def test_reader_never_sees_a_partial_object_during_a_create(self, backend: Backend) -> None:
        data = payload(self.LARGE_SIZE, seed=13)

        def create(wait_for_a_read: Callable[[], None]) -> None:
            wait_for_a_read()
            backend.put("snapshots/new", data, create_only=True)

        reads = self._read_while(backend, "snapshots/new", create, {data}, missing_ok=True)
        assert reads >= 1
        assert backend.get("snapshots/new") == data

    # --- lifecycle and errors -------------------------------------------------------------

    def test_close_twice_is_harmless(self, backend: Backend) -> None:
        backend.put("config", b"c")
        backend.close()
        backend.close()

    def test_url_is_a_printable_string(self, backend: Backend) -> None:
        assert isinstance(backend.url, str)
        assert backend.url
        assert backend.url.isprintable()

    def test_satisfies_the_backend_protocol(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)

    def test_every_error_is_a_backend_error_with_an_exit_code(self, backend: Backend) -> None:
        backend.put("config", b"12345")
        failing: list[Callable[[], object]] = [
            lambda: backend.get("missing"),
            lambda: backend.stat("missing"),
            lambda: backend.get("config", 3, 10),
            lambda: backend.put("config", b"x", create_only=True),
            lambda: backend.put("bad//key", b"x"),
        ]
        for call in failing:
            with pytest.raises(ResurgoError) as caught:
                call()
            err = caught.value
            assert isinstance(err, BackendError), f"{type(err).__name__} is not a BackendError"
            assert err.retryable is False
            assert isinstance(err.exit_code, int) and err.exit_code > 0
            assert str(err)
