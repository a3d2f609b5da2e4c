"""prune at the API level, with a fake clock: mark and sweep rules, repack, rescue,
writer sessions, locks and dry runs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from resurgo.backend import ObjectInfo, layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import EXIT_LOCKED, InjectedFault, IntegrityError, RepositoryLocked
from resurgo.ops.check import check_repository
from resurgo.ops.prune import PruneOptions, prune
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.index import ENTRY_DTYPE
from resurgo.repo.lock import LOCK_KEY, ExclusiveLock, read_lock
from resurgo.repo.marks import SWEEPING, list_marks, save_mark
from resurgo.repo.sessions import SESSIONS, SessionLost, SessionSettings
from resurgo.snapshot.model import Node, NodeType, Snapshot, encode_tree
from resurgo.snapshot.store import SNAPSHOTS, load_snapshot, save_snapshot, walk_tree
from resurgo.testing.clock import FakeClock

PASSWORD = "pw"
STALE = 600.0
CHUNK = 2048


class FakeTimeBackend(MemoryBackend):
    """A memory backend whose objects' modification times come from the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        super().put(key, data, create_only=create_only)
        with self._lock:
            self._objects[key] = (self._objects[key][0], self.clock.time())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    b = FakeTimeBackend(clock)
    Repository.init(b, PASSWORD, params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests())
    return b


def settings(clock: FakeClock) -> SessionSettings:
    return SessionSettings(heartbeat_interval=None, stale_timeout=STALE, clock=clock)


def open_repo(backend, clock: FakeClock, cache_dir: Path | None = None) -> Repository:
    return Repository.open(backend, PASSWORD, sessions=settings(clock), cache_dir=cache_dir)


def opts(clock: FakeClock, **kw) -> PruneOptions:
    kw.setdefault("grace", 3600.0)
    kw.setdefault("clock_skew", 0.0)
    return PruneOptions(lock=settings(clock), **kw)


def run_prune(backend, clock: FakeClock, **kw):
    """One prune run, as its own process would do it: open, prune, close."""
    repo = open_repo(backend, clock)
    try:
        return prune(repo, opts(clock, **kw))
    finally:
        repo.close()


def rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def save_file(repo: Repository, name: bytes, data: bytes) -> Node:
    ids = [repo.save_blob(BlobType.DATA, data[i : i + CHUNK])[0] for i in range(0, len(data), CHUNK)]
    return Node(name=name, type=NodeType.FILE, mode=0o644, size=len(data), content=ids)


def make_snapshot(repo: Repository, files: dict[bytes, bytes], *, host: str = "h",
                  when: float | None = None) -> str:
    nodes = [save_file(repo, name, data) for name, data in files.items()]
    tree = repo.save_blob(BlobType.TREE, encode_tree(nodes))[0]
    repo.flush()
    t = when if when is not None else time.time()
    return save_snapshot(repo, Snapshot(time_ns=int(t * 1e9), tree=tree, paths=["/d"],
                                        hostname=host))


def contents(repo: Repository, snap_id: str) -> dict[bytes, bytes]:
    snap = load_snapshot(repo, snap_id)
    return {p: b"".join(repo.load_blob(BlobType.DATA, b) for b in n.content)
            for p, n in walk_tree(repo, snap.tree) if n.type is NodeType.FILE}


def packs(backend) -> set[str]:
    return {layout.name_of(o.key) for o in backend.list(layout.DATA)}


def pack_of(repo: Repository, blob_id: bytes) -> str:
    loc = repo.lookup(BlobType.DATA, blob_id)
    assert loc is not None
    return loc.pack_hex


def clean(repo: Repository) -> None:
    """check --read-data finds nothing; unused packs are only those a mark waits to delete."""
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    marked = {p for m in list_marks(repo)[0] for p in m.candidates}
    assert set(report.unused_packs) <= marked


@dataclass
class World:
    repo: Repository  # open, no writes yet
    a: str  # forgotten
    b: str
    expected_b: dict[bytes, bytes]
    a_only: set[bytes]  # data blobs only A referenced


@pytest.fixture
def two_snapshots(backend, clock) -> World:
    """Snapshot A (files a, shared) and B (files b, shared); A is then forgotten."""
    repo = open_repo(backend, clock)
    shared = rand(1, 20_000)
    a = make_snapshot(repo, {b"a": rand(2, 30_000), b"shared": shared})
    b = make_snapshot(repo, {b"b": rand(3, 30_000), b"shared": shared})
    expected_b = contents(repo, b)
    a_only = {n.content[0] for p, n in walk_tree(repo, load_snapshot(repo, a).tree) if p == b"a"}
    repo.close()
    clock.advance(60)
    repo = open_repo(backend, clock)
    repo.delete_object(SNAPSHOTS, a)
    return World(repo, a, b, expected_b, a_only)


