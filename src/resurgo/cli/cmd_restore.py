"""``resurgo restore``: restore a snapshot, or part of it, into a target directory.

Exit code 3 means the restore finished but some entries were left as they
were (an existing file that differs, with ``--overwrite never``) or some
metadata could not be set; each one is listed as a warning. Exit code 4 means
some files could not be restored from damaged data, or failed ``--verify``.
"""

from __future__ import annotations

import argparse

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes, format_duration
from resurgo.cli.selectors import add_filter_options, resolve, split_ref
from resurgo.errors import EXIT_OK, EXIT_PARTIAL, UsageError

# The same names as resurgo.ops.restore.OVERWRITE_MODES (not imported here, so
# that --help does not load the engine).
_OVERWRITE = ("never", "if-changed", "always")


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "restore",
        help="restore a snapshot into a directory",
        description="Restore SNAPSHOT (an ID prefix or 'latest'), or only PATH inside it, "
        "into --target. A directory PATH has its contents restored into the target; a file "
        "PATH is restored as TARGET/NAME. Existing files that already match the snapshot are "
        "skipped, so running an interrupted restore again resumes it. What happens to "
        "existing entries that differ is chosen with --overwrite (default: never touch them). "
        "Exit code 3: restored, but some entries were left untouched or some metadata could "
        "not be set (each is listed as a warning); 4: some files could not be restored from "
        "damaged data, or failed --verify. See docs/restore.md.",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT[:PATH]",
                   help="the snapshot, optionally followed by ':' and a path inside it")
    p.add_argument("-t", "--target", required=True, metavar="DIR",
                   help="directory to restore into (created if missing)")
    p.add_argument("-i", "--include", action="append", default=[], metavar="PATTERN",
                   help="restore only paths matching this gitignore-style PATTERN (repeatable); "
                   "their parent directories are restored too")
    p.add_argument("-e", "--exclude", action="append", default=[], metavar="PATTERN",
                   help="do not restore paths matching this gitignore-style PATTERN (repeatable)")
    p.add_argument("--overwrite", choices=_OVERWRITE, default="never",
                   help="existing entries that differ from the snapshot: never (default) leaves "
                   "them and warns; if-changed replaces them; always also replaces a directory "
                   "standing where a file belongs")
    p.add_argument("--verify", action="store_true",
                   help="afterwards, read every restored file again and check it against the "
                   "snapshot")
    p.add_argument("--numeric-ids", action="store_true",
                   help="restore owners by the recorded numeric ids, not by user/group name")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="parallel downloads (default: 2 for a local repository, 4 for a remote one)")
    add_filter_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    ref, path = split_ref(args.snapshot)
    # A restore's buffers outgrow the key derivation's memory: the imports
    # may overlap it (design.md, "Start-up").
    repo = ctx.open_repo(write=False, preload=("resurgo.ops.restore",))
    from resurgo.ops.restore import RestoreIntegrityError, RestoreSummary, restore_snapshot

    snap = resolve(repo, ref, args)
    out = ctx.out

    def report(s: RestoreSummary) -> None:
        out.message(
            f"restored {s.files_restored} files, {s.dirs_restored} directories, "
            f"{s.others_restored} other entries ({format_bytes(s.bytes_restored)}); "
            f"{s.files_skipped} already up to date, {s.metadata_updated} metadata updated"
        )
        out.message(
            f"downloaded {format_bytes(s.bytes_downloaded)} in {s.packs_read} requests "
            f"in {format_duration(s.duration)}"
        )
        if args.verify:
            out.message(f"verified {s.files_verified} files")
        out.summary(snapshot=snap.id, target=args.target, **s.as_dict())

    with out.reporter("restore") as rep:
        try:
            s = restore_snapshot(
                repo, snap, args.target, subpath=path, includes=args.include,
                excludes=args.exclude, overwrite=args.overwrite, verify=args.verify,
                numeric_ids=args.numeric_ids, threads=args.threads, reporter=rep,
            )
        except RestoreIntegrityError as e:
            report(e.summary)
            raise
    report(s)
    if s.warnings:
        hint = (f"; {s.conflicts} existing entries differ and were left untouched "
                "(see --overwrite)" if s.conflicts else "")
        out.warning(f"{len(s.warnings)} warning(s){hint}")
        return EXIT_PARTIAL
    out.result(f"snapshot {snap.short_id} restored to {args.target}")
    return EXIT_OK
