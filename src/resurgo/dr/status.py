"""Job status: does reality meet the plan? RPO age, 3-2-1 score, verdict, exit code.

Pure computation over plain values, so it is tested without repositories: the
caller lists the job's snapshots in each repository, reads the run records and
verification times from the state database, asks the schedule for the next
run, and passes it all in a ``JobStatusInput``. ``job_status`` returns a
``JobStatus`` (with ``to_dict()`` for ``--json`` and ``render_text`` for humans).

Vocabulary (docs/status.md has the user-facing definitions):

* The *origin* of a snapshot is its ``original`` ID when it is a copy, else its
  own ID. A snapshot is *present* in a repository when that repository holds a
  snapshot with the same origin.
* The *RPO snapshot* is the newest snapshot present in every repository of the
  job; the *RPO age* is ``now`` minus its time. Data newer than that exists in
  fewer places than the plan requires, so it is what a disaster could lose.
* The *newest snapshot* is the newest origin in any repository. Its *copies* are
  the repositories it is present in; the *3-2-1 score* counts them, the distinct
  storage backends among them, and the offsite ones among them.
* A *problem* is one reason the job is not ``ok``, with a level (warning or
  critical) and a stable code. The job's *state* is its worst problem; states map
  to Nagios exit codes (ok 0, warning 1, critical 2, unknown 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from resurgo.backend.registry import redact_url
from resurgo.snapshot.model import Snapshot

DEFAULT_RPO_WARNING_RATIO = 0.8  # warn once 80 % of the RPO is used
DEFAULT_VERIFY_MAX_AGE = 30 * 86400.0  # warn when data was last verified longer ago
CLOCK_SKEW_TOLERANCE = 300.0  # a snapshot this far in the future means a wrong clock

GOOD_OUTCOMES = frozenset({"success", "warning"})


class State(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        """The Nagios plugin exit code of this state."""
        return _EXIT_CODES[self]


_EXIT_CODES = {State.OK: 0, State.WARNING: 1, State.CRITICAL: 2, State.UNKNOWN: 3}
# When jobs are combined the worst wins. An unknown job may hide anything, yet
# paging as critical for every monitoring glitch is wrong too, so unknown ranks
# between warning and critical.
_SEVERITY = {State.OK: 0, State.WARNING: 1, State.UNKNOWN: 2, State.CRITICAL: 3}


def worst(states: Iterable[State]) -> State:
    """The most severe of ``states`` (ok when there are none)."""
    return max(states, key=lambda s: _SEVERITY[s], default=State.OK)


# --- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The part of a state-database run row that status needs."""

    started: float
    ended: float | None = None
    outcome: str | None = None  # success | warning | failure | interrupted; None while running
    error: str | None = None
    bytes_added: int | None = None
    snapshot_ids: Mapping[str, str] = field(default_factory=dict)
    warnings: Sequence[str] = ()
    id: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else max(0.0, self.ended - self.started)

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        """From a run row: a mapping (``sqlite3.Row``, dict) or an object with attributes.

        ``snapshot_ids`` and ``warnings`` may be the JSON text stored in SQLite.
        """
        def get(name: str) -> Any:
            if isinstance(row, Mapping):
                return row.get(name)
            try:
                return row[name]  # sqlite3.Row is not a Mapping
            except (KeyError, IndexError, TypeError):
                return getattr(row, name, None)

        snapshot_ids = get("snapshot_ids") or {}
        if isinstance(snapshot_ids, str):
            snapshot_ids = json.loads(snapshot_ids) or {}
        warnings = get("warnings") or []
        if isinstance(warnings, str):
            warnings = json.loads(warnings) or []
        ended = get("ended")
        bytes_added = get("bytes_added")
        return cls(
            started=float(get("started")),
            ended=None if ended is None else float(ended),
            outcome=get("outcome"),
            error=get("error"),
            bytes_added=None if bytes_added is None else int(bytes_added),
            snapshot_ids=dict(snapshot_ids),
            warnings=tuple(str(w) for w in warnings),
            id=get("id"),
        )


