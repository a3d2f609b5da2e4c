"""``resurgo ls``, ``diff``, ``find`` and ``stats``: read-only views of snapshots."""

from __future__ import annotations

import argparse
import stat as stat_mod
from typing import TYPE_CHECKING, Any

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import Column, format_bytes
from resurgo.cli.selectors import add_filter_options, resolve, selected
from resurgo.errors import EXIT_OK

if TYPE_CHECKING:
    from resurgo.snapshot.model import Node

# Keyed by ``NodeType`` values (a StrEnum: its members hash as these strings).
_TYPE_CHAR = {
    "file": "-", "dir": "d", "symlink": "l", "blockdev": "b", "chardev": "c", "fifo": "p",
    "socket": "s",
}


def register(subparsers: Subparsers) -> None:
    p = add_command(subparsers, "ls", help="list files in a snapshot",
                    description="List the entries of SNAPSHOT (an ID prefix or 'latest') "
                    "under PATH (default: everything).")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("-l", "--long", action="store_true", help="show mode, owner, size and time")
    p.add_argument("--no-recursive", action="store_true", help="list only the direct entries of PATH")
    add_filter_options(p)
    p.set_defaults(func=run_ls)

    p = add_command(subparsers, "diff", help="show differences between two snapshots",
                    description="Show what changed from SNAPSHOT1 to SNAPSHOT2: + added, "
                    "- removed, M content modified, U metadata only, T type changed.")
    p.add_argument("snap1", metavar="SNAPSHOT1")
    p.add_argument("snap2", metavar="SNAPSHOT2")
    add_filter_options(p)
    p.set_defaults(func=run_diff)

    p = add_command(subparsers, "find", help="find files in snapshots",
                    description="Find entries whose name matches the shell PATTERN (or whose "
                    "full path does, when PATTERN contains '/') in every selected snapshot.")
    p.add_argument("pattern", metavar="PATTERN")
    p.add_argument("-i", "--ignore-case", action="store_true")
    add_filter_options(p)
    p.set_defaults(func=run_find)

    p = add_command(subparsers, "stats", help="show repository statistics",
                    description="Sizes, deduplication and compression of the selected "
                    "snapshots (default: all), with the data each snapshot added and the "
                    "data only it holds.")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT")
    add_filter_options(p)
    p.set_defaults(func=run_stats)


def _path(p: bytes) -> str:
    return p.decode("utf-8", "backslashreplace")


def _node_record(path: bytes, n: Node) -> dict[str, Any]:
    return {
        "path": _path(path), "type": n.type.value, "mode": n.mode, "uid": n.uid, "gid": n.gid,
        "user": n.user, "group": n.group, "size": n.size, "mtime_ns": n.mtime_ns,
        "linktarget": _path(n.linktarget) if n.linktarget is not None else None,
        "error": n.error,
    }


def _long(r: dict[str, Any]) -> str:
    from datetime import datetime

    mode = _TYPE_CHAR[r["type"]] + stat_mod.filemode(r["mode"])[1:]
    t = datetime.fromtimestamp(r["mtime_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    owner = f"{r['user'] or r['uid']}/{r['group'] or r['gid']}"
    tail = f" -> {r['linktarget']}" if r["linktarget"] is not None else ""
    return f"{mode} {owner:>15} {r['size']:>12} {t} {r['path']}{tail}"


def run_ls(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    from resurgo.ops.browse import ls

    snap = resolve(repo, args.snapshot, args)
    n = 0
    for path, node in ls(repo, snap, args.path.encode("utf-8", "surrogateescape"),
                         recursive=not args.no_recursive):
        r = _node_record(path, node)
        n += 1
        if ctx.out.json:
            ctx.out.record("node", **r)
        else:
            ctx.out.result(_long(r) if args.long else r["path"])
    ctx.out.summary(snapshot=snap.id, entries=n)
    return EXIT_OK


def run_diff(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    from resurgo.ops.browse import diff

    a = resolve(repo, args.snap1, args)
    b = resolve(repo, args.snap2, args)
    counts: dict[str, int] = {}
    for d in diff(repo, a, b):
        counts[d.change] = counts.get(d.change, 0) + 1
        if ctx.out.json:
            ctx.out.record("change", change=d.change, path=_path(d.path))
        else:
            ctx.out.result(f"{d.change}  {_path(d.path)}")
    ctx.out.message(
        f"{counts.get('+', 0)} added, {counts.get('-', 0)} removed, {counts.get('M', 0)} modified, "
        f"{counts.get('U', 0)} metadata changed, {counts.get('T', 0)} type changed"
    )
    ctx.out.summary(snapshot1=a.id, snapshot2=b.id, added=counts.get("+", 0),
                    removed=counts.get("-", 0), modified=counts.get("M", 0),
                    metadata=counts.get("U", 0), type_changed=counts.get("T", 0))
    return EXIT_OK


def run_find(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    from resurgo.ops.browse import find

    snaps = selected(repo, args)
    n = 0
    for m in find(repo, snaps, args.pattern, ignore_case=args.ignore_case):
        n += 1
        r = _node_record(m.path, m.node)
        if ctx.out.json:
            ctx.out.record("match", snapshot=m.snapshot.id, **r)
        else:
            ctx.out.result(f"{(m.snapshot.id or '')[:8]}  {_long(r)}")
    ctx.out.summary(matches=n, snapshots=len(snaps))
    return EXIT_OK


def run_stats(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    from resurgo.ops.browse import stats

    snaps = [resolve(repo, r, args) for r in args.snapshots] if args.snapshots else selected(repo, args)
    st = stats(repo, snaps)
    out = ctx.out
    out.listing(
        "snapshot_stats", st.per_snapshot,
        [Column("Snapshot", "id", lambda v: v[:8]), Column("Files", "files", str, ">"),
         Column("Size", "size", format_bytes, ">"), Column("Added", "added_raw", format_bytes, ">"),
         Column("Only here", "exclusive_raw", format_bytes, ">")],
    )
    out.message(f"snapshots:          {st.snapshots}")
    out.message(f"files:              {st.files}")
    out.message(f"restore size:       {format_bytes(st.restore_size)}")
    out.message(f"unique data:        {format_bytes(st.unique_raw)} in {st.unique_blobs} blobs")
    out.message(f"stored (packed):    {format_bytes(st.unique_stored)}")
    out.message(f"repository size:    {format_bytes(st.repo_size)} in {st.repo_packs} packs")
    out.message(f"deduplication:      {st.dedup_ratio:.2f}x")
    out.message(f"compression:        {st.compression_ratio:.2f}x")
    out.summary(snapshots=st.snapshots, files=st.files, restore_size=st.restore_size,
                unique_blobs=st.unique_blobs, unique_raw=st.unique_raw,
                unique_stored=st.unique_stored, repo_size=st.repo_size, repo_packs=st.repo_packs,
                dedup_ratio=round(st.dedup_ratio, 4), compression_ratio=round(st.compression_ratio, 4))
    return EXIT_OK
