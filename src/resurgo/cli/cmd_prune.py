"""``resurgo prune``: free the space of data no snapshot references, safely beside backups.

Also home of the prune options shared with ``forget --prune`` and the time-span
value type (``90s``, ``30m``, ``1h``, ``2d``: here ``m`` means minutes).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import Renderer, format_bytes
from resurgo.errors import EXIT_OK

_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_SPAN_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def time_span(text: str) -> float:
    """Seconds from ``0``, ``90s``, ``30m`` (minutes), ``1h``, ``1h30m``, ``2d``."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _SPAN.finditer(s):
        if m.start() != pos or not m.group(0):
            break
        total += float(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise argparse.ArgumentTypeError(
            f"not a time span: {text!r} (examples: 0, 90s, 30m, 1h, 2d; m = minutes)")
    return total


def percentage(text: str) -> float:
    """A share from ``10%`` or ``10`` (percent) to a fraction 0..1."""
    s = text.strip().rstrip("%")
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (example: 10%)")
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"percentage out of range: {text!r}")
    return value / 100


def add_prune_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prune options")
    g.add_argument("--max-unused", type=percentage, default=0.10, metavar="PERCENT",
                   help="repack a pack when more than this share of it is unused (default: 10%%)")
    g.add_argument("--grace", type=time_span, default=3600.0, metavar="SPAN",
                   help="how long marked packs wait before they are deleted (default: 1h; "
                   "0 deletes in the same run once no older backup is running)")
    g.add_argument("--max-clock-skew", type=time_span, default=300.0, metavar="SPAN",
                   help="assumed bound on clock differences between hosts (default: 5m)")


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "prune", help="remove data no snapshot references",
        description="Free the space of data that no snapshot references, without stopping "
        "backups. A run deletes the packs an earlier run marked, once the grace period has "
        "passed and no backup that started before the mark is still running; then it marks "
        "the packs that are unused now (and repacks mostly-unused ones). See 'Prune beside "
        "running backups' in docs/design.md. Only one prune runs at a time (exit code 11 "
        "names the holder of the lock).",
    )
    add_prune_options(p)
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="report what would be marked and freed; change nothing")
    p.set_defaults(func=run)


def prune_options(args: argparse.Namespace, *, dry_run: bool) -> Any:
    from resurgo.ops.prune import PruneOptions

    return PruneOptions(max_unused=args.max_unused, grace=args.grace,
                        clock_skew=args.max_clock_skew, dry_run=dry_run)


def render_report(out: Renderer, r: Any) -> None:
    """Print a ``PruneReport`` (text) and add it to the summary (JSON)."""
    def verb(past: str, present: str) -> str:
        return f"would {present}" if r.dry_run else past

    out.message(f"snapshots: {r.snapshots}, trees: {r.trees}, blobs used: {r.blobs_used} "
                f"of {r.blobs_total}")
    out.message(f"repository: {r.packs_total} packs, {format_bytes(r.bytes_total)}")
    for w in r.marks_waiting:
        out.message(f"mark {w['mark'][:8]} ({w['packs']} packs) waits: {w['reason']}")
    for s in r.sessions_removed:
        out.message(f"{verb('removed', 'remove')} stale writer session {s[:8]}")
    if r.marks_swept:
        out.result(f"{verb('deleted', 'delete')} {r.packs_deleted} marked pack(s), "
                   f"{format_bytes(r.bytes_freed)} ({r.packs_rescued} rescued, "
                   f"{r.packs_reindexed} back in the index)")
    out.result(
        f"{verb('marked', 'mark')} {r.packs_unused} unused and {r.packs_unindexed} unindexed "
        f"pack(s) ({format_bytes(r.bytes_unused + r.bytes_unindexed)}); "
        f"{verb('repacked', 'repack')} {r.packs_repack} ({format_bytes(r.bytes_repack)}, "
        f"{r.blobs_repacked} blobs"
        + (f", {format_bytes(r.bytes_rewritten)} written" if not r.dry_run else "") + ")")
    if r.packs_young:
        out.message(f"{r.packs_young} pack(s) left alone: written while a running backup was "
                    "under way")
    if r.mark_id and not r.dry_run:
        swept_now = r.mark_id in r.marks_swept
        out.message(f"mark {r.mark_id[:8]}: " + ("swept in this run" if swept_now else
                    "its packs are deleted by a prune after the grace period"))
    for w in r.warnings:
        out.warning(w)
    out.summary(**r.as_dict())


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=not args.dry_run)
    from resurgo.ops.prune import prune

    with ctx.out.reporter("prune") as rep:
        report = prune(repo, prune_options(args, dry_run=args.dry_run), reporter=rep)
    render_report(ctx.out, report)
    return EXIT_OK
