"""``resurgo daemon``: the scheduler process that runs a plan's jobs when they are due.

It wires the engine together: ``dr.scheduler.Scheduler.run_loop`` decides and
starts runs, ``dr.runner.JobRunner`` performs them, ``dr.observe.Observer``
keeps each repository's snapshot listing for the RPO, notifications and
metrics. Besides the job threads there are two helpers: the *RPO thread*
evaluates every job's RPO each ``--rpo-interval`` (default one minute) so a
breach is noticed even when no job runs (for instance because the daemon
cannot start one), and the optional metrics server answers scrapes from the
state database and the cached listings.

Signals: SIGTERM and SIGINT set the stop event; running jobs stop at their next
step boundary (a hook's process group is killed, a backup stops between files,
a copy between ranges), each run is recorded as ``interrupted``, and the
process exits 0. Logs go to stderr, one line per event (docs/daemon.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from resurgo.cli.cmd_plan import add_plan_option, state_db_path
from resurgo.cli.cmd_run import (
    build_notifier,
    build_observer,
    build_runner,
    load_plan_or_report,
    open_state,
    stop_on_signals,
)
from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command
from resurgo.cli.render import format_bytes, format_duration
from resurgo.errors import EXIT_OK, EXIT_USAGE, UsageError

if TYPE_CHECKING:
    from resurgo.dr.observe import Observer
    from resurgo.dr.plan import Plan
    from resurgo.dr.runner import JobRunner
    from resurgo.dr.scheduler import Scheduler
    from resurgo.dr.state import StateDB

_log = logging.getLogger("resurgo.daemon")
RPO_INTERVAL = 60.0  # seconds between RPO evaluations


def _seconds(text: str) -> float:
    from resurgo.dr.schedule import parse_duration

    try:
        value = parse_duration(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e))
    if value <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return value


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "daemon",
        help="run the plan's jobs on their schedules",
        description="Run the plan: start each job when its schedule says so, retry failed "
        "runs with backoff, catch up runs missed while the machine was off (once, unless "
        "catch_up = \"none\"), never run one job twice at once, and record every run in the "
        "state database. The RPO of every job is evaluated every minute, so a breach is "
        "notified even when no job runs. Logs go to stderr, one line per event. SIGTERM or "
        "SIGINT stop it cleanly: running jobs stop at their next step and are recorded as "
        "interrupted; the exit status is then 0. systemd units are in contrib/systemd; "
        "see docs/daemon.md.",
    )
    add_plan_option(p)
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics "
                   "(e.g. 127.0.0.1:9150; port 0 picks a free one)")
    p.add_argument("--rpo-interval", type=_seconds, default=RPO_INTERVAL, metavar="DURATION",
                   help="how often the RPO of every job is evaluated (default: 1m)")
    p.set_defaults(func=run)


# --- logging ------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{when} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _NoSchedulerRunLines(logging.Filter):
    # The scheduler logs each finished run; the daemon logs it itself with more
    # detail, so that every event is one line.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "resurgo.dr.scheduler"
                    and str(record.msg).startswith("job %s run %d"))


@contextmanager
def _daemon_logging(verbose: int) -> Iterator[None]:
    """Every ``resurgo`` log record on stderr with a UTC timestamp; INFO by default."""
    logger = logging.getLogger("resurgo")
    saved = (list(logger.handlers), logger.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(_NoSchedulerRunLines())
    for h in saved[0]:
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        for h in saved[0]:
            logger.addHandler(h)
        logger.setLevel(saved[1])


def _when(t: datetime | float, now: float) -> str:
    ts = t.timestamp() if isinstance(t, datetime) else t
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = ts - now
    rel = "now" if abs(delta) < 1 else (f"in {format_duration(delta)}" if delta > 0
                                         else f"{format_duration(-delta)} late")
    return f"{stamp} ({rel})"


class _LogReporter:
    """Turns the runner's events into log lines (warnings of files, job start and end)."""

    def event(self, kind: str, /, **f: Any) -> None:
        job = f.get("job", "?")
        if kind == "job.start":
            _log.info("job %s: run %s started (%s, attempt %s)", job, f.get("run_id"),
                      f.get("trigger"), f.get("attempt"))
        elif kind == "job.end":
            outcome = f.get("outcome")
            took = format_duration(f.get("duration"))
            if outcome in ("failure", "interrupted"):
                level = logging.ERROR if outcome == "failure" else logging.WARNING
                _log.log(level, "job %s: run %s %s after %s: %s", job, f.get("run_id"), outcome,
                         took, f.get("error"))
            else:
                snaps = ", ".join(f"{k}={v[:8]}" for k, v in sorted(
                    (f.get("snapshot_ids") or {}).items()))
                level = logging.WARNING if outcome == "warning" else logging.INFO
                _log.log(level, "job %s: run %s %s in %s: %s added, %s files, %s warnings; "
                         "snapshots %s", job, f.get("run_id"), outcome, took,
                         format_bytes(f.get("bytes_added") or 0), f.get("files"),
                         f.get("warnings"), snaps or "none")
        elif kind == "job.step":
            where = f" in {f['repository']}" if f.get("repository") else ""
            source = f" {f['source']}" if f.get("source") else ""
            _log.debug("job %s: %s%s%s", job, f.get("step"), source, where)
        elif kind == "warning":
            what = ": ".join(str(f[k]) for k in ("path", "message", "error") if k in f)
            _log.warning("job %s: %s", job, what)

    def progress(self, /, **counters: Any) -> None:
        pass