# --- mark and sweep -----------------------------------------------------------------


def test_prune_marks_unused_packs_and_deletes_them_only_after_the_grace_period(
        backend, clock, two_snapshots):
    repo = two_snapshots.repo
    b = two_snapshots.b
    expected_b = two_snapshots.expected_b
    a_only = two_snapshots.a_only
    blob = next(iter(a_only))
    victim = pack_of(repo, blob)
    first = run_prune(backend, clock)
    assert first.mark_id is not None and first.packs_deleted == 0
    assert victim in packs(backend)  # marked, not deleted
    fresh = open_repo(backend, clock)
    assert not fresh.has_blob(BlobType.DATA, blob)  # but out of the index
    assert contents(fresh, b) == expected_b

    clock.advance(1800)
    second = run_prune(backend, clock)
    assert second.packs_deleted == 0
    assert [w["mark"] for w in second.marks_waiting] == [first.mark_id]
    assert "grace" in second.marks_waiting[0]["reason"]
    assert victim in packs(backend)

    clock.advance(1801)
    third = run_prune(backend, clock)
    assert first.mark_id in third.marks_swept
    assert victim not in packs(backend)
    assert third.bytes_freed > 0
    assert list_marks(repo)[0] == []
    fresh = open_repo(backend, clock)
    assert contents(fresh, b) == expected_b
    clean(fresh)


def test_prune_with_zero_grace_sweeps_its_own_mark_in_the_same_run(backend, clock, two_snapshots):
    repo = two_snapshots.repo
    b = two_snapshots.b
    expected_b = two_snapshots.expected_b
    a_only = two_snapshots.a_only
    victim = pack_of(repo, next(iter(a_only)))
    r = run_prune(backend, clock, grace=0)
    assert r.mark_id in r.marks_swept and r.packs_deleted >= 1
    assert victim not in packs(backend)
    fresh = open_repo(backend, clock)
    assert contents(fresh, b) == expected_b
    clean(fresh)


def test_prune_of_a_repository_without_garbage_marks_nothing(backend, clock):
    repo = open_repo(backend, clock)
    s = make_snapshot(repo, {b"x": rand(5, 40_000)})
    before = packs(backend)
    r = run_prune(backend, clock, grace=0)
    assert r.mark_id is None and r.packs_deleted == 0
    assert packs(backend) == before
    assert contents(open_repo(backend, clock), s) == {b"x": rand(5, 40_000)}


def test_dry_run_changes_nothing(backend, clock, two_snapshots):
    run_prune(backend, clock)  # a mark that will be due
    clock.advance(7200)
    before = {o.key: backend.get(o.key) for o in backend.list()}
    r = run_prune(backend, clock, dry_run=True)
    after = {o.key: backend.get(o.key) for o in backend.list()}
    assert after == before
    assert r.dry_run and r.marks_swept and r.packs_deleted >= 1 and r.bytes_freed > 0


def test_dry_run_reports_what_the_mark_phase_would_free(backend, clock, two_snapshots):
    before = {o.key: backend.get(o.key) for o in backend.list()}
    dry = run_prune(backend, clock, dry_run=True)
    assert {o.key: backend.get(o.key) for o in backend.list()} == before
    real = run_prune(backend, clock)
    assert (dry.packs_unused, dry.packs_repack, dry.bytes_marked) == (
        real.packs_unused, real.packs_repack, real.bytes_marked)
    assert dry.bytes_marked > 0


# --- repack -----------------------------------------------------------------------------


def test_mostly_unused_pack_is_repacked_and_its_used_blobs_survive(backend, clock):
    repo = open_repo(backend, clock)
    keep = rand(10, 1500)  # one chunk each, all in the same data pack
    drop = rand(11, 60_000)
    a = make_snapshot(repo, {b"keep": keep, b"drop": drop})
    b = make_snapshot(repo, {b"keep": keep})
    old_pack = pack_of(repo, repo.blob_id(keep))
    repo.delete_object(SNAPSHOTS, a)
    repo.close()  # a writer still running would make its packs too young to touch
    r = run_prune(backend, clock, grace=0, max_unused=0.10)
    assert r.packs_repack >= 1 and r.blobs_repacked >= 1
    assert old_pack not in packs(backend)
    fresh = open_repo(backend, clock)
    assert pack_of(fresh, repo.blob_id(keep)) != old_pack
    assert contents(fresh, b) == {b"keep": keep}
    clean(fresh)


