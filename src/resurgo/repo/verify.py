"""Repository-level verification: packs, trailers and index agree, and data decrypts.

A *problem* is one specific defect naming the object it concerns. Structure
checks compare every index entry with its pack's trailer (so a blob the index
promises is really where it says); ``read_data`` downloads packs, checks each
against its name (content hash), authenticates every blob and recomputes its
keyed ID. A pack no index mentions is *unused* (left by an interrupted backup):
reported, but not damage. Nothing here writes to the backend.
"""

from __future__ import annotations

import os
import random
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import blake3

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import (
    BackendError,
    CorruptObject,
    ResurgoError,
    UnsupportedVersion,
    UsageError,
)
from resurgo.progress import NULL, Reporter
from resurgo.repo.index import padded_id
from resurgo.repo.lazynumpy import numpy
from resurgo.repo.pack import PackedBlob, parse_trailer, trailer_length
from resurgo.repo.repository import Repository

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy()

TAIL_READ = 64 << 10
THREADS = 4
# read_data's work (hashing, decompression) runs mostly outside the GIL and
# each thread reads ahead while it verifies: one thread per core.
READ_DATA_THREADS = min(4, max(2, os.cpu_count() or 2))
# Bytes per ranged read of a pack (more when one blob is larger): each thread
# holds two ranges (one verified, one being read), not a whole pack.
READ_RANGE = 4 << 20
# Ranges each read_data thread has requested ahead of the one it verifies.
READ_AHEAD = 1
# Blobs whose plaintext is smaller than this are verified one thread at a
# time (see ``_Reading``).
SMALL_BLOB = 16 << 10


@dataclass(frozen=True)
class Problem:
    kind: str  # e.g. "missing-pack", "corrupt-pack", "index-mismatch", "corrupt-blob"
    object: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.object}: {self.message}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    unused_packs: list[str] = field(default_factory=list)
    packs_checked: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    snapshots_checked: int = 0
    trees_checked: int = 0
    damaged_snapshots: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, obj: str, message: str) -> None:
        with self._lock:
            self.problems.append(Problem(kind, obj, message))

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_subset(spec: str) -> tuple[str, float | tuple[int, int]]:
    """``"25%"`` -> ("percent", 25.0); ``"2/7"`` -> ("slice", (2, 7))."""
    s = spec.strip()
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return "percent", pct
        n, m = (int(x) for x in s.split("/"))
        if not 1 <= n <= m:
            raise ValueError
        return "slice", (n, m)
    except ValueError:
        raise UsageError(f"bad --read-data-subset {spec!r}: use a percentage like 10% or a slice n/m")


def select_subset(pack_ids: Iterable[str], spec: str | None, rng: random.Random | None = None) -> list[str]:
    ids = sorted(pack_ids)
    if spec is None:
        return ids
    mode, val = parse_subset(spec)
    if mode == "slice":
        n, m = val  # type: ignore[misc]
        # Deterministic by ID, so slices 1/m .. m/m cover every pack exactly once.
        return [p for p in ids if int(p[:8], 16) % m == n - 1]
    want = max(1, round(len(ids) * float(val) / 100)) if ids else 0  # type: ignore[arg-type]
    return sorted((rng or random.Random()).sample(ids, min(want, len(ids))))


def read_trailer(repo: Repository, pack_hex: str, size: int) -> list[PackedBlob]:
    """The blobs a pack's trailer lists, read with one ranged read of its tail (two for long trailers)."""
    tail_len = min(size, TAIL_READ)
    tail = repo.backend.get(layout.pack(pack_hex), size - tail_len, tail_len)
    return _trailer_from_tail(repo, pack_hex, size, tail)


def _trailer_from_tail(repo: Repository, pack_hex: str, size: int, tail: bytes) -> list[PackedBlob]:
    name = f"pack {pack_hex}"
    tlen = trailer_length(tail, name)
    if tlen + 4 > size:
        raise CorruptObject(name, "trailer length exceeds the pack")
    if tlen + 4 <= len(tail):
        env = tail[len(tail) - 4 - tlen : len(tail) - 4]
    else:
        env = repo.backend.get(layout.pack(pack_hex), size - 4 - tlen, tlen)
    return parse_trailer(repo.sealer(), env, pack_size=size, name=name)


