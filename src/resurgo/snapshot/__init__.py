"""The snapshot layer: the node/tree/snapshot model, its storage, filesystem metadata.

``model`` owns the data types and their deterministic serialization, ``store``
saves, finds and walks them in a repository, ``fsmeta`` reads metadata from and
applies it to a Linux filesystem.

The names below are imported on first use (PEP 562): ``store`` needs the
repository facade (and NumPy), which a command loads only after it derived its
key (docs/design.md, "Start-up").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resurgo._lazy import lazy_exports

if TYPE_CHECKING:
    from resurgo.snapshot.model import (
        Node,
        NodeType,
        Snapshot,
        decode_snapshot,
        decode_tree,
        encode_snapshot,
        encode_tree,
    )
    from resurgo.snapshot.store import (
        LATEST,
        PathNotInSnapshot,
        filter_snapshots,
        find_node,
        find_snapshot,
        list_snapshots,
        load_snapshot,
        load_tree,
        save_snapshot,
        walk_tree,
    )

_MODEL = ("Node", "NodeType", "Snapshot", "decode_snapshot", "decode_tree", "encode_snapshot",
          "encode_tree")
_STORE = ("LATEST", "PathNotInSnapshot", "filter_snapshots", "find_node", "find_snapshot",
          "list_snapshots", "load_snapshot", "load_tree", "save_snapshot", "walk_tree")
_WHERE = {
    **dict.fromkeys(_MODEL, "resurgo.snapshot.model"),
    **dict.fromkeys(_STORE, "resurgo.snapshot.store"),
}

__all__ = [
    "LATEST",
    "Node",
    "NodeType",
    "PathNotInSnapshot",
    "Snapshot",
    "decode_snapshot",
    "decode_tree",
    "encode_snapshot",
    "encode_tree",
    "filter_snapshots",
    "find_node",
    "find_snapshot",
    "list_snapshots",
    "load_snapshot",
    "load_tree",
    "save_snapshot",
    "walk_tree",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
