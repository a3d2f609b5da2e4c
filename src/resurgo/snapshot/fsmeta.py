"""Filesystem metadata on Linux: reading it into nodes and applying it back.

Vocabulary: *metadata* is everything about an entry except its data: type,
permission bits, owner (numeric ids and names), times, extended attributes
(POSIX ACLs are the ``system.posix_acl_access`` / ``system.posix_acl_default``
xattrs and travel as such), link targets and device numbers. *Extents* are the
``(offset, length)`` ranges of a file that hold data; *holes* are the ranges
between them (sparse files).

All paths are raw bytes, never decoded. Reading raises ``OSError`` for the
entry itself (the backup records it and moves on); applying returns warnings
for what the target filesystem refuses, because a restore should finish with
as much metadata as the target can hold.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import stat
from functools import lru_cache

from resurgo.errors import RestoreError
from resurgo.snapshot.model import Node, NodeType

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
ACL_XATTRS = frozenset({ACL_ACCESS, ACL_DEFAULT})

# The filesystem has no xattrs at all, or the attribute vanished between list and get.
_XATTR_ABSENT = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA})
_DENIED = frozenset({errno.EPERM, errno.EACCES})

_TYPES = {
    stat.S_IFREG: NodeType.FILE,
    stat.S_IFDIR: NodeType.DIR,
    stat.S_IFLNK: NodeType.SYMLINK,
    stat.S_IFBLK: NodeType.BLOCKDEV,
    stat.S_IFCHR: NodeType.CHARDEV,
    stat.S_IFIFO: NodeType.FIFO,
    stat.S_IFSOCK: NodeType.SOCKET,
}


class SpecialFileNotCreated(RestoreError):
    """A device node could not be created (needs root / CAP_MKNOD); the restore goes on."""


def show_path(path: bytes) -> str:
    """``path`` for messages: undecodable bytes shown as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace")


def node_type(st_mode: int) -> NodeType:
    """The node type of a ``st_mode``; ValueError for types Linux does not have."""
    try:
        return _TYPES[stat.S_IFMT(st_mode)]
    except KeyError:
        raise ValueError(f"unsupported file type {stat.S_IFMT(st_mode):o}") from None


# --- reading --------------------------------------------------------------------


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """The login name of ``uid`` (None if unknown or not valid UTF-8); cached."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    return name if name.isprintable() and _utf8_clean(name) else None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    """The group name of ``gid`` (None if unknown or not valid UTF-8); cached."""
    try:
        name = grp.getgrgid(gid).gr_name
    except KeyError:
        return None
    return name if name.isprintable() and _utf8_clean(name) else None


def _utf8_clean(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_xattrs(path: bytes, *, tolerate_denied: bool = False) -> dict[bytes, bytes]:
    """All extended attributes of ``path`` itself (symlinks not followed).

    A filesystem without xattr support yields ``{}``. EPERM/EACCES raise unless
    ``tolerate_denied`` (used for special files, where some kernels refuse).
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _XATTR_ABSENT or (tolerate_denied and exc.errno in _DENIED):
            return {}
        raise
    if not names:
        return {}
    out: dict[bytes, bytes] = {}
    for xname in names:
        try:
            value = os.getxattr(path, xname, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _XATTR_ABSENT or (tolerate_denied and exc.errno in _DENIED):
                continue
            raise
        out[os.fsencode(xname)] = value
    return out


def node_from_path(
    path: bytes,
    st: os.stat_result | None = None,
    *,
    name: bytes | None = None,
    xattrs: bool = True,
) -> Node:
    """A node describing ``path`` itself (lstat; symlinks are not followed).

    A directory's atime is not recorded (0, absent from its node): anything
    that lists the directory moves it (``updatedb``, ``ls``, a backup tool
    without ``O_NOATIME``), and recording it would make every listed
    directory's tree, and its parents', look changed to the next backup. borg
    and kopia record none either; restore sets a directory's atime to its
    mtime (``_apply``).

    ``st`` saves the lstat when the caller has it; ``name`` defaults to the last
    path component. ``size`` is recorded for regular files only; ``content``,
    ``holes`` and ``subtree`` are left for the caller to fill. Raises OSError
    (entry vanished, permission denied) and ValueError (unknown file type).
    """
    if st is None:
        st = os.lstat(path)
    ntype = node_type(st.st_mode)
    # Positional arguments, in Node's field order: a backup builds one node per
    # entry, and keyword arguments cost a third more.
    node = Node(
        name if name is not None else os.path.basename(path.rstrip(b"/")),
        ntype,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        user_name(st.st_uid),
        group_name(st.st_gid),
        st.st_mtime_ns,
        st.st_atime_ns if ntype is not NodeType.DIR else 0,
        st.st_ctime_ns,
        st.st_size if ntype is NodeType.FILE else 0,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_rdev if ntype in (NodeType.BLOCKDEV, NodeType.CHARDEV) else 0,
    )
    if ntype is NodeType.SYMLINK:
        node.linktarget = os.readlink(path)
    if xattrs:
        special = ntype not in (NodeType.FILE, NodeType.DIR)
        node.xattrs = read_xattrs(path, tolerate_denied=special)
    return node


def open_for_backup(path: bytes) -> int:
    """Open a file for reading its data without following symlinks or touching atime.

    O_NOATIME needs ownership (or CAP_FOWNER); on EPERM the open is retried
    without it. O_NONBLOCK during the open keeps a fifo swapped in after the
    lstat from blocking forever; it is cleared again before returning, and the
    caller detects the swap with ``file_changed``.
    """
    fd = open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_dir_for_backup(path: bytes) -> int:
    """Open a directory for listing (``os.scandir(fd)``) without touching its atime.

    Listing a directory otherwise sets its atime (under ``relatime``, the first
    time after each change and once a day): a backup leaves the atimes it finds
    as they were. A symlink swapped in after the lstat is not followed.
    """
    return open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_noatime(path: bytes | str, flags: int, *, dir_fd: int | None = None) -> int:
    """``os.open`` with ``O_NOATIME`` when allowed: reading for a backup must not
    move the atime that the backup (and the next one) records."""
    # O_NOATIME needs ownership (or CAP_FOWNER): without it, open as usual.
    try:
        return os.open(path, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        return os.open(path, flags, dir_fd=dir_fd)


def file_changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file was modified or replaced between two stats (size, mtime, ctime, inode, device)."""
    return (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or before.st_ctime_ns != after.st_ctime_ns
        or before.st_ino != after.st_ino
        or before.st_dev != after.st_dev
    )


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges of ``fd`` below ``size`` that hold data.

    Uses SEEK_DATA/SEEK_HOLE; where unsupported the whole file is one extent.
    Extents are sorted, disjoint and clipped to ``size`` (a file that shrank
    yields fewer bytes; ``file_changed`` catches that). Leaves the offset at 0.
    """
    if size <= 0:
        return []
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return [(0, size)]
    extents: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data at or after offset
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, seek_hole), size)
            extents.append((start, end - start))
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)]
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return extents