def list_packs(repo: Repository) -> dict[str, ObjectInfo]:
    """Every pack in ``data/`` by ID."""
    return {layout.name_of(o.key): o for o in repo.backend.list(layout.DATA)}


def check_structure(
    repo: Repository, report: CheckReport, reporter: Reporter = NULL, *,
    packs: dict[str, ObjectInfo] | None = None,
) -> dict[str, list[PackedBlob]]:
    """Compare the index with the packs' trailers; returns the trailers read.

    ``packs`` is the listing of ``data/`` (``list_packs``) when the caller has one.
    """
    repo.load_index()
    infos = packs if packs is not None else list_packs(repo)
    # The index's rows grouped by pack, from its columns: a BlobLocation per
    # entry cost ~4 us each, most of this function's time.
    arr = repo.index.arrays()
    order = np.argsort(arr.pack, kind="stable")
    bounds = np.searchsorted(arr.pack[order], np.arange(len(arr.packs) + 1)).tolist()
    by_pack = {arr.packs[p].hex(): order[bounds[p] : bounds[p + 1]]
               for p in range(len(arr.packs)) if bounds[p + 1] > bounds[p]}
    for pack_hex in sorted(set(by_pack) - set(infos)):
        report.add("missing-pack", f"data/{pack_hex[:2]}/{pack_hex}",
                   f"indexed pack is missing ({len(by_pack[pack_hex])} blobs lost)")
    report.unused_packs = sorted(set(infos) - set(by_pack))
    trailers: dict[str, list[PackedBlob]] = {}
    done = 0

    def one(pack_hex: str) -> None:
        nonlocal done
        try:
            blobs = read_trailer(repo, pack_hex, infos[pack_hex].size)
        # A damaged version byte reads as an unknown format: a problem to
        # report like any other, not a reason to abort the whole check.
        except (CorruptObject, UnsupportedVersion, BackendError) as e:
            report.add("corrupt-pack", layout.pack(pack_hex), str(e))
            return
        trailers[pack_hex] = blobs
        in_trailer = {(b.type, b.id): b for b in blobs}
        rows = by_pack.get(pack_hex)
        if rows is None:
            rows = order[:0]
        for typ, raw_id, off, ln, raw in zip(
            arr.type[rows].tolist(), arr.ids[rows].tolist(), arr.offset[rows].tolist(),
            arr.length[rows].tolist(), arr.raw[rows].tolist(), strict=True,
        ):
            blob_id = padded_id(raw_id)
            b = in_trailer.get((typ, blob_id))
            if b is None or (b.offset, b.length, b.raw_length) != (off, ln, raw):
                report.add("index-mismatch", f"blob {blob_id.hex()}",
                           f"index says pack {pack_hex[:16]}… offset {off}, the pack disagrees")
        with report._lock:
            report.packs_checked += 1
            done += 1
        reporter.progress(packs_checked=done, packs_total=len(infos))

    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(one, sorted(infos)))
    return trailers