def test_max_unused_of_100_percent_never_repacks(backend, clock):
    repo = open_repo(backend, clock)
    keep = rand(12, 1500)
    a = make_snapshot(repo, {b"keep": keep, b"drop": rand(13, 60_000)})
    make_snapshot(repo, {b"keep": keep})
    old_pack = pack_of(repo, repo.blob_id(keep))
    repo.delete_object(SNAPSHOTS, a)
    repo.close()
    r = run_prune(backend, clock, grace=0, max_unused=1.0)
    assert r.packs_repack == 0
    assert old_pack in packs(backend)
    clean(open_repo(backend, clock))


# --- concurrent writers ------------------------------------------------------------------


def test_candidate_deduplicated_by_a_snapshot_written_since_the_mark_is_rescued(
        backend, clock, two_snapshots):
    repo = two_snapshots.repo
    b = two_snapshots.b
    expected_b = two_snapshots.expected_b
    a_only = two_snapshots.a_only
    blob = next(iter(a_only))
    victim = pack_of(repo, blob)
    a_data = rand(2, 30_000)
    # A writer that began before the mark: its index still lists A's blobs.
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"this writer has started")
    r1 = run_prune(backend, clock)
    assert r1.mark_id
    node = save_file(writer, b"a-again", a_data)  # deduplicated against the candidate
    assert writer.has_blob(BlobType.DATA, blob)
    tree = writer.save_blob(BlobType.TREE, encode_tree([node]))[0]
    writer.flush()
    w_snap = save_snapshot(writer, Snapshot(time_ns=time.time_ns(), tree=tree, paths=["/w"]))
    writer.close()

    clock.advance(3601)
    r2 = run_prune(backend, clock)
    assert r2.packs_rescued >= 1
    assert victim in packs(backend)
    fresh = open_repo(backend, clock)
    assert contents(fresh, w_snap) == {b"a-again": a_data}
    assert contents(fresh, b) == expected_b
    clean(fresh)


def test_sweep_waits_for_a_live_writer_that_started_before_the_mark(backend, clock, two_snapshots):
    repo = two_snapshots.repo
    a_only = two_snapshots.a_only
    victim = pack_of(repo, next(iter(a_only)))
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"a long backup")
    r1 = run_prune(backend, clock)
    for _ in range(60):  # two hours of heartbeats
        clock.advance(120)
        assert writer.session is not None and writer.session.heartbeat()
    r2 = run_prune(backend, clock)
    assert r2.packs_deleted == 0 and victim in packs(backend)
    waiting = {w["mark"]: w["reason"] for w in r2.marks_waiting}
    assert "still running" in waiting[r1.mark_id]
    writer.close()
    r3 = run_prune(backend, clock)
    assert r1.mark_id in r3.marks_swept and victim not in packs(backend)


def test_stale_writer_session_is_removed_and_its_writer_refuses_to_save(
        backend, clock, two_snapshots):
    repo = two_snapshots.repo
    b = two_snapshots.b
    expected_b = two_snapshots.expected_b
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"stalled writer")
    sid = writer.session.id if writer.session else ""
    run_prune(backend, clock)
    clock.advance(STALE + 3601)  # the writer stalled: no heartbeat since
    r = run_prune(backend, clock)
    assert sid in r.sessions_removed and r.packs_deleted >= 1
    assert not list(backend.list(SESSIONS + sid))
    snaps_before = repo.list_objects(SNAPSHOTS)
    with pytest.raises(SessionLost):
        writer.flush()
    with pytest.raises(SessionLost):
        writer.save_object(SNAPSHOTS, b"{}")
    assert repo.list_objects(SNAPSHOTS) == snaps_before
    # What the fenced writer uploaded before it stopped is garbage for the next prune.
    run_prune(backend, clock, grace=0)
    fresh = open_repo(backend, clock)
    assert contents(fresh, b) == expected_b
    clean(fresh)


def test_writer_whose_session_object_vanished_refuses_to_save_a_snapshot(backend, clock):
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"x" * 100)
    assert writer.session is not None
    backend.delete(writer.session.key)  # removed by a prune that misjudged the clocks
    with pytest.raises(SessionLost):
        writer.save_object(SNAPSHOTS, b"{}")
    assert writer.list_objects(SNAPSHOTS) == []
    assert not writer.session.heartbeat()  # and it is not resurrected


