"""The exclusive maintenance lock: one prune (or index repair) at a time.

Backups never take it: they announce themselves with sessions
(``resurgo.repo.sessions``). The lock is the object ``locks/exclusive``,
created with ``create_only`` so that of two processes racing for it exactly
one wins, holding the owner's host, pid, operation and a heartbeat refreshed
by a background thread. A lock whose heartbeat is older than its recorded
stale timeout plus the clock-skew bound is *stale* and may be broken: the
breaker deletes it and competes for it again with ``create_only``, then reads
it back to make sure it is its own. The holder checks before each destructive
step that the lock is still its own (``check``); like a writer session it
fences itself once its last counted heartbeat is more than half the stale
timeout old.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from resurgo.backend import layout
from resurgo.errors import (
    BackendError,
    ObjectExists,
    ObjectNotFound,
    RepositoryLocked,
    ResurgoError,
)
from resurgo.repo.sessions import ControlStore, SessionSettings, whoami

LOCK_KEY = layout.LOCKS + "exclusive"
LOCK_VERSION = 1
# A lock object that cannot be read is treated as stale once the medium says
# it is this old (seconds), if the medium reports modification times at all.
UNREADABLE_LOCK_AGE = 3600.0


@dataclass(frozen=True)
class LockInfo:
    id: str
    host: str
    pid: int
    user: str
    operation: str
    time: float
    heartbeat: float
    stale_timeout: float

    def stale(self, now: float, skew: float) -> bool:
        return now - self.heartbeat > self.stale_timeout + skew

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        beat = datetime.fromtimestamp(self.heartbeat, UTC).strftime("%H:%M:%S UTC")
        return (f"{self.operation} on {self.host} (pid {self.pid}, user {self.user}) "
                f"since {since}, last heartbeat {beat}")

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LockInfo:
        return cls(
            id=str(doc["id"]), host=str(doc["host"]), pid=int(doc["pid"]),
            user=str(doc.get("user", "")), operation=str(doc.get("operation", "")),
            time=float(doc["time"]), heartbeat=float(doc["heartbeat"]),
            stale_timeout=float(doc["stale_timeout"]),
        )


def read_lock(store: ControlStore) -> LockInfo | None:
    """The current holder, None when unlocked. Raises for an unreadable lock object."""
    try:
        return LockInfo.from_doc(store.get_control(LOCK_KEY))
    except ObjectNotFound:
        return None
    except (KeyError, TypeError, ValueError) as e:
        raise ResurgoError(f"unreadable lock object {LOCK_KEY}: {e}")


class ExclusiveLock:
    """Hold ``locks/exclusive`` for one maintenance operation (a context manager)."""

    def __init__(
        self, store: ControlStore, *, operation: str, settings: SessionSettings | None = None,
        skew: float = 0.0,
    ) -> None:
        self.settings = settings or SessionSettings()
        self.operation = operation
        self.skew = skew
        # os.urandom, as secrets.token_hex: secrets would load libcrypto (docs/design.md, "Start-up")
        self.id = os.urandom(16).hex()
        self._store = store
        self._started = 0.0
        self._last_ok: float | None = None
        self._lost: str | None = None
        self._held = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self, now: float) -> dict[str, Any]:
        host, pid, user = whoami()
        return {
            "v": LOCK_VERSION, "id": self.id, "host": host, "pid": pid, "user": user,
            "operation": self.operation, "time": self._started, "heartbeat": now,
            "stale_timeout": self.settings.stale_timeout,
        }

    def _create(self) -> None:
        clock = self.settings.clock
        m0 = clock.monotonic()
        self._started = clock.time()
        self._store.put_control(LOCK_KEY, self._doc(self._started), create_only=True)
        self._last_ok = m0

    def acquire(self) -> None:
        """Take the lock or raise ``RepositoryLocked`` naming its holder."""
        clock = self.settings.clock
        try:
            self._create()
        except ObjectExists:
            holder = self._holder_or_none()
            if holder is not None and not holder.stale(clock.time(), self.skew):
                raise RepositoryLocked(f"repository is locked by {holder.describe()}")
            # Stale (or unreadable and old): break it, then compete again.
            self._store.backend.delete(LOCK_KEY)
            try:
                self._create()
            except ObjectExists:
                other = self._holder_or_none()
                who = other.describe() if other else "another process"
                raise RepositoryLocked(f"repository is locked by {who}")
        # Two breakers of one stale lock can both believe they created the new
        # one; reading it back settles who holds it.
        mine = self._holder_or_none()
        if mine is None or mine.id != self.id:
            who = mine.describe() if mine else "another process"
            raise RepositoryLocked(f"repository is locked by {who}")
        self._held = True
        interval = self.settings.heartbeat_interval
        if interval is not None:
            self._thread = threading.Thread(
                target=_refresh_loop, args=(weakref.ref(self), self._stop, interval),
                name="resurgo-lock", daemon=True,
            )
            self._thread.start()

    def _holder_or_none(self) -> LockInfo | None:
        try:
            return read_lock(self._store)
        except ResurgoError:
            # Unreadable: judge by the object's age where the medium knows it.
            try:
                info = self._store.backend.stat(LOCK_KEY)
            except ObjectNotFound:
                return None
            now = self.settings.clock.time()
            if info.mtime is not None and now - info.mtime > UNREADABLE_LOCK_AGE + self.skew:
                return None
            return LockInfo("?", "?", 0, "?", "unknown (unreadable lock object)", info.mtime or now,
                            info.mtime or now, UNREADABLE_LOCK_AGE)

    def heartbeat(self) -> bool:
        with self._mutex:
            if not self._held or self._lost is not None:
                return False
            if self.fenced:
                self._lost = "no successful lock heartbeat for half the stale timeout"
                return False
            try:
                holder = read_lock(self._store)
            except (ResurgoError, BackendError):
                return False
            if holder is None or holder.id != self.id:
                self._lost = "the lock was broken by another process"
                return False
            clock = self.settings.clock
            m0, w0 = clock.monotonic(), clock.time()
            try:
                self._store.put_control(LOCK_KEY, self._doc(w0))
            except BackendError:
                return False
            if clock.monotonic() - m0 <= self.settings.stale_timeout / 4:
                self._last_ok = m0
                return True
            return False

    @property
    def fenced(self) -> bool:
        if self._last_ok is None:
            return True
        return self.settings.clock.monotonic() - self._last_ok > self.settings.stale_timeout / 2

    def check(self) -> None:
        """Raise ``RepositoryLocked`` unless this process still holds the lock."""
        if self._lost is None and self.fenced:
            self._lost = "no successful lock heartbeat for half the stale timeout"
        if self._lost is None:
            holder = self._holder_or_none()
            if holder is None or holder.id != self.id:
                self._lost = "the lock was broken by another process"
        if self._lost is not None:
            raise RepositoryLocked(f"lost the exclusive lock: {self._lost}")

    def release(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._mutex:
            if not self._held:
                return
            self._held = False
        try:
            holder = read_lock(self._store)
            if holder is not None and holder.id == self.id:
                self._store.backend.delete(LOCK_KEY)
        except (ResurgoError, BackendError):
            pass  # it goes stale and the next holder breaks it

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refresh_loop(ref: weakref.ref[ExclusiveLock], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        lock = ref()
        if lock is None:
            return
        lock.heartbeat()
        del lock
