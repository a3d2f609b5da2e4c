"""Writer sessions: how a process that writes to the repository tells prune it exists.

A *session* is the object ``sessions/<id>`` (encrypted JSON, see ``control``)
that a ``Repository`` creates just before its first write and deletes when it
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

import getpass
import os
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import EXIT_FAILURE, BackendError, ObjectNotFound, ResurgoError
from resurgo.repo.clock import SYSTEM_CLOCK, Clock

SESSIONS = layout.SESSIONS
SESSION_VERSION = 1


class SessionLost(ResurgoError):
    """This writer can no longer prove to prune that it is alive; nothing more is saved.

    Raised instead of writing an index object or a snapshot that might point at
    data a concurrent prune has deleted. Running the operation again is safe.
    """

    exit_code = EXIT_FAILURE
    retryable = True


class ControlStore(Protocol):
    """What sessions, locks and prune marks need from the repository."""

    @property
    def backend(self) -> Any: ...

    def put_control(self, key: str, doc: dict[str, Any], *, create_only: bool = False) -> None: ...

    def get_control(self, key: str) -> dict[str, Any]: ...


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
class SessionInfo:
    id: str
    host: str
    pid: int
    user: str
    operation: str
    start: float
    heartbeat: float
    stale_timeout: float

    def stale(self, now: float, skew: float) -> bool:
        return now - self.heartbeat > self.stale_timeout + skew

    def describe(self) -> str:
        return f"{self.operation} on {self.host} (pid {self.pid}, user {self.user})"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SessionInfo:
        return cls(
            id=str(doc["id"]), host=str(doc["host"]), pid=int(doc["pid"]),
            user=str(doc.get("user", "")), operation=str(doc.get("operation", "write")),
            start=float(doc["start"]), heartbeat=float(doc["heartbeat"]),
            stale_timeout=float(doc["stale_timeout"]),
        )


def whoami() -> tuple[str, int, str]:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return socket.gethostname(), os.getpid(), user


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


class WriterSession:
    """This process's session: create, refresh, check, end. Thread-safe."""

    def __init__(
        self, store: ControlStore, settings: SessionSettings, *, start: float,
        operation: str = "write",
    ) -> None:
        # os.urandom, as secrets.token_hex: secrets would load libcrypto (docs/design.md, "Start-up")
        self.id = os.urandom(16).hex()
        self.key = SESSIONS + self.id
        self.start = start
        self.operation = operation
        self.settings = settings
        self._store = store
        self._lock = threading.Lock()
        self._last_ok: float | None = None  # monotonic time at the start of the last counted refresh
        self._lost: str | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------

    def _doc(self, now: float) -> dict[str, Any]:
        host, pid, user = whoami()
        return {
            "v": SESSION_VERSION, "id": self.id, "host": host, "pid": pid, "user": user,
            "operation": self.operation, "start": self.start, "heartbeat": now,
            "stale_timeout": self.settings.stale_timeout,
            "heartbeat_interval": self.settings.heartbeat_interval,
        }

    def begin(self) -> None:
        """Write the session object (create-only: IDs are random) and start refreshing it."""
        clock = self.settings.clock
        m0, w0 = clock.monotonic(), clock.time()
        self._store.put_control(self.key, self._doc(w0), create_only=True)
        if clock.monotonic() - m0 <= self.settings.stale_timeout / 4:
            self._last_ok = m0
        interval = self.settings.heartbeat_interval
        if interval is not None:
            self._thread = threading.Thread(
                target=_refresh_loop, args=(weakref.ref(self), self._stop, interval),
                name=f"resurgo-session-{self.id[:8]}", daemon=True,
            )
            self._thread.start()

    def heartbeat(self) -> bool:
        """Refresh the session object once; False when it did not count (or the session is lost)."""
        with self._lock:
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
            clock = self.settings.clock
            m0, w0 = clock.monotonic(), clock.time()
            try:
                self._store.put_control(self.key, self._doc(w0))
            except BackendError:
                return False
            # A refresh that took long may have landed after prune read the
            # old heartbeat: it does not extend the fence (module docstring).
            if clock.monotonic() - m0 <= self.settings.stale_timeout / 4:
                self._last_ok = m0
                return True
            return False

    def end(self) -> None:
        """Stop refreshing and delete the session object (errors ignored: it goes stale)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        try:
            self._store.backend.delete(self.key)
        except BackendError:
            pass

    # -- checks ------------------------------------------------------------------

    @property
    def fenced(self) -> bool:
        if self._last_ok is None:
            return True
        return self.settings.clock.monotonic() - self._last_ok > self.settings.stale_timeout / 2

    @property
    def lost(self) -> str | None:
        return self._lost

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


def _refresh_loop(ref: weakref.ref[WriterSession], stop: threading.Event, interval: float) -> None:
    # Holds the session only weakly: a Repository dropped without close()
    # lets its thread end; its session object then goes stale.
    while not stop.wait(interval):
        session = ref()
        if session is None:
            return
        session.heartbeat()
        if session.lost is not None:
            return
        del session

