"""``resurgo copy`` between real targets: local -> S3 (SeaweedFS) and S3 -> SFTP (OpenSSH).

Every copy is proven by restoring it and comparing the bytes with the files
that were backed up; running the copy again must store nothing.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from resurgo.backend import Backend
from resurgo.backend.local import LocalBackend
from resurgo.ops.copy import copy_snapshots
from resurgo.repo import Repository
from resurgo.snapshot.store import list_snapshots
from resurgo.testing.forwarding import ForwardingBackend
from resurgo.testing.servers import SeaweedS3, SSHServer

from .clitools import base_env, run, run_here, s3_env, sftp_args, tree_bytes
from .conftest import make_s3_backend

LOCAL_PW, S3_PW, SFTP_PW = "local pw", "s3 pw", "sftp pw"


class CountingPuts(ForwardingBackend):
    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.puts: list[str] = []
        self.gets: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        with self._lock:
            self.gets.append((key, len(data)))
        return data

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        with self._lock:
            self.puts.append(key)
        self.inner.put(key, data, create_only=create_only)


def make_tree(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    for n in range(8):
        sub = root / f"dir{n % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{n}.bin").write_bytes(rng.randbytes(rng.randrange(50_000, 400_000)))
    (root / "notes.txt").write_text("shared between snapshots\n" * 2000)
    (root / "empty").write_bytes(b"")
    return root


def restored_tree(target: Path, source: Path) -> dict[str, bytes]:
    """Files restored from a snapshot of ``source`` (restore recreates its absolute path)."""
    return tree_bytes(target / source.relative_to("/"))


def test_copy_local_to_s3_restores_bit_exact_and_a_second_copy_stores_nothing(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = make_tree(tmp_path / "data", 1)
    local = tmp_path / "local-repo"
    local_env = base_env(tmp_path / "home", RESURGO_PASSWORD=LOCAL_PW)
    assert run_here(["-r", str(local), "init", "--pack-size", "512KiB"], local_env).code == 0
    first = run_here(["-r", str(local), "backup", str(data), "--tag", "one"], local_env)
    assert first.code == 0, first
    (data / "dir0" / "added.bin").write_bytes(os.urandom(300_000))
    assert run_here(["-r", str(local), "backup", str(data)], local_env).code == 0

    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", RESURGO_PASSWORD=S3_PW,
                 RESURGO_FROM_PASSWORD=LOCAL_PW)
    assert run_here(["init"], env).code == 0
    copied = run_here(["--json", "copy", "--from-repo", str(local)], env)
    assert copied.code == 0, copied
    summary = json.loads(copied.out.splitlines()[-1])
    assert summary["snapshots_copied"] == 2 and summary["mode"] == "translated"

    target = tmp_path / "restored"
    restored = run_here(["restore", "latest", "-t", str(target)], env)
    assert restored.code == 0, restored
    assert restored_tree(target, data) == tree_bytes(data)
    older = run_here(["restore", "latest", "--tag", "one", "-t", str(tmp_path / "older")], env)
    assert older.code == 0, older
    assert "dir0/added.bin" not in restored_tree(tmp_path / "older", data)
    check = run_here(["check", "--read-data"], env)
    assert check.code == 0, check

    # Again, through counting backends: no put at all, no data read from the source.
    src_backend = CountingPuts(LocalBackend(local))
    dst_backend = CountingPuts(make_s3_backend(seaweed, bucket, prefix))
    cache = tmp_path / "home" / "cache" / "resurgo"
    src = Repository.open(src_backend, LOCAL_PW, cache_dir=cache)
    dst = Repository.open(dst_backend, S3_PW, cache_dir=cache)
    try:
        again = copy_snapshots(src, dst, list_snapshots(src), cache_dir=cache)
    finally:
        dst.close()
        src.close()
    assert again.copied == [] and len(again.skipped) == 2
    assert dst_backend.puts == []
    assert sum(n for key, n in src_backend.gets if key.startswith("data/")) == 0


def test_copy_s3_to_sftp_sharing_chunker_params_restores_bit_exact_without_rehashing(
    seaweed: SeaweedS3, bucket: str, prefix: str, sshd: SSHServer, sftp_root: Path,
    known_hosts: Path, tmp_path: Path,
) -> None:
    data = make_tree(tmp_path / "data", 2)
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", RESURGO_PASSWORD=S3_PW)
    assert run(["init", "--pack-size", "1MiB"], env).code == 0
    backed_up = run(["backup", str(data)], env)
    assert backed_up.code == 0, backed_up

    # The destination runs on another host: the source's location and
    # credentials are given as --from-option, the SFTP target as -o.
    sftp_env = base_env(
        tmp_path / "home2", RESURGO_PASSWORD=SFTP_PW, RESURGO_FROM_PASSWORD=S3_PW,
        RESURGO_REPOSITORY=sshd.url(sftp_root),
    )
    from_s3 = ["--from-repo", seaweed.url(bucket, prefix),
               "--from-option", f"access_key={seaweed.access_key}",
               "--from-option", f"secret_key={seaweed.secret_key}"]
    opts = sftp_args(sshd, known_hosts)
    init = run([*opts, "init", "--copy-chunker-params-from", *from_s3[1:]], sftp_env)
    assert init.code == 0, init
    copy = run([*opts, "--json", "copy", *from_s3], sftp_env)
    assert copy.code == 0, copy
    summary = json.loads(copy.out.splitlines()[-1])
    assert summary["mode"] == "same-ids" and summary["blobs_rehashed"] == 0
    assert summary["snapshots_copied"] == 1
    unique = sum(len(v) for v in tree_bytes(data).values())
    assert unique * 0.9 <= summary["bytes_downloaded"] <= unique * 1.1

    target = tmp_path / "restored"
    restored = run([*opts, "restore", "latest", "-t", str(target)], sftp_env)
    assert restored.code == 0, restored
    assert restored_tree(target, data) == tree_bytes(data)
    check = run([*opts, "check", "--read-data"], sftp_env)
    assert check.code == 0, check

    files_before = sorted(p for p in sftp_root.rglob("*") if p.is_file())
    again = run([*opts, "--json", "copy", *from_s3], sftp_env)
    assert again.code == 0, again
    summary = json.loads(again.out.splitlines()[-1])
    assert summary["snapshots_copied"] == 0 and summary["bytes_downloaded"] == 0
    assert sorted(p for p in sftp_root.rglob("*") if p.is_file()) == files_before
