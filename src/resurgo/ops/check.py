"""check: prove that every snapshot can be restored, or say exactly what cannot.

Three layers, each reporting *problems* that name the damaged object:
1. index objects and compression dictionaries load (repo open recorded the
   index objects that did not);
2. structure: the index agrees with the packs' trailers, every indexed pack
   exists; packs no index names are *unused* (an interrupted backup), not damage;
3. references: every snapshot decodes, every tree it reaches loads and
   decodes, every data blob a file names is in the index.
With ``read_data`` (or a subset), packs are downloaded and every blob is
authenticated and re-hashed. Nothing here writes to the repository.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from resurgo.errors import BlobNotFound, ResurgoError
from resurgo.ops.gcpause import collector_paused
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobType, Repository
from resurgo.repo.lazynumpy import numpy
from resurgo.repo.verify import (
    CheckReport,
    check_index_objects,
    check_structure,
    list_packs,
    read_data,
)
from resurgo.snapshot.model import NodeType, decode_tree
from resurgo.snapshot.store import load_snapshot

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy()


class _DataBlobs:
    """Asks the index about many data blobs at once (a vectorised search of its sorted IDs).

    One ``has_blob`` per file blob costs microseconds of Python each; the walk
    below collects a snapshot's blob IDs and asks once, at its end.
    """

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        arrays = repo.index.arrays()
        self._ids = arrays.ids
        self._type = arrays.type

    def missing(self, blob_ids: list[bytes]) -> list[int]:
        """Positions in ``blob_ids`` of the blobs the index does not hold as data blobs."""
        if not blob_ids:
            return []
        if not len(self._ids):
            return list(range(len(blob_ids)))
        wanted = np.array(blob_ids, dtype="S32")
        row = np.minimum(np.searchsorted(self._ids, wanted), len(self._ids) - 1)
        found = (self._ids[row] == wanted) & (self._type[row] == BlobType.DATA)
        # The first row of an ID may be a tree blob with the same ID: ask again.
        return [i for i in np.flatnonzero(~found).tolist()
                if not self._repo.has_blob(BlobType.DATA, blob_ids[i])]


def check_snapshots(repo: Repository, report: CheckReport, reporter: Reporter = NULL) -> None:
    seen_trees: set[bytes] = set()
    data_blobs = _DataBlobs(repo)
    for sid in repo.list_objects("snapshots"):
        try:
            snap = load_snapshot(repo, sid)
        except ResurgoError as e:
            report.add("corrupt-snapshot", f"snapshots/{sid}", str(e))
            report.damaged_snapshots.append(sid)
            continue
        report.snapshots_checked += 1
        damaged = False
        # Each file's blobs, and the file they belong to: looked up at the end.
        blob_ids: list[bytes] = []
        blob_files: list[bytes] = []
        # Iterative walk: trees may be thousands of levels deep.
        stack: list[tuple[bytes, bytes]] = [(snap.tree, b"/")]
        while stack:
            tree_id, path = stack.pop()
            if tree_id in seen_trees:
                continue
            seen_trees.add(tree_id)
            try:
                # Each tree is read once: keeping it would only hold memory.
                nodes = decode_tree(repo.load_blob(BlobType.TREE, tree_id, keep=False), tree_id=tree_id)
            except BlobNotFound:
                report.add("missing-tree", f"tree {tree_id.hex()}", f"not in the index ({_where(sid, path)})")
                damaged = True
                continue
            except ResurgoError as e:
                report.add("corrupt-tree", f"tree {tree_id.hex()}", f"{e} ({_where(sid, path)})")
                damaged = True
                continue
            report.trees_checked += 1
            for n in nodes:
                if n.type is NodeType.DIR:
                    if n.subtree is None:
                        report.add("corrupt-tree", f"tree {tree_id.hex()}",
                                   f"directory without subtree ({_where(sid, path)})")
                        damaged = True
                    else:
                        stack.append((n.subtree, path + n.name + b"/"))
                elif n.type is NodeType.FILE and n.content:
                    blob_ids += n.content
                    blob_files += itertools.repeat(path + n.name, len(n.content))
        for i in data_blobs.missing(blob_ids):
            report.add(
                "missing-blob", f"blob {blob_ids[i].hex()}",
                f"data of {blob_files[i].decode('utf-8', 'backslashreplace')} "
                f"in snapshot {sid[:8]} is not in the index",
            )
            damaged = True
        if damaged:
            report.damaged_snapshots.append(sid)
        reporter.progress(snapshots_checked=report.snapshots_checked)


def _where(sid: str, path: bytes) -> str:
    return f"snapshot {sid[:8]} {path.decode('utf-8', 'backslashreplace')}"


def check_repository(
    repo: Repository,
    *,
    read_all_data: bool = False,
    subset: str | None = None,
    reporter: Reporter = NULL,
) -> CheckReport:
    report = CheckReport()
    # Read snapshots and trees from the repository, not from the local cache:
    # a good cached copy must not hide damage in the repository itself.
    repo.read_through_cache = False
    # The walk makes a node per entry of every tree and no reference cycles;
    # the collector would stop the verifying threads ~110 times for nothing
    # (ops/gcpause.py; check --read-data of the benchmark repository, warm:
    # 1.59 -> 1.47 s, mean of 3).
    with collector_paused():
        reporter.event("phase", name="structure")
        packs = list_packs(repo)  # one listing for both
        check_structure(repo, report, reporter, packs=packs)
        check_index_objects(repo, report)
        for name, error in repo.dictionaries.verify().items():
            report.add("corrupt-dictionary", f"dicts/{name}", error)
        reporter.event("phase", name="snapshots")
        check_snapshots(repo, report, reporter)
        if read_all_data or subset:
            reporter.event("phase", name="read-data", subset=subset)
            read_data(repo, report, subset=subset, reporter=reporter, packs=packs)
    return report
