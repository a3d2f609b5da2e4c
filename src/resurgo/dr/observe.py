"""Observing a job: which of its snapshots each repository holds, and the status that follows.

Vocabulary:

* A job's *snapshots* are the ones its runs make: tagged with the job's name,
  made on this host, and made of the job's paths (one snapshot per run) or of
  one command source (``/NAME``, one snapshot each). ``job_snapshots`` picks
  them out of a repository, so other backups into the same repository (other
  jobs, manual ones of other paths) do not count for the job's RPO or retention.
* A *listing* (``Listing``) is what one repository held when it was last looked
  at, or why it could not be read.
* The ``Observer`` keeps the newest listing of every repository of the plan.
  Runs hand it the repositories they have open (``record``); it opens the others
  itself through an injected opener when a listing is missing or older than
  ``max_age``. ``status`` turns the listings, the run records and the
  verification times into a ``resurgo.dr.status.JobStatus`` at a fresh
  ``now``: RPO ages grow with the clock, not with the age of the listing.
* A repository's *verification time* is the end of its newest successful data
  verification: a ``verifications`` row of the state database (a drill, say),
  or a ``resurgo check --read-data`` recorded in the local cache
  (``<cache>/<repository ID>/check.json``).

Thread-safe: the daemon's job threads, its RPO thread and metrics scrapes share
one ``Observer``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from resurgo.dr.plan import JobSpec, Plan, RepositorySpec
from resurgo.dr.state import StateDB
from resurgo.dr.status import JobStatus, JobStatusInput, RepoInput, RunRecord, job_status
from resurgo.ops.backup import normalize_targets
from resurgo.repo import Repository
from resurgo.repo.clock import SYSTEM_CLOCK, Clock
from resurgo.snapshot.model import Snapshot
from resurgo.snapshot.store import list_snapshots

__all__ = [
    "DEFAULT_MAX_AGE",
    "Listing",
    "Observer",
    "Opener",
    "check_record_time",
    "describe_error",
    "job_path_sets",
    "job_snapshots",
    "job_tags",
    "local_medium",
]

_log = logging.getLogger(__name__)

Opener = Callable[[RepositorySpec], Repository]

# A listing older than this is renewed before it is used (seconds). Runs renew
# the listings of the repositories they touch, so this only matters for
# repositories that changed behind the scheduler's back, or became unreachable.
DEFAULT_MAX_AGE = 900.0
RUN_HISTORY = 50  # run records passed to the status computation


def describe_error(e: BaseException) -> str:
    """One line for an error: our own messages as they are, others with their type."""
    from resurgo.errors import ResurgoError

    if isinstance(e, ResurgoError):
        return str(e)
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- the job's snapshots -------------------------------------------------------------


def job_tags(job: JobSpec) -> list[str]:
    """The tags of the job's snapshots: its own tags and its name."""
    return sorted({*job.tags, job.name})


def job_path_sets(job: JobSpec) -> list[tuple[str, ...]]:
    """The ``paths`` a snapshot of the job records: the job's paths, or one ``/NAME`` per command."""
    sets: list[tuple[str, ...]] = []
    if job.paths:
        # The same normalisation as the backup, which records what it backed up.
        sets.append(tuple(sorted(os.fsdecode(t) for t in normalize_targets(job.paths))))
    sets.extend(("/" + c.name,) for c in job.commands)
    return sets


def job_snapshots(job: JobSpec, snapshots: Iterable[Snapshot], hostname: str) -> list[Snapshot]:
    """The snapshots of ``job`` made on ``hostname`` (copies included: they keep all three)."""
    wanted = set(job_path_sets(job))
    return [
        s for s in snapshots
        if s.hostname == hostname and job.name in s.tags and tuple(sorted(s.paths)) in wanted
    ]


# --- listings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """Every snapshot of one repository at ``time``, or ``error`` when it could not be read."""

    repo: str  # the plan's repository name
    time: float
    snapshots: tuple[Snapshot, ...] | None
    error: str | None = None
    repo_id: str | None = None  # the repository's config ID, when it was opened


def check_record_time(cache_dir: Path, repo_id: str) -> float | None:
    """End of the newest successful ``check --read-data`` recorded in the local cache, if any."""
    path = cache_dir / repo_id / "check.json"
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(history, list):
        return None
    best: float | None = None
    for rec in history:
        if not isinstance(rec, dict) or rec.get("ok") is not True or not rec.get("read_data"):
            continue
        try:
            end = float(rec["time"]) + float(rec.get("duration") or 0.0)
        except (KeyError, TypeError, ValueError):
            continue
        best = end if best is None else max(best, end)
    return best


def local_medium(url: str) -> str | None:
    """``dev:N`` for a local repository that exists (its file system's device), else None.

    Two directories on one disk are one backend for the 3-2-1 count however
    their paths look; ``status.backend_identity`` can only guess from the URL.
    """
    parts = urlsplit(url)
    if "://" in url and parts.scheme != "file":
        return None
    path = unquote(parts.path) if url.startswith("file:") else url
    try:
        return f"dev:{os.stat(path).st_dev}"
    except OSError:
        return None


