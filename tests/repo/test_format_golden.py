"""Golden repositories: every format version resurgo has written stays readable.

``tests/data/repo-v1`` was written by resurgo before compression dictionaries
existed (commit b6b2cb2: version-1 envelopes only, uncompressed index objects
and trailers, no ``dicts/``), by running this file as a script with that
commit's ``src`` on ``PYTHONPATH``::

    PYTHONPATH=<old checkout>/src python tests/repo/test_format_golden.py tests/data/repo-v1

The test reads it with today's code: every file of the snapshot comes back
byte for byte, and ``check --read-data`` finds nothing wrong.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
PASSWORD = "golden"
MTIME_NS = 1_700_000_000_123_456_789


def make_tree(root: Path) -> dict[str, bytes]:
    """A small deterministic tree: compressible text sharing lines, random data, an empty file."""
    r = random.Random(7)
    lines = [f"def f{i}(x):\n    return x * {i} + {r.randrange(1000)}\n".encode() for i in range(200)]
    files: dict[str, bytes] = {}
    for i in range(40):
        files[f"src/mod{i:02d}.py"] = b"".join(r.choice(lines) for _ in range(r.randrange(5, 60)))
    files["src/dup.py"] = files["src/mod03.py"]
    files["data/random.bin"] = r.randbytes(40_000)
    files["data/log.txt"] = b"".join(b"2026-01-01 INFO request %d ok\n" % r.randrange(10**6) for _ in range(3000))
    files["empty"] = b""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        os.utime(p, ns=(MTIME_NS, MTIME_NS))
    return files


def _write(repo_dir: Path) -> None:
    import tempfile

    from resurgo.backend.local import LocalBackend
    from resurgo.ops.backup import BackupOptions, backup_paths
    from resurgo.repo import KDFParams, RepoParams, Repository

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tree"
        make_tree(src)
        repo = Repository.init(LocalBackend(repo_dir), PASSWORD, params=RepoParams.tiny_for_tests(),
                               kdf=KDFParams.weak_for_tests())
        backup_paths(repo, [str(src)], BackupOptions(hostname="golden"))
        repo.close()


def test_repository_of_format_version_1_is_read_and_checks_clean(tmp_path: Path) -> None:
    from resurgo.backend.local import LocalBackend
    from resurgo.ops.check import check_repository
    from resurgo.ops.restore import restore_snapshot
    from resurgo.repo import Repository
    from resurgo.repo.crypto import peek_header
    from resurgo.snapshot.store import list_snapshots

    repo_dir = tmp_path / "repo"
    shutil.copytree(DATA / "repo-v1", repo_dir)
    versions = {peek_header(p.read_bytes())[0] for p in (repo_dir / "data").rglob("*") if p.is_file()}
    assert versions == {1}
    expected = make_tree(tmp_path / "expected")
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD)
    (snap,) = list_snapshots(repo)
    restore_snapshot(repo, snap, tmp_path / "out")
    (restored_root,) = [p for p in (tmp_path / "out").rglob("tree") if p.is_dir()]
    got = {str(p.relative_to(restored_root)): p.read_bytes()
           for p in restored_root.rglob("*") if p.is_file()}
    assert got == expected
    report = check_repository(repo, read_all_data=True)
    assert report.ok, report.problems
    assert report.blobs_read > 40


if __name__ == "__main__":
    _write(Path(sys.argv[1]))
