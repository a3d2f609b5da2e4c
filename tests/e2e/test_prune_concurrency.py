"""Backups and prunes interleaved in separate processes, some killed with SIGKILL.

Each round starts three backup processes and one forget+prune process (with a
tiny grace period) on one local repository, and kills some of them at random
moments. At the end ``check --read-data`` finds nothing wrong, and every
snapshot a backup reported as saved -- unless a prune announced it was
forgetting it -- restores bit-exact.

``PRUNE_STRESS_SEED=<n>`` picks another schedule (run it in a loop to hunt
races); ``PRUNE_DEBUG_DIR=<dir>`` makes the workers log every write with a
timestamp and keep a copy of every pack they delete (``prune_workers.py``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resurgo.backend.local import LocalBackend
from resurgo.ops.check import check_repository
from resurgo.ops.prune import PruneOptions, prune
from resurgo.ops.restore import restore_snapshot
from resurgo.repo import KDFParams, RepoParams, Repository
from resurgo.repo.sessions import SessionSettings
from resurgo.snapshot.store import list_snapshots

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
WORKERS = HERE / "prune_workers.py"
PASSWORD = "concurrency"  # as in prune_workers.py
ROUNDS = 8
SESSIONS = SessionSettings(heartbeat_interval=0.25, stale_timeout=4.0)

sys.path.insert(0, str(HERE))
from prune_workers import file_content  # noqa: E402


def spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def events(out: str) -> list[dict[str, object]]:
    found = []
    for line in out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by SIGKILL
    return found


@pytest.mark.slow
def test_backups_and_prunes_in_separate_processes_never_lose_a_reported_snapshot(tmp_path):
    repo_dir = tmp_path / "repo"
    work = tmp_path / "work"
    Repository.init(LocalBackend(repo_dir), PASSWORD, params=RepoParams.tiny_for_tests(),
                    kdf=KDFParams.weak_for_tests()).close()
    rng = random.Random(int(os.environ.get("PRUNE_STRESS_SEED", "20261125")))
    reported: dict[str, dict[str, object]] = {}  # snapshot ID -> {"src", "files"}
    forgotten: set[str] = set()
    killed = failed = pruned = rescued = deleted = 0
    for round_ in range(ROUNDS):
        procs: list[tuple[str, subprocess.Popen[str], float | None]] = []
        # The prune goes first; backups start while it marks and sweeps.
        p = spawn("prune", str(repo_dir), str(rng.randrange(1 << 30)))
        procs.append(("prune", p, rng.uniform(0.3, 3.0) if rng.random() < 0.25 else None))
        for w in range(3):
            time.sleep(rng.uniform(0.0, 0.5))
            p = spawn("backup", str(repo_dir), str(work), str(w), str(round_),
                      str(rng.randrange(1 << 30)))
            procs.append(("backup", p, rng.uniform(0.3, 2.5) if rng.random() < 0.3 else None))
        start = time.monotonic()
        pending = list(procs)
        while pending:
            now = time.monotonic() - start
            for item in list(pending):
                kind, proc, kill_at = item
                if proc.poll() is not None:
                    pending.remove(item)
                elif kill_at is not None and now >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed += 1
                    pending.remove(item)
            assert now < 120, "a worker hangs"
            time.sleep(0.02)
        for kind, proc, _ in procs:
            out, err = proc.communicate()
            evs = events(out)
            for e in evs:
                if e["event"] == "forgetting":
                    forgotten.add(str(e["id"]))
                elif e["event"] == "pruned":
                    pruned += 1
                    rescued += int(e["rescued"])  # type: ignore[call-overload]
                    deleted += int(e["deleted"])  # type: ignore[call-overload]
            if proc.returncode == 0 and kind == "backup":
                snap = [e for e in evs if e["event"] == "snapshot"]
                assert snap, err
                reported[str(snap[0]["id"])] = snap[0]
            elif proc.returncode not in (0, -signal.SIGKILL):
                failed += 1
                # Refusing is allowed (a lost session, a held lock); losing data is not.
                assert "SessionLost" in err or "RepositoryLocked" in err, err

    assert len(reported) >= ROUNDS, (len(reported), killed, failed)
    assert pruned >= 2 and deleted > 0

    # Let every session and lock of the killed processes go stale, then clean up.
    time.sleep(SESSIONS.stale_timeout + 0.5)
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD, sessions=SESSIONS)
    prune(repo, PruneOptions(grace=0, clock_skew=0, lock=SESSIONS))
    repo.close()

    repo = Repository.open(LocalBackend(repo_dir), PASSWORD)
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    present = {s.id: s for s in list_snapshots(repo)}
    survivors = [sid for sid in reported if sid not in forgotten]
    assert survivors
    for sid in survivors:
        assert sid in present, f"reported snapshot {sid[:8]} vanished without a forget"
        target = tmp_path / "restore" / sid
        target.mkdir(parents=True)
        restore_snapshot(repo, present[sid], target)
        info = reported[sid]
        src = target / str(info["src"]).lstrip("/")
        files = info["files"]
        assert isinstance(files, dict)
        assert sorted(p.name for p in src.iterdir()) == sorted(files)
        for name, k in files.items():
            assert (src / name).read_bytes() == file_content(int(k)), (sid, name)
    print(f"rounds={ROUNDS} snapshots={len(reported)} survivors={len(survivors)} "
          f"killed={killed} refused={failed} prunes={pruned} packs_deleted={deleted} "
          f"rescued={rescued}")
