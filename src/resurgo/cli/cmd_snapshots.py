"""``resurgo snapshots``: list the snapshots in the repository."""

from __future__ import annotations

import argparse
from typing import Any

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import Column, format_bytes, format_time
from resurgo.cli.selectors import add_filter_options, selected
from resurgo.errors import EXIT_OK


def register(subparsers: Subparsers) -> None:
    p = add_command(subparsers, "snapshots", help="list snapshots",
                    description="List the snapshots in the repository, oldest first.")
    add_filter_options(p)
    p.add_argument("--latest", type=int, metavar="N", help="only the newest N snapshots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    snaps = selected(repo, args)
    if args.latest is not None:
        snaps = snaps[-args.latest :] if args.latest > 0 else []
    rows: list[dict[str, Any]] = [
        {
            "id": sn.id, "time": sn.time, "host": sn.hostname, "tags": sn.tags,
            "paths": sn.paths, "size": sn.summary.get("bytes_total"), "parent": sn.parent,
            "summary": sn.summary, "damaged": sn.damaged,
        }
        for sn in snaps
    ]
    ctx.out.listing(
        "snapshot", rows,
        [
            Column("ID", "id", lambda v: v[:8]),
            Column("Time", "time", format_time),
            Column("Host", "host"),
            Column("Tags", "tags", ",".join),
            Column("Size", "size", format_bytes, ">"),
            Column("Paths", "paths", ", ".join),
        ],
        empty="no snapshots",
    )
    ctx.out.summary(snapshots=len(rows))
    return EXIT_OK
