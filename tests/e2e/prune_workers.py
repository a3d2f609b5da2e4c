"""Worker processes for the prune concurrency test: ``backup`` and ``prune``.

Run as ``python prune_workers.py backup REPO WORK WORKER ROUND SEED`` or
``python prune_workers.py prune REPO SEED``. Each prints JSON lines on stdout,
flushed at once, so that a worker killed with SIGKILL has already told the
test everything it did: a backup prints its snapshot only once saved, a prune
prints each snapshot ID *before* forgetting it.

With ``PRUNE_DEBUG_DIR`` set, every write is logged to ``<dir>/log`` and every
deleted pack is kept in ``<dir>/grave`` (for post-mortems of a failed run).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from resurgo.backend import ObjectInfo
from resurgo.backend.local import LocalBackend
from resurgo.ops.backup import BackupOptions, backup_paths
from resurgo.ops.forget import plan_policy
from resurgo.ops.prune import PruneOptions, prune
from resurgo.ops.retention import RetentionPolicy
from resurgo.repo import Repository
from resurgo.repo.sessions import SessionSettings
from resurgo.snapshot.store import SNAPSHOTS, list_snapshots

PASSWORD = "concurrency"
SESSIONS = SessionSettings(heartbeat_interval=0.25, stale_timeout=4.0)


def file_content(k: int) -> bytes:
    """File number ``k`` of the shared pool: the same bytes in every process."""
    r = random.Random(k)
    return r.randbytes(r.randrange(200, 24_000))


class SlowBackend:
    """Random small delays on every call, to widen the races between processes."""

    def __init__(self, inner: LocalBackend, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng

    @property
    def url(self) -> str:
        return self.inner.url

    def _nap(self) -> None:
        time.sleep(self.rng.random() * 0.02)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._nap()
        return self.inner.get(key, offset, length)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self._nap()
        self.inner.put(key, data, create_only=create_only)
        if not key.startswith(("sessions/", "locks/")):
            _log("put", key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._nap()
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._nap()
        debug = os.environ.get("PRUNE_DEBUG_DIR")
        if debug and key.startswith("data/"):
            try:
                grave = Path(debug) / "grave"
                grave.mkdir(exist_ok=True)
                (grave / key.rsplit("/", 1)[1]).write_bytes(self.inner.get(key))
            except Exception:
                pass
        self.inner.delete(key)
        _log("delete", key)

    def close(self) -> None:
        self.inner.close()


def _log(*parts: object) -> None:
    debug = os.environ.get("PRUNE_DEBUG_DIR")
    if debug:
        with open(Path(debug) / "log", "a") as f:
            f.write(f"{time.time():.4f} {os.getpid()} {ROLE[0]} " + " ".join(map(str, parts)) + "\n")


ROLE = ["?"]


def say(**fields: object) -> None:
    _log("say", json.dumps(fields))
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def backup(repo_dir: str, work: str, worker: int, round_: int, seed: int) -> None:
    rng = random.Random(seed)
    pool = 30 + 8 * round_
    chosen = sorted(rng.sample(range(pool), 12))
    # The same directory every round: its snapshots form one group for forget.
    src = Path(work) / f"src-w{worker}"
    src.mkdir(parents=True, exist_ok=True)
    for old in src.iterdir():
        old.unlink()
    files = {}
    for k in chosen:
        (src / f"file-{k}").write_bytes(file_content(k))
        files[f"file-{k}"] = k
    repo = Repository.open(SlowBackend(LocalBackend(repo_dir), rng), PASSWORD, sessions=SESSIONS)
    say(event="opened", epoch=repo._epoch)
    summary = backup_paths(repo, [src], BackupOptions(hostname=f"worker{worker}"))
    say(event="snapshot", id=summary.snapshot_id, src=str(src), files=files)
    repo.close()


def prune_run(repo_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    repo = Repository.open(SlowBackend(LocalBackend(repo_dir), rng), PASSWORD, sessions=SESSIONS)
    plan = plan_policy(list_snapshots(repo), RetentionPolicy(last=rng.choice([1, 2, 3])))
    for s in plan.remove:
        assert s.id is not None
        say(event="forgetting", id=s.id)
        repo.delete_object(SNAPSHOTS, s.id)
    grace = rng.choice([0.0, 0.3, 0.6])
    opts = PruneOptions(grace=grace, clock_skew=0.0, max_unused=rng.choice([0.05, 0.3, 1.0]),
                        lock=SESSIONS)
    # Mark, then (after the grace period) sweep, while backups come and go.
    for run in range(2):
        from resurgo.progress import RecordingReporter
        rec = RecordingReporter()
        try:
            report = prune(repo, opts, reporter=rec)
        finally:
            for e in rec.events:
                _log("event", e.kind, json.dumps(e.fields, default=str))
        say(event="pruned", run=run, deleted=report.packs_deleted, rescued=report.packs_rescued,
            marked=report.mark_id, waiting=len(report.marks_waiting),
            repacked=report.blobs_repacked, swept=len(report.marks_swept))
        time.sleep(grace + rng.random() * 0.5)
    repo.close()


def main(argv: list[str]) -> int:
    ROLE[0] = argv[0]
    if argv[0] == "backup":
        backup(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif argv[0] == "prune":
        prune_run(argv[1], int(argv[2]))
    else:
        raise SystemExit(f"unknown worker {argv[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
