"""The snapshot layer: the node/tree/snapshot model, its storage, filesystem metadata.

``model`` owns the data types and their deterministic serialization, ``store``
saves, finds and walks them in a repository, ``fsmeta`` reads metadata from and
applies it to a Linux filesystem.
"""

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
