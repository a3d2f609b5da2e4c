"""Clocks: where maintenance code reads the time, so tests can move it by hand.

A *clock* has two readings: ``time()``, the wall clock in seconds since the
epoch (comparable between hosts, up to their clock skew), and ``monotonic()``,
seconds on a clock that never jumps and keeps counting while the machine is
suspended (Linux ``CLOCK_BOOTTIME``), used to measure how long this process
has gone without a successful heartbeat. ``resurgo.testing.clock.FakeClock``
is the hand-driven one.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        # CLOCK_MONOTONIC stops during a suspend; a writer that slept through
        # its stale timeout must notice that the time has passed.
        if _BOOTTIME is not None:
            return time.clock_gettime(_BOOTTIME)
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()
