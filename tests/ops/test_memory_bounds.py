"""Bounded memory in the hot paths: one large file is read at a time.

(Restore's bound -- per thread one decoded large blob, or a batch of small ones -- is tested in test_restore.py.)
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from resurgo.backend.memory import MemoryBackend
from resurgo.ops import backup as backup_mod
from resurgo.ops.backup import backup_paths
from resurgo.ops.restore import restore_snapshot
from resurgo.repo import KDFParams, RepoParams, Repository
from resurgo.snapshot.store import find_snapshot


def new_repo() -> Repository:
    params = RepoParams(pack_size=1 << 20, chunk_min=256, chunk_avg=2048, chunk_max=8192)
    return Repository.init(MemoryBackend(), "pw", params=params, kdf=KDFParams.weak_for_tests())


def test_large_files_are_read_one_at_a_time_and_back_up_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo()
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    contents = {f"big{i}": rng.randbytes(200_000) for i in range(4)}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    monkeypatch.setattr(backup_mod, "PARALLEL_FILE_BYTES", 100_000)
    active = 0
    most = 0
    lock = threading.Lock()
    real = backup_mod._Backup._save_stream
    buffers: set[int] = set()

    def spy(self: backup_mod._Backup, fd: int, file_size: int):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            return real(self, fd, file_size)
        finally:
            buffers.update(id(b) for b in self._tls.stream_bufs if b is not None)
            with lock:
                active -= 1

    monkeypatch.setattr(backup_mod._Backup, "_save_stream", spy)
    s = backup_paths(repo, [src], backup_mod.BackupOptions(read_threads=4))
    assert s.files_new == 4 and not s.warnings
    assert most == 1
    # Every large file streams through the same (at most two) buffers.
    assert 1 <= len(buffers) <= 2
    snap = find_snapshot(repo, s.snapshot_id or "")
    restore_snapshot(repo, snap, tmp_path / "dst", subpath=bytes(src))
    for name, data in contents.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
