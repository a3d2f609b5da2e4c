"""A writer that dies between uploading packs and writing their index.

The packs it left behind are *unused*: check reports them, but not as damage,
and the next writer stores the same data again and checks clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import resurgo
from resurgo.backend import Backend
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import InjectedFault
from resurgo.repo import BlobType, Repository
from resurgo.repo.verify import CheckReport, check_index_objects, check_structure, read_data

from .helpers import PASSWORD, FailPutsUnder, blobs_of, keys_under, new_repo, save_all


def full_check(backend: Backend) -> CheckReport:
    repo = Repository.open(backend, PASSWORD)
    report = CheckReport()
    check_structure(repo, report)
    check_index_objects(repo, report)
    read_data(repo, report)
    return report


def next_writer_stores_the_same_data(backend: Backend, data: list[bytes], orphans: set[str]) -> None:
    repo = Repository.open(backend, PASSWORD)
    results = [repo.save_blob(BlobType.DATA, d) for d in data]
    assert all(added for _, added in results)  # nothing was indexed: all re-uploaded
    repo.flush()
    report = full_check(backend)
    assert report.ok, report.problems
    assert set(report.unused_packs) == {k.rsplit("/", 1)[-1] for k in orphans}
    again = Repository.open(backend, PASSWORD)
    for (bid, _), d in zip(results, data, strict=True):
        assert again.load_blob(BlobType.DATA, bid) == d


def test_writer_failing_to_write_its_index_leaves_unused_packs_not_damage() -> None:
    inner = MemoryBackend()
    new_repo(inner)
    dying = FailPutsUnder(inner, "index/")
    writer = Repository.open(dying, PASSWORD)
    writer.index_every_packs = 10**6  # only flush() writes the index: it fails there
    data = blobs_of(30, 150)  # ~5 packs
    save_all(writer, data)
    with pytest.raises(InjectedFault):
        writer.flush()
    orphans = set(keys_under(inner, "data/"))
    assert len(orphans) >= 3
    assert keys_under(inner, "index/") == []
    assert dying.failed

    report = full_check(inner)
    assert report.ok, report.problems
    assert set(report.unused_packs) == {k.rsplit("/", 1)[-1] for k in orphans}
    assert report.packs_read == len(orphans)  # --read-data still verifies them

    next_writer_stores_the_same_data(inner, data, orphans)


def test_failed_pack_upload_does_not_leave_blobs_marked_as_stored() -> None:
    inner = MemoryBackend()
    new_repo(inner)
    writer = Repository.open(FailPutsUnder(inner, "data/"), PASSWORD)
    data = blobs_of(31, 10)
    save_all(writer, data)
    with pytest.raises(InjectedFault):
        writer.flush()
    # The same writer object, once storage works again, must really store them.
    writer.backend = inner
    results = [writer.save_blob(BlobType.DATA, d) for d in data]
    assert all(added for _, added in results)
    writer.flush()
    again = Repository.open(inner, PASSWORD)
    assert [again.load_blob(BlobType.DATA, bid) for bid, _ in results] == data


_WRITER = """
import random, sys, time
from resurgo.backend.local import LocalBackend
from resurgo.repo import BlobType, Repository

root, password, mode, seed, count = sys.argv[1:6]
repo = Repository.open(LocalBackend(root), password)
r = random.Random(int(seed))
if mode == "packs-then-wait":
    repo.index_every_packs = 10**6  # upload packs, index nothing until flush

def blob():
    return r.randbytes(r.randrange(1500, 3000))  # as tests/repo/helpers.blobs_of

if mode == "packs-then-wait":
    for _ in range(int(count)):
        repo.save_blob(BlobType.DATA, blob())
    print("packs uploaded", flush=True)
    time.sleep(120)
else:
    n = 0
    while True:
        repo.save_blob(BlobType.DATA, blob())
        n += 1
        if n % 40 == 0:
            repo.flush()
"""


def _spawn(root: Path, mode: str, seed: int, count: int = 0) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(resurgo.__file__).resolve().parents[1])
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), PASSWORD, mode, str(seed), str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_process_killed_after_uploading_packs_leaves_a_repository_that_checks_clean(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    new_repo(LocalBackend(root))
    proc = _spawn(root, "packs-then-wait", seed=32, count=150)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "packs uploaded\n", proc.stderr.read() if proc.stderr else ""
    finally:
        _kill(proc)

    backend = LocalBackend(root)
    orphans = set(keys_under(backend, "data/"))
    assert len(orphans) >= 3
    assert keys_under(backend, "index/") == []
    report = full_check(backend)
    assert report.ok, report.problems
    assert set(report.unused_packs) == {k.rsplit("/", 1)[-1] for k in orphans}

    next_writer_stores_the_same_data(backend, blobs_of(32, 150), orphans)


def test_process_killed_at_any_moment_while_writing_leaves_no_damage(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    new_repo(LocalBackend(root))
    proc = _spawn(root, "loop", seed=33)
    try:
        deadline = time.monotonic() + 30
        while len(keys_under(LocalBackend(root), "index/")) < 3:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
    finally:
        _kill(proc)

    backend = LocalBackend(root)
    report = full_check(backend)
    assert report.ok, report.problems
    # Whatever was indexed is complete; what was not is merely unused.
    repo = Repository.open(backend, PASSWORD)
    assert len(repo.index) >= 3 * 40
    writer = Repository.open(backend, PASSWORD)
    save_all(writer, blobs_of(34, 60))
    writer.flush()
    assert full_check(backend).ok