@dataclass(frozen=True)
class RepoInput:
    """One repository of the job, as observed by the caller.

    ``snapshots``: the job's snapshots in it (filtered by the caller), or None
    when they could not be listed (``error`` says why). ``last_verified``: end of
    the last successful data verification. ``medium`` overrides the storage
    identity derived from the URL (``backend_identity``), e.g. ``dev:2049`` from
    ``os.stat`` for local directories that share a disk.
    """

    name: str
    url: str
    offsite: bool = False
    snapshots: Sequence[Snapshot] | None = ()
    error: str | None = None
    last_verified: float | None = None
    medium: str | None = None


@dataclass(frozen=True)
class JobStatusInput:
    """Everything ``job_status`` looks at. ``repositories[0]`` is the primary.

    Times are Unix seconds; ``rpo``, ``rto``, ``restore_duration`` and
    ``verify_max_age`` are seconds (None: no objective / never measured / no
    limit). ``runs`` may be in any order and need not be complete history.
    """

    job: str
    repositories: Sequence[RepoInput]
    runs: Sequence[RunRecord]
    now: float
    rpo: float | None = None
    rto: float | None = None
    next_run: float | None = None
    restore_duration: float | None = None
    rpo_warning_ratio: float = DEFAULT_RPO_WARNING_RATIO
    verify_max_age: float | None = DEFAULT_VERIFY_MAX_AGE


# --- outputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    level: State  # WARNING or CRITICAL
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level.value, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Score:
    """The 3-2-1 score of the newest snapshot (the live data counts as a copy)."""

    copies: int  # repositories holding the newest snapshot
    backends: int  # distinct storage backends among them
    offsite: int  # offsite repositories among them
    met: bool
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"copies": self.copies, "backends": self.backends, "offsite": self.offsite,
                "met": self.met, "text": self.text}


@dataclass(frozen=True)
class RepoStatus:
    name: str
    url: str  # secrets redacted
    primary: bool
    offsite: bool
    backend: str  # storage identity used for the "distinct backends" count
    reachable: bool
    error: str | None
    snapshots: int | None  # None when unreachable
    latest_id: str | None  # origin ID of the newest snapshot present here
    latest_time: float | None
    holds_newest: bool
    last_verified: float | None

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "primary": self.primary,
            "offsite": self.offsite,
            "backend": self.backend,
            "reachable": self.reachable,
            "error": self.error,
            "snapshots": self.snapshots,
            "latest_snapshot": self.latest_id,
            "latest_time": _iso(self.latest_time),
            "latest_age_seconds": _age(now, self.latest_time),
            "holds_newest": self.holds_newest,
            "last_verified": _iso(self.last_verified),
            "last_verified_age_seconds": _age(now, self.last_verified),
        }


@dataclass(frozen=True)
class RunSummary:
    started: float
    ended: float | None
    outcome: str | None
    duration: float | None
    bytes_added: int | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "outcome": self.outcome,
            "duration_seconds": _round(self.duration),
            "bytes_added": self.bytes_added,
            "error": self.error,
        }


