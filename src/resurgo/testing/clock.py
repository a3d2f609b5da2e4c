"""A fake clock for grace periods, heartbeats, lock staleness and retention tests.

``FakeClock`` implements ``resurgo.repo.clock.Clock``; both readings move only
when the test calls ``advance`` (or ``set``). Thread-safe.
"""

from __future__ import annotations

import threading
import time


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._wall = time.time() if start is None else start
        self._mono = 1000.0

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both readings forward (a negative value only moves the wall clock back)."""
        with self._lock:
            self._wall += seconds
            if seconds > 0:
                self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock only (a clock correction); the monotonic clock is unaffected."""
        with self._lock:
            self._wall = wall
