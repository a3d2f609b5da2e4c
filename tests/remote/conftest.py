"""Real servers for the remote-backend tests: one SeaweedFS and one sshd per session.

Both start on 127.0.0.1 and free ports. If a server cannot start, the fixture
raises and every test using it errors out: these tests never skip.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from resurgo.backend.s3 import S3Backend
from resurgo.backend.sftp import SFTPBackend
from resurgo.testing.servers import SeaweedS3, SSHServer


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHServer]:
    server = SSHServer()
    server.start()
    yield server
    server.close()


_BOTO_SESSION: list[object] = []


def make_s3_backend(
    server: SeaweedS3, bucket: str, prefix: str = "repo", **kwargs: object
) -> S3Backend:
    if not _BOTO_SESSION:
        import boto3

        _BOTO_SESSION.append(boto3.session.Session())
    options: dict[str, object] = {
        # One boto3 session for all test backends: a new session per backend
        # costs ~0.1 s of model loading, times a hundred tests.
        "session": _BOTO_SESSION[0],
        "endpoint_url": server.endpoint_url,
        "region": server.region,
        "path_style": True,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "connect_timeout": 2.0,
        "read_timeout": 10.0,
    }
    options.update(kwargs)
    return S3Backend(bucket, prefix, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bucket(seaweed: SeaweedS3) -> str:
    """The session's bucket. Each test works under its own ``prefix`` in it.

    A new bucket costs SeaweedFS ~0.5 s (it allocates volumes on first write);
    a new prefix costs nothing and is just as empty.
    """
    return seaweed.new_bucket("shared")


@pytest.fixture
def prefix(seaweed: SeaweedS3) -> str:
    """A fresh, unused key prefix in ``bucket`` (the server is up again if a test killed it)."""
    if not seaweed.running:
        seaweed.restart()
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def s3(seaweed: SeaweedS3, bucket: str, prefix: str) -> Iterator[S3Backend]:
    backend = make_s3_backend(seaweed, bucket, prefix)
    yield backend
    backend.close()


@pytest.fixture
def known_hosts(sshd: SSHServer, tmp_path: Path) -> Path:
    """A known_hosts file that trusts the session's sshd."""
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def sftp_root(sshd: SSHServer) -> Path:
    """A fresh, empty directory on the server, owned by the login user."""
    if not sshd.running:
        sshd.start()
    return sshd.new_root()


def make_sftp_backend(
    server: SSHServer, root: Path, known_hosts: Path, **kwargs: object
) -> SFTPBackend:
    options: dict[str, object] = {
        "port": server.port,
        "user": server.user,
        "identity_file": server.client_key,
        "known_hosts": known_hosts,
        "connect_timeout": 5.0,
        "op_timeout": 30.0,
    }
    options.update(kwargs)
    return SFTPBackend(server.host, str(root), **options)  # type: ignore[arg-type]


@pytest.fixture
def sftp(sshd: SSHServer, sftp_root: Path, known_hosts: Path) -> Iterator[SFTPBackend]:
    backend = make_sftp_backend(sshd, sftp_root, known_hosts)
    yield backend
    backend.close()