@dataclass(frozen=True)
class JobStatus:
    job: str
    now: float
    state: State
    problems: tuple[Problem, ...]
    rpo: float | None
    rpo_age: float | None  # None: no snapshot in every repository, or one unreachable
    rpo_snapshot: str | None
    rto: float | None
    restore_duration: float | None
    last_success: float | None  # end of the last good run
    last_run: RunSummary | None  # the last finished run
    running_since: float | None
    last_error: str | None
    last_error_time: float | None
    next_run: float | None
    last_verified: float | None  # the oldest of the repositories' (None if one never was)
    newest_snapshot: str | None
    score: Score
    repositories: tuple[RepoStatus, ...]

    @property
    def exit_code(self) -> int:
        return self.state.exit_code

    @property
    def rpo_used(self) -> float | None:
        """Fraction of the RPO used (1.0 = at the limit), when both are known."""
        if self.rpo is None or self.rpo_age is None or self.rpo <= 0:
            return None
        return self.rpo_age / self.rpo

    @property
    def rpo_ok(self) -> bool | None:
        """Within the objective (True), breached (False), or no objective (None)."""
        if self.rpo is None:
            return None
        return self.rpo_age is not None and self.rpo_age <= self.rpo

    @property
    def last_run_duration(self) -> float | None:
        return None if self.last_run is None else self.last_run.duration

    @property
    def last_bytes_added(self) -> int | None:
        return None if self.last_run is None else self.last_run.bytes_added

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of one job (docs/status.md)."""
        used = self.rpo_used
        return {
            "job": self.job,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "problems": [p.to_dict() for p in self.problems],
            "rpo": {
                "objective_seconds": _round(self.rpo),
                "age_seconds": _round(self.rpo_age),
                "used": None if used is None else round(used, 4),
                "ok": self.rpo_ok,
                "snapshot": self.rpo_snapshot,
            },
            "rto": {
                "objective_seconds": _round(self.rto),
                "last_restore_seconds": _round(self.restore_duration),
            },
            "last_success": _iso(self.last_success),
            "last_success_age_seconds": _age(self.now, self.last_success),
            "last_run": None if self.last_run is None else self.last_run.to_dict(),
            "running_since": _iso(self.running_since),
            "last_error": self.last_error,
            "last_error_time": _iso(self.last_error_time),
            "next_run": _iso(self.next_run),
            "last_verified": _iso(self.last_verified),
            "newest_snapshot": self.newest_snapshot,
            "score": self.score.to_dict(),
            "repositories": [r.to_dict(self.now) for r in self.repositories],
        }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(now - t, 3)


# --- storage identity -----------------------------------------------------------------

# Directories under which each child is usually a separate mount (removable disks).
_MOUNT_PARENTS = (("mnt",), ("media",), ("Volumes",), ("run", "media"))


def backend_identity(url: str) -> str:
    """Which storage a repository URL lives on, for the "2 different backends" count.

    * S3: the endpoint host (``aws`` without one) and the bucket:
      ``s3:127.0.0.1:8333/bucket``. Prefixes in one bucket are one backend.
    * SFTP: the host: ``sftp:backup.example.com``.
    * local paths and ``file://``: the path root, i.e. its first component, or
      the first below ``/mnt``, ``/media``, ``/Volumes``, or the second below
      ``/run/media`` (one per removable disk): ``local:/srv``, ``local:/mnt/usb``.
      Without ``os.stat`` this is a guess; callers that can stat pass
      ``RepoInput.medium`` instead.
    * anything else: scheme and host.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower() if "://" in url or url.startswith("file:") else ""
    if scheme in ("", "file"):
        path = unquote(parts.path) if scheme else url
        return "local:" + _path_root(path)
    if scheme == "s3":
        query = dict(parse_qsl(parts.query))
        endpoint = query.get("endpoint") or query.get("endpoint_url") or ""
        host = urlsplit(endpoint).netloc.lower() if endpoint else "aws"
        return f"s3:{host}/{parts.hostname or ''}"
    if scheme == "sftp":
        return f"sftp:{(parts.hostname or '').lower()}"
    if scheme == "memory":
        return "memory:" + url
    return f"{scheme}:{(parts.hostname or '').lower()}"


def _path_root(path: str) -> str:
    if not path.startswith("/"):
        return "(relative)"
    components = [c for c in path.split("/") if c and c != "."]
    for parent in _MOUNT_PARENTS:
        n = len(parent)
        if tuple(components[:n]) == parent:
            depth = n + 2 if parent == ("run", "media") else n + 1  # /run/media/USER/DISK
            return "/" + "/".join(components[:depth])
    return "/" + "/".join(components[:1])


# --- the computation ------------------------------------------------------------------


def origin(snap: Snapshot) -> str | None:
    """The ID a snapshot and all its copies share."""
    return snap.original or snap.id


