"""The restore pipeline: a snapshot (or part of it) -> entries in a target directory.

Vocabulary: the *plan* is the list of entries to restore, in pre-order (a
directory before its contents), after ``includes``/``excludes``; an entry's
*chunks* map each content blob to the file ranges it fills (the data ranges of
a sparse file are the gaps between its ``holes``); a *temp name*
(``.resurgo-tmp-<hash of the name>``) is where a file's content is written
before it is renamed into place; the *overwrite mode* says what happens to
entries that already exist in the target (docs/restore.md).

Phases, in order:

1. **Plan**: walk the trees (every name is checked again; a tree that does
   not decode is refused before anything is written).
2. **Prepare** (one thread, pre-order): create directories; compare existing
   entries with the snapshot (an identical file -- same size, the content
   blob IDs recomputed over its bytes, same metadata -- is skipped: this is
   what makes a restore resumable); create or reuse temp files (a temp file
   left by an interrupted run keeps the chunks that already match); create
   symlinks and special files. A *fresh* file -- one blob, in a directory
   this run created -- is only registered: nothing can be in its way.
3. **Fetch**: every needed blob, deduplicated by ID, grouped by pack; each
   pack is read with as few ranged gets as its layout allows (blobs closer
   than ``MAX_GAP`` share one get), by a pool of threads, one range and one
   decoded large blob (or up to ``_SMALL_BATCH`` bytes of small ones) in
   memory per thread (``_Jobs`` decides which thread takes which range).
   Each blob is authenticated, checked against its ID and written
   (``pwrite``) to every place it belongs. A file whose last chunk
   arrives is given its metadata through its descriptor and renamed into
   place; a fresh file is created (anonymously where the file system can),
   written, finished and linked in by one thread in one go.
4. **Finish**: hard links; directory metadata last, children before parents.
5. **Verify** (optional): re-read every restored file and hash it again.

Safety against a hostile repository and a hostile target: every entry is
created and opened relative to a directory file descriptor that restore
opened one component at a time with ``O_NOFOLLOW``, so no symlink -- restored
or pre-existing -- is ever followed, and nothing can be written outside the
target.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import stat
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resurgo.backend.registry import REMOTE_SCHEMES
from resurgo.errors import (
    EXIT_DAMAGE,
    BlobNotFound,
    CorruptObject,
    IntegrityError,
    Interrupted,
    InvalidRange,
    ObjectNotFound,
    RestoreError,
    TargetExists,
    UsageError,
)
from resurgo.ops.excludes import Excluder
from resurgo.ops.gcpause import collector_paused
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobLocation, BlobType, Repository
from resurgo.repo.lazynumpy import numpy
from resurgo.snapshot import fsmeta, newfiles
from resurgo.snapshot.model import Node, NodeType, Snapshot, check_name
from resurgo.snapshot.store import find_node, load_tree

# A restore looks up every blob of what it restores, and the index builds its
# arrays (with NumPy) for that many lookups. NumPy is loaded with this module,
# which the CLI imports while the key is derived (cli/cmd_restore.py,
# ``preload``), not on the main thread in the middle of the plan (0.15 s of a
# cold restore of the benchmark dataset).
numpy()

OVERWRITE_MODES = ("never", "if-changed", "always")
# Blobs of one pack closer than this are fetched with one ranged get (the
# bytes in between are downloaded and thrown away: cheaper than a request).
MAX_GAP = 1 << 20
# A ranged get is at most this long (unless one blob is longer): it bounds the
# memory of each fetch thread (its range, plus the one blob decoded from it
# that is being written). Local reads of 4 MiB already run at disk speed;
# remote gets of 4 MiB amortise their round trip well enough.
MAX_RANGE = 4 << 20
# ... and holds at most this many blobs: a range of small files is a few
# hundred files, so the threads share them evenly (see _Jobs).
MAX_RANGE_BLOBS = 256
# Ranges whose blobs average less than this (stored) are "many-blob" ranges,
# and only some of the threads work on those at a time (see _Jobs).
_SMALL_BLOB = 64 << 10
# Blobs shorter than _SMALL_BLOB are decoded a batch at a time, up to this
# many bytes of plaintext, in one native call without the GIL
# (Repository.open_blobs), and then written: decoding and creating files
# alternate less often, so the decoder's tables and the zstd dictionary stay
# in the CPU caches from one blob to the next (in side-by-side restores of the
# benchmark dataset this took less CPU than writing each one as decoded).
_SMALL_BATCH = 1 << 20
# The prepare phase looks up the blobs of this many entries at a time, in one
# search of the index (Repository.lookup_many), not one lookup per file.
_LOOKUP_AHEAD = 4096
# The fetch threads unless told otherwise, and how many of them at most work
# on many-blob ranges at a time (see _Jobs). A local repository: one thread
# for the ranges of small files while large blobs remain, and one for
# those (it mostly waits for the disk, or in C code with the interpreter
# lock released); a second thread on small files, or more threads, would
# only hand the lock back and forth after every system call and hold more
# ranges in memory. A remote repository (REMOTE_SCHEMES): more,
# because each get waits for a round trip on the network.
LOCAL_THREADS = (2, 1)
REMOTE_THREADS = (4, 2)
TMP_PREFIX = b".resurgo-tmp-"
_READ_BLOCK = 4 << 20
_PROGRESS_EVERY = 0.1  # seconds
# Errors after which continuing cannot help: the restore stops.
_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE,
                           errno.ENFILE, errno.ENOMEM})
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A temp file is always a new inode: never through a symlink, never an existing file.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Setting metadata needs ownership, not write permission (a resumed temp file may
# already have its final, read-only mode); O_NONBLOCK: never wait on a planted fifo.
_META_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
# An anonymous file in a directory, to be linked in under its name once complete.
_ANONYMOUS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
# ... which some file systems (and old kernels) do not support.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
# Times newfiles.create takes (C long long nanoseconds); others go through Python.
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1
# Mode bits a file is never created with (chown would clear them; see fsmeta).
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


class UnsafeTree(RestoreError):
    """A tree of the snapshot is hostile or damaged (bad name, undecodable): the
    restore is refused before anything is written."""

    exit_code = EXIT_DAMAGE


class RestoreIntegrityError(IntegrityError):
    """Some files could not be restored from damaged data, or failed verification.

    Raised after everything else was restored; ``summary`` is the full summary
    and ``paths`` the files concerned.
    """

    def __init__(self, message: str, summary: RestoreSummary, paths: list[str]) -> None:
        super().__init__(message)
        self.summary = summary
        self.paths = paths


@dataclass
class RestoreSummary:
    files_restored: int = 0  # regular files written (content and metadata)
    dirs_restored: int = 0  # directories created
    others_restored: int = 0  # symlinks, fifos, sockets, devices, hard links created
    bytes_restored: int = 0  # content bytes written this run
    files_skipped: int = 0  # existing entries already identical to the snapshot
    bytes_skipped: int = 0  # content bytes of skipped files and of reused temp chunks
    metadata_updated: int = 0  # existing entries with identical content given new metadata
    conflicts: int = 0  # existing entries left untouched (overwrite mode)
    files_total: int = 0  # regular files in the plan
    bytes_total: int = 0  # content bytes in the plan (holes excluded)
    packs_read: int = 0
    bytes_downloaded: int = 0
    files_verified: int = 0
    warnings: list[dict[str, str]] = field(default_factory=list)
    damaged: list[dict[str, str]] = field(default_factory=list)  # files not restored (bad data)
    started: float = 0.0
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files_restored": self.files_restored,
            "dirs_restored": self.dirs_restored,
            "others_restored": self.others_restored,
            "bytes_restored": self.bytes_restored,
            "files_skipped": self.files_skipped,
            "bytes_skipped": self.bytes_skipped,
            "metadata_updated": self.metadata_updated,
            "conflicts": self.conflicts,
            "files_total": self.files_total,
            "bytes_total": self.bytes_total,
            "packs_read": self.packs_read,
            "bytes_downloaded": self.bytes_downloaded,
            "files_verified": self.files_verified,
            "warnings": len(self.warnings),
            "damaged": len(self.damaged),
            "duration": round(self.duration, 3),
        }


@dataclass(slots=True)
class _Chunk:
    """One content blob of a file and the ``(file offset, blob offset, length)`` pieces it fills."""

    blob_id: bytes
    length: int
    _pieces: list[tuple[int, int, int]] | None  # None: the whole blob at offset 0 (most files)
    loc: BlobLocation  # where the blob is stored

    @property
    def pieces(self) -> list[tuple[int, int, int]]:
        return [(0, 0, self.length)] if self._pieces is None else self._pieces


class _Damaged(Exception):
    """A file's content cannot be restored (missing blob, layout not matching its size)."""


