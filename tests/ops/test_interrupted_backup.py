"""An interrupted backup indexes what it uploaded, so running it again uploads only the rest."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import resurgo
from resurgo.backend import Backend
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import Interrupted
from resurgo.ops.backup import backup_paths
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.snapshot.model import NodeType
from resurgo.snapshot.store import list_snapshots, walk_tree
from resurgo.testing.forwarding import ForwardingBackend

PASSWORD = "pw"
PACK = 64 << 10


class CountingBackend(ForwardingBackend):
    """Counts puts (and their bytes) of pack objects."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.pack_puts = 0
        self.pack_bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self.inner.put(key, data, create_only=create_only)
        if key.startswith("data/"):
            with self._lock:
                self.pack_puts += 1
                self.pack_bytes += len(memoryview(data))


def make_source(root: Path, files: int = 40, size: int = 24 << 10) -> Path:
    rng = random.Random(5)
    for n in range(files):
        sub = root / f"d{n % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n:03}.bin").write_bytes(rng.randbytes(size))
    return root


def init(backend: Backend) -> None:
    Repository.init(backend, PASSWORD, params=RepoParams.tiny_for_tests(),
                    kdf=KDFParams.weak_for_tests())


def test_rerunning_an_interrupted_backup_uploads_only_what_had_not_landed(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")

    baseline = CountingBackend(MemoryBackend())
    init(baseline)
    backup_paths(Repository.open(baseline, PASSWORD), [src])
    full = baseline.pack_bytes
    assert baseline.pack_puts >= 12

    inner = MemoryBackend()
    init(inner)
    first = CountingBackend(inner)
    repo = Repository.open(first, PASSWORD)
    with pytest.raises(Interrupted):
        backup_paths(repo, [src], should_stop=lambda: first.pack_puts >= 6)
    assert list(inner.list("snapshots/")) == []
    assert list(inner.list("index/")), "the uploaded packs were not indexed"
    landed = first.pack_bytes
    assert landed >= 6 * PACK * 0.8

    second = CountingBackend(inner)
    summary = backup_paths(Repository.open(second, PASSWORD), [src])
    # Only the rest went up: at most the packs still being filled at the
    # interrupt (one per blob type) are uploaded twice.
    assert second.pack_bytes <= full - landed + 2 * PACK
    assert second.pack_bytes < full * 0.75
    assert summary.bytes_added == pytest.approx(second.pack_bytes, rel=0.1)

    repo = Repository.open(inner, PASSWORD)
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    (snap,) = list_snapshots(repo)
    restored = {
        path: b"".join(repo.load_blob(BlobType.DATA, b) for b in node.content)
        for path, node in walk_tree(repo, snap.tree) if node.type is NodeType.FILE
    }
    expected = {os.fsencode(p).lstrip(b"/"): p.read_bytes() for p in src.rglob("*.bin")}
    assert restored == expected


_CHILD_ENV_DROP = ("RESURGO_REPOSITORY", "RESURGO_PASSWORD_FILE", "RESURGO_PASSWORD_COMMAND")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "resurgo", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _packs(repo: Path) -> dict[str, int]:
    """Pack name -> size, of every pack in a local repository."""
    return {p.name: p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file()}


def test_ctrl_c_during_a_cli_backup_keeps_the_uploaded_packs_for_the_next_run(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", files=48, size=32 << 10)
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env.update({
        "PYTHONPATH": str(Path(resurgo.__file__).resolve().parents[1]),
        "RESURGO_PASSWORD": PASSWORD,
        "RESURGO_TEST_WEAK_KDF": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    })
    baseline_dir, repo_dir = tmp_path / "baseline", tmp_path / "repo"
    for target in (baseline_dir, repo_dir):
        init_proc = _cli(["-r", str(target), "init", "--pack-size", "64KiB"], env)
        assert init_proc.wait(60) == 0, init_proc.communicate()
    full = _cli(["-r", str(baseline_dir), "backup", str(src)], env)
    assert full.wait(120) == 0, full.communicate()
    full_bytes = sum(_packs(baseline_dir).values())

    # Slow uploads down so the interrupt lands in the middle of the backup.
    slow = dict(env, RESURGO_TEST_FAULTS="put:delay:0.15")
    proc = _cli(["-r", str(repo_dir), "backup", str(src)], slow)
    deadline = time.monotonic() + 60
    while len(_packs(repo_dir)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the backup finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "resurgo: interrupted"
    landed = _packs(repo_dir)
    assert not (repo_dir / "snapshots").exists() or not list((repo_dir / "snapshots").iterdir())
    indexed = {p.hex() for p in Repository.open(LocalBackend(repo_dir), PASSWORD).index.pack_ids()}
    assert len(set(landed) - indexed) <= 2  # at most the uploads in flight at the interrupt
    assert len(set(landed) & indexed) >= 4

    again = _cli(["-r", str(repo_dir), "backup", str(src)], env)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    added = sum(size for name, size in _packs(repo_dir).items() if name not in landed)
    kept = sum(size for name, size in landed.items() if name in indexed)
    # The re-run uploaded only what had not landed (the two repositories chunk
    # with different secret seeds, hence the small tolerance).
    assert added <= (full_bytes - kept) * 1.05 + 2 * PACK
    assert added < full_bytes * 0.9
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD)
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    assert len(report.unused_packs) <= 2
