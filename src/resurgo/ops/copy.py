"""copy: replicate snapshots from one repository (the *source*) into another (the *destination*).

The two repositories have their own passwords and encryption keys; every blob
is decrypted with the source's key and sealed again with the destination's.
What else happens depends on the *blob-ID key* (the key of the keyed hash
that names blobs):

* **Same IDs**: the destination was created with
  ``init --copy-chunker-params-from SOURCE`` and shares the source's ID key and
  chunker. A blob has the same ID in both, so only blobs the destination's
  index lacks are downloaded, and nothing is hashed again.
* **Translated IDs** (the general case): a data blob's destination ID is
  computed from its content with the destination's key (*re-hashed*), and each
  tree is re-encoded with the translated IDs of its content and subtrees. The
  *translation map* (source blob ID -> destination blob ID, per blob type) is
  kept in the local cache, sealed with the destination's key, under
  ``<cache>/<destination ID>/copy-from-<source ID>``; a later copy then
  downloads only blobs it has not translated before. An entry is only used
  while the destination's index still holds its blob.

Both ways, blobs already in the destination are not stored again, trees are
walked from the source's (cached) tree packs, and the copied snapshot records
the source snapshot in its ``original`` field (or the source's own
``original``, for a copy of a copy). A source snapshot whose ID or original a
destination snapshot already records is skipped, so running copy again
copies only new snapshots.

Write order in the destination is the same as for a backup: blobs, then
``flush`` (packs and index), then the snapshot.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resurgo.errors import BlobNotFound, CorruptObject, Interrupted
from resurgo.ops.backup import keep_uploaded
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobLocation, BlobType, Repository
from resurgo.repo.cache import read_file, write_atomic
from resurgo.repo.crypto import Kind
from resurgo.snapshot.model import Snapshot, encode_tree
from resurgo.snapshot.store import list_snapshots, load_tree, save_snapshot

SAME_IDS = "same-ids"
TRANSLATED = "translated"
# Blobs of one pack closer than this are fetched with one ranged get, and one
# get is at most MAX_RANGE long (unless a single blob is longer).
MAX_GAP = 1 << 20
MAX_RANGE = 32 << 20
FETCH_THREADS = 4

_MAP_VERSION = 1
_MAP_RECORD = 1 + 32 + 32  # type, source ID, destination ID


@dataclass
class CopySummary:
    mode: str
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source ID, destination ID)
    skipped: list[str] = field(default_factory=list)  # source IDs already in the destination
    blobs_copied: int = 0  # blobs downloaded from the source and saved
    blobs_present: int = 0  # blobs the destination already had
    trees_encoded: int = 0  # trees re-encoded with translated IDs
    blobs_rehashed: int = 0
    bytes_downloaded: int = 0  # blob bytes read from the source's packs
    bytes_added: int = 0  # bytes written to the destination's packs
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "snapshots_copied": len(self.copied),
            "snapshots_skipped": len(self.skipped),
            "copied": [{"source": s, "destination": d} for s, d in self.copied],
            "blobs_copied": self.blobs_copied,
            "blobs_present": self.blobs_present,
            "trees_encoded": self.trees_encoded,
            "blobs_rehashed": self.blobs_rehashed,
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_added": self.bytes_added,
            "duration": round(self.duration, 3),
        }


# --- the translation map --------------------------------------------------------------


class TranslationMap:
    """Source blob ID -> destination blob ID, per blob type; persisted sealed and authenticated.

    The file is sealed with the destination's key and bound to both
    repository IDs, so a damaged, foreign or tampered map fails
    authentication and is ignored (the copy then downloads more, never wrong
    data). Thread-safe.
    """

    def __init__(self, src: Repository, dst: Repository, path: Path | None) -> None:
        self._dst = dst
        self.path = path
        self._context = f"copy-map {src.config.id} {dst.config.id}".encode()
        self._lock = threading.Lock()
        self._map: dict[bytes, bytes] = {}
        self._dirty = False
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    def get(self, blob_type: int, src_id: bytes) -> bytes | None:
        with self._lock:
            return self._map.get(bytes([blob_type]) + src_id)

    def set(self, blob_type: int, src_id: bytes, dst_id: bytes) -> None:
        key = bytes([blob_type]) + src_id
        with self._lock:
            if self._map.get(key) != dst_id:
                self._map[key] = dst_id
                self._dirty = True

    def _load(self, path: Path) -> None:
        env = read_file(path)
        if env is None:
            return
        try:
            plain = self._dst.sealer().open(Kind.CACHE, env, self._context, name=str(path))
        except Exception:
            return  # damaged or not ours: start afresh
        if len(plain) < 1 or plain[0] != _MAP_VERSION or (len(plain) - 1) % _MAP_RECORD:
            return
        mv = memoryview(plain)[1:]
        entries = {}
        for at in range(0, len(mv), _MAP_RECORD):
            entries[bytes(mv[at : at + 33])] = bytes(mv[at + 33 : at + _MAP_RECORD])
        self._map = entries

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            plain = bytes([_MAP_VERSION]) + b"".join(k + v for k, v in self._map.items())
            self._dirty = False
        # Only an optimisation: if it cannot be written, the next copy downloads more.
        write_atomic(self.path, self._dst.sealer().seal(Kind.CACHE, plain, self._context))


def translation_map_path(cache_dir: Path, src: Repository, dst: Repository) -> Path:
    return cache_dir / dst.config.id / f"copy-from-{src.config.id}"


# --- choosing snapshots ----------------------------------------------------------------


def copied_originals(dst: Repository) -> set[str]:
    """The source snapshots the destination already holds: each snapshot's original, or its ID."""
    return {s.original or s.id or "" for s in list_snapshots(dst)} - {""}


# --- the copy --------------------------------------------------------------------------


class _Copier:
    def __init__(
        self,
        src: Repository,
        dst: Repository,
        tmap: TranslationMap,
        summary: CopySummary,
        reporter: Reporter,
        should_stop: Callable[[], bool],
        threads: int,
    ) -> None:
        self.src = src
        self.dst = dst
        self.same_ids = summary.mode == SAME_IDS
        self.tmap = tmap
        self.summary = summary
        self.reporter = reporter
        self.should_stop = should_stop
        self.threads = max(1, threads)
        self._lock = threading.Lock()

    def _stop_check(self) -> None:
        if self.should_stop():
            raise Interrupted("copy interrupted; the snapshot being copied was not written")

    # phase 1: every tree (children before parents) and data blob under a root

    def walk(self, root: bytes) -> tuple[list[bytes], list[bytes]]:
        postorder: list[bytes] = []
        data: dict[bytes, None] = {}
        seen = {root}
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tree_id, expanded = stack.pop()
            if expanded:
                postorder.append(tree_id)
                continue
            self._stop_check()
            stack.append((tree_id, True))
            for node in load_tree(self.src, tree_id):
                for blob_id in node.content:
                    data.setdefault(blob_id)
                if node.subtree is not None and node.subtree not in seen:
                    seen.add(node.subtree)
                    stack.append((node.subtree, False))
        return postorder, list(data)

    # phase 2: data blobs

    def _present(self, blob_type: int, src_id: bytes) -> bool:
        if self.same_ids:
            return self.dst.has_blob(blob_type, src_id)
        mapped = self.tmap.get(blob_type, src_id)
        return mapped is not None and self.dst.has_blob(blob_type, mapped)

    def copy_data(self, blob_ids: Sequence[bytes]) -> None:
        by_pack: dict[bytes, list[BlobLocation]] = defaultdict(list)
        present = 0
        for blob_id in blob_ids:
            if self._present(BlobType.DATA, blob_id):
                present += 1
                continue
            loc = self.src.lookup(BlobType.DATA, blob_id)
            if loc is None:
                raise BlobNotFound(
                    f"data blob {blob_id.hex()} is not in the source repository's index"
                )
            by_pack[loc.pack_id].append(loc)
        with self._lock:
            self.summary.blobs_present += present
        jobs = [rng for locs in by_pack.values() for rng in _ranges(locs)]
        if not jobs:
            return
        with ThreadPoolExecutor(min(self.threads, len(jobs)), thread_name_prefix="copy") as ex:
            for _ in ex.map(self._copy_range, jobs):
                pass

    def _copy_range(self, locs: list[BlobLocation]) -> None:
        self._stop_check()
        start = locs[0].offset
        end = max(loc.offset + loc.length for loc in locs)
        data = memoryview(self.src.read_pack_range(locs[0].pack_id, start, end - start))
        for loc in locs:
            plain = self.src.open_blob(loc, data[loc.offset - start : loc.offset - start + loc.length])
            if self.same_ids:
                # Same key, same ID: the source's authenticated ID is the destination's.
                self.dst.save_blob(BlobType.DATA, plain, blob_id=loc.id)
            else:
                new_id, _ = self.dst.save_blob(BlobType.DATA, plain)
                self.tmap.set(BlobType.DATA, loc.id, new_id)
            with self._lock:
                self.summary.blobs_copied += 1
                self.summary.blobs_rehashed += 0 if self.same_ids else 1
                self.summary.bytes_downloaded += loc.length
        self.reporter.progress(
            blobs_copied=self.summary.blobs_copied, bytes_downloaded=self.summary.bytes_downloaded
        )

    # phase 3: trees, children first

    def copy_trees(self, postorder: Sequence[bytes]) -> bytes:
        """Copy or translate every tree; returns the destination ID of the last (the root)."""
        dst_id = b""
        for tree_id in postorder:
            self._stop_check()
            if self.same_ids:
                dst_id = tree_id
                if self.dst.has_blob(BlobType.TREE, tree_id):
                    self.summary.blobs_present += 1
                    continue
                plain = self.src.load_blob(BlobType.TREE, tree_id)
                self.dst.save_blob(BlobType.TREE, plain, blob_id=tree_id)
                self.summary.blobs_copied += 1
                continue
            mapped = self.tmap.get(BlobType.TREE, tree_id)
            if mapped is not None and self.dst.has_blob(BlobType.TREE, mapped):
                # Its children were all copied above (every tree is walked), and
                # the same children always translate to the same IDs.
                dst_id = mapped
                self.summary.blobs_present += 1
                continue
            nodes = load_tree(self.src, tree_id)
            for node in nodes:
                if node.content:
                    node.content = [self._translated(BlobType.DATA, b) for b in node.content]
                if node.subtree is not None:
                    node.subtree = self._translated(BlobType.TREE, node.subtree)
            dst_id, _ = self.dst.save_blob(BlobType.TREE, encode_tree(nodes))
            self.tmap.set(BlobType.TREE, tree_id, dst_id)
            self.summary.trees_encoded += 1
        return dst_id

    def _translated(self, blob_type: int, src_id: bytes) -> bytes:
        mapped = self.tmap.get(blob_type, src_id)
        if mapped is None:
            # Every child is handled before its parent; a gap is a bug, not damage.
            raise CorruptObject(f"blob {src_id.hex()}", "no translation for a copied blob")
        return mapped

    # one snapshot

    def copy_snapshot(self, snap: Snapshot, copied_ids: dict[str, str]) -> str:
        postorder, data = self.walk(snap.tree)
        self.copy_data(data)
        root = self.copy_trees(postorder)
        self.dst.flush()
        self.tmap.save()
        original = snap.original or snap.id
        parent = copied_ids.get(snap.parent) if snap.parent else None
        new = replace(snap, tree=root, original=original, parent=parent, id=None)
        self._stop_check()
        return save_snapshot(self.dst, new)


