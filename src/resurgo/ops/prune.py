"""prune: free the space of data no snapshot references, beside running backups.

Two phases (docs/design.md, "Prune beside running backups"):

* **mark**: load the index and every snapshot, find the index rows the trees
  reach (``ops.usage``), and classify packs: *unused* (no used blob),
  *unindexed* (in ``data/`` but in no index: left by a writer that died),
  *repack* (the unused share of its bytes exceeds ``max_unused``: its used
  blobs are copied into new packs through the normal write path), *young*
  (written while a backup that is still running was under way: left alone
  this time), or kept. The index objects naming dropped packs are rewritten
  without them (each replacement lists the objects it ``supersedes``) and the
  old ones deleted; then a *mark* records the *candidates* and the mark time.
* **sweep**: for a mark older than the grace period, once no live writer
  session started before the mark (stale sessions are removed), and after
  rescuing candidates that a snapshot written since the mark needs (they get
  an index object again), delete the candidate packs and the mark.

A prune run sweeps the marks that are due, then marks; with a grace period of
zero it also sweeps its own mark at once. Prunes exclude each other with the
exclusive lock (``repo.lock``); backups never wait for a prune.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import (
    BlobNotFound,
    CorruptObject,
    IntegrityError,
    ObjectNotFound,
    ResurgoError,
    UnsupportedVersion,
    UsageError,
)
from resurgo.ops.usage import UsageWalker
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobLocation, BlobType, Repository
from resurgo.repo.clock import Clock
from resurgo.repo.index import ENTRY_DTYPE, DecodedIndex, IndexArrays, MemoryIndex, padded_id
from resurgo.repo.lazynumpy import numpy
from resurgo.repo.lock import ExclusiveLock
from resurgo.repo.marks import MARKED, SWEEPING, PruneMark, delete_mark, list_marks, save_mark
from resurgo.repo.pack import PackedBlob
from resurgo.repo.sessions import SESSIONS, SessionInfo, SessionSettings, list_sessions
from resurgo.repo.verify import read_trailer
from resurgo.snapshot.store import SNAPSHOTS, load_snapshot

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy()

# Rewritten index objects hold at most about this many entries (52 bytes each).
INDEX_TARGET_ENTRIES = 1 << 18
# Index objects smaller than this are merged into bigger ones when rewriting.
INDEX_SMALL_ENTRIES = 1 << 12
# A session object that cannot be read blocks sweeps until it is this old.
UNREADABLE_SESSION_AGE = 3600.0


@dataclass(frozen=True)
class PruneOptions:
    """``max_unused``: repack a pack once this share of its bytes is unused (0..1).
    ``grace``: seconds a mark waits before its packs may be deleted.
    ``clock_skew``: the bound assumed on the difference between any two
    hosts' clocks (seconds). ``lock``: heartbeat and stale timeout of the
    exclusive lock (default: the repository's session settings).
    """

    max_unused: float = 0.10
    grace: float = 3600.0
    clock_skew: float = 300.0
    dry_run: bool = False
    lock: SessionSettings | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_unused <= 1:
            raise UsageError("--max-unused must be between 0% and 100%")
        if self.grace < 0 or self.clock_skew < 0:
            raise UsageError("the grace period and clock skew cannot be negative")


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    trees: int = 0
    blobs_total: int = 0
    blobs_used: int = 0
    packs_total: int = 0
    bytes_total: int = 0
    # mark phase
    mark_id: str | None = None
    packs_unused: int = 0
    bytes_unused: int = 0
    packs_unindexed: int = 0
    bytes_unindexed: int = 0
    packs_repack: int = 0
    bytes_repack: int = 0
    blobs_repacked: int = 0
    bytes_rewritten: int = 0
    packs_young: int = 0
    packs_missing_unused: int = 0
    index_written: int = 0
    index_removed: int = 0
    # sweep phase
    marks_swept: list[str] = field(default_factory=list)
    marks_waiting: list[dict[str, Any]] = field(default_factory=list)
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_rescued: int = 0
    packs_reindexed: int = 0
    sessions_removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_marked(self) -> int:
        """Bytes the mark phase set aside (freed by a sweep, less what repacking wrote)."""
        return self.bytes_unused + self.bytes_unindexed + self.bytes_repack

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["bytes_marked"] = self.bytes_marked
        return out


class _Prune:
    def __init__(self, repo: Repository, opts: PruneOptions, reporter: Reporter,
                 lock: ExclusiveLock | None) -> None:
        self.repo = repo
        self.opts = opts
        self.reporter = reporter
        self.lock = lock
        self.clock: Clock = (opts.lock or repo.session_settings).clock
        self.report = PruneReport(dry_run=opts.dry_run)
        self.accounted: list[str] = []
        self.rescued_in_mark: set[str] = set()
        self.host, self.pid = socket.gethostname(), os.getpid()

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)
        self.reporter.event("warning", message=message)

    def _check_lock(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def _own_session(self) -> str | None:
        s = self.repo.session
        return s.id if s is not None else None

    # -- sessions --------------------------------------------------------------------

    def _sessions(self) -> tuple[list[SessionInfo], list[ObjectInfo]]:
        """Live foreign sessions and unreadable session objects not yet old enough to drop.

        Stale sessions are removed here (not in a dry run): their writers have
        fenced themselves (repo/sessions.py).
        """
        now = self.clock.time()
        skew = self.opts.clock_skew
        own = self._own_session()
        sessions, bad = list_sessions(self.repo)
        live = []
        for s in sessions:
            if s.id == own:
                continue
            if s.stale(now, skew):
                self.report.sessions_removed.append(s.id)
                self.reporter.event("session-stale", id=s.id, writer=s.describe(),
                                    heartbeat=s.heartbeat)
                if not self.opts.dry_run:
                    self.repo.backend.delete(SESSIONS + s.id)
                continue
            live.append(s)
        unreadable = []
        for info in bad:
            if info.mtime is not None and now - info.mtime > UNREADABLE_SESSION_AGE + skew:
                if not self.opts.dry_run:
                    self.repo.backend.delete(info.key)
                continue
            unreadable.append(info)
            self.warn(f"unreadable writer session {info.key}: treated as a running writer")
        return live, unreadable

    # -- sweep ------------------------------------------------------------------------

    def sweep_due(self, *, only: str | None = None) -> None:
        marks, bad = list_marks(self.repo)
        for info in bad:
            # An unreadable mark cannot be swept; its packs are out of the index
            # and the next mark phase finds them as unindexed packs.
            self.warn(f"removing unreadable prune mark {info.key}")
            if not self.opts.dry_run:
                self._check_lock()
                self.repo.backend.delete(info.key)
        for mark in marks:
            if only is not None and mark.id != only:
                continue
            age = self.clock.time() - mark.time
            if age < self.opts.grace:
                self.report.marks_waiting.append({
                    "mark": mark.id, "packs": len(mark.candidates),
                    "reason": f"grace period: {self.opts.grace - age:.0f}s to go"})
                continue
            self.sweep(mark)

    def sweep(self, mark: PruneMark) -> None:
        repo, rep = self.repo, self.report
        self.reporter.event("phase", name="sweep", mark=mark.id, packs=len(mark.candidates))
        if not self.opts.dry_run:
            # Announce the sweep before looking at sessions: a writer starting
            # now either is seen below or sees this state (repository.py,
            # _check_not_pruned_underneath).
            self._check_lock()
            mark.state, mark.sweep_started = SWEEPING, self.clock.time()
            save_mark(repo, mark)
        live, unreadable = self._sessions()
        skew = self.opts.clock_skew
        blocking = [s for s in live if s.start <= mark.time + skew]
        if blocking or unreadable:
            who = [s.describe() for s in blocking] + [i.key for i in unreadable]
            rep.marks_waiting.append({
                "mark": mark.id, "packs": len(mark.candidates),
                "reason": "writers that started before the mark are still running: "
                + "; ".join(who)})
            if not self.opts.dry_run:
                mark.state, mark.sweep_started = MARKED, None
                save_mark(repo, mark)
            return
        if self.opts.dry_run:
            rep.marks_swept.append(mark.id)
            rep.packs_deleted += len(mark.candidates)
            rep.bytes_freed += sum(mark.candidates.values())
            return
        # Snapshots first, index second: a writer indexes its data before it
        # saves the snapshot, so every snapshot listed finds its blobs.
        snapshot_ids = repo.list_objects(SNAPSHOTS)
        repo.load_index()
        indexed = {p.hex() for p in repo.index.pack_ids()}
        candidates = {p: n for p, n in mark.candidates.items() if p not in indexed}
        # A candidate back in the index was indexed again since the mark (a
        # rescue, or a repair): it is referenced, so it stays.
        rep.packs_reindexed += len(mark.candidates) - len(candidates)
        ok = self._rescue(mark, candidates, snapshot_ids)
        if not ok:
            mark.state, mark.sweep_started = MARKED, None
            save_mark(repo, mark)
            return
        self._check_lock()
        for done, (pack_hex, size) in enumerate(sorted(candidates.items()), 1):
            repo.backend.delete(layout.pack(pack_hex))
            rep.packs_deleted += 1
            rep.bytes_freed += size
            self.reporter.progress(packs_deleted=done, packs_to_delete=len(candidates),
                                   bytes_freed=rep.bytes_freed)
        delete_mark(repo, mark.id)
        rep.marks_swept.append(mark.id)
        self.reporter.event("swept", mark=mark.id, packs=len(candidates),
                            bytes=sum(candidates.values()))

    def _rescue(self, mark: PruneMark, candidates: dict[str, int], snapshot_ids: list[str]
                ) -> bool:
        """Re-index candidates that snapshots written since the mark need.

        Removes rescued packs from ``candidates``. Returns False when a new
        snapshot cannot be fully read: then nothing may be deleted yet.
        """
        accounted = set(mark.snapshots)
        new = [sid for sid in snapshot_ids if sid not in accounted]
        if not new:
            return True
        # Any pack out of the index may hold what a new snapshot needs: this
        # mark's candidates, other marks', and packs orphaned by a crashed prune.
        indexed = {p.hex() for p in self.repo.index.pack_ids()}
        pending = _Candidates(self, {layout.name_of(o.key) for o in
                                     self.repo.backend.list(layout.DATA)} - indexed)
        try:
            walker = self._walk(self.repo.index.arrays(), new, pending)
        except ResurgoError as e:
            self.warn(f"sweep postponed: a snapshot written since the mark cannot be fully "
                      f"read ({e}); run 'resurgo check'")
            return False
        lost = pending.resolve(walker)
        if lost:
            self.warn(f"{lost} blob(s) referenced by new snapshots are in no pack; "
                      "run 'resurgo check'")
        for pack_hex in sorted(pending.rescued):
            pending.reindex(pack_hex)
            candidates.pop(pack_hex, None)
        return True

    def _walk(self, arr: IndexArrays, snapshot_ids: list[str], pending: _Candidates
              ) -> UsageWalker:
        """Walk the snapshots' trees; trees missing from the index are looked for in
        ``pending`` (packs out of the index, not deleted yet). Raises ``ResurgoError``
        for a snapshot or tree that cannot be read."""
        repo = self.repo

        def load_tree(tree_id: bytes) -> bytes:
            try:
                return repo.load_blob(BlobType.TREE, tree_id)
            except BlobNotFound:
                return pending.load_tree(tree_id)

        walker = UsageWalker(arr, load_tree)
        self.accounted = []
        for i, sid in enumerate(snapshot_ids):
            try:
                snap = load_snapshot(repo, sid)
            except ObjectNotFound:
                continue  # forgotten meanwhile
            walker.walk(snap.tree)
            self.accounted.append(sid)
            self.reporter.progress(snapshots_done=i + 1, snapshots_total=len(snapshot_ids),
                                   trees_done=walker.trees)
        walker.finish()
        return walker

    # -- mark -------------------------------------------------------------------------

    def mark(self) -> None:
        repo, rep, opts = self.repo, self.report, self.opts
        self.reporter.event("phase", name="mark")
        # Snapshots are listed before the index is loaded (see sweep).
        snapshot_ids = repo.list_objects(SNAPSHOTS)
        repo.load_index()
        if repo.index_problems:
            raise IntegrityError(
                f"{len(repo.index_problems)} index object(s) cannot be read; prune would take "
                "their packs for unreferenced ones. Run 'resurgo repair index' first")
        loaded_index = sorted(repo.index_ids)
        leftover_index = sorted(repo.index_superseded)
        arr = repo.index.arrays()
        live, unreadable = self._sessions()
        marks, _ = list_marks(repo)
        already = {p for m in marks for p in m.candidates}
        infos = {layout.name_of(o.key): o for o in repo.backend.list(layout.DATA)}
        in_index = {p.hex() for p in repo.index.pack_ids()}
        accounted, walker = self._walk_snapshots(arr, snapshot_ids, set(infos) - in_index)
        already |= self.rescued_in_mark  # indexed again just now: not garbage

        # A pack written after the oldest running writer began may hold data
        # of a snapshot not saved yet: leave it for a later prune.
        young_after = min((s.start for s in live), default=None)
        if unreadable:
            young_after = float("-inf")
        if young_after is not None:
            young_after -= opts.clock_skew

        def young(pack_hex: str) -> bool:
            if young_after is None:
                return False
            mtime = infos[pack_hex].mtime
            return mtime is None or mtime >= young_after

        npacks = len(arr.packs)
        pno = arr.pack.astype(np.int64)
        length = arr.length.astype(np.int64)
        used = walker.used
        total_n = np.bincount(pno, minlength=npacks)
        used_n = np.bincount(pno[used], minlength=npacks)
        total_b = np.bincount(pno, weights=length, minlength=npacks)
        used_b = np.bincount(pno[used], weights=length[used], minlength=npacks)
        rep.blobs_total, rep.blobs_used = len(arr.ids), int(used.sum())
        rep.packs_total = len(infos)
        rep.bytes_total = sum(o.size for o in infos.values())

        candidates: dict[str, int] = {}
        repack: list[int] = []
        dropped: set[str] = set()
        indexed: set[str] = set()
        for k in range(npacks):
            if total_n[k] == 0:
                continue
            pack_hex = arr.packs[k].hex()
            indexed.add(pack_hex)
            if pack_hex not in infos:
                if used_n[k]:
                    raise IntegrityError(
                        f"pack {pack_hex} holds {used_n[k]} blob(s) that snapshots use, and it "
                        "is missing. Run 'resurgo check' and 'resurgo repair'")
                dropped.add(pack_hex)
                rep.packs_missing_unused += 1
                continue
            if young(pack_hex):
                rep.packs_young += 1
                continue
            size = infos[pack_hex].size
            if used_n[k] == 0:
                candidates[pack_hex] = size
                rep.packs_unused += 1
                rep.bytes_unused += size
            elif (total_b[k] - used_b[k]) > opts.max_unused * total_b[k]:
                repack.append(k)
                rep.packs_repack += 1
                rep.bytes_repack += size
        for pack_hex, info in sorted(infos.items()):
            if pack_hex in indexed or pack_hex in already:
                continue
            if young(pack_hex):
                rep.packs_young += 1
                continue
            candidates[pack_hex] = info.size
            rep.packs_unindexed += 1
            rep.bytes_unindexed += info.size
        self.reporter.event("marked", unused=rep.packs_unused, unindexed=rep.packs_unindexed,
                            repack=rep.packs_repack, young=rep.packs_young)
        if opts.dry_run:
            rep.blobs_repacked = int(sum(used_n[k] for k in repack))
            return
        repacked = self._repack(arr, used, repack)
        for pack_hex in repacked:
            candidates[pack_hex] = infos[pack_hex].size
        dropped |= {p for p in candidates if p in indexed}
        self._rewrite_index(loaded_index, leftover_index, dropped)
        if not candidates:
            return
        self._check_lock()
        mark = PruneMark(time=self.clock.time(), candidates=candidates, snapshots=accounted,
                         repacked=sorted(repacked), host=self.host, pid=self.pid)
        save_mark(repo, mark)
        rep.mark_id = mark.id
        self.reporter.event("mark-written", mark=mark.id, packs=len(candidates),
                            bytes=sum(candidates.values()))

    def _walk_snapshots(self, arr: IndexArrays, ids: list[str], pending_packs: set[str]
                        ) -> tuple[list[str], UsageWalker]:
        """Used rows for every snapshot; refuses (``IntegrityError``) on damage.

        Blobs found only in packs out of the index (an earlier mark's candidates,
        or packs a crashed prune left unmarked: a snapshot saved since
        deduplicated against them) are not damage: those packs get an index
        object again (a rescue), so a sweep keeps them.
        """
        pending = _Candidates(self, pending_packs)
        try:
            walker = self._walk(arr, ids, pending)
        except (BlobNotFound, CorruptObject, UnsupportedVersion) as e:
            raise IntegrityError(
                f"a snapshot references a tree that cannot be read ({e}). "
                "Run 'resurgo check', then 'resurgo repair'")
        except ResurgoError as e:
            raise IntegrityError(
                f"a snapshot cannot be read ({e}); prune needs every snapshot. "
                "Run 'resurgo check', then 'resurgo repair snapshots --forget'")
        missing = pending.resolve(walker)
        if missing:
            raise IntegrityError(
                f"{missing} blob(s) referenced by snapshots are not in the index. Run "
                "'resurgo check', then 'resurgo repair index' (and 'repair snapshots')")
        if not self.opts.dry_run:
            for pack_hex in sorted(pending.rescued):
                pending.reindex(pack_hex)
        self.rescued_in_mark = set(pending.rescued)
        self.report.snapshots = len(self.accounted)
        self.report.trees = walker.trees
        return list(self.accounted), walker

    def _repack(self, arr: IndexArrays, used: np.ndarray, packs: list[int]) -> list[str]:
        """Copy the used blobs of ``packs`` into new packs; returns the packs fully copied."""
        if not packs:
            return []
        repo, rep = self.repo, self.report
        self.reporter.event("phase", name="repack", packs=len(packs))
        order = np.argsort(arr.pack, kind="stable")
        sorted_pack = arr.pack[order]
        done: list[str] = []
        before = repo.stats_added["bytes_stored"]
        index_before = set(repo.index_ids)
        for i, k in enumerate(packs):
            lo, hi = np.searchsorted(sorted_pack, [k, k + 1])
            rows = [int(r) for r in order[lo:hi] if used[r]]
            pack_id = arr.packs[k]
            try:
                data = repo.backend.get(layout.pack(pack_id.hex()))
                for r in rows:
                    loc = BlobLocation(int(arr.type[r]), padded_id(arr.ids[r]),
                                       pack_id, int(arr.offset[r]), int(arr.length[r]),
                                       int(arr.raw[r]))
                    plain = repo.open_blob(loc, data[loc.offset : loc.offset + loc.length])
                    if repo.repack_blob(loc.type, loc.id, plain):
                        rep.blobs_repacked += 1
            except ResurgoError as e:
                # The pack stays as it is: whatever could not be copied is
                # still where the index says.
                self.warn(f"cannot repack pack {pack_id.hex()}: {e}")
                continue
            done.append(pack_id.hex())
            self.reporter.progress(packs_repacked=i + 1, packs_to_repack=len(packs))
        repo.flush()
        rep.bytes_rewritten = repo.stats_added["bytes_stored"] - before
        # Belt and braces: a pack counts as repacked only if every blob it held
        # for a snapshot is in the index objects this repack just wrote.
        copied: set[tuple[int, bytes]] = set()
        for d in repo.fetch_index_objects(sorted(repo.index_ids - index_before)).values():
            if isinstance(d, str):
                continue
            copied.update((int(t), padded_id(i))
                          for t, i in zip(d.entries["type"], d.entries["id"], strict=True))
        for k in packs:
            pack_id = arr.packs[k]
            if pack_id.hex() not in done:
                continue
            lo, hi = np.searchsorted(sorted_pack, [k, k + 1])
            for r in order[lo:hi]:
                if used[r] and (int(arr.type[r]), padded_id(arr.ids[r])) not in copied:
                    self.warn(f"pack {pack_id.hex()} kept: a blob it holds was not copied")
                    done.remove(pack_id.hex())
                    break
        return done

    def _rewrite_index(self, loaded: list[str], leftovers: list[str], dropped: set[str]) -> None:
        """Replace the index objects naming ``dropped`` packs (and small ones) without them.

        Each new object lists in ``supersedes`` exactly the old objects whose
        remaining entries it carries; the old ones are deleted only after it
        is durable, so every reader sees each entry at least once until it is
        meant to disappear.
        """
        repo, rep = self.repo, self.report
        group_packs: list[bytes] = []
        group_no: dict[bytes, int] = {}
        group_entries: list[np.ndarray] = []
        group_names: list[str] = []
        group_count = 0
        to_delete: list[str] = list(leftovers)

        def write_group() -> None:
            nonlocal group_packs, group_no, group_entries, group_names, group_count
            if group_names:
                if group_count:
                    self._check_lock()
                    repo.write_index_object(group_packs, np.concatenate(group_entries),
                                            supersedes=group_names)
                    rep.index_written += 1
                to_delete.extend(group_names)
            group_packs, group_no, group_entries, group_names, group_count = [], {}, [], [], 0

        for start in range(0, len(loaded), 16):
            batch = loaded[start : start + 16]
            found = repo.fetch_index_objects(batch)
            for name in batch:
                d = found[name]
                if isinstance(d, str):
                    self.warn(f"index object {name} became unreadable; left as it is: {d}")
                    continue
                drop = np.array([p.hex() in dropped for p in d.pack_ids], dtype=bool)
                if not drop.any() and len(d.entries) >= INDEX_SMALL_ENTRIES:
                    continue
                ents = _without_packs(d, drop)
                if len(ents):
                    mapping = np.zeros(len(d.pack_ids), dtype="<u4")
                    for j in np.unique(ents["pack"]):
                        pid = d.pack_ids[int(j)]
                        if pid not in group_no:
                            group_no[pid] = len(group_packs)
                            group_packs.append(pid)
                        mapping[int(j)] = group_no[pid]
                    ents["pack"] = mapping[ents["pack"]]
                    group_entries.append(ents)
                    group_count += len(ents)
                group_names.append(name)
                if group_count >= INDEX_TARGET_ENTRIES:
                    write_group()
        write_group()
        if to_delete:
            self._check_lock()
        for name in to_delete:
            repo.delete_index_object(name)
            rep.index_removed += 1


class _Candidates:
    """Packs that left the index but still exist (marked), read through their trailers.

    Records which of them a walk needed (``rescued``); ``reindex`` gives such a
    pack an index object again.
    """

    def __init__(self, prune: _Prune, packs: set[str]) -> None:
        self.prune = prune
        self.packs = packs
        self.rescued: set[str] = set()
        self._index: MemoryIndex | None = None
        self._blobs: dict[str, list[PackedBlob]] = {}

    def index(self) -> MemoryIndex:
        if self._index is None:
            repo = self.prune.repo
            self._index = MemoryIndex()
            if self.packs:
                sizes = {layout.name_of(o.key): o.size for o in repo.backend.list(layout.DATA)}
                for pack_hex in sorted(self.packs & sizes.keys()):
                    try:
                        blobs = read_trailer(repo, pack_hex, sizes[pack_hex])
                    except (ResurgoError, ValueError) as e:
                        self.prune.warn(f"cannot read marked pack {pack_hex}: {e}")
                        continue
                    self._blobs[pack_hex] = blobs
                    pid = bytes.fromhex(pack_hex)
                    for b in blobs:
                        self._index.add(b.type, b.id, pid, b.offset, b.length, b.raw_length)
        return self._index

    def load_tree(self, tree_id: bytes) -> bytes:
        loc = self.index().lookup(BlobType.TREE, tree_id)
        if loc is None:
            raise BlobNotFound(f"tree blob {tree_id.hex()} is not in the index")
        self.rescued.add(loc.pack_hex)
        repo = self.prune.repo
        return repo.open_blob(loc, repo.read_pack_range(loc.pack_id, loc.offset, loc.length))

    def resolve(self, walker: UsageWalker) -> int:
        """Find the walk's missing data blobs here; returns how many are nowhere."""
        lost = 0
        for blob_id in walker.missing[BlobType.DATA]:
            loc = self.index().lookup(BlobType.DATA, blob_id) if self.packs else None
            if loc is None:
                lost += 1
            else:
                self.rescued.add(loc.pack_hex)
        # Trees reached through ``load_tree`` are missing from the index too,
        # but were found (or the walk raised).
        return lost

    def reindex(self, pack_hex: str) -> None:
        self.prune._check_lock()
        blobs = self._blobs[pack_hex]
        entries = np.zeros(len(blobs), dtype=ENTRY_DTYPE)
        for i, b in enumerate(blobs):
            entries[i] = (b.id, 0, b.offset, b.length, b.raw_length, b.type, b"\0\0\0")
        self.prune.repo.write_index_object([bytes.fromhex(pack_hex)], entries)
        self.prune.report.packs_rescued += 1
        self.prune.reporter.event("rescued", pack=pack_hex,
                                  reason="a snapshot saved since it was marked needs it")


def _without_packs(d: DecodedIndex, drop: np.ndarray) -> np.ndarray:
    if not len(d.entries):
        return np.zeros(0, dtype=ENTRY_DTYPE)
    keep = ~drop[d.entries["pack"]]
    return np.array(d.entries[keep], dtype=ENTRY_DTYPE)


def prune(
    repo: Repository,
    opts: PruneOptions | None = None,
    *,
    reporter: Reporter = NULL,
    lock: ExclusiveLock | None = None,
) -> PruneReport:
    """Sweep the marks that are due, mark what is unused now, sweep again if the grace is 0.

    Takes the exclusive lock (``RepositoryLocked`` if another prune holds it)
    unless ``lock`` is given (already held) or this is a dry run, which
    writes nothing at all. Raises ``IntegrityError`` (nothing deleted) when
    the repository is damaged in a way that would make unused data look like
    used data or the reverse.
    """
    opts = opts or PruneOptions()
    own_lock = None
    if not opts.dry_run and lock is None:
        own_lock = lock = ExclusiveLock(repo, operation="prune",
                                        settings=opts.lock or repo.session_settings,
                                        skew=opts.clock_skew)
        lock.acquire()
    repo.session_operation = "prune"
    p = _Prune(repo, opts, reporter, lock)
    try:
        p.sweep_due()
        p.mark()
        if p.report.mark_id is not None and opts.grace <= 0:
            p.sweep_due(only=p.report.mark_id)
    finally:
        if own_lock is not None:
            own_lock.release()
    reporter.event("summary", **p.report.as_dict())
    return p.report