def holes_from_extents(extents: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The gaps between sorted, disjoint data extents within ``[0, size)``."""
    holes: list[tuple[int, int]] = []
    pos = 0
    for offset, length in extents:
        if offset > pos:
            holes.append((pos, offset - pos))
        pos = max(pos, offset + length)
    if pos < size:
        holes.append((pos, size - pos))
    return holes


def extents_from_holes(holes: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The data ranges left by sorted, disjoint holes within ``[0, size)`` (inverse of
    ``holes_from_extents``); restore writes ``content`` into these, in order."""
    return holes_from_extents(holes, size)


# --- applying -----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, UnicodeEncodeError):
        return None


@lru_cache(maxsize=4096)
def _gid_of(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, UnicodeEncodeError):
        return None


def resolve_owner(node: Node, *, numeric_ids: bool = False) -> tuple[int, int]:
    """The ``(uid, gid)`` to give a restored entry.

    By default a recorded user/group *name* that exists on this machine wins
    over the recorded number (a restore onto a new host keeps files owned by
    the same accounts, whose ids may differ); otherwise, or with
    ``numeric_ids``, the recorded numbers are used.
    """
    uid, gid = node.uid, node.gid
    if not numeric_ids:
        local_uid = _uid_of(node.user) if node.user is not None else None
        local_gid = _gid_of(node.group) if node.group is not None else None
        uid = local_uid if local_uid is not None else uid
        gid = local_gid if local_gid is not None else gid
    return uid, gid


def create_special(path: bytes, node: Node, *, owner: bool) -> None:
    """Create a symlink, fifo, socket or device node at ``path`` (which must not exist).

    Created with owner-only permissions; ``apply_metadata`` sets the real ones.
    Device nodes are made only when ``owner`` is True (restoring as root);
    otherwise, or when the kernel refuses (no CAP_MKNOD), SpecialFileNotCreated
    is raised so that the restore can report it and continue. Other failures
    raise OSError. Regular files and directories are not special: ValueError.
    """
    ntype = node.type
    if ntype is NodeType.SYMLINK:
        if not node.linktarget:
            raise ValueError(f"symlink without target: {show_path(path)}")
        os.symlink(node.linktarget, path)
    elif ntype is NodeType.FIFO:
        os.mkfifo(path, 0o600)
    elif ntype is NodeType.SOCKET:
        # A socket inode without a listener, exactly what a backup of one restores.
        os.mknod(path, stat.S_IFSOCK | 0o600)
    elif ntype in (NodeType.BLOCKDEV, NodeType.CHARDEV):
        kind = "block" if ntype is NodeType.BLOCKDEV else "character"
        if not owner:
            raise SpecialFileNotCreated(
                f"{show_path(path)}: {kind} device not restored (needs root)"
            )
        fmt = stat.S_IFBLK if ntype is NodeType.BLOCKDEV else stat.S_IFCHR
        try:
            os.mknod(path, fmt | 0o600, node.rdev)
        except PermissionError as exc:
            raise SpecialFileNotCreated(
                f"{show_path(path)}: {kind} device not restored: {exc.strerror}"
            ) from exc
    else:
        raise ValueError(f"{ntype} is not a special file type")


def _set_xattr(
    target: bytes | int, xname: bytes, value: bytes, warnings: list[str], shown: str
) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, xname, value)
        else:
            os.setxattr(target, xname, value, follow_symlinks=False)
    except OSError as exc:
        warnings.append(f"{shown}cannot set xattr {show_path(xname)}: {exc.strerror}")


