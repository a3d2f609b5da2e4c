"""The client cache: local copies of a repository's snapshot objects and tree packs.

A *repository cache* lives in ``<cache dir>/<repository ID>/`` and holds copies
of backend objects that read-mostly commands (``snapshots``, ``ls``, ``find``,
small restores) would otherwise download on every run:

* ``snapshots/<id>``: snapshot objects, stored as the encrypted envelope
  bytes the backend holds under that name;
* ``packs/<2 hex>/<id>``: whole packs that hold tree blobs (the repository
  writes tree blobs and data blobs into separate packs, so a tree pack holds
  only directory listings and is small next to the data).

The index cache (``index``) sits in the same directory and belongs to the
repository facade.

Nothing in the cache is trusted. Every entry is named by the hash of its
content, as in the repository: a snapshot envelope is checked against its name
on every read; of a pack, only the blob a caller wants is read (or, for a pack
read from again, the whole file once, kept in memory), and the caller
authenticates it (a whole pack is checked against its name when it is
fetched, or uploaded by this writer, before it is stored). An entry that
fails any check is deleted and fetched again from the backend. Entries are
written to a temporary file and renamed into place, so several processes can
share one cache; losing or deleting the whole cache directory only costs
downloads. The cache is never consulted for *whether* an object exists: the
caller lists the backend for that, and ``retain_objects`` drops entries whose
objects are gone.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import blake3

SNAPSHOTS_DIR = "snapshots"
PACKS_DIR = "packs"
_TEMP_PREFIX = ".tmp-"

# Cached packs read from more than once are kept whole in memory, this many
# bytes of them at most (a larger pack is read a blob at a time). A backup
# compares every changed directory with its parent tree: reading each from
# the file cost an open, a read and a close, each a hand-off of the GIL
# (docs/benchmarks.md, optimisation log).
HELD_PACK_BYTES = 16 << 20


def _hash_hex(data: bytes | memoryview) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def _valid_name(name: str) -> bool:
    # Names come from backend listings: refuse anything that is not a plain
    # lowercase hex ID, so a hostile listing cannot make us write elsewhere.
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class RepoCache:
    """The cache directory of one repository. Thread-safe; shareable between processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._held: OrderedDict[str, bytes] = OrderedDict()  # least recently used first
        self._held_bytes = 0
        self._read_before: set[str] = set()  # packs read from once, not held
        self._too_large: set[str] = set()  # packs never held
        # Counters, for tests and diagnostics.
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    # --- paths --------------------------------------------------------------------

    def _object_path(self, kind: str, name: str) -> Path:
        return self.root / kind / name

    def _pack_path(self, pack_hex: str) -> Path:
        return self.root / PACKS_DIR / pack_hex[:2] / pack_hex

    # --- snapshot (and other small) objects --------------------------------------------

    def load_object(self, kind: str, name: str) -> bytes | None:
        """The cached envelope of ``kind/name``, or None (absent or damaged, then deleted)."""
        if not _valid_name(name):
            return None
        path = self._object_path(kind, name)
        data = read_file(path)
        if data is None:
            self._count(hit=False)
            return None
        if _hash_hex(data) != name:
            self.drop_object(kind, name)
            self._count(hit=False)
            return None
        self._count(hit=True)
        return data

    def store_object(self, kind: str, name: str, envelope: bytes) -> None:
        if _valid_name(name):
            write_atomic(self._object_path(kind, name), envelope)

    def drop_object(self, kind: str, name: str) -> None:
        if _valid_name(name) and _unlink(self._object_path(kind, name)):
            with self._lock:
                self.dropped += 1

    def retain_objects(self, kind: str, names: Iterable[str]) -> int:
        """Delete cached ``kind`` objects not in ``names`` (removed from the repository)."""
        keep = set(names)
        removed = 0
        try:
            entries = list(os.scandir(self.root / kind))
        except OSError:
            return 0
        for entry in entries:
            if entry.name not in keep and _unlink(Path(entry.path)):
                removed += 1
        return removed

    # --- packs ---------------------------------------------------------------------------

    def fetch_lock(self, pack_hex: str) -> threading.Lock:
        """A lock per pack, so that concurrent readers download a missing pack once."""
        with self._lock:
            lock = self._fetch_locks.get(pack_hex)
            if lock is None:
                lock = self._fetch_locks[pack_hex] = threading.Lock()
            return lock

    def read_pack(self, pack_hex: str, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of the cached pack, or None if absent or short.

        Only those bytes are read, the first time: the caller authenticates
        the blob they hold (its envelope binds the blob's type and ID) and
        calls ``drop_pack`` if that fails. Checking the whole pack against its
        name first would read and hash all of it (up to a pack's size) to use
        one small tree. A pack read from again is read whole and kept (up to
        ``HELD_PACK_BYTES``): its blobs are then sliced from memory.
        """
        if not _valid_name(pack_hex):
            return None
        with self._lock:
            whole = self._held.get(pack_hex)
            if whole is not None:
                self._held.move_to_end(pack_hex)
            again = pack_hex in self._read_before and pack_hex not in self._too_large
            self._read_before.add(pack_hex)
        if whole is None and again:
            whole = self._hold(pack_hex)
        if whole is not None:
            chunk: bytes | None = whole[offset : offset + length]
        else:
            chunk = _pread(self._pack_path(pack_hex), offset, length)
        if chunk is None:
            self._count(hit=False)
            return None
        if len(chunk) != length:
            self.drop_pack(pack_hex)  # truncated: useless for any blob past its end
            self._count(hit=False)
            return None
        self._count(hit=True)
        return chunk

    def _hold(self, pack_hex: str) -> bytes | None:
        """The whole cached pack, now kept in memory; None if absent or too large to keep."""
        path = self._pack_path(pack_hex)
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        whole = read_file(path) if size <= HELD_PACK_BYTES else None
        if whole is None or len(whole) > HELD_PACK_BYTES:
            if size > HELD_PACK_BYTES:
                with self._lock:
                    self._too_large.add(pack_hex)
            return None
        with self._lock:
            if pack_hex not in self._held:
                self._held[pack_hex] = whole
                self._held_bytes += len(whole)
            while self._held_bytes > HELD_PACK_BYTES:
                _, old = self._held.popitem(last=False)
                self._held_bytes -= len(old)
        return whole

    def _release(self, pack_hexes: Iterable[str]) -> None:
        with self._lock:
            for pack_hex in pack_hexes:
                old = self._held.pop(pack_hex, None)
                if old is not None:
                    self._held_bytes -= len(old)

    def store_pack(self, pack_hex: str, data: bytes) -> None:
        """Keep a pack the caller has already checked against its name."""
        if not _valid_name(pack_hex):
            return
        write_atomic(self._pack_path(pack_hex), data)

    def drop_pack(self, pack_hex: str) -> None:
        self._release([pack_hex])
        if _valid_name(pack_hex) and _unlink(self._pack_path(pack_hex)):
            with self._lock:
                self.dropped += 1

    def retain_packs(self, pack_hexes: set[str]) -> int:
        """Delete cached packs not in ``pack_hexes`` (no longer indexed: pruned)."""
        with self._lock:
            gone = [h for h in self._held if h not in pack_hexes]
        self._release(gone)
        removed = 0
        base = self.root / PACKS_DIR
        try:
            fanout = list(os.scandir(base))
        except OSError:
            return 0
        for directory in fanout:
            try:
                entries = list(os.scandir(directory.path))
            except OSError:
                continue
            for entry in entries:
                if entry.name not in pack_hexes and _unlink(Path(entry.path)):
                    removed += 1
        return removed

    def _count(self, *, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1


# --- file helpers: failures are cache misses, never errors ------------------------------


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _pread(path: Path, offset: int, length: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        parts: list[bytes] = []
        done = 0
        while done < length:
            part = os.pread(fd, length - done, offset + done)
            if not part:
                break
            parts.append(part)
            done += len(part)
        return b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` via a temporary file and a rename. False if it failed."""
    tmp = path.with_name(f"{_TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        # The cache is an optimisation: a full or read-only disk only costs downloads.
        _unlink(tmp)
        return False


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


# Bytes of cached files ``warm_cache`` asks the kernel to read ahead, at most.
WARM_BYTES = 64 << 20


def warm_cache(root: Path, stop: threading.Event, *, budget: int = WARM_BYTES) -> int:
    """Ask the kernel to read the files under the cache root ``root`` (every
    repository's cache: which one is this repository's is known only once its
    config is decrypted) into the page cache, the most recently written first,
    up to ``budget`` bytes, until ``stop`` is set; the bytes asked for.

    Run while the key is derived (``session.open_repo``): the index cache, the
    directory cache and the cached tree packs are read right after it, and a
    cold disk then costs the command their reads. ``POSIX_FADV_WILLNEED``
    starts the reads without waiting for them or using the process's memory.
    A hint: every error is ignored.
    """
    files: list[tuple[int, int, str]] = []
    for base, _dirs, names in os.walk(root):
        if stop.is_set():
            return 0
        for name in names:
            path = os.path.join(base, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, path))
    asked = 0
    for _mtime, size, path in sorted(files, reverse=True):
        if stop.is_set() or asked + size > budget:
            break
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            asked += size
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked
