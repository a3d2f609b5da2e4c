"""repair: rebuild the index from the packs, and rewrite snapshots around lost data.

*repair index* reads every pack's trailer (with ``read_data``: the whole pack,
authenticating every blob) and writes a new index naming exactly what the
packs hold; the old index objects are superseded and deleted. A *damaged*
pack (trailer unreadable, content hash wrong, a blob that fails
authentication) has its readable blobs *salvaged* -- copied into new packs by
the normal write path, located by its trailer or, when that is gone, by the
old index -- and is then deleted; the blobs that could not be read are listed
as *lost*. Prune marks are cleared, since their candidates are indexed again.

*repair snapshots* rewrites every snapshot that references lost data into a
new snapshot without it, marked ``damaged``: a file whose content has a blob
missing from the index is left out (a restore must never produce a file that
looks complete but is not), a directory whose tree cannot be read becomes an
empty directory with its ``error`` set. Everything still readable is kept.
The original snapshots are removed only with ``forget``; so are snapshot
objects that cannot be read at all.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import (
    BackendError,
    BlobNotFound,
    CorruptObject,
    ObjectNotFound,
    ResurgoError,
    UnsupportedVersion,
)
from resurgo.ops.prune import INDEX_TARGET_ENTRIES
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobLocation, BlobType, Repository
from resurgo.repo.index import ENTRY_DTYPE, padded_id
from resurgo.repo.lazynumpy import numpy
from resurgo.repo.lock import ExclusiveLock
from resurgo.repo.marks import delete_mark, list_marks
from resurgo.repo.pack import PackedBlob, parse_trailer, trailer_length, verify_pack_bytes
from resurgo.repo.verify import read_trailer
from resurgo.snapshot.model import Node, NodeType, Snapshot, encode_tree
from resurgo.snapshot.store import SNAPSHOTS, load_snapshot, load_tree, save_snapshot

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy()

THREADS = 4


@dataclass
class DamagedPack:
    pack: str
    error: str
    salvaged: int = 0
    lost: list[str] = field(default_factory=list)  # blob IDs (hex) that could not be read
    lost_unknown: bool = False  # nothing tells which blobs it held

    def as_dict(self) -> dict[str, Any]:
        return {"pack": self.pack, "error": self.error, "salvaged": self.salvaged,
                "lost": self.lost, "lost_unknown": self.lost_unknown}


@dataclass
class RepairIndexReport:
    dry_run: bool = False
    packs: int = 0
    packs_indexed: int = 0
    blobs_indexed: int = 0
    damaged: list[DamagedPack] = field(default_factory=list)
    missing_packs: list[str] = field(default_factory=list)  # indexed, but not in the repository
    blobs_lost: list[str] = field(default_factory=list)
    blobs_salvaged: int = 0
    index_removed: int = 0
    index_written: int = 0
    marks_cleared: int = 0

    @property
    def complete(self) -> bool:
        """Nothing was lost: every blob the old index or the packs named is readable."""
        return not self.blobs_lost and not any(d.lost_unknown for d in self.damaged)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "damaged"}
        out["damaged"] = [d.as_dict() for d in self.damaged]
        out["complete"] = self.complete
        return out


@dataclass
class _PackResult:
    blobs: list[PackedBlob] | None = None  # the pack is good: index these
    damaged: DamagedPack | None = None
    salvage: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (type, id, plain)


def repair_index(
    repo: Repository,
    *,
    read_data: bool = False,
    dry_run: bool = False,
    reporter: Reporter = NULL,
    lock: ExclusiveLock | None = None,
) -> RepairIndexReport:
    """Rebuild the index from the packs (see the module docstring)."""
    rep = RepairIndexReport(dry_run=dry_run)
    own_lock = None
    if not dry_run and lock is None:
        own_lock = lock = ExclusiveLock(repo, operation="repair index",
                                        settings=repo.session_settings)
        lock.acquire()
    repo.session_operation = "repair index"
    try:
        _repair_index(repo, rep, read_data=read_data, dry_run=dry_run, reporter=reporter,
                      lock=lock)
    finally:
        if own_lock is not None:
            own_lock.release()
    reporter.event("summary", **rep.as_dict())
    return rep


def _old_locations(repo: Repository) -> dict[str, list[BlobLocation]]:
    """What the current index says each pack holds (for salvaging unreadable trailers)."""
    arr = repo.index.arrays()
    out: dict[str, list[BlobLocation]] = {}
    for r in range(len(arr.ids)):
        pid = arr.packs[int(arr.pack[r])]
        out.setdefault(pid.hex(), []).append(BlobLocation(
            int(arr.type[r]), padded_id(arr.ids[r]), pid, int(arr.offset[r]),
            int(arr.length[r]), int(arr.raw[r])))
    return out


def _repair_index(
    repo: Repository, rep: RepairIndexReport, *, read_data: bool, dry_run: bool,
    reporter: Reporter, lock: ExclusiveLock | None,
) -> None:
    reporter.event("phase", name="scan-packs", read_data=read_data)
    old_names = sorted(layout.name_of(o.key) for o in repo.backend.list(layout.INDEX))
    repo.load_index()
    old = _old_locations(repo)
    infos = {layout.name_of(o.key): o for o in repo.backend.list(layout.DATA)}
    rep.packs = len(infos)
    for pack_hex in sorted(set(old) - set(infos)):
        rep.missing_packs.append(pack_hex)
        rep.blobs_lost.extend(loc.id.hex() for loc in old[pack_hex])
    results: dict[str, _PackResult] = {}
    done = 0
    mutex = threading.Lock()

    def one(pack_hex: str) -> None:
        nonlocal done
        res = _scan_pack(repo, pack_hex, infos[pack_hex], old.get(pack_hex, []), read_data)
        with mutex:
            results[pack_hex] = res
            done += 1
            reporter.progress(packs_done=done, packs_total=len(infos))

    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(one, sorted(infos)))

    good: dict[str, list[PackedBlob]] = {}
    for pack_hex in sorted(results):
        res = results[pack_hex]
        if res.blobs is not None:
            good[pack_hex] = res.blobs
        if res.damaged is not None:
            rep.damaged.append(res.damaged)
            rep.blobs_lost.extend(res.damaged.lost)
            reporter.event("damaged-pack", **res.damaged.as_dict())
    rep.packs_indexed = len(good)
    rep.blobs_indexed = sum(len(b) for b in good.values())
    if dry_run:
        rep.blobs_salvaged = sum(len(r.salvage) for r in results.values())
        return

    # Salvaged copies first (written and indexed by flush), then the new
    # index, then the deletions: a pack leaves every index before it goes.
    indexed_ids = {(b.type, b.id) for blobs in good.values() for b in blobs}
    for res in results.values():
        for blob_type, blob_id, plain in res.salvage:
            if (blob_type, blob_id) in indexed_ids:
                continue  # another, intact pack holds it too
            if repo.repack_blob(blob_type, blob_id, plain):
                rep.blobs_salvaged += 1
    repo.flush()
    reporter.event("phase", name="write-index")
    items = sorted(good.items())
    chunks: list[list[tuple[str, list[PackedBlob]]]] = [[]]
    count = 0
    for pack_hex, blobs in items:
        if count >= INDEX_TARGET_ENTRIES:
            chunks.append([])
            count = 0
        chunks[-1].append((pack_hex, blobs))
        count += len(blobs)
    for i, chunk in enumerate(chunks):
        pack_ids = [bytes.fromhex(p) for p, _ in chunk]
        entries = np.zeros(sum(len(b) for _, b in chunk), dtype=ENTRY_DTYPE)
        row = 0
        for pno, (_, blobs) in enumerate(chunk):
            for b in blobs:
                entries[row] = (b.id, pno, b.offset, b.length, b.raw_length, b.type, b"\0\0\0")
                row += 1
        # Only the last object (written after all the others) replaces the old
        # index, so a reader never sees the old one vanish before the new is whole.
        last = i == len(chunks) - 1
        if lock is not None:
            lock.check()
        repo.write_index_object(pack_ids, entries, supersedes=old_names if last else ())
        rep.index_written += 1
    if lock is not None:
        lock.check()
    for name in old_names:
        repo.delete_index_object(name)
        rep.index_removed += 1
    for d in rep.damaged:
        repo.backend.delete(layout.pack(d.pack))
    marks, bad = list_marks(repo)
    for m in marks:
        delete_mark(repo, m.id)
        rep.marks_cleared += 1
    for info in bad:
        repo.backend.delete(info.key)
        rep.marks_cleared += 1
    repo.load_index()


def _scan_pack(
    repo: Repository, pack_hex: str, info: ObjectInfo, old: list[BlobLocation], read_data: bool
) -> _PackResult:
    name = f"pack {pack_hex}"
    key = layout.pack(pack_hex)
    pack_id = bytes.fromhex(pack_hex)
    if not read_data:
        try:
            return _PackResult(blobs=read_trailer(repo, pack_hex, info.size))
        except (CorruptObject, UnsupportedVersion, BackendError) as e:
            error = str(e)
        try:
            data = repo.backend.get(key)
        except BackendError as e:
            return _PackResult(damaged=DamagedPack(pack_hex, f"{error}; {e}",
                                                   lost=[loc.id.hex() for loc in old],
                                                   lost_unknown=not old))
        return _salvage(repo, pack_hex, data, None, old, error)
    try:
        data = repo.backend.get(key)
    except BackendError as e:
        return _PackResult(damaged=DamagedPack(pack_hex, str(e), lost=[loc.id.hex() for loc in old],
                                               lost_unknown=not old))
    errors: list[str] = []
    try:
        verify_pack_bytes(data, pack_hex)
    except CorruptObject as e:
        errors.append(str(e))
    blobs: list[PackedBlob] | None = None
    try:
        tlen = trailer_length(data, name)
        blobs = parse_trailer(repo.sealer(), data[len(data) - 4 - tlen : len(data) - 4],
                              pack_size=len(data), name=name)
    except (CorruptObject, UnsupportedVersion) as e:
        errors.append(str(e))
    if blobs is not None and not errors:
        bad = []
        for b in blobs:
            loc = BlobLocation(b.type, b.id, pack_id, b.offset, b.length, b.raw_length)
            if not _readable(repo, loc, data):
                bad.append(b.id.hex())
        if not bad:
            return _PackResult(blobs=blobs)
        errors.append(f"{len(bad)} blob(s) fail authentication")
    return _salvage(repo, pack_hex, data, blobs, old, "; ".join(errors))


def _readable(repo: Repository, loc: BlobLocation, data: bytes) -> bool:
    try:
        plain = repo.open_blob(loc, data[loc.offset : loc.offset + loc.length])
    except (ResurgoError, ValueError):
        return False
    return repo.verify_blob_id(loc.id, plain)


def _salvage(
    repo: Repository, pack_hex: str, data: bytes, blobs: list[PackedBlob] | None,
    old: list[BlobLocation], error: str,
) -> _PackResult:
    """Copy out every blob of a damaged pack that still authenticates."""
    pack_id = bytes.fromhex(pack_hex)
    if blobs is not None:
        locs = [BlobLocation(b.type, b.id, pack_id, b.offset, b.length, b.raw_length) for b in blobs]
    else:
        locs = list(old)
    damaged = DamagedPack(pack_hex, error, lost_unknown=blobs is None and not old)
    res = _PackResult(damaged=damaged)
    for loc in locs:
        try:
            if loc.offset + loc.length > len(data):
                raise CorruptObject(f"blob {loc.id.hex()}", "beyond the end of the pack")
            plain = repo.open_blob(loc, data[loc.offset : loc.offset + loc.length])
            if not repo.verify_blob_id(loc.id, plain):
                raise CorruptObject(f"blob {loc.id.hex()}", "content does not match its ID")
        except (ResurgoError, ValueError):
            damaged.lost.append(loc.id.hex())
            continue
        res.salvage.append((loc.type, loc.id, plain))
        damaged.salvaged += 1
    return res


# --- snapshots -------------------------------------------------------------------------


@dataclass
class RepairedSnapshot:
    original: str
    new: str | None  # None in a dry run
    lost: list[str]  # paths (and "directory" markers) left out

    def as_dict(self) -> dict[str, Any]:
        return {"original": self.original, "new": self.new, "lost": self.lost}


@dataclass
class RepairSnapshotsReport:
    dry_run: bool = False
    snapshots: int = 0
    intact: int = 0
    repaired: list[RepairedSnapshot] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {id, error}
    removed: list[str] = field(default_factory=list)

    @property
    def lost_paths(self) -> int:
        return sum(len(r.lost) for r in self.repaired)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "snapshots": self.snapshots, "intact": self.intact,
                "repaired": [r.as_dict() for r in self.repaired], "unreadable": self.unreadable,
                "removed": self.removed, "lost_paths": self.lost_paths}


@dataclass
class _Fixed:
    tree: bytes | None  # the (new) tree ID; None: the tree itself is unreadable
    changed: bool
    lost: list[bytes]  # paths relative to this tree


class _TreeFixer:
    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo = repo
        self.dry_run = dry_run
        self.memo: dict[bytes, _Fixed] = {}
        self._empty: bytes | None = None

    def empty_tree(self) -> bytes:
        if self._empty is None:
            raw = encode_tree([])
            self._empty = (self.repo.blob_id(raw) if self.dry_run
                           else self.repo.save_blob(BlobType.TREE, raw)[0])
        return self._empty

    def fix(self, root: bytes) -> _Fixed:
        """Post-order over the trees under ``root``, iteratively (trees may be very deep)."""
        nodes_of: dict[bytes, list[Node]] = {}
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tree_id, expanded = stack.pop()
            if tree_id in self.memo:
                continue
            if not expanded:
                try:
                    nodes = load_tree(self.repo, tree_id)
                except (BlobNotFound, CorruptObject, UnsupportedVersion, BackendError):
                    self.memo[tree_id] = _Fixed(None, True, [])
                    continue
                nodes_of[tree_id] = nodes
                stack.append((tree_id, True))
                for n in nodes:
                    if n.type is NodeType.DIR and n.subtree is not None and n.subtree not in self.memo:
                        stack.append((n.subtree, False))
                continue
            self.memo[tree_id] = self._rebuild(tree_id, nodes_of.pop(tree_id))
        return self.memo[root]

    def _rebuild(self, tree_id: bytes, nodes: list[Node]) -> _Fixed:
        out: list[Node] = []
        lost: list[bytes] = []
        changed = False
        for n in nodes:
            if n.type is NodeType.FILE and not all(
                self.repo.has_blob(BlobType.DATA, b) for b in n.content
            ):
                lost.append(n.name)
                changed = True
                continue
            if n.type is NodeType.DIR and n.subtree is not None:
                sub = self.memo[n.subtree]
                if sub.tree is None:
                    n.subtree = self.empty_tree()
                    n.error = "directory lost: its tree could not be read (repair snapshots)"
                    lost.append(n.name + b"/")
                    changed = True
                elif sub.changed:
                    n.subtree = sub.tree
                    lost.extend(n.name + b"/" + p for p in sub.lost)
                    changed = True
            out.append(n)
        if not changed:
            return _Fixed(tree_id, False, [])
        raw = encode_tree(out)
        new = self.repo.blob_id(raw) if self.dry_run else self.repo.save_blob(BlobType.TREE, raw)[0]
        return _Fixed(new, True, lost)


def repair_snapshots(
    repo: Repository, *, forget: bool = False, dry_run: bool = False, reporter: Reporter = NULL
) -> RepairSnapshotsReport:
    """Rewrite snapshots that reference lost data (see the module docstring)."""
    rep = RepairSnapshotsReport(dry_run=dry_run)
    repo.session_operation = "repair snapshots"
    repo.load_index()
    fixer = _TreeFixer(repo, dry_run)
    ids = repo.list_objects(SNAPSHOTS)
    snaps: list[Snapshot] = []
    for sid in ids:
        try:
            snaps.append(load_snapshot(repo, sid))
        except ObjectNotFound:
            continue
        except ResurgoError as e:
            rep.unreadable.append({"id": sid, "error": str(e)})
            reporter.event("unreadable-snapshot", id=sid, error=str(e))
            if forget and not dry_run:
                repo.delete_object(SNAPSHOTS, sid)
                rep.removed.append(sid)
    snaps.sort(key=lambda s: (s.time_ns, s.id or ""))
    rep.snapshots = len(snaps) + len(rep.unreadable)
    for i, snap in enumerate(snaps):
        assert snap.id is not None
        fixed = fixer.fix(snap.tree)
        reporter.progress(snapshots_done=i + 1, snapshots_total=len(snaps))
        if not fixed.changed:
            rep.intact += 1
            continue
        lost = [p.decode("utf-8", "backslashreplace") for p in fixed.lost]
        if fixed.tree is None:
            lost = ["/ (the root directory)"]
        new_id: str | None = None
        if not dry_run:
            root = fixed.tree if fixed.tree is not None else fixer.empty_tree()
            repo.flush()
            new = Snapshot(
                time_ns=snap.time_ns, tree=root, paths=list(snap.paths), hostname=snap.hostname,
                username=snap.username, uid=snap.uid, gid=snap.gid, tags=list(snap.tags),
                parent=snap.parent, program_version=snap.program_version,
                excludes=list(snap.excludes), damaged=True,
                summary={**snap.summary, "repaired": {
                    "original": snap.id, "lost_paths": len(lost), "time": int(time.time())}},
            )
            new_id = save_snapshot(repo, new)
            if forget:
                repo.delete_object(SNAPSHOTS, snap.id)
                rep.removed.append(snap.id)
        rep.repaired.append(RepairedSnapshot(snap.id, new_id, lost))
        reporter.event("repaired-snapshot", original=snap.id, new=new_id, lost=len(lost))
    reporter.event("summary", **rep.as_dict())
    return rep
