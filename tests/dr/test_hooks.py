"""Hooks: commands run in order with their environment; a failing or timed-out pre hook
stops the job; a timeout kills the hook's whole process group; output tails are kept."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from resurgo.dr.hooks import HookFailed, run_hooks
from resurgo.dr.plan import HookSpec
from resurgo.errors import Interrupted, ResurgoError


def sh(script: str, timeout: float = 10.0) -> HookSpec:
    return HookSpec(["/bin/sh", "-c", script], timeout)


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_hooks_run_in_order_with_the_given_environment(tmp_path: Path) -> None:
    log = tmp_path / "log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RESURGO_JOB": "home"}
    result = run_hooks(
        [sh(f'echo "first $RESURGO_JOB" >> {log}'), sh(f"echo second >> {log}; echo done")],
        env, phase="post",
    )
    assert result.ok
    assert log.read_text() == "first home\nsecond\n"
    assert [r.returncode for r in result.runs] == [0, 0]
    assert result.runs[1].output == "done\n"
    assert result.messages() == []


def test_a_failing_pre_hook_stops_the_job_and_the_remaining_hooks(tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    with pytest.raises(HookFailed) as info:
        run_hooks([sh("echo 'app refuses to stop' >&2; exit 3"), sh(f"touch {marker}")])
    err = info.value
    assert isinstance(err, ResurgoError)
    assert err.phase == "pre"
    assert err.run.returncode == 3
    assert "exited with status 3: app refuses to stop" in str(err)
    assert len(err.result.runs) == 1
    assert not marker.exists()


def test_failing_post_hooks_are_reported_but_all_run(tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    result = run_hooks([sh("exit 1"), sh(f"touch {marker}")], phase="post")
    assert not result.ok
    assert marker.exists()
    assert [r.ok for r in result.runs] == [False, True]
    assert result.messages() == ["post hook /bin/sh -c exit 1: exited with status 1"]


def test_a_missing_program_is_a_failure_not_a_crash() -> None:
    with pytest.raises(HookFailed, match="command not found"):
        run_hooks([HookSpec(["/nonexistent/resurgo-hook"], 5.0)])
    result = run_hooks([HookSpec(["/nonexistent/resurgo-hook"], 5.0)], phase="on_failure")
    assert result.runs[0].returncode is None and result.runs[0].error == "command not found"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell starts a background child that ignores SIGTERM, then waits forever.
    script = (f"trap '' TERM; sleep 300 & echo $! > {pidfile}; echo started; "
              "while :; do sleep 1; done")
    started = time.monotonic()
    with pytest.raises(HookFailed, match="timed out") as info:
        run_hooks([sh(script, timeout=1.0)], kill_grace=0.5)
    elapsed = time.monotonic() - started
    run = info.value.run
    assert run.timed_out and run.returncode is None
    assert "started" in run.output
    assert elapsed < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the hook's background child survived the timeout"


def test_a_hook_may_leave_a_daemon_running_when_it_succeeds(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    script = f"sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}"
    result = run_hooks([sh(script)], phase="post")
    assert result.ok
    pid = int(pidfile.read_text())
    try:
        assert not gone(pid)
    finally:
        os.kill(pid, 9)


def test_output_keeps_only_the_tail() -> None:
    script = f"{sys.executable} -c \"import sys; sys.stdout.write('x' * 100000 + 'END')\""
    result = run_hooks([sh(script)], phase="post", tail_bytes=64)
    assert result.ok
    assert len(result.runs[0].output) == 64
    assert result.runs[0].output.endswith("END")


def test_stop_event_kills_the_running_hook_and_interrupts() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        run_hooks([sh("sleep 30", timeout=60)], stop=stop, kill_grace=0.5)
    assert time.monotonic() - started < 5
