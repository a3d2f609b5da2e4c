"""The backup pipeline, driven through its engine API on real files."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from resurgo.backend.faults import FaultyBackend
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import BackendError, Interrupted, SourceError
from resurgo.ops import backup as backup_mod
from resurgo.ops.backup import BackupOptions, backup_paths, backup_stream
from resurgo.ops.check import check_repository
from resurgo.ops.excludes import Excluder
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository, batch
from resurgo.snapshot import direct as direct_mod
from resurgo.snapshot import dirscan
from resurgo.snapshot.model import Node, NodeType
from resurgo.snapshot.store import list_snapshots, walk_tree
from resurgo.testing.environment import unavailable


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(
        MemoryBackend(), "pw", params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests()
    )


@pytest.fixture(params=["native", "python"])
def reader(request, monkeypatch):
    """Small files read by the native reader (``dirscan.read_small``) or in Python."""
    if request.param == "python":
        monkeypatch.setattr(dirscan, "read_small", None)
        return None
    return request.getfixturevalue("read_small")


def nodes_of(repo: Repository, tree: bytes) -> dict[bytes, Node]:
    return dict(walk_tree(repo, tree))


def content_of(repo: Repository, node: Node) -> bytes:
    return b"".join(repo.load_blob(BlobType.DATA, b) for b in node.content)


def rel(path: Path) -> bytes:
    return os.fsencode(path).lstrip(b"/")


def test_backup_stores_every_file_and_directory_under_its_absolute_path(repo, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    s = backup_paths(repo, [src])
    snap = list_snapshots(repo)[-1]
    assert snap.id == s.snapshot_id and snap.paths == [str(src)]
    nodes = nodes_of(repo, snap.tree)
    assert content_of(repo, nodes[rel(src / "a.txt")]) == b"alpha"
    assert content_of(repo, nodes[rel(src / "sub" / "b.bin")]) == (src / "sub" / "b.bin").read_bytes()
    assert nodes[rel(src / "sub")].type is NodeType.DIR
    assert s.files_new == 2 and s.files_unchanged == 0
    assert check_repository(repo, read_all_data=True).ok


def test_unchanged_files_are_not_read_again_and_changed_ones_are(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(3000))
    first = backup_paths(repo, [src])
    second = backup_paths(repo, [src])
    assert second.files_unchanged == 50 and second.bytes_read == 0
    assert second.parent == first.snapshot_id
    # An unchanged tree is reused whole: the same subtree, no data.
    # (Ancestors such as /tmp may change under parallel tests: only the trees
    # above src may be new.)
    third = backup_paths(repo, [src])
    assert third.files_unchanged == 50 and third.bytes_read == 0
    snaps = list_snapshots(repo)
    assert nodes_of(repo, snaps[-1].tree)[rel(src)].subtree == \
        nodes_of(repo, snaps[-2].tree)[rel(src)].subtree
    (src / "f7").write_bytes(b"new content")
    fourth = backup_paths(repo, [src])
    assert fourth.files_changed == 1 and fourth.files_unchanged == 49
    assert fourth.bytes_read == len(b"new content")
    snap = list_snapshots(repo)[-1]
    assert content_of(repo, nodes_of(repo, snap.tree)[rel(src / "f7")]) == b"new content"


def test_force_rereads_every_file(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    backup_paths(repo, [src])
    s = backup_paths(repo, [src], BackupOptions(force=True))
    assert s.files_new == 1 and s.bytes_read == 1000


def test_a_parent_blob_missing_from_the_index_forces_a_reread(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"payload")
    backup_paths(repo, [src])
    real_has = repo.has_blob
    monkeypatch.setattr(repo, "has_blob", lambda t, b: False if t == BlobType.DATA else real_has(t, b))
    s = backup_paths(repo, [src])
    assert s.files_changed == 1 and s.bytes_read == len(b"payload")


def test_identical_content_is_stored_once(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(40_000)
    (src / "one").write_bytes(data)
    (src / "two").write_bytes(data)
    s = backup_paths(repo, [src])
    stored = repo.stats_added["bytes_raw"]
    assert s.bytes_read == 2 * len(data)
    assert stored < len(data) + 20_000  # trees are small; the data is there once


def test_hard_links_share_content_and_are_read_once(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(10_000))
    os.link(src / "a", src / "b")
    s = backup_paths(repo, [src])
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    a, b = nodes[rel(src / "a")], nodes[rel(src / "b")]
    assert a.inode == b.inode and a.nlink == 2
    assert a.content == b.content and content_of(repo, b) == (src / "a").read_bytes()
    assert s.bytes_read == 10_000


def test_sparse_file_holes_are_recorded_and_not_stored_as_data(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "sparse"
    with open(f, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(20 << 20)
        fh.write(b"middle")
    s = backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(f)]
    assert node.size == 64 << 20
    assert node.holes and sum(length for _, length in node.holes) > 60 << 20
    assert s.bytes_read < 1 << 20
    data = content_of(repo, node)
    assert b"middle" in data and len(data) == node.size - sum(h[1] for h in node.holes)


def test_symlinks_are_stored_not_followed(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", src / "link")
    backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(src / "link")]
    assert node.type is NodeType.SYMLINK and node.linktarget == os.fsencode(tmp_path / "outside")
    assert node.content == []


def test_a_thousand_levels_deep_tree_backs_up(repo, tmp_path):
    src = tmp_path / "src"
    d = src
    # Build with relative mkdir calls: the full path exceeds PATH_MAX.
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(1000):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as fh:
            fh.write(b"bottom")
    finally:
        os.close(fd)
    del d
    s = backup_paths(repo, [src])
    assert s.dirs == 1001 and s.files_new == 1
    depth = max(p.count(b"/") for p, _ in walk_tree(repo, list_snapshots(repo)[-1].tree))
    assert depth >= 1000
    # shutil.rmtree (pytest's tmp cleanup) recurses per level: remove it here.
    subprocess.run(["rm", "-rf", str(src)], check=True)


def test_unreadable_file_is_reported_skipped_and_the_snapshot_still_written(
        repo, tmp_path, reader, deny_open):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good").write_bytes(b"fine")
    (src / "bad").write_bytes(b"unreadable")
    deny_open(b"/bad")
    s = backup_paths(repo, [src])
    assert s.snapshot_id is not None
    assert len(s.warnings) == 1 and s.warnings[0]["path"].endswith("/bad")
    assert s.warnings[0]["error"] == "cannot open: Permission denied"
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    assert rel(src / "bad") not in nodes and rel(src / "good") in nodes


@pytest.mark.parametrize("size", [200_000, 3 << 20], ids=["read-whole", "streamed"])
def test_file_changed_while_read_is_detected_and_reported(repo, tmp_path, monkeypatch, size):
    monkeypatch.setattr(dirscan, "read_small", None)  # appended between read and fstat
    src = tmp_path / "src"
    src.mkdir()
    target = src / "growing"
    target.write_bytes(os.urandom(size))
    real = repo.save_blob
    first = True

    def appending(blob_type, data, **kw):
        # Between reading the file's first bytes and finishing it.
        nonlocal first
        if first and blob_type == BlobType.DATA:
            with open(target, "ab") as fh:
                fh.write(b"appended while reading")
            first = False
        return real(blob_type, data, **kw)

    monkeypatch.setattr(repo, "save_blob", appending)
    s = backup_paths(repo, [src])
    assert any("changed" in w["error"] for w in s.warnings)
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(target)]
    assert node.error == "changed while being read"


def test_a_small_file_appended_to_after_its_read_is_stored_as_read(
        repo, tmp_path, monkeypatch, read_small):
    # The native reader reads a small file in one read between two fstats:
    # an append after that is the next backup's, not an inconsistent copy.
    src = tmp_path / "src"
    src.mkdir()
    target = src / "log"
    data = os.urandom(200_000)
    target.write_bytes(data)
    real = repo.save_blob

    def appending(blob_type, blob, **kw):  # type: ignore[no-untyped-def]
        with open(target, "ab") as fh:
            fh.write(b"appended")
        return real(blob_type, blob, **kw)

    monkeypatch.setattr(repo, "save_blob", appending)
    s = backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(target)]
    assert node.error is None and not s.warnings and node.size == len(data)
    assert content_of(repo, node) == data


def test_a_change_the_native_reader_sees_is_reported(repo, tmp_path, monkeypatch, read_small):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"content")

    def seen_changed(items, limit):  # type: ignore[no-untyped-def]
        window, got = read_small(items, limit)
        return window, [(*r[:5], True) if len(r) == 6 else r for r in got]

    monkeypatch.setattr(dirscan, "read_small", seen_changed)
    s = backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(src / "f")]
    assert node.error == "changed while being read" and content_of(repo, node) == b"content"
    assert [w["error"] for w in s.warnings] == [
        "file changed while it was being read; the stored copy may be inconsistent"]


def test_a_file_gone_before_the_native_reader_opens_it_is_left_out(
        repo, tmp_path, monkeypatch, read_small):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good").write_bytes(b"fine")
    (src / "gone").write_bytes(b"soon deleted")

    def vanish(items, limit):  # type: ignore[no-untyped-def]
        (src / "gone").unlink(missing_ok=True)  # after the listing
        return read_small(items, limit)

    monkeypatch.setattr(dirscan, "read_small", vanish)
    s = backup_paths(repo, [src])
    assert [(w["path"].rsplit("/", 1)[-1], w["error"]) for w in s.warnings] == [
        ("gone", "cannot open: No such file or directory")]
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    assert rel(src / "gone") not in nodes and content_of(repo, nodes[rel(src / "good")]) == b"fine"


def test_the_native_reader_and_python_store_the_same_trees(repo, tmp_path, monkeypatch, read_small):
    src = tmp_path / "src"
    rnd = random.Random(5)
    for d in range(4):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(12):
            (sub / f"f{i}").write_bytes(rnd.randbytes(rnd.choice([0, 1, 900, 5000, 70_000, 300_000])))
        with open(sub / "sparse", "wb") as fh:
            fh.seek(200_000)
            fh.write(b"end")
        os.link(sub / "f1", sub / "hardlink")
        (sub / "link").symlink_to("f2")
        # Reading a link moves its atime (relatime) unless it is after the mtime.
        now = time.time_ns()
        os.utime(sub / "link", ns=(now + 10**10, now - 10**9), follow_symlinks=False)
    monkeypatch.setattr(dirscan, "read_small", None)
    python = backup_paths(repo, [src])
    monkeypatch.setattr(dirscan, "read_small", read_small)
    native = backup_paths(repo, [src], BackupOptions(force=True))
    assert python.bytes_read == native.bytes_read > 0 and not python.warnings and not native.warnings
    snaps = list_snapshots(repo)
    assert nodes_of(repo, snaps[-1].tree)[rel(src)] == nodes_of(repo, snaps[-2].tree)[rel(src)]


def test_windows_saved_natively_store_each_file_as_python_names_it(
        repo, tmp_path, monkeypatch, read_small, native_seal):
    # The native reader hands whole windows to Repository.save_data_window:
    # small files one blob each, files up to SMALL_FILE_BYTES cut in chunks.
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(11)
    text = b"".join(b"line %d of a log-like file\n" % rnd.randrange(50) for _ in range(60_000))
    files = {f"f{i}": rnd.randbytes(size) for i, size in enumerate([0, 1, 64, 65, 900, 5000, 70_000])}
    files.update({"text": text[:40_000], "chunked": text[:1_500_000], "random": rnd.randbytes(900_000),
                  "copy": text[:40_000]})
    for name, data in files.items():
        (src / name).write_bytes(data)
    s = backup_paths(repo, [src])
    assert not s.warnings and s.bytes_read == sum(map(len, files.values()))
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    for name, data in files.items():
        node = nodes[rel(src / name)]
        assert node.content == [repo.blob_id(c) for c in repo.chunker().cut(data)], name
        assert content_of(repo, node) == data
    assert len(nodes[rel(src / "chunked")].content) > 1
    assert check_repository(repo, read_all_data=True).ok
    # Hashed and sealed in Python instead: the same tree.
    monkeypatch.setattr(batch, "seal", None)
    backup_paths(repo, [src], BackupOptions(force=True))
    assert nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(src)] == nodes[rel(src)]


def test_file_grown_between_scan_and_open_is_read_whole_with_its_size_at_opening(
        repo, tmp_path, monkeypatch, reader):
    src = tmp_path / "src"
    src.mkdir()
    target = src / "log"
    target.write_bytes(b"x" * 5000)
    real_open = backup_mod.open_for_backup

    def grow_then_open(path: bytes) -> int:
        fd = real_open(path)
        if path.endswith(b"/log"):
            with open(target, "ab") as fh:
                fh.write(b"y" * 3000)
        return fd

    def grow_then_read(items, limit):  # type: ignore[no-untyped-def]
        with open(target, "ab") as fh:
            fh.write(b"y" * 3000)
        return reader(items, limit)

    if reader:
        monkeypatch.setattr(dirscan, "read_small", grow_then_read)
    else:
        monkeypatch.setattr(backup_mod, "open_for_backup", grow_then_open)
    s = backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(target)]
    # Grown before it was opened (a log being written): not an inconsistent copy.
    assert node.error is None and node.size == 8000 and not s.warnings
    assert content_of(repo, node) == b"x" * 5000 + b"y" * 3000
    assert s.bytes_read == 8000


def test_repository_error_aborts_the_backup_and_writes_no_snapshot(tmp_path):
    faulty = FaultyBackend(MemoryBackend())
    repo = Repository.init(faulty, "pw", params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests())
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(20_000))
    faulty.fail_next("put", n=1000, error=BackendError("disk on fire"))
    with pytest.raises(BackendError, match="disk on fire"):
        backup_paths(repo, [src])
    assert repo.list_objects("snapshots") == []


def test_stop_request_interrupts_without_a_snapshot(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Interrupted):
        backup_paths(repo, [src], should_stop=stop)
    assert repo.list_objects("snapshots") == []


def test_excludes_and_cache_dirs_are_left_out(repo, tmp_path):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "cache").mkdir()
    (src / "keep" / "a.txt").write_bytes(b"a")
    (src / "keep" / "debug.log").write_bytes(b"log")
    (src / "cache" / "CACHEDIR.TAG").write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    (src / "cache" / "big").write_bytes(b"cached")
    ex = Excluder(exclude=["*.log"], exclude_caches=True)
    backup_paths(repo, [src], BackupOptions(excluder=ex))
    names = {p for p in nodes_of(repo, list_snapshots(repo)[-1].tree)}
    assert rel(src / "keep" / "a.txt") in names
    assert rel(src / "keep" / "debug.log") not in names
    assert rel(src / "cache" / "big") not in names
    assert rel(src / "cache") not in names  # a marked directory is left out entirely


def test_several_targets_share_one_virtual_root(repo, tmp_path):
    a = tmp_path / "x" / "a"
    b = tmp_path / "y" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "1").write_bytes(b"one")
    (b / "2").write_bytes(b"two")
    backup_paths(repo, [a, b, a / "1"])  # a/1 is inside a: dropped
    snap = list_snapshots(repo)[-1]
    assert snap.paths == sorted([str(a), str(b)])
    nodes = nodes_of(repo, snap.tree)
    assert content_of(repo, nodes[rel(a / "1")]) == b"one"
    assert content_of(repo, nodes[rel(b / "2")]) == b"two"


def test_missing_paths_fail_when_nothing_exists(repo, tmp_path):
    with pytest.raises(SourceError):
        backup_paths(repo, [tmp_path / "nope"])


def test_stream_from_command_is_stored_as_one_file(repo):
    s = backup_stream(repo, "dump.sql", command=["sh", "-c", "printf 'CREATE TABLE t;'"])
    snap = list_snapshots(repo)[-1]
    assert snap.paths == ["/dump.sql"] and s.bytes_read == len(b"CREATE TABLE t;")
    node = nodes_of(repo, snap.tree)[b"dump.sql"]
    assert content_of(repo, node) == b"CREATE TABLE t;"


def test_failing_command_writes_no_snapshot(repo):
    with pytest.raises(SourceError, match="exit status 7"):
        backup_stream(repo, "dump.sql", command=["sh", "-c", "echo partial; exit 7"])
    assert repo.list_objects("snapshots") == []


def test_stream_from_a_pipe_fd(repo):
    r, w = os.pipe()
    payload = os.urandom(300_000)

    def feed() -> None:
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)

    t = threading.Thread(target=feed)
    t.start()
    backup_stream(repo, "stdin", fd=r)
    t.join()
    os.close(r)
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[b"stdin"]
    assert content_of(repo, node) == payload


def test_one_file_system_does_not_enter_other_mounts(tmp_path):
    repo = Repository.init(LocalBackend(tmp_path / "repo"), "pw", kdf=KDFParams.weak_for_tests())
    src = tmp_path / "src"
    mnt = src / "mnt"
    mnt.mkdir(parents=True)
    (src / "here").write_bytes(b"here")
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.fail("mounting a tmpfs failed: this test needs root")
    try:
        (mnt / "there").write_bytes(b"there")
        backup_paths(repo, [src], BackupOptions(one_file_system=True))
        names = set(nodes_of(repo, list_snapshots(repo)[-1].tree))
        assert rel(src / "here") in names and rel(mnt) in names
        assert rel(mnt / "there") not in names
        backup_paths(repo, [src], BackupOptions(one_file_system=False))
        names = set(nodes_of(repo, list_snapshots(repo)[-1].tree))
        assert rel(mnt / "there") in names
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_stream_command_past_its_timeout_is_killed_with_its_children(repo, tmp_path):
    marker = tmp_path / "child-survived"
    script = f"(sleep 3; touch {marker}) & echo partial; sleep 30"
    with pytest.raises(SourceError, match=r"timed out after 0\.5s"):
        backup_stream(repo, "dump.sql", command=["sh", "-c", script], timeout=0.5)
    assert repo.list_objects("snapshots") == []
    import time as _time

    _time.sleep(3.5)
    assert not marker.exists()  # the whole process group was ended


def test_stop_request_ends_a_stream_command_without_a_snapshot(repo):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Interrupted):
        backup_stream(repo, "dump.sql", command=["sh", "-c", "echo partial; sleep 30"],
                      should_stop=stop.is_set)
    assert repo.list_objects("snapshots") == []


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize("buffer", [30_000, 1000], ids=["larger-than-a-chunk", "one-max-chunk"])
def test_large_files_stream_through_small_buffers_into_the_same_chunks_as_a_whole_cut(
    repo, tmp_path, monkeypatch, buffer, direct
):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    # Text-like and random stretches, so chunks of every size up to the maximum.
    data = b"".join(
        rng.randbytes(rng.randint(1, 20_000)) if i % 2 else b"abc\n" * rng.randint(1, 5000)
        for i in range(120)
    )
    (src / "big").write_bytes(data)
    monkeypatch.setattr(backup_mod, "PARALLEL_FILE_BYTES", 50_000)
    # Many refills, carries of every length; a buffer asked smaller than the
    # largest chunk (8 KiB here) is that large, and refills may add little.
    monkeypatch.setattr(backup_mod, "STREAM_BUFFER", buffer)
    modes: list[bool] = []
    if direct:
        # Read around the page cache (snapshot/direct.py), with carries of
        # every length placed before aligned starts.
        monkeypatch.setattr(direct_mod, "DIRECT_MIN_BYTES", 0)
        monkeypatch.setattr(direct_mod, "uncached", lambda fd, size: True)
        real_read_into = backup_mod.read_into

        def read_into(fd: int, view: memoryview, direct: bool) -> tuple[int, bool]:
            modes.append(direct)
            return real_read_into(fd, view, direct)

        monkeypatch.setattr(backup_mod, "read_into", read_into)
    s = backup_paths(repo, [src])
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(src / "big")]
    expected = [repo.blob_id(c) for c in repo.chunker().cut(data)]
    assert node.content == expected and len(expected) > 50
    assert content_of(repo, node) == data and s.bytes_read == len(data) and not s.warnings
    if direct:
        # Direct to the unaligned end of the file, then one buffered read finds the end.
        assert len(modes) > 40 and all(modes[:-1]) and not modes[-1]


def test_an_unchanged_file_whose_atime_moved_is_not_read_but_gets_its_new_atime(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"some content")
    st = f.stat()
    os.utime(f, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))  # atime before mtime
    backup_paths(repo, [src])
    f.read_bytes()  # relatime moves an atime older than the mtime; the ctime stays
    moved = f.stat()
    if moved.st_atime_ns == st.st_mtime_ns - 10**12:
        unavailable("the file system does not update atimes")
    s = backup_paths(repo, [src])
    assert s.files_unchanged == 1 and s.bytes_read == 0
    node = nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(f)]
    assert node.atime_ns == moved.st_atime_ns
    assert content_of(repo, node) == b"some content"


@pytest.mark.parametrize("native", [True, False])
def test_a_new_directory_records_exactly_the_xattrs_its_entries_have(
        repo, tmp_path, monkeypatch, xattr_free, native):
    # Entries of a new directory are asked natively which have none
    # (dirscan.xattr_free); only the others are read one by one.
    if not native:
        monkeypatch.setattr(dirscan, "xattr_free", None)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("a", "b", "c", "sub/d"):
        (src / name).write_bytes(name.encode())
    (src / "link").symlink_to("a")
    try:
        os.setxattr(src / "b", b"user.one", b"1")
        os.setxattr(src / "sub", b"user.dir", b"d")
        os.setxattr(src / "sub" / "d", b"user.two", b"2")
    except OSError as e:
        unavailable(f"no user xattrs here: {e}")
    backup_paths(repo, [src])
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    assert {n: nodes[rel(src / n)].xattrs for n in ("a", "b", "c", "link", "sub", "sub/d")} == {
        "a": {}, "b": {b"user.one": b"1"}, "c": {}, "link": {}, "sub": {b"user.dir": b"d"},
        "sub/d": {b"user.two": b"2"}}


def test_an_xattr_set_changed_or_removed_on_an_unchanged_file_reaches_the_next_snapshot(
    repo, tmp_path
):
    # Unchanged files are not listed for xattrs again: the ctime that every
    # xattr change moves is what tells them apart.
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"some content")
    try:
        os.setxattr(f, b"user.note", b"one")
    except OSError as e:
        unavailable(f"no user xattrs here: {e}")
    backup_paths(repo, [src])

    def recorded() -> dict[bytes, bytes]:
        return nodes_of(repo, list_snapshots(repo)[-1].tree)[rel(f)].xattrs

    assert recorded() == {b"user.note": b"one"}
    for change, want in [
        (lambda: os.setxattr(f, b"user.note", b"two"), {b"user.note": b"two"}),
        (lambda: os.setxattr(f, b"user.more", b"x"), {b"user.note": b"two", b"user.more": b"x"}),
        (lambda: os.removexattr(f, b"user.note"), {b"user.more": b"x"}),
    ]:
        before = f.stat()
        change()
        assert f.stat().st_ctime_ns != before.st_ctime_ns or pytest.fail("ctime did not move")
        s = backup_paths(repo, [src])
        assert s.files_changed == 1  # a moved ctime means "read again"
        assert recorded() == want
    s = backup_paths(repo, [src])
    assert recorded() == {b"user.more": b"x"} and s.files_unchanged == 1


def test_a_small_file_grown_large_before_its_opening_is_stored_whole(
        repo, tmp_path, monkeypatch, reader):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(300_000))  # read by the large-file lane meanwhile
    grower = src / "grower"
    grower.write_bytes(b"x" * 1000)
    tail = os.urandom(250_000)
    monkeypatch.setattr(backup_mod, "PARALLEL_FILE_BYTES", 100_000)
    monkeypatch.setattr(backup_mod, "STREAM_BUFFER", 20_000)
    real_open = backup_mod.open_for_backup

    def grow_then_open(path: bytes) -> int:
        if path.endswith(b"/grower"):
            with open(grower, "ab") as fh:
                fh.write(tail)
        return real_open(path)

    def grow_then_read(items, limit):  # type: ignore[no-untyped-def]
        # Over the limit at its fstat: the native reader leaves it to Python.
        with open(grower, "ab") as fh:
            fh.write(tail)
        return reader(items, limit)

    if reader:
        monkeypatch.setattr(dirscan, "read_small", grow_then_read)
    else:
        monkeypatch.setattr(backup_mod, "open_for_backup", grow_then_open)
    s = backup_paths(repo, [src])
    nodes = nodes_of(repo, list_snapshots(repo)[-1].tree)
    assert content_of(repo, nodes[rel(grower)]) == b"x" * 1000 + tail
    assert content_of(repo, nodes[rel(src / "big")]) == (src / "big").read_bytes()
    assert nodes[rel(grower)].error is None and not s.warnings


def test_a_stop_request_seen_once_is_never_forgotten(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    calls = {"n": 0}

    def flicker() -> bool:
        # True exactly once: whoever saw it left files out.
        calls["n"] += 1
        return calls["n"] == 3

    with pytest.raises(Interrupted):
        backup_paths(repo, [src], should_stop=flicker)
    assert repo.list_objects("snapshots") == []


def test_directories_with_a_parent_are_compared_one_at_a_time(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    for d in range(12):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(3):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(100))
    real = backup_mod._Backup._add_listed
    lock = threading.Lock()
    active = {True: 0, False: 0}
    most = {True: 0, False: 0}

    def spy(self: backup_mod._Backup, job, listed, old_nodes, tally) -> None:
        parented = job.old_subtree is not None
        with lock:
            active[parented] += 1
            most[parented] = max(most[parented], active[parented])
        try:
            threading.Event().wait(0.02)  # long enough for another scanner to arrive
            real(self, job, listed, old_nodes, tally)
        finally:
            with lock:
                active[parented] -= 1

    monkeypatch.setattr(backup_mod._Backup, "_add_listed", spy)
    opts = BackupOptions(read_threads=4)
    backup_paths(repo, [src], opts)
    assert most[False] > 1  # the first backup has no parent: directories in parallel
    (src / "d3" / "f1").write_bytes(b"changed")
    s = backup_paths(repo, [src], opts)
    assert most[True] == 1 and s.files_changed == 1 and s.files_unchanged == 35
