"""The backup pipeline: file system (or a stream) -> blobs, trees and a snapshot.

Vocabulary: the *targets* are the paths the user named; the *virtual root*
mirrors their absolute paths (``/home/ann/docs`` becomes root -> home -> ann ->
docs, the intermediate directories carrying their real metadata). A *parent*
is the earlier snapshot whose nodes are compared with the file system: a
regular file whose size, mtime, ctime, inode and device all equal its node in
the parent (and whose content blobs are all still in the index, and which was
read without error) is not read again; its content list is reused. Everything
else is read, chunked and saved. The *directory cache* (ops/dircache.py) lets a
directory whose entries all have the lstat they had in the parent skip its
parent tree altogether: its tree is the parent's.

Pipeline: directories are scanned by a pool of scanner threads, a few at a
time in depth-first order (nothing recurses: a 1,000-level deep tree is
fine). A scanner reads and saves the small files of its directory itself, in
one read each; larger files go to the large-file lane, one at a time, their
chunks saved by a pool of saver threads, so one big file still keeps every
core busy. The calling thread finishes directories (encodes and saves their
trees) once all their children are done. Source errors (a file that cannot
be read) become warnings and the file is left out; repository errors abort
the backup and no snapshot is written.
"""

from __future__ import annotations

import getpass
import mmap
import os
import queue
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from resurgo import __version__
from resurgo.errors import Interrupted, SourceError
from resurgo.ops import dircache
from resurgo.ops.gcpause import collector_paused
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobType, Repository
from resurgo.snapshot import dirscan
from resurgo.snapshot.direct import ALIGN, aligned_buffer, read_into, start_direct
from resurgo.snapshot.fsmeta import (
    data_extents,
    file_changed,
    group_name,
    holes_from_extents,
    node_from_path,
    open_dir_for_backup,
    open_for_backup,
    show_path,
    user_name,
)
from resurgo.snapshot.model import Node, NodeType, Snapshot, encode_tree
from resurgo.snapshot.store import find_snapshot, list_snapshots, load_tree, save_snapshot

if TYPE_CHECKING:
    # Only a type here: the CLI imports it (and pathspec, ~20 ms cold) when
    # excludes are given.
    from resurgo.ops.excludes import Excluder

# Files up to this size are read whole, in one read, by the thread that scans
# their directory, and saved right there: no hand-over to another thread per
# file (the per-file Python work, not the I/O, bounds a tree of small files).
SMALL_FILE_BYTES = 2 << 20
# Bigger files go to the large-file lane: one file at a time, read in blocks,
# their chunks saved by the saver pool, so a single large file uses every core
# while the scanners go on with the small files.
PARALLEL_FILE_BYTES = 8 << 20
# Chunks of one large file queued for the savers: enough to keep every saver
# busy. Each queued chunk is a view that keeps its whole read buffer (up to
# READ_SIZE plus a carried tail) alive, so more only costs memory.
CHUNKS_IN_FLIGHT_PER_SAVER = 2
# Size of each of a large file's two stream buffers (at least the chunker's
# maximum chunk): each refill tops the buffer up after the unfinished chunk
# carried over from the other one, so the buffers never grow.
STREAM_BUFFER = 4 << 20
# Directories scanned at once, per scanner thread: enough that a scanner never
# waits for the walk to hand it the next directory.
SCANS_IN_FLIGHT_PER_SCANNER = 4
# Small files of a directory opened and hinted (POSIX_FADV_WILLNEED) ahead of
# the one being read, per scanner: cold reads overlap without more threads
# (16, 48, 64 and 96 measured the same with two scanners; 48 leaves margin for
# slower disks at 96 descriptors).
READ_AHEAD_FILES = 48
# The most bytes of small files the native reader holds at once, per scanner.
NATIVE_BATCH_BYTES = 2 << 20
_SCANNED, _CHILD = 0, 1


# A directory's entries that are backed up: (name, path, lstat), in name order.
_Listed = list[tuple[bytes, bytes, os.stat_result]]


@dataclass
class BackupOptions:
    tags: list[str] = field(default_factory=list)
    hostname: str | None = None
    excluder: Excluder | None = None
    one_file_system: bool = False
    parent: str | None = None  # snapshot ID to compare with; None: latest of same host+paths
    force: bool = False  # re-read every file
    # Directory scanners. Two: the read-ahead keeps the disk busy from each,
    # and every scanner beyond that mostly fights for the GIL at each system
    # call (benchmark dataset, cold, quiet 2-core machine: initial backup
    # 5.5 s / 8.5 s CPU with four, 4.2-4.5 s / 6.1-6.6 s with two, 4.2-5.2 s
    # with one; no-change 1.45 s with four, 1.2-1.3 s with two).
    read_threads: int = 2
    # Directory listings at once when the directory cache holds, so that the
    # walk is mostly listing: the native listing runs without the GIL and cold
    # listings overlap (no-change backup, cold: walk 0.20-0.22 s with 2,
    # 0.16-0.18 s with 4). Only ``read_threads`` of them go on to compare and
    # read at a time. Without the cache, listing more than that at once only
    # slowed the reading (initial backup: 4.06-4.18 s with 2, 4.28-4.75 s with 4).
    list_threads: int = 4
    save_threads: int = max(2, os.cpu_count() or 2)
    excludes_text: list[str] = field(default_factory=list)  # recorded in the snapshot


@dataclass
class BackupSummary:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    others: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    blobs_added: int = 0
    bytes_added: int = 0  # bytes written to packs (after compression and encryption)
    bytes_added_raw: int = 0
    warnings: list[dict[str, str]] = field(default_factory=list)
    started: float = 0.0
    duration: float = 0.0
    snapshot_id: str | None = None
    parent: str | None = None

    @property
    def files_total(self) -> int:
        return self.files_new + self.files_changed + self.files_unchanged

    def as_dict(self) -> dict[str, Any]:
        return {
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unchanged": self.files_unchanged,
            "files_total": self.files_total,
            "dirs": self.dirs,
            "others": self.others,
            "bytes_read": self.bytes_read,
            "bytes_total": self.bytes_total,
            "blobs_added": self.blobs_added,
            "bytes_added": self.bytes_added,
            "bytes_added_raw": self.bytes_added_raw,
            "warnings": len(self.warnings),
            "duration": round(self.duration, 3),
            "snapshot_id": self.snapshot_id,
            "parent": self.parent,
        }


class _SourceProblem(Exception):
    """A file could not be read: becomes a warning, the file is left out."""


class _DirJob:
    """One directory being backed up: its node, its children, what it waits for."""

    __slots__ = (
        "children",
        "counted",
        "excluded",
        "node",
        "old_nodes",
        "old_subtree",
        "parent",
        "path",
        "pending",
        "result",
        "reused",
        "sig",
        "unclean",
    )

    def __init__(self, path: bytes, node: Node, parent: _DirJob | None,
                 old_subtree: bytes | None) -> None:
        self.path = path
        self.node = node
        self.parent = parent
        # The parent snapshot's version of this directory, to reuse its tree when
        # nothing inside changed (no encoding, hashing or upload for it then).
        self.old_subtree = old_subtree
        self.old_nodes: dict[bytes, Node] | None = None
        self.children: list[Node | Future[Node | None] | _DirJob] = []
        self.pending = 0  # children not finished yet, once the directory is scanned
        self.excluded = False
        self.result: Node | None = None
        # The directory cache (ops/dircache.py): the signature of the entries
        # as listed; whether they matched the cached signature, so that the
        # files' nodes were not built (``counted``: what the scan counted for
        # them); whether an entry had a problem (no signature recorded then).
        self.sig: bytes | None = None
        self.reused = False
        self.counted = (0, 0, 0)
        self.unclean = False


