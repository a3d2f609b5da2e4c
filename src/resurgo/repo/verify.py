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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import (
    BackendError,
    CorruptObject,
    ResurgoError,
    UnsupportedVersion,
    UsageError,
)
from resurgo.progress import NULL, Reporter
from resurgo.repo.index import BlobLocation
from resurgo.repo.pack import PackedBlob, parse_trailer, trailer_length, verify_pack_bytes
from resurgo.repo.repository import Repository

TAIL_READ = 64 << 10
THREADS = 4
# read_data holds a whole pack per thread and its work (hashing, decryption,
# decompression) runs outside the GIL: one thread per core keeps the CPUs busy
# (measured on 2 cores: 2 threads beat 3 and 4, with half the memory of 4).
READ_DATA_THREADS = min(4, max(2, os.cpu_count() or 2))


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


def _pack_infos(repo: Repository) -> dict[str, ObjectInfo]:
    return {layout.name_of(o.key): o for o in repo.backend.list(layout.DATA)}


def _read_trailer(repo: Repository, pack_hex: str, size: int) -> list[PackedBlob]:
    name = f"pack {pack_hex}"
    tail_len = min(size, TAIL_READ)
    tail = repo.backend.get(layout.pack(pack_hex), size - tail_len, tail_len)
    tlen = trailer_length(tail, name)
    if tlen + 4 > size:
        raise CorruptObject(name, "trailer length exceeds the pack")
    if tlen + 4 <= len(tail):
        env = tail[len(tail) - 4 - tlen : len(tail) - 4]
    else:
        env = repo.backend.get(layout.pack(pack_hex), size - 4 - tlen, tlen)
    return parse_trailer(repo.sealer(), env, pack_size=size, name=name)


def check_structure(repo: Repository, report: CheckReport, reporter: Reporter = NULL) -> dict[str, list[PackedBlob]]:
    """Compare the index with the packs' trailers; returns the trailers read."""
    repo.load_index()
    infos = _pack_infos(repo)
    by_pack: dict[str, list[BlobLocation]] = {}
    for loc in repo.index.entries():
        by_pack.setdefault(loc.pack_hex, []).append(loc)
    for pack_hex in sorted(set(by_pack) - set(infos)):
        report.add("missing-pack", f"data/{pack_hex[:2]}/{pack_hex}",
                   f"indexed pack is missing ({len(by_pack[pack_hex])} blobs lost)")
    report.unused_packs = sorted(set(infos) - set(by_pack))
    trailers: dict[str, list[PackedBlob]] = {}
    done = 0

    def one(pack_hex: str) -> None:
        nonlocal done
        try:
            blobs = _read_trailer(repo, pack_hex, infos[pack_hex].size)
        # A damaged version byte reads as an unknown format: a problem to
        # report like any other, not a reason to abort the whole check.
        except (CorruptObject, UnsupportedVersion, BackendError) as e:
            report.add("corrupt-pack", layout.pack(pack_hex), str(e))
            return
        trailers[pack_hex] = blobs
        in_trailer = {(b.type, b.id): b for b in blobs}
        for loc in by_pack.get(pack_hex, []):
            b = in_trailer.get((loc.type, loc.id))
            if b is None or (b.offset, b.length, b.raw_length) != (loc.offset, loc.length, loc.raw_length):
                report.add("index-mismatch", f"blob {loc.id.hex()}",
                           f"index says pack {pack_hex[:16]}… offset {loc.offset}, the pack disagrees")
        with report._lock:
            report.packs_checked += 1
            done += 1
        reporter.progress(packs_checked=done, packs_total=len(infos))

    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(one, sorted(infos)))
    return trailers


def read_data(
    repo: Repository, report: CheckReport, *, subset: str | None = None, reporter: Reporter = NULL,
    rng: random.Random | None = None,
) -> None:
    """Download packs (all, or a subset), verify hashes, decrypt and re-hash every blob."""
    infos = _pack_infos(repo)
    chosen = select_subset(infos, subset, rng)
    sealer = repo.sealer()

    def one(pack_hex: str) -> None:
        key = layout.pack(pack_hex)
        try:
            data = repo.backend.get(key)
        except BackendError as e:
            report.add("corrupt-pack", key, str(e))
            return
        try:
            verify_pack_bytes(data, pack_hex)
        except CorruptObject as e:
            # Report it, then keep going: authenticating each blob says exactly
            # which blobs of the pack are lost and which can still be salvaged.
            report.add("corrupt-pack", key, str(e))
        try:
            tlen = trailer_length(data, f"pack {pack_hex}")
            blobs = parse_trailer(sealer, data[len(data) - 4 - tlen : len(data) - 4],
                                  pack_size=len(data), name=f"pack {pack_hex}")
        except (CorruptObject, UnsupportedVersion) as e:
            report.add("corrupt-pack", key, str(e))
            return
        mv = memoryview(data)
        for b in blobs:
            loc = BlobLocation(b.type, b.id, bytes.fromhex(pack_hex), b.offset, b.length, b.raw_length)
            try:
                plain = repo.open_blob(loc, mv[b.offset : b.offset + b.length])
                if not repo.verify_blob_id(b.id, plain):
                    raise CorruptObject(f"blob {b.id.hex()}", "content does not match its ID")
            except ResurgoError as e:
                report.add("corrupt-blob", f"blob {b.id.hex()} in {key}", str(e))
                continue
            with report._lock:
                report.blobs_read += 1
        with report._lock:
            report.packs_read += 1
            report.bytes_read += len(data)
            reporter.progress(packs_read=report.packs_read, packs_total=len(chosen),
                              bytes_read=report.bytes_read)

    with ThreadPoolExecutor(READ_DATA_THREADS) as ex:
        list(ex.map(one, chosen))


def check_index_objects(repo: Repository, report: CheckReport) -> None:
    """Index objects that failed to load when the repository was opened."""
    for name, err in sorted(repo.index_problems.items()):
        report.add("corrupt-index", f"index/{name}", err)