def test_heartbeat_that_takes_too_long_does_not_extend_the_session(backend, clock):
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"y" * 100)
    s = writer.session
    assert s is not None

    class Slow:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def put(self, key, data, *, create_only=False):
            clock.advance(STALE / 4 + 1)
            self.inner.put(key, data, create_only=create_only)

    writer.backend = Slow(backend)  # type: ignore[assignment]
    clock.advance(100)
    assert not s.heartbeat()
    clock.advance(STALE / 2 - 100 - STALE / 4)
    with pytest.raises(SessionLost):
        s.check("save a snapshot")


def test_writer_opened_before_a_completed_sweep_refuses_its_first_write(
        backend, clock, two_snapshots):
    a_only = two_snapshots.a_only
    late = open_repo(backend, clock)  # loads the index with A's blobs, writes nothing yet
    blob = next(iter(a_only))
    assert late.has_blob(BlobType.DATA, blob)
    r = run_prune(backend, clock, grace=0)
    assert r.packs_deleted >= 1
    with pytest.raises(SessionLost):
        late.save_blob(BlobType.DATA, b"first write")
    assert not list(backend.list(SESSIONS))


def test_writer_opened_before_a_mark_reloads_the_index_at_its_first_write(
        backend, clock, two_snapshots):
    a_only = two_snapshots.a_only
    late = open_repo(backend, clock)
    blob = next(iter(a_only))
    run_prune(backend, clock)  # mark only
    late.save_blob(BlobType.DATA, b"first write")  # the candidates still exist: fine
    assert not late.has_blob(BlobType.DATA, blob)
    _, added = late.save_blob(BlobType.DATA, rand(2, 30_000)[:CHUNK])
    assert added  # never deduplicated against a candidate


def test_a_sweep_in_progress_makes_a_starting_writer_refuse(backend, clock, two_snapshots):
    repo = two_snapshots.repo
    late = open_repo(backend, clock)
    r = run_prune(backend, clock)
    marks, _ = list_marks(repo)
    mark = marks[0]
    assert mark.id == r.mark_id
    mark.state = SWEEPING
    save_mark(repo, mark)
    with pytest.raises(SessionLost):
        late.save_blob(BlobType.DATA, b"first write")


def test_writer_opened_after_the_mark_does_not_deduplicate_against_candidates(
        backend, clock, two_snapshots, tmp_path):
    a_only = two_snapshots.a_only
    blob = next(iter(a_only))
    cached = open_repo(backend, clock, cache_dir=tmp_path)  # the cache now holds A's blobs
    assert cached.has_blob(BlobType.DATA, blob)
    run_prune(backend, clock)
    again = open_repo(backend, clock, cache_dir=tmp_path)
    assert not again.has_blob(BlobType.DATA, blob)


def test_superseded_index_objects_are_ignored_even_when_not_yet_deleted(backend, clock, tmp_path):
    repo = open_repo(backend, clock)
    make_snapshot(repo, {b"x": rand(20, 10_000)})
    gone = rand(21, 1500)
    gid = repo.save_blob(BlobType.DATA, gone)[0]
    repo.flush()
    reader = open_repo(backend, clock, cache_dir=tmp_path)  # caches every entry
    assert reader.has_blob(BlobType.DATA, gid)
    names = sorted(reader.index_ids)
    arr = reader.fetch_index_objects(names)
    # A prune that crashed after writing the replacement, before deleting the old ones:
    pack_ids: list[bytes] = []
    parts = []
    for d in arr.values():
        assert not isinstance(d, str)
        keep = d.entries[d.entries["id"] != np.array(gid, dtype="S32")]
        e = np.array(keep, dtype=ENTRY_DTYPE)
        e["pack"] += len(pack_ids)
        pack_ids += d.pack_ids
        parts.append(e)
    repo.write_index_object(pack_ids, np.concatenate(parts), supersedes=names)
    assert set(names) <= {layout.name_of(o.key) for o in backend.list(layout.INDEX)}
    for cache in (tmp_path, None):
        fresh = open_repo(backend, clock, cache_dir=cache)
        assert not fresh.has_blob(BlobType.DATA, gid)
        assert fresh.has_blob(BlobType.DATA, repo.blob_id(rand(20, 10_000)[:CHUNK]))
        assert set(names) == fresh.index_superseded


