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
from resurgo.repo.heartbeat import ControlStore, Heartbeat, OwnerRecord
from resurgo.repo.sessions import SessionSettings

LOCK_KEY = layout.LOCKS + "exclusive"
LOCK_VERSION = 1
# A lock object that cannot be read is treated as stale once the medium says
# it is this old (seconds), if the medium reports modification times at all.
UNREADABLE_LOCK_AGE = 3600.0


@dataclass(frozen=True)
class LockInfo(OwnerRecord):
    time: float

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        beat = datetime.fromtimestamp(self.heartbeat, UTC).strftime("%H:%M:%S UTC")
        return f"{self.owner()} since {since}, last heartbeat {beat}"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LockInfo:
        return cls(**OwnerRecord.owner_fields(doc, ""), time=float(doc["time"]))


def read_lock(store: ControlStore) -> LockInfo | None:
    """The current holder, None when unlocked. Raises for an unreadable lock object."""
    try:
        return LockInfo.from_doc(store.get_control(LOCK_KEY))
    except ObjectNotFound:
        return None
    except (KeyError, TypeError, ValueError) as e:
        raise ResurgoError(f"unreadable lock object {LOCK_KEY}: {e}")


class ExclusiveLock(Heartbeat):
    """Hold ``locks/exclusive`` for one maintenance operation (a context manager)."""

    def __init__(
        self, store: ControlStore, *, operation: str, settings: SessionSettings | None = None,
        skew: float = 0.0,
    ) -> None:
        # os.urandom, as secrets.token_hex: secrets would load libcrypto (docs/design.md, "Start-up")
        super().__init__(store, settings or SessionSettings(), version=LOCK_VERSION,
                         record_id=os.urandom(16).hex(), operation=operation)
        self.skew = skew
        self._started = 0.0
        self._held = False

    def record_doc(self, now: float) -> dict[str, Any]:
        return {**self.owner_doc(now), "time": self._started}

    def _create(self) -> None:
        self._started = self.settings.clock.time()
        # The creating put always counts: the holder has just proven it is alive.
        m0 = self.settings.clock.monotonic()
        self.counted_put(LOCK_KEY, create_only=True)
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
        self.start_refreshing("resurgo-lock")

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
            return LockInfo(id="?", host="?", pid=0, user="?",
                            operation="unknown (unreadable lock object)",
                            heartbeat=info.mtime or now, stale_timeout=UNREADABLE_LOCK_AGE,
                            time=info.mtime or now)

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
            try:
                return self.counted_put(LOCK_KEY)
            except BackendError:
                return False

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
        self.stop_refreshing()
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
