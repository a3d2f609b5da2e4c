"""Running one job of a plan: hooks, backups, copies, retention, and what to tell people.

Vocabulary: a *run* (``JobRunner.execute``, the ``execute`` callable of
``resurgo.dr.scheduler``) performs one job in *steps*:

1. ``pre`` hooks, in order; the first that fails or times out stops the run.
2. *backup* into the job's *primary* repository: its paths (excludes, tags,
   this host) as one snapshot, then each *command source* as its own snapshot
   ``/NAME``. Every snapshot is tagged with the job's name as well as its tags,
   so the job's snapshots can be told apart (``observe.job_snapshots``). A
   command that exits non-zero or runs past its timeout fails the run and
   leaves no snapshot of its output.
3. *copy* to every other repository of the job: the new snapshots, plus any of
   the job's snapshots in the primary that are newer than the newest copy of
   the same source already there. So a copy missed by an earlier failed run is
   made up, while old snapshots that the copy's retention removed are not
   brought back.
4. *forget* in each repository that has a retention policy (only the job's
   snapshots, grouped by host and paths, buckets in the job's time zone), then
   *prune* where the job's maintenance schedule says it is due
   (``scheduler.maintenance_due``, recorded with ``state.record_maintenance``).
   Both only after the backup and every copy succeeded: while something is
   broken, nothing is deleted.
5. ``post`` hooks after a good run; ``on_failure`` hooks after a failed or an
   interrupted one (a pre hook may have stopped a service that must come back).

The *outcome*: ``failure`` when a pre hook, a source, a repository or a copy
failed; ``interrupted`` when the ``stop`` event was set (the run stops at the
next step boundary, a running hook's process group is killed, a backup or copy
stops between files or ranges); ``warning`` when every snapshot was written and
copied but something deserves a look (unreadable files, a failed post hook, a
failed forget or prune); else ``success``.

After every run the job is observed (``observe.Observer``) and the notification
rules (``notify.advance``) decide what is sent to the job's targets;
``check_rpo`` applies the same rules without a run (the daemon's periodic RPO
evaluation). The memory the rules need (``AlertState``) is kept per job and
rebuilt from the state database after a restart. A new job (no snapshot in
every repository yet, all of them readable) is given its RPO, counted from when
a scheduler first saw it, before its RPO counts as breached for notifications.

Repositories are opened through an injected ``opener(spec)``: this layer never
reads passwords, files named in the plan, or the environment; hooks get the
environment the caller passes in ``hook_env``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resurgo.dr.hooks import HookFailed, run_hooks
from resurgo.dr.notify import (
    BAD_OUTCOMES,
    FAILURE,
    GOOD_OUTCOMES,
    RECOVERY,
    RPO_BREACH,
    SUCCESS,
    AlertState,
    Delivery,
    Notifier,
    advance,
    alert_state_from,
    make_notice,
)
from resurgo.dr.observe import (
    Observer,
    Opener,
    describe_error,
    job_snapshots,
    job_tags,
)
from resurgo.dr.plan import HookSpec, JobSpec, Plan, retention_policy
from resurgo.dr.scheduler import Due, Outcome, maintenance_due
from resurgo.dr.state import StateDB
from resurgo.dr.status import JobStatus, origin
from resurgo.errors import Interrupted, ResurgoError, SourceError
from resurgo.ops.backup import BackupOptions, BackupSummary, backup_paths, backup_stream
from resurgo.ops.copy import copy_snapshots
from resurgo.ops.excludes import Excluder
from resurgo.ops.forget import forget, plan_policy
from resurgo.ops.prune import PruneOptions, prune
from resurgo.progress import NULL, Reporter
from resurgo.repo import Repository
from resurgo.repo.clock import SYSTEM_CLOCK, Clock
from resurgo.snapshot.model import Snapshot
from resurgo.snapshot.store import list_snapshots

__all__ = ["JobRunner", "RunFailed", "StepReporter"]

_log = logging.getLogger(__name__)

class RunFailed(ResurgoError):
    """A step of a run failed; the message names the step and the repository."""


class StepReporter:
    """Forwards engine events of one step with the job's name, keeping their summaries apart.

    Each operation ends with a ``summary`` event; renamed ``<step>.summary`` so
    a caller that merges ``summary`` events (the CLI) does not mix the backup's
    with the copy's.
    """

    def __init__(self, inner: Reporter, job: str, step: str) -> None:
        self.inner = inner
        self.job = job
        self.step = step

    def event(self, kind: str, /, **fields: Any) -> None:
        if kind == "summary":
            kind = f"{self.step}.summary"
        self.inner.event(kind, **{"job": self.job, **fields})

    def progress(self, /, **counters: Any) -> None:
        self.inner.progress(**counters)


@dataclass
class _RunState:
    """What one run has done so far."""

    job: JobSpec
    due: Due
    started: float
    repos: dict[str, Repository] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # repository -> error
    new: list[str] = field(default_factory=list)  # snapshot IDs made in the primary
    snapshot_ids: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    bytes_added: int = 0
    files: int = 0


class JobRunner:
    """Runs the jobs of ``plan`` (see the module docstring); ``execute`` is the scheduler's callable.

    ``opener(spec)`` opens a plan repository for writing. ``observer`` (for
    notifications and the RPO) and ``notifier`` are optional. ``cache_dir``
    keeps copy translation maps. ``hostname`` is recorded in the snapshots
    (default: this host). ``stop``: set to interrupt runs. ``hook_env``: the
    environment of hooks (None: this process's, without the ``RESURGO_*``
    run variables). Thread-safe: the daemon runs different jobs at once.
    """

    def __init__(
        self,
        plan: Plan,
        state: StateDB,
        opener: Opener,
        *,
        observer: Observer | None = None,
        notifier: Notifier | None = None,
        cache_dir: Path | None = None,
        hostname: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        reporter: Reporter = NULL,
        stop: threading.Event | None = None,
        hook_env: Mapping[str, str] | None = None,
        prune_options: PruneOptions | None = None,
    ) -> None:
        self.plan = plan
        self.state = state
        self.opener = opener
        self.observer = observer
        self.notifier = notifier
        self.cache_dir = cache_dir
        self.hostname = hostname or socket.gethostname()
        self.clock = clock
        self.reporter = reporter
        self.stop = stop or threading.Event()
        self.hook_env = hook_env
        self.prune_options = prune_options or PruneOptions()
        self._alerts: dict[str, AlertState] = {}
        self._alert_lock = threading.Lock()

    # -- the run ------------------------------------------------------------------------

    def execute(self, due: Due) -> Outcome:
        """Run ``due.job`` now and return its outcome; never raises for a failed run."""
        job = self.plan.jobs[due.job]
        run = _RunState(job, due, self.clock.time())
        self.reporter.event("job.start", job=job.name, run_id=due.run_id, trigger=due.trigger,
                            attempt=due.attempt)
        try:
            outcome = self._perform(run)
            try:
                self._after_run(run, outcome)
            except Exception:  # telling people must never change what happened
                _log.exception("job %s: after run %s", job.name, due.run_id)
        finally:
            for repo in run.repos.values():
                try:
                    repo.close()
                except Exception:
                    _log.debug("closing a repository failed", exc_info=True)
        end: dict[str, Any] = {"error": outcome.error} if outcome.error else {}
        self.reporter.event(
            "job.end", job=job.name, run_id=due.run_id, outcome=outcome.outcome,
            duration=round(self.clock.time() - run.started, 3),
            snapshot_ids=outcome.snapshot_ids, bytes_added=outcome.bytes_added,
            files=outcome.files, warnings=len(outcome.warnings), **end,
        )
        return outcome

    def _perform(self, run: _RunState) -> Outcome:
        job = run.job
        try:
            self._check_stop()
            if job.hooks_pre:
                self._step(run, "pre-hooks")
                run_hooks(job.hooks_pre, self._hook_env(run, "pre"), phase="pre",
                          stop=self.stop)
            self._backup(run)
            self._copy(run)
            if not self.stop.is_set():
                self._maintain(run)
        except BaseException as e:
            interrupted = isinstance(e, Interrupted) or self.stop.is_set()
            if not isinstance(e, Exception) and not interrupted:
                raise  # KeyboardInterrupt and the like: run_job records and re-raises
            error = describe_error(e) if isinstance(e, Exception) else "interrupted"
            outcome = "interrupted" if interrupted else "failure"
            if interrupted and not isinstance(e, Interrupted):
                error = f"stopped: {error}"
            self._hooks_after(run, "on_failure", job.hooks_on_failure,
                              RESURGO_OUTCOME=outcome, RESURGO_ERROR=error)
            if isinstance(e, HookFailed) and e.run.output:
                run.warnings.append(f"pre hook output: {e.run.output.strip()[-500:]}")
            return Outcome(outcome, dict(run.snapshot_ids), run.bytes_added, run.files,
                           list(run.warnings), error)
        self._hooks_after(run, "post", job.hooks_post,
                          RESURGO_OUTCOME="warning" if run.warnings else "success",
                          RESURGO_SNAPSHOTS=",".join(f"{k}={v}" for k, v in
                                                     sorted(run.snapshot_ids.items())))
        return Outcome("warning" if run.warnings else "success", dict(run.snapshot_ids),
                       run.bytes_added, run.files, list(run.warnings))

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("the run was stopped")

    def _step(self, run: _RunState, step: str, **fields: Any) -> None:
        self.reporter.event("job.step", job=run.job.name, run_id=run.due.run_id, step=step,
                            **fields)

    def _open(self, run: _RunState, name: str) -> Repository:
        repo = run.repos.get(name)
        if repo is not None:
            return repo
        try:
            repo = self.opener(self.plan.repositories[name])
        except Exception as e:
            message = f"repository {name}: {describe_error(e)}"
            run.unreachable[name] = message
            raise RunFailed(message) from e
        run.repos[name] = repo
        return repo

    # -- hooks --------------------------------------------------------------------------

    def _hook_env(self, run: _RunState, phase: str, **extra: str) -> dict[str, str] | None:
        if self.hook_env is None:
            return None
        env = dict(self.hook_env)
        env.update(
            RESURGO_JOB=run.job.name,
            RESURGO_RUN_ID=str(run.due.run_id or ""),
            RESURGO_TRIGGER=run.due.trigger,
            RESURGO_ATTEMPT=str(run.due.attempt),
            RESURGO_HOOK_PHASE=phase,
        )
        env.update(extra)
        return env

    def _hooks_after(self, run: _RunState, phase: str, hooks: list[HookSpec],
                     **extra: str) -> None:
        """Post or on-failure hooks: every one runs; failures become warnings.

        They run even while stopping (not killed by ``stop``): a service that a
        pre hook stopped must be started again. Their own timeouts bound them.
        """
        if not hooks:
            return
        self._step(run, f"{phase.replace('_', '-')}-hooks")
        try:
            result = run_hooks(hooks, self._hook_env(run, phase, **extra), phase=phase,
                               check=False)
        except Exception as e:
            run.warnings.append(f"{phase} hooks: {describe_error(e)}")
            return
        run.warnings.extend(result.messages())

    # -- backup -------------------------------------------------------------------------

    def _options(self, job: JobSpec) -> BackupOptions:
        return BackupOptions(tags=job_tags(job), hostname=self.hostname)

    def _record_backup(self, run: _RunState, key: str, s: BackupSummary) -> None:
        assert s.snapshot_id is not None
        run.new.append(s.snapshot_id)
        run.snapshot_ids[key] = s.snapshot_id
        run.bytes_added += s.bytes_added
        run.files += s.files_total
        run.warnings.extend(f"{w.get('path', '?')}: {w.get('error', '?')}" for w in s.warnings)

    def _backup(self, run: _RunState) -> None:
        job = run.job
        self._check_stop()
        primary = self._open(run, job.primary)
        if job.paths:
            self._step(run, "backup", repository=job.primary)
            excluder = Excluder(exclude=job.exclude, exclude_caches=job.exclude_caches)
            opts = self._options(job)
            if excluder.active:
                opts.excluder = excluder
                opts.excludes_text = excluder.describe()
            s = backup_paths(primary, job.paths, opts,
                             reporter=StepReporter(self.reporter, job.name, "backup"),
                             should_stop=self.stop.is_set)
            self._record_backup(run, job.primary, s)
        for source in job.commands:
            self._check_stop()
            self._step(run, "command", repository=job.primary, source=source.name)
            try:
                s = backup_stream(primary, source.name, command=list(source.command),
                                  opts=self._options(job),
                                  reporter=StepReporter(self.reporter, job.name, "command"),
                                  timeout=source.timeout, should_stop=self.stop.is_set)
            except SourceError as e:
                raise SourceError(f"command source {source.name}: {e}") from e
            self._record_backup(run, f"{job.primary}:{source.name}", s)

    # -- copy ---------------------------------------------------------------------------

    def _to_copy(self, job: JobSpec, primary: list[Snapshot], present: list[Snapshot],
                 new: set[str]) -> list[Snapshot]:
        """The primary's snapshots a copy repository should receive (see the module docstring)."""
        have = {origin(s) for s in present}
        newest: dict[tuple[str, ...], int] = {}
        for s in present:
            key = tuple(sorted(s.paths))
            newest[key] = max(newest.get(key, s.time_ns), s.time_ns)
        chosen = []
        for s in primary:
            if origin(s) in have:
                continue
            key = tuple(sorted(s.paths))
            if s.id in new or s.time_ns > newest.get(key, -1):
                chosen.append(s)
        return chosen

    def _copy(self, run: _RunState) -> None:
        job = run.job
        if not job.copies:
            return
        self._check_stop()
        primary = run.repos[job.primary]
        primary_snaps = job_snapshots(job, list_snapshots(primary), self.hostname)
        new = set(run.new)
        errors: list[str] = []
        for name in job.copies:
            self._check_stop()
            self._step(run, "copy", repository=name)
            try:
                dst = self._open(run, name)
                present = job_snapshots(job, list_snapshots(dst), self.hostname)
                chosen = self._to_copy(job, primary_snaps, present, new)
                summary = copy_snapshots(
                    primary, dst, chosen, cache_dir=self.cache_dir,
                    reporter=StepReporter(self.reporter, job.name, "copy"),
                    should_stop=self.stop.is_set,
                )
            except Interrupted:
                raise
            except Exception as e:
                if self.stop.is_set():
                    raise
                message = str(e) if isinstance(e, RunFailed) else (
                    f"repository {name}: copy failed: {describe_error(e)}")
                errors.append(message)
                continue
            copied = dict(summary.copied)
            for key, source_id in list(run.snapshot_ids.items()):
                if key == job.primary or key.startswith(job.primary + ":"):
                    dest = copied.get(source_id)
                    if dest is not None:
                        run.snapshot_ids[name + key[len(job.primary):]] = dest
        if errors:
            raise RunFailed("; ".join(errors))

    # -- forget and prune -----------------------------------------------------------------

    def _maintain(self, run: _RunState) -> None:
        job = run.job
        now = self.clock.time()
        for name in job.repositories:
            repo = run.repos.get(name)
            if repo is None or self.stop.is_set():
                continue
            rules = job.retention.get(name)
            if rules:
                self._step(run, "forget", repository=name)
                try:
                    policy = retention_policy(rules)
                    snaps = job_snapshots(job, list_snapshots(repo), self.hostname)
                    decided = plan_policy(snaps, policy, now=datetime.fromtimestamp(now, UTC),
                                          tz=job.schedule.tz or UTC)
                    removed = forget(repo, decided,
                                     reporter=StepReporter(self.reporter, job.name, "forget"))
                    self.state.record_maintenance(
                        job.name, name, "forget", True,
                        f"removed {len(removed)}, kept {len(decided.keep)}", time=now)
                except Exception as e:
                    run.warnings.append(f"forget in repository {name} failed: "
                                        f"{describe_error(e)}")
                    self.state.record_maintenance(job.name, name, "forget", False,
                                                  describe_error(e), time=now)
            last = self.state.last_maintenance(job.name, name, "prune")
            if self.stop.is_set() or not maintenance_due(job, last, now):
                continue
            self._step(run, "prune", repository=name)
            try:
                report = prune(repo, self.prune_options,
                               reporter=StepReporter(self.reporter, job.name, "prune"))
                self.state.record_maintenance(
                    job.name, name, "prune", True,
                    f"freed {report.bytes_freed} bytes, marked {report.bytes_marked}",
                    time=self.clock.time())
                run.warnings.extend(f"prune in repository {name}: {w}" for w in report.warnings)
            except Exception as e:
                run.warnings.append(f"prune in repository {name} failed: {describe_error(e)}")
                self.state.record_maintenance(job.name, name, "prune", False,
                                              describe_error(e), time=self.clock.time())

    # -- observation and notifications -----------------------------------------------------

    def _after_run(self, run: _RunState, outcome: Outcome) -> None:
        job = run.job
        status: JobStatus | None = None
        if self.observer is not None:
            for name, repo in run.repos.items():
                self.observer.record(name, repo)
            for name, error in run.unreachable.items():
                self.observer.record_error(name, error)
            try:
                status = self.observer.status(job.name)
            except Exception:
                _log.exception("job %s: the status after run %s could not be computed",
                               job.name, run.due.run_id)
        details: dict[str, Any] = {"run_id": run.due.run_id, "trigger": run.due.trigger,
                                   "attempt": run.due.attempt}
        if outcome.outcome == "failure":
            details["error"] = outcome.error
        elif outcome.outcome in GOOD_OUTCOMES:
            details.update(snapshot_ids=outcome.snapshot_ids, bytes_added=outcome.bytes_added,
                           files=outcome.files, warnings=len(outcome.warnings))
        self._notify(job, outcome=outcome.outcome, status=status, details=details)

    def check_rpo(self, job_name: str, *, refresh: bool = True) -> JobStatus | None:
        """Evaluate the RPO of ``job_name`` now and send what the rules say (no run involved).

        Returns the status (None without an observer).
        """
        if self.observer is None:
            return None
        job = self.plan.jobs[job_name]
        status = self.observer.status(job_name, refresh=refresh)
        self._notify(job, outcome=None, status=status, details={})
        return status

    def alert_state(self, job_name: str) -> AlertState | None:
        """What the notification rules remember about ``job_name`` (None before the first use)."""
        with self._alert_lock:
            return self._alerts.get(job_name)

    def _rpo_verdict(self, job: JobSpec, status: JobStatus | None, now: float) -> bool | None:
        """The RPO verdict the notification rules use: the status's, with a grace for new jobs.

        A job that has no snapshot in every repository yet, while each of them
        could be read, is not in breach before its RPO has passed since a
        scheduler first saw it: a new plan must not page anyone before its first
        run could even happen. (``resurgo status`` still says critical.)
        """
        if status is None:
            return None
        if (status.rpo_ok is False and status.rpo_age is None and job.rpo is not None
                and all(r.reachable for r in status.repositories)):
            first = self.state.first_seen(job.name, now, record=False)
            if now - first <= job.rpo:
                return None
        return status.rpo_ok

    def _notify(self, job: JobSpec, *, outcome: str | None, status: JobStatus | None,
                details: dict[str, Any]) -> list[Delivery]:
        now = self.clock.time()
        rpo_ok = self._rpo_verdict(job, status, now)
        with self._alert_lock:
            # The last decisive outcome always comes from the database (a manual
            # run in another process counts too); the RPO memory only lives here.
            stored = alert_state_from(self.state, job.name)
            memory = self._alerts.get(job.name)
            alert = stored if memory is None else replace(memory, outcome=stored.outcome)
            events, self._alerts[job.name] = advance(alert, now=now, outcome=outcome,
                                                     rpo_ok=rpo_ok)
        if not events or self.notifier is None or not job.notify:
            return []
        reason = "run" if outcome in GOOD_OUTCOMES and alert.outcome in BAD_OUTCOMES else "rpo"
        notices = []
        for event in events:
            about_run = event in (FAILURE, SUCCESS) or (event == RECOVERY and reason == "run")
            extra = dict(details) if about_run else {}
            if event == RPO_BREACH or (event == RECOVERY and reason == "rpo"):
                extra.update(rpo_age=None if status is None else status.rpo_age,
                             rpo=job.rpo)
            if event == RECOVERY:
                extra["reason"] = reason
            notices.append(make_notice(event, job.name, now, **extra))
        try:
            return self.notifier.notify_all(notices, only=job.notify)
        except Exception:  # sending never fails a run; a bug here must not either
            _log.exception("job %s: sending notifications failed", job.name)
            return []