def _presence(snaps: Sequence[Snapshot]) -> dict[str, float]:
    """origin -> snapshot time (seconds) for the snapshots of one repository."""
    out: dict[str, float] = {}
    for snap in snaps:
        key = origin(snap)
        if key is not None:
            out[key] = max(out.get(key, float("-inf")), snap.time_ns / 1e9)
    return out


def score_321(copies: int, backends: int, offsite: int) -> Score:
    """The 3-2-1 verdict: met with 2+ repository copies (plus the live data = 3),
    on 2+ distinct backends, with 1+ offsite."""
    met = copies >= 2 and backends >= 2 and offsite >= 1
    if copies == 0:
        return Score(0, 0, 0, False, "no copies")
    detail = (
        f"{copies} {'copy' if copies == 1 else 'copies'}, "
        f"{backends} {'backend' if backends == 1 else 'backends'}, "
        f"{offsite if offsite else 'no'} offsite"
    )
    return Score(copies, backends, offsite, met, f"3-2-1 met ({detail})" if met else detail)


def job_status(inp: JobStatusInput) -> JobStatus:
    """Compute the status of one job. Pure: no I/O, no clock (``inp.now``)."""
    if not inp.repositories:
        raise ValueError(f"job {inp.job} has no repositories")
    now = inp.now
    problems: list[Problem] = []

    def warn(code: str, message: str) -> None:
        problems.append(Problem(State.WARNING, code, message))

    def critical(code: str, message: str) -> None:
        problems.append(Problem(State.CRITICAL, code, message))

    # Presence of each origin in each reachable repository.
    presence: list[dict[str, float] | None] = []
    for repo in inp.repositories:
        presence.append(None if repo.snapshots is None else _presence(repo.snapshots))
        if repo.snapshots is None:
            critical("repository_unreachable",
                     f"repository {repo.name} could not be read: {repo.error or 'unknown error'}")
    reachable = [p for p in presence if p is not None]
    times: dict[str, float] = {}
    for seen in reachable:
        for key, t in seen.items():
            times[key] = max(times.get(key, float("-inf")), t)

    # RPO snapshot: newest origin present in every repository. With a repository
    # unreachable its presence there cannot be shown, so the age is unknown.
    rpo_snapshot: str | None = None
    rpo_age: float | None = None
    if len(reachable) == len(presence):
        common = set(times)
        for seen in reachable:
            common &= seen.keys()
        if common:
            rpo_snapshot = max(common, key=lambda k: (times[k], k))
            rpo_age = now - times[rpo_snapshot]

    newest = max(times, key=lambda k: (times[k], k)) if times else None
    if newest is not None and times[newest] - now > CLOCK_SKEW_TOLERANCE:
        warn("clock_skew", f"the newest snapshot is {_dur(times[newest] - now)} in the future: "
             "check the clocks of this machine and of the backup host")

    # Repositories and the 3-2-1 score of the newest snapshot.
    repos: list[RepoStatus] = []
    holders: list[RepoInput] = []
    for i, (repo, p) in enumerate(zip(inp.repositories, presence, strict=True)):
        latest = max(p, key=lambda k: (p[k], k)) if p else None
        holds = newest is not None and p is not None and newest in p
        if holds:
            holders.append(repo)
        repos.append(RepoStatus(
            name=repo.name,
            url=redact_url(repo.url),
            primary=i == 0,
            offsite=repo.offsite,
            backend=repo.medium or backend_identity(repo.url),
            reachable=p is not None,
            error=repo.error if p is None else None,
            snapshots=None if repo.snapshots is None else len(repo.snapshots),
            latest_id=latest,
            latest_time=None if (p is None or latest is None) else p[latest],
            holds_newest=holds,
            last_verified=repo.last_verified,
        ))
    backends = {r.backend for r in repos if r.holds_newest}
    score = score_321(len(holders), len(backends), sum(1 for r in holders if r.offsite))

    # RPO verdict.
    if inp.rpo is not None and len(reachable) == len(presence):
        if rpo_age is None:
            critical("no_complete_snapshot", "no snapshot is present in every repository")
        elif rpo_age > inp.rpo:
            critical("rpo_breached",
                     f"RPO breached: the newest snapshot in every repository is "
                     f"{_dur(rpo_age)} old (objective {_dur(inp.rpo)})")
        elif rpo_age > inp.rpo * inp.rpo_warning_ratio:
            warn("rpo_near",
                 f"{rpo_age / inp.rpo:.0%} of the RPO used: the newest snapshot in every "
                 f"repository is {_dur(rpo_age)} old (objective {_dur(inp.rpo)})")
    elif inp.rpo is None and not times and len(reachable) == len(presence):
        warn("no_snapshot", "the job has no snapshot yet")

    # Runs.
    runs = sorted(inp.runs, key=lambda r: (r.started, r.id or 0), reverse=True)
    finished = [r for r in runs if r.outcome is not None]
    running = [r for r in runs if r.outcome is None and r.ended is None]
    last = finished[0] if finished else None
    good = [r for r in finished if r.outcome in GOOD_OUTCOMES]
    last_success = max((r.ended if r.ended is not None else r.started for r in good),
                       default=None)
    errored = [r for r in runs if r.error]
    last_error = errored[0].error if errored else None
    last_error_time = None
    if errored:
        last_error_time = errored[0].ended if errored[0].ended is not None else errored[0].started
    if last is not None:
        if last.outcome == "failure":
            critical("last_run_failed", f"the last run failed: {last.error or 'unknown error'}")
        elif last.outcome == "warning":
            count = len(last.warnings)
            what = f"{count} warning{'s' if count != 1 else ''}" if count else "warnings"
            warn("last_run_warning", f"the last run finished with {what}")
        elif last.outcome == "interrupted":
            warn("last_run_interrupted", "the last run was interrupted")

    # Offsite.
    if not any(r.offsite for r in inp.repositories):
        warn("no_offsite_repository", "the job has no offsite repository")
    elif newest is not None and score.offsite == 0:
        warn("no_offsite_copy", "the newest snapshot has no offsite copy yet")

    # Verification.
    for repo in inp.repositories:
        if repo.last_verified is None:
            warn("never_verified", f"the data in repository {repo.name} was never verified")
        elif inp.verify_max_age is not None and now - repo.last_verified > inp.verify_max_age:
            warn("verification_old",
                 f"the data in repository {repo.name} was last verified "
                 f"{_dur(now - repo.last_verified)} ago (limit {_dur(inp.verify_max_age)})")
    verified = [r.last_verified for r in inp.repositories]
    last_verified = None if any(v is None for v in verified) else min(
        v for v in verified if v is not None)

    # RTO.
    if inp.rto is not None and inp.restore_duration is not None \
            and inp.restore_duration > inp.rto:
        warn("rto_exceeded", f"the last measured restore took {_dur(inp.restore_duration)}, "
             f"more than the RTO of {_dur(inp.rto)}")

    problems.sort(key=lambda p: -_SEVERITY[p.level])
    return JobStatus(
        job=inp.job,
        now=now,
        state=worst(p.level for p in problems),
        problems=tuple(problems),
        rpo=inp.rpo,
        rpo_age=rpo_age,
        rpo_snapshot=rpo_snapshot,
        rto=inp.rto,
        restore_duration=inp.restore_duration,
        last_success=last_success,
        last_run=None if last is None else RunSummary(
            started=last.started, ended=last.ended, outcome=last.outcome,
            duration=last.duration, bytes_added=last.bytes_added, error=last.error),
        running_since=running[0].started if running else None,
        last_error=last_error,
        last_error_time=last_error_time,
        next_run=inp.next_run,
        last_verified=last_verified,
        newest_snapshot=newest,
        score=score,
        repositories=tuple(repos),
    )


