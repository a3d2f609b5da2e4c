"""Read-only views of snapshots: ls, find, diff and stats.

*ls* lists nodes under a path of one snapshot; *find* searches names or paths
across snapshots with shell-style patterns; *diff* compares two snapshots'
trees, skipping identical subtrees by ID; *stats* measures a repository: the
restore size of snapshots, the unique data they reference, and what is stored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from resurgo.backend import layout
from resurgo.repo import BlobType, Repository
from resurgo.snapshot.model import Node, NodeType, Snapshot
from resurgo.snapshot.store import find_node, load_tree, walk_tree


def ls(repo: Repository, snap: Snapshot, path: bytes = b"/", *, recursive: bool = True
       ) -> Iterator[tuple[bytes, Node]]:
    """Nodes under ``path`` (paths returned with a leading ``/``)."""
    node = find_node(repo, snap.tree, path)
    base = b"/" + b"/".join(p for p in path.split(b"/") if p)
    if node.type is not NodeType.DIR or node.subtree is None:
        yield base, node
        return
    prefix = base.rstrip(b"/")
    if recursive:
        for p, n in walk_tree(repo, node.subtree, prefix):
            yield (p if p.startswith(b"/") else b"/" + p), n
    else:
        for n in load_tree(repo, node.subtree):
            yield prefix + b"/" + n.name, n


@dataclass
class FindMatch:
    snapshot: Snapshot
    path: bytes
    node: Node


def find(repo: Repository, snaps: Sequence[Snapshot], pattern: str, *, ignore_case: bool = False
         ) -> Iterator[FindMatch]:
    """Entries whose name (or, if the pattern contains '/', whose full path) matches."""
    pat = pattern.lower() if ignore_case else pattern
    on_path = "/" in pattern
    for snap in snaps:
        for p, n in walk_tree(repo, snap.tree, b""):
            full = b"/" + p
            subject = (full if on_path else n.name).decode("utf-8", "surrogateescape")
            if ignore_case:
                subject = subject.lower()
            if fnmatch.fnmatchcase(subject, pat):
                yield FindMatch(snap, full, n)


@dataclass
class DiffEntry:
    change: str  # "+" added, "-" removed, "M" content changed, "U" metadata only, "T" type changed
    path: bytes
    old: Node | None
    new: Node | None


def _meta(n: Node) -> tuple[object, ...]:
    return (n.mode, n.uid, n.gid, n.mtime_ns, n.linktarget, sorted(n.xattrs.items()), n.rdev)


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> Iterator[DiffEntry]:
    """Differences from ``a`` to ``b``; identical subtrees (same ID) are skipped."""
    stack: list[tuple[bytes | None, bytes | None, bytes]] = [(a.tree, b.tree, b"")]
    while stack:
        ta, tb, prefix = stack.pop()
        if ta == tb:
            continue
        na = {n.name: n for n in load_tree(repo, ta)} if ta else {}
        nb = {n.name: n for n in load_tree(repo, tb)} if tb else {}
        for name in sorted(set(na) | set(nb), reverse=True):
            path = prefix + b"/" + name
            x, y = na.get(name), nb.get(name)
            if x is None and y is not None:
                yield DiffEntry("+", path, None, y)
                if y.type is NodeType.DIR and y.subtree:
                    for p, n in walk_tree(repo, y.subtree, path):
                        yield DiffEntry("+", p, None, n)
            elif y is None and x is not None:
                yield DiffEntry("-", path, x, None)
                if x.type is NodeType.DIR and x.subtree:
                    for p, n in walk_tree(repo, x.subtree, path):
                        yield DiffEntry("-", p, n, None)
            elif x is not None and y is not None:
                if x.type is not y.type:
                    yield DiffEntry("T", path, x, y)
                    continue
                if x.type is NodeType.DIR:
                    if _meta(x) != _meta(y):
                        yield DiffEntry("U", path, x, y)
                    stack.append((x.subtree, y.subtree, path))
                elif x.content != y.content or x.size != y.size or x.holes != y.holes:
                    yield DiffEntry("M", path, x, y)
                elif _meta(x) != _meta(y):
                    yield DiffEntry("U", path, x, y)


@dataclass
class RepoStats:
    snapshots: int = 0
    files: int = 0
    restore_size: int = 0  # sum of file sizes over the chosen snapshots
    unique_blobs: int = 0
    unique_raw: int = 0  # plaintext bytes of the distinct data blobs referenced
    unique_stored: int = 0  # stored (compressed + encrypted) bytes of those blobs
    repo_packs: int = 0
    repo_size: int = 0  # bytes of every pack in the repository
    per_snapshot: list[dict[str, object]] = field(default_factory=list)

    @property
    def dedup_ratio(self) -> float:
        return self.restore_size / self.unique_raw if self.unique_raw else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_raw / self.unique_stored if self.unique_stored else 1.0


def stats(repo: Repository, snaps: Sequence[Snapshot]) -> RepoStats:
    """Sizes, deduplication and compression for ``snaps``.

    ``per_snapshot`` gives each snapshot's restore size, the data it added
    (blobs no earlier snapshot of the list referenced) and the data only it
    holds (what deleting it alone would free).
    """
    st = RepoStats(snapshots=len(snaps))
    owners: dict[bytes, int] = {}  # blob -> number of snapshots referencing it
    first_seen: dict[bytes, int] = {}
    per: list[dict[str, object]] = []
    ordered = sorted(snaps, key=lambda s: s.time_ns)
    for i, snap in enumerate(ordered):
        mine: set[bytes] = set()
        size = 0
        files = 0
        for _, n in walk_tree(repo, snap.tree):
            if n.type is NodeType.FILE:
                files += 1
                size += n.size
                mine.update(n.content)
        for b in mine:
            owners[b] = owners.get(b, 0) + 1
            first_seen.setdefault(b, i)
        st.files += files
        st.restore_size += size
        per.append({"id": snap.id, "time_ns": snap.time_ns, "files": files, "size": size,
                    "_blobs": mine})

    def raw_of(b: bytes) -> tuple[int, int]:
        loc = repo.lookup(BlobType.DATA, b)
        return (loc.raw_length, loc.length) if loc else (0, 0)

    for b in owners:
        raw, stored = raw_of(b)
        st.unique_blobs += 1
        st.unique_raw += raw
        st.unique_stored += stored
    for i, p in enumerate(per):
        blobs: set[bytes] = p.pop("_blobs")  # type: ignore[assignment]
        p["added_raw"] = sum(raw_of(b)[0] for b in blobs if first_seen[b] == i)
        p["exclusive_raw"] = sum(raw_of(b)[0] for b in blobs if owners[b] == 1)
    st.per_snapshot = per
    for o in repo.backend.list(layout.DATA):
        st.repo_packs += 1
        st.repo_size += o.size
    return st
