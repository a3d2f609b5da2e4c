"""Snapshots and trees as stored in a repository: save, load, list, find, walk.

Vocabulary: a *snapshot reference* is either a hex prefix of a snapshot ID or
``latest``; *filters* narrow a set of snapshots by host, path and tag. Walking a
tree yields ``(path, node)`` pairs where *path* is the raw-bytes path relative
to the snapshot root, components joined by ``/``.

Functions take any object with the repository methods they use (see
``SnapshotRepo``), so they work on a ``resurgo.repo.Repository`` and on small
fakes alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from resurgo.errors import (
    AmbiguousSnapshot,
    ObjectNotFound,
    ResurgoError,
    SnapshotNotFound,
    UsageError,
)
from resurgo.repo import BlobType
from resurgo.snapshot.model import (
    Node,
    NodeType,
    Snapshot,
    decode_snapshot,
    decode_tree,
    encode_snapshot,
)

SNAPSHOTS = "snapshots"
LATEST = "latest"


class SnapshotRepo(Protocol):
    """The part of ``Repository`` this module uses."""

    def save_object(self, kind: str, data: bytes) -> str: ...

    def load_object(self, kind: str, id_hex: str) -> bytes: ...

    def list_objects(self, kind: str) -> list[str]: ...

    def load_blob(self, blob_type: int, blob_id: bytes) -> bytes: ...


class PathNotInSnapshot(UsageError):
    """A path asked for does not exist in the snapshot (or crosses a non-directory)."""


def save_snapshot(repo: SnapshotRepo, snap: Snapshot) -> str:
    """Store ``snap`` and return its ID; also sets ``snap.id``.

    The caller must have flushed the repository first, so that everything the
    snapshot references is already indexed (write-order invariant).
    """
    snap_id = repo.save_object(SNAPSHOTS, encode_snapshot(snap))
    snap.id = snap_id
    return snap_id


def load_snapshot(repo: SnapshotRepo, id_hex: str) -> Snapshot:
    """Load and validate one snapshot by its full ID."""
    return decode_snapshot(repo.load_object(SNAPSHOTS, id_hex), snapshot_id=id_hex)


def list_snapshots(
    repo: SnapshotRepo, *, on_error: Callable[[str, ResurgoError], None] | None = None
) -> list[Snapshot]:
    """All snapshots, oldest first (ties broken by ID).

    A snapshot deleted between listing and loading is skipped. A snapshot that
    cannot be decoded raises, unless ``on_error(id, error)`` is given: then it
    is reported there and skipped, so one damaged snapshot does not hide the rest.
    """
    snaps = []
    for snap_id in repo.list_objects(SNAPSHOTS):
        try:
            snaps.append(load_snapshot(repo, snap_id))
        except ObjectNotFound:
            continue  # removed concurrently (forget/prune)
        except ResurgoError as exc:
            if on_error is None:
                raise
            on_error(snap_id, exc)
    snaps.sort(key=lambda s: (s.time_ns, s.id or ""))
    return snaps


def _norm_path(path: str) -> str:
    stripped = path.rstrip("/")
    return (stripped or "/") if path.startswith("/") else stripped


def filter_snapshots(
    snaps: Iterable[Snapshot],
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> list[Snapshot]:
    """The snapshots matching every given filter, in their input order.

    ``hosts``: the snapshot's hostname is one of them. ``paths``: the snapshot
    was made of all of them (trailing slashes ignored). ``tags``: the snapshot
    carries all of them. An empty filter matches everything.
    """
    want_paths = {_norm_path(p) for p in paths}
    want_tags = set(tags)
    out = []
    for snap in snaps:
        if hosts and snap.hostname not in hosts:
            continue
        if want_paths and not want_paths <= {_norm_path(p) for p in snap.paths}:
            continue
        if want_tags and not want_tags <= set(snap.tags):
            continue
        out.append(snap)
    return out


def find_snapshot(
    repo: SnapshotRepo,
    ref: str,
    *,
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> Snapshot:
    """Resolve ``ref``: ``latest`` (newest snapshot matching the filters) or an ID prefix.

    An ID prefix (case-insensitive hex) must match exactly one snapshot:
    several raise AmbiguousSnapshot, none raises SnapshotNotFound. The filters
    apply to ``latest`` only; an explicit ID names its snapshot whatever its host.
    """
    if ref == LATEST:
        matching = filter_snapshots(list_snapshots(repo), hosts, paths, tags)
        if not matching:
            raise SnapshotNotFound(f"no snapshot matches{_describe(hosts, paths, tags)}")
        return matching[-1]
    prefix = ref.lower()
    if not re.fullmatch(r"[0-9a-f]+", prefix):
        raise UsageError(f"invalid snapshot reference {ref!r}: expected a hex ID prefix or 'latest'")
    ids = sorted(i for i in repo.list_objects(SNAPSHOTS) if i.startswith(prefix))
    if not ids:
        raise SnapshotNotFound(f"no snapshot with ID {ref}")
    if len(ids) > 1:
        shown = ", ".join(i[:12] for i in ids[:5])
        raise AmbiguousSnapshot(
            f"snapshot ID prefix {ref} is ambiguous ({len(ids)} matches: {shown}); use more digits"
        )
    return load_snapshot(repo, ids[0])


def _describe(hosts: Sequence[str], paths: Sequence[str], tags: Sequence[str]) -> str:
    parts = [f"{name}={','.join(vals)}" for name, vals in
             (("host", hosts), ("path", paths), ("tag", tags)) if vals]
    return f" ({'; '.join(parts)})" if parts else ""


def load_tree(repo: SnapshotRepo, tree_id: bytes) -> list[Node]:
    """One tree blob, decoded and validated (CorruptObject names the tree)."""
    return decode_tree(repo.load_blob(BlobType.TREE, tree_id), tree_id=tree_id)


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix + b"/" + name if prefix else name


def walk_tree(repo: SnapshotRepo, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """Every node under ``tree_id``, depth first, in sorted name order.

    A directory is yielded before its contents. Directories without a subtree
    (unreadable at backup time; their ``error`` says why) are yielded but not
    entered. Iterative, so deep trees cannot exhaust the Python stack.
    """
    stack: list[Iterator[tuple[bytes, Node]]] = [_entries(repo, tree_id, prefix)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, node = item
        yield path, node
        if node.type is NodeType.DIR and node.subtree is not None:
            stack.append(_entries(repo, node.subtree, path))


def _entries(repo: SnapshotRepo, tree_id: bytes, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
    for node in load_tree(repo, tree_id):
        yield _join(prefix, node.name), node


def find_node(repo: SnapshotRepo, root_tree: bytes, path: bytes) -> Node:
    """The node at ``path`` (relative to the snapshot root; leading ``/`` allowed).

    The root itself (``b""`` or ``b"/"``) is returned as a synthetic directory
    node with an empty name and ``subtree=root_tree``. Raises PathNotInSnapshot
    if a component is missing or is not a directory, UsageError for ``..``.
    """
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise UsageError(f"path must not contain '..': {path!r}")
    node = Node(name=b"", type=NodeType.DIR, subtree=root_tree)
    for depth, part in enumerate(parts):
        if node.type is not NodeType.DIR or node.subtree is None:
            shown = b"/".join(parts[:depth]).decode("utf-8", "backslashreplace")
            raise PathNotInSnapshot(f"not a readable directory in the snapshot: {shown}")
        for child in load_tree(repo, node.subtree):
            if child.name == part:
                node = child
                break
        else:
            shown = b"/".join(parts[: depth + 1]).decode("utf-8", "backslashreplace")
            raise PathNotInSnapshot(f"path not found in the snapshot: {shown}")
    return node