def _ranges(locs: list[BlobLocation]) -> Iterable[list[BlobLocation]]:
    """Blobs of one pack grouped into ranged reads (close blobs share one get)."""
    locs = sorted(locs, key=lambda loc: loc.offset)
    group: list[BlobLocation] = []
    start = end = 0
    for loc in locs:
        if group and (loc.offset - end >= MAX_GAP or loc.offset + loc.length - start > MAX_RANGE):
            yield group
            group = []
        if not group:
            start = loc.offset
            end = loc.offset
        group.append(loc)
        end = max(end, loc.offset + loc.length)
    if group:
        yield group


def copy_snapshots(
    src: Repository,
    dst: Repository,
    snapshots: Sequence[Snapshot],
    *,
    cache_dir: Path | None = None,
    reporter: Reporter = NULL,
    should_stop: Callable[[], bool] = lambda: False,
    threads: int = FETCH_THREADS,
) -> CopySummary:
    """Copy ``snapshots`` (of ``src``) into ``dst``, oldest first; see the module docstring.

    ``cache_dir`` is the local cache root holding the translation map (None:
    no map, so every copy re-reads the data it translates). Snapshots already
    in ``dst`` are skipped and listed in the summary.
    """
    started = time.time()
    same = dst.shares_blob_ids_with(src)
    summary = CopySummary(mode=SAME_IDS if same else TRANSLATED)
    path = None if same or cache_dir is None else translation_map_path(cache_dir, src, dst)
    tmap = TranslationMap(src, dst, path)
    copier = _Copier(src, dst, tmap, summary, reporter, should_stop, threads)
    have = copied_originals(dst)
    # Source snapshot ID -> destination ID, to translate ``parent`` references.
    copied_ids = {s.original: s.id for s in list_snapshots(dst) if s.original and s.id}
    before = dst.stats_added["bytes_stored"]
    reporter.event("copy.start", mode=summary.mode, snapshots=len(snapshots),
                   translation_map=len(tmap))
    ordered = sorted(snapshots, key=lambda s: (s.time_ns, s.id or ""))
    try:
        for done, snap in enumerate(ordered, start=1):
            assert snap.id is not None
            if (snap.original or snap.id) in have:
                summary.skipped.append(snap.id)
                reporter.event("copy.skip", source=snap.id)
                continue
            new_id = copier.copy_snapshot(snap, copied_ids)
            have.add(snap.original or snap.id)
            copied_ids[snap.id] = new_id
            summary.copied.append((snap.id, new_id))
            reporter.event("copy.snapshot", source=snap.id, destination=new_id)
            reporter.progress(snapshots_done=done, snapshots_total=len(ordered))
    except BaseException as exc:
        if isinstance(exc, Interrupted) or not isinstance(exc, Exception):
            keep_uploaded(dst, exc)
            tmap.save()
        raise
    finally:
        summary.bytes_added = dst.stats_added["bytes_stored"] - before
        summary.duration = time.time() - started
    reporter.event("summary", **summary.as_dict())
    return summary
