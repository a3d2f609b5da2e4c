"""``resurgo check``: verify the repository's structure and, optionally, its data.

The result of every check is recorded in the local cache (``check.json``) so
status reports can say when the data was last verified.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes
from resurgo.errors import EXIT_DAMAGE, EXIT_OK


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "check", help="verify the repository",
        description="Check that the index agrees with the packs, that every snapshot's trees "
        "and data are present, and with --read-data that every blob decrypts and matches its "
        "ID. Unused packs (left by interrupted backups) are reported but are not damage. "
        "Never writes to the repository.",
    )
    p.add_argument("--read-data", action="store_true", help="download and verify all data")
    p.add_argument("--read-data-subset", metavar="SUBSET",
                   help="verify a subset: a percentage (10%%) or a slice n/m (packs are split "
                   "into m groups by ID; checking 1/m .. m/m covers everything once)")
    p.set_defaults(func=run)


def _record(ctx: Context, repo_id: str, result: dict[str, object]) -> None:
    cache = ctx.cache_dir
    if cache is None:
        return
    path = cache / repo_id / "check.json"
    try:
        history = json.loads(path.read_text()) if path.exists() else []
        if not isinstance(history, list):
            history = []
    except (OSError, ValueError):
        history = []
    history = [*history[-99:], result]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(history, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def run(args: argparse.Namespace, ctx: Context) -> int:
    # Reading the data holds buffers larger than the key derivation's memory
    # anyway, so the imports may overlap it (design.md, "Start-up").
    reads_data = bool(args.read_data or args.read_data_subset)
    repo = ctx.open_repo(write=False, preload=("resurgo.ops.check",) if reads_data else ())
    from resurgo.ops.check import check_repository

    started = time.time()
    with ctx.out.reporter("check") as rep:
        report = check_repository(repo, read_all_data=args.read_data,
                                  subset=args.read_data_subset, reporter=rep)
    out = ctx.out
    for p in report.problems:
        if out.json:
            out.record("problem", kind=p.kind, object=p.object, message=p.message)
        else:
            out.result(f"error: {p}")
    for pack in report.unused_packs:
        out.detail(f"unused pack (not referenced by any index): {pack}")
    if report.unused_packs:
        out.message(f"{len(report.unused_packs)} unused pack(s), probably left by an interrupted "
                    "backup; they are not damage (prune removes them)")
    out.message(f"checked {report.packs_checked} packs, {report.snapshots_checked} snapshots, "
                f"{report.trees_checked} trees")
    if args.read_data or args.read_data_subset:
        out.message(f"read {report.packs_read} packs, {report.blobs_read} blobs, "
                    f"{format_bytes(report.bytes_read)}")
    result = {
        "time": started, "duration": round(time.time() - started, 3), "ok": report.ok,
        "read_data": bool(args.read_data), "subset": args.read_data_subset,
        "packs_checked": report.packs_checked, "packs_read": report.packs_read,
        "blobs_read": report.blobs_read, "bytes_read": report.bytes_read,
        "snapshots_checked": report.snapshots_checked, "problems": len(report.problems),
        "unused_packs": len(report.unused_packs),
        "damaged_snapshots": report.damaged_snapshots,
    }
    _record(ctx, repo.config.id, result)
    out.summary(**result)
    if report.problems:
        out.result(f"{len(report.problems)} problem(s) found; damaged snapshots: "
                   + (", ".join(s[:8] for s in report.damaged_snapshots) or "none"))
        return EXIT_DAMAGE
    out.result("no errors were found")
    return EXIT_OK