def apply_metadata(
    path: bytes, node: Node, *, owner: bool, numeric_ids: bool = False
) -> list[str]:
    """Give ``path`` the metadata of ``node``; returns warnings for what could not be set.

    Order matters and is:

    1. owner (lchown), only when ``owner`` (root); ids from ``resolve_owner``.
       First, because chown clears setuid/setgid bits and file capabilities.
    2. ACLs the entry should not have are removed (e.g. inherited from a
       parent's default ACL), then the other xattrs are set, while the entry is
       still writable (user.* xattrs need write permission).
    3. permission bits (chmod; not on symlinks, which have none).
    4. ACL xattrs, after chmod, because chmod rewrites the ACL mask entry.
    5. atime/mtime (not following symlinks), last, since every step above
       may touch them. Directories must be applied after their contents.

    Nothing is raised for a refused step: each becomes a warning string.
    """
    return _apply(path, node, owner=owner, numeric_ids=numeric_ids, shown=show_path(path) + ": ",
                  inherited_acls=True)


def apply_metadata_fd(
    fd: int, node: Node, *, owner: bool, numeric_ids: bool = False, inherited_acls: bool = True
) -> list[str]:
    """``apply_metadata`` through an open descriptor of a regular file or directory
    (fchown, fchmod, futimens, f*xattr: no path lookups, nothing to follow).

    ``inherited_acls=False`` skips listing the ACLs to remove: for the caller
    that just created the file (``O_EXCL``) in a directory without a default
    ACL, which is the only way a new file gets one. Warnings do not name the
    entry (the caller knows which one it is). The descriptor may be read-only.
    """
    return _apply(fd, node, owner=owner, numeric_ids=numeric_ids, shown="",
                  inherited_acls=inherited_acls)


def _apply(
    target: bytes | int, node: Node, *, owner: bool, numeric_ids: bool, shown: str,
    inherited_acls: bool,
) -> list[str]:
    # A path is never followed through a symlink; a descriptor has nothing to follow.
    by_fd = isinstance(target, int)
    nofollow: dict[str, bool] = {} if by_fd else {"follow_symlinks": False}
    warnings: list[str] = []
    if owner:
        uid, gid = resolve_owner(node, numeric_ids=numeric_ids)
        try:
            os.chown(target, uid, gid, **nofollow)
        except OSError as exc:
            warnings.append(f"{shown}cannot set owner {uid}:{gid}: {exc.strerror}")

    is_link = node.type is NodeType.SYMLINK
    xattrs = node.xattrs
    if not is_link and inherited_acls:
        try:
            present = {os.fsencode(n) for n in os.listxattr(target, **nofollow)}
        except OSError:
            present = set()
        for xname in sorted((present & ACL_XATTRS) - set(xattrs)):
            try:
                os.removexattr(target, xname, **nofollow)
            except OSError as exc:
                warnings.append(f"{shown}cannot remove ACL {show_path(xname)}: {exc.strerror}")
    if xattrs:
        for xname in sorted(xattrs):
            if xname not in ACL_XATTRS:
                _set_xattr(target, xname, xattrs[xname], warnings, shown)

    if not is_link:
        try:
            os.chmod(target, node.mode)
        except OSError as exc:
            warnings.append(f"{shown}cannot set mode {node.mode:04o}: {exc.strerror}")
    if xattrs:
        for xname in sorted(xattrs):
            if xname in ACL_XATTRS:
                _set_xattr(target, xname, xattrs[xname], warnings, shown)

    # A directory's atime is not recorded (node_from_path): it gets its mtime,
    # as borg restores an entry without one.
    atime_ns = node.atime_ns or (node.mtime_ns if node.type is NodeType.DIR else 0)
    try:
        if by_fd:
            os.utime(target, ns=(atime_ns, node.mtime_ns))
        else:
            os.utime(target, ns=(atime_ns, node.mtime_ns), follow_symlinks=False)
    except OSError as exc:
        warnings.append(f"{shown}cannot set times: {exc.strerror}")
    return warnings
