"""``resurgo backend validate`` proves real S3 and SFTP targets before a repository goes there."""

from __future__ import annotations

import json
from pathlib import Path

from resurgo.errors import EXIT_BACKEND
from resurgo.testing.servers import SeaweedS3, SSHServer

from .clitools import base_env, run_here, s3_env, sftp_args

CHECK_NAMES = ["write-read", "overwrite", "create-only", "listing", "ranged-read",
               "large-object", "delete", "clock-skew", "cleanup"]


def _checks(out: str) -> tuple[dict[str, str], dict[str, object]]:
    docs = [json.loads(line) for line in out.splitlines()]
    return {d["name"]: d["status"] for d in docs if d["type"] == "check"}, docs[-1]


def test_validate_an_s3_bucket_with_a_multipart_sized_object(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home")
    result = run_here(["--json", "backend", "validate", "--large-size", "17MiB"], env)
    assert result.code == 0, result
    checks, summary = _checks(result.out)
    assert list(checks) == CHECK_NAMES and set(checks.values()) == {"ok"}
    assert summary["verdict"] == "ok"
    client = seaweed.client()
    try:
        left = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
    finally:
        client.close()
    assert left == 0


def test_validate_with_bad_credentials_fails_every_check_and_exits_15(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    secret = "not-the-secret-7f3a"
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", AWS_SECRET_ACCESS_KEY=secret)
    result = run_here(["backend", "validate", "--large-size", "1MiB"], env)
    assert result.code == EXIT_BACKEND
    assert result.out.splitlines()[-1].startswith("verdict: fail")
    assert "access denied" in result.out
    assert secret not in result.out + result.err


def test_validate_an_sftp_directory(
    sshd: SSHServer, sftp_root: Path, known_hosts: Path, tmp_path: Path
) -> None:
    env = base_env(tmp_path / "home")
    result = run_here(
        [*sftp_args(sshd, known_hosts), "backend", "validate", sshd.url(sftp_root),
         "--large-size", "4MiB"], env)
    assert result.code == 0, result
    assert result.out.splitlines()[-1].startswith("verdict: ok")
    assert [p for p in sftp_root.rglob("*") if p.is_file()] == []