# --- combining and rendering ----------------------------------------------------------


def overall(statuses: Iterable[JobStatus]) -> State:
    """The state of several jobs: the worst one (ok for none)."""
    return worst(s.state for s in statuses)


def report_dict(statuses: Sequence[JobStatus], *, now: float) -> dict[str, Any]:
    """The whole ``status --json`` document: overall state, exit code, jobs."""
    state = overall(statuses)
    return {
        "state": state.value,
        "exit_code": state.exit_code,
        "time": _iso(now),
        "jobs": [s.to_dict() for s in statuses],
    }


def _dur(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d4h``: short and readable."""
    s = round(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _when(t: float | None, now: float, tz: tzinfo) -> str:
    if t is None:
        return "never"
    stamp = datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    delta = now - t
    rel = f"{_dur(delta)} ago" if delta >= 0 else f"in {_dur(-delta)}"
    return f"{stamp} ({rel})"


def render_text(statuses: Sequence[JobStatus], *, tz: tzinfo | None = None) -> str:
    """Human-readable status of ``statuses`` (times in ``tz``, UTC by default)."""
    zone = tz or UTC
    blocks = []
    for s in statuses:
        lines = [f"job {s.job}: {s.state.value.upper()}"]
        if s.rpo_age is None:
            rpo = "unknown (no snapshot present in every repository)"
        else:
            rpo = f"{_dur(s.rpo_age)} old"
            if s.rpo is not None:
                rpo += f" (objective {_dur(s.rpo)}, {s.rpo_used or 0:.0%} used)"
            rpo += f", snapshot {(s.rpo_snapshot or '')[:8]}"
        lines.append(f"  RPO age       {rpo}")
        if s.rto is not None:
            measured = "never measured" if s.restore_duration is None else (
                f"last restore took {_dur(s.restore_duration)}")
            lines.append(f"  RTO           {_dur(s.rto)} ({measured})")
        lines.append(f"  last success  {_when(s.last_success, s.now, zone)}")
        if s.last_run is not None:
            run = s.last_run
            took = "" if run.duration is None else f", took {_dur(run.duration)}"
            lines.append(f"  last run      {run.outcome} {_when(run.ended or run.started, s.now, zone)}"
                         f"{took}")
        if s.running_since is not None:
            lines.append(f"  running since {_when(s.running_since, s.now, zone)}")
        if s.last_error is not None:
            lines.append(f"  last error    {_when(s.last_error_time, s.now, zone)}: {s.last_error}")
        lines.append(f"  next run      "
                     f"{_when(s.next_run, s.now, zone) if s.next_run else 'not scheduled'}")
        lines.append(f"  verified      {_when(s.last_verified, s.now, zone)}")
        lines.append(f"  3-2-1         {s.score.text}")
        lines.append("  repositories:")
        name_w = max(len(r.name) for r in s.repositories)
        for r in s.repositories:
            role = "primary" if r.primary else "copy"
            where = "offsite" if r.offsite else "onsite"
            if not r.reachable:
                state = f"UNREACHABLE: {r.error or 'unknown error'}"
            else:
                latest = "none" if r.latest_time is None else _when(r.latest_time, s.now, zone)
                state = f"{r.snapshots} snapshots, latest {latest}"
                if not r.holds_newest:
                    state += ", missing the newest"
            lines.append(f"    {r.name:<{name_w}}  {role:<7}  {where:<7}  {r.url}  {state}")
        if s.problems:
            lines.append("  problems:")
            lines.extend(f"    {p.level.value.upper()}: {p.message}" for p in s.problems)
        blocks.append("\n".join(lines))
    state = overall(statuses)
    blocks.append(f"overall: {state.value.upper()}")
    return "\n\n".join(blocks)


__all__ = [
    "DEFAULT_RPO_WARNING_RATIO", "DEFAULT_VERIFY_MAX_AGE", "JobStatus", "JobStatusInput",
    "Problem", "RepoInput", "RepoStatus", "RunRecord", "RunSummary", "Score", "State",
    "backend_identity", "job_status", "origin", "overall", "render_text", "report_dict",
    "score_321", "worst",
]