def test_unindexed_packs_of_a_running_writer_are_left_alone_until_it_is_stale(backend, clock):
    repo = open_repo(backend, clock)
    make_snapshot(repo, {b"x": rand(30, 5000)})
    repo.close()
    clock.advance(60)
    writer = open_repo(backend, clock)
    writer.index_every_packs = 1000
    for i in range(60):  # several full packs, uploaded but not yet indexed
        writer.save_blob(BlobType.DATA, rand(100 + i, 3000))
    indexed = {p.hex() for p in open_repo(backend, clock).index.pack_ids()}
    orphans = packs(backend) - indexed
    assert len(orphans) >= 2
    r1 = run_prune(backend, clock, grace=0)
    assert r1.packs_young == len(orphans) and r1.packs_unindexed == 0
    assert orphans <= packs(backend)
    clock.advance(STALE + 1)  # the writer died without a word
    r2 = run_prune(backend, clock, grace=0)
    assert r2.packs_unindexed == len(orphans)
    assert not orphans & packs(backend)
    assert packs(backend) == indexed
    clean(open_repo(backend, clock))


def test_prune_killed_before_writing_its_mark_leaves_work_for_the_next_run(
        backend, clock, two_snapshots):
    repo = two_snapshots.repo
    b = two_snapshots.b
    expected_b = two_snapshots.expected_b
    a_only = two_snapshots.a_only
    victim = pack_of(repo, next(iter(a_only)))

    class NoMarks:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def put(self, key, data, *, create_only=False):
            if key.startswith("prune/"):
                raise InjectedFault("killed before the mark")
            self.inner.put(key, data, create_only=create_only)

    crashing = open_repo(NoMarks(backend), clock)
    with pytest.raises(InjectedFault):
        prune(crashing, opts(clock, grace=0))
    # Its session stays behind (as after a kill) until it is stale.
    assert victim in packs(backend)
    clock.advance(STALE + 1)
    r = run_prune(backend, clock, grace=0)
    assert r.packs_unindexed >= 1 and victim not in packs(backend)
    fresh = open_repo(backend, clock)
    assert contents(fresh, b) == expected_b
    clean(fresh)


# --- refusing -------------------------------------------------------------------------------


def test_prune_refuses_when_snapshots_reference_a_missing_pack(backend, clock):
    repo = open_repo(backend, clock)
    s = make_snapshot(repo, {b"x": rand(40, 20_000)})
    snap = load_snapshot(repo, s)
    data_blob = next(n.content[0] for _, n in walk_tree(repo, snap.tree) if n.content)
    backend.delete(layout.pack(pack_of(repo, data_blob)))
    before = packs(backend)
    with pytest.raises(IntegrityError):
        run_prune(backend, clock, grace=0)
    assert packs(backend) == before


def test_prune_refuses_when_an_index_object_cannot_be_read(backend, clock):
    repo = open_repo(backend, clock)
    make_snapshot(repo, {b"x": rand(41, 20_000)})
    key = next(o.key for o in backend.list(layout.INDEX))
    backend.put(key, b"garbage")
    before = packs(backend)
    with pytest.raises(IntegrityError, match="repair index"):
        run_prune(backend, clock, grace=0)
    assert packs(backend) == before


# --- locks -----------------------------------------------------------------------------------


def test_a_second_prune_is_refused_while_the_lock_is_held(backend, clock):
    repo = open_repo(backend, clock)
    holder = ExclusiveLock(repo, operation="prune", settings=settings(clock))
    holder.acquire()
    with pytest.raises(RepositoryLocked) as err:
        run_prune(backend, clock)
    assert err.value.exit_code == EXIT_LOCKED == 11
    assert "prune on" in str(err.value) and "pid" in str(err.value)
    holder.release()
    run_prune(backend, clock)
    assert read_lock(repo) is None


def test_a_stale_lock_is_broken_and_the_old_holder_notices(backend, clock):
    repo = open_repo(backend, clock)
    old = ExclusiveLock(repo, operation="prune", settings=settings(clock))
    old.acquire()
    clock.advance(STALE / 2)
    assert old.heartbeat()
    clock.advance(STALE / 2)
    with pytest.raises(RepositoryLocked):  # heartbeat younger than the stale timeout
        ExclusiveLock(repo, operation="prune", settings=settings(clock)).acquire()
    clock.advance(STALE / 2 + 1)
    new = ExclusiveLock(repo, operation="prune", settings=settings(clock))
    new.acquire()
    holder = read_lock(repo)
    assert holder is not None and holder.id == new.id
    with pytest.raises(RepositoryLocked, match="lost"):
        old.check()
    old.release()  # must not remove the new holder's lock
    assert read_lock(repo) is not None
    new.release()
    assert read_lock(repo) is None


