"""Faults against real servers: transient ones are ridden out, permanent ones end cleanly.

Transient: random failures injected below the retry layer (``RESURGO_TEST_FAULTS``,
half of them *lost replies*: the server did the work, the client saw an
error) and a real SeaweedFS killed and restarted in the middle of a backup.
The backup completes and the repository checks clean.

Permanent: bad credentials, a missing bucket, a read-only directory, a full
disk on the SFTP server. Each ends with exactly one ``resurgo: error:`` line
and a non-zero exit code, and the repository still checks clean.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resurgo.errors import EXIT_BACKEND
from resurgo.testing.servers import LoopMount, SeaweedS3, SSHServer, chown_to

from .clitools import base_env, one_error_line, run_here, s3_env, sftp_args, spawn, tree_bytes

PASSWORD = "faulty"
MiB = 1 << 20


def make_tree(root: Path, size: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    for n in range(6):
        sub = root / f"d{n % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n}.bin").write_bytes(rng.randbytes(size // 6))
    (root / "small.txt").write_text("hello\n")
    return root


def restore_matches(env: dict[str, str], source: Path, target: Path, *pre: str) -> None:
    restored = run_here([*pre, "restore", "latest", "-t", str(target)], env)
    assert restored.code == 0, restored
    assert tree_bytes(target / source.relative_to("/")) == tree_bytes(source)


def check_clean(env: dict[str, str], *pre: str) -> dict[str, object]:
    check = run_here([*pre, "--json", "check", "--read-data"], env)
    assert check.code == 0, check.out + check.err
    summary: dict[str, object] = json.loads(check.out.splitlines()[-1])
    assert summary["problems"] == 0
    return summary


# --- transient faults ---------------------------------------------------------------


def test_random_transient_faults_and_lost_replies_are_retried_and_the_backup_completes(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = make_tree(tmp_path / "data", 3 * MiB)
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", RESURGO_PASSWORD=PASSWORD)
    assert run_here(["init", "--pack-size", "512KiB"], env).code == 0
    faulty = dict(env, RESURGO_TEST_FAULTS="*:random:0.2:11")
    backup = run_here(["-v", "backup", str(data)], faulty)
    assert backup.code == 0, backup
    restore_matches(faulty, data, tmp_path / "restored")  # reads ride out faults too
    check_clean(env)


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS for this module alone: killing it must not disturb other tests."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed-faults"))
    server.start()
    yield server
    server.close()


def _objects(server: SeaweedS3, bucket: str, prefix: str) -> int:
    client = server.client(connect_timeout=1, read_timeout=5)
    try:
        resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return int(resp.get("KeyCount", 0))
    except Exception:
        return 0
    finally:
        client.close()


def test_the_backup_rides_out_the_s3_server_being_killed_and_restarted(
    own_seaweed: SeaweedS3, tmp_path: Path
) -> None:
    bucket = own_seaweed.new_bucket("outage")
    data = make_tree(tmp_path / "data", 12 * MiB)
    env = s3_env(own_seaweed, bucket, "repo", tmp_path / "home", RESURGO_PASSWORD=PASSWORD)
    assert run_here(["init", "--pack-size", "1MiB"], env).code == 0
    # Slow uploads keep the backup running while the server goes away.
    proc = spawn(["backup", str(data)], dict(env, RESURGO_TEST_FAULTS="put:delay:0.15"))
    deadline = time.monotonic() + 60
    while _objects(own_seaweed, bucket, "repo/data/") < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    own_seaweed.kill()
    time.sleep(2.0)  # calls fail meanwhile: connection refused, retried with backoff
    outage_ended = time.monotonic()
    own_seaweed.start()
    assert proc.poll() is None, "the backup ended during the outage"
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "snapshot" in out and "saved" in out
    assert time.monotonic() - outage_ended < 120
    restore_matches(env, data, tmp_path / "restored")
    check_clean(env)


# --- permanent faults ------------------------------------------------------------------


def test_bad_credentials_fail_with_one_line_and_exit_15_and_change_nothing(
    seaweed: SeaweedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = make_tree(tmp_path / "data", MiB)
    env = s3_env(seaweed, bucket, prefix, tmp_path / "home", RESURGO_PASSWORD=PASSWORD)
    assert run_here(["init"], env).code == 0
    assert run_here(["backup", str(data)], env).code == 0
    before = _objects(seaweed, bucket, prefix)
    bad = dict(env, AWS_SECRET_ACCESS_KEY="wrong-" + secrets.token_hex(8))
    started = time.monotonic()
    result = run_here(["backup", str(data)], bad)
    assert result.code == EXIT_BACKEND
    line = one_error_line(result.err)
    assert "access denied" in line and bad["AWS_SECRET_ACCESS_KEY"] not in result.err
    assert time.monotonic() - started < 10  # permanent: not retried
    assert _objects(seaweed, bucket, prefix) == before
    check_clean(env)


def test_a_missing_bucket_fails_with_one_line_and_exit_15(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    env = s3_env(seaweed, "no-such-bucket-" + secrets.token_hex(4), "repo", tmp_path / "home",
                 RESURGO_PASSWORD=PASSWORD)
    for args in (["snapshots"], ["init"]):
        result = run_here(args, env)
        assert result.code == EXIT_BACKEND, result
        assert "does not exist" in one_error_line(result.err)


@pytest.fixture
def sftp_env(sshd: SSHServer, known_hosts: Path, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "home", RESURGO_PASSWORD=PASSWORD)


def test_permission_denied_on_the_sftp_server_fails_cleanly_and_the_repository_checks_clean(
    sshd: SSHServer, sftp_root: Path, known_hosts: Path, sftp_env: dict[str, str], tmp_path: Path
) -> None:
    opts = ["-r", sshd.url(sftp_root), *sftp_args(sshd, known_hosts)]
    data = make_tree(tmp_path / "data", MiB)
    assert run_here([*opts, "init"], sftp_env).code == 0
    assert run_here([*opts, "backup", str(data)], sftp_env).code == 0
    (data / "d0" / "new.bin").write_bytes(random.Random(8).randbytes(MiB // 2))
    packs = sftp_root / "data"
    packs.chmod(0o555)  # the login user may no longer add packs
    try:
        result = run_here([*opts, "backup", str(data)], sftp_env)
        assert result.code == EXIT_BACKEND
        assert "permission denied" in one_error_line(result.err)
    finally:
        packs.chmod(0o755)
    summary = check_clean(sftp_env, *opts)
    assert summary["snapshots_checked"] == 1


def test_a_full_disk_on_the_sftp_server_fails_cleanly_and_the_repository_checks_clean(
    sshd: SSHServer, known_hosts: Path, sftp_env: dict[str, str], tmp_path: Path
) -> None:
    mount = LoopMount(
        sshd.workdir / "roots" / f"full-{secrets.token_hex(3)}", 8 * MiB, owner=sshd.user
    )
    root = mount.mount()
    try:
        chown_to(root, sshd.user)
        opts = ["-r", sshd.url(root), *sftp_args(sshd, known_hosts)]
        small = make_tree(tmp_path / "small", MiB, seed=1)
        assert run_here([*opts, "init", "--pack-size", "1MiB"], sftp_env).code == 0
        assert run_here([*opts, "backup", str(small)], sftp_env).code == 0
        big = make_tree(tmp_path / "big", 16 * MiB, seed=2)
        started = time.monotonic()
        result = run_here([*opts, "backup", str(big)], sftp_env)
        assert result.code == EXIT_BACKEND
        assert "no space left" in one_error_line(result.err)
        assert time.monotonic() - started < 30  # permanent: not retried
        summary = check_clean(sftp_env, *opts)
        assert summary["snapshots_checked"] == 1
        restore_matches(sftp_env, small, tmp_path / "restored", *opts)
    finally:
        mount.unmount()
        mount.mountpoint.rmdir()
