"""Writer sessions: how a process that writes to the repository tells prune it exists.

A *session* is a heartbeat record (``resurgo.repo.heartbeat``): the object
``sessions/<id>`` (encrypted JSON, see ``control``) that a ``Repository`` creates just before its first write and deletes when it
closes. It records the host, pid and user, the *start* -- the wall-clock time
just before this process listed the index it deduplicates against (its *index
epoch*), which may be well before the first write -- and a *heartbeat*: the
wall-clock time at which the last refresh began. A background thread refreshes
it every ``heartbeat_interval`` seconds.

A session is *stale* when ``now - heartbeat > stale_timeout + clock skew``
(``SessionInfo.stale``), judged by prune with the session's own
``stale_timeout``. Prune deletes stale sessions (docs/design.md, "Prune beside
running backups").

The writer's side of the bargain is *fencing*: a heartbeat only counts if its
put finished within ``stale_timeout / 4`` of starting, and once
``stale_timeout / 2`` has passed on the monotonic clock since the start of the
last counted heartbeat the session is *lost*: the process refuses to write
index objects or snapshots and raises ``SessionLost``. So by the time any
prune can call a session stale, its writer has stopped trusting it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import BackendError, ObjectNotFound, ResurgoError, SessionLost
from resurgo.repo.clock import SYSTEM_CLOCK, Clock
from resurgo.repo.heartbeat import ControlStore, Heartbeat, OwnerRecord, whoami

__all__ = ["ControlStore", "SessionInfo", "SessionLost", "SessionSettings", "WriterSession",
           "list_sessions", "whoami"]

SESSIONS = layout.SESSIONS
SESSION_VERSION = 1


@dataclass(frozen=True)
class SessionSettings:
    """How a writer keeps its session alive.

    ``heartbeat_interval`` None: no background thread (tests call
    ``WriterSession.heartbeat`` with a fake clock). The stale timeout is
    recorded in the session object, so prune judges every writer by the
    timeout that writer fences itself with.
    """

    heartbeat_interval: float | None = 60.0
    stale_timeout: float = 900.0
    clock: Clock = field(default=SYSTEM_CLOCK)

    def __post_init__(self) -> None:
        if self.stale_timeout <= 0:
            raise ValueError("stale_timeout must be positive")
        if self.heartbeat_interval is not None and not (
            0 < self.heartbeat_interval < self.stale_timeout / 4
        ):
            raise ValueError("heartbeat_interval must be positive and below stale_timeout / 4")


@dataclass(frozen=True)
class SessionInfo(OwnerRecord):
    start: float

    def describe(self) -> str:
        return self.owner()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SessionInfo:
        return cls(**OwnerRecord.owner_fields(doc, "write"), start=float(doc["start"]))


def list_sessions(store: ControlStore) -> tuple[list[SessionInfo], list[ObjectInfo]]:
    """Every readable session, and the objects under ``sessions/`` that are not."""
    good: list[SessionInfo] = []
    bad: list[ObjectInfo] = []
    for info in list(store.backend.list(SESSIONS)):
        try:
            doc = store.get_control(info.key)
            good.append(SessionInfo.from_doc(doc))
        except ObjectNotFound:
            continue  # ended between list and get
        except (ResurgoError, KeyError, TypeError, ValueError):
            bad.append(info)
    return good, bad


class WriterSession(Heartbeat):
    """This process's session: create, refresh, check, end. Thread-safe."""

    def __init__(
        self, store: ControlStore, settings: SessionSettings, *, start: float,
        operation: str = "write",
    ) -> None:
        # os.urandom, as secrets.token_hex: secrets would load libcrypto (docs/design.md, "Start-up")
        super().__init__(store, settings, version=SESSION_VERSION,
                         record_id=os.urandom(16).hex(), operation=operation)
        self.key = SESSIONS + self.id
        self.start = start
        self._ended = False

    # -- life cycle ------------------------------------------------------------

    def record_doc(self, now: float) -> dict[str, Any]:
        return {**self.owner_doc(now), "start": self.start,
                "heartbeat_interval": self.settings.heartbeat_interval}

    def begin(self) -> None:
        """Write the session object (create-only: IDs are random) and start refreshing it."""
        self.counted_put(self.key, create_only=True)
        self.start_refreshing(f"resurgo-session-{self.id[:8]}")

    def heartbeat(self) -> bool:
        """Refresh the session object once; False when it did not count (or the session is lost)."""
        with self._mutex:
            if self._ended or self._lost is not None:
                return False
            if self.fenced:
                self._lost = self._fenced_message()
                return False
            try:
                # Never resurrect a session prune has removed: it was judged
                # stale, and its writer must stop, not carry on.
                self._store.backend.stat(self.key)
            except ObjectNotFound:
                self._lost = "the session object was removed (prune judged this writer stale)"
                return False
            except BackendError:
                return False
            try:
                return self.counted_put(self.key)
            except BackendError:
                return False

    def end(self) -> None:
        """Stop refreshing and delete the session object (errors ignored: it goes stale)."""
        with self._mutex:
            if self._ended:
                return
            self._ended = True
        self.stop_refreshing()
        try:
            self._store.backend.delete(self.key)
        except BackendError:
            pass

    # -- checks ------------------------------------------------------------------

    def _fenced_message(self) -> str:
        return (f"no successful heartbeat for more than {self.settings.stale_timeout / 2:.0f}s "
                "(a concurrent prune may judge this writer stale)")

    def check(self, what: str, *, remote: bool = False) -> None:
        """Raise ``SessionLost`` unless this session may still ``what``.

        ``remote`` also checks that the session object still exists (one stat):
        a guard against clocks that drifted beyond the configured skew bound.
        """
        if self._lost is None and self.fenced:
            self._lost = self._fenced_message()
        if self._lost is None and remote:
            try:
                self._store.backend.stat(self.key)
            except ObjectNotFound:
                self._lost = "the session object was removed (prune judged this writer stale)"
        if self._lost is not None:
            raise SessionLost(f"refusing to {what}: {self._lost}; nothing was lost, run it again")
