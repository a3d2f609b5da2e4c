"""Many writers: separate processes back up into one S3 repository at the same time.

Four ``resurgo backup`` processes (four "hosts", each with its own cache) write
different trees that share content into one SeaweedFS bucket at once. Then
``check --read-data`` must be clean, every snapshot must restore bit-exact,
and the shared content must be stored once: the index holds every blob once,
the only extra copies are the ones the documented race can leave (writers
that upload the same new blob at the same moment, docs/design.md "Many
writers"), and content already in the repository is never uploaded again by
any writer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from resurgo.backend import layout
from resurgo.repo import BlobType, Repository
from resurgo.testing.servers import SeaweedS3

from .clitools import run_here, s3_env, spawn, tree_bytes
from .conftest import make_s3_backend

WRITERS = 4
PASSWORD = "many writers"
MiB = 1 << 20


def shared_files(seed: int = 99) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"shared/big{n}.bin": rng.randbytes(MiB) for n in range(3)} | {
        "shared/readme.txt": b"the same in every tree\n" * 300
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def writer_tree(root: Path, writer: int, round_: int, unique: int) -> Path:
    rng = random.Random(1000 * round_ + writer)
    own = {f"own/w{writer}-{n}.bin": rng.randbytes(unique // 3) for n in range(3)}
    return write_tree(root, own | shared_files())


def pack_bytes(seaweed: SeaweedS3, bucket: str, prefix: str) -> int:
    backend = make_s3_backend(seaweed, bucket, prefix)
    try:
        return sum(info.size for info in backend.list(layout.DATA))
    finally:
        backend.close()


def run_writers(envs: list[dict[str, str]], trees: list[Path]) -> list[str]:
    """Start every backup at once; returns the snapshot IDs (JSON summaries)."""
    procs = [
        spawn(["--json", "backup", str(tree), "--host", f"host{n}"], env)
        for n, (env, tree) in enumerate(zip(envs, trees, strict=True))
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        ids.append(summary["snapshot_id"])
    return ids


def test_four_processes_back_up_into_one_s3_repository_at_once(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    envs = [
        s3_env(seaweed, bucket, prefix, tmp_path / f"home{n}", RESURGO_PASSWORD=PASSWORD)
        for n in range(WRITERS)
    ]
    assert run_here(["init", "--pack-size", "1MiB"], envs[0]).code == 0

    # Round 1: four new trees, each sharing 3 MiB with the others.
    unique = MiB + MiB // 2
    trees = [writer_tree(tmp_path / f"r1-w{n}", n, 1, unique) for n in range(WRITERS)]
    ids = run_writers(envs, trees)
    assert len(set(ids)) == WRITERS

    check = run_here(["check", "--read-data"], envs[0])
    assert check.code == 0, check.out + check.err
    for n, (snap_id, tree) in enumerate(zip(ids, trees, strict=True)):
        target = tmp_path / f"restore-{n}"
        restored = run_here(["restore", snap_id, "-t", str(target)], envs[(n + 1) % WRITERS])
        assert restored.code == 0, restored
        assert tree_bytes(target / tree.relative_to("/")) == tree_bytes(tree)

    backend = make_s3_backend(seaweed, bucket, prefix)
    repo = Repository.open(backend, PASSWORD)
    try:
        entries = list(repo.index.entries())
    finally:
        repo.close()
    data = [e for e in entries if e.type == BlobType.DATA]
    first: dict[bytes, int] = {}
    for e in data:
        first.setdefault(e.id, e.raw_length)
    shared = sum(len(v) for v in shared_files().values())
    unique_raw = shared + WRITERS * (unique // 3) * 3
    # Every distinct piece of content is there once; shared files count once.
    assert sum(first.values()) == unique_raw
    # Extra copies come only from the race: a blob that several writers
    # upload at the same moment is stored by each (harmless: any copy serves,
    # prune may drop the others). At most every other writer repeats the
    # shared content, and never a writer's own files.
    duplicates = sum(e.raw_length for e in data) - unique_raw
    assert 0 <= duplicates <= (WRITERS - 1) * shared
    physical = pack_bytes(seaweed, bucket, prefix)
    assert physical <= (unique_raw + duplicates) * 1.02 + 256 * 1024

    # Round 2: new trees again holding the shared content (new paths, so no
    # parent snapshot helps). Every writer now finds it in the index: nothing
    # of it is uploaded again, by anyone.
    unique2 = MiB // 2
    trees2 = [writer_tree(tmp_path / f"r2-w{n}", n, 2, unique2) for n in range(WRITERS)]
    before = pack_bytes(seaweed, bucket, prefix)
    ids2 = run_writers(envs, trees2)
    growth = pack_bytes(seaweed, bucket, prefix) - before
    new_unique = WRITERS * (unique2 // 3) * 3
    assert growth <= new_unique * 1.05 + 256 * 1024  # the new files, trees and trailers
    assert growth >= new_unique
    check = run_here(["check", "--read-data"], envs[1])
    assert check.code == 0, check.out + check.err
    target = tmp_path / "restore-r2"
    restored = run_here(["restore", ids2[2], "-t", str(target)], envs[3])
    assert restored.code == 0, restored
    assert tree_bytes(target / trees2[2].relative_to("/")) == tree_bytes(trees2[2])
    print(
        f"\nmany writers: shared {shared} B, unique raw {unique_raw} B, packs {physical} B, "
        f"race duplicates {duplicates} B ({len(data) - len(first)} blobs); "
        f"round 2 growth {growth} B for {new_unique} B new"
    )
