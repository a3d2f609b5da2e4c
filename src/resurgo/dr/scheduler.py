"""The scheduler: which jobs are due, and the loop that runs them.

Vocabulary: a job is *due* (``Due``) when one of its schedule's occurrences
has come since its last run started, or a *retry* of a failed run has come
(see below). The decision is a pure function of the plan, the state database
and the time: ``Scheduler.due(now)`` and ``Scheduler.next_runs(now)`` read the
clock they are given, never the system's, so tests drive them with a fake
clock. The scheduler's *start* time (when it was created, i.e. when the daemon
started) separates *missed* occurrences (before the start: the machine or the
daemon was down) from *late* ones (after it: another job was still running).

Rules, per job:

* The *reference* is when its last run started (any trigger: a manual run
  also satisfies the schedule), or when a scheduler first saw the job if it
  never ran. The next occurrence is the schedule's first one after it.
* Missed occurrences are *caught up once*: however many went by, one run,
  trigger ``catch-up``. With ``catch_up = "none"`` they are skipped and the job
  waits for its first occurrence after the start. Late occurrences run as
  ``schedule``, also once however many went by.
* A run that ended in ``failure`` or ``interrupted`` (not a manual one) is
  retried after ``retry.backoff``, doubling each time up to
  ``retry.max_backoff``, at most ``retry.attempts`` times; then the job waits
  for its next regular occurrence. A regular occurrence that comes before the
  pending retry replaces it (attempt 1 again). Under ``catch_up = "none"`` a
  retry that fell due while the scheduler was down is dropped too.
* Never two runs of one job at once: a job with a live run (``StateDB.running``)
  is not due, and ``run_job`` takes the job's lock (an ``flock`` shared with
  ``resurgo run`` in other processes) or raises ``JobBusy``.
* If the clock went back behind the last run, the reference is clamped to
  now: a duplicate run is harmless, a silently skipped one is not.

``run_loop`` is the daemon's engine: it sleeps until the next due time (at
most ``max_wait`` = 60 s, and polls every second while runs are active),
starts each due job on its own thread (one run per job, at most
``settings.max_concurrent_jobs`` at once), and records every run in the state
database through ``run_job``. It returns when ``stop`` is set, after the
active runs have finished (``execute`` should watch the same event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from resurgo.dr.plan import JobSpec, Plan
from resurgo.dr.schedule import parse_schedule
from resurgo.dr.state import OUTCOMES, JobBusy, StateDB
from resurgo.errors import Interrupted
from resurgo.repo.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "Due", "Outcome", "Scheduler", "maintenance_due", "occurrences_between", "run_job",
]

_log = logging.getLogger("resurgo.dr.scheduler")

MAX_WAIT = 60.0  # seconds: wake at least this often, whatever the schedules say
POLL = 1.0  # seconds between checks for finished runs or a free slot
_RETRYABLE_OUTCOMES = ("failure", "interrupted")


@dataclass(frozen=True)
class Due:
    """A run to start now: which job, why (``trigger``), which attempt, since when."""

    job: str
    trigger: str  # "schedule" | "catch-up" | "retry" | "manual"
    attempt: int
    due_at: float  # the occurrence or retry time that made it due (epoch seconds)
    run_id: int | None = None  # set by run_job before execute is called


@dataclass(frozen=True)
class Outcome:
    """What ``execute`` reports for one run; stored in the run's row."""

    outcome: str  # "success" | "warning" | "failure" | "interrupted"
    snapshot_ids: dict[str, str] = field(default_factory=dict)  # repository name -> snapshot id
    bytes_added: int = 0
    files: int = 0
    warnings: list[Any] = field(default_factory=list)
    error: str | None = None