def read_data(
    repo: Repository, report: CheckReport, *, subset: str | None = None, reporter: Reporter = NULL,
    rng: random.Random | None = None, packs: dict[str, ObjectInfo] | None = None,
) -> None:
    """Read packs (all, or a subset), verify hashes, decrypt and re-hash every blob.

    Each pack is streamed in ranged reads of about ``READ_RANGE`` bytes that
    end on blob boundaries: its trailer comes first (from the tail), then
    every blob is authenticated, decompressed and re-hashed straight from the
    range it arrived in, while the pack's own hash is computed over the
    ranges in order. Each thread has its next range read while it verifies
    the current one, so memory stays at a few ranges per thread whatever the
    pack size. ``packs`` is the listing of ``data/`` (``list_packs``) when
    the caller has one.
    """
    infos = packs if packs is not None else list_packs(repo)
    chosen = select_subset(infos, subset, rng)
    # Largest first, so that the threads run out of work at about the same time.
    queue = deque(sorted(chosen, key=lambda p: infos[p].size, reverse=True))
    reading = _Reading(repo, report, reporter, len(chosen))

    def worker() -> None:
        while not reading.stop.is_set():
            try:
                pack_hex = queue.popleft()
            except IndexError:
                return
            _read_pack(reading, pack_hex, infos[pack_hex].size)

    with ThreadPoolExecutor(READ_DATA_THREADS) as reading.fetch, ThreadPoolExecutor(READ_DATA_THREADS) as work:
        futures = [work.submit(worker) for _ in range(READ_DATA_THREADS)]
        try:
            for f in futures:
                f.result()
        except BaseException:
            reading.stop.set()
            raise


class _Reading:
    """What the threads of one ``read_data`` share: counts, problems, the read-ahead pool, locks."""

    fetch: ThreadPoolExecutor

    def __init__(self, repo: Repository, report: CheckReport, reporter: Reporter, packs_total: int) -> None:
        self.repo = repo
        self.report = report
        self.reporter = reporter
        self.packs_total = packs_total
        self.stop = threading.Event()
        # Verifying a small blob is ~14 us of short calls, each giving up the
        # GIL and taking it back (decryption holds it; decompression and
        # hashing release it); two threads doing that at once spend more CPU
        # handing the GIL over than they gain. So one thread at a time
        # verifies the small blobs of its range, while the others verify
        # large ones, whose C calls run for milliseconds without the GIL
        # (measured, 1 GB dataset, warm: 0.84 s and 1.49 s CPU without the
        # lock, 0.71 s and 1.20 s with it; one thread: 0.93 s).
        self.small_blobs = threading.Lock()

    def pack_done(self, problems: list[Problem], blobs: int, size: int, *, complete: bool) -> None:
        report = self.report
        with report._lock:
            report.problems.extend(problems)
            report.blobs_read += blobs
            if complete:
                report.packs_read += 1
                report.bytes_read += size
            packs_read, bytes_read = report.packs_read, report.bytes_read
        if complete:
            self.reporter.progress(packs_read=packs_read, packs_total=self.packs_total, bytes_read=bytes_read)


def _plan_ranges(blobs: list[PackedBlob], end: int) -> list[tuple[int, int]]:
    """Cut ``[0, end)`` into ranges of about ``READ_RANGE`` bytes at blob boundaries.

    A blob larger than ``READ_RANGE`` gets a range of its own; only a blob
    that crosses ``end`` is cut (its rest is in the tail already read).
    """
    ranges: list[tuple[int, int]] = []
    start = 0
    cut = 0  # end of the last blob that fits in the current range
    for b in blobs:
        b_end = b.offset + b.length
        if b.offset >= end:
            break
        if b_end - start > READ_RANGE and cut > start:
            ranges.append((start, cut))
            start = cut
        cut = min(b_end, end)
    if not blobs:
        ranges = [(a, min(a + READ_RANGE, end)) for a in range(0, end, READ_RANGE)]
        start = cut = end
    if cut < end:  # past the last blob: the trailer envelope, unless the tail holds it
        cut = end
    if cut > start:
        ranges.append((start, cut))
    return ranges


