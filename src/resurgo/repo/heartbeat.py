"""Heartbeat records: a control object kept alive by its owner, and fencing.

Writer sessions (``resurgo.repo.sessions``) and the exclusive maintenance lock
(``resurgo.repo.lock``) are the same kind of thing: an encrypted control object
naming its owner (host, pid, user, operation) with a *heartbeat* -- the
wall-clock time at which the last refresh began -- refreshed by a background
thread. Another process judges it *stale* once ``now - heartbeat >
stale_timeout + clock skew``.

The owner's side is *fencing*: a refresh only counts if its put finished
within ``stale_timeout / 4`` of starting, and once ``stale_timeout / 2`` has
passed on the monotonic clock since the start of the last counted refresh, the
owner is *fenced* and must stop trusting its record. So by the time anyone can
call a record stale, its owner has already stopped acting on it.

This module owns that shared part: ``OwnerRecord`` (what is read back) and
``Heartbeat`` (the owner's refresh thread and fence). What the record means,
and what a lost record forbids, stays with the session and the lock.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from resurgo.repo.clock import Clock


class ControlStore(Protocol):
    """What sessions, locks and prune marks need from the repository."""

    @property
    def backend(self) -> Any: ...

    def put_control(self, key: str, doc: dict[str, Any], *, create_only: bool = False) -> None: ...

    def get_control(self, key: str) -> dict[str, Any]: ...


class FenceSettings(Protocol):
    """The settings a heartbeat needs (``SessionSettings`` provides them)."""

    @property
    def heartbeat_interval(self) -> float | None: ...

    @property
    def stale_timeout(self) -> float: ...

    @property
    def clock(self) -> Clock: ...


def whoami() -> tuple[str, int, str]:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return socket.gethostname(), os.getpid(), user


@dataclass(frozen=True)
class OwnerRecord:
    """The fields every heartbeat record carries, as read back from the repository."""

    id: str
    host: str
    pid: int
    user: str
    operation: str
    heartbeat: float
    stale_timeout: float

    def stale(self, now: float, skew: float) -> bool:
        return now - self.heartbeat > self.stale_timeout + skew

    def owner(self) -> str:
        return f"{self.operation} on {self.host} (pid {self.pid}, user {self.user})"

    @staticmethod
    def owner_fields(doc: dict[str, Any], default_operation: str) -> dict[str, Any]:
        """The shared fields of a record document (raises KeyError/ValueError when malformed)."""
        return {
            "id": str(doc["id"]), "host": str(doc["host"]), "pid": int(doc["pid"]),
            "user": str(doc.get("user", "")),
            "operation": str(doc.get("operation", default_operation)),
            "heartbeat": float(doc["heartbeat"]), "stale_timeout": float(doc["stale_timeout"]),
        }


class Heartbeat:
    """The owner's side of one record: counted puts, the fence, the refresh thread.

    Subclasses implement ``heartbeat()`` (one refresh; False when it did not
    count) and expose ``lost`` (why the record can no longer be trusted).
    """

    def __init__(self, store: ControlStore, settings: FenceSettings, *, version: int,
                 record_id: str, operation: str) -> None:
        self.settings = settings
        self.id = record_id
        self.operation = operation
        self._store = store
        self._version = version
        self._mutex = threading.Lock()
        # Monotonic time at the start of the last counted refresh; None: never counted.
        self._last_ok: float | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner_doc(self, now: float) -> dict[str, Any]:
        """The shared fields of this owner's record, with heartbeat ``now``."""
        host, pid, user = whoami()
        return {
            "v": self._version, "id": self.id, "host": host, "pid": pid, "user": user,
            "operation": self.operation, "heartbeat": now,
            "stale_timeout": self.settings.stale_timeout,
        }

    def record_doc(self, now: float) -> dict[str, Any]:
        return self.owner_doc(now)

    def counted_put(self, key: str, *, create_only: bool = False) -> bool:
        """Put the record with a fresh heartbeat; True when the put counts toward the fence.

        A put that took long may have landed after someone read the old
        heartbeat: it does not extend the fence.
        """
        clock = self.settings.clock
        m0, w0 = clock.monotonic(), clock.time()
        self._store.put_control(key, self.record_doc(w0), create_only=create_only)
        if clock.monotonic() - m0 <= self.settings.stale_timeout / 4:
            self._last_ok = m0
            return True
        return False

    @property
    def fenced(self) -> bool:
        if self._last_ok is None:
            return True
        return self.settings.clock.monotonic() - self._last_ok > self.settings.stale_timeout / 2

    @property
    def lost(self) -> str | None:
        return self._lost

    def heartbeat(self) -> bool:
        raise NotImplementedError

    def start_refreshing(self, thread_name: str) -> None:
        interval = self.settings.heartbeat_interval
        if interval is None:
            return  # tests drive heartbeat() with a fake clock
        self._thread = threading.Thread(
            target=_refresh_loop, args=(weakref.ref(self), self._stop, interval),
            name=thread_name, daemon=True,
        )
        self._thread.start()

    def stop_refreshing(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _refresh_loop(ref: weakref.ref[Heartbeat], stop: threading.Event, interval: float) -> None:
    # Holds the owner only weakly: an owner dropped without ending lets its
    # thread end; its record then goes stale.
    while not stop.wait(interval):
        owner = ref()
        if owner is None:
            return
        owner.heartbeat()
        if owner.lost is not None:
            return
        del owner
