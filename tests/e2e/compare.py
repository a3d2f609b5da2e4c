"""Tree comparison for end-to-end tests: every byte and every piece of metadata.

``capture(root)`` records a directory tree: for each entry (raw-bytes path
relative to ``root``) its type, permission bits, numeric owner and the names
they resolve to, mtime and atime in nanoseconds, size, device number, link
target, extended attributes (POSIX ACLs included: they are the
``system.posix_acl_*`` attributes), hard-link group and, for regular files, a
reference to the content (compared lazily, sparse-aware, by ``diff_trees``).

Capturing does not disturb what it measures: every ``lstat`` happens before
the entry is opened, directories are listed and files read with
``O_NOATIME``. Symlink atimes are the one exception: reading a link's target
updates its atime and Linux offers no way around that, so they are not
compared. A directory's atime is not recorded by a backup (docs/backup.md):
a restored directory's atime must equal its mtime.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_BLOCK = 4 << 20


@dataclass
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    user: str | None
    group: str | None
    mtime_ns: int
    atime_ns: int | None
    size: int
    rdev: int
    nlink: int
    blocks: int
    linktarget: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    inode: tuple[int, int] = (0, 0)


@dataclass
class Tree:
    root: bytes
    entries: dict[bytes, Entry]

    def path(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    def link_groups(self) -> set[frozenset[bytes]]:
        groups: dict[tuple[int, int], set[bytes]] = {}
        for rel, e in self.entries.items():
            if e.kind == "file" and e.nlink > 1:
                groups.setdefault(e.inode, set()).add(rel)
        return {frozenset(g) for g in groups.values()}


_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


def _name(lookup: Callable[[int], Any], ident: int) -> str | None:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return None


def _open_noatime(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOATIME | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return {}
        raise
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}


def _entry(st: os.stat_result) -> Entry:
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    return Entry(
        kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        user=_name(pwd.getpwuid, st.st_uid), group=_name(grp.getgrgid, st.st_gid),
        mtime_ns=st.st_mtime_ns, atime_ns=None if kind == "symlink" else st.st_atime_ns,
        size=st.st_size if kind == "file" else 0, rdev=st.st_rdev, nlink=st.st_nlink,
        blocks=st.st_blocks, inode=(st.st_dev, st.st_ino),
    )


def capture(root: str | os.PathLike[str] | bytes) -> Tree:
    """Every entry under ``root`` (not ``root`` itself), without changing any atime."""
    top = os.fsencode(root)
    entries: dict[bytes, Entry] = {}
    # Phase 1: every lstat, each before its entry is opened. Iterative (deep trees).
    todo = [b""]
    while todo:
        rel = todo.pop()
        fd = _open_noatime(os.path.join(top, rel) if rel else top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                children = sorted((os.fsencode(d.name), d.stat(follow_symlinks=False)) for d in it)
        finally:
            os.close(fd)
        for name, st in children:
            child = os.path.join(rel, name) if rel else name
            entries[child] = _entry(st)
            if stat.S_ISDIR(st.st_mode):
                todo.append(child)
    # Phase 2: link targets and xattrs (neither touches an atime that is compared).
    for rel, e in entries.items():
        path = os.path.join(top, rel)
        if e.kind == "symlink":
            e.linktarget = os.readlink(path)
        e.xattrs = _xattrs(path)
    return Tree(top, entries)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        pos = end
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def same_content(a: bytes, b: bytes) -> str | None:
    """None when the two files hold the same bytes, else why not. Sparse-aware: a range
    that is a hole in both files is zeros in both, so only data ranges are read."""
    fa = _open_noatime(a, os.O_RDONLY)
    fb = _open_noatime(b, os.O_RDONLY)
    try:
        sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
        if sa != sb:
            return f"size {sa} != {sb}"
        for start, end in _merge(data_extents(fa, sa) + data_extents(fb, sb)):
            pos = start
            while pos < end:
                n = min(_BLOCK, end - pos)
                if os.pread(fa, n, pos) != os.pread(fb, n, pos):
                    return f"bytes differ in [{pos}, {pos + n})"
                pos += n
    finally:
        os.close(fa)
        os.close(fb)
    return None


def diff_trees(expected: Tree, actual: Tree, *, atime: bool = True, owner: bool = True,
               sparse: bool = True) -> list[str]:
    """Every difference between two captured trees (empty list: identical)."""
    problems: list[str] = []
    missing = sorted(set(expected.entries) - set(actual.entries))
    extra = sorted(set(actual.entries) - set(expected.entries))
    problems += [f"missing: {p!r}" for p in missing]
    problems += [f"unexpected: {p!r}" for p in extra]
    fields = ["kind", "mode", "mtime_ns", "size", "linktarget", "xattrs", "nlink"]
    if owner:
        fields += ["uid", "gid", "user", "group"]
    for rel in sorted(set(expected.entries) & set(actual.entries)):
        e, a = expected.entries[rel], actual.entries[rel]
        for f in fields:
            if getattr(e, f) != getattr(a, f):
                problems.append(f"{rel!r}: {f} {getattr(e, f)!r} != {getattr(a, f)!r}")
        if atime:
            want = e.mtime_ns if e.kind == "dir" else e.atime_ns
            if a.atime_ns != want:
                problems.append(f"{rel!r}: atime_ns {want!r} != {a.atime_ns!r}")
        if e.kind in ("chardev", "blockdev") and e.rdev != a.rdev:
            problems.append(f"{rel!r}: rdev {e.rdev} != {a.rdev}")
        if e.kind == "file" and a.kind == "file":
            why = same_content(expected.path(rel), actual.path(rel))
            if why:
                problems.append(f"{rel!r}: content differs: {why}")
            # A sparse file must stay sparse (a little slack for filesystem metadata blocks).
            if sparse and e.blocks * 512 < e.size and a.blocks > e.blocks + 64:
                problems.append(f"{rel!r}: {a.blocks} blocks allocated, source had {e.blocks}")
    if expected.link_groups() != actual.link_groups():
        problems.append(
            f"hard-link groups differ: {sorted(map(sorted, expected.link_groups()))} != "
            f"{sorted(map(sorted, actual.link_groups()))}"
        )
    return problems


def assert_same_tree(expected: Tree, actual: Tree, **kwargs: bool) -> None:
    problems = diff_trees(expected, actual, **kwargs)
    assert not problems, "trees differ:\n" + "\n".join(problems[:50])
    assert expected.entries, "nothing was compared"
