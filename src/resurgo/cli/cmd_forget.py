"""``resurgo forget``: remove snapshots by retention policy or by ID, optionally then prune."""

from __future__ import annotations

import argparse
from datetime import UTC, tzinfo
from typing import Any

from resurgo.cli.cmd_prune import add_prune_options, prune_options, render_report
from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import Column, format_time
from resurgo.cli.selectors import add_filter_options, selected
from resurgo.errors import EXIT_OK, UsageError

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = ("within", "within_hourly", "within_daily", "within_weekly", "within_monthly",
           "within_yearly")


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "forget", help="remove snapshots by policy or by ID",
        description="Remove snapshots chosen by a retention policy (--keep-*), or the "
        "snapshots named by ID. The policy is applied to each group of snapshots (same host "
        "and paths by default) and always keeps the newest snapshot of a group. Only the "
        "snapshot objects are deleted; run prune (or pass --prune) to free their data. "
        "Durations: 1y2m3d4h = years, months, days, hours (docs/retention.md).",
    )
    p.add_argument("snapshot_ids", nargs="*", metavar="SNAPSHOT",
                   help="remove these snapshots (ID prefixes) instead of applying a policy")
    g = p.add_argument_group("policy")
    for name in _COUNTS:
        g.add_argument(f"--keep-{name}", type=int, default=0, metavar="N", dest=f"keep_{name}",
                       help=f"keep the {'N newest snapshots' if name == 'last' else f'newest snapshot of each of the N latest {_unit(name)}s'}"
                       + (" (-1: all)" if name != "last" else ""))
    for name in _WITHIN:
        flag = name.replace("_", "-")
        what = ("every snapshot" if name == "within"
                else f"the newest snapshot of each {_unit(name.split('_')[1])}")
        g.add_argument(f"--keep-{flag}", metavar="DURATION", dest=f"keep_{name}",
                       help=f"keep {what} not older than DURATION before now")
    g.add_argument("--keep-tag", action="append", default=[], metavar="TAG[,TAG...]",
                   help="keep snapshots carrying all these tags (repeatable: any of the sets)")
    g.add_argument("--group-by", default="host,paths", metavar="FIELDS",
                   help="group snapshots by a comma-separated subset of host, paths, tags "
                   "(default: host,paths; '' for one group)")
    g.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="time zone of the hour/day/week/month/year buckets: UTC (default), "
                   "local, or an IANA name such as Europe/Paris")
    g.add_argument("--unsafe-allow-remove-all", action="store_true",
                   help="let the policy remove the newest snapshot of a group too")
    add_filter_options(p)
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="list every snapshot with keep or remove and the reasons; change nothing")
    p.add_argument("--prune", action="store_true", help="run prune afterwards")
    add_prune_options(p)
    p.set_defaults(func=run)


def _unit(name: str) -> str:
    return {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month",
            "yearly": "year"}[name]


def _timezone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    if name == "local":
        from datetime import datetime

        tz = datetime.now().astimezone().tzinfo
        assert tz is not None
        return tz
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r}")


def _policy(args: argparse.Namespace) -> Any:
    from resurgo.ops.retention import Duration, RetentionPolicy

    kw: dict[str, Any] = {name: getattr(args, f"keep_{name}") for name in _COUNTS}
    for name in _WITHIN:
        text = getattr(args, f"keep_{name}")
        kw[name] = Duration.parse(text) if text else None
    if kw["last"] < 0:
        raise UsageError("--keep-last must not be negative")
    kw["tags"] = tuple(frozenset(t.strip() for t in spec.split(",") if t.strip())
                       for spec in args.keep_tag)
    kw["allow_remove_all"] = args.unsafe_allow_remove_all
    return RetentionPolicy(**kw)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.ops.retention import parse_group_by

    policy = _policy(args)
    if args.snapshot_ids and not policy.empty:
        raise UsageError("give either snapshot IDs or --keep-* options, not both")
    if not args.snapshot_ids and policy.empty:
        raise UsageError("no policy given: nothing would be removed (use --keep-* options or "
                         "name snapshots)")
    group_by = parse_group_by(args.group_by)
    tz = _timezone(args.timezone)
    repo = ctx.open_repo(write=not args.dry_run)
    from resurgo.ops.forget import forget, plan_ids, plan_policy
    from resurgo.snapshot.store import find_snapshot

    snaps = selected(repo, args)
    if args.snapshot_ids:
        ids = [find_snapshot(repo, ref).id or "" for ref in args.snapshot_ids]
        plan = plan_ids(snaps, ids)
        missing = set(ids) - {s.id for s in plan.remove}
        if missing:
            raise UsageError("snapshot(s) outside the --host/--path/--tag filters: "
                             + ", ".join(m[:8] for m in sorted(missing)))
    else:
        plan = plan_policy(snaps, policy, group_by=group_by, tz=tz)
    out = ctx.out
    for key, decisions in plan.groups:
        rows = [{
            "id": d.snapshot.id, "time": d.snapshot.time, "host": d.snapshot.hostname,
            "paths": d.snapshot.paths, "tags": d.snapshot.tags,
            "action": "keep" if d.keep else "remove", "keep": d.keep, "reasons": d.reasons,
            "group": key.as_dict(),
        } for d in decisions]
        if not out.json and rows:
            out.result(f"{key.describe()}: keep {sum(d.keep for d in decisions)}, "
                       f"remove {sum(not d.keep for d in decisions)}")
        out.listing("decision", rows, [
            Column("ID", "id", lambda v: v[:8]),
            Column("Time", "time", format_time),
            Column("Host", "host"),
            Column("Tags", "tags", ",".join),
            Column("Action", "action"),
            Column("Reasons", "reasons", ", ".join),
        ])
        if not out.json and rows:
            out.result("")
    removed: list[str] = []
    if not args.dry_run:
        with out.reporter("forget") as rep:
            removed = forget(repo, plan, reporter=rep)
        out.result(f"removed {len(removed)} snapshot(s), kept {len(plan.keep)}")
    else:
        out.result(f"would remove {len(plan.remove)} snapshot(s), keep {len(plan.keep)}")
    out.summary(dry_run=args.dry_run, kept=len(plan.keep),
                removed=len(removed) if not args.dry_run else len(plan.remove),
                removed_ids=removed if not args.dry_run else [s.id for s in plan.remove],
                policy=policy.describe() if not args.snapshot_ids else None)
    if args.prune:
        from resurgo.ops.prune import prune

        with out.reporter("prune") as rep:
            report = prune(repo, prune_options(args, dry_run=args.dry_run), reporter=rep)
        render_report(out, report)
    return EXIT_OK
