"""Validating a storage target: prove a backend keeps the contract before trusting it.

A *validation* runs named *checks* against a live backend, inside a fresh
*scratch prefix* ``validate-<random>/`` that nothing else uses, and deletes
everything it wrote there; objects outside the prefix are never read, written
or listed. Each check ends in a *status* (``ok``, ``warn`` or ``fail``) with a
one-line detail; the report's *verdict* is the worst status.

``fail`` means the target breaks the backend contract and must not hold a
repository (data could be lost or misread). ``warn`` means it works with a
caveat the user should know about: create-only puts that are not enforced
(concurrent writers are not protected from each other), a server clock that
disagrees with ours (lock staleness and prune safety margins compare them), or
leftovers the cleanup could not remove.

This backs ``resurgo backend validate URL``; it is the user-facing sibling of
the contract test suite (Kopia's ``repository validate-provider``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resurgo.backend import Backend
from resurgo.errors import BackendError, InvalidRange, ObjectExists, ObjectNotFound
from resurgo.progress import NULL, Reporter

OK = "ok"
WARN = "warn"
FAIL = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

MiB = 1024 * 1024


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    seconds: float = 0.0


@dataclass
class ValidationReport:
    """Every check's result, in the order they ran, and the overall verdict."""

    url: str
    prefix: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=OK)

    @property
    def ok(self) -> bool:
        """True unless a check failed (warnings still allow use)."""
        return self.verdict != FAIL

    def check(self, name: str) -> CheckResult:
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "prefix": self.prefix,
            "verdict": self.verdict,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    "seconds": round(c.seconds, 3),
                }
                for c in self.checks
            ],
        }


class _CheckFailed(Exception):
    """Raised inside a check to end it with FAIL and a detail."""


class _CheckWarned(Exception):
    """Raised inside a check to end it with WARN and a detail."""


CHECKS = (
    "write-read",
    "overwrite",
    "create-only",
    "listing",
    "ranged-read",
    "large-object",
    "delete",
    "clock-skew",
    "cleanup",
)


def validate_backend(
    backend: Backend,
    *,
    clock: Callable[[], float] = time.time,
    reporter: Reporter = NULL,
    large_size: int = 32 * MiB,
    max_clock_skew: float = 60.0,
    prefix: str | None = None,
) -> ValidationReport:
    """Run every check in ``CHECKS`` against ``backend`` and return the report.

    ``clock`` is our wall clock (seconds since the epoch), compared with the
    modification times the server gives objects. ``large_size`` is the size of
    the large-object check (32 MiB: several parts on S3). Never raises for a
    misbehaving backend; every problem becomes a check result.
    """
    scratch = prefix or f"validate-{secrets.token_hex(8)}/"
    report = ValidationReport(url=backend.url, prefix=scratch)
    run = _Run(backend, scratch, clock, large_size, max_clock_skew)
    steps: dict[str, Callable[[], str]] = {
        "write-read": run.write_read,
        "overwrite": run.overwrite,
        "create-only": run.create_only,
        "listing": run.listing,
        "ranged-read": run.ranged_read,
        "large-object": run.large_object,
        "delete": run.delete,
        "clock-skew": run.clock_skew,
        "cleanup": run.cleanup,
    }
    basic_failed = False
    for done, name in enumerate(CHECKS, start=1):
        started = time.monotonic()
        if basic_failed and name != "cleanup":
            result = CheckResult(name, FAIL, "not run: writing and reading back failed")
        else:
            try:
                result = CheckResult(name, OK, steps[name]())
            except _CheckWarned as warned:
                result = CheckResult(name, WARN, str(warned))
            except _CheckFailed as failed:
                result = CheckResult(name, FAIL, str(failed))
            except BackendError as err:
                result = CheckResult(name, FAIL, f"{type(err).__name__}: {err}")
            except Exception as err:  # a broken backend must not crash the report
                result = CheckResult(name, FAIL, f"unexpected {type(err).__name__}: {err}")
            result = CheckResult(
                result.name, result.status, result.detail, time.monotonic() - started
            )
        if name == "write-read" and result.status == FAIL:
            basic_failed = True
        report.checks.append(result)
        reporter.event(
            "validate.check", name=result.name, status=result.status, detail=result.detail
        )
        reporter.progress(checks_done=done, checks_total=len(CHECKS))
    return report


