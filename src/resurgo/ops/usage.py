"""Blob usage: which index rows the snapshots' trees reach, in memory bounded by the index.

The *used* set is a NumPy boolean array over the rows of ``MemoryIndex.arrays()``
(one byte per blob); tree IDs already visited are kept in a set so shared
subtrees are read once. Referenced IDs are collected per tree and resolved in
batches with one ``searchsorted`` over the sorted ID column, so a walk over a
million blobs costs a few NumPy calls per batch, not a Python lookup per blob.
Referenced blobs that are not in the index are collected as *missing*.

Trees are read for their references only (``tree_refs``): the JSON is parsed,
the node records are not validated one by one, because prune and check need
what a tree points at, not whether its metadata is well-formed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from resurgo.errors import CorruptObject
from resurgo.repo import BlobType
from resurgo.repo.index import IndexArrays, padded_id
from resurgo.repo.lazynumpy import numpy

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy()

BATCH = 1 << 16


def tree_refs(raw: bytes, tree_id: bytes) -> tuple[list[bytes], list[str]]:
    """(subtree IDs, content blob IDs as hex) named by a tree blob."""
    try:
        nodes = json.loads(raw)["nodes"]
        subtrees: list[bytes] = []
        content: list[str] = []
        for n in nodes:
            sub = n.get("subtree")
            if sub is not None:
                subtrees.append(bytes.fromhex(sub))
            c = n.get("content")
            if c:
                content.extend(c)
        if any(len(s) != 32 for s in subtrees) or any(
            not isinstance(c, str) or len(c) != 64 for c in content
        ):
            raise ValueError("malformed blob ID")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptObject(f"tree {tree_id.hex()}", f"cannot read its references: {e}")
    return subtrees, content


def rows_of(arr: IndexArrays, ids: np.ndarray, blob_type: int) -> np.ndarray:
    """Row of each ID (an ``S32`` array) with ``blob_type`` in ``arr``, or -1.

    Of several rows for one blob (copies in two packs) the first is returned.
    """
    n = len(arr.ids)
    if n == 0 or len(ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.searchsorted(arr.ids, ids, side="left")
    at = np.minimum(pos, n - 1)
    hit = (pos < n) & (arr.ids[at] == ids)
    ok = hit & (arr.type[at] == blob_type)
    rows = np.where(ok, at, -1).astype(np.int64)
    # The same bytes stored as a data and as a tree blob share an ID: scan the
    # (at most few) rows with that ID for the wanted type.
    for i in np.nonzero(hit & ~ok)[0]:
        j = int(at[i])
        while j < n and arr.ids[j] == ids[i]:
            if arr.type[j] == blob_type:
                rows[i] = j
                break
            j += 1
    return rows


class UsageWalker:
    """Walk trees, marking the index rows they reach as used."""

    def __init__(self, arr: IndexArrays, load_tree: Callable[[bytes], bytes]) -> None:
        self.arr = arr
        self.used = np.zeros(len(arr.ids), dtype=bool)
        self.visited: set[bytes] = set()
        self.missing: dict[int, set[bytes]] = {BlobType.DATA: set(), BlobType.TREE: set()}
        self.trees = 0
        self._load = load_tree
        self._pending: dict[int, list[str]] = {BlobType.DATA: [], BlobType.TREE: []}

    def walk(self, root: bytes) -> None:
        """Every tree under ``root``; raises what ``load_tree`` raises for an unreadable tree."""
        stack = [root]
        while stack:
            tree_id = stack.pop()
            if tree_id in self.visited:
                continue
            raw = self._load(tree_id)
            subtrees, content = tree_refs(raw, tree_id)
            self.visited.add(tree_id)
            self.trees += 1
            self._add(BlobType.TREE, [tree_id.hex()])
            self._add(BlobType.DATA, content)
            stack.extend(s for s in subtrees if s not in self.visited)

    def _add(self, blob_type: int, hexes: list[str]) -> None:
        pending = self._pending[blob_type]
        pending.extend(hexes)
        if len(pending) >= BATCH:
            self._resolve(blob_type)

    def _resolve(self, blob_type: int) -> None:
        hexes = self._pending[blob_type]
        if not hexes:
            return
        self._pending[blob_type] = []
        ids = np.frombuffer(bytes.fromhex("".join(hexes)), dtype="S32")
        rows = rows_of(self.arr, ids, blob_type)
        self.used[rows[rows >= 0]] = True
        for x in ids[rows < 0]:
            self.missing[blob_type].add(padded_id(x))

    def finish(self) -> None:
        """Resolve the IDs still batched (call before reading ``used`` or ``missing``)."""
        self._resolve(BlobType.DATA)
        self._resolve(BlobType.TREE)
