"""``resurgo backup``: back up paths, standard input, or a command's output.

Exit code 3 means the snapshot was written but some files could not be read
(or changed while being read); each one is listed as a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from functools import partial

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes, format_duration
from resurgo.errors import EXIT_OK, EXIT_PARTIAL, UsageError


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "backup",
        help="back up files and directories",
        description="Back up PATHs into a new snapshot. Files unchanged since the parent "
        "snapshot (same size, mtime, ctime, inode and device) are not read again. "
        "With --stdin or --stdin-from-command, back up a stream as one file instead.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to back up")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the snapshot (repeatable)")
    p.add_argument("--host", metavar="HOST", help="host name to record (default: this host)")
    p.add_argument("--parent", metavar="SNAPSHOT", help="compare with this snapshot instead of the latest one of the same host and paths")
    p.add_argument("--force", action="store_true", help="read every file, even unchanged ones")
    g = p.add_argument_group("excludes")
    g.add_argument("-e", "--exclude", action="append", default=[], metavar="PATTERN",
                   help="exclude paths matching a gitignore-style PATTERN (repeatable)")
    g.add_argument("--iexclude", action="append", default=[], metavar="PATTERN",
                   help="like --exclude, ignoring case")
    g.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="read exclude patterns from FILE (one per line, # comments)")
    g.add_argument("--exclude-if-present", action="append", default=[], metavar="NAME",
                   help="exclude a directory containing a file called NAME")
    g.add_argument("--exclude-caches", action="store_true",
                   help="exclude directories holding a valid CACHEDIR.TAG")
    g.add_argument("-x", "--one-file-system", action="store_true",
                   help="do not cross file system boundaries")
    s = p.add_argument_group("streams")
    s.add_argument("--stdin", action="store_true", help="back up standard input as one file")
    s.add_argument("--stdin-filename", metavar="NAME", default="stdin",
                   help="file name for --stdin / --stdin-from-command (default: stdin)")
    s.add_argument("--stdin-from-command", action="store_true",
                   help="run the command given after -- and back up its output; a non-zero "
                   "exit status fails the backup and writes no snapshot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.stdin and args.stdin_from_command:
        raise UsageError("use either --stdin or --stdin-from-command, not both")
    stream = args.stdin or args.stdin_from_command
    if stream and args.stdin_from_command and not args.paths:
        raise UsageError("--stdin-from-command needs a command: resurgo backup --stdin-from-command -- CMD ARGS")
    if stream and args.stdin and args.paths:
        raise UsageError("--stdin takes no paths")
    if not stream and not args.paths:
        raise UsageError("nothing to back up: give at least one PATH (or --stdin)")

    excluder = None
    if args.exclude or args.iexclude or args.exclude_file or args.exclude_if_present or (
        args.exclude_caches
    ):
        # Before the repository opens: a bad pattern or exclude file is a usage
        # error that must not wait for the password.
        from resurgo.ops.excludes import Excluder

        excluder = Excluder(
            exclude=args.exclude,
            iexclude=args.iexclude,
            exclude_files=args.exclude_file,
            exclude_if_present=args.exclude_if_present,
            exclude_caches=args.exclude_caches,
            one_file_system=args.one_file_system,
        )
    # The key is derived before the backup pipeline is imported, the targets'
    # directories listed meanwhile (docs/design.md, "Start-up").
    warm: list[Callable[[threading.Event], object]] = []
    if not stream:
        from resurgo.snapshot.warm import last_backup_ns, warm_tree

        targets = [os.fsencode(os.path.abspath(p)) for p in args.paths]
        # The files changed since the last backup are read ahead too (a hint).
        warm.append(partial(warm_tree, targets, changed_since_ns=last_backup_ns(ctx.cache_dir)))
    repo = ctx.open_repo(write=True, warm=warm)
    from resurgo.ops.backup import BackupOptions, backup_paths, backup_stream

    opts = BackupOptions(
        tags=args.tag,
        hostname=args.host,
        excluder=excluder if excluder is not None and excluder.active else None,
        one_file_system=args.one_file_system,
        parent=args.parent,
        force=args.force,
        excludes_text=excluder.describe() if excluder is not None else [],
    )
    with ctx.out.reporter("backup") as rep:
        if args.stdin_from_command:
            s = backup_stream(repo, args.stdin_filename, command=args.paths, opts=opts, reporter=rep)
        elif args.stdin:
            s = backup_stream(repo, args.stdin_filename, fd=sys.stdin.buffer.fileno(), opts=opts, reporter=rep)
        else:
            s = backup_paths(repo, args.paths, opts, reporter=rep)
    out = ctx.out
    out.message(
        f"files: {s.files_new} new, {s.files_changed} changed, {s.files_unchanged} unchanged; "
        f"{s.dirs} directories"
    )
    out.message(
        f"read {format_bytes(s.bytes_read)} of {format_bytes(s.bytes_total)}, "
        f"added {format_bytes(s.bytes_added)} to the repository "
        f"({format_bytes(s.bytes_added_raw)} before compression) in {format_duration(s.duration)}"
    )
    out.result(f"snapshot {s.snapshot_id[:8] if s.snapshot_id else '?'} saved")
    out.summary(**s.as_dict())
    if s.warnings:
        out.warning(f"{len(s.warnings)} file(s) could not be read completely; see the warnings above")
        return EXIT_PARTIAL
    return EXIT_OK
