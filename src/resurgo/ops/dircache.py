"""The directory cache: what the last backup of a set of paths saw in each directory.

A backup with a parent compares every entry with its node in the parent's
tree. Decoding those trees is most of the Python work of a backup in which
little changed (44 % of a no-change backup's CPU on the benchmark dataset,
~10 us per entry). The directory cache lets a backup skip the trees of the
directories in which nothing changed, as borg's files cache lets it skip
files; restic always decodes them.

After each backup of a set of paths on a host, a cache file in the
repository's local cache directory records, for every directory the backup
saved, its path, the ID of the tree saved for it and a *signature*: a BLAKE3
hash of its entries as ``lstat`` saw them (name, type and mode, inode,
device, size, mtime, atime (0 for a directory, whose atime its node does not
record), ctime, uid, gid, link count, device number, and the user and group
names of the uids and gids). Everything a node stores is one of those
fields, or is covered by the ctime (extended attributes, a symlink's
target), or is the content, which the backup reuses on the same evidence as
a parent's node (size, mtime, ctime, inode and device unchanged).

The next backup, when the cache was written for the snapshot it takes as
its parent, lists each directory as before; if the signature of its entries
equals the cached one, the directory's files are unchanged and their nodes
are not built, decoded or compared. Its subdirectories are still walked;
when each ends with its cached tree, the directory's cached tree is its tree.
When one does not, the directory's tree is rebuilt from the parent's nodes
of its files and the new nodes of its subdirectories.

When the cache is used, and when not:

* only for the snapshot it was written for, when that snapshot is the
  backup's parent, with the same exclude rules and ``--one-file-system``;
* only while every index object it recorded is still in the repository's
  index. Prune and repair replace index objects whenever blobs leave the
  index, so a blob the cached trees refer to cannot have left without the
  cache being dropped. (The parent comparison, likewise, reuses the content
  of an unchanged file once its blobs are in the index, without reading them.)
* a directory whose backup had a warning (an entry that could not be read or
  listed, a node with an error) gets no signature, and is compared with its
  parent tree the next time;
* the file is sealed with the repository's key (``Kind.CACHE``) and bound to
  its name, so a damaged, foreign or tampered cache fails authentication and
  is ignored: the backup then decodes the parent's trees as without it.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Iterable

import blake3

from resurgo.repo import Repository, batch
from resurgo.snapshot.fsmeta import group_name, user_name

FORMAT = 2  # 2: a directory's row has 0 in place of its atime
# One entry's lstat fields, then its name: name length, st_mode, inode,
# device, size, mtime, atime (0 for a directory), ctime, uid, gid, link count, rdev.
_ROW = struct.Struct("<IIQQqqqqIIQQ")
_RECORD = struct.Struct("<I32sB32s")  # path length, tree ID, has signature, signature
_HEADER_LEN = struct.Struct("<I")


_WIDE = 0xFFFFFFFF  # in place of the name length: a row of fields _ROW cannot hold


def entry_row(name: bytes, st: os.stat_result) -> bytes:
    """One entry's part of its directory's signature.

    A subdirectory's atime is left out, as its node leaves it out
    (``fsmeta.node_from_path``): listing it must not change its parent's signature.
    """
    atime = 0 if stat.S_ISDIR(st.st_mode) else st.st_atime_ns
    fields = (st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, atime,
              st.st_ctime_ns, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev)
    try:
        return _ROW.pack(len(name), *fields) + name
    except struct.error:
        # A time past 2262 (ext4 stores them up to 2446) overflows 64 bits:
        # such a row is written out in decimal, marked so that it cannot be
        # read as a row of the other kind.
        text = repr(fields).encode()
        return struct.pack("<II", _WIDE, len(text)) + text + len(name).to_bytes(4, "little") + name


def signature(rows: list[bytes], owners: Iterable[tuple[int, int]]) -> bytes:
    """The signature of a directory's entries (``entry_row`` each, in name order)
    and their (uid, gid) pairs: the names those resolve to are in a node too."""
    names = "".join(
        f"{uid}:{user_name(uid)!r}:{gid}:{group_name(gid)!r}\n" for uid, gid in sorted(owners)
    ).encode("utf-8", "surrogateescape")
    if batch.digest is not None:
        # The same hash, holding the GIL (repo/batch.py): a scanner thread
        # computes this for every directory it lists.
        return batch.digest([*rows, names])
    h = blake3.blake3(b"".join(rows))
    h.update(names)
    return h.digest()


def cache_name(host: str, paths: list[str]) -> str:
    """The cache file of the backups of ``paths`` on ``host``."""
    key = json.dumps([host, sorted(paths)], ensure_ascii=True).encode()
    return "dirs-" + blake3.blake3(key).hexdigest()[:32]


def options_key(excludes: list[str], one_file_system: bool) -> str:
    """What, besides the file system, decides a directory's tree."""
    return json.dumps({"v": FORMAT, "excludes": excludes, "one_file_system": one_file_system})