class Observer:
    """The newest listing of each repository of ``plan`` and the job statuses built on them.

    ``opener`` (None: never open anything, use what runs recorded) opens a
    repository for a listing; it should open read-only. ``cache_dir`` is where
    ``resurgo check`` records its results (None: not consulted). ``hostname``
    is the host whose snapshots belong to the jobs (default: this host).
    """

    def __init__(
        self,
        plan: Plan,
        state: StateDB,
        opener: Opener | None = None,
        *,
        hostname: str | None = None,
        cache_dir: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.plan = plan
        self.state = state
        self.opener = opener
        self.hostname = hostname or socket.gethostname()
        self.cache_dir = cache_dir
        self.clock = clock
        self.max_age = max_age
        self._lock = threading.Lock()
        self._listings: dict[str, Listing] = {}
        # One refresh per repository at a time: a second caller waits and uses its result.
        self._refreshing: dict[str, threading.Lock] = {}

    # -- listings ----------------------------------------------------------------------

    def record(self, name: str, repo: Repository) -> Listing:
        """List the open repository ``repo`` (the plan's ``name``) now and keep the result."""
        now = self.clock.time()
        try:
            snaps = tuple(list_snapshots(repo))
            listing = Listing(name, now, snaps, repo_id=repo.config.id)
        except Exception as e:
            listing = Listing(name, now, None, describe_error(e), repo_id=repo.config.id)
        with self._lock:
            self._listings[name] = listing
        return listing

    def record_error(self, name: str, error: str) -> Listing:
        """Keep the fact that repository ``name`` could not be opened or read."""
        listing = Listing(name, self.clock.time(), None, error)
        with self._lock:
            old = self._listings.get(name)
            if old is not None and old.repo_id is not None:
                listing = Listing(name, listing.time, None, error, repo_id=old.repo_id)
            self._listings[name] = listing
        return listing

    def cached(self, name: str) -> Listing | None:
        with self._lock:
            return self._listings.get(name)

    def refresh(self, name: str) -> Listing:
        """Open repository ``name`` with the opener and list it now."""
        if self.opener is None:
            raise RuntimeError("this observer has no opener")
        with self._lock:
            gate = self._refreshing.setdefault(name, threading.Lock())
        started = self.clock.time()
        with gate:
            current = self.cached(name)
            if current is not None and current.time >= started:
                return current  # another thread listed it while we waited
            spec = self.plan.repositories[name]
            try:
                repo = self.opener(spec)
            except Exception as e:
                return self.record_error(name, f"repository {name}: {describe_error(e)}")
            try:
                return self.record(name, repo)
            finally:
                try:
                    repo.close()
                except Exception:
                    _log.debug("closing repository %s failed", name, exc_info=True)

    def listing(self, name: str, *, refresh: bool = True) -> Listing | None:
        """The listing of ``name``; renewed first when missing or stale, if ``refresh``."""
        current = self.cached(name)
        fresh = current is not None and self.clock.time() - current.time <= self.max_age
        if fresh or not refresh or self.opener is None:
            return current
        return self.refresh(name)

    # -- status --------------------------------------------------------------------------

    def last_verified(self, name: str, repo_id: str | None) -> float | None:
        """When repository ``name`` last had its data verified successfully (see the module doc)."""
        times: list[float] = []
        rec = self.state.last_verification(name, ok_only=True)
        if rec is not None:
            times.append(rec.time)
        if self.cache_dir is not None and repo_id is not None:
            t = check_record_time(self.cache_dir, repo_id)
            if t is not None:
                times.append(t)
        return max(times) if times else None

    def repo_inputs(self, job: JobSpec, *, refresh: bool = True) -> list[RepoInput]:
        """The job's repositories as ``status`` sees them, primary first."""
        inputs = []
        for name in job.repositories:
            spec = self.plan.repositories[name]
            listing = self.listing(name, refresh=refresh)
            if listing is None:
                snaps: Sequence[Snapshot] | None = None
                error: str | None = "not looked at yet"
                repo_id = None
            else:
                repo_id = listing.repo_id
                error = listing.error
                snaps = (None if listing.snapshots is None
                         else job_snapshots(job, listing.snapshots, self.hostname))
            inputs.append(RepoInput(
                name=name, url=spec.url, offsite=spec.offsite, snapshots=snaps, error=error,
                last_verified=self.last_verified(name, repo_id), medium=local_medium(spec.url),
            ))
        return inputs

    def status_input(
        self, job_name: str, *, now: float | None = None, next_run: float | None = None,
        refresh: bool = True,
    ) -> JobStatusInput:
        job = self.plan.jobs[job_name]
        repos = self.repo_inputs(job, refresh=refresh)
        runs = [RunRecord.from_row(r) for r in self.state.last_runs(job_name, RUN_HISTORY)]
        return JobStatusInput(
            job=job_name, repositories=repos, runs=runs,
            now=self.clock.time() if now is None else now,
            rpo=job.rpo, rto=job.rto, next_run=next_run,
        )

    def status(
        self, job_name: str, *, now: float | None = None, next_run: float | None = None,
        refresh: bool = True,
    ) -> JobStatus:
        """The status of job ``job_name`` now (``refresh``: renew stale listings first)."""
        return job_status(self.status_input(job_name, now=now, next_run=next_run,
                                            refresh=refresh))
