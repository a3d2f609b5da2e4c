"""``resurgo repair index`` and ``resurgo repair snapshots``: recover what can be recovered."""

from __future__ import annotations

import argparse

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command, add_subcommands
from resurgo.errors import EXIT_DAMAGE, EXIT_OK


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers, "repair", help="rebuild the index, rewrite damaged snapshots",
        description="Recover a damaged repository: 'repair index' rebuilds the index from the "
        "packs, 'repair snapshots' rewrites snapshots around data that is lost. Run check "
        "first, then repair index, then repair snapshots.",
    )
    sub = add_subcommands(group, dest="repair_command")

    p = add_command(
        sub, "index", help="rebuild the index from the packs",
        description="Read every pack's trailer and write a new index naming exactly what the "
        "packs hold; the old index objects are removed. With --read-data every pack is "
        "downloaded and every blob authenticated. A damaged pack has its readable blobs "
        "copied into new packs and is then deleted; the blobs that could not be read are "
        "listed. Takes the exclusive lock, like prune. Exits 4 when something could not be "
        "recovered.",
    )
    p.add_argument("--read-data", action="store_true",
                   help="download and authenticate every blob (finds damage inside packs)")
    p.add_argument("-n", "--dry-run", action="store_true", help="report only; change nothing")
    p.set_defaults(func=run_index)

    p = add_command(
        sub, "snapshots", help="rewrite snapshots that reference lost data",
        description="Write, for every snapshot that references data missing from the index, "
        "a new snapshot without it, marked damaged: files with lost content are left out, "
        "directories whose tree is lost become empty (with an error note). Everything still "
        "readable is kept. The originals are removed only with --forget, which also removes "
        "snapshot objects that cannot be read at all. Exits 4 when something was lost.",
    )
    p.add_argument("--forget", action="store_true",
                   help="remove the original snapshots (and unreadable snapshot objects)")
    p.add_argument("-n", "--dry-run", action="store_true", help="report only; change nothing")
    p.set_defaults(func=run_snapshots)


def run_index(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=not args.dry_run)
    from resurgo.ops.repair import repair_index

    with ctx.out.reporter("repair index") as rep:
        r = repair_index(repo, read_data=args.read_data, dry_run=args.dry_run, reporter=rep)
    out = ctx.out
    would = "would " if r.dry_run else ""
    out.message(f"{r.packs} pack(s): {r.packs_indexed} intact, {r.blobs_indexed} blobs")
    for pack in r.missing_packs:
        out.result(f"missing pack (named by the old index): {pack}")
    for d in r.damaged:
        what = ("its contents are unknown" if d.lost_unknown
                else f"{d.salvaged} blob(s) salvaged, {len(d.lost)} lost")
        out.result(f"damaged pack {d.pack}: {d.error}; {what}; {would}delete it")
    if r.blobs_lost:
        out.detail("lost blobs: " + ", ".join(r.blobs_lost))
    out.result(f"{would}write {r.index_written or 'the new'} index object(s), {would}remove "
               f"{r.index_removed or 'the old'} one(s)"
               + (f"; {r.blobs_salvaged} blob(s) salvaged" if r.blobs_salvaged else ""))
    if not r.complete:
        out.warning(f"{len(r.blobs_lost)} blob(s) could not be recovered"
                    + (" (and packs of unknown content)" if any(d.lost_unknown for d in r.damaged)
                       else "") + "; run 'resurgo repair snapshots'")
    out.summary(**r.as_dict())
    return EXIT_OK if r.complete else EXIT_DAMAGE


def run_snapshots(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=not args.dry_run)
    from resurgo.ops.repair import repair_snapshots

    with ctx.out.reporter("repair snapshots") as rep:
        r = repair_snapshots(repo, forget=args.forget, dry_run=args.dry_run, reporter=rep)
    out = ctx.out
    would = "would " if r.dry_run else ""
    for s in r.repaired:
        new = f" as {s.new[:8]}" if s.new else ""
        out.result(f"snapshot {s.original[:8]}: {would}rewrite{new}, {len(s.lost)} path(s) lost")
        for path in s.lost:
            if out.json:
                out.record("lost", snapshot=s.original, path=path)
            else:
                out.result(f"  lost: /{path}")
    for u in r.unreadable:
        removed = u["id"] in r.removed
        out.result(f"snapshot {u['id'][:8]} cannot be read ({u['error']})"
                   + ("; removed" if removed else "; use --forget to remove it"))
    out.result(f"{r.snapshots} snapshot(s): {r.intact} intact, {len(r.repaired)} "
               f"{'to rewrite' if r.dry_run else 'rewritten'}, {len(r.unreadable)} unreadable")
    out.summary(**r.as_dict())
    return EXIT_DAMAGE if (r.repaired or r.unreadable) else EXIT_OK
