"""``resurgo dump``: write the content of one file of a snapshot to standard output."""

from __future__ import annotations

import argparse
import os
import sys

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.selectors import add_filter_options, resolve
from resurgo.errors import EXIT_OK, ResurgoError, UsageError


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "dump",
        help="write one file of a snapshot to standard output",
        description="Write the exact bytes of the file PATH of SNAPSHOT (an ID prefix or "
        "'latest') to standard output, or to --output FILE. Holes of sparse files come out "
        "as zeros. With --json, --output is required (stdout carries the JSON lines).",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("path", metavar="PATH", help="path of a regular file inside the snapshot")
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    add_filter_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if ctx.out.json and not args.output:
        raise UsageError("dump --json needs --output FILE: standard output carries the JSON lines")
    repo = ctx.open_repo(write=False)
    from resurgo.ops.dump import dump_file

    snap = resolve(repo, args.snapshot, args)
    path = args.path.encode("utf-8", "surrogateescape")
    if args.output:
        with open(args.output, "wb") as f:
            n = dump_file(repo, snap, path, f)
    else:
        stream = getattr(sys.stdout, "buffer", None)
        if stream is None:
            raise UsageError("standard output does not accept bytes; use --output FILE")
        sys.stdout.flush()
        try:
            n = dump_file(repo, snap, path, stream)
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): not worth a traceback.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise ResurgoError("standard output was closed before the file was complete")
    ctx.out.summary(snapshot=snap.id, path=args.path, bytes=n)
    return EXIT_OK
