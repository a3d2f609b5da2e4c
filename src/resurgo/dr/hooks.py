"""Hooks: commands a job runs around its backup, each with a time limit.

Vocabulary: a *hook* (``HookSpec``) is a command (an argument list, run
without a shell) with a *timeout*. Hooks run in *phases*: ``pre`` (before the
backup; a failing or timed-out pre hook stops the job, ``HookFailed``),
``post`` (after a successful backup) and ``on_failure``; a failing post or
on-failure hook is reported in the result but does not stop the others.

Each hook runs in a new session, hence its own process group: on timeout (or
when the caller's ``stop`` event is set) the whole group gets SIGTERM, then
SIGKILL after a grace period, so a shell's background children die with it.
A hook that exits normally leaves any daemon it started alone (a post hook
"start the app" must not kill the app). stdout and stderr are merged and only
their last ``tail_bytes`` are kept, for the run record; a hook that prints
gigabytes costs no memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from resurgo.dr.plan import HookSpec
from resurgo.errors import Interrupted, ResurgoError

__all__ = ["HookFailed", "HookResult", "HookRun", "run_hooks"]

TAIL_BYTES = 4096
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_DRAIN_AFTER_EXIT = 1.0  # seconds to wait for output a hook's children still hold open


@dataclass(frozen=True)
class HookRun:
    """One hook's execution. ``returncode`` is None when it could not start or was killed."""

    command: list[str]
    returncode: int | None
    duration: float
    output: str = ""  # the tail of stdout + stderr
    timed_out: bool = False
    error: str | None = None  # why it could not start, or was stopped

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        """One line: the command and what went wrong (or "ok")."""
        name = " ".join(self.command)
        if self.ok:
            return f"{name}: ok"
        if self.error:
            why = self.error
        elif self.timed_out:
            why = f"timed out after {self.duration:.0f}s; its process group was killed"
        elif self.returncode is not None and self.returncode < 0:
            why = f"killed by signal {-self.returncode}"
        else:
            why = f"exited with status {self.returncode}"
        last = _last_line(self.output)
        return f"{name}: {why}" + (f": {last}" if last else "")


@dataclass
class HookResult:
    phase: str
    runs: list[HookRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def failures(self) -> list[HookRun]:
        return [r for r in self.runs if not r.ok]

    def messages(self) -> list[str]:
        """One line per failed hook, e.g. for the run record's warnings."""
        return [f"{self.phase} hook {r.describe()}" for r in self.failures]


class HookFailed(ResurgoError):
    """A pre hook failed or timed out: the job does not run."""

    def __init__(self, phase: str, run: HookRun, result: HookResult) -> None:
        super().__init__(f"{phase} hook {run.describe()}")
        self.phase = phase
        self.run = run
        self.result = result


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


class _Tail:
    """Reads a pipe to its end on a thread, keeping only the last ``limit`` bytes."""

    def __init__(self, pipe: IO[bytes] | None, limit: int) -> None:
        assert pipe is not None
        self._pipe = pipe
        self._limit = limit
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="hook-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                with self._lock:
                    self._buf += chunk
                    if len(self._buf) > 2 * self._limit:
                        del self._buf[: len(self._buf) - self._limit]
        except OSError:
            return
        finally:
            try:
                self._pipe.close()
            except OSError:
                pass

    def text(self) -> str:
        with self._lock:
            data = bytes(self._buf[-self._limit:])
        return data.decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
    # SIGKILL went to the whole group even when the leader had already left,
    # so children that ignored SIGTERM are gone too.
    proc.wait()


def _run_one(
    hook: HookSpec,
    env: Mapping[str, str] | None,
    cwd: str | None,
    tail_bytes: int,
    kill_grace: float,
    stop: threading.Event | None,
) -> HookRun:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(hook.command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return HookRun(list(hook.command), None, 0.0, error="command not found")
    except PermissionError:
        return HookRun(list(hook.command), None, 0.0, error="permission denied (not executable)")
    except OSError as e:
        return HookRun(list(hook.command), None, 0.0, error=f"cannot run: {e.strerror or e}")
    tail = _Tail(proc.stdout, tail_bytes)
    deadline = started + hook.timeout
    timed_out = False
    stopped = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            try:
                proc.wait(min(remaining, 0.2) if stop is not None else remaining)
                break
            except subprocess.TimeoutExpired:
                continue
        if timed_out or stopped:
            _kill_group(proc, kill_grace)
    except BaseException:
        _kill_group(proc, 0.0)
        raise
    tail.thread.join(kill_grace if (timed_out or stopped) else _DRAIN_AFTER_EXIT)
    duration = time.monotonic() - started
    return HookRun(
        list(hook.command),
        None if (timed_out or stopped) else proc.returncode,
        duration,
        tail.text(),
        timed_out=timed_out,
        error="stopped: the job was asked to stop" if stopped else None,
    )


def run_hooks(
    hooks: Sequence[HookSpec],
    env: Mapping[str, str] | None = None,
    *,
    phase: str = "pre",
    check: bool | None = None,
    cwd: str | None = None,
    stop: threading.Event | None = None,
    tail_bytes: int = TAIL_BYTES,
    kill_grace: float = KILL_GRACE,
) -> HookResult:
    """Run ``hooks`` in order with environment ``env`` (None: this process's).

    ``check`` (default: true for the ``pre`` phase) stops at the first failure
    and raises ``HookFailed``; otherwise every hook runs and failures are in
    the result. ``stop`` set while a hook runs kills its process group and
    raises ``Interrupted``.
    """
    if check is None:
        check = phase == "pre"
    result = HookResult(phase)
    for hook in hooks:
        run = _run_one(hook, env, cwd, tail_bytes, kill_grace, stop)
        result.runs.append(run)
        if stop is not None and stop.is_set():
            raise Interrupted(f"stopped during the {phase} hook {' '.join(hook.command)}")
        if check and not run.ok:
            raise HookFailed(phase, run, result)
    return result
