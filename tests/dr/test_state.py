"""The state database: runs, verifications and notifications survive a reopen; dead
runs become 'interrupted'; job locks exclude other holders, also in other processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from resurgo.dr.state import (
    SCHEMA_VERSION,
    JobBusy,
    StateDB,
    StateError,
)
from resurgo.errors import UsageError
from resurgo.testing.clock import FakeClock

T0 = 1_700_000_000.0
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


def test_new_database_uses_wal_and_records_its_schema_version(db_path: Path) -> None:
    with StateDB(db_path) as state:
        assert state.schema_version == SCHEMA_VERSION
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "verifications", "notifications", "schema_version", "jobs"} <= tables
    raw.close()


def test_a_run_is_recorded_and_survives_a_reopen(db_path: Path, clock: FakeClock) -> None:
    with StateDB(db_path, clock=clock) as state:
        run_id = state.start_run("home", "schedule", 1)
        clock.advance(42)
        state.finish_run(
            run_id, "warning", snapshot_ids={"local": "ab" * 32, "offsite": "cd" * 32},
            bytes_added=1234, files=7, warnings=[{"path": "/x", "error": "EIO"}],
        )
    with StateDB(db_path, clock=clock) as state:
        run = state.last_run("home")
        assert run is not None
        assert (run.id, run.job, run.trigger, run.attempt) == (run_id, "home", "schedule", 1)
        assert (run.started, run.ended, run.outcome) == (T0, T0 + 42, "warning")
        assert run.snapshot_ids == {"local": "ab" * 32, "offsite": "cd" * 32}
        assert (run.bytes_added, run.files) == (1234, 7)
        assert run.warnings == [{"path": "/x", "error": "EIO"}]
        assert run.error is None and run.pid == os.getpid()
        assert run.finished and run.successful
        assert state.last_success("home") == run


def test_last_runs_are_newest_first_and_last_success_skips_failures(
    db_path: Path, clock: FakeClock
) -> None:
    with StateDB(db_path, clock=clock) as state:
        ids = []
        for outcome in ("success", "failure", "success", "failure"):
            run_id = state.start_run("db", "schedule")
            clock.advance(10)
            state.finish_run(run_id, outcome, error="boom" if outcome == "failure" else None)
            ids.append(run_id)
            clock.advance(100)
        assert [r.id for r in state.last_runs("db", 3)] == ids[::-1][:3]
        success = state.last_success("db")
        assert success is not None and success.id == ids[2]
        failed = state.last_run("db")
        assert failed is not None and failed.error == "boom" and not failed.successful
        assert [r.id for r in state.runs_between(T0 + 100, T0 + 300)] == ids[1:3]
        assert state.jobs() == ["db"]


def test_unknown_outcome_and_trigger_are_refused(db_path: Path) -> None:
    with StateDB(db_path) as state:
        with pytest.raises(UsageError):
            state.start_run("j", "whenever")
        run_id = state.start_run("j", "manual")
        with pytest.raises(UsageError):
            state.finish_run(run_id, "meh")
        with pytest.raises(StateError):
            state.finish_run(run_id + 99, "success")


def test_run_left_by_a_dead_process_is_marked_interrupted_on_open(
    db_path: Path, clock: FakeClock
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    with StateDB(db_path, clock=clock) as state:
        stale = state.start_run("home", "schedule", pid=dead_pid)
    clock.advance(600)
    with StateDB(db_path, clock=clock) as state:
        run = state.run(stale)
        assert run is not None
        assert run.outcome == "interrupted"
        assert run.ended == T0 + 600
        assert run.error and "ended before the run finished" in run.error
        assert state.running("home") is None


def test_run_whose_process_lives_but_holds_no_job_lock_is_dead(db_path: Path) -> None:
    # Our own pid is alive, but no one holds the job lock: the run was abandoned
    # (its thread died, or the pid was reused).
    with StateDB(db_path) as state:
        run_id = state.start_run("home", "schedule")
        assert state.running("home") is None
        run = state.run(run_id)
        assert run is not None and run.outcome == "interrupted"


def test_live_run_is_reported_running_and_not_recovered(db_path: Path) -> None:
    with StateDB(db_path) as state:
        with state.lock_job("home"):
            run_id = state.start_run("home", "manual")
            assert state.recover() == []
            running = state.running("home")
            assert running is not None and running.id == run_id
        state.finish_run(run_id, "success")
        assert state.running("home") is None
        run = state.run(run_id)
        assert run is not None and run.outcome == "success"


def test_job_lock_excludes_a_second_holder_in_the_same_process(db_path: Path) -> None:
    with StateDB(db_path) as state:
        lock = state.lock_job("home")
        assert state.try_lock_job("home") is None
        with pytest.raises(JobBusy, match="already running"):
            state.lock_job("home")
        other = state.try_lock_job("other-job")
        assert other is not None
        other.release()
        lock.release()
        again = state.try_lock_job("home")
        assert again is not None
        again.release()


def test_job_lock_excludes_another_process_and_is_freed_when_it_dies(db_path: Path) -> None:
    StateDB(db_path).close()
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from resurgo.dr.state import StateDB
        state = StateDB({str(db_path)!r})
        lock = state.lock_job("home")
        state.start_run("home", "manual")
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with StateDB(db_path) as state:
            assert state.try_lock_job("home") is None
            running = state.running("home")
            assert running is not None and running.pid == child.pid
            child.kill()
            child.wait()
            lock = state.try_lock_job("home")  # the kernel dropped the dead holder's lock
            assert lock is not None
            lock.release()
            assert state.running("home") is None
            last = state.last_run("home")
            assert last is not None and last.outcome == "interrupted"
    finally:
        child.kill()
        child.wait()


def test_concurrent_writers_from_threads_all_land(db_path: Path) -> None:
    with StateDB(db_path) as state:
        def work(n: int) -> None:
            for _ in range(20):
                run_id = state.start_run(f"job{n}", "schedule")
                state.finish_run(run_id, "success")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(state.jobs()) == ["job0", "job1", "job2", "job3"]
        assert all(len(state.last_runs(f"job{n}", 100)) == 20 for n in range(4))


def test_verifications_and_notifications_are_kept(db_path: Path, clock: FakeClock) -> None:
    with StateDB(db_path, clock=clock) as state:
        state.record_verification("offsite", True, "check", "no errors")
        clock.advance(60)
        state.record_verification("offsite", False, "drill", "2 files differ")
        state.record_notification("home", "failure", "ops", True, "HTTP 200")
        clock.advance(5)
        state.record_notification("home", "recovery", "mail", False, "connection refused")
    with StateDB(db_path, clock=clock) as state:
        last = state.last_verification("offsite")
        assert last is not None and (last.ok, last.kind, last.time) == (False, "drill", T0 + 60)
        good = state.last_verification("offsite", ok_only=True)
        assert good is not None and (good.kind, good.detail, good.time) == ("check", "no errors", T0)
        assert state.last_verification("local") is None
        notes = state.last_notifications("home")
        assert [(n.event, n.target, n.ok) for n in notes] == [
            ("recovery", "mail", False), ("failure", "ops", True)]
        assert [n.event for n in state.last_notifications(event="failure")] == ["failure"]
        assert state.latest_time() == T0 + 65


def test_first_seen_is_recorded_once(db_path: Path) -> None:
    with StateDB(db_path) as state:
        assert state.first_seen("home", 100.0) == 100.0
        assert state.first_seen("home", 200.0) == 100.0
    with StateDB(db_path) as state:
        assert state.first_seen("home", 300.0) == 100.0


def test_a_database_from_a_newer_resurgo_is_refused(db_path: Path) -> None:
    StateDB(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(StateError, match="newer"):
        StateDB(db_path)


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="unusable"):
        StateDB(db_path)


def test_runs_table_keeps_json_columns_plain(db_path: Path) -> None:
    with StateDB(db_path) as state:
        run_id = state.start_run("home", "retry", 2)
        state.finish_run(run_id, "failure", warnings=["a"], error="x")
    raw = sqlite3.connect(db_path)
    row = raw.execute("SELECT snapshot_ids, warnings, attempt, trigger FROM runs").fetchone()
    raw.close()
    assert json.loads(row[0]) == {} and json.loads(row[1]) == ["a"] and row[2:] == (2, "retry")


def test_maintenance_times_are_kept_per_job_repository_and_kind(db_path: Path,
                                                                clock: FakeClock) -> None:
    with StateDB(db_path, clock=clock) as state:
        state.record_maintenance("home", "local", "prune", True, "removed 3 packs")
        clock.advance(100)
        state.record_maintenance("home", "local", "prune", False, "locked")
        state.record_maintenance("home", "offsite", "forget", True)
    with StateDB(db_path, clock=clock) as state:
        assert state.last_maintenance("home", "local", "prune") == T0
        assert state.last_maintenance("home", "local", "prune", ok_only=False) == T0 + 100
        assert state.last_maintenance("home", "offsite", "forget") == T0 + 100
        assert state.last_maintenance("home", "offsite", "prune") is None


def test_first_seen_without_recording_writes_nothing(db_path: Path) -> None:
    with StateDB(db_path) as state:
        assert state.first_seen("home", 50.0, record=False) == 50.0
        assert state.jobs() == []


def test_unfinished_run_of_a_renamed_host_is_recovered_when_its_lock_is_free(
    db_path: Path,
) -> None:
    with StateDB(db_path, host="old-name") as state:
        run_id = state.start_run("home", "schedule")
    with StateDB(db_path, host="new-name") as state:
        run = state.run(run_id)
        assert run is not None and run.outcome == "interrupted"
