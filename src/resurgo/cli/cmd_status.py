"""``resurgo status``: does reality meet the plan? Per job and repository, with a Nagios exit code.

For each job (all, or the JOBs named): the last successful backup, the RPO age
(the age of the newest of the job's snapshots present in every repository of
the job), the next scheduled run (retries and catch-up included), the last
error, when each repository's data was last verified (state database, or
``resurgo check --read-data`` recorded in the local cache) and the 3-2-1
score. The computation is ``resurgo.dr.status.job_status``; the repositories
are opened read-only, once each, and only the job's snapshots count (its tag,
this host, its paths or command sources: ``resurgo.dr.observe``).

Exit status, as a Nagios plugin: 0 ok, 1 warning, 2 critical, 3 unknown (the
plan or the state database could not be read). docs/status.md has the rules.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from resurgo.cli.cmd_plan import add_plan_option, plan_path, state_db_path
from resurgo.cli.cmd_run import build_observer
from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command

if TYPE_CHECKING:
    from resurgo.dr.plan import Plan
    from resurgo.dr.state import StateDB

EXIT_UNKNOWN = 3


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "status",
        help="report whether each job meets its plan (Nagios exit code)",
        description="For each job of the plan (or each JOB named): the last successful "
        "backup, the RPO age (the age of the newest snapshot present in every repository "
        "of the job) against the RPO, the next scheduled run, the last error, when each "
        "repository's data was last verified, and the 3-2-1 score (copies, distinct "
        "backends, offsite). Repositories are opened read-only. With --json the summary "
        "line holds the whole report. Exit status as a Nagios plugin: 0 ok, 1 warning, "
        "2 critical, 3 unknown (the plan or the state database could not be read). See "
        "docs/status.md.",
    )
    # A Nagios plugin's exit codes; the general table below still ends the help, as
    # for every command (only 130, interrupted, and 2 for bad arguments can occur).
    p.epilog = ("status exit codes (Nagios plugin):\n  0    ok\n  1    warning\n"
                "  2    critical\n  3    unknown (the plan or the state database could not "
                "be read, an unknown JOB)\n\n" + (p.epilog or ""))
    p.add_argument("jobs", nargs="*", metavar="JOB", help="jobs to report (default: all)")
    add_plan_option(p)
    p.set_defaults(func=run)


@contextmanager
def _state(plan: Plan, ctx: Context) -> Iterator[StateDB]:
    """The plan's state database; an empty throw-away one when it does not exist yet.

    Status must not create the real database (it may run as a monitoring user
    before the first backup). Opening an existing one marks runs whose process
    died ``interrupted``, which is what they are.
    """
    from resurgo.dr.state import StateDB

    path = state_db_path(plan, ctx.env)
    if path.exists():
        with StateDB(path) as state:
            yield state
        return
    with tempfile.TemporaryDirectory(prefix="resurgo-status-") as tmp, \
            StateDB(Path(tmp) / "state.db") as state:
        yield state


def _unknown(ctx: Context, message: str) -> int:
    out = ctx.out
    out.result(f"UNKNOWN: {message}")
    out.summary(state="unknown", message=message)
    return EXIT_UNKNOWN


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.dr.plan import PlanError, load_plan
    from resurgo.dr.schedule import local_zone
    from resurgo.dr.scheduler import Scheduler
    from resurgo.dr.status import render_text, report_dict

    out = ctx.out
    try:
        plan = load_plan(plan_path(args, ctx.env))
    except PlanError as e:
        return _unknown(ctx, f"the plan is invalid: {'; '.join(e.problems)}")
    unknown = [j for j in args.jobs if j not in plan.jobs]
    if unknown:
        return _unknown(ctx, f"no job {', '.join(map(repr, unknown))} in {plan.path} "
                             f"(jobs: {', '.join(plan.jobs)})")
    names = list(dict.fromkeys(args.jobs)) or list(plan.jobs)
    try:
        with _state(plan, ctx) as state:
            now = time.time()
            # Each repository is listed once, however many jobs use it.
            observer = build_observer(plan, state, ctx, max_age=float("inf"))
            upcoming = Scheduler(plan, state, read_only=True).next_runs(now)
            statuses = [
                observer.status(name, now=now, next_run=upcoming[name].timestamp())
                for name in names
            ]
    except Exception as e:  # Nagios: anything that stops the report is "unknown"
        from resurgo.dr.observe import describe_error

        return _unknown(ctx, f"status could not be determined: {describe_error(e)}")
    report = report_dict(statuses, now=now)
    for s in statuses:
        out.record("job", **s.to_dict())
    out.result(render_text(statuses, tz=local_zone()))
    out.summary(**report)
    return int(report["exit_code"])