def test_unreadable_lock_is_reported_until_it_is_old(backend, clock):
    repo = open_repo(backend, clock)
    backend.put(LOCK_KEY, b"not a lock")
    with pytest.raises(RepositoryLocked, match="unreadable"):
        ExclusiveLock(repo, operation="prune", settings=settings(clock)).acquire()


def test_sessions_and_locks_are_encrypted_and_not_interchangeable(backend, clock):
    repo = open_repo(backend, clock)
    repo.save_blob(BlobType.DATA, b"z" * 100)
    assert repo.session is not None
    raw = backend.get(repo.session.key)
    assert b"pid" not in raw and b"host" not in raw
    backend.put(LOCK_KEY, raw)
    with pytest.raises(RepositoryLocked):
        ExclusiveLock(repo, operation="prune", settings=settings(clock)).acquire()
    info: ObjectInfo = backend.stat(repo.session.key)
    assert info.size == len(raw)


def test_one_process_pruning_twice_repacks_its_own_repacked_packs_again(backend, clock):
    repo = open_repo(backend, clock)
    keep1, keep2 = rand(50, 1500), rand(51, 1500)
    a = make_snapshot(repo, {b"k1": keep1, b"k2": keep2, b"drop": rand(52, 40_000)})
    b = make_snapshot(repo, {b"k1": keep1, b"k2": keep2})
    c = make_snapshot(repo, {b"k1": keep1})
    repo.close()
    clock.advance(60)
    pruner = open_repo(backend, clock)  # one long-lived process
    pruner.delete_object(SNAPSHOTS, a)
    first = prune(pruner, opts(clock, grace=0, max_unused=0.1))
    assert first.blobs_repacked >= 2
    second_home = pack_of(open_repo(backend, clock), repo.blob_id(keep1))
    pruner.delete_object(SNAPSHOTS, b)
    second = prune(pruner, opts(clock, grace=0, max_unused=0.1))
    assert second.packs_repack >= 1 and second.blobs_repacked >= 1
    assert second_home not in packs(backend)
    fresh = open_repo(backend, clock)
    assert contents(fresh, c) == {b"k1": keep1}
    clean(fresh)


def test_blob_reused_from_a_pack_a_crashed_prune_left_unmarked_is_rescued(
        backend, clock, two_snapshots):
    a_only = two_snapshots.a_only
    blob = next(iter(a_only))
    victim = pack_of(two_snapshots.repo, blob)
    writer = open_repo(backend, clock)
    writer.save_blob(BlobType.DATA, b"started before the crash")

    class NoMarks:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def put(self, key, data, *, create_only=False):
            if key.startswith("prune/"):
                raise InjectedFault("killed before the mark")
            self.inner.put(key, data, create_only=create_only)

    with pytest.raises(InjectedFault):
        prune(open_repo(NoMarks(backend), clock), opts(clock, grace=0))
    # The victim left the index, and no mark names it.
    assert not open_repo(backend, clock).has_blob(BlobType.DATA, blob)
    node = save_file(writer, b"a-again", rand(2, 30_000))  # deduplicates against the orphan
    tree = writer.save_blob(BlobType.TREE, encode_tree([node]))[0]
    writer.flush()
    w_snap = save_snapshot(writer, Snapshot(time_ns=time.time_ns(), tree=tree, paths=["/w"]))
    writer.close()
    clock.advance(STALE + 1)  # the crashed prune's session goes stale
    r = run_prune(backend, clock, grace=0)
    assert r.packs_rescued >= 1
    assert victim in packs(backend)
    fresh = open_repo(backend, clock)
    assert contents(fresh, w_snap) == {b"a-again": rand(2, 30_000)}
    clean(fresh)


def test_a_long_lived_process_starts_afresh_with_end_session(backend, clock, two_snapshots):
    daemon = open_repo(backend, clock)  # its index still lists A's packs
    run_prune(backend, clock, grace=0)  # ... which are swept now
    daemon.load_index()  # reloading alone cannot vouch for decisions taken before
    with pytest.raises(SessionLost):
        daemon.save_blob(BlobType.DATA, b"next job")
    daemon.end_session()  # the next job relies only on what it loads from now on
    daemon.save_blob(BlobType.DATA, b"next job")
    daemon.flush()
    assert daemon.session is not None and not daemon.session.fenced
