"""End to end: back up real files with the ``resurgo`` command, restore them, compare.

Every test compares restored bytes and metadata with the source as it was when
it was backed up (``compare.capture`` before the backup, ``assert_same_tree``
after the restore). These tests run as root (CI does): ownership, device nodes
and ``trusted``/ACL attributes need it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from .compare import assert_same_tree, capture, diff_trees, same_content

pytestmark = pytest.mark.root

T0 = 1_234_567_890_123_456_789  # an mtime with every nanosecond digit set


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def all_paths(root: Path) -> list[bytes]:
    """Every path under ``root``, iteratively (os.walk recurses: deep trees break it)."""
    out: list[bytes] = []
    todo = [os.fsencode(root)]
    while todo:
        d = todo.pop()
        with os.scandir(d) as it:
            for e in it:
                out.append(e.path)
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
    return out


def set_times(root: Path, seed: int = 0) -> None:
    """Give every entry under ``root`` distinct, nanosecond-precise times, deepest first
    (setting a child's times does not change its directory's)."""
    r = random.Random(seed)
    paths = all_paths(root)
    for p in sorted(paths, key=lambda p: -p.count(b"/")):
        os.utime(p, ns=(T0 + r.randrange(10**15), T0 - r.randrange(10**15)),
                 follow_symlinks=False)


def restore(cli, snap: str, src: Path, dst: Path, *extra: str, expect: int = 0) -> dict:
    _, summary = cli.json("restore", f"{snap}:{src}", "--target", dst, *extra, expect=expect)
    return summary


def no_temp_files(root: Path) -> bool:
    return not any(os.path.basename(p).startswith(b".resurgo-tmp-") for p in all_paths(root))


# --- every metadata kind ---------------------------------------------------------------------


def build_metadata_tree(src: Path) -> None:
    src.mkdir()
    (src / "plain").write_bytes(rand(300_000, 1))
    (src / "empty").write_bytes(b"")
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2750), ("odd-mode", 0o0421)):
        (src / name).write_bytes(name.encode())
        os.chmod(src / name, mode)
    sticky = src / "sticky"
    sticky.mkdir()
    (sticky / "inside").write_bytes(b"in a sticky dir")
    os.chmod(sticky, 0o1777)
    # Ownership: ids without names, and ids with names (daemon is 1:1 on Debian).
    (src / "nobody-known").write_bytes(b"12345:54321")
    os.chown(src / "nobody-known", 12345, 54321)
    (src / "daemon-owned").write_bytes(b"daemon")
    os.chown(src / "daemon-owned", 1, 1)
    os.chown(sticky, 12345, 1)
    os.chmod(sticky, 0o1777)  # chown cleared nothing here, but keep the order explicit
    # Owner first, then setuid: chown clears setuid bits.
    (src / "setuid-other").write_bytes(b"x")
    os.chown(src / "setuid-other", 12345, 54321)
    os.chmod(src / "setuid-other", 0o6755)
    # Extended attributes and POSIX ACLs.
    (src / "xattrs").write_bytes(b"with attributes")
    os.setxattr(src / "xattrs", b"user.colour", b"blue")
    os.setxattr(src / "xattrs", b"user.binary", bytes(range(256)))
    (src / "acl-file").write_bytes(b"acl")
    subprocess.run(["setfacl", "-m", "u:12345:rw,g:54321:r,m::rw", str(src / "acl-file")],
                   check=True)
    acl_dir = src / "acl-dir"
    acl_dir.mkdir()
    (acl_dir / "before-default").write_bytes(b"no inherited acl")
    subprocess.run(["setfacl", "-m", "u:12345:rx", "-d", "-m", "u:12345:rwx", str(acl_dir)],
                   check=True)
    (acl_dir / "inherited").write_bytes(b"inherits the default ACL")
    # Symlinks (stored, never followed): absolute, relative, dangling, to a directory.
    os.symlink("/etc/passwd", src / "link-abs")
    os.symlink("plain", src / "link-rel")
    os.symlink("does/not/exist", src / "link-dangling")
    os.symlink("sticky", src / "link-dir")
    # Hard links across directories.
    (src / "hl").mkdir()
    (src / "hl" / "a").write_bytes(rand(5000, 2))
    os.link(src / "hl" / "a", src / "hl" / "b")
    os.link(src / "hl" / "a", src / "hl-c")
    (src / "pair1").write_bytes(b"second group")
    os.link(src / "pair1", src / "hl" / "pair2")
    # A sparse file: holes at the start, middle and end.
    with open(src / "sparse", "wb") as f:
        f.truncate(50 << 20)
        f.seek(3 << 20)
        f.write(rand(10_000, 3))
        f.seek(40 << 20)
        f.write(b"island")
    # Special files.
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "fifo", 0o640)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "socket"))
    s.close()
    # Names that are not UTF-8, as a file and as a directory.
    raw = os.fsencode(src)
    with open(raw + b"/bad-\xff\xfe-name", "wb") as f:
        f.write(b"latin-1 bytes in the name")
    os.mkdir(raw + b"/caf\xe9")
    with open(raw + b"/caf\xe9/cr\xe8me", "wb") as f:
        f.write(b"nested")
    set_times(src)


def test_every_metadata_kind_round_trips_exactly(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    build_metadata_tree(src)
    before = capture(src)
    kinds = {e.kind for e in before.entries.values()}
    assert kinds == {"file", "dir", "symlink", "chardev", "fifo", "socket"}
    assert any(e.xattrs.get(b"system.posix_acl_access") for e in before.entries.values())
    assert any(e.xattrs.get(b"system.posix_acl_default") for e in before.entries.values())
    snap = cli.backup(src)
    dst = tmp_path / "dst"
    summary = restore(cli, snap, src, dst)
    assert summary["ok"] and summary["warnings"] == 0
    after = capture(dst)
    assert_same_tree(before, after)
    # Spelled out, the properties the comparison covers:
    assert os.readlink(dst / "link-abs") == "/etc/passwd"
    assert os.stat(dst / "hl" / "a").st_ino == os.stat(dst / "hl-c").st_ino
    assert os.stat(dst / "hl" / "a").st_nlink == 3
    assert os.stat(dst / "sparse").st_blocks * 512 < 1 << 20
    assert os.stat(dst / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(os.stat(dst / "setuid-other").st_mode) == 0o6755
    assert (os.stat(dst / "setuid-other").st_uid, os.stat(dst / "setuid-other").st_gid) == (
        12345, 54321)
    with open(os.fsencode(dst) + b"/bad-\xff\xfe-name", "rb") as f:
        assert f.read() == b"latin-1 bytes in the name"


def test_weird_names_empty_files_and_empty_directories_round_trip(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = ["with space", "new\nline", "tab\there", "ünïcødé ✓ 日本", "-leading-dash", "--double",
             " leading space", "trailing space ", "*?[glob]", "back\\slash", "quote'\"",
             "x" * 255, ".hidden", "...", "a:b", "emoji 🎉"]
    for i, n in enumerate(names):
        (src / n).write_bytes(f"content {i}".encode())
    (src / "empty file").write_bytes(b"")
    (src / "empty dir").mkdir()
    (src / "nested" / "empty" / "dirs").mkdir(parents=True)
    (src / "-dir with dash").mkdir()
    (src / "-dir with dash" / "\nnewline-first").write_bytes(b"")
    set_times(src, seed=5)
    before = capture(src)
    snap = cli.backup(src)
    dst = tmp_path / "dst"
    restore(cli, snap, src, dst)
    assert_same_tree(before, capture(dst))
    out = cli("dump", snap, f"{src}/-leading-dash").stdout
    assert out == f"content {names.index('-leading-dash')}".encode()


def test_a_thousand_levels_deep_tree_round_trips(cli, repo_dir, tmp_path, deep_cleanup):
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    deep_cleanup += [src, dst]
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    try:
        for i in range(1000):  # relative to a descriptor: no PATH_MAX trouble
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if i % 100 == 99:
                f = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
                os.write(f, f"level {i}".encode())
                os.close(f)
    finally:
        os.close(fd)
    set_times(src, seed=7)
    before = capture(src)
    assert max(p.count(b"/") for p in before.entries) >= 999
    snap = cli.backup(src)
    restore(cli, snap, src, dst, "--verify")
    assert_same_tree(before, capture(dst))


def test_a_sparse_8_gib_file_backs_up_and_restores_quickly(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "disk.img"
    subprocess.run(["truncate", "-s", "8G", str(big)], check=True)
    blocks = {0: rand(4096, 10), 3 << 30: rand(12_288, 11), (8 << 30) - 4096: rand(4096, 12)}
    with open(big, "r+b") as f:
        for off, data in blocks.items():
            f.seek(off)
            f.write(data)
    set_times(src, seed=9)
    before = capture(src)
    started = time.monotonic()
    snap = cli.backup(src)
    dst = tmp_path / "dst"
    summary = restore(cli, snap, src, dst, "--verify")
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"8 GiB of holes took {elapsed:.1f}s: holes were not skipped"
    assert summary["bytes_restored"] <= 64 << 10 and summary["files_verified"] == 1
    after = capture(dst)  # before reading the file changes its atime
    st = os.stat(dst / "disk.img")
    assert st.st_size == 8 << 30
    assert st.st_blocks * 512 <= 1 << 20
    with open(dst / "disk.img", "rb") as f:
        for off, data in blocks.items():
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(1 << 30)
        assert f.read(1 << 20) == bytes(1 << 20)
    assert_same_tree(before, after)


# --- restoring over existing files ---------------------------------------------------------------


def test_restore_into_a_non_empty_target_does_not_overwrite_differing_files(
        cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(rand(20_000, i))
    set_times(src, seed=11)
    before = capture(src)
    snap = cli.backup(src)
    dst = tmp_path / "dst"
    restore(cli, snap, src, dst)
    (dst / "f1").write_bytes(b"my local edit")
    (dst / "local-only").write_bytes(b"mine")
    edited = os.stat(dst / "f1")

    result, summary = cli.json("restore", f"{snap}:{src}", "--target", dst, expect=3)
    assert summary["conflicts"] == 1 and summary["files_skipped"] == 4
    records = [json.loads(line) for line in result.out.splitlines()]
    assert [r["path"] for r in records if r["type"] == "warning" and "path" in r] == [
        f"{dst}/f1"]
    assert (dst / "f1").read_bytes() == b"my local edit"
    assert os.stat(dst / "f1").st_mtime_ns == edited.st_mtime_ns
    assert (dst / "local-only").read_bytes() == b"mine"
    text = cli("restore", f"{snap}:{src}", "--target", dst, expect=3)
    assert "f1" in text.stderr and "overwrite" in text.stderr

    summary = restore(cli, snap, src, dst, "--overwrite", "if-changed")
    assert summary["files_restored"] == 1 and summary["files_skipped"] == 4
    assert (dst / "local-only").read_bytes() == b"mine"  # never deleted
    os.unlink(dst / "local-only")
    assert_same_tree(before, capture(dst))


def test_an_interrupted_restore_resumes_and_completes(cli, e2e_env, tmp_path):
    cli("init", "--pack-size", "256KiB")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"file{i:02d}").write_bytes(rand(400_000, 100 + i))
    set_times(src, seed=13)
    before = capture(src)
    snap = cli.backup(src)
    dst = tmp_path / "dst"

    def complete_files() -> int:
        if not dst.exists():
            return 0
        return sum(1 for n in os.listdir(dst) if n.startswith("file"))

    # Slow every read down so the restore is surely killed part-way.
    proc = cli.popen("restore", f"{snap}:{src}", "--target", dst, "--threads", "1",
                     env={"RESURGO_TEST_FAULTS": "get:delay:0.05"})
    deadline = time.monotonic() + 120
    while complete_files() < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the restore finished before it could be killed"
    done_before = complete_files()
    assert 4 <= done_before < 24
    # Whatever carries its real name is complete; the rest is in temp files.
    for n in os.listdir(dst):
        if n.startswith("file"):
            assert same_content(os.fsencode(src / n), os.fsencode(dst / n)) is None

    summary = restore(cli, snap, src, dst, "--verify")
    assert summary["files_skipped"] >= done_before
    assert summary["files_restored"] == 24 - summary["files_skipped"]
    assert summary["files_verified"] == 24
    assert no_temp_files(dst)
    assert_same_tree(before, capture(dst))


# --- dump, verify, hostile trees ---------------------------------------------------------------


def test_dump_writes_the_exact_bytes_of_one_file(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = rand(1_500_000, 21)
    (src / "blob.bin").write_bytes(data)
    raw = os.fsencode(src) + b"/n\xe4me"
    with open(raw, "wb") as f:
        f.write(b"\x00\x01binary\xff")
    with open(src / "sparse", "wb") as f:
        f.truncate(2 << 20)
        f.seek(1 << 20)
        f.write(b"x")
    snap = cli.backup(src)
    assert cli("dump", snap, f"{src}/blob.bin").stdout == data
    assert cli("dump", "latest", raw).stdout == b"\x00\x01binary\xff"
    assert cli("dump", snap, f"{src}/sparse").stdout == (src / "sparse").read_bytes()
    out = tmp_path / "out.bin"
    _, summary = cli.json("dump", snap, f"{src}/blob.bin", "--output", out)
    assert out.read_bytes() == data and summary["bytes"] == len(data)
    assert "is a directory" in cli("dump", snap, str(src), expect=2).stderr
    assert cli("dump", snap, f"{src}/missing", expect=2).stdout == b""


def test_verify_passes_on_a_good_restore_and_the_tree_matches(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(30):
        (src / ("a" if i % 2 else "a/b") / f"f{i}").write_bytes(rand(10_000 + i, i))
    set_times(src, seed=17)
    before = capture(src)
    cli.backup(src)
    dst = tmp_path / "dst"
    summary = restore(cli, "latest", src, dst, "--verify")
    assert summary["files_verified"] == 30 and summary["files_restored"] == 30
    assert_same_tree(before, capture(dst))


def test_include_and_exclude_select_what_is_restored(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"a")
    (src / "docs" / "b.log").write_bytes(b"b")
    (src / "other.txt").write_bytes(b"o")
    cli.backup(src)
    dst = tmp_path / "dst"
    restore(cli, "latest", src, dst, "--include", "*.txt", "--exclude", "other.txt")
    found = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert found == {"docs/a.txt": b"a"}


def test_a_hostile_tree_is_refused_and_nothing_is_written(cli, e2e_env, repo_dir, tmp_path):
    from resurgo.backend.local import LocalBackend
    from resurgo.repo import BlobType, Repository
    from resurgo.snapshot.model import Snapshot
    from resurgo.snapshot.store import save_snapshot

    repo = Repository.open(LocalBackend(repo_dir), e2e_env["RESURGO_PASSWORD"])
    blob = repo.save_blob(BlobType.DATA, b"owned")[0].hex()
    evil = {"v": 1, "nodes": [
        {"name": "..", "type": "dir", "subtree": "00" * 32},
        {"name": "fine", "type": "file", "size": 5, "content": [blob]},
    ]}
    tree = repo.save_blob(BlobType.TREE, json.dumps(evil).encode())[0]
    repo.flush()
    snap = Snapshot(time_ns=time.time_ns(), tree=tree, paths=["/evil"])
    sid = save_snapshot(repo, snap)
    repo.close()
    box = tmp_path / "box"
    dst = box / "target"
    dst.mkdir(parents=True)
    result = cli("restore", sid, "--target", dst, "--overwrite", "always", expect=4)
    assert "refusing to restore" in result.stderr
    assert os.listdir(box) == ["target"] and os.listdir(dst) == []


# --- scale ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hundred_thousand_small_files_round_trip(cli, repo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(42)
    for d in range(100):
        sub = src / f"dir{d:03d}"
        sub.mkdir()
        for i in range(1000):
            (sub / f"f{i:04d}").write_bytes(r.randbytes(r.randrange(0, 200)))
    set_times(src, seed=19)
    before = capture(src)
    assert len(before.entries) == 100_100
    snap = cli.backup(src)
    dst = tmp_path / "dst"
    summary = restore(cli, snap, src, dst)
    assert summary["files_restored"] == 100_000
    problems = diff_trees(before, capture(dst))
    assert not problems, problems[:20]