def _read_pack(reading: _Reading, pack_hex: str, size: int) -> None:
    repo, fetch, stop = reading.repo, reading.fetch, reading.stop
    key = layout.pack(pack_hex)
    name = f"pack {pack_hex}"
    backend = repo.backend
    pack_problems: list[Problem] = []
    blob_problems: list[tuple[int, Problem]] = []  # (offset, problem): reported in pack order
    verified = 0
    if stop.is_set():
        return
    try:
        tail_start = size - min(size, TAIL_READ)
        tail = backend.get(key, tail_start, size - tail_start)
    except BackendError as e:
        reading.pack_done([Problem("corrupt-pack", key, str(e))], 0, size, complete=False)
        return
    try:
        blobs = _trailer_from_tail(repo, pack_hex, size, tail)
        trailer_error: Problem | None = None
    except (CorruptObject, UnsupportedVersion, BackendError) as e:
        blobs, trailer_error = [], Problem("corrupt-pack", key, str(e))

    def verify(blob: PackedBlob, envelope: bytes | memoryview) -> None:
        nonlocal verified
        try:
            repo.verify_blob_envelope(blob, envelope, pack_hex)
        except ResurgoError as e:
            blob_problems.append((blob.offset, Problem("corrupt-blob", f"blob {blob.id.hex()} in {key}", str(e))))
        else:
            verified += 1

    hasher = blake3.blake3()
    ranges = _plan_ranges(blobs, tail_start)
    pending: deque[Future[bytes]] = deque(
        fetch.submit(backend.get, key, a, b - a) for a, b in ranges[:READ_AHEAD]
    )
    i = 0  # next blob to verify
    carry = b""  # the head of a blob that continues in the tail
    try:
        for n, (a, b) in enumerate(ranges):
            if stop.is_set():
                return
            if READ_AHEAD and n + READ_AHEAD < len(ranges):
                a2, b2 = ranges[n + READ_AHEAD]
                pending.append(fetch.submit(backend.get, key, a2, b2 - a2))
            data = pending.popleft().result() if READ_AHEAD else backend.get(key, a, b - a)
            hasher.update(data)
            view = memoryview(data)
            j = i
            while j < len(blobs) and blobs[j].offset + blobs[j].length <= b:
                j += 1
            whole = blobs[i:j]  # the blobs this range holds whole
            # All of them in one native call without the GIL; any it does not
            # pass (damage, or what it does not handle) through verify(), which
            # says what is wrong.
            checked = repo.check_blobs(view, a, whole) if whole else b""
            if checked is not None:
                for blob, good in zip(whole, checked, strict=True):
                    if good:
                        verified += 1
                    else:
                        verify(blob, view[blob.offset - a : blob.offset - a + blob.length])
                whole = []
            small = [x for x in whole if x.raw_length < SMALL_BLOB]
            if small:
                with reading.small_blobs:
                    for blob in small:
                        verify(blob, view[blob.offset - a : blob.offset - a + blob.length])
            for blob in whole:
                if blob.raw_length >= SMALL_BLOB:
                    verify(blob, view[blob.offset - a : blob.offset - a + blob.length])
            i = j
            if i < len(blobs) and blobs[i].offset < b:  # crosses into the tail
                carry = bytes(view[blobs[i].offset - a :])
            del view, data
    except BackendError as e:
        for f in pending:
            f.cancel()
        reading.pack_done([Problem("corrupt-pack", key, str(e)), *(p for _, p in sorted(blob_problems))],
                           verified, size, complete=False)
        return
    hasher.update(tail)
    tail_view = memoryview(tail)
    while i < len(blobs):
        blob = blobs[i]
        if carry:
            verify(blob, carry + tail_view[: blob.offset + blob.length - tail_start])
            carry = b""
        else:
            verify(blob, tail_view[blob.offset - tail_start : blob.offset - tail_start + blob.length])
        i += 1
    got = hasher.hexdigest()
    if got != pack_hex:
        # Reported, then the blobs: authenticating each one says exactly which
        # blobs of the pack are lost and which can still be salvaged.
        pack_problems.append(Problem("corrupt-pack", key, str(
            CorruptObject(name, f"content hash mismatch (got {got[:16]}…)"))))
    if trailer_error is not None:
        pack_problems.append(trailer_error)
    reading.pack_done([*pack_problems, *(p for _, p in sorted(blob_problems))], verified, size, complete=True)


def check_index_objects(repo: Repository, report: CheckReport) -> None:
    """Index objects that failed to load when the repository was opened."""
    for name, err in sorted(repo.index_problems.items()):
        report.add("corrupt-index", f"index/{name}", err)