class DirCache:
    """The directories of one snapshot: path -> (tree ID, signature or None)."""

    def __init__(self, dirs: dict[bytes, tuple[bytes, bytes | None]]) -> None:
        self.dirs = dirs

    def tree(self, path: bytes) -> bytes | None:
        entry = self.dirs.get(path)
        return entry[0] if entry is not None else None

    def signature(self, path: bytes, tree: bytes) -> bytes | None:
        """The cached signature of ``path``, if its cached tree is ``tree``."""
        entry = self.dirs.get(path)
        return entry[1] if entry is not None and entry[0] == tree else None


def encode(snapshot_id: str, options: str, index_ids: Iterable[str],
           dirs: dict[bytes, tuple[bytes, bytes | None]]) -> bytes:
    ids = sorted(index_ids)
    header = json.dumps({"v": FORMAT, "snapshot": snapshot_id, "options": options,
                         "index": len(ids)}).encode()
    out = [_HEADER_LEN.pack(len(header)), header, *(bytes.fromhex(i) for i in ids)]
    pack = _RECORD.pack
    for path, (tree, sig) in dirs.items():
        out.append(pack(len(path), tree, sig is not None, sig or bytes(32)))
        out.append(path)
    return b"".join(out)


def decode(plain: bytes, snapshot_id: str, options: str,
           index_ids: set[str]) -> DirCache | None:
    """The cache in ``plain`` if it was written for ``snapshot_id`` with ``options``
    and every index object it recorded is in ``index_ids``; None otherwise
    (also for anything this version does not write)."""
    try:
        return _decode(plain, snapshot_id, options, index_ids)
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None


def _decode(plain: bytes, snapshot_id: str, options: str,
            index_ids: set[str]) -> DirCache | None:
    (hlen,) = _HEADER_LEN.unpack_from(plain)
    at = _HEADER_LEN.size + hlen
    header = json.loads(plain[_HEADER_LEN.size : at])
    if (header.get("v") != FORMAT or header.get("snapshot") != snapshot_id
            or header.get("options") != options):
        return None
    count = header["index"]
    ids = {plain[i : i + 32].hex() for i in range(at, at + 32 * count, 32)}
    if len(ids) != count or not ids <= index_ids:
        return None
    at += 32 * count
    dirs: dict[bytes, tuple[bytes, bytes | None]] = {}
    unpack = _RECORD.unpack_from
    size = _RECORD.size
    end = len(plain)
    while at < end:
        plen, tree, has_sig, sig = unpack(plain, at)
        at += size
        path = plain[at : at + plen]
        if len(path) != plen:
            return None
        at += plen
        dirs[path] = (tree, sig if has_sig else None)
    return DirCache(dirs)


def load(repo: Repository, name: str, snapshot_id: str, options: str) -> DirCache | None:
    """The cache ``name`` if it holds, for this parent and these options; None otherwise."""
    plain = repo.load_local_state(name)
    if plain is None:
        return None
    return decode(plain, snapshot_id, options, repo.index_ids)


def save(repo: Repository, name: str, snapshot_id: str, options: str,
         dirs: dict[bytes, tuple[bytes, bytes | None]]) -> None:
    repo.save_local_state(name, encode(snapshot_id, options, repo.index_ids, dirs))
