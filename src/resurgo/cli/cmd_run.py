"""``resurgo run``: run one job of the plan now (or every job), as the scheduler would.

Also the plumbing that ``run``, ``daemon`` and ``status`` share to put a plan
to work: loading it with every problem printed (``load_plan_or_report``), the
state database (``open_state``), repository openers built on
``cmd_plan.open_plan_repo`` (``plan_opener``), notification targets with their
passwords (``build_notifier``) and the job runner (``build_runner``).

Exit codes of ``run``: 0 every run succeeded, 3 every run wrote its snapshots
but one ended with warnings (unreadable files, a failed post hook, forget or
prune), 1 a run failed (or its job was already running), 2 the plan is invalid,
130 interrupted (the run is recorded as ``interrupted``).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from resurgo.cli.cmd_plan import (
    add_plan_option,
    notification_password,
    open_plan_repo,
    state_db_path,
)
from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes, format_duration
from resurgo.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    ResurgoError,
    UsageError,
)

if TYPE_CHECKING:
    from resurgo.dr.notify import Notifier
    from resurgo.dr.observe import Observer, Opener
    from resurgo.dr.plan import Plan
    from resurgo.dr.runner import JobRunner
    from resurgo.dr.state import StateDB
    from resurgo.progress import Reporter

_OUTCOME_CODES = {"success": EXIT_OK, "warning": EXIT_PARTIAL, "failure": EXIT_FAILURE,
                  "interrupted": EXIT_INTERRUPTED}
# Which exit code wins when several jobs ran: a failure hides a warning.
_CODE_RANK = {EXIT_OK: 0, EXIT_PARTIAL: 1, EXIT_FAILURE: 2, EXIT_INTERRUPTED: 3}


# --- shared plumbing -------------------------------------------------------------------


def load_plan_or_report(args: argparse.Namespace, ctx: Context) -> Plan | None:
    """The plan, or None after printing every problem (one per line) on stderr."""
    from resurgo.cli.cmd_plan import load_plan_or_report as load

    return load(args, ctx, strict=False)


def open_state(plan: Plan, env: Mapping[str, str], *, recover: bool = True) -> StateDB:
    """The plan's state database (created when missing); dead runs marked unless not ``recover``."""
    from resurgo.dr.state import StateDB

    return StateDB(state_db_path(plan, env), recover=recover)


def plan_opener(ctx: Context, *, read_only: bool) -> Opener:
    """``opener(spec)`` for the plan's repositories, with their own passwords and options."""
    from resurgo.dr.plan import RepositorySpec
    from resurgo.repo import Repository

    env, cache, faults = ctx.env, ctx.cache_dir, ctx.fault_spec

    def opener(spec: RepositorySpec) -> Repository:
        return open_plan_repo(spec, env, cache_dir=cache, read_only=read_only, fault_spec=faults)

    return opener


def build_notifier(plan: Plan, state: StateDB, env: Mapping[str, str]
                   ) -> tuple[Notifier, list[str]]:
    """A notifier for every target of the plan that can be built, and why the others cannot.

    A target whose SMTP password is missing is left out (and reported) rather than
    stopping the backups it would have told about.
    """
    from resurgo.dr.notify import Notifier, Target, state_recorder, target_from_spec

    targets: list[Target] = []
    problems: list[str] = []
    for spec in plan.notifications.values():
        try:
            targets.append(target_from_spec(spec, password=notification_password(spec, env)))
        except ResurgoError as e:
            problems.append(f"notification {spec.name} is disabled: {e}")
    return Notifier(targets, record=state_recorder(state)), problems


def build_observer(plan: Plan, state: StateDB, ctx: Context, *,
                   max_age: float | None = None) -> Observer:
    from resurgo.dr.observe import DEFAULT_MAX_AGE, Observer

    return Observer(plan, state, plan_opener(ctx, read_only=True), cache_dir=ctx.cache_dir,
                    max_age=DEFAULT_MAX_AGE if max_age is None else max_age)


def build_runner(
    plan: Plan, state: StateDB, ctx: Context, *, stop: threading.Event, reporter: Reporter,
    observer: Observer, notifier: Notifier,
) -> JobRunner:
    from resurgo.dr.runner import JobRunner

    return JobRunner(
        plan, state, plan_opener(ctx, read_only=False), observer=observer, notifier=notifier,
        cache_dir=ctx.cache_dir, reporter=reporter, stop=stop, hook_env=ctx.env,
    )


