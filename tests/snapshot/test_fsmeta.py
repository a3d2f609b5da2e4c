"""Reading metadata from real files and applying it back exactly."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.snapshot import fsmeta
from resurgo.snapshot.fsmeta import (
    ACL_ACCESS,
    ACL_DEFAULT,
    SpecialFileNotCreated,
    apply_metadata,
    create_special,
    data_extents,
    extents_from_holes,
    file_changed,
    holes_from_extents,
    node_from_path,
    open_for_backup,
    resolve_owner,
)
from resurgo.snapshot.model import Node, NodeType, decode_tree, encode_tree
from resurgo.testing.environment import as_root

OLD_NS = 1_000_000_000_123_456_789
OLDER_NS = 900_000_000_987_654_321


def b(p: Path) -> bytes:
    return os.fsencode(p)


NOBODY = 65534


def run_as_nobody(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that dropped root (uid/gid 65534); return its result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: Any = ("ok", fn())
            except BaseException as exc:
                result = ("error", repr(exc))
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory everybody can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="resurgo-fsmeta-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d)


def setfacl(*args: str | Path) -> None:
    subprocess.run(["setfacl", *map(str, args)], check=True)


def getfacl(path: Path) -> str:
    out = subprocess.run(["getfacl", "-cpn", str(path)], check=True, capture_output=True, text=True)
    return out.stdout


# --- reading ----------------------------------------------------------------------


def test_node_from_path_describes_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    os.chmod(f, 0o640)
    os.setxattr(f, "user.note", b"\x00bin\xff")
    os.utime(f, ns=(OLDER_NS, OLD_NS))
    st_ = os.lstat(f)
    node = node_from_path(b(f))
    assert node.name == b"f"
    assert node.type is NodeType.FILE
    assert node.mode == 0o640
    assert (node.uid, node.gid) == (st_.st_uid, st_.st_gid)
    assert node.user == fsmeta.user_name(st_.st_uid)
    assert (node.mtime_ns, node.atime_ns, node.ctime_ns) == (OLD_NS, OLDER_NS, st_.st_ctime_ns)
    assert (node.size, node.inode, node.device_id, node.nlink) == (5, st_.st_ino, st_.st_dev, 1)
    assert node.xattrs == {b"user.note": b"\x00bin\xff"}
    assert node.content == [] and node.subtree is None and node.linktarget is None


@as_root
def test_node_records_owner_names_and_ids(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.touch()
    os.chown(f, 0, 0)
    node = node_from_path(b(f))
    assert (node.uid, node.gid, node.user, node.group) == (0, 0, "root", "root")
    os.chown(f, 54321, 54322)  # ids with no account: names unknown
    node = node_from_path(b(f))
    assert (node.uid, node.gid, node.user, node.group) == (54321, 54322, None, None)


def test_node_keeps_setuid_setgid_sticky_bits_but_no_type_bits(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, 0o3775)
    node = node_from_path(b(d))
    assert node.type is NodeType.DIR
    assert node.mode == 0o3775
    assert node.size == 0


def test_non_utf8_names_survive_reading_and_tree_encoding(tmp_path: Path) -> None:
    raw = b(tmp_path) + b"/caf\xe9\xff"
    with open(raw, "wb") as f:
        f.write(b"x")
    node = node_from_path(raw)
    assert node.name == b"caf\xe9\xff"
    assert decode_tree(encode_tree([node]))[0] == node


def test_symlink_node_has_raw_target_and_does_not_follow(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"data")
    os.setxattr(target, "user.x", b"1")
    link = b(tmp_path) + b"/l"
    os.symlink(b"t\xff/../t", link)
    node = node_from_path(link)
    assert node.type is NodeType.SYMLINK
    assert node.linktarget == b"t\xff/../t"
    assert b"user.x" not in node.xattrs
    assert node.size == 0


def test_fifo_and_socket_nodes(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        assert node_from_path(b(sock_path)).type is NodeType.SOCKET
    finally:
        sock.close()
    assert node_from_path(b(fifo)).type is NodeType.FIFO


@as_root
def test_char_device_node_records_device_number(tmp_path: Path) -> None:
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(dev, 0o666)  # mknod honours the umask
    node = node_from_path(b(dev))
    assert node.type is NodeType.CHARDEV
    assert node.rdev == os.makedev(1, 3)
    assert node.mode == 0o666


def test_node_from_path_reads_acls_as_xattrs(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    setfacl("-m", "u:1234:rwx,g:2345:r", d)
    setfacl("-d", "-m", "u:1234:r", d)
    node = node_from_path(b(d))
    assert ACL_ACCESS in node.xattrs and ACL_DEFAULT in node.xattrs


def test_node_from_path_can_skip_xattrs(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.touch()
    os.setxattr(f, "user.a", b"1")
    assert node_from_path(b(f), xattrs=False).xattrs == {}


def test_node_from_path_raises_for_vanished_entry(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        node_from_path(b(tmp_path / "missing"))


# --- sparse files --------------------------------------------------------------------


def test_data_extents_finds_data_between_holes(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    size = 8 << 20
    with open(f, "wb") as fh:
        fh.truncate(size)
        fh.write(b"a" * 4096)
        fh.seek(3 << 20)
        fh.write(b"b" * 8192)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        extents = data_extents(fd, size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)
    assert extents == [(0, 4096), (3 << 20, 8192)]
    holes = holes_from_extents(extents, size)
    assert holes == [(4096, (3 << 20) - 4096), ((3 << 20) + 8192, size - (3 << 20) - 8192)]
    assert extents_from_holes(holes, size) == extents


def test_data_extents_of_an_all_hole_file_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    with open(f, "wb") as fh:
        fh.truncate(1 << 20)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert data_extents(fd, 1 << 20) == []
        assert data_extents(fd, 0) == []
    finally:
        os.close(fd)
    assert holes_from_extents([], 1 << 20) == [(0, 1 << 20)]


def test_data_extents_falls_back_to_one_extent_when_seek_data_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    real_lseek = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "unsupported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert data_extents(fd, 100) == [(0, 100)]
    finally:
        os.close(fd)


def test_data_extents_clips_to_the_given_size(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10000)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert data_extents(fd, 5000) == [(0, 5000)]
    finally:
        os.close(fd)


@st.composite
def disjoint_ranges(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int]:
    cuts = sorted(draw(st.sets(st.integers(0, 10_000), max_size=10)))
    size = draw(st.integers(cuts[-1] if cuts else 0, 12_000))
    return [(a, c - a) for a, c in zip(cuts[::2], cuts[1::2], strict=False)], size


@given(disjoint_ranges())
def test_holes_and_extents_partition_the_file(ranges: tuple[list[tuple[int, int]], int]) -> None:
    extents, size = ranges
    holes = holes_from_extents(extents, size)
    covered = sorted([r for r in extents if r[1] > 0] + holes)
    pos = 0
    for offset, length in covered:
        assert offset == pos and length > 0
        pos += length
    assert pos == size
    assert extents_from_holes(holes, size) == [r for r in extents if r[1] > 0]


# --- opening for backup -------------------------------------------------------------


def test_open_for_backup_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"x")
    os.symlink("t", tmp_path / "l")
    with pytest.raises(OSError) as info:
        open_for_backup(b(tmp_path / "l"))
    assert info.value.errno == errno.ELOOP


def test_open_for_backup_reads_without_updating_atime(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"payload")
    os.utime(f, ns=(OLDER_NS, OLD_NS))  # atime < mtime: relatime would update it on read
    fd = open_for_backup(b(f))
    try:
        assert os.read(fd, 100) == b"payload"
        assert not fcntl_flags(fd) & os.O_NONBLOCK
    finally:
        os.close(fd)
    assert os.lstat(f).st_atime_ns == OLDER_NS


def fcntl_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_open_for_backup_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = open_for_backup(b(fifo))
    os.close(fd)


@as_root
def test_open_for_backup_reads_files_of_other_users_without_noatime(shared_dir: Path) -> None:
    f = shared_dir / "f"
    f.write_bytes(b"other's data")
    os.chmod(f, 0o644)  # owned by root: O_NOATIME is refused (EPERM) to nobody

    def read() -> bytes:
        fd = open_for_backup(b(f))
        try:
            return os.read(fd, 100)
        finally:
            os.close(fd)

    assert run_as_nobody(read) == b"other's data"


def test_open_for_backup_retries_without_noatime_on_eperm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    real_open = os.open
    seen: list[int] = []

    def fake_open(path: bytes, flags: int, *args: int, **kwargs: int | None) -> int:
        seen.append(flags)
        if flags & os.O_NOATIME:
            raise PermissionError(errno.EPERM, "not owner")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    os.close(open_for_backup(b(f)))
    assert len(seen) == 2 and not seen[1] & os.O_NOATIME


def test_file_changed_detects_modification_and_replacement(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    before = os.lstat(f)
    assert not file_changed(before, os.lstat(f))
    with open(f, "ab") as fh:
        fh.write(b"more")
    assert file_changed(before, os.lstat(f))
    before = os.lstat(f)
    (tmp_path / "g").write_bytes(b"onemore")
    os.utime(tmp_path / "g", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.rename(tmp_path / "g", f)
    assert file_changed(before, os.lstat(f))


# --- creating special files -----------------------------------------------------------


def test_create_special_makes_symlink_fifo_and_socket(tmp_path: Path) -> None:
    base = b(tmp_path)
    create_special(base + b"/l", Node(name=b"l", type=NodeType.SYMLINK, linktarget=b"x\xff"), owner=False)
    create_special(base + b"/p", Node(name=b"p", type=NodeType.FIFO, mode=0o644), owner=False)
    create_special(base + b"/s", Node(name=b"s", type=NodeType.SOCKET), owner=False)
    assert os.readlink(base + b"/l") == b"x\xff"
    assert stat.S_ISFIFO(os.lstat(base + b"/p").st_mode)
    assert stat.S_ISSOCK(os.lstat(base + b"/s").st_mode)


@as_root
def test_create_special_makes_device_nodes_as_root(tmp_path: Path) -> None:
    path = b(tmp_path) + b"/null"
    create_special(path, Node(name=b"null", type=NodeType.CHARDEV, rdev=os.makedev(1, 3)), owner=True)
    st_ = os.lstat(path)
    assert stat.S_ISCHR(st_.st_mode) and st_.st_rdev == os.makedev(1, 3)
    blk = b(tmp_path) + b"/blk"
    create_special(blk, Node(name=b"blk", type=NodeType.BLOCKDEV, rdev=os.makedev(7, 0)), owner=True)
    assert stat.S_ISBLK(os.lstat(blk).st_mode) and os.lstat(blk).st_rdev == os.makedev(7, 0)


def test_create_special_refuses_devices_without_ownership(tmp_path: Path) -> None:
    path = b(tmp_path) + b"/null"
    with pytest.raises(SpecialFileNotCreated, match="needs root"):
        create_special(path, Node(name=b"null", type=NodeType.CHARDEV, rdev=os.makedev(1, 3)), owner=False)
    assert not os.path.lexists(path)


def test_create_special_rejects_regular_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_special(b(tmp_path) + b"/f", Node(name=b"f", type=NodeType.FILE), owner=False)


# --- applying metadata ----------------------------------------------------------------


def metadata(node: Node) -> tuple[object, ...]:
    return (node.type, node.mode, node.uid, node.gid, node.mtime_ns, node.atime_ns,
            node.xattrs, node.linktarget, node.rdev)


@as_root
def test_apply_metadata_restores_mode_owner_times_xattrs_and_acls_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    os.chown(src, 54321, 54322)
    os.chmod(src, 0o4751)  # setuid survives only if chmod comes after chown
    setfacl("-m", "u:1234:rwx,g:2345:r,m::rwx", src)
    os.setxattr(src, "user.bin", b"\x00\xff\x01")
    os.setxattr(src, "trusted.t", b"t")
    os.utime(src, ns=(OLDER_NS, OLD_NS))
    node = node_from_path(b(src))
    assert node.mode == 0o4771 and ACL_ACCESS in node.xattrs

    dst = tmp_path / "dst"
    dst.write_bytes(b"x")
    os.chmod(dst, 0o600)
    assert apply_metadata(b(dst), node, owner=True) == []
    assert metadata(node_from_path(b(dst))) == metadata(node)
    assert getfacl(dst) == getfacl(src)
    assert os.getxattr(dst, "user.bin") == b"\x00\xff\x01"


@as_root
def test_apply_metadata_restores_directory_default_acl(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.chmod(src, 0o2750)
    setfacl("-d", "-m", "u:1234:rx,g::r", src)
    os.utime(src, ns=(OLDER_NS, OLD_NS))
    node = node_from_path(b(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    assert apply_metadata(b(dst), node, owner=True) == []
    assert metadata(node_from_path(b(dst))) == metadata(node)
    assert getfacl(dst) == getfacl(src)


def test_apply_metadata_removes_acls_inherited_from_the_target_parent(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"")
    os.chmod(src, 0o640)
    node = node_from_path(b(src))
    parent = tmp_path / "p"
    parent.mkdir()
    setfacl("-d", "-m", "u:1234:rwx", parent)
    dst = parent / "dst"
    dst.write_bytes(b"")
    assert ACL_ACCESS in fsmeta.read_xattrs(b(dst))
    assert apply_metadata(b(dst), node, owner=False) == []
    assert ACL_ACCESS not in fsmeta.read_xattrs(b(dst))
    assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o640


def test_apply_metadata_sets_user_xattrs_before_making_file_read_only(tmp_path: Path) -> None:
    node = Node(name=b"f", type=NodeType.FILE, mode=0o444, xattrs={b"user.k": b"v"})
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert apply_metadata(b(f), node, owner=False) == []
    assert os.getxattr(f, "user.k") == b"v"
    assert stat.S_IMODE(os.lstat(f).st_mode) == 0o444


@as_root
def test_unprivileged_apply_metadata_sets_user_xattrs_before_making_file_read_only(
    shared_dir: Path,
) -> None:
    f = shared_dir / "f"
    f.write_bytes(b"")
    os.chown(f, NOBODY, NOBODY)
    os.chmod(f, 0o600)
    node = Node(name=b"f", type=NodeType.FILE, mode=0o444, xattrs={b"user.k": b"v"})
    assert run_as_nobody(lambda: apply_metadata(b(f), node, owner=False)) == []
    assert os.getxattr(f, "user.k") == b"v"
    assert stat.S_IMODE(os.lstat(f).st_mode) == 0o444


@as_root
def test_apply_metadata_on_symlink_sets_owner_and_times_of_the_link_itself(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"")
    os.utime(target, ns=(5, 5))
    link = tmp_path / "l"
    os.symlink("t", link)
    node = Node(name=b"l", type=NodeType.SYMLINK, linktarget=b"t", uid=54321, gid=54322,
                mtime_ns=OLD_NS, atime_ns=OLDER_NS)
    assert apply_metadata(b(link), node, owner=True) == []
    st_ = os.lstat(link)
    assert (st_.st_uid, st_.st_gid, st_.st_mtime_ns, st_.st_atime_ns) == (54321, 54322, OLD_NS, OLDER_NS)
    assert os.stat(target).st_mtime_ns == 5
    assert os.stat(target).st_uid == 0


def test_a_directory_node_records_no_atime_and_restores_with_its_mtime(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.utime(d, ns=(OLDER_NS, OLD_NS))
    node = node_from_path(b(d))
    assert (node.type, node.mtime_ns, node.atime_ns) == (NodeType.DIR, OLD_NS, 0)
    out = tmp_path / "out"
    out.mkdir()
    assert apply_metadata(b(out), node, owner=False) == []
    assert (os.lstat(out).st_mtime_ns, os.lstat(out).st_atime_ns) == (OLD_NS, OLD_NS)
    # A snapshot made before directories' atimes were left out still has them.
    node.atime_ns = OLDER_NS
    assert apply_metadata(b(out), node, owner=False) == []
    assert (os.lstat(out).st_mtime_ns, os.lstat(out).st_atime_ns) == (OLD_NS, OLDER_NS)


def test_apply_metadata_returns_warnings_for_refused_xattrs(tmp_path: Path) -> None:
    link = tmp_path / "l"
    os.symlink("nowhere", link)
    node = Node(name=b"l", type=NodeType.SYMLINK, linktarget=b"nowhere",
                xattrs={b"user.\xff": b"v"}, mtime_ns=OLD_NS, atime_ns=OLD_NS)
    warnings = apply_metadata(b(link), node, owner=False)
    assert len(warnings) == 1
    assert "cannot set xattr user.\\xff" in warnings[0]
    assert os.lstat(link).st_mtime_ns == OLD_NS  # the rest was still applied


def test_apply_metadata_without_owner_leaves_ownership_alone(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    before = os.lstat(f)
    apply_metadata(b(f), Node(name=b"f", type=NodeType.FILE, uid=54321, gid=54322, mode=0o600),
                   owner=False)
    after = os.lstat(f)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_resolve_owner_prefers_local_names_unless_numeric_ids() -> None:
    node = Node(name=b"f", type=NodeType.FILE, uid=4321, gid=8765, user="root", group="root")
    assert resolve_owner(node) == (0, 0)
    assert resolve_owner(node, numeric_ids=True) == (4321, 8765)
    unknown = Node(name=b"f", type=NodeType.FILE, uid=4321, gid=8765,
                   user="no-such-user-zz", group="no-such-group-zz")
    assert resolve_owner(unknown) == (4321, 8765)


@as_root
def test_apply_metadata_recreates_a_device_node_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    os.mknod(src, stat.S_IFCHR | 0o620, os.makedev(1, 3))
    os.chown(src, 54321, 5)
    os.utime(src, ns=(OLDER_NS, OLD_NS))
    node = node_from_path(b(src))
    dst = b(tmp_path) + b"/dst"
    create_special(dst, node, owner=True)
    assert apply_metadata(dst, node, owner=True) == []
    assert metadata(node_from_path(dst)) == metadata(node)
