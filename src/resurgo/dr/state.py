"""The state database: what happened to each job, kept across restarts (SQLite).

Vocabulary: a *run* is one execution of a job (its row is inserted when it
starts and completed when it ends, so a crash leaves a row with no end); its
*outcome* is ``success``, ``warning`` (a snapshot was written, some files could
not be read), ``failure`` or ``interrupted`` (the process died or was stopped
mid-run); its *trigger* is ``schedule``, ``manual``, ``catch-up`` or ``retry``
and its *attempt* counts 1 for a first try and up for retries. A
*verification* is a check or restore drill of a repository; a *notification*
is one message sent (or not) to one target. The *first-seen* time of a job is
when a scheduler first saw it: a job that never ran anchors its schedule there.

A *job lock* is an ``flock`` on ``<db>.locks/<job>.lock``, held for the whole
run by whichever process runs the job (daemon or ``resurgo run``). The kernel
drops it when the process dies, so it can never go stale, and it works between
processes and between threads of one process (each holder opens its own file
description). A run row without an end is *live* only while its job lock is
held (and, for a row written on this host, its pid exists); ``recover`` marks
the others ``interrupted``.

Durability: WAL journal, ``synchronous=FULL``, a busy timeout so concurrent
processes wait for each other instead of failing, and one connection per
``StateDB`` guarded by a lock (thread-safe). The schema is versioned in
``schema_version``; ``MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1`` inside
one transaction, so a database is always at exactly one known version. A
database from a newer resurgo is refused rather than misread.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resurgo.errors import ResurgoError, UsageError
from resurgo.repo.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "MIGRATIONS",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "SUCCESSFUL",
    "TRIGGERS",
    "JobBusy",
    "JobLock",
    "NotificationRecord",
    "RunRecord",
    "StateDB",
    "StateError",
    "VerificationRecord",
]

OUTCOMES = ("success", "warning", "failure", "interrupted")
SUCCESSFUL = ("success", "warning")  # a snapshot was written
TRIGGERS = ("schedule", "manual", "catch-up", "retry")
BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the initial schema.
    (
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            outcome TEXT,
            trigger TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            snapshot_ids TEXT NOT NULL DEFAULT '{}',
            bytes_added INTEGER NOT NULL DEFAULT 0,
            files INTEGER NOT NULL DEFAULT 0,
            warnings TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            pid INTEGER,
            host TEXT
        )""",
        "CREATE INDEX runs_job_started ON runs (job, started)",
        """CREATE TABLE verifications (
            repo TEXT NOT NULL,
            time REAL NOT NULL,
            ok INTEGER NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX verifications_repo_time ON verifications (repo, time)",
        """CREATE TABLE notifications (
            time REAL NOT NULL,
            job TEXT,
            event TEXT NOT NULL,
            target TEXT NOT NULL,
            ok INTEGER NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX notifications_job_time ON notifications (job, time)",
        """CREATE TABLE jobs (
            job TEXT PRIMARY KEY,
            first_seen REAL NOT NULL
        )""",
        """CREATE TABLE maintenance (
            job TEXT NOT NULL,
            repo TEXT NOT NULL,
            kind TEXT NOT NULL,
            time REAL NOT NULL,
            ok INTEGER NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX maintenance_job_repo ON maintenance (job, repo, kind, time)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateError(ResurgoError):
    """The state database cannot be opened, is damaged, or is from a newer resurgo."""


class JobBusy(ResurgoError):
    """Another run of the job holds its lock (in this process or another one)."""


@dataclass(frozen=True)
class RunRecord:
    id: int
    job: str
    started: float
    ended: float | None
    outcome: str | None
    trigger: str
    attempt: int
    snapshot_ids: dict[str, str] = field(default_factory=dict)
    bytes_added: int = 0
    files: int = 0
    warnings: list[Any] = field(default_factory=list)
    error: str | None = None
    pid: int | None = None
    host: str | None = None

    @property
    def finished(self) -> bool:
        return self.ended is not None and self.outcome is not None

    @property
    def successful(self) -> bool:
        return self.outcome in SUCCESSFUL


@dataclass(frozen=True)
class VerificationRecord:
    repo: str
    time: float
    ok: bool
    kind: str
    detail: str


@dataclass(frozen=True)
class NotificationRecord:
    time: float
    job: str | None
    event: str
    target: str
    ok: bool
    detail: str


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class JobLock:
    """A held job lock; ``release`` (or the end of the process) frees it."""

    def __init__(self, job: str, path: Path, fd: int) -> None:
        self.job = job
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class StateDB:
    """The state database at ``path`` (created with its directory when missing).

    ``clock`` supplies default times (a fake clock in tests). ``recover``:
    mark runs left without an end by dead processes ``interrupted`` on open.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        recover: bool = True,
        host: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.host = host or socket.gethostname()
        self.lock_dir = self.path.with_name(self.path.name + ".locks")
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open the state database {self.path}: {e}")
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(f"the state database {self.path} cannot use WAL mode ({mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StateError(f"the state database {self.path} is unusable: {e}")
        except BaseException:
            self._db.close()
            raise
        if recover:
            self.recover()

    # -- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    @property
    def schema_version(self) -> int:
        rows = self._query("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state database {self.path} has schema version {version}, newer than "
                    f"this resurgo understands ({SCHEMA_VERSION}): upgrade resurgo"
                )
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    db.execute(sql)
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def check_writable(self) -> None:
        """Raise ``StateError`` unless a write transaction can be taken (nothing is written)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise StateError(f"the state database {self.path} is not writable: {e}")

    # -- job locks -------------------------------------------------------------------------

    def _lock_path(self, job: str) -> Path:
        # Job names are plain in a valid plan; escape anyway so a name can never
        # point outside the lock directory.
        return self.lock_dir / (_SAFE_NAME.sub("_", job) + ".lock")

    def try_lock_job(self, job: str) -> JobLock | None:
        """The job's lock, or None when another run holds it. Never blocks."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        path = self._lock_path(job)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return JobLock(job, path, fd)

    def lock_job(self, job: str) -> JobLock:
        """The job's lock; ``JobBusy`` when another run of the job holds it."""
        lock = self.try_lock_job(job)
        if lock is None:
            raise JobBusy(f"job {job!r} is already running")
        return lock

    def job_locked(self, job: str) -> bool:
        """Whether some run (any process) holds the job's lock right now."""
        if not self._lock_path(job).exists():
            return False
        lock = self.try_lock_job(job)
        if lock is None:
            return True
        lock.release()
        return False

    # -- runs ---------------------------------------------------------------------------------

    def start_run(
        self,
        job: str,
        trigger: str,
        attempt: int = 1,
        *,
        started: float | None = None,
        pid: int | None = None,
    ) -> int:
        """Insert a run row with no end; returns its id. Take the job lock first."""
        if trigger not in TRIGGERS:
            raise UsageError(f"unknown run trigger {trigger!r}")
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO runs (job, started, trigger, attempt, pid, host) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job,
                    self.clock.time() if started is None else started,
                    trigger,
                    attempt,
                    os.getpid() if pid is None else pid,
                    self.host,
                ),
            )
            return int(cur.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        *,
        ended: float | None = None,
        snapshot_ids: dict[str, str] | None = None,
        bytes_added: int = 0,
        files: int = 0,
        warnings: Iterable[Any] = (),
        error: str | None = None,
    ) -> None:
        """Complete the run row ``run_id`` with its outcome and results."""
        if outcome not in OUTCOMES:
            raise UsageError(f"unknown run outcome {outcome!r}")
        with self._write() as db:
            cur = db.execute(
                "UPDATE runs SET ended = ?, outcome = ?, snapshot_ids = ?, bytes_added = ?, "
                "files = ?, warnings = ?, error = ? WHERE id = ?",
                (
                    self.clock.time() if ended is None else ended,
                    outcome,
                    json.dumps(snapshot_ids or {}, sort_keys=True),
                    int(bytes_added),
                    int(files),
                    json.dumps(list(warnings), default=str),
                    error,
                    run_id,
                ),
            )
            if cur.rowcount != 1:
                raise StateError(f"no run with id {run_id}")

    _RUN_COLUMNS = (
        "id, job, started, ended, outcome, trigger, attempt, snapshot_ids, bytes_added, files, "
        "warnings, error, pid, host"
    )

    @staticmethod
    def _run(row: tuple[Any, ...]) -> RunRecord:
        return RunRecord(
            id=row[0], job=row[1], started=row[2], ended=row[3], outcome=row[4], trigger=row[5],
            attempt=row[6], snapshot_ids=json.loads(row[7] or "{}"), bytes_added=row[8],
            files=row[9], warnings=json.loads(row[10] or "[]"), error=row[11], pid=row[12],
            host=row[13],
        )

    def run(self, run_id: int) -> RunRecord | None:
        rows = self._query(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def last_runs(self, job: str, n: int = 10) -> list[RunRecord]:
        """The ``n`` most recent runs of ``job``, newest first."""
        rows = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY started DESC, id DESC "
            "LIMIT ?",
            (job, n),
        )
        return [self._run(r) for r in rows]

    def last_run(self, job: str) -> RunRecord | None:
        runs = self.last_runs(job, 1)
        return runs[0] if runs else None

    def last_finished(self, job: str) -> RunRecord | None:
        rows = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE job = ? AND ended IS NOT NULL "
            "ORDER BY started DESC, id DESC LIMIT 1",
            (job,),
        )
        return self._run(rows[0]) if rows else None

    def last_success(self, job: str) -> RunRecord | None:
        """The newest run of ``job`` that wrote a snapshot (outcome success or warning)."""
        rows = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE job = ? AND outcome IN (?, ?) "
            "ORDER BY started DESC, id DESC LIMIT 1",
            (job, *SUCCESSFUL),
        )
        return self._run(rows[0]) if rows else None

    def run_counts(self, job: str) -> dict[str, int]:
        """Finished runs of ``job`` by outcome; every outcome of ``OUTCOMES`` is present (0 if none)."""
        rows = self._query(
            "SELECT outcome, COUNT(*) FROM runs WHERE job = ? AND outcome IS NOT NULL "
            "GROUP BY outcome",
            (job,),
        )
        counts = dict.fromkeys(OUTCOMES, 0)
        counts.update({str(r[0]): int(r[1]) for r in rows})
        return counts

    def runs_between(self, start: float, end: float, job: str | None = None) -> list[RunRecord]:
        """Runs that started in ``[start, end)``, oldest first (all jobs unless ``job``)."""
        sql = f"SELECT {self._RUN_COLUMNS} FROM runs WHERE started >= ? AND started < ?"
        params: list[Any] = [start, end]
        if job is not None:
            sql += " AND job = ?"
            params.append(job)
        return [self._run(r) for r in self._query(sql + " ORDER BY started, id", params)]

    def jobs(self) -> list[str]:
        """Every job name with a run or a first-seen time, sorted."""
        rows = self._query("SELECT job FROM runs UNION SELECT job FROM jobs ORDER BY job")
        return [r[0] for r in rows]

    def _is_live(self, run: RunRecord) -> bool:
        # The lock files sit next to the database, so "nobody holds the job's
        # lock" means dead whatever host name the row carries (the host may
        # have been renamed); the pid is only meaningful on the same host.
        if run.host == self.host and (run.pid is None or not _pid_alive(run.pid)):
            return False
        return self.job_locked(run.job)

    def running(self, job: str) -> RunRecord | None:
        """The live run of ``job`` (no end, its process alive and holding the job lock), if any.

        Dead unfinished runs found on the way are marked ``interrupted``.
        """
        rows = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE job = ? AND ended IS NULL "
            "ORDER BY started DESC, id DESC",
            (job,),
        )
        live: RunRecord | None = None
        for run in map(self._run, rows):
            if self._is_live(run):
                live = live or run
            else:
                self._interrupt(run)
        return live

    def recover(self) -> list[RunRecord]:
        """Mark every dead unfinished run of this host ``interrupted``; returns them as they were."""
        rows = self._query(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE ended IS NULL")
        dead = [run for run in map(self._run, rows) if not self._is_live(run)]
        for run in dead:
            self._interrupt(run)
        return dead

    def _interrupt(self, run: RunRecord) -> None:
        with self._write() as db:
            # "ended IS NULL" again: the run may have finished since we looked.
            db.execute(
                "UPDATE runs SET ended = ?, outcome = 'interrupted', error = COALESCE(error, ?) "
                "WHERE id = ? AND ended IS NULL",
                (
                    max(self.clock.time(), run.started),
                    "the process running this job ended before the run finished",
                    run.id,
                ),
            )

    # -- scheduling anchors -----------------------------------------------------------------

    def first_seen(self, job: str, now: float | None = None, *, record: bool = True) -> float:
        """When a scheduler first saw ``job``: recorded as ``now`` if never (unless not ``record``)."""
        t = self.clock.time() if now is None else now
        if not record:
            rows = self._query("SELECT first_seen FROM jobs WHERE job = ?", (job,))
            return float(rows[0][0]) if rows else t
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO jobs (job, first_seen) VALUES (?, ?)", (job, t))
            row = db.execute("SELECT first_seen FROM jobs WHERE job = ?", (job,)).fetchone()
        return float(row[0])

    def latest_time(self) -> float | None:
        """The latest time recorded anywhere (runs, verifications, notifications)."""
        rows = self._query(
            "SELECT MAX(t) FROM ("
            " SELECT MAX(MAX(started), COALESCE(MAX(ended), 0)) AS t FROM runs"
            " UNION ALL SELECT MAX(time) FROM verifications"
            " UNION ALL SELECT MAX(time) FROM notifications)"
        )
        value = rows[0][0] if rows else None
        return float(value) if value else None

    # -- maintenance ------------------------------------------------------------------------

    def record_maintenance(
        self, job: str, repo: str, kind: str, ok: bool, detail: str = "",
        *, time: float | None = None,
    ) -> None:
        """A ``forget`` or ``prune`` of repository ``repo`` done for ``job``."""
        with self._write() as db:
            db.execute(
                "INSERT INTO maintenance (job, repo, kind, time, ok, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job, repo, kind, self.clock.time() if time is None else time, int(ok), detail),
            )

    def last_maintenance(self, job: str, repo: str, kind: str, *, ok_only: bool = True) -> float | None:
        """When ``kind`` ("forget", "prune") last ran (successfully, by default) for ``job`` in ``repo``."""
        sql = "SELECT MAX(time) FROM maintenance WHERE job = ? AND repo = ? AND kind = ?"
        if ok_only:
            sql += " AND ok = 1"
        rows = self._query(sql, (job, repo, kind))
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- verifications and notifications ----------------------------------------------------

    def record_verification(
        self, repo: str, ok: bool, kind: str, detail: str = "", *, time: float | None = None
    ) -> None:
        """A check or restore drill of repository ``repo`` (``kind``: e.g. "check", "drill")."""
        with self._write() as db:
            db.execute(
                "INSERT INTO verifications (repo, time, ok, kind, detail) VALUES (?, ?, ?, ?, ?)",
                (repo, self.clock.time() if time is None else time, int(ok), kind, detail),
            )

    def last_verification(self, repo: str, *, ok_only: bool = False) -> VerificationRecord | None:
        sql = "SELECT repo, time, ok, kind, detail FROM verifications WHERE repo = ?"
        if ok_only:
            sql += " AND ok = 1"
        rows = self._query(sql + " ORDER BY time DESC, rowid DESC LIMIT 1", (repo,))
        if not rows:
            return None
        r = rows[0]
        return VerificationRecord(r[0], r[1], bool(r[2]), r[3], r[4])

    def record_notification(
        self,
        job: str | None,
        event: str,
        target: str,
        ok: bool,
        detail: str = "",
        *,
        time: float | None = None,
    ) -> None:
        """One notification ``event`` ("failure", "rpo_breach", ...) sent (``ok``) or not to ``target``."""
        with self._write() as db:
            db.execute(
                "INSERT INTO notifications (time, job, event, target, ok, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.clock.time() if time is None else time, job, event, target, int(ok), detail),
            )

    def last_notifications(
        self, job: str | None = None, n: int = 10, *, event: str | None = None
    ) -> list[NotificationRecord]:
        """The ``n`` newest notifications (of ``job`` / ``event`` when given), newest first."""
        sql = "SELECT time, job, event, target, ok, detail FROM notifications WHERE 1 = 1"
        params: list[Any] = []
        if job is not None:
            sql += " AND job = ?"
            params.append(job)
        if event is not None:
            sql += " AND event = ?"
            params.append(event)
        rows = self._query(sql + " ORDER BY time DESC, rowid DESC LIMIT ?", [*params, n])
        return [NotificationRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]