@contextmanager
def stop_on_signals(stop: threading.Event, on_signal: Callable[[int], None] | None = None
                    ) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` instead of raising, for a clean end of the running jobs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if on_signal is not None:
            on_signal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the command -------------------------------------------------------------------------


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "run",
        help="run a job of the plan now",
        description="Run JOB of the plan now (every job, one after the other, when no JOB "
        "is given), exactly as the scheduler would: pre hooks, backup into the job's first "
        "repository, copy to its other repositories, forget (and prune when the job's "
        "maintenance is due), post or on-failure hooks, notifications. The run is recorded "
        "in the state database (trigger 'manual'; manual runs are not retried). A job that "
        "is running elsewhere (the daemon) is not started. Exit status: 0 success, 3 a run "
        "ended with warnings, 1 a run failed or its job was busy, 2 invalid plan, 130 "
        "interrupted (Ctrl-C or SIGTERM stop the run cleanly; it is recorded as "
        "interrupted). See docs/daemon.md.",
    )
    p.add_argument("job", nargs="?", metavar="JOB", help="the job to run (default: every job)")
    add_plan_option(p)
    p.set_defaults(func=run)


def _describe_outcome(job: str, run_id: int | None, outcome: Any, duration: float,
                      primary: str) -> str:
    word = outcome.outcome.upper() if outcome.outcome == "failure" else outcome.outcome
    where = f" (run {run_id}, {format_duration(duration)})" if run_id is not None else ""
    if outcome.outcome in ("failure", "interrupted"):
        return f"job {job}: {word}{where}: {outcome.error or 'unknown error'}"
    made = [k for k in outcome.snapshot_ids if k == primary or k.startswith(primary + ":")]
    copies = sorted({k.split(":", 1)[0] for k in outcome.snapshot_ids} - {primary})
    copied = f", copied to {', '.join(copies)}" if copies else ""
    return (f"job {job}: {word}{where}: {len(made)} snapshot{'s' * (len(made) != 1)} in "
            f"{primary}{copied}; {format_bytes(outcome.bytes_added)} added, "
            f"{outcome.files} files")


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.dr.scheduler import Due, Outcome, run_job
    from resurgo.dr.state import JobBusy

    plan = load_plan_or_report(args, ctx)
    if plan is None:
        return EXIT_USAGE
    if args.job is not None and args.job not in plan.jobs:
        raise UsageError(f"no job {args.job!r} in {plan.path} (jobs: {', '.join(plan.jobs)})")
    names = [args.job] if args.job is not None else list(plan.jobs)
    out = ctx.out
    stop = threading.Event()
    code = EXIT_OK
    records: list[dict[str, Any]] = []
    with open_state(plan, ctx.env) as state:
        notifier, problems = build_notifier(plan, state, ctx.env)
        for problem in problems:
            out.warning(problem)
        observer = build_observer(plan, state, ctx)
        with out.reporter("run") as rep, stop_on_signals(stop):
            runner = build_runner(plan, state, ctx, stop=stop, reporter=rep, observer=observer,
                                  notifier=notifier)
            for name in names:
                if stop.is_set():
                    break
                started = time.monotonic()
                try:
                    run_id: int | None
                    run_id, outcome = run_job(state, Due(name, "manual", 1, time.time()),
                                              runner.execute)
                except JobBusy as e:
                    run_id, outcome = None, Outcome("failure", error=str(e))
                duration = time.monotonic() - started
                line = _describe_outcome(name, run_id, outcome, duration, plan.jobs[name].primary)
                for key, snap in sorted(outcome.snapshot_ids.items()):
                    out.message(f"  snapshot {snap[:8]} in {key}")
                for w in outcome.warnings:
                    out.warning(f"job {name}: {w}")
                out.result(line)
                records.append({
                    "job": name, "run_id": run_id, "outcome": outcome.outcome,
                    "error": outcome.error, "snapshot_ids": outcome.snapshot_ids,
                    "bytes_added": outcome.bytes_added, "files": outcome.files,
                    "warnings": outcome.warnings, "duration": round(duration, 3),
                })
                out.record("run", **records[-1])
                job_code = _OUTCOME_CODES[outcome.outcome]
                if _CODE_RANK[job_code] > _CODE_RANK[code]:
                    code = job_code
    if stop.is_set():
        code = EXIT_INTERRUPTED
    out.summary(plan=str(plan.path), runs=records)
    return code
