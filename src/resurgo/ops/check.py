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

from resurgo.errors import ResurgoError
from resurgo.progress import NULL, Reporter
from resurgo.repo import BlobType, Repository
from resurgo.repo.verify import (
    CheckReport,
    check_index_objects,
    check_structure,
    read_data,
)
from resurgo.snapshot.model import NodeType, decode_tree
from resurgo.snapshot.store import load_snapshot


def check_snapshots(repo: Repository, report: CheckReport, reporter: Reporter = NULL) -> None:
    seen_trees: set[bytes] = set()
    for sid in repo.list_objects("snapshots"):
        try:
            snap = load_snapshot(repo, sid)
        except ResurgoError as e:
            report.add("corrupt-snapshot", f"snapshots/{sid}", str(e))
            report.damaged_snapshots.append(sid)
            continue
        report.snapshots_checked += 1
        damaged = False
        # Iterative walk: trees may be thousands of levels deep.
        stack: list[tuple[bytes, bytes]] = [(snap.tree, b"/")]
        while stack:
            tree_id, path = stack.pop()
            if tree_id in seen_trees:
                continue
            seen_trees.add(tree_id)
            where = f"snapshot {sid[:8]} {path.decode('utf-8', 'backslashreplace')}"
            if not repo.has_blob(BlobType.TREE, tree_id):
                report.add("missing-tree", f"tree {tree_id.hex()}", f"not in the index ({where})")
                damaged = True
                continue
            try:
                nodes = decode_tree(repo.load_blob(BlobType.TREE, tree_id), tree_id=tree_id)
            except ResurgoError as e:
                report.add("corrupt-tree", f"tree {tree_id.hex()}", f"{e} ({where})")
                damaged = True
                continue
            report.trees_checked += 1
            for n in nodes:
                child = path + n.name
                if n.type is NodeType.DIR:
                    if n.subtree is None:
                        report.add("corrupt-tree", f"tree {tree_id.hex()}",
                                   f"directory without subtree ({where})")
                        damaged = True
                    else:
                        stack.append((n.subtree, child + b"/"))
                elif n.type is NodeType.FILE:
                    for b in n.content:
                        if not repo.has_blob(BlobType.DATA, b):
                            report.add(
                                "missing-blob", f"blob {b.hex()}",
                                f"data of {child.decode('utf-8', 'backslashreplace')} "
                                f"in snapshot {sid[:8]} is not in the index",
                            )
                            damaged = True
        if damaged:
            report.damaged_snapshots.append(sid)
        reporter.progress(snapshots_checked=report.snapshots_checked)


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
    reporter.event("phase", name="structure")
    check_structure(repo, report, reporter)
    check_index_objects(repo, report)
    for name, error in repo.dictionaries.verify().items():
        report.add("corrupt-dictionary", f"dicts/{name}", error)
    reporter.event("phase", name="snapshots")
    check_snapshots(repo, report, reporter)
    if read_all_data or subset:
        reporter.event("phase", name="read-data", subset=subset)
        read_data(repo, report, subset=subset, reporter=reporter)
    return report
