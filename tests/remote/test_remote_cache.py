"""The client cache against a real S3 repository: browsing twice downloads snapshots and trees once."""

from __future__ import annotations

import threading
from pathlib import Path

from resurgo.backend import Backend
from resurgo.repo import Repository
from resurgo.snapshot.store import list_snapshots, walk_tree
from resurgo.testing.forwarding import ForwardingBackend
from resurgo.testing.servers import SeaweedS3

from .clitools import run_here, s3_env
from .conftest import make_s3_backend

PASSWORD = "cached"


class CountingGets(ForwardingBackend):
    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gets: list[str] = []
        self._lock = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.gets.append(key)
        return self.inner.get(key, offset, length)

    def count(self, prefix: str) -> int:
        return sum(1 for key in self.gets if key.startswith(prefix))


def browse(seaweed: SeaweedS3, bucket: str, prefix: str, cache: Path) -> tuple[list[bytes], CountingGets]:
    counting = CountingGets(make_s3_backend(seaweed, bucket, prefix))
    repo = Repository.open(counting, PASSWORD, cache_dir=cache)
    try:
        paths = [p for snap in list_snapshots(repo) for p, _ in walk_tree(repo, snap.tree)]
    finally:
        repo.close()
    return paths, counting


def test_a_second_snapshots_and_ls_against_s3_download_no_snapshots_and_no_trees(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", RESURGO_PASSWORD=PASSWORD)
    assert run_here(["init"], env).code == 0
    for n in range(3):
        tree = tmp_path / f"src{n}"
        for d in range(5):
            (tree / f"d{d}").mkdir(parents=True)
            (tree / f"d{d}" / "f.txt").write_text(f"{n} {d}\n")
        assert run_here(["backup", str(tree)], env).code == 0
    cache = tmp_path / "reader-cache"
    first, counted = browse(seaweed, bucket, prefix, cache)
    assert counted.count("snapshots/") == 3 and counted.count("data/") >= 1
    again, recounted = browse(seaweed, bucket, prefix, cache)
    assert again == first
    assert recounted.count("snapshots/") == 0
    assert recounted.count("data/") == 0
    assert recounted.count("index/") == 0
    # The CLI uses the same cache: `snapshots` and `ls` work from it.
    listed = run_here(["snapshots"], env)
    assert listed.code == 0 and listed.out.count("\n") == 5
    ls = run_here(["ls", "latest"], env)
    assert ls.code == 0 and "f.txt" in ls.out
