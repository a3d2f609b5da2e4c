"""Scheduling against a fake clock: which jobs are due and why, no overlapping runs,
one catch-up after downtime (or none), retries with backoff then the next occurrence,
state that survives a restart, and the daemon loop driving it all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from resurgo.dr.plan import Plan, loads_plan
from resurgo.dr.scheduler import Due, Outcome, Scheduler, maintenance_due, run_job
from resurgo.dr.state import JobBusy, StateDB
from resurgo.errors import Interrupted, SourceError
from resurgo.testing.clock import FakeClock


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


START = ts(2024, 6, 1, 0, 30)


def make_plan(tmp_path: Path, *, catch_up: str = "once", attempts: int = 3,
              concurrency: int = 1, jobs: str | None = None) -> Plan:
    jobs = jobs or (
        '[jobs.nightly]\npaths = ["/srv"]\nrepositories = ["r"]\n'
        'schedule = "daily at 02:00"\ntimezone = "UTC"\n'
        '[jobs.often]\npaths = ["/srv"]\nrepositories = ["r"]\n'
        'schedule = "every 1h"\ntimezone = "UTC"\n'
    )
    text = (
        f'[settings]\ncatch_up = "{catch_up}"\nmax_concurrent_jobs = {concurrency}\n'
        f'retry = {{ attempts = {attempts}, backoff = "1m", max_backoff = "3m" }}\n'
        '[repositories.r]\nurl = "/srv/repo"\npassword_env = "P"\noffsite = true\n' + jobs
    )
    return loads_plan(text, tmp_path / "resurgo.toml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def state(tmp_path: Path, clock: FakeClock) -> Iterator[StateDB]:
    db = StateDB(tmp_path / "state.db", clock=clock)
    yield db
    db.close()


def record(state: StateDB, job: str, outcome: str, started: float, *, trigger: str = "schedule",
           attempt: int = 1, duration: float = 10.0) -> int:
    run_id = state.start_run(job, trigger, attempt, started=started)
    state.finish_run(run_id, outcome, ended=started + duration,
                     error=None if outcome in ("success", "warning") else "boom")
    return run_id


def execute_with(clock: FakeClock, outcome: str = "success",
                 calls: list[Due] | None = None) -> Callable[[Due], Outcome]:
    def execute(due: Due) -> Outcome:
        if calls is not None:
            calls.append(due)
        return Outcome(outcome, error=None if outcome == "success" else "boom")
    return execute


# --- due jobs ---------------------------------------------------------------------------


def test_nothing_is_due_before_the_first_occurrence(tmp_path: Path, state: StateDB,
                                                    clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    assert s.due() == []
    nxt = s.next_runs()
    assert nxt == {"nightly": datetime(2024, 6, 1, 2, 0, tzinfo=UTC),
                   "often": datetime(2024, 6, 1, 1, 0, tzinfo=UTC)}
    assert all(str(t.tzinfo) == "UTC" for t in nxt.values())


def test_jobs_become_due_at_their_occurrences(tmp_path: Path, state: StateDB,
                                              clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    assert s.due(ts(2024, 6, 1, 0, 59, 59)) == []
    assert s.due(ts(2024, 6, 1, 1)) == [Due("often", "schedule", 1, ts(2024, 6, 1, 1))]
    both = s.due(ts(2024, 6, 1, 2, 0, 5))
    # "often" missed 01:00 and 02:00 while the scheduler ran (late, not missed): one run.
    assert both == [Due("often", "schedule", 1, ts(2024, 6, 1, 1)),
                    Due("nightly", "schedule", 1, ts(2024, 6, 1, 2))]


def test_a_run_satisfies_the_occurrence_until_the_next_one(tmp_path: Path, state: StateDB,
                                                           clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    clock.set_wall(ts(2024, 6, 1, 2, 0, 1))
    for due in s.due():
        run_job(state, due, execute_with(clock), clock=clock)
    assert s.due() == []
    assert s.next_runs()["nightly"] == datetime(2024, 6, 2, 2, 0, tzinfo=UTC)
    assert s.next_runs()["often"] == datetime(2024, 6, 1, 3, 0, tzinfo=UTC)


def test_a_manual_run_counts_as_a_run(tmp_path: Path, state: StateDB, clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    record(state, "nightly", "success", ts(2024, 6, 1, 2, 30), trigger="manual")
    assert [d.job for d in s.due(ts(2024, 6, 1, 3, 0, 1))] == ["often"]
    assert s.next_runs(ts(2024, 6, 1, 3))["nightly"] == datetime(2024, 6, 2, 2, tzinfo=UTC)


# --- no overlap ---------------------------------------------------------------------------


def test_a_running_job_is_not_due_and_cannot_be_started_twice(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    now = ts(2024, 6, 1, 1, 0, 1)
    clock.set_wall(now)
    [due] = s.due(now)
    inside: list[list[Due]] = []

    def execute(d: Due) -> Outcome:
        inside.append(s.due())
        with pytest.raises(JobBusy):
            run_job(state, d, lambda _: Outcome("success"), clock=clock)
        return Outcome("success")

    run_job(state, due, execute, clock=clock)
    assert inside == [[]]  # while it ran, the job was not due
    assert len(state.last_runs("often", 10)) == 1  # the refused second run left no record


def test_a_run_held_by_another_holder_blocks_the_job(tmp_path: Path, state: StateDB,
                                                     clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    with state.lock_job("often"):
        state.start_run("often", "manual", started=ts(2024, 6, 1, 0, 50))
        assert s.due(ts(2024, 6, 1, 1, 0, 1)) == []
        with pytest.raises(JobBusy):
            run_job(state, Due("often", "schedule", 1, 0.0), lambda d: Outcome("success"),
                    clock=clock)


# --- catch-up -----------------------------------------------------------------------------


def test_missed_runs_are_caught_up_once_after_downtime(tmp_path: Path, state: StateDB,
                                                       clock: FakeClock) -> None:
    plan = make_plan(tmp_path)
    record(state, "nightly", "success", ts(2024, 6, 1, 2))
    record(state, "often", "success", ts(2024, 6, 1, 2))
    # The machine was off from the 1st at 02:10 until the 4th at 10:00.
    restart = ts(2024, 6, 4, 10)
    clock.set_wall(restart)
    s = Scheduler(plan, state, clock)
    due = s.due()
    assert due == [Due("often", "catch-up", 1, ts(2024, 6, 1, 3)),
                   Due("nightly", "catch-up", 1, ts(2024, 6, 2, 2))]
    for d in due:
        run_job(state, d, execute_with(clock), clock=clock)
    assert s.due() == []  # once, not once per missed occurrence
    assert s.due(ts(2024, 6, 4, 11)) == [Due("often", "schedule", 1, ts(2024, 6, 4, 11))]
    assert s.next_runs()["nightly"] == datetime(2024, 6, 5, 2, tzinfo=UTC)
    assert [r.trigger for r in state.last_runs("nightly")] == ["catch-up", "schedule"]


def test_catch_up_none_skips_missed_runs(tmp_path: Path, state: StateDB,
                                         clock: FakeClock) -> None:
    plan = make_plan(tmp_path, catch_up="none")
    record(state, "nightly", "success", ts(2024, 6, 1, 2))
    record(state, "often", "success", ts(2024, 6, 1, 2))
    clock.set_wall(ts(2024, 6, 4, 10, 30))
    s = Scheduler(plan, state, clock)
    assert s.due() == []
    assert s.next_runs() == {"nightly": datetime(2024, 6, 5, 2, tzinfo=UTC),
                             "often": datetime(2024, 6, 4, 11, tzinfo=UTC)}
    assert s.due(ts(2024, 6, 4, 11)) == [Due("often", "schedule", 1, ts(2024, 6, 4, 11))]


def test_a_job_that_never_ran_catches_up_what_it_missed_since_first_seen(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    plan = make_plan(tmp_path)
    Scheduler(plan, state, clock)  # first seen at 00:30 on the 1st; then the machine goes off
    clock.set_wall(ts(2024, 6, 1, 9))
    s = Scheduler(plan, state, clock)
    assert [(d.job, d.trigger) for d in s.due()] == [("often", "catch-up"),
                                                     ("nightly", "catch-up")]


# --- retries ------------------------------------------------------------------------------


def test_failed_runs_are_retried_with_backoff_then_wait_for_the_next_occurrence(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    plan = make_plan(tmp_path, attempts=3, jobs=(
        '[jobs.nightly]\npaths = ["/srv"]\nrepositories = ["r"]\n'
        'schedule = "daily at 02:00"\ntimezone = "UTC"\n'))
    s = Scheduler(plan, state, clock)
    calls: list[Due] = []
    execute = execute_with(clock, "failure", calls)
    clock.set_wall(ts(2024, 6, 1, 2))
    expected_waits = [60.0, 120.0, 180.0]  # 1m, 2m, then capped at max_backoff 3m
    [due] = s.due()
    run_job(state, due, execute, clock=clock)
    for attempt, wait in enumerate(expected_waits, start=2):
        ended = clock.time()
        assert s.due(ended + wait - 1) == []
        assert s.next_runs()["nightly"].timestamp() == ended + wait
        clock.set_wall(ended + wait)
        [due] = s.due()
        assert (due.trigger, due.attempt, due.due_at) == ("retry", attempt, ended + wait)
        run_job(state, due, execute, clock=clock)
    # three retries used up: nothing until tomorrow's occurrence, a fresh first attempt
    assert s.due(ts(2024, 6, 2, 1, 59)) == []
    assert s.due(ts(2024, 6, 2, 2)) == [Due("nightly", "schedule", 1, ts(2024, 6, 2, 2))]
    assert [(d.trigger, d.attempt) for d in calls] == [
        ("schedule", 1), ("retry", 2), ("retry", 3), ("retry", 4)]
    assert [r.outcome for r in state.last_runs("nightly", 10)] == ["failure"] * 4


def test_a_success_ends_the_retries(tmp_path: Path, state: StateDB, clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    record(state, "nightly", "failure", ts(2024, 6, 1, 2))
    record(state, "nightly", "success", ts(2024, 6, 1, 2, 2), trigger="retry", attempt=2)
    assert [d.job for d in s.due(ts(2024, 6, 1, 2, 30))] == ["often"]
    assert s.next_runs(ts(2024, 6, 1, 2, 30))["nightly"] == datetime(2024, 6, 2, 2, tzinfo=UTC)


def test_a_regular_occurrence_before_the_retry_replaces_it(tmp_path: Path, state: StateDB,
                                                           clock: FakeClock) -> None:
    plan = make_plan(tmp_path, jobs=(
        '[jobs.fast]\npaths = ["/srv"]\nrepositories = ["r"]\nschedule = "every 5m"\n'))
    s = Scheduler(plan, state, clock)
    occurrence = (START // 300 + 1) * 300
    record(state, "fast", "failure", occurrence, duration=30)
    assert s.due(occurrence + 89) == []
    assert s.due(occurrence + 90) == [Due("fast", "retry", 2, occurrence + 90)]
    record(state, "fast", "failure", occurrence + 90, trigger="retry", attempt=2, duration=30)
    assert s.due(occurrence + 240) == [Due("fast", "retry", 3, occurrence + 240)]
    record(state, "fast", "failure", occurrence + 240, trigger="retry", attempt=3, duration=30)
    # the third retry would wait 3m (until +7m30s): the occurrence at +5m comes first
    assert s.due(occurrence + 299) == []
    assert s.due(occurrence + 300) == [Due("fast", "schedule", 1, occurrence + 300)]


def test_manual_failures_are_not_retried(tmp_path: Path, state: StateDB,
                                         clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock)
    record(state, "nightly", "failure", ts(2024, 6, 1, 0, 40), trigger="manual")
    assert [d.job for d in s.due(ts(2024, 6, 1, 1, 30))] == ["often"]


def test_a_run_interrupted_by_a_crash_is_retried_after_the_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "state.db"
    plan = make_plan(tmp_path)
    state = StateDB(db, clock=clock)
    clock.set_wall(ts(2024, 6, 1, 2))
    # a daemon started the run, then died without finishing it (and without its lock)
    state.start_run("nightly", "schedule", 1, pid=2**22 + 12345)
    state.close()
    clock.set_wall(ts(2024, 6, 1, 2, 5))
    state = StateDB(db, clock=clock)  # recovery on open
    try:
        last = state.last_run("nightly")
        assert last is not None and last.outcome == "interrupted"
        s = Scheduler(plan, state, clock)
        assert s.due() == []  # the backoff first
        assert s.due(ts(2024, 6, 1, 2, 6)) == [Due("nightly", "retry", 2, ts(2024, 6, 1, 2, 6))]
    finally:
        state.close()


def test_run_job_records_exceptions_as_failures_and_interrupts(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    def broken(d: Due) -> Outcome:
        raise SourceError("nothing to back up: none of the given paths exists: /srv")

    run_id, outcome = run_job(state, Due("nightly", "schedule", 1, 0.0), broken, clock=clock)
    assert outcome == Outcome("failure", error="nothing to back up: none of the given paths "
                              "exists: /srv")
    run = state.run(run_id)
    assert run is not None and run.outcome == "failure" and "none of the given" in (run.error or "")

    def stopped(d: Due) -> Outcome:
        raise Interrupted("stopped by SIGTERM")

    run_id, outcome = run_job(state, Due("nightly", "retry", 2, 0.0), stopped, clock=clock)
    assert outcome.outcome == "interrupted"

    def ctrl_c(d: Due) -> Outcome:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(state, Due("nightly", "retry", 3, 0.0), ctrl_c, clock=clock)
    last = state.last_run("nightly")
    assert last is not None and last.outcome == "interrupted" and last.attempt == 3
    assert state.try_lock_job("nightly") is not None  # the lock was released


def test_execute_sees_its_run_id(tmp_path: Path, state: StateDB, clock: FakeClock) -> None:
    seen: list[int | None] = []

    def execute(d: Due) -> Outcome:
        seen.append(d.run_id)
        return Outcome("success", snapshot_ids={"r": "ab" * 32}, bytes_added=5, files=2)

    run_id, _ = run_job(state, Due("often", "manual", 1, 0.0), execute, clock=clock)
    assert seen == [run_id]
    run = state.run(run_id)
    assert run is not None and run.snapshot_ids == {"r": "ab" * 32}
    assert (run.bytes_added, run.files) == (5, 2)


# --- restarts -----------------------------------------------------------------------------


def test_schedule_state_survives_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "state.db"
    plan = make_plan(tmp_path)
    state = StateDB(db, clock=clock)
    s = Scheduler(plan, state, clock)
    clock.set_wall(ts(2024, 6, 1, 2, 0, 1))
    for due in s.due():
        run_job(state, due, execute_with(clock, "failure"), clock=clock)
    state.close()
    # restart 30 s later: the failed runs' retries are still pending, nothing else
    clock.set_wall(ts(2024, 6, 1, 2, 0, 31))
    state = StateDB(db, clock=clock)
    try:
        s = Scheduler(plan, state, clock)
        assert s.due() == []
        assert s.due(ts(2024, 6, 1, 2, 1, 1)) == [
            Due("nightly", "retry", 2, ts(2024, 6, 1, 2, 1, 1)),
            Due("often", "retry", 2, ts(2024, 6, 1, 2, 1, 1)),
        ]
    finally:
        state.close()


# --- the loop -----------------------------------------------------------------------------


def _wait_for_workers() -> None:
    deadline = time.monotonic() + 10
    while any(t.name.startswith("resurgo-job-") and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a job run did not finish"
        time.sleep(0.001)


def test_run_loop_runs_each_occurrence_once_without_overlap(tmp_path: Path, state: StateDB,
                                                            clock: FakeClock) -> None:
    plan = make_plan(tmp_path, concurrency=1)
    s = Scheduler(plan, state, clock)
    stop = threading.Event()
    end = ts(2024, 6, 2, 3, 0, 30)
    lock = threading.Lock()
    active: list[str] = []
    overlaps: list[list[str]] = []
    calls: list[tuple[str, float]] = []
    sleeps: list[float] = []

    def execute(d: Due) -> Outcome:
        with lock:
            active.append(d.job)
            if len(active) > 1:
                overlaps.append(list(active))
            calls.append((d.job, clock.time()))
        with lock:
            active.remove(d.job)
        return Outcome("success")

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        assert 0 < seconds <= 60
        _wait_for_workers()  # fake time moves only when the runs started so far are done
        clock.advance(seconds)
        if clock.time() >= end:
            stop.set()

    s.run_loop(execute, stop=stop, sleep=sleep)
    assert overlaps == []
    nightly = [t for job, t in calls if job == "nightly"]
    often = [t for job, t in calls if job == "often"]
    assert nightly == [ts(2024, 6, 1, 2), ts(2024, 6, 2, 2)]
    assert len(often) == 27  # 01:00 on the 1st to 03:00 on the 2nd, hourly
    assert all(t % 3600 < 2 for t in often)  # on time, within the poll interval
    assert len(state.last_runs("often", 100)) == 27
    assert max(sleeps) == 60  # woke at least every minute


def test_run_loop_limits_concurrency_and_waits_for_active_runs_on_stop(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    plan = make_plan(tmp_path, concurrency=1)
    s = Scheduler(plan, state, clock)
    clock.set_wall(ts(2024, 6, 1, 2))  # both due at once
    stop = threading.Event()
    release = threading.Event()
    started: list[str] = []

    def execute(d: Due) -> Outcome:
        started.append(d.job)
        release.wait(10)
        return Outcome("success")

    def sleep(seconds: float) -> None:
        if len(started) == 1 and not stop.is_set():
            assert len(started) == 1  # the second job waits for the slot
            stop.set()
            release.set()

    s.run_loop(execute, stop=stop, sleep=sleep)
    assert len(started) == 1
    last = state.last_run(started[0])
    assert last is not None and last.outcome == "success"  # finished before the loop returned


def test_run_loop_runs_different_jobs_concurrently_up_to_the_limit(
    tmp_path: Path, state: StateDB, clock: FakeClock
) -> None:
    plan = make_plan(tmp_path, concurrency=2)
    s = Scheduler(plan, state, clock)
    clock.set_wall(ts(2024, 6, 1, 2))
    stop = threading.Event()
    both = threading.Barrier(2, timeout=10)

    def execute(d: Due) -> Outcome:
        both.wait()  # only returns if the two jobs run at the same time
        return Outcome("success")

    def sleep(seconds: float) -> None:
        if len(state.last_runs("nightly")) and len(state.last_runs("often")):
            stop.set()
        else:
            stop.wait(0.05)

    s.run_loop(execute, stop=stop, sleep=sleep)
    for job in ("nightly", "often"):
        last = state.last_run(job)
        assert last is not None and last.outcome == "success"


def test_a_read_only_scheduler_records_nothing(tmp_path: Path, state: StateDB,
                                               clock: FakeClock) -> None:
    s = Scheduler(make_plan(tmp_path), state, clock, read_only=True)
    assert s.next_runs()["often"] == datetime(2024, 6, 1, 1, tzinfo=UTC)
    assert state.jobs() == []


def test_prune_follows_the_maintenance_schedule_or_weekly(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, jobs=(
        '[jobs.a]\npaths = ["/srv"]\nrepositories = ["r"]\nschedule = "hourly"\n'
        'timezone = "UTC"\nmaintenance = "daily at 04:00"\n'
        '[jobs.b]\npaths = ["/srv"]\nrepositories = ["r"]\nschedule = "hourly"\n'
        'timezone = "UTC"\n'))
    a, b = plan.jobs["a"], plan.jobs["b"]
    assert maintenance_due(a, None, ts(2024, 6, 1))
    assert not maintenance_due(a, ts(2024, 6, 1, 4, 30), ts(2024, 6, 2, 3, 59))
    assert maintenance_due(a, ts(2024, 6, 1, 4, 30), ts(2024, 6, 2, 4))
    # 2024-06-02 is a Sunday: the default is weekly, Sunday 00:00
    assert not maintenance_due(b, ts(2024, 6, 2, 1), ts(2024, 6, 8, 23, 59))
    assert maintenance_due(b, ts(2024, 6, 2, 1), ts(2024, 6, 9))
