"""Progress reporting: the engine's only way to tell the outside what it is doing.

The engine never prints. Long operations accept a ``Reporter`` and call
``reporter.event(kind, **fields)`` for discrete happenings (a file that could not
be read, a pack uploaded) and ``reporter.progress(**counters)`` for running
totals. The CLI renders events as text or JSON lines; the scheduler stores them.
``NULL`` ignores everything. Reporters must be thread-safe: pipelines call them
from worker threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class Reporter(Protocol):
    def event(self, kind: str, /, **fields: Any) -> None:
        """A discrete happening, e.g. ``event("warning", path=..., error=...)``."""

    def progress(self, /, **counters: Any) -> None:
        """Running totals, e.g. ``progress(files_done=10, bytes_done=1234)``."""


class NullReporter:
    def event(self, kind: str, /, **fields: Any) -> None:
        pass

    def progress(self, /, **counters: Any) -> None:
        pass


NULL: Reporter = NullReporter()


@dataclass
class Event:
    kind: str
    fields: dict[str, Any]
    time: float = field(default_factory=time.time)


class RecordingReporter:
    """Keeps every event and the last counters; used by tests and the scheduler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[Event] = []
        self.counters: dict[str, Any] = {}

    def event(self, kind: str, /, **fields: Any) -> None:
        with self._lock:
            self.events.append(Event(kind, fields))

    def progress(self, /, **counters: Any) -> None:
        with self._lock:
            self.counters.update(counters)

    def of_kind(self, kind: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]