def run_job(
    state: StateDB,
    due: Due,
    execute: Callable[[Due], Outcome],
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[int, Outcome]:
    """Run one job under its lock and record it: lock, start row, ``execute``, finish row.

    Raises ``JobBusy`` (nothing recorded) when another run holds the lock. An
    exception from ``execute`` becomes a ``failure`` (``Interrupted``: an
    ``interrupted`` run) with the error text; Ctrl-C and the like mark the run
    ``interrupted`` and propagate. Returns the run id and the recorded outcome.
    """
    lock = state.try_lock_job(due.job)
    if lock is None:
        raise JobBusy(f"job {due.job!r} is already running")
    with lock:
        run_id = state.start_run(due.job, due.trigger, due.attempt, started=clock.time())
        try:
            outcome = execute(replace(due, run_id=run_id))
            if outcome.outcome not in OUTCOMES:
                raise ValueError(f"execute returned an unknown outcome {outcome.outcome!r}")
        except Interrupted as e:
            outcome = Outcome("interrupted", error=str(e) or "interrupted")
        except Exception as e:
            outcome = Outcome("failure", error=str(e) or type(e).__name__)
        except BaseException:
            state.finish_run(run_id, "interrupted", ended=clock.time(), error="interrupted")
            raise
        state.finish_run(
            run_id,
            outcome.outcome,
            ended=clock.time(),
            snapshot_ids=outcome.snapshot_ids,
            bytes_added=outcome.bytes_added,
            files=outcome.files,
            warnings=outcome.warnings,
            error=outcome.error,
        )
    return run_id, outcome


class Scheduler:
    """Scheduling decisions for ``plan`` from ``state`` and ``clock`` (see the module docstring).

    ``started`` (default: the clock's time now) is the scheduler's start.
    The daemon's scheduler records when it first saw each job; one that only
    answers questions (``resurgo status``) passes ``read_only=True`` and writes
    nothing. Thread-safe as far as ``StateDB`` is.
    """

    def __init__(
        self,
        plan: Plan,
        state: StateDB,
        clock: Clock = SYSTEM_CLOCK,
        *,
        started: float | None = None,
        read_only: bool = False,
    ) -> None:
        self.plan = plan
        self.state = state
        self.clock = clock
        self.started = clock.time() if started is None else started
        self._record = not read_only
        self._first_seen: dict[str, float] = {}
        for name in plan.jobs:
            self._first_seen[name] = state.first_seen(name, self.started, record=self._record)

    # -- decisions ------------------------------------------------------------------------

    def _zone(self, job: JobSpec) -> tzinfo:
        return job.schedule.tz or UTC

    def _next_occurrence(self, job: JobSpec, after: float) -> float:
        t = datetime.fromtimestamp(after, self._zone(job))
        return job.schedule.next_after(t).timestamp()

    def _decide(self, name: str, now: float) -> tuple[Due | None, float]:
        """The run due now (or None) and the time the job is (next) due."""
        job = self.plan.jobs[name]
        settings = self.plan.settings
        running = self.state.running(name)
        if running is not None:
            return None, self._next_occurrence(job, min(running.started, now))
        last = self.state.last_run(name)
        if last is not None:
            ref = last.started
        else:
            if name not in self._first_seen:
                self._first_seen[name] = self.state.first_seen(
                    name, self.started, record=self._record
                )
            ref = self._first_seen[name]
        ref = min(ref, now)

        occurrence = self._next_occurrence(job, ref)
        if occurrence < self.started and settings.catch_up == "none":
            # Skip what was missed: the first occurrence at or after the start.
            occurrence = self._next_occurrence(job, self.started - 1e-3)
        trigger = "schedule" if occurrence >= self.started else "catch-up"

        retry_at: float | None = None
        policy = settings.retry
        if (
            last is not None
            and last.outcome in _RETRYABLE_OUTCOMES
            and last.trigger != "manual"
            and last.attempt <= policy.attempts
        ):
            ended = last.ended if last.ended is not None else last.started
            retry_at = min(ended, now) + policy.delay(last.attempt)
            if retry_at < self.started and settings.catch_up == "none":
                retry_at = None

        if retry_at is not None and retry_at < occurrence:
            assert last is not None
            due = Due(name, "retry", last.attempt + 1, retry_at)
        else:
            due = Due(name, trigger, 1, occurrence)
        return (due if due.due_at <= now else None), due.due_at

    def due(self, now: float | None = None) -> list[Due]:
        """The jobs to start at ``now`` (default: the clock's time), earliest first."""
        t = self.clock.time() if now is None else now
        found = []
        for name in self.plan.jobs:
            due, _ = self._decide(name, t)
            if due is not None:
                found.append(due)
        return sorted(found, key=lambda d: (d.due_at, d.job))

    def next_runs(self, now: float | None = None) -> dict[str, datetime]:
        """When each job runs next, in its zone; a time not after ``now`` means due now.

        For a job that is running, its next regular occurrence.
        """
        t = self.clock.time() if now is None else now
        out = {}
        for name, job in self.plan.jobs.items():
            _, at = self._decide(name, t)
            out[name] = datetime.fromtimestamp(at, self._zone(job))
        return out

    # -- the loop ---------------------------------------------------------------------------

    def run_loop(
        self,
        execute: Callable[[Due], Outcome],
        *,
        stop: threading.Event,
        sleep: Callable[[float], Any] | None = None,
        max_concurrent: int | None = None,
        max_wait: float = MAX_WAIT,
        poll: float = POLL,
    ) -> None:
        """Run due jobs until ``stop`` is set (see the module docstring).

        ``sleep(seconds)`` waits (default: ``stop.wait``, which returns early
        on stop); tests pass one that advances a fake clock.
        """
        limit = max_concurrent or self.plan.settings.max_concurrent_jobs
        wait_fn = sleep or stop.wait
        active: dict[str, threading.Thread] = {}
        try:
            while not stop.is_set():
                for name, thread in list(active.items()):
                    if not thread.is_alive():
                        thread.join()
                        del active[name]
                now = self.clock.time()
                blocked = False
                for due in self.due(now):
                    if due.job in active:
                        continue
                    if len(active) >= limit:
                        blocked = True
                        break
                    thread = threading.Thread(
                        target=self._worker, args=(due, execute), name=f"resurgo-job-{due.job}",
                        daemon=True,
                    )
                    active[due.job] = thread
                    thread.start()
                wait = max_wait
                upcoming = [
                    at.timestamp() for name, at in self.next_runs(now).items() if name not in active
                ]
                if upcoming:
                    wait = min(wait, min(upcoming) - now)
                if active or blocked:
                    wait = min(wait, poll)
                if wait <= 0:
                    # Due but not started (the job's lock is held elsewhere):
                    # look again shortly instead of spinning.
                    wait = poll
                if stop.is_set():
                    break
                wait_fn(wait)
        finally:
            for thread in active.values():
                thread.join()

    def _worker(self, due: Due, execute: Callable[[Due], Outcome]) -> None:
        try:
            run_id, outcome = run_job(self.state, due, execute, clock=self.clock)
            _log.info(
                "job %s run %d (%s, attempt %d): %s%s", due.job, run_id, due.trigger,
                due.attempt, outcome.outcome, f": {outcome.error}" if outcome.error else "",
            )
        except JobBusy:
            _log.info("job %s is already running elsewhere; not started", due.job)
        except Exception:
            _log.exception("job %s: the run could not be recorded", due.job)


def maintenance_due(job: JobSpec, last: float | None, now: float) -> bool:
    """Whether prune is due after a run of ``job`` at ``now``, given the last one at ``last``.

    Due when an occurrence of the job's ``maintenance`` schedule (default:
    ``weekly``, Sunday 00:00 in the job's zone) came since ``last``, or when
    it never ran. ``forget`` runs after every successful backup regardless.
    """
    if last is None:
        return True
    schedule = job.maintenance or parse_schedule("weekly", job.schedule.tz)
    tz = schedule.tz or UTC
    return schedule.next_after(datetime.fromtimestamp(last, tz)).timestamp() <= now


def occurrences_between(job: JobSpec, start: float, end: float) -> list[datetime]:
    """The schedule occurrences of ``job`` in ``(start, end]`` (for status and tests)."""
    tz = job.schedule.tz or UTC
    t0 = datetime.fromtimestamp(start, tz)
    return list(job.schedule.occurrences(t0, t0 + timedelta(seconds=end - start)))