@dataclass(eq=False, slots=True)
class _Entry:
    node: Node
    parent: _Entry | None  # None: directly in the target
    selected: bool = True
    keep: bool = True
    # prepare/fetch bookkeeping
    state: str = ""  # created|exists|pending|done|skipped|metadata|conflict|failed|damaged|link
    chunks: Sequence[_Chunk] = ()
    remaining: int = 0  # chunk instances still to be written
    link_to: _Entry | None = None  # hard-link secondary: the entry it links to
    # A single-chunk file whose directory this run created: nothing can be in
    # its way, so it is created, written, finished and named when its chunk
    # arrives (``_write_new``).
    fresh: bool = False
    # Directories: what a file created in it starts with: whether it inherits
    # ACLs (a default ACL), and its group (None: not looked at yet).
    inherits: tuple[bool, int] | None = None
    _tmp: bytes = b""

    @property
    def tmp(self) -> bytes:
        """The entry's temp name (``tmp_name``), computed once."""
        if not self._tmp:
            self._tmp = tmp_name(self.node.name)
        return self._tmp

    @property
    def rel(self) -> bytes:
        """The entry's path relative to the target (for messages: not kept per entry)."""
        names = []
        e: _Entry | None = self
        while e is not None:
            names.append(e.node.name)
            e = e.parent
        return b"/".join(reversed(names))


def tmp_name(name: bytes) -> bytes:
    """The temp name a file's content is written under before it is renamed to ``name``.

    Derived from the name (so an interrupted restore finds it again) and short
    (so it fits NAME_MAX whatever the name's length).
    """
    return TMP_PREFIX + hashlib.blake2b(name, digest_size=12).hexdigest().encode()


def _proc(dfd: int, name: bytes) -> bytes:
    # /proc/self/fd/N pins the directory we opened ourselves; fsmeta works on
    # paths, and this one never resolves through a symlink before ``name``.
    return b"/proc/self/fd/%d/%s" % (dfd, name)