# --- the daemon ----------------------------------------------------------------------------


class _Daemon:
    def __init__(self, plan: Plan, state: StateDB, scheduler: Scheduler, runner: JobRunner,
                 observer: Observer, stop: threading.Event, rpo_interval: float) -> None:
        self.plan = plan
        self.state = state
        self.scheduler = scheduler
        self.runner = runner
        self.observer = observer
        self.stop = stop
        self.rpo_interval = rpo_interval
        self._seen = {name: self._last_finished_id(name) for name in plan.jobs}
        self._states: dict[str, str] = {}

    def _last_finished_id(self, job: str) -> int | None:
        run = self.state.last_finished(job)
        return None if run is None else run.id

    def log_next_runs(self, jobs: list[str] | None = None) -> None:
        now = time.time()
        upcoming = self.scheduler.next_runs(now)
        for name in jobs or list(self.plan.jobs):
            _log.info("job %s: next run %s", name, _when(upcoming[name], now))

    def tick(self, seconds: float) -> None:
        """The scheduler loop's sleep: log the next run of jobs that finished, then wait."""
        try:
            finished = []
            for name in self.plan.jobs:
                last = self._last_finished_id(name)
                if last != self._seen.get(name):
                    self._seen[name] = last
                    finished.append(name)
            if finished and not self.stop.is_set():
                self.log_next_runs(finished)
        except Exception:
            _log.exception("reading the state database failed")
        self.stop.wait(seconds)

    def rpo_loop(self) -> None:
        """Evaluate every job's RPO now and every ``rpo_interval``, until stopped."""
        while not self.stop.is_set():
            for name in self.plan.jobs:
                if self.stop.is_set():
                    return
                try:
                    status = self.runner.check_rpo(name)
                except Exception:
                    _log.exception("job %s: evaluating the RPO failed", name)
                    continue
                if status is None:
                    continue
                previous = self._states.get(name)
                self._states[name] = status.state.value
                if previous != status.state.value:
                    why = "; ".join(p.message for p in status.problems) or "all good"
                    level = logging.INFO if status.state.value == "ok" else logging.WARNING
                    _log.log(level, "job %s: status %s: %s", name, status.state.value, why)
            if self.stop.wait(self.rpo_interval):
                return

    def collect(self) -> str:
        """The /metrics page: statuses from the cached listings (never opens a repository)."""
        from resurgo.dr.metrics import JobMetrics, render_jobs

        try:
            now = time.time()
            upcoming = self.scheduler.next_runs(now)
            jobs = []
            for name in self.plan.jobs:
                status = self.observer.status(name, now=now, next_run=upcoming[name].timestamp(),
                                              refresh=False)
                jobs.append(JobMetrics.from_status(status, self.state.run_counts(name)))
        except Exception:
            _log.exception("collecting metrics failed")
            return render_jobs([], up=False)
        return render_jobs(jobs, up=True)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.dr.metrics import MetricsServer
    from resurgo.dr.scheduler import Scheduler

    plan = load_plan_or_report(args, ctx)
    if plan is None:
        return EXIT_USAGE
    stop = threading.Event()
    with _daemon_logging(getattr(args, "verbose", 0) or 0), \
            open_state(plan, ctx.env, recover=False) as state:
        for dead in state.recover():
            _log.warning("job %s: run %d (started %s) was left unfinished by a process that "
                         "died; recorded as interrupted", dead.job, dead.id,
                         _when(dead.started, time.time()))
        notifier, problems = build_notifier(plan, state, ctx.env)
        for problem in problems:
            _log.error("%s", problem)
        observer = build_observer(plan, state, ctx)
        runner = build_runner(plan, state, ctx, stop=stop, reporter=_LogReporter(),
                              observer=observer, notifier=notifier)
        scheduler = Scheduler(plan, state)
        daemon = _Daemon(plan, state, scheduler, runner, observer, stop, args.rpo_interval)
        metrics = MetricsServer(args.metrics, daemon.collect) if args.metrics else None
        if metrics is not None:
            metrics.start()

        def on_signal(signum: int) -> None:
            _log.info("received %s: stopping; running jobs stop at their next step",
                      signal.Signals(signum).name)

        rpo_thread = threading.Thread(target=daemon.rpo_loop, name="resurgo-rpo", daemon=True)
        try:
            with stop_on_signals(stop, on_signal):
                _log.info("daemon started (pid %d): plan %s, %d job%s, state %s", os.getpid(),
                          plan.path, len(plan.jobs), "s" * (len(plan.jobs) != 1),
                          state_db_path(plan, ctx.env))
                daemon.log_next_runs()
                rpo_thread.start()
                scheduler.run_loop(runner.execute, stop=stop, sleep=daemon.tick)
        finally:
            stop.set()
            if rpo_thread.is_alive():
                rpo_thread.join(timeout=30)
            if metrics is not None:
                metrics.stop()
        _log.info("daemon stopped")
    return EXIT_OK
