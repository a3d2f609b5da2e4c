"""``resurgo copy``: replicate snapshots from another repository into this one.

The destination is the repository the global options name; the source is
``--from-repo`` with its own password (see ``resurgo.cli.source``). Snapshots
already copied are skipped, so a scheduled ``copy`` keeps an offsite
repository in step. The engine is ``resurgo.ops.copy``.
"""

from __future__ import annotations

import argparse

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes, format_duration
from resurgo.cli.selectors import add_filter_options, resolve, selected
from resurgo.cli.source import ENVIRONMENT_HELP, add_source_options, open_source, source_url
from resurgo.errors import EXIT_OK


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "copy",
        help="copy snapshots from another repository",
        description="Copy snapshots from the repository --from-repo into this one (the "
        "repository named by --repo). With SNAPSHOT arguments (ID prefixes or 'latest') "
        "only those are copied, else every snapshot matching the filters. Snapshots that "
        "were copied before are skipped; only blobs this repository lacks are stored. "
        "Into a repository created with 'init --copy-chunker-params-from SOURCE' only "
        "missing blobs are downloaded; otherwise blobs are re-hashed for this repository "
        "and a translation map in the local cache avoids downloading them again next time. "
        "See docs/remote-ops.md.",
    )
    p.epilog = ENVIRONMENT_HELP + "\n" + (p.epilog or "")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                   help="source snapshots to copy (default: all that match the filters)")
    add_source_options(p, with_location=True)
    add_filter_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.backend.registry import redact_url

    out = ctx.out
    url = source_url(args, ctx)
    src = open_source(args, ctx, url)
    try:
        dst = ctx.open_repo(write=True)
        from resurgo.ops.copy import copy_snapshots

        if args.snapshots:
            chosen = {s.id: s for s in (resolve(src, ref, args) for ref in args.snapshots)}
            snaps = list(chosen.values())
        else:
            snaps = selected(src, args)
        with out.reporter("copy") as rep:
            s = copy_snapshots(src, dst, snaps, cache_dir=ctx.cache_dir, reporter=rep)
    finally:
        src.close()
    for source_id, dest_id in s.copied:
        if out.json:
            out.record("copied", source=source_id, destination=dest_id)
        else:
            out.result(f"copied snapshot {source_id[:8]} -> {dest_id[:8]}")
    if s.skipped:
        out.message(f"{len(s.skipped)} snapshot(s) already present, skipped")
    ids = "same blob IDs" if s.mode == "same-ids" else "blob IDs translated"
    out.message(
        f"{len(s.copied)} snapshot(s) copied from {redact_url(url)} ({ids}): "
        f"{s.blobs_copied} blobs transferred ({format_bytes(s.bytes_downloaded)} read), "
        f"{s.blobs_present} already present, {format_bytes(s.bytes_added)} added "
        f"in {format_duration(s.duration)}"
    )
    out.summary(source=redact_url(url), **s.as_dict())
    return EXIT_OK