class _Tally:
    """What one directory scan counted, added to the summary under the lock once."""

    __slots__ = ("bytes_total", "changed", "dirs", "new", "others", "reads", "unchanged")

    def __init__(self) -> None:
        self.new = self.changed = self.unchanged = self.others = self.dirs = 0
        self.bytes_total = 0
        # Small files to read once the directory is listed:
        # (path, node, lstat, new, future for its other hard-linked names).
        self.reads: list[tuple[bytes, Node, os.stat_result, bool, Future[Node | None] | None]] = []

    def count(self, new: bool) -> None:
        if new:
            self.new += 1
        else:
            self.changed += 1

    def add_to(self, s: BackupSummary) -> None:
        s.files_new += self.new
        s.files_changed += self.changed
        s.files_unchanged += self.unchanged
        s.others += self.others
        s.dirs += self.dirs
        s.bytes_total += self.bytes_total


def _small_limit() -> int:
    """Files up to this size are read whole by their directory's scanner."""
    return min(SMALL_FILE_BYTES, PARALLEL_FILE_BYTES)


def _chain(src: Future[Node | None], dst: Future[Node | None]) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


def _xattr_free(paths: list[bytes]) -> bytes | None:
    """Which of ``paths`` have no extended attributes, asked in one native call
    without the GIL (``dirscan.xattr_free``; one ``listxattr`` per entry from
    Python handed the GIL over each time); None when there is nothing to ask or
    no native stage, and then each entry's attributes are read."""
    free = dirscan.xattr_free
    return free(paths) if paths and free is not None else None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


def normalize_targets(paths: Sequence[str | bytes]) -> list[bytes]:
    """Absolute, de-duplicated targets; a target inside another target is dropped."""
    out: list[bytes] = []
    for p in sorted({os.path.abspath(os.fsencode(p)) for p in paths}):
        if any(p == q or p.startswith(q.rstrip(b"/") + b"/") for q in out):
            continue
        out.append(p)
    return out