class _Run:
    """The checks of one validation; each returns its OK detail or raises."""

    def __init__(
        self,
        backend: Backend,
        prefix: str,
        clock: Callable[[], float],
        large_size: int,
        max_clock_skew: float,
    ) -> None:
        self.b = backend
        self.prefix = prefix
        self.clock = clock
        self.large_size = large_size
        self.max_clock_skew = max_clock_skew
        self.written: dict[str, int] = {}  # key -> size, what listing must show
        self.touched: set[str] = set()  # every key ever written: what cleanup removes
        self.mtime_sample: tuple[float, float, float | None] | None = None

    def key(self, name: str) -> str:
        return self.prefix + name

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        self.touched.add(self.key(name))
        self.b.put(self.key(name), data, create_only=create_only)
        self.written[self.key(name)] = len(data)

    def write_read(self) -> str:
        if list(self.b.list(self.prefix)):
            raise _CheckFailed(f"scratch prefix {self.prefix} is not empty; refusing to touch it")
        data = os.urandom(4096)
        before = self.clock()
        self.put("small", data)
        after = self.clock()
        back = self.b.get(self.key("small"))
        if back != data:
            raise _CheckFailed(f"read back {len(back)} bytes that differ from the 4096 written")
        info = self.b.stat(self.key("small"))
        if info.size != len(data):
            raise _CheckFailed(f"stat reports {info.size} bytes, 4096 were written")
        self.mtime_sample = (before, after, info.mtime)
        return "a 4 KiB object reads back identical; stat reports its size"

    def overwrite(self) -> str:
        first, second = os.urandom(256 * 1024), os.urandom(384 * 1024)
        key = self.key("overwritten")
        self.put("overwritten", first)
        allowed = {first, second}
        bad: list[str] = []
        reads = 0
        done = threading.Event()

        def reader() -> None:
            nonlocal reads
            while not done.is_set() and not bad:
                try:
                    data = self.b.get(key)
                except ObjectNotFound:
                    bad.append("the object was missing during an overwrite")
                    return
                except BackendError as err:
                    bad.append(f"read failed during an overwrite: {err}")
                    return
                if data not in allowed:
                    bad.append(
                        f"a read returned {len(data)} bytes: neither the old nor the new "
                        "object (a partial or mixed write)"
                    )
                reads += 1

        thread = threading.Thread(target=reader, name="validate-reader")
        thread.start()
        try:
            for n in range(8):
                self.put("overwritten", second if n % 2 == 0 else first)
        finally:
            done.set()
            thread.join()
        if bad:
            raise _CheckFailed(bad[0])
        if self.b.get(key) != first:
            raise _CheckFailed("after 8 overwrites the object does not hold the last version")
        return f"8 overwrites, {reads} concurrent reads: every read saw a whole version"

    def create_only(self) -> str:
        self.put("created", b"new object", create_only=True)
        if self.b.get(self.key("created")) != b"new object":
            raise _CheckFailed("a create-only put of a new key did not store it")
        self.put("existing", b"original")
        try:
            self.b.put(self.key("existing"), b"replacement", create_only=True)
        except ObjectExists:
            if self.b.get(self.key("existing")) != b"original":
                raise _CheckFailed("create-only put raised ObjectExists but replaced the object")
            return "enforced: a create-only put of an existing key is refused"
        self.written[self.key("existing")] = len(b"replacement")
        raise _CheckWarned(
            "NOT enforced: a create-only put replaced an existing object; concurrent "
            "writers are not protected from each other (run one writer at a time)"
        )

    def listing(self) -> str:
        listed = {info.key: info.size for info in self.b.list(self.prefix)}
        if listed != self.written:
            missing = sorted(set(self.written) - set(listed))
            extra = sorted(set(listed) - set(self.written))
            wrong = sorted(
                k for k in set(listed) & set(self.written) if listed[k] != self.written[k]
            )
            raise _CheckFailed(
                f"listing disagrees with what was written: missing {missing}, "
                f"unexpected {extra}, wrong size {wrong}"
            )
        if list(self.b.list(self.prefix + "nothing-here/")):
            raise _CheckFailed("listing an unused prefix returned objects")
        return f"listing shows exactly the {len(listed)} objects written, with their sizes"

    def ranged_read(self) -> str:
        data = os.urandom(64 * 1024)
        key = self.key("ranged")
        self.put("ranged", data)
        size = len(data)
        cases = [(1000, 5000), (0, 1), (size - 10, 10), (size - 10, None), (size, 0), (size, None)]
        for offset, length in cases:
            want = data[offset:] if length is None else data[offset : offset + length]
            got = self.b.get(key, offset, length)
            if got != want:
                raise _CheckFailed(
                    f"get(offset={offset}, length={length}) returned {len(got)} wrong bytes"
                )
        for offset, length in [(size - 1, 2), (size + 1, None), (size + 100, 10)]:
            try:
                got = self.b.get(key, offset, length)
            except InvalidRange:
                continue
            raise _CheckFailed(
                f"a range past the end (offset={offset}, length={length}) returned "
                f"{len(got)} bytes instead of raising InvalidRange: short reads go unnoticed"
            )
        try:
            self.b.get(self.key("never-written"), 0, 10)
        except ObjectNotFound:
            pass
        else:
            raise _CheckFailed("a ranged read of a missing key returned data")
        return "ranges inside the object are exact; ranges past the end are refused"

    def large_object(self) -> str:
        data = os.urandom(self.large_size)
        digest = hashlib.sha256(data).digest()
        started = time.monotonic()
        self.put("large", data)
        up = time.monotonic() - started
        started = time.monotonic()
        back = self.b.get(self.key("large"))
        down = time.monotonic() - started
        if len(back) != len(data) or hashlib.sha256(back).digest() != digest:
            raise _CheckFailed(
                f"the {_mib(len(data))} object read back differs ({len(back)} bytes)"
            )
        if self.b.stat(self.key("large")).size != len(data):
            raise _CheckFailed("stat reports the wrong size for the large object")
        self.b.delete(self.key("large"))
        del self.written[self.key("large")]
        return (
            f"{_mib(len(data))} round trip: up {_rate(len(data), up)}, "
            f"down {_rate(len(data), down)}"
        )

    def delete(self) -> str:
        key = self.key("small")
        self.b.delete(key)
        self.written.pop(key, None)
        try:
            self.b.get(key)
        except ObjectNotFound:
            pass
        else:
            raise _CheckFailed("a deleted object can still be read")
        if key in {info.key for info in self.b.list(self.prefix)}:
            raise _CheckFailed("a deleted object is still listed")
        self.b.delete(key)  # idempotent: a crashed prune redoes its deletes
        return "deleted objects are gone; deleting twice succeeds"

    def clock_skew(self) -> str:
        if self.mtime_sample is None:
            raise _CheckWarned("no timestamp sample (write-read did not complete)")
        before, after, mtime = self.mtime_sample
        if mtime is None:
            raise _CheckWarned("the target reports no modification times; clock skew unknown")
        # Server timestamps often have 1 s resolution; allow that plus the
        # time the write took.
        uncertainty = (after - before) / 2 + 1.0
        skew = mtime - (before + after) / 2
        if abs(skew) - uncertainty > self.max_clock_skew:
            direction = "ahead of" if skew > 0 else "behind"
            raise _CheckWarned(
                f"the server clock is about {abs(skew):.0f} s {direction} ours (limit "
                f"{self.max_clock_skew:.0f} s); lock staleness and prune safety margins "
                "depend on agreeing clocks: fix NTP on one side"
            )
        return f"server clock agrees with ours ({skew:+.1f} s, ±{uncertainty:.1f} s)"

    def cleanup(self) -> str:
        # Only keys this run wrote are removed, even inside the scratch prefix.
        leftovers: list[str] = []
        for _ in range(2):
            for key in sorted(self.touched):
                try:
                    self.b.delete(key)
                except BackendError:
                    pass
            leftovers = [i.key for i in self.b.list(self.prefix) if i.key in self.touched]
            if not leftovers:
                return f"removed every object written under {self.prefix}"
        raise _CheckWarned(f"could not remove {len(leftovers)} objects under {self.prefix}")


def _mib(size: int) -> str:
    return f"{size / MiB:.0f} MiB" if size >= MiB else f"{size} bytes"


def _rate(size: int, seconds: float) -> str:
    return f"{size / MiB / max(seconds, 1e-6):.0f} MiB/s"