def _lstat(name: bytes, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: bytes, dfd: int) -> None:
    """Remove an entry: a directory tree without following symlinks, or a non-directory."""
    st = _lstat(name, dfd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _pread_exact(fd: int, length: int, offset: int) -> bytes | None:
    parts = []
    while length > 0:
        b = os.pread(fd, min(length, _READ_BLOCK), offset)
        if not b:
            return None
        parts.append(b)
        length -= len(b)
        offset += len(b)
    return b"".join(parts)


def _write_pieces(fd: int, chunk: _Chunk, plain: bytes) -> None:
    pieces = chunk._pieces
    if pieces is None:
        _pwrite_all(fd, plain, 0)  # the whole blob, without a view
    elif len(pieces) == 1 and pieces[0][1] == 0 and pieces[0][2] == len(plain):
        _pwrite_all(fd, plain, pieces[0][0])
    else:
        mv = memoryview(plain)
        for foff, boff, length in pieces:
            _pwrite_all(fd, mv[boff : boff + length], foff)


def _end(chunk: _Chunk) -> int:
    """Where the last piece of ``chunk`` ends in its file."""
    pieces = chunk._pieces
    if pieces is None:
        return chunk.length
    return pieces[-1][0] + pieces[-1][2] if pieces else 0


def _current_umask() -> int | None:
    """The process umask, read without changing it (None where /proc does not say)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    n = os.pwrite(fd, data, offset)
    if n < len(data):  # a short write: go on from where it stopped, without copying
        view = memoryview(data)[n:]
        offset += n
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n


def file_chunks(repo: Repository, node: Node,
                found: dict[bytes, BlobLocation | None] | None = None) -> list[_Chunk]:
    """Where each content blob of a regular-file node goes (raises _Damaged).
    ``found``: locations already looked up (``Repository.lookup_many``)."""
    def lookup(bid: bytes) -> BlobLocation | None:
        if found is not None and bid in found:
            return found[bid]
        return repo.lookup(BlobType.DATA, bid)

    if len(node.content) == 1 and not node.holes and node.size:  # most files: one blob
        bid = node.content[0]
        loc = lookup(bid)
        if loc is None:
            raise _Damaged(f"data blob {bid.hex()} is not in the index")
        if loc.raw_length != node.size:
            raise _Damaged("content is " + ("longer" if loc.raw_length > node.size else "shorter")
                           + " than the file's size")
        return [_Chunk(bid, node.size, None, loc)]
    if node.holes:
        extents = fsmeta.extents_from_holes(node.holes, node.size)
    else:
        extents = [(0, node.size)] if node.size else []
    chunks: list[_Chunk] = []
    ei, used = 0, 0
    for bid in node.content:
        loc = lookup(bid)
        if loc is None:
            raise _Damaged(f"data blob {bid.hex()} is not in the index")
        pieces: list[tuple[int, int, int]] = []
        boff = 0
        while boff < loc.raw_length:
            if ei >= len(extents):
                raise _Damaged("content is longer than the file's size")
            eoff, elen = extents[ei]
            take = min(loc.raw_length - boff, elen - used)
            pieces.append((eoff + used, boff, take))
            boff += take
            used += take
            if used == elen:
                ei, used = ei + 1, 0
        chunks.append(_Chunk(bid, loc.raw_length, pieces, loc))
    if ei < len(extents):
        raise _Damaged("content is shorter than the file's size")
    return chunks


def chunk_matches(repo: Repository, fd: int, chunk: _Chunk) -> bool:
    """Whether the bytes of ``fd`` where ``chunk`` belongs hash to its blob ID."""
    parts = []
    for foff, _boff, length in chunk.pieces:
        b = _pread_exact(fd, length, foff)
        if b is None:
            return False
        parts.append(b)
    return repo.verify_blob_id(chunk.blob_id, b"".join(parts))


def holes_are_zero(fd: int, holes: list[tuple[int, int]]) -> bool:
    """Whether every hole range of ``fd`` reads as zeros (real holes cost nothing to check)."""
    for off, length in holes:
        end = off + length
        pos = off
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                start = pos  # no SEEK_DATA: read everything
            if start >= end:
                break
            try:
                stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            except OSError:
                stop = end
            while start < stop:
                b = os.pread(fd, min(_READ_BLOCK, stop - start), start)
                if not b:
                    return False
                if b.strip(b"\0"):
                    return False
                start += len(b)
            pos = stop
    return True


def _content_matches(repo: Repository, fd: int, node: Node, chunks: Sequence[_Chunk]) -> bool:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
        return False
    return all(chunk_matches(repo, fd, c) for c in chunks) and holes_are_zero(fd, node.holes)


def _open_read(name: bytes, dfd: int) -> int:
    """Open an existing entry for comparing or verifying it: never through a symlink,
    never blocking on a fifo, and without touching its atime (which restore set)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dfd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:  # O_NOATIME needs ownership or CAP_FOWNER
            raise
        return os.open(name, flags, dir_fd=dfd)


def _comparable_xattrs(xattrs: dict[bytes, bytes]) -> dict[bytes, bytes]:
    # security.* (SELinux labels, capabilities) may be added by the target
    # system itself; they do not make an otherwise identical entry differ.
    return {k: v for k, v in xattrs.items() if not k.startswith(b"security.")}


class _DirHandles:
    """Open directory descriptors for plan entries, opened component by component.

    Each directory is opened relative to its parent's descriptor with
    ``O_NOFOLLOW | O_DIRECTORY``, so a path never resolves through a symlink.
    A bounded LRU cache keeps recently used ones; ``hold`` counts users so a
    descriptor in use by one thread is never closed by another.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.cap = max(32, min(1024, (soft if soft > 0 else 1024) // 4))
        self._lock = threading.Lock()
        self._cache: OrderedDict[_Entry, list[int]] = OrderedDict()  # entry -> [fd, users]

    @contextmanager
    def hold(self, entry: _Entry | None) -> Iterator[int]:
        """The descriptor of directory ``entry`` (None: the target itself)."""
        fd = self.acquire(entry)
        try:
            yield fd
        finally:
            self.release(entry)

    def acquire(self, entry: _Entry | None) -> int:
        """``hold`` without the context manager (the per-file hot path): every
        ``acquire`` must be followed by one ``release`` of the same entry."""
        if entry is None:
            return self.root_fd
        return self._acquire(entry)

    def release(self, entry: _Entry | None) -> None:
        if entry is not None:
            with self._lock:
                self._cache[entry][1] -= 1

    def _acquire(self, entry: _Entry) -> int:
        with self._lock:
            slot = self._cache.get(entry)
            if slot is not None:
                slot[1] += 1
                self._cache.move_to_end(entry)
                return slot[0]
            chain: list[_Entry] = []
            e: _Entry | None = entry
            while e is not None and e not in self._cache:
                chain.append(e)
                e = e.parent
            parent_fd = self.root_fd if e is None else self._cache[e][0]
            for link in reversed(chain):
                parent_fd = os.open(link.node.name, _DIR_OPEN, dir_fd=parent_fd)
                self._cache[link] = [parent_fd, 0]
            self._cache[entry][1] = 1
            self._evict()
            return parent_fd

    def _evict(self) -> None:
        if len(self._cache) <= self.cap:
            return
        for e in list(self._cache):
            if len(self._cache) <= self.cap:
                break
            fd, users = self._cache[e]
            if users == 0:
                del self._cache[e]
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._cache.values():
                os.close(fd)
            self._cache.clear()


def _norm_subpath(subpath: bytes) -> bytes:
    parts = [p for p in subpath.split(b"/") if p not in (b"", b".")]
    return b"/".join(parts)


def plan_restore(
    repo: Repository,
    snap: Snapshot,
    *,
    subpath: bytes = b"",
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> list[_Entry]:
    """The entries to restore, in pre-order. Raises UnsafeTree for a bad tree."""
    sub = _norm_subpath(subpath)
    try:
        top = find_node(repo, snap.tree, sub)
    except (CorruptObject, BlobNotFound) as exc:
        raise UnsafeTree(f"refusing to restore: {exc}") from exc
    excl = Excluder(exclude=excludes) if excludes else None
    incl = Excluder(exclude=includes) if includes else None
    base = b"/" + sub if sub else b""

    def load(tree_id: bytes, where: bytes) -> list[Node]:
        try:
            nodes = load_tree(repo, tree_id)
        except (CorruptObject, BlobNotFound) as exc:
            raise UnsafeTree(
                f"refusing to restore: the tree of {fsmeta.show_path(where or b'/')} "
                f"is damaged or hostile: {exc}"
            ) from exc
        seen: set[bytes] = set()
        for n in nodes:
            # decode_tree checks names too; this check is what restore relies on.
            problem = check_name(n.name)
            if problem is None and n.name in seen:
                problem = f"duplicate name {n.name!r}"
            if problem:
                raise UnsafeTree(
                    f"refusing to restore: the tree of {fsmeta.show_path(where or b'/')} "
                    f"has a hostile entry: {problem}"
                )
            seen.add(n.name)
        return nodes

    if top.type is NodeType.DIR:
        if top.subtree is None:
            raise RestoreError(
                f"{fsmeta.show_path(base or b'/')} could not be read at backup time: nothing to restore"
            )
        roots = load(top.subtree, base)
    else:
        roots = [top]
        base = base.rpartition(b"/")[0]

    entries: list[_Entry] = []
    patterns = excl is not None or incl is not None
    # (the nodes of a directory still to visit, its entry, its path inside the snapshot)
    stack: list[tuple[Iterator[Node], _Entry | None, bytes]] = [(iter(roots), None, base)]
    while stack:
        nodes, parent, where = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        is_dir = node.type is NodeType.DIR
        full = where + b"/" + node.name if patterns or is_dir else b""
        if excl is not None and excl.excluded(full, is_dir):
            continue
        e = _Entry(node, parent)
        if incl is not None:
            e.selected = e.keep = (parent is not None and parent.selected) or incl.excluded(
                full, is_dir)
        entries.append(e)
        if is_dir and node.subtree is not None:
            stack.append((iter(load(node.subtree, full)), e, full))
    if incl is not None:
        # Parents of included entries are restored too (reverse pre-order sees
        # every child before its parent).
        for e in reversed(entries):
            if e.keep and e.parent is not None:
                e.parent.keep = True
        entries = [e for e in entries if e.keep]
    return entries


class _Restore:
    def __init__(
        self,
        repo: Repository,
        entries: list[_Entry],
        target: bytes,
        root_fd: int,
        *,
        overwrite: str,
        owner: bool,
        numeric_ids: bool,
        threads: int,
        reporter: Reporter,
        should_stop: Callable[[], bool],
        root_created: bool = False,
    ) -> None:
        self.repo = repo
        self.entries = entries
        self.target = target
        self.dirs = _DirHandles(root_fd)
        self.overwrite = overwrite
        self.owner = owner
        self.numeric_ids = numeric_ids
        self.threads = max(1, threads)
        self.reporter = reporter
        self.should_stop = should_stop
        self.summary = RestoreSummary(started=time.time())
        self._lock = threading.Lock()
        self._want: dict[bytes, list[tuple[_Entry, _Chunk]]] = defaultdict(list)
        self._primaries: dict[tuple[int, int], _Entry] = {}
        self._found: dict[bytes, BlobLocation | None] = {}  # looked up ahead (prepare)
        self._links: list[_Entry] = []
        self._stop = threading.Event()
        self._files_done = 0
        self._last_progress = 0.0
        self._damaged_seen: set[int] = set()
        self.root_created = root_created  # the target did not exist: it is empty
        self._root_inherits: tuple[bool, int] | None = None
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._umask = _current_umask()
        # Anonymous temp files (O_TMPFILE), linked in once complete; off where
        # the file system does not support them (named temp files then).
        self._anonymous = True

    # -- reporting ------------------------------------------------------------------

    def where(self, e: _Entry) -> str:
        """Where ``e`` goes in the target: what messages name."""
        return fsmeta.show_path(os.path.join(self.target, e.rel))

    def warn(self, e: _Entry, message: str) -> None:
        w = {"path": self.where(e), "error": message}
        with self._lock:
            self.summary.warnings.append(w)
        self.reporter.event("warning", **w)

    def _apply_meta(self, e: _Entry, dfd: int, name: bytes) -> None:
        path = _proc(dfd, name)
        warnings = fsmeta.apply_metadata(
            path, e.node, owner=self.owner, numeric_ids=self.numeric_ids
        )
        # fsmeta's messages start with the /proc path; ours name the entry instead.
        for text in warnings:
            self.warn(e, text.removeprefix(fsmeta.show_path(path) + ": "))

    def damage(self, e: _Entry, reason: str) -> None:
        with self._lock:
            if id(e) in self._damaged_seen:
                return
            self._damaged_seen.add(id(e))
            e.state = "damaged"
            d = {"path": self.where(e), "error": reason}
            self.summary.damaged.append(d)
        self.reporter.event("error", **d)

    def conflict(self, e: _Entry, what: str) -> None:
        with self._lock:
            self.summary.conflicts += 1
            e.state = "conflict"
        self.warn(e, f"{what}; left untouched (overwrite mode '{self.overwrite}')")

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY:
            return
        self._last_progress = now
        s = self.summary
        self.reporter.progress(
            files_done=self._files_done, files_total=s.files_total,
            bytes_done=s.bytes_restored + s.bytes_skipped, bytes_total=s.bytes_total,
        )

    def _file_finished(self) -> None:
        with self._lock:
            self._files_done += 1
        self.progress()

    def check_stop(self) -> None:
        if self._stop.is_set() or self.should_stop():
            self._stop.set()
            raise Interrupted("restore interrupted; run it again to resume where it stopped")

    # -- comparing existing entries -----------------------------------------------------

    def _metadata_matches(self, e: _Entry, dfd: int, name: bytes, st: os.stat_result) -> bool:
        node = e.node
        if node.type is not NodeType.SYMLINK and stat.S_IMODE(st.st_mode) != node.mode:
            return False
        if st.st_mtime_ns != node.mtime_ns:
            return False
        if self.owner and (st.st_uid, st.st_gid) != fsmeta.resolve_owner(
            node, numeric_ids=self.numeric_ids
        ):
            return False
        try:
            have = fsmeta.read_xattrs(_proc(dfd, name), tolerate_denied=True)
        except OSError:
            return False
        return _comparable_xattrs(have) == _comparable_xattrs(node.xattrs)

    def _verdict(self, e: _Entry, dfd: int, st: os.stat_result) -> str:
        """identical | metadata (content same, metadata differs) | differs | dir."""
        node, name = e.node, e.node.name
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if fsmeta.node_type(st.st_mode) is not node.type:
            return "differs"
        if node.type is NodeType.FILE:
            if st.st_size != node.size:
                return "differs"
            try:
                fd = _open_read(name, dfd)
            except OSError:
                return "differs"
            try:
                if not _content_matches(self.repo, fd, node, e.chunks):
                    return "differs"
            finally:
                os.close(fd)
        elif node.type is NodeType.SYMLINK:
            if os.readlink(name, dir_fd=dfd) != node.linktarget:
                return "differs"
        elif node.type in (NodeType.BLOCKDEV, NodeType.CHARDEV) and st.st_rdev != node.rdev:
            return "differs"
        return "identical" if self._metadata_matches(e, dfd, name, st) else "metadata"

    def _may_replace(self, e: _Entry, verdict: str) -> bool:
        if self.overwrite == "never":
            what = "a directory is in the way" if verdict == "dir" else "exists and differs from the snapshot"
            self.conflict(e, what)
            return False
        if verdict == "dir" and self.overwrite != "always":
            self.conflict(e, "a directory is in the way (use --overwrite always to replace it)")
            return False
        return True

    def _handle_existing(self, e: _Entry, dfd: int, st: os.stat_result) -> bool:
        """Deal with an existing non-directory target; True when it must be (re)written."""
        verdict = self._verdict(e, dfd, st)
        if verdict == "identical":
            with self._lock:
                self.summary.files_skipped += 1
                if e.node.type is NodeType.FILE:
                    self.summary.bytes_skipped += sum(c.length for c in e.chunks)
                e.state = "skipped"
            return False
        if not self._may_replace(e, verdict):
            return False
        if verdict == "metadata":
            self._apply_meta(e, dfd, e.node.name)
            with self._lock:
                self.summary.metadata_updated += 1
                if e.node.type is NodeType.FILE:
                    self.summary.bytes_skipped += sum(c.length for c in e.chunks)
                e.state = "metadata"
            return False
        if verdict == "dir":
            _remove(e.node.name, dfd)
        return True

    # -- prepare -----------------------------------------------------------------------

    def prepare(self) -> None:
        s = self.summary
        for e in self.entries:
            node = e.node
            if node.type is NodeType.FILE:
                s.files_total += 1
                s.bytes_total += node.size - sum(h[1] for h in node.holes) if node.holes else node.size
        self.progress(force=True)
        for i, e in enumerate(self.entries):
            if i % _LOOKUP_AHEAD == 0:
                # The blobs of the next entries' files, looked up together.
                ahead = self.entries[i : i + _LOOKUP_AHEAD]
                ids = list(dict.fromkeys(b for a in ahead if a.node.type is NodeType.FILE
                                         for b in a.node.content))
                self._found = dict(zip(ids, self.repo.lookup_many(BlobType.DATA, ids), strict=True))
            if i % 64 == 0:
                self.check_stop()
            if e.parent is not None and e.parent.state not in ("created", "exists"):
                e.state = "blocked"  # the directory's own warning covers its contents
                continue
            if e.node.type is NodeType.FILE and self._prep_new_file(e):
                continue
            try:
                with self.dirs.hold(e.parent) as dfd:
                    if e.node.type is NodeType.DIR:
                        self._prep_dir(e, dfd)
                    elif e.node.type is NodeType.FILE:
                        self._prep_file(e, dfd)
                    else:
                        self._prep_special(e, dfd)
            except OSError as exc:
                self._os_error(e, exc)
        self.progress(force=True)

    def _os_error(self, e: _Entry, exc: OSError) -> None:
        if exc.errno in _FATAL_ERRNOS:
            raise RestoreError(
                f"cannot restore {self.where(e)}: {exc.strerror or exc}"
            ) from exc
        e.state = "failed"
        self.warn(e, f"cannot restore: {exc.strerror or exc}")

    def _in_new_dir(self, e: _Entry) -> bool:
        """Whether ``e``'s directory was created by this run (so nothing is in its way)."""
        return e.parent.state == "created" if e.parent is not None else self.root_created

    def _prep_dir(self, e: _Entry, dfd: int) -> None:
        name = e.node.name
        if e.node.subtree is None:
            self.warn(e, "the directory could not be read at backup time; its contents "
                      "are not in the snapshot")
        if self._in_new_dir(e):
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                pass  # not expected in a directory just created: compare as usual
            else:
                e.state = "created"
                with self._lock:
                    self.summary.dirs_restored += 1
                return
        st = _lstat(name, dfd)
        if st is not None and stat.S_ISDIR(st.st_mode):
            e.state = "exists"
            if not self.owner and st.st_mode & 0o700 != 0o700:
                # Resuming as non-root into a directory whose final mode was
                # already set: make it writable again; its mode comes last.
                os.chmod(_proc(dfd, name), stat.S_IMODE(st.st_mode) | 0o700)
            return
        if st is not None:
            if self.overwrite == "never":
                self.conflict(e, "exists and is not a directory")
                return
            os.unlink(name, dir_fd=dfd)
        os.mkdir(name, 0o700, dir_fd=dfd)
        e.state = "created"
        with self._lock:
            self.summary.dirs_restored += 1

    def _link_key(self, node: Node) -> tuple[int, int] | None:
        if node.nlink > 1 and node.inode:
            return (node.device_id, node.inode)
        return None

    def _prep_new_file(self, e: _Entry) -> bool:
        """A file of one chunk in a directory this run created: nothing to look at in
        the target; it is only registered for the fetch (``_write_new``). False
        for any other file."""
        node = e.node
        if len(node.content) != 1 or not self._in_new_dir(e):
            return False
        key = self._link_key(node)
        if key is not None:
            if key in self._primaries:
                return False  # a further name of a hard-linked file
            self._primaries[key] = e
        try:
            e.chunks = file_chunks(self.repo, node, self._found)
        except _Damaged as exc:
            self.damage(e, str(exc))
            return True
        e.state = "pending"
        e.fresh = True
        e.remaining = 1
        self._want[node.content[0]].append((e, e.chunks[0]))
        return True

    def _prep_file(self, e: _Entry, dfd: int) -> None:
        key = self._link_key(e.node)
        if key is not None and key in self._primaries:
            e.link_to = self._primaries[key]
            e.state = "link"
            self._links.append(e)
            return
        try:
            e.chunks = file_chunks(self.repo, e.node, self._found)
        except _Damaged as exc:
            self.damage(e, str(exc))
            return
        new = self._in_new_dir(e)
        if new and not e.chunks:  # empty, or all holes
            if key is not None:
                self._primaries[key] = e
            e.state = "pending"
            self._write_empty(e, dfd)
            return
        st = None if new else _lstat(e.node.name, dfd)
        if st is not None and not self._handle_existing(e, dfd, st):
            if e.state in ("skipped", "metadata"):
                if key is not None:
                    self._primaries[key] = e
                self._file_finished()
            return
        needed = self._open_temp(e, dfd)
        if key is not None:
            self._primaries[key] = e
        e.state = "pending"
        if not needed:
            self._finalize(e, dfd)
            return
        e.remaining = len(needed)
        for c in needed:
            self._want[c.blob_id].append((e, c))

    def _write_empty(self, e: _Entry, dfd: int) -> None:
        """A fresh file without content (empty, or all holes): created finished."""
        fd = os.open(e.tmp, _CREATE, 0o600, dir_fd=dfd)
        try:
            if e.node.size:
                os.ftruncate(fd, e.node.size)
            self._meta_fd(e, fd, dfd, created=True)
        finally:
            os.close(fd)
        self._renamed(e, dfd)

    def _open_temp(self, e: _Entry, dfd: int) -> list[_Chunk]:
        """Create the temp file (or reuse one left by an interrupted run); return the
        chunks it still lacks."""
        tmp = e.tmp
        try:
            fd = os.open(tmp, _CREATE, 0o600, dir_fd=dfd)
        except FileExistsError:
            needed = self._reuse_temp(e, dfd, tmp)
            if needed is not None:
                return needed
            _remove(tmp, dfd)
            fd = os.open(tmp, _CREATE, 0o600, dir_fd=dfd)
        try:
            if e.node.size:
                os.ftruncate(fd, e.node.size)
        finally:
            os.close(fd)
        return list(e.chunks)

    def _reuse_temp(self, e: _Entry, dfd: int, tmp: bytes) -> list[_Chunk] | None:
        st = _lstat(tmp, dfd)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 \
                or st.st_size != e.node.size:
            return None
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return None
        try:
            if not holes_are_zero(fd, e.node.holes):
                return None
            needed = [c for c in e.chunks if not chunk_matches(self.repo, fd, c)]
        finally:
            os.close(fd)
        reused = sum(c.length for c in e.chunks) - sum(c.length for c in needed)
        with self._lock:
            self.summary.bytes_skipped += reused
        return needed

    def _finalize(self, e: _Entry, dfd: int) -> None:
        """Content complete: metadata on the temp file, then rename it into place, so
        the real name only ever shows a complete, finished file."""
        fd = os.open(e.tmp, _META_OPEN, dir_fd=dfd)
        try:
            self._meta_fd(e, fd, dfd, created=False)
        finally:
            os.close(fd)
        self._renamed(e, dfd)

    def _meta_fd(self, e: _Entry, fd: int, dfd: int, *, created: bool) -> None:
        """Metadata through the temp file's descriptor. ``created``: this run created
        the file with O_EXCL, so it can only carry ACLs its directory passed on."""
        inherited = not created or self._inherits(e.parent, dfd)[0]
        for text in fsmeta.apply_metadata_fd(fd, e.node, owner=self.owner,
                                             numeric_ids=self.numeric_ids,
                                             inherited_acls=inherited):
            self.warn(e, text)

    def _inherits(self, d: _Entry | None, dfd: int) -> tuple[bool, int]:
        """What a file created in directory ``d`` (None: the target) starts with:
        whether it inherits a default ACL, and its group (the directory's when it
        is set-group-ID). Looked at once per directory: restore sets no
        directory metadata before the very end."""
        known = d.inherits if d is not None else self._root_inherits
        if known is None:
            try:
                os.getxattr(dfd, fsmeta.ACL_DEFAULT)
                acl = True
            except OSError as exc:
                acl = exc.errno not in _NO_XATTR
            st = os.fstat(dfd)
            known = (acl, st.st_gid if st.st_mode & stat.S_ISGID else self._egid)
            if d is not None:
                d.inherits = known
            else:
                self._root_inherits = known
        return known

    def _renamed(self, e: _Entry, dfd: int) -> None:
        os.rename(e.tmp, e.node.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        with self._lock:
            e.state = "done"
            self.summary.files_restored += 1
            self._files_done += 1
        self.progress()

    def _prep_special(self, e: _Entry, dfd: int) -> None:
        name = e.node.name
        st = _lstat(name, dfd)
        if st is not None and not self._handle_existing(e, dfd, st):
            return
        tmp = tmp_name(name)
        _remove(tmp, dfd)
        path = _proc(dfd, tmp)
        try:
            fsmeta.create_special(path, e.node, owner=self.owner)
        except fsmeta.SpecialFileNotCreated as exc:
            e.state = "failed"
            self.warn(e, str(exc).removeprefix(fsmeta.show_path(path) + ": "))
            return
        self._apply_meta(e, dfd, tmp)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        e.state = "done"
        with self._lock:
            self.summary.others_restored += 1

    # -- fetch -----------------------------------------------------------------------------

    def fetch(self) -> None:
        by_pack: dict[bytes, list[BlobLocation]] = defaultdict(list)
        for users in self._want.values():
            loc = users[0][1].loc
            by_pack[loc.pack_id].append(loc)
        max_many = _thread_plan(self.repo)[1]
        jobs = _Jobs([(pid, *rng) for pid, locs in by_pack.items() for rng in _ranges(locs)],
                     max_many=max_many)
        if not jobs:
            return
        n = min(self.threads, len(jobs))
        with ThreadPoolExecutor(n, thread_name_prefix="resurgo-restore") as pool:
            futures = [pool.submit(self._fetch_worker, jobs) for _ in range(n)]
            failed = True  # also when this thread is interrupted (Ctrl-C, SIGTERM)
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = any(f.exception() is not None for f in done)
            finally:
                if failed:
                    self._stop.set()  # the other workers stop at their next range
                    for f in futures:
                        f.cancel()
            wait(futures)
        for f in futures:
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        self.check_stop()

    def _fetch_worker(self, jobs: _Jobs) -> None:
        many = False
        while not self._stop.is_set():
            got = jobs.take(many)
            if got is None:
                return
            job, many = got
            self._range_job(*job)

    def _range_job(self, pack_id: bytes, start: int, end: int, locs: list[BlobLocation]) -> None:
        """One ranged get; each blob in it decoded and verified, then written where it
        belongs: a large one before the next blob is decoded (one decoded large blob
        in memory per thread), small ones in batches of up to ``_SMALL_BATCH`` bytes."""
        if self._stop.is_set():
            return
        if self.should_stop():
            self._stop.set()
            return
        try:
            data = self.repo.read_pack_range(pack_id, start, end - start)
            if len(data) != end - start:
                raise CorruptObject(f"pack {pack_id.hex()}", "short read")
        except (ObjectNotFound, InvalidRange, CorruptObject) as exc:
            for loc in locs:
                self._blob_damaged(loc.id, str(exc))
            return
        with self._lock:
            self.summary.packs_read += 1
            self.summary.bytes_downloaded += len(data)
        view = memoryview(data)
        small: list[BlobLocation] = []  # small blobs not decoded yet
        batched = 0
        for loc in locs:
            if self._stop.is_set():
                return
            if loc.raw_length < _SMALL_BLOB:
                small.append(loc)
                batched += loc.raw_length
                if batched >= _SMALL_BATCH:
                    self._write_batch(view, start, small)
                    batched = 0
                continue
            self._write_batch(view, start, small)
            batched = 0
            # Natively too: cryptography decrypts holding the GIL.
            plain = self.repo.open_blobs(view, start, [loc])[0]
            if plain is None:
                plain = self._opened(view, start, loc)
            if plain is not None:
                self._write_blob(loc.id, plain)
            del plain
        self._write_batch(view, start, small)

    def _opened(self, view: memoryview, start: int, loc: BlobLocation) -> bytes | None:
        """The verified plaintext of blob ``loc`` in a range read from ``start``;
        None, with its files marked damaged, if it does not open or verify."""
        env = view[loc.offset - start : loc.offset - start + loc.length]
        try:
            plain = self.repo.open_blob(loc, env)
            if not self.repo.verify_blob_id(loc.id, plain):
                raise CorruptObject(f"blob {loc.id.hex()}", "content does not match its ID")
        except CorruptObject as exc:
            self._blob_damaged(loc.id, str(exc))
            return None
        return plain

    def _write_batch(self, view: memoryview, start: int, small: list[BlobLocation]) -> None:
        """Decode the small blobs of ``small`` together, write them, and empty it.

        They are opened and checked in one native call (``Repository.open_blobs``,
        without the GIL); any it leaves (damage, or what it does not handle)
        goes through ``open_blob``, which says what is wrong."""
        if not small:
            return
        plains = self.repo.open_blobs(view, start, small)
        fresh: list[tuple[_Entry, _Chunk, bytes]] = []  # for _write_new_many
        for loc, plain in zip(small, plains, strict=True):
            if self._stop.is_set():
                break
            if plain is None:
                plain = self._opened(view, start, loc)
                if plain is None:
                    continue
            for e, chunk in self._want[loc.id]:
                if e.fresh and newfiles.create is not None and self._anonymous:
                    fresh.append((e, chunk, plain))
                elif e.fresh:
                    self._write_new(e, chunk, plain)
                else:
                    self._write_chunk(e, chunk, plain)
        if fresh and not self._stop.is_set():
            self._write_new_many(fresh)
        small.clear()

    def _write_new_many(self, fresh: list[tuple[_Entry, _Chunk, bytes]]) -> None:
        """``_write_new`` for each of ``fresh``: those that need nothing but their
        times are made together in one native call (``newfiles.create``, without
        the GIL), exactly as ``_write_new`` would make them; every other one,
        and any that call could not make, through ``_write_new`` itself, which
        also reports what went wrong."""
        assert newfiles.create is not None
        batch: list[newfiles.NewFile] = []
        made: list[tuple[_Entry, _Chunk, bytes]] = []
        held: list[_Entry | None] = []
        try:
            for e, chunk, plain in fresh:
                if e.state != "pending":
                    continue  # damaged meanwhile
                node = e.node
                dfd = self.dirs.acquire(e.parent)
                held.append(e.parent)
                acls, gid = self._inherits(e.parent, dfd)
                if not (chunk._pieces is None and self._final_mode_at_creation(node, acls)
                        and _NS_MIN <= node.atime_ns <= _NS_MAX and _NS_MIN <= node.mtime_ns <= _NS_MAX
                        and self._owner_at_creation(node, gid)):
                    self._write_new(e, chunk, plain)
                    continue
                batch.append((dfd, node.name, plain, node.size, node.mode, node.atime_ns, node.mtime_ns))
                made.append((e, chunk, plain))
            results = newfiles.create(batch) if batch else []
        finally:
            for d in held:
                self.dirs.release(d)
        done = bytes_done = 0
        for (e, chunk, plain), (status, err) in zip(made, results, strict=True):
            if status == newfiles.MADE_NO_TIMES:
                self.warn(e, f"cannot set times: {os.strerror(err)}")
            elif status != newfiles.MADE:
                self._write_new(e, chunk, plain)  # made the other way, or its error reported
                continue
            e.remaining = 0
            e.state = "done"
            done += 1
            bytes_done += chunk.length
        with self._lock:
            self.summary.bytes_restored += bytes_done
            self.summary.files_restored += done
            self._files_done += done
        self.progress()

    def _write_blob(self, blob_id: bytes, plain: bytes) -> None:
        """Write a decoded, verified blob to every place it belongs."""
        for e, chunk in self._want[blob_id]:
            if e.fresh:
                self._write_new(e, chunk, plain)
            else:
                self._write_chunk(e, chunk, plain)

    def _write_chunk(self, e: _Entry, chunk: _Chunk, plain: bytes) -> None:
        """Write one chunk of ``e``; the write that completes the file gives it its
        metadata and renames it into place."""
        if e.state != "pending":
            return  # damaged meanwhile
        complete = False
        dfd = self.dirs.acquire(e.parent)
        try:
            fd = os.open(e.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                _write_pieces(fd, chunk, plain)
                with self._lock:
                    self.summary.bytes_restored += chunk.length
                    e.remaining -= 1
                    complete = e.remaining == 0 and e.state == "pending"
                if complete:
                    self._meta_fd(e, fd, dfd, created=False)
            finally:
                os.close(fd)
            if complete:
                self._renamed(e, dfd)
            else:
                self.progress()
        except OSError as exc:
            self._os_error(e, exc)
        finally:
            self.dirs.release(e.parent)

    def _write_new(self, e: _Entry, chunk: _Chunk, plain: bytes) -> None:
        """Create a fresh single-chunk file, write it, give it its metadata and name it.

        The file is created anonymously (O_TMPFILE) and linked in under its name
        once finished, or, where the file system cannot, under its temp name and
        renamed: either way the name only ever shows the finished file. When
        the umask lets the file be created with its final mode and it already
        has the right owner (the directory gives no ACL, the node has no
        xattrs), only its times remain to be set.
        """
        if e.state != "pending":
            return  # damaged meanwhile
        node = e.node
        dfd = self.dirs.acquire(e.parent)
        try:
            acls, gid = self._inherits(e.parent, dfd)
            exact = self._final_mode_at_creation(node, acls)
            fd, anonymous = self._create(e, dfd, node.mode if exact else 0o600)
            try:
                _write_pieces(fd, chunk, plain)
                if _end(chunk) < node.size:
                    os.ftruncate(fd, node.size)  # it ends in a hole
                if exact and self._owner_at_creation(node, gid):
                    try:
                        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
                    except OSError as exc:
                        self.warn(e, f"cannot set times: {exc.strerror}")
                else:
                    for text in fsmeta.apply_metadata_fd(fd, node, owner=self.owner,
                                                         numeric_ids=self.numeric_ids,
                                                         inherited_acls=acls):
                        self.warn(e, text)
                if anonymous:
                    os.link(b"/proc/self/fd/%d" % fd, node.name, dst_dir_fd=dfd,
                            follow_symlinks=True)
            finally:
                os.close(fd)
            if not anonymous:
                os.rename(e.tmp, node.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            with self._lock:
                self.summary.bytes_restored += chunk.length
                e.remaining = 0
                e.state = "done"
                self.summary.files_restored += 1
                self._files_done += 1
        except OSError as exc:
            self._os_error(e, exc)
        finally:
            self.dirs.release(e.parent)
        self.progress()

    def _final_mode_at_creation(self, node: Node, acls: bool) -> bool:
        """Whether a new file for ``node`` gets its final mode when created with it:
        no default ACL in its directory (``acls``), no xattrs, no bit the umask
        or a later chown would clear."""
        return (not acls and not node.xattrs and self._umask is not None
                and not node.mode & (self._umask | _SPECIAL_BITS))

    def _owner_at_creation(self, node: Node, gid: int) -> bool:
        """Whether a file this process creates (with group ``gid``) already has
        ``node``'s owner, or owners are not restored."""
        return not self.owner or fsmeta.resolve_owner(node, numeric_ids=self.numeric_ids) == (self._euid, gid)

    def _create(self, e: _Entry, dfd: int, mode: int) -> tuple[int, bool]:
        """A new file for ``e``: (descriptor, anonymous)."""
        if self._anonymous:
            try:
                return os.open(b".", _ANONYMOUS, mode, dir_fd=dfd), True
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
                self._anonymous = False
        return os.open(e.tmp, _CREATE, mode, dir_fd=dfd), False

    def _blob_damaged(self, bid: bytes, reason: str) -> None:
        for e, _ in self._want.get(bid, []):
            self.damage(e, reason)

    # -- finish ----------------------------------------------------------------------------

    def hard_links(self) -> None:
        for e in self._links:
            self.check_stop()
            p = e.link_to
            assert p is not None
            if p.state not in ("done", "skipped", "metadata"):
                if p.state == "damaged":
                    self.damage(e, "hard link to a file that could not be restored")
                else:
                    e.state = "failed"
                    self.warn(e, "hard link to a file that was not restored")
                continue
            if e.parent is not None and e.parent.state not in ("created", "exists"):
                continue
            try:
                self._link(e, p)
            except OSError as exc:
                self._os_error(e, exc)

    def _link(self, e: _Entry, p: _Entry) -> None:
        with self.dirs.hold(p.parent) as pfd, self.dirs.hold(e.parent) as dfd:
            pst = os.stat(p.node.name, dir_fd=pfd, follow_symlinks=False)
            st = _lstat(e.node.name, dfd)
            if st is not None:
                if (st.st_ino, st.st_dev) == (pst.st_ino, pst.st_dev):
                    with self._lock:
                        e.state = "skipped"
                        self.summary.files_skipped += 1
                    return
                verdict = "dir" if stat.S_ISDIR(st.st_mode) else "differs"
                if not self._may_replace(e, verdict):
                    return
                if verdict == "dir":
                    _remove(e.node.name, dfd)
            tmp = tmp_name(e.node.name)
            _remove(tmp, dfd)
            os.link(p.node.name, tmp, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
            os.rename(tmp, e.node.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            with self._lock:
                e.state = "done"
                self.summary.others_restored += 1

    def directory_metadata(self) -> None:
        # Reverse pre-order: every directory after everything inside it, so
        # restoring children never disturbs a directory's times.
        for e in reversed(self.entries):
            if e.node.type is not NodeType.DIR or e.state not in ("created", "exists"):
                continue
            try:
                with self.dirs.hold(e.parent) as dfd:
                    self._apply_meta(e, dfd, e.node.name)
            except OSError as exc:
                self._os_error(e, exc)

    def remove_damaged_temps(self) -> None:
        for e in self.entries:
            if e.state == "damaged" and e.node.type is NodeType.FILE and e.link_to is None:
                try:
                    with self.dirs.hold(e.parent) as dfd:
                        st = _lstat(e.tmp, dfd)
                        if st is not None and stat.S_ISREG(st.st_mode):
                            os.unlink(e.tmp, dir_fd=dfd)
                except OSError:
                    pass

    # -- verify --------------------------------------------------------------------------------

    def verify(self, entries: Sequence[_Entry]) -> list[dict[str, str]]:
        """Re-read every regular file of ``entries`` and check it; returns the mismatches."""
        self.reporter.event("verify", files=len(entries))

        def one(e: _Entry) -> dict[str, str] | None:
            try:
                if not e.chunks:
                    e.chunks = file_chunks(self.repo, e.node)
                with self.dirs.hold(e.parent) as dfd:
                    fd = _open_read(e.node.name, dfd)
                    try:
                        ok = _content_matches(self.repo, fd, e.node, e.chunks)
                    finally:
                        os.close(fd)
            except _Damaged as exc:
                return {"path": self.where(e), "error": str(exc)}
            except OSError as exc:
                return {"path": self.where(e), "error": exc.strerror or str(exc)}
            if not ok:
                return {"path": self.where(e),
                        "error": "content or size differs from the snapshot"}
            return None

        bad: list[dict[str, str]] = []
        with ThreadPoolExecutor(self.threads, thread_name_prefix="resurgo-verify") as pool:
            for result in pool.map(one, entries):
                if result is not None:
                    bad.append(result)
                    self.reporter.event("error", **result)
        with self._lock:
            self.summary.files_verified += len(entries) - len(bad)
        return bad


_Job = tuple[bytes, int, int, list[BlobLocation]]  # pack ID, start, end, blobs


class _Jobs:
    """The ranges still to fetch, handed out to the fetch threads.

    A range of many small blobs (small files) costs Python work per blob and
    several short system calls per file, each of which hands the GIL over to a
    waiting thread; a range of large blobs costs decoding and I/O outside the
    GIL. At most ``max_many`` threads work on many-blob ranges at a time (the
    others decode large blobs meanwhile), so the GIL is not passed back and
    forth between threads that all want it after every system call; when the
    large ranges run out, every thread takes many-blob ranges.
    """

    def __init__(self, jobs: list[_Job], max_many: int) -> None:
        self._lock = threading.Lock()
        self._many: deque[_Job] = deque()
        self._large: deque[_Job] = deque()
        for job in sorted(jobs, key=lambda j: (j[0], j[1])):
            # Many blobs: on average less than _SMALL_BLOB stored bytes each.
            (self._many if (job[2] - job[1]) < len(job[3]) * _SMALL_BLOB else self._large).append(job)
        self._max_many = max_many
        self._running_many = 0

    def __len__(self) -> int:
        return len(self._many) + len(self._large)

    def take(self, had_many: bool) -> tuple[_Job, bool] | None:
        """The next job for a thread whose last job was a many-blob one (``had_many``),
        and whether it is one; None when all are taken."""
        with self._lock:
            if had_many:
                self._running_many -= 1
            if self._many and (self._running_many < self._max_many or not self._large):
                self._running_many += 1
                return self._many.popleft(), True
            if self._large:
                return self._large.popleft(), False
            return None


def _ranges(locs: list[BlobLocation]) -> list[tuple[int, int, list[BlobLocation]]]:
    """Group a pack's blobs into ``(start, end, blobs)`` ranges: one ranged get each."""
    out: list[tuple[int, int, list[BlobLocation]]] = []
    for loc in sorted(locs, key=lambda b: b.offset):
        end = loc.offset + loc.length
        if out:
            start, cur_end, group = out[-1]
            if (loc.offset - cur_end < MAX_GAP and max(end, cur_end) - start <= MAX_RANGE
                    and len(group) < MAX_RANGE_BLOBS):
                group.append(loc)
                out[-1] = (start, max(end, cur_end), group)
                continue
        out.append((loc.offset, end, [loc]))
    return out


def is_remote(repo: Repository) -> bool:
    """Whether ``repo`` is reached over a network (an s3:// or sftp:// URL)."""
    scheme, sep, _ = repo.backend.url.partition("://")
    return bool(sep) and scheme in REMOTE_SCHEMES


def _thread_plan(repo: Repository) -> tuple[int, int]:
    """(fetch threads by default, at most on many-blob ranges) for ``repo``."""
    return REMOTE_THREADS if is_remote(repo) else LOCAL_THREADS


def default_threads(repo: Repository) -> int:
    """The fetch threads a restore from ``repo`` uses unless told otherwise."""
    return _thread_plan(repo)[0]


def _open_target(target: bytes) -> tuple[int, bool]:
    """The target's descriptor, and whether this call created it."""
    created = False
    try:
        st = os.stat(target)
    except FileNotFoundError:
        try:
            os.makedirs(target)
            created = True
        except FileExistsError:
            pass
        st = os.stat(target)
    if not stat.S_ISDIR(st.st_mode):
        raise TargetExists(f"restore target {fsmeta.show_path(target)} exists and is not a directory")
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), created


def restore_snapshot(
    repo: Repository,
    snap: Snapshot,
    target: bytes | str | Path,
    *,
    subpath: bytes = b"",
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
    overwrite: str = "never",
    verify: bool = False,
    owner: bool | None = None,
    numeric_ids: bool = False,
    threads: int | None = None,
    reporter: Reporter = NULL,
    should_stop: Callable[[], bool] = lambda: False,
) -> RestoreSummary:
    """Restore ``snap`` (or its ``subpath``) into the directory ``target``.

    ``subpath`` names a directory (its contents go into ``target``) or a single
    entry (restored as ``target/<name>``). ``includes``/``excludes`` are
    gitignore-style patterns matched against the path inside the snapshot.
    ``overwrite``: never | if-changed | always (docs/restore.md). ``owner``
    (default: running as root) restores ownership and device nodes.

    Returns the summary; conflicts and metadata that could not be set are in
    ``summary.warnings``. Raises UnsafeTree (nothing written) for a hostile or
    undecodable tree, Interrupted when ``should_stop`` turned true (run again to
    resume), RestoreError for fatal write errors, and RestoreIntegrityError --
    after restoring everything else -- when files could not be restored from
    damaged data or failed verification.
    """
    if overwrite not in OVERWRITE_MODES:
        raise UsageError(f"unknown overwrite mode {overwrite!r}: expected one of "
                         + ", ".join(OVERWRITE_MODES))
    if owner is None:
        owner = os.geteuid() == 0
    if threads is None:
        threads = default_threads(repo)
    with collector_paused():
        return _restore(repo, snap, os.fsencode(target), subpath=subpath, includes=includes,
                        excludes=excludes, overwrite=overwrite, verify=verify, owner=owner,
                        numeric_ids=numeric_ids, threads=threads, reporter=reporter,
                        should_stop=should_stop)


def _restore(
    repo: Repository,
    snap: Snapshot,
    target: bytes,
    *,
    subpath: bytes,
    includes: Sequence[str],
    excludes: Sequence[str],
    overwrite: str,
    verify: bool,
    owner: bool,
    numeric_ids: bool,
    threads: int,
    reporter: Reporter,
    should_stop: Callable[[], bool],
) -> RestoreSummary:
    entries = plan_restore(repo, snap, subpath=subpath, includes=includes, excludes=excludes)
    root_fd, created = _open_target(target)
    r = _Restore(repo, entries, target, root_fd, overwrite=overwrite, owner=owner,
                 numeric_ids=numeric_ids, threads=threads, reporter=reporter,
                 should_stop=should_stop, root_created=created)
    s = r.summary
    try:
        reporter.event("start", snapshot=snap.id, target=fsmeta.show_path(target),
                       entries=len(entries))
        r.prepare()
        r.fetch()
        r.hard_links()
        r.remove_damaged_temps()
        r.directory_metadata()
        r.progress(force=True)
        bad: list[dict[str, str]] = []
        if verify:
            files = [e for e in entries if e.node.type is NodeType.FILE
                     and e.state in ("done", "skipped", "metadata")]
            bad = r.verify(files)
        s.duration = time.time() - s.started
        reporter.event("restored", **s.as_dict())
    finally:
        r.dirs.close()
        os.close(root_fd)
    if s.damaged or bad:
        paths = [d["path"] for d in s.damaged] + [b["path"] for b in bad]
        what = []
        if s.damaged:
            what.append(f"{len(s.damaged)} file(s) could not be restored from damaged data")
        if bad:
            what.append(f"{len(bad)} file(s) failed verification")
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        err = RestoreIntegrityError(f"{'; '.join(what)}: {shown}", s, paths)
        raise err
    return s


def verify_restore(
    repo: Repository,
    snap: Snapshot,
    target: bytes | str | Path,
    *,
    subpath: bytes = b"",
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
    threads: int | None = None,
    reporter: Reporter = NULL,
) -> RestoreSummary:
    """Check the regular files under ``target`` against the snapshot (as a restore with
    the same arguments would have written them); writes nothing.

    Raises RestoreIntegrityError listing missing or differing files.
    """
    entries = plan_restore(repo, snap, subpath=subpath, includes=includes, excludes=excludes)
    try:
        root_fd = os.open(os.fsencode(target), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"cannot open {fsmeta.show_path(os.fsencode(target))}: "
                           f"{exc.strerror or exc}") from exc
    r = _Restore(repo, entries, os.fsencode(target), root_fd, overwrite="never", owner=False, numeric_ids=False,
                 threads=default_threads(repo) if threads is None else threads, reporter=reporter,
                 should_stop=lambda: False)
    try:
        files = [e for e in entries if e.node.type is NodeType.FILE]
        bad = r.verify(files)
    finally:
        r.dirs.close()
        os.close(root_fd)
    s = r.summary
    s.duration = time.time() - s.started
    if bad:
        paths = [b["path"] for b in bad]
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        raise RestoreIntegrityError(f"{len(bad)} file(s) failed verification: {shown}", s, paths)
    return s