class _Backup:
    def __init__(self, repo: Repository, opts: BackupOptions, reporter: Reporter,
                 should_stop: Callable[[], bool], cache: dircache.DirCache | None = None) -> None:
        self.repo = repo
        self.opts = opts
        self.reporter = reporter
        self.should_stop = should_stop
        self.summary = BackupSummary(started=time.time())
        self.chunker = repo.chunker()
        self._lock = threading.Lock()
        self._comparing = threading.Lock()
        scanners = max(1, opts.read_threads, opts.list_threads if cache is not None else 0)
        self._scanners = ThreadPoolExecutor(scanners, thread_name_prefix="resurgo-scan")
        # Of the scanners, this many at a time add what they listed and read it.
        self._work_slots = threading.BoundedSemaphore(max(1, opts.read_threads))
        self._scan_window = SCANS_IN_FLIGHT_PER_SCANNER * scanners
        # One large file at a time: one reader already outpaces the savers, a
        # second would only double the read buffers in memory.
        self._large = ThreadPoolExecutor(1, thread_name_prefix="resurgo-large")
        self._savers = ThreadPoolExecutor(opts.save_threads, thread_name_prefix="resurgo-save")
        self._events: queue.SimpleQueue[tuple[int, _DirJob, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._tls = threading.local()  # per-thread stream buffers (_save_stream)
        self._hardlinks: dict[tuple[int, int], Future[Node | None]] = {}
        self._fatal: BaseException | None = None
        # Set when the backup is abandoned: the workers stop at the next file
        # or chunk, so nothing is uploaded after the interrupt's indexing.
        self._closing = False
        self._stop_seen = False
        self._last_progress = 0.0
        # The directory cache of the parent (ops/dircache.py), if it holds; and
        # what this backup saw, path -> (tree ID, signature or None), to write
        # the next one (None: the repository keeps no local state).
        self.dircache = cache
        self.seen: dict[bytes, tuple[bytes, bytes | None]] | None = (
            {} if repo.keeps_local_state else None
        )

    # -- bookkeeping -------------------------------------------------------------

    def warn(self, path: bytes, message: str) -> None:
        w = {"path": show_path(path), "error": message}
        with self._lock:
            self.summary.warnings.append(w)
        self.reporter.event("warning", **w)

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < 0.2:
            return
        self._last_progress = now
        s = self.summary
        self.reporter.progress(
            files_done=s.files_total, bytes_done=s.bytes_read, bytes_total=s.bytes_total,
            dirs_done=s.dirs, bytes_added=self.repo.stats_added["bytes_stored"],
        )

    def _check_stop(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._stop_seen or self.should_stop():
            self._stop_seen = True
            raise Interrupted("backup interrupted; no snapshot was written")

    # -- file content -------------------------------------------------------------

    def _save_chunks(self, chunks: Iterator[memoryview], parallel: bool) -> tuple[list[bytes], int]:
        """Save chunks; returns (blob IDs in order, bytes read)."""
        if not parallel:
            ids = []
            total = 0
            for c in chunks:
                total += len(c)
                ids.append(self.repo.save_blob(BlobType.DATA, c)[0])
            return ids, total
        sem = threading.BoundedSemaphore(CHUNKS_IN_FLIGHT_PER_SAVER * self.opts.save_threads + 1)
        futures: list[Future[tuple[bytes, bool]]] = []

        def save(c: memoryview) -> tuple[bytes, bool]:
            try:
                return self.repo.save_blob(BlobType.DATA, c)
            finally:
                sem.release()

        total = 0
        try:
            for c in chunks:
                if self._closing:
                    raise Interrupted("backup interrupted; no snapshot was written")
                total += len(c)
                sem.acquire()
                futures.append(self._savers.submit(save, c))
        finally:
            # Wait for everything submitted even on a read error, so no save
            # outlives this file (and repository errors are never lost).
            results = [f.result() for f in futures]
        return [r[0] for r in results], total

    def _read_file(self, path: bytes, node: Node, st: os.stat_result,
                   opened: int | OSError | None = None) -> Node:
        """Read and save one file; ``opened`` is its descriptor (or the error opening it)
        when the caller opened it already. The descriptor is closed either way."""
        if opened is None:
            try:
                opened = open_for_backup(path)
            except OSError as e:
                opened = e
        if isinstance(opened, OSError):
            raise _SourceProblem(f"cannot open: {opened.strerror or opened}")
        fd = opened
        try:
            before = os.fstat(fd)
            if (not stat.S_ISREG(before.st_mode)
                    or (before.st_ino, before.st_dev) != (st.st_ino, st.st_dev)):
                raise _SourceProblem("file was replaced while being backed up")
            # Same file, possibly written to since the directory scan (a growing
            # log): record what we are about to read, then watch it while reading.
            node.size = before.st_size
            node.mtime_ns, node.ctime_ns = before.st_mtime_ns, before.st_ctime_ns
            size = before.st_size
            sparse = size > 0 and before.st_blocks * 512 < size
            extents = data_extents(fd, size) if sparse else [(0, size)]
            try:
                if not sparse and size <= _small_limit():
                    ids, nread = self._save_whole(fd, size)
                elif sparse:
                    ids, nread = self._save_chunks(self._extent_chunks(fd, extents),
                                                   parallel=size > _small_limit())
                else:
                    ids, nread = self._save_stream(fd, size)
            except OSError as e:
                raise _SourceProblem(f"read error: {e.strerror or e}")
            after = os.fstat(fd)
        finally:
            os.close(fd)
        node.content = ids
        node.holes = holes_from_extents(extents, size) if sparse else []
        expected = sum(length for _, length in extents) if sparse else size
        if nread != expected or file_changed(before, after):
            node.size = before.st_size if nread == expected else nread + sum(h[1] for h in node.holes)
            self._changed_while_read(path, node)
        with self._lock:
            self.summary.bytes_read += nread
        return node

    def _changed_while_read(self, path: bytes, node: Node) -> None:
        node.error = "changed while being read"
        self.warn(path, "file changed while it was being read; the stored copy may be inconsistent")

    def _read_native(self, path: bytes, node: Node, st: os.stat_result,
                     got: dirscan.ReadResult, window: bytes, saved: list[bytes] | None) -> Node:
        """``_read_file`` for a file ``dirscan.read_small`` read into ``window``
        (or could not); ``saved``: its blob IDs when ``_save_window`` saved it."""
        if len(got) == 2:
            status, err = got
            if status == dirscan.READ_OPEN_ERROR:
                raise _SourceProblem(f"cannot open: {os.strerror(err)}")
            if status == dirscan.READ_ERROR:
                raise _SourceProblem(f"read error: {os.strerror(err)}")
            if status == dirscan.READ_REPLACED:
                raise _SourceProblem("file was replaced while being backed up")
            return self._read_file(path, node, st)  # READ_FALLBACK: as without it
        _, offset, size, node.mtime_ns, node.ctime_ns, changed = got
        node.size = size
        # Saved with its window (_save_window), or here from a copy, freed
        # before the next file's: what is kept of it (a dictionary sample)
        # must not keep the whole window alive.
        node.content = saved if saved is not None else self._save_data(
            window[offset : offset + size], size)
        node.holes = []
        if changed:
            self._changed_while_read(path, node)
        with self._lock:
            self.summary.bytes_read += size
        return node

    def _save_stream(self, fd: int, file_size: int) -> tuple[list[bytes], int]:
        """Read a large file through two reused buffers, its chunks saved by the saver pool.

        A chunk that ends before the end of the data in the buffer is final:
        FastCDC decides a boundary from the bytes before it only (the masks
        depend on the distance from the chunk's start, never on what
        follows), and a chunk that reaches ``max_size`` is cut there whatever
        follows. Only the last chunk of a buffer may still grow, and only if
        it is shorter than ``max_size``; it is copied to the front of the
        other buffer, which is then filled up with the next bytes. So the
        chunks equal those of cutting the whole file at once, and a buffer of
        ``max_size`` bytes always has room for more. A buffer is refilled only
        once every chunk it held has been saved: the savers get read-only
        views, never copies, and the memory stays at two buffers of fixed
        size whatever the file's size. Each thread has its own buffers: the
        large-file thread, and a scanner whose small file grew past the limit
        before it was opened.
        """
        bufs: list[mmap.mmap | None] | None = getattr(self._tls, "stream_bufs", None)
        if bufs is None:
            bufs = self._tls.stream_bufs = [None, None]
        in_buf: list[list[Future[tuple[bytes, bool]]]] = [[], []]
        futures: list[Future[tuple[bytes, bool]]] = []
        ids: list[bytes | Future[tuple[bytes, bool]]] = []  # in file order
        save = self.repo.save_blob
        spans_of = self.chunker.spans
        max_size = self.chunker.max_size
        size = max(STREAM_BUFFER, max_size)
        # Direct reads (snapshot/direct.py) start the fresh bytes on an aligned
        # offset after the carry, and read at least one whole block.
        alloc = size + 2 * ALIGN
        direct = start_direct(fd, file_size)
        total = 0
        carry: memoryview | None = None
        i = 0
        eof = False
        try:
            while not eof:
                for f in in_buf[i]:
                    f.result()  # the buffer's chunks are saved: it may be refilled
                in_buf[i] = []
                if self._closing:
                    raise Interrupted("backup interrupted; no snapshot was written")
                kept = len(carry) if carry is not None else 0
                buf = bufs[i]
                if buf is None or len(buf) != alloc:
                    buf = bufs[i] = aligned_buffer(alloc)
                mv = memoryview(buf)
                # The fresh bytes start on an aligned offset, right after the carry.
                n = -(-kept // ALIGN) * ALIGN if direct else kept
                begin = n - kept
                if carry is not None:
                    mv[begin:n] = carry
                    carry = None
                fill = begin + size
                if direct:
                    fill = n + max(1, (fill - n) // ALIGN) * ALIGN  # whole blocks
                while n < fill:
                    got, direct = read_into(fd, mv[n:fill], direct)
                    if not got:
                        eof = True
                        break
                    n += got
                data = mv[begin:n].toreadonly()
                spans = spans_of(data)
                if spans and not eof and spans[-1][1] < max_size and sum(spans[-1]) == n - begin:
                    carry = data[spans[-1][0]:]  # may grow with the next bytes
                    spans.pop()
                # The buffer's cuts and blob IDs come from one native call each
                # (the GIL released once, not once per chunk); only the chunks
                # the repository lacks go to the savers.
                for (offset, length), bid in zip(spans, self.repo.blob_ids(data, spans), strict=True):
                    total += length
                    if self.repo.has_blob(BlobType.DATA, bid):
                        ids.append(bid)
                        continue
                    f = self._savers.submit(save, BlobType.DATA, data[offset : offset + length],
                                            blob_id=bid)
                    in_buf[i].append(f)
                    futures.append(f)
                    ids.append(f)
                del mv, data
                i ^= 1
        finally:
            # Wait for everything submitted even on a read error, so no save
            # outlives this file or its buffers (and repository errors are
            # never lost).
            wait_for(futures)
        return [b if isinstance(b, bytes) else b.result()[0] for b in ids], total

    def _save_whole(self, fd: int, size: int) -> tuple[list[bytes], int]:
        """Read a small file in one read and save its chunks; (blob IDs, bytes read).

        One read of ``size + 1`` bytes: getting exactly ``size`` back means the
        file ended where its fstat said (growth after the read shows in the
        fstat that follows). Anything else (it shrank or grew since) is read
        again from the start as a stream, as large files are.
        """
        data = os.read(fd, size + 1)
        if len(data) != size:
            del data
            os.lseek(fd, 0, os.SEEK_SET)
            return self._save_chunks(self.chunker.fd_chunks(fd), parallel=False)
        return self._save_data(data, size), size

    def _save_data(self, data: bytes, size: int) -> list[bytes]:
        """Save a small file's ``size`` bytes, read whole; its blob IDs."""
        if not data:
            return []
        save = self.repo.save_blob
        if size <= self.chunker.min_size:
            return [save(BlobType.DATA, data)[0]]
        return [save(BlobType.DATA, c)[0] for c in self.chunker.cut(data)]

    def _extent_chunks(self, fd: int, extents: list[tuple[int, int]]) -> Iterator[memoryview]:
        """Chunks of the data extents only, as one stream (holes are not data)."""
        def reader() -> Iterator[bytes]:
            for off, length in extents:
                pos = off
                end = off + length
                while pos < end:
                    b = os.pread(fd, min(16 << 20, end - pos), pos)
                    if not b:
                        return
                    pos += len(b)
                    yield b

        buf = b"".join(reader()) if sum(e[1] for e in extents) <= 64 << 20 else None
        if buf is not None:
            yield from self.chunker.cut(buf)
            return
        # Large sparse file: cut block by block, carrying the undecided tail.
        carry = b""
        blocks = reader()
        eof = False
        while not eof:
            block = next(blocks, None)
            eof = block is None
            data = carry + (block or b"")
            if not data:
                break
            mv = memoryview(data)
            carry = b""
            for offset, length in self.chunker.spans(mv):
                if not eof and offset + self.chunker.max_size > len(data):
                    carry = bytes(mv[offset:])
                    break
                yield mv[offset : offset + length]

    def _file_job(self, path: bytes, node: Node, st: os.stat_result, status: str) -> Node | None:
        try:
            if self._stop_requested():
                return None
            try:
                done = self._read_file(path, node, st)
            except _SourceProblem as e:
                self.warn(path, str(e))
                return None
            with self._lock:
                if status == "new":
                    self.summary.files_new += 1
                else:
                    self.summary.files_changed += 1
            self._progress()
            return done
        except BaseException as e:  # repository errors: abort the whole backup
            if self._fatal is None:
                self._fatal = e
            raise

    # -- walking ------------------------------------------------------------------

    def _unchanged(self, node: Node, old: Node | None) -> bool:
        if self.opts.force or old is None or old.type is not NodeType.FILE or old.error:
            return False
        if (old.size, old.mtime_ns, old.ctime_ns, old.inode, old.device_id) != (
            node.size, node.mtime_ns, node.ctime_ns, node.inode, node.device_id
        ):
            return False
        return self._blobs_present(old)

    def _blobs_present(self, old: Node) -> bool:
        # A blob that left the index (damage, or an old parent) forces a re-read.
        if self.dircache is not None:
            # The directory cache holds only while every index object of the
            # parent's backup is still in the index (ops/dircache.py), so every
            # blob of the parent's nodes is too: that backup checked each one.
            return True
        has_blob = self.repo.has_blob
        return all(has_blob(BlobType.DATA, b) for b in old.content)

    def _same_as_before(self, st: os.stat_result, old: Node) -> bool:
        """Whether a regular file is unchanged (as ``_unchanged``) and its node would
        equal ``old`` field for field.

        The extended attributes are not listed again: setting or removing one
        changes the ctime, which must equal the parent's here (as must the inode
        and device), so the parent's xattrs still hold. Skipping the listxattr
        call is a fifth of the per-file cost of a no-change backup.
        """
        return (
            st.st_mtime_ns == old.mtime_ns and st.st_ctime_ns == old.ctime_ns
            and st.st_size == old.size and st.st_ino == old.inode and st.st_dev == old.device_id
            and st.st_atime_ns == old.atime_ns and stat.S_IMODE(st.st_mode) == old.mode
            and st.st_uid == old.uid and st.st_gid == old.gid and st.st_nlink == old.nlink
            and old.rdev == 0 and old.linktarget is None and old.subtree is None
            and not old.error and not self.opts.force
            and user_name(st.st_uid) == old.user and group_name(st.st_gid) == old.group
            and self._blobs_present(old)
        )

    def _stop_requested(self) -> bool:
        if self._closing or self._fatal is not None or self._stop_seen:
            return True
        if self.should_stop():
            # Remembered: a worker that left files out on a stop request must
            # never see its directory saved, whatever should_stop says later.
            self._stop_seen = True
            return True
        return False

    def _kept_as_before(self, job: _DirJob, st: os.stat_result, old: Node, tally: _Tally) -> bool:
        """Add a regular file whose node in the parent tree (``old``) describes it
        exactly (content and metadata) as that node; False for anything else."""
        if not (old.type is NodeType.FILE and stat.S_ISREG(st.st_mode) and self._same_as_before(st, old)):
            return False
        # Kept as it is, so the directory's comparison with the parent tree is
        # quick and no node is built.
        tally.unchanged += 1
        tally.bytes_total += st.st_size
        job.children.append(old)
        return True

    def _add_entry(self, job: _DirJob, path: bytes, name: bytes, st: os.stat_result,
                   old: Node | None, tally: _Tally, *, xattrs: bool = True) -> None:
        """Add one non-directory entry of ``job``: a finished node, or a future for a
        large file. ``xattrs=False``: the entry is known to have none."""
        if old is not None and self._kept_as_before(job, st, old, tally):
            return
        node = self._node_of(job, path, name, st, xattrs=xattrs)
        if node is None:
            return
        if node.type is not NodeType.FILE:
            tally.others += 1
            job.children.append(node)
            return
        tally.bytes_total += node.size
        if self._unchanged(node, old):
            assert old is not None
            tally.unchanged += 1
            node.content = old.content
            node.holes = old.holes
            # Same metadata as in the parent too: keep the parent's node, so the
            # directory's comparison with the parent tree is quick.
            job.children.append(old if node == old else node)
            return
        new = old is None
        if st.st_nlink > 1:
            link_key = (st.st_dev, st.st_ino)
            with self._lock:
                first = self._hardlinks.get(link_key)
                if first is None:
                    mine: Future[Node | None] = Future()
                    self._hardlinks[link_key] = mine
            if first is not None:
                # Another name of a file already read or being read: share its content.
                job.children.append(self._link_copy(first, node))
                tally.count(new)
                return
            self._queue_read(job, path, node, st, new, tally, mine)
            return
        self._queue_read(job, path, node, st, new, tally, None)

    def _queue_read(self, job: _DirJob, path: bytes, node: Node, st: os.stat_result,
                           new: bool, tally: _Tally, link: Future[Node | None] | None) -> None:
        """Queue a small file to be read by this scan once its listing is done; a large
        one for the large-file lane. ``link`` gets the result for the file's other names."""
        if st.st_size > _small_limit():
            fut = self._large.submit(self._file_job, path, node, st, "new" if new else "changed")
            job.children.append(fut)
            if link is not None:
                fut.add_done_callback(lambda f: _chain(f, link))
            return
        tally.reads.append((path, node, st, new, link))

    def _open_ahead(self, path: bytes, size: int) -> int | OSError:
        """Open a file to read soon and ask the kernel to start reading it (async)."""
        try:
            fd = open_for_backup(path)
        except OSError as e:
            return e
        if size:
            try:
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # only a hint
        return fd

    def _read_listed(self, job: _DirJob, tally: _Tally) -> None:
        """Read and save the small files the scan queued, a window of them opened ahead.

        Each file of the window is opened and its data asked for with
        ``POSIX_FADV_WILLNEED``, which starts the read without waiting for
        it: the disk gets many requests at once from one thread (cold reads
        of 20,000 small files: 2.4 s with one thread, 1.3 s with the hints).
        """
        if dirscan.read_small is not None:
            self._read_listed_native(job, tally)
            return
        reads = tally.reads
        opened: dict[int, int | OSError] = {}
        ahead = 0
        try:
            for k, (path, node, st, new, link) in enumerate(reads):
                if self._stop_requested():
                    return
                while ahead < len(reads) and ahead <= k + READ_AHEAD_FILES:
                    opened[ahead] = self._open_ahead(reads[ahead][0], reads[ahead][2].st_size)
                    ahead += 1
                fd = opened.pop(k)
                self._add_read(job, tally, path, new, link,
                               partial(self._read_file, path, node, st, fd))
        finally:
            for fd in opened.values():
                if isinstance(fd, int):
                    os.close(fd)

    def _read_listed_native(self, job: _DirJob, tally: _Tally) -> None:
        """``_read_listed`` through ``dirscan.read_small``: the files of a window
        (``READ_AHEAD_FILES``, at most ``NATIVE_BATCH_BYTES`` of them) are opened,
        asked for, read and stat'ed in one call without the GIL, then saved."""
        assert dirscan.read_small is not None
        read_small = dirscan.read_small
        reads = tally.reads
        limit = _small_limit()
        k = 0
        while k < len(reads):
            if self._stop_requested():
                return
            end, size = k, 0
            while end < len(reads) and end - k < READ_AHEAD_FILES and (
                    end == k or size + reads[end][2].st_size <= NATIVE_BATCH_BYTES):
                size += reads[end][2].st_size
                end += 1
            batch = reads[k:end]
            window, got = read_small(
                [(path, st.st_ino, st.st_dev, st.st_size) for path, _, st, _, _ in batch], limit)
            saved = self._save_window(window, got, [link for *_, link in batch])
            for i, ((path, node, st, new, link), result) in enumerate(zip(batch, got, strict=True)):
                if self._stop_requested():
                    return
                self._add_read(job, tally, path, new, link, partial(
                    self._read_native, path, node, st, result, window, saved.get(i)))
            k = end

    def _save_window(self, window: bytes, got: list[dirscan.ReadResult],
                     links: list[Future[Node | None] | None]) -> dict[int, list[bytes]]:
        """Save the chunks of every file of a window read whole together
        (``Repository.save_data_window``): {index in the window: its blob IDs}.
        On an error, the files' other names (``links``) get it too."""
        spans: list[tuple[int, int]] = []
        files: list[tuple[int, int, int]] = []  # (index in the window, first span, end)
        view = memoryview(window)
        for i, result in enumerate(got):
            if len(result) != 6 or not result[2]:
                continue
            offset, size = result[1], result[2]
            first = len(spans)
            if size <= self.chunker.min_size:
                spans.append((offset, size))
            else:
                spans += [(offset + o, n) for o, n in self.chunker.spans(view[offset : offset + size])]
            files.append((i, first, len(spans)))
        del view
        if not spans:
            return {}
        try:
            ids = self.repo.save_data_window(window, spans)
        except BaseException as e:
            for link in links:
                if link is not None:
                    link.set_exception(e)
            raise
        return {i: ids[first:end] for i, first, end in files}

    def _add_read(self, job: _DirJob, tally: _Tally, path: bytes, new: bool,
                  link: Future[Node | None] | None, read: Callable[[], Node]) -> None:
        """Add the node ``read`` returns for a queued file, or its warning; ``link``
        (the file's other names) gets the outcome either way."""
        try:
            done: Node | None = read()
        except _SourceProblem as e:
            self.warn(path, str(e))
            job.unclean = True
            done = None
        except BaseException as e:
            if link is not None:
                link.set_exception(e)
            raise
        if link is not None:
            link.set_result(done)
        if done is not None:
            tally.count(new)
            job.children.append(done)

    def _link_copy(self, first: Future[Node | None], node: Node) -> Future[Node | None]:
        fut: Future[Node | None] = Future()

        def copy(f: Future[Node | None]) -> None:
            src = f.result() if not f.exception() else None
            if src is None:
                fut.set_result(None)
                return
            node.content, node.holes, node.error = list(src.content), list(src.holes), src.error
            fut.set_result(node)

        first.add_done_callback(copy)
        return fut

    def _scan(self, job: _DirJob) -> None:
        """List ``job``'s directory and add its entries (runs in a scanner thread).

        Small files are read and saved right here; large ones go to the
        large-file lane as futures; subdirectories become child jobs that the
        walk schedules next. Everything the scan counts is added to the
        summary once, at the end.
        """
        tally = _Tally()
        try:
            listed = self._listing(job)
            if listed is not None:
                # Listings overlap freely (no GIL, cold metadata reads); the
                # Python work and the file reads after them do not gain from
                # more than ``read_threads`` at once (initial backup, cold:
                # 4.1-4.4 s with 2 threads doing everything, 4.9-5.0 s with 4).
                # Without the directory cache there are only that many scanners.
                with self._work_slots:
                    self._add_scanned(job, listed, tally)
                    self._read_listed(job, tally)
        finally:
            with self._lock:
                tally.add_to(self.summary)

    def _scan_entries(self, job: _DirJob, tally: _Tally) -> None:
        listed = self._listing(job)
        if listed is not None:
            self._add_scanned(job, listed, tally)

    def _listing(self, job: _DirJob) -> tuple[_Listed, list[bytes] | None] | None:
        """The entries of ``job``'s directory that are backed up, as (name, path,
        lstat) in name order, and their signature rows when the native listing
        made them; None if there are none to add (the directory is left out,
        or could not be listed). The directory is opened without touching its
        atime: by the native listing itself, or here for ``_list``."""
        native = dirscan.scan
        try:
            if native is not None and (found := native(job.path)) is not None:
                return self._kept(job, found)
            fd = open_dir_for_backup(job.path)
        except OSError as e:
            self.warn(job.path, f"cannot list directory: {e.strerror or e}")
            job.node.error = "could not list directory"
            return None
        try:
            return self._list(job, fd)
        finally:
            os.close(fd)

    def _add_scanned(self, job: _DirJob, got: tuple[_Listed, list[bytes] | None],
                     tally: _Tally) -> None:
        """Add the listed entries of ``job``: as the directory cache has them, or
        compared with the parent tree, or as new."""
        listed, rows = got
        if self.seen is not None:
            if rows is None:
                rows = [dircache.entry_row(name, st) for name, _, st in listed]
            job.sig = dircache.signature(rows, {(st.st_uid, st.st_gid) for _, _, st in listed})
        cache = self.dircache
        if (
            cache is not None and job.old_subtree is not None and job.sig is not None
            and cache.signature(job.path, job.old_subtree) == job.sig
        ):
            # The cached tree is in the index: the cache holds only while
            # every index object of the backup that saved it does.
            self._add_unchanged(job, listed, tally)
        elif job.old_subtree is None:
            self._add_listed(job, listed, {}, tally)
        else:
            # Comparing with the parent is Python work that holds the GIL
            # (decoding the parent tree, comparing stats): two scanners doing
            # it at once only hand the GIL to each other at every lstat. One
            # at a time (no-change backup of the benchmark dataset, cold, 5
            # alternating runs: 1.71 -> 1.43 s CPU, 1.60 -> 1.50 s); listing
            # and the reading of changed files still overlap.
            with self._comparing:
                try:
                    old_nodes = {n.name: n for n in load_tree(self.repo, job.old_subtree)}
                    job.old_nodes = old_nodes
                except Exception:
                    job.old_subtree = None  # an unreadable parent tree only costs re-reading
                    old_nodes = {}
                self._add_listed(job, listed, old_nodes, tally)

    def _list(self, job: _DirJob, fd: int) -> tuple[_Listed, None] | None:
        """``_listing`` in Python, of the directory open as ``fd`` (no rows)."""
        try:
            # Names come back as str from a descriptor (os.fsdecode): encoded
            # again, they are the bytes on disk.
            with os.scandir(fd) as it:
                entries = sorted((os.fsencode(e.name), e) for e in it)
        except OSError as e:
            self.warn(job.path, f"cannot list directory: {e.strerror or e}")
            job.node.error = "could not list directory"
            return None
        excl = self.opts.excluder
        if excl is not None and excl.dir_excluded_by_content(job.path, {n for n, _ in entries}):
            # A marked directory (CACHEDIR.TAG, --exclude-if-present) is left
            # out entirely, marker included, as restic does.
            job.excluded = True
            return None
        listed: _Listed = []
        base = job.path.rstrip(b"/") + b"/"
        for name, entry in entries:
            if self._stop_requested():
                return None
            path = base + name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                self.warn(path, f"cannot stat: {err.strerror or err}")
                job.unclean = True
                continue
            if excl is not None and excl.excluded(path, stat.S_ISDIR(st.st_mode)):
                continue
            listed.append((name, path, st))
        return listed, None

    def _kept(self, job: _DirJob,
              found: list[dirscan.ScanEntry]) -> tuple[_Listed, list[bytes]] | None:
        """The entries of a native listing that are backed up, and their rows."""
        if self._stop_requested():
            return None
        base = job.path.rstrip(b"/") + b"/"
        excl = self.opts.excluder
        if excl is None:
            return [(name, base + name, st) for name, st, _ in found], [r for _, _, r in found]
        if excl.dir_excluded_by_content(job.path, {name for name, _, _ in found}):
            job.excluded = True
            return None
        listed: _Listed = []
        rows: list[bytes] = []
        for name, st, row in found:
            path = base + name
            if not excl.excluded(path, stat.S_ISDIR(st.st_mode)):
                listed.append((name, path, st))
                rows.append(row)
        return listed, rows

    def _add_listed(self, job: _DirJob,
                    listed: _Listed,
                    old_nodes: dict[bytes, Node], tally: _Tally) -> None:
        """Add the listed entries of ``job``, each compared with its node in the
        parent tree (``old_nodes``), if any.

        A file the parent's node describes exactly keeps that node; every other
        entry gets a new one: which of them have no extended attributes is
        asked natively for all at once (``dirscan.xattr_free``), and only the
        others are read one by one (``fsmeta.read_xattrs``).
        """
        todo: list[tuple[bytes, bytes, os.stat_result, Node | None]] = []
        for name, path, st in listed:
            old = old_nodes.get(name)
            if old is None or not self._kept_as_before(job, st, old, tally):
                todo.append((name, path, st, old))
        # The entries that get a node (all of a new directory's) are asked in
        # one call which have no extended attributes.
        bare = _xattr_free([path for _, path, _, _ in todo])
        for i, (name, path, st, old) in enumerate(todo):
            xattrs = bare is None or not bare[i]
            if stat.S_ISDIR(st.st_mode):
                old_sub = old.subtree if old is not None and old.type is NodeType.DIR else None
                self._add_dir(job, name, path, st, old_sub, tally, xattrs=xattrs)
            else:
                self._add_entry(job, path, name, st, old, tally, xattrs=xattrs)

    def _add_unchanged(self, job: _DirJob,
                       listed: _Listed,
                       tally: _Tally) -> None:
        """Add the entries of a directory whose signature is the cached one: its
        files are counted as unchanged, with no node built; its subdirectories
        are walked, with their cached trees to compare with."""
        assert self.dircache is not None
        job.reused = True
        cached_tree = self.dircache.tree
        unchanged = size = others = 0
        subdirs: _Listed = []
        for entry in listed:
            mode = entry[2].st_mode
            if stat.S_ISDIR(mode):
                subdirs.append(entry)
            elif stat.S_ISREG(mode):
                unchanged += 1
                size += entry[2].st_size
            else:
                others += 1
        bare = _xattr_free([path for _, path, _ in subdirs])
        for i, (name, path, st) in enumerate(subdirs):
            self._add_dir(job, name, path, st, cached_tree(path), tally, xattrs=bare is None or not bare[i])
        job.counted = (unchanged, size, others)
        tally.unchanged += unchanged
        tally.bytes_total += size
        tally.others += others

    def _node_of(self, job: _DirJob, path: bytes, name: bytes, st: os.stat_result,
                 *, xattrs: bool = True) -> Node | None:
        """The node of an entry of ``job`` (its extended attributes read unless
        ``xattrs`` is false: known to be none); None, with a warning, if its
        metadata cannot be read (the entry is left out)."""
        try:
            return node_from_path(path, st, name=name, xattrs=xattrs)
        except (OSError, ValueError) as e:
            self.warn(path, f"cannot read metadata: {e}")
            job.unclean = True
            return None

    def _add_dir(self, job: _DirJob, name: bytes, path: bytes, st: os.stat_result,
                 old_subtree: bytes | None, tally: _Tally, *, xattrs: bool = True) -> None:
        """Add the subdirectory ``name`` of ``job`` as a job of its own."""
        node = self._node_of(job, path, name, st, xattrs=xattrs)
        if node is None:
            return
        tally.dirs += 1
        sub = _DirJob(path, node, job, old_subtree)
        job.children.append(sub)
        if self.opts.one_file_system and st.st_dev != job.node.device_id:
            # A mount point: recorded as an empty directory, not entered.
            node.subtree = self.repo.save_blob(BlobType.TREE, encode_tree([]))[0]
            sub.result = node
            self._record(path, node.subtree, None)

    def _scan_job(self, job: _DirJob) -> None:
        try:
            if self._stop_requested():
                self._events.put((_SCANNED, job, None))
                return
            self._scan(job)
            self._events.put((_SCANNED, job, None))
        except BaseException as e:  # repository errors: abort the whole backup
            if self._fatal is None:
                self._fatal = e
            self._events.put((_SCANNED, job, e))

    def walk(self, root: _DirJob) -> None:
        """Back up the directory ``root``; returns once its tree is saved.

        Directories are scanned by the scanner threads, a few at a time in
        depth-first order (so the directories waiting for their children stay
        few, however big the tree), and finished in the calling thread once all
        their children are: the tree of a directory is saved after its
        subdirectories' trees.
        """
        stack = [root]
        inflight = 0
        window = self._scan_window
        events = self._events
        while root.result is None:
            while stack and inflight < window:
                self._check_stop()
                inflight += 1
                self._scanners.submit(self._scan_job, stack.pop())
            try:
                kind, job, err = events.get(timeout=0.2)
            except queue.Empty:
                self._check_stop()
                self._progress()
                continue
            if err is not None:
                raise err
            self._check_stop()
            if kind == _SCANNED:
                inflight -= 1
                self._scanned(job, stack)
            else:
                job.pending -= 1
                if job.pending == 0:
                    self._finish_up(job)
            self._progress()

    def _scanned(self, job: _DirJob, stack: list[_DirJob]) -> None:
        subdirs = [c for c in job.children if isinstance(c, _DirJob) and c.result is None]
        futures = [c for c in job.children if isinstance(c, Future)]
        job.pending = len(subdirs) + len(futures)
        stack.extend(reversed(subdirs))
        events = self._events

        def done(_f: Future[Node | None]) -> None:
            events.put((_CHILD, job, None))

        for f in futures:
            f.add_done_callback(done)
        if job.pending == 0:
            self._finish_up(job)

    def _finish_up(self, job: _DirJob | None) -> None:
        """Finish ``job``, then every ancestor it was the last unfinished child of."""
        while job is not None:
            self._finish_dir(job)
            parent = job.parent
            if parent is None:
                return
            parent.pending -= 1
            if parent.pending:
                return
            job = parent

    def _finish_dir(self, job: _DirJob) -> None:
        # A stop request makes readers return None: never save a tree then,
        # or the snapshot would silently miss files.
        self._check_stop()
        if job.excluded:
            job.result = job.node
            return
        nodes: list[Node] = []
        complete = True  # no file left out for a problem reading it
        for c in job.children:
            if isinstance(c, Future):
                if c.exception() is not None:
                    raise c.exception()  # type: ignore[misc]
                n = c.result()
                if n is not None:
                    nodes.append(n)
                else:
                    complete = False
            elif isinstance(c, _DirJob):
                assert c.result is not None
                if not c.excluded:
                    nodes.append(c.result)
            else:
                nodes.append(c)
        if job.reused:
            if complete and not job.unclean and all(
                self._as_cached(c) for c in job.children if isinstance(c, _DirJob)
            ):
                job.node.subtree = job.old_subtree
            else:
                # Something below changed: the files' nodes are the parent's.
                nodes += self._parent_files(job)
        job.children = []
        if job.node.subtree is None:
            old = job.old_nodes
            if (
                old is not None and job.old_subtree is not None and len(old) == len(nodes)
                and all(old.get(n.name) is n or old.get(n.name) == n for n in nodes)
                and self.repo.has_blob(BlobType.TREE, job.old_subtree)
            ):
                job.node.subtree = job.old_subtree
            else:
                job.node.subtree = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))[0]
        clean = (complete and not job.unclean and job.node.error is None
                 and all(n.error is None for n in nodes))
        self._record(job.path, job.node.subtree, job.sig if clean else None)
        job.old_nodes = None
        job.result = job.node

    def _record(self, path: bytes, tree: bytes, sig: bytes | None) -> None:
        if self.seen is not None:
            self.seen[path] = (tree, sig)

    def _as_cached(self, sub: _DirJob) -> bool:
        """Whether the subdirectory ``sub`` ended as the directory cache has it."""
        assert self.dircache is not None and sub.result is not None
        if sub.excluded:
            return self.dircache.tree(sub.path) is None
        return sub.result.error is None and sub.result.subtree == self.dircache.tree(sub.path)

    def _parent_files(self, job: _DirJob) -> list[Node]:
        """The nodes of the files (everything but subdirectories) of a directory
        whose signature matched the cache: the parent tree's, or, if that
        cannot be read after all, the files listed and read again."""
        assert job.old_subtree is not None
        try:
            return [n for n in load_tree(self.repo, job.old_subtree)
                    if n.type is not NodeType.DIR]
        except Exception:
            pass
        redo = _DirJob(job.path, job.node, None, None)
        tally = _Tally()
        self._scan_entries(redo, tally)
        self._read_listed(redo, tally)
        for c in redo.children:
            if isinstance(c, Future):
                c.exception()  # wait for the large files
        # Readers return None on a stop request: never save the tree then.
        self._check_stop()
        nodes: list[Node] = []
        for c in redo.children:
            n = c.result() if isinstance(c, Future) else c
            if isinstance(n, Node):
                nodes.append(n)
            elif n is None:
                job.unclean = True
        # Counted once already, as unchanged, when the directory was scanned.
        unchanged, size, others = job.counted
        tally.unchanged -= unchanged
        tally.bytes_total -= size
        tally.others -= others
        tally.dirs = 0
        job.unclean |= redo.unclean
        with self._lock:
            tally.add_to(self.summary)
        return nodes

    # -- the virtual root ------------------------------------------------------------

    def build_root(self, targets: list[bytes], parent_root: bytes | None) -> bytes:
        """Back up ``targets`` and return the root tree ID."""
        # Nested dict of path components; None marks a target (a leaf).
        tree: dict[bytes, Any] = {}
        for t in targets:
            parts = [p for p in t.split(b"/") if p]
            d = tree
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            if parts:
                d[parts[-1]] = None
        if targets == [b"/"]:
            root = _DirJob(b"/", node_from_path(b"/", name=b"/"), None, parent_root)
            self.walk(root)
            assert root.node.subtree is not None
            return root.node.subtree
        return self._virtual(b"/", tree, parent_root)

    def _virtual(self, path: bytes, tree: dict[bytes, Any], parent_tree: bytes | None) -> bytes:
        old_nodes: dict[bytes, Node] = {}
        if parent_tree is not None:
            try:
                old_nodes = {n.name: n for n in load_tree(self.repo, parent_tree)}
            except Exception:
                old_nodes = {}
        nodes: list[Node] = []
        for name in sorted(tree):
            sub = tree[name]
            full = _join(path, name)
            old = old_nodes.get(name)
            try:
                st = os.lstat(full)
            except OSError as e:
                self.warn(full, f"cannot back up: {e.strerror or e}")
                continue
            old_subtree = old.subtree if old is not None and old.type is NodeType.DIR else None
            if sub is None and stat.S_ISDIR(st.st_mode):
                job = _DirJob(full, node_from_path(full, st), None, old_subtree)
                with self._lock:
                    self.summary.dirs += 1
                self.walk(job)
                nodes.append(job.node)
            elif sub is None:
                holder = _DirJob(path, Node(name=b"", type=NodeType.DIR), None, None)
                tally = _Tally()
                self._add_entry(holder, full, name, st, old, tally)
                self._read_listed(holder, tally)
                with self._lock:
                    tally.add_to(self.summary)
                for c in holder.children:
                    n = c.result() if isinstance(c, Future) else c
                    if isinstance(n, Node):
                        nodes.append(n)
                self._check_stop()
            else:
                if not stat.S_ISDIR(st.st_mode):
                    self.warn(full, "is not a directory")
                    continue
                node = node_from_path(full, st)
                node.subtree = self._virtual(full, sub, old_subtree)
                nodes.append(node)
        return self.repo.save_blob(BlobType.TREE, encode_tree(nodes))[0]

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker threads; ``wait=False`` abandons the work not yet done.

        Either way the threads have stopped when this returns (each finishes at
        most the file or chunk it is on), so that an interrupted backup can
        index what was uploaded knowing that no upload follows.
        """
        if not wait:
            self._closing = True
        for pool in (self._scanners, self._large, self._savers):
            pool.shutdown(wait=True, cancel_futures=not wait)


def _find_parent(repo: Repository, opts: BackupOptions, host: str, paths: list[str]) -> Snapshot | None:
    if opts.force:
        return None
    if opts.parent:
        return find_snapshot(repo, opts.parent)
    same = [s for s in list_snapshots(repo) if s.hostname == host and sorted(s.paths) == sorted(paths)]
    return same[-1] if same else None


def backup_paths(
    repo: Repository,
    paths: Sequence[str | bytes],
    opts: BackupOptions | None = None,
    *,
    reporter: Reporter = NULL,
    should_stop: Callable[[], bool] = lambda: False,
) -> BackupSummary:
    """Back up ``paths`` and save a snapshot. Warnings are in the summary."""
    with collector_paused():
        return _backup_paths(repo, paths, opts, reporter=reporter, should_stop=should_stop)


def _backup_paths(
    repo: Repository,
    paths: Sequence[str | bytes],
    opts: BackupOptions | None,
    *,
    reporter: Reporter,
    should_stop: Callable[[], bool],
) -> BackupSummary:
    opts = opts or BackupOptions()
    targets = normalize_targets(paths)
    if not targets:
        raise SourceError("nothing to back up: no paths given")
    existing = [t for t in targets if os.path.lexists(t)]
    if not existing:
        raise SourceError("nothing to back up: none of the given paths exists: "
                          + ", ".join(show_path(t) for t in targets))
    host = opts.hostname or socket.gethostname()
    path_strs = [os.fsdecode(t) for t in targets]
    parent = _find_parent(repo, opts, host, path_strs)
    cache_name = dircache.cache_name(host, path_strs)
    cache_options = dircache.options_key(
        opts.excluder.describe() if opts.excluder is not None else [], opts.one_file_system
    )
    cache = None
    if parent is not None and parent.id is not None and repo.keeps_local_state:
        cache = dircache.load(repo, cache_name, parent.id, cache_options)
    b = _Backup(repo, opts, reporter, should_stop, cache)
    before = dict(repo.stats_added)
    ok = False
    try:
        reporter.event("start", paths=path_strs, parent=parent.id if parent else None)
        root = b.build_root(targets, parent.tree if parent else None)
        b.close()
        if b._fatal is not None:
            raise b._fatal
        repo.flush()
        ok = True
    except BaseException as exc:
        if _is_interrupt(exc):
            b.close(wait=False)
            keep_uploaded(repo, exc)
        raise
    finally:
        if not ok:
            b.close(wait=False)
    s = b.summary
    s.blobs_added = repo.stats_added["blobs"] - before["blobs"]
    s.bytes_added = repo.stats_added["bytes_stored"] - before["bytes_stored"]
    s.bytes_added_raw = repo.stats_added["bytes_raw"] - before["bytes_raw"]
    s.parent = parent.id if parent else None
    s.duration = time.time() - s.started
    snap = Snapshot(
        time_ns=int(s.started * 1e9),
        tree=root,
        paths=path_strs,
        hostname=host,
        username=_username(),
        uid=os.getuid(),
        gid=os.getgid(),
        tags=sorted(set(opts.tags)),
        parent=s.parent,
        summary=s.as_dict(),
        program_version=__version__,
        excludes=list(opts.excludes_text),
    )
    b._check_stop()
    s.snapshot_id = save_snapshot(repo, snap)
    if b.seen is not None:
        dircache.save(repo, cache_name, s.snapshot_id, cache_options, b.seen)
    reporter.event("summary", **s.as_dict())
    return s


def _is_interrupt(exc: BaseException) -> bool:
    # Ctrl-C, SIGTERM (the CLI raises a BaseException for it) or should_stop;
    # not storage errors: indexing through a failing backend would only fail
    # again, after another round of retries.
    return isinstance(exc, Interrupted) or not isinstance(exc, Exception)


def keep_uploaded(repo: Repository, exc: BaseException) -> None:
    """After an interrupt: index the packs already uploaded, so a re-run does not upload them again.

    No snapshot is written. A failure here is noted on ``exc`` (the interrupt
    stays the error the user sees).
    """
    try:
        repo.index_uploaded()
    except Exception as err:
        exc.add_note(f"the packs uploaded before the interrupt could not be indexed: {err}")


class _StreamWatcher(threading.Thread):
    """Ends a stream command's process group on timeout or on a stop request.

    Reading the command's output blocks, so the checks run in their own thread;
    ending the group closes the pipe and the reader sees the end of the stream.
    """

    GRACE = 5.0

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float | None,
                 should_stop: Callable[[], bool]) -> None:
        super().__init__(name="resurgo-stream-watch", daemon=True)
        self.proc = proc
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.should_stop = should_stop
        self.timed_out = False
        self.stopped = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            if self.proc.poll() is not None:
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.timed_out = True
                self.end_group()
                return
            if self.should_stop():
                self.stopped = True
                self.end_group()
                return

    def end_group(self) -> None:
        import signal

        for sig, wait in ((signal.SIGTERM, self.GRACE), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            if wait is None:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def backup_stream(
    repo: Repository,
    name: str,
    *,
    fd: int | None = None,
    command: Sequence[str] | None = None,
    opts: BackupOptions | None = None,
    reporter: Reporter = NULL,
    timeout: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> BackupSummary:
    """Back up one stream (stdin, or a command's stdout) as the file ``/name``.

    With ``command``, its exit status is checked after the stream ends: a
    failed command raises SourceError and no snapshot is written, so a broken
    database dump never looks like a good backup. The command runs in its own
    process group; ``timeout`` (seconds) and ``should_stop`` end the whole group
    (SIGTERM, then SIGKILL after a grace period), so a dump pipeline cannot
    outlive the backup.
    """
    opts = opts or BackupOptions()
    if not name or "/" in name or name in (".", ".."):
        from resurgo.errors import UsageError

        raise UsageError(f"bad stream file name {name!r}: use a plain file name")
    host = opts.hostname or socket.gethostname()
    started = time.time()
    before = dict(repo.stats_added)
    proc: subprocess.Popen[bytes] | None = None
    watcher: _StreamWatcher | None = None
    if command is not None:
        try:
            proc = subprocess.Popen(
                list(command), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise SourceError(f"cannot run {command[0]!r}: {e.strerror or e}")
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        watcher = _StreamWatcher(proc, timeout, should_stop)
        watcher.start()
    assert fd is not None
    chunker = repo.chunker()
    ids: list[bytes] = []
    total = 0
    try:
        for c in chunker.fd_chunks(fd, read_size=1 << 20):
            total += len(c)
            ids.append(repo.save_blob(BlobType.DATA, c)[0])
            reporter.progress(bytes_done=total)
            if should_stop():
                raise Interrupted("backup interrupted; no snapshot was written")
    except BaseException as exc:
        if watcher is not None:
            watcher.end_group()
        if _is_interrupt(exc):
            keep_uploaded(repo, exc)
        raise
    finally:
        if proc is not None:
            assert proc.stdout is not None
            proc.stdout.close()
            rc = proc.wait()
        if watcher is not None:
            watcher.finish()
    if watcher is not None and watcher.stopped:
        stop = Interrupted("backup interrupted; the command was stopped and no snapshot was written")
        keep_uploaded(repo, stop)
        raise stop
    if watcher is not None and watcher.timed_out:
        raise SourceError(
            f"command {' '.join(command or [])!r} timed out after {timeout:g}s; "
            "no snapshot was written"
        )
    if proc is not None and rc != 0:
        raise SourceError(
            f"command {' '.join(command or [])!r} failed with exit status {rc}; no snapshot was written"
        )
    now_ns = time.time_ns()
    node = Node(
        name=os.fsencode(name), type=NodeType.FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(),
        mtime_ns=now_ns, atime_ns=now_ns, ctime_ns=now_ns, size=total, content=ids,
    )
    root = repo.save_blob(BlobType.TREE, encode_tree([node]))[0]
    repo.flush()
    s = BackupSummary(started=started, files_new=1, bytes_read=total, bytes_total=total)
    s.blobs_added = repo.stats_added["blobs"] - before["blobs"]
    s.bytes_added = repo.stats_added["bytes_stored"] - before["bytes_stored"]
    s.bytes_added_raw = repo.stats_added["bytes_raw"] - before["bytes_raw"]
    s.duration = time.time() - started
    snap = Snapshot(
        time_ns=int(started * 1e9), tree=root, paths=["/" + name], hostname=host,
        username=_username(), uid=os.getuid(), gid=os.getgid(), tags=sorted(set(opts.tags)),
        summary=s.as_dict(), program_version=__version__,
    )
    s.snapshot_id = save_snapshot(repo, snap)
    reporter.event("summary", **s.as_dict())
    return s
