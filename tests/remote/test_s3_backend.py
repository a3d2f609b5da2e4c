"""S3Backend against a real SeaweedFS: the contract suite, multipart, error mapping, faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resurgo.backend.registry import open_backend
from resurgo.backend.s3 import MiB, S3Backend, from_url
from resurgo.backend.wrappers import RetryBackend
from resurgo.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    ObjectExists,
    ObjectNotFound,
    UsageError,
)
from resurgo.testing.contract import BackendContract, payload
from resurgo.testing.servers import SeaweedS3

from .conftest import make_s3_backend


class TestS3BackendContract(BackendContract):
    @pytest.fixture
    def backend(self, s3: S3Backend) -> S3Backend:
        return s3


def _pending_uploads(seaweed: SeaweedS3, bucket: str, prefix: str) -> list[Any]:
    client = seaweed.client()
    try:
        listing = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
        return list(listing.get("Uploads", []))
    finally:
        client.close()


@pytest.fixture
def multipart(seaweed: SeaweedS3, bucket: str, prefix: str) -> Iterator[S3Backend]:
    backend = make_s3_backend(
        seaweed, bucket, prefix, multipart_threshold=5 * MiB, part_size=5 * MiB, part_concurrency=2
    )
    yield backend
    backend.close()


# --- URLs and options ---------------------------------------------------------


def test_from_url_opens_the_bucket_and_its_url_carries_no_secret(
    seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    backend = from_url(seaweed.url(bucket, f"{prefix}/team/repo"), seaweed.options())
    try:
        backend.put("config", b"cfg")
        assert backend.get("config") == b"cfg"
        client = seaweed.client()
        stored = client.get_object(Bucket=bucket, Key=f"{prefix}/team/repo/config")["Body"].read()
        client.close()
        assert stored == b"cfg"
        assert backend.url.startswith(f"s3://{bucket}/{prefix}/team/repo?endpoint=")
        assert "path_style=true" in backend.url
        for secret in (seaweed.secret_key, seaweed.access_key):
            assert secret not in backend.url
            assert secret not in repr(backend)
    finally:
        backend.close()


def test_registry_opens_s3_urls_with_options(seaweed: SeaweedS3, bucket: str, prefix: str) -> None:
    backend = open_backend(seaweed.url(bucket, prefix), seaweed.options())
    try:
        assert isinstance(backend, S3Backend)
        backend.put("keys/k", b"key")
        assert [info.key for info in backend.list()] == ["keys/k"]
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIA:secret@bucket/prefix",
        "s3://bucket/prefix?secret_key=abc",
        "s3://bucket/prefix?session_token=abc",
        "s3://bucket/prefix?colour=blue",
        "s3:///prefix",
        "s3://bucket?path_style=maybe",
    ],
)
def test_from_url_refuses_secrets_in_the_url_and_unknown_settings(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        from_url(url, {})
    assert "abc" not in str(caught.value)


def test_options_override_query_parameters_and_accept_sizes_and_scheme_prefixes() -> None:
    backend = from_url(
        "s3://bucket/p?region=eu-west-1&endpoint=http://127.0.0.1:1",
        {
            "s3.region": "us-east-1",
            "multipart_threshold": "32MiB",
            "s3.part_size": "8MiB",
            "access_key": "a",
            "secret_key": "b",
            "sftp.identity_file": "/meant/for/another/backend",
        },
    )
    try:
        assert backend.region == "us-east-1"
        assert backend.multipart_threshold == 32 * MiB
        assert backend.part_size == 8 * MiB
        assert "region=us-east-1" in backend.url
        again = from_url(backend.url, {"access_key": "a", "secret_key": "b"})
        assert again.url == backend.url
        again.close()
    finally:
        backend.close()


# --- create-only ---------------------------------------------------------------


def test_create_only_is_enforced_by_the_server_with_if_none_match(
    seaweed: SeaweedS3, s3: S3Backend, bucket: str, prefix: str
) -> None:
    # Another client writes first; our create-only put must be refused by the
    # server itself (no HEAD in between), proving SeaweedFS honours If-None-Match.
    client = seaweed.client()
    client.put_object(Bucket=bucket, Key=f"{prefix}/locks/l", Body=b"theirs")
    client.close()
    calls: list[str] = []
    s3._client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    with pytest.raises(ObjectExists):
        s3.put("locks/l", b"ours", create_only=True)
    assert calls == ["PutObject"]
    assert s3.get("locks/l") == b"theirs"


def test_create_only_without_conditional_put_checks_first(
    seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    backend = make_s3_backend(seaweed, bucket, prefix, conditional_put=False)
    try:
        backend.put("locks/l", b"first", create_only=True)
        with pytest.raises(ObjectExists):
            backend.put("locks/l", b"second", create_only=True)
        assert backend.get("locks/l") == b"first"
    finally:
        backend.close()


# --- multipart -------------------------------------------------------------------


def test_large_object_is_uploaded_in_parts_and_reads_back(
    multipart: S3Backend, seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    data = payload(12 * MiB + 7, seed=1)
    multipart.put("data/ab/pack", memoryview(data))
    assert multipart.get("data/ab/pack") == data
    boundary = 5 * MiB
    assert multipart.get("data/ab/pack", boundary - 10, 20) == data[boundary - 10 : boundary + 10]
    assert multipart.stat("data/ab/pack").size == len(data)
    client = seaweed.client()
    etag = client.head_object(Bucket=bucket, Key=f"{prefix}/data/ab/pack")["ETag"]
    client.close()
    assert etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert _pending_uploads(seaweed, bucket, prefix) == []


def test_multipart_create_only_refuses_an_existing_key_and_keeps_the_old_content(
    multipart: S3Backend, seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    first, second = payload(11 * MiB, seed=2), payload(11 * MiB, seed=3)
    multipart.put("data/cd/pack", first, create_only=True)
    with pytest.raises(ObjectExists):
        multipart.put("data/cd/pack", second, create_only=True)
    assert multipart.get("data/cd/pack") == first
    assert _pending_uploads(seaweed, bucket, prefix) == []


def test_failed_multipart_upload_is_aborted(
    multipart: S3Backend,
    seaweed: SeaweedS3,
    bucket: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_upload_part = multipart._client.upload_part
    lock = threading.Lock()
    seen: list[int] = []

    def flaky_upload_part(**kwargs: Any) -> Any:
        with lock:
            seen.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError("connection reset by peer")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(multipart._client, "upload_part", flaky_upload_part)
    with pytest.raises(BackendUnavailable) as caught:
        multipart.put("data/ef/pack", payload(11 * MiB, seed=4))
    assert caught.value.retryable is True
    assert 2 in seen
    assert _pending_uploads(seaweed, bucket, prefix) == []
    with pytest.raises(ObjectNotFound):
        multipart.stat("data/ef/pack")


# --- error mapping -------------------------------------------------------------------


def test_wrong_secret_is_a_permission_error_that_is_not_retried(
    seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    wrong = "not-the-secret-" + "x" * 20
    backend = make_s3_backend(seaweed, bucket, prefix, secret_key=wrong)
    try:
        calls = [
            lambda: backend.get("config"),
            lambda: backend.stat("config"),
            lambda: backend.put("config", b"x"),
            lambda: list(backend.list()),
            lambda: backend.delete("config"),
        ]
        for call in calls:
            with pytest.raises(BackendPermissionError) as caught:
                call()
            assert caught.value.retryable is False
            assert wrong not in str(caught.value)
            assert bucket in str(caught.value)
    finally:
        backend.close()


def test_missing_bucket_is_a_permanent_error_naming_the_bucket(seaweed: SeaweedS3) -> None:
    backend = make_s3_backend(seaweed, "no-such-bucket-here")
    try:
        calls = [
            lambda: backend.get("config"),
            lambda: backend.get("config", 5, 5),
            lambda: backend.stat("config"),
            lambda: backend.put("config", b"x"),
            lambda: list(backend.list("data/")),
            lambda: backend.delete("config"),
        ]
        for call in calls:
            with pytest.raises(BackendError) as caught:
                call()
            err = caught.value
            assert type(err) is BackendError, type(err).__name__
            assert err.retryable is False
            assert "no-such-bucket-here" in str(err)
            assert "does not exist" in str(err)
    finally:
        backend.close()


def test_killed_server_is_unavailable_and_retryable_then_works_after_restart(
    seaweed: SeaweedS3, s3: S3Backend
) -> None:
    s3.put("snapshots/s1", b"before the crash")
    seaweed.kill()
    try:
        calls = [
            lambda: s3.get("snapshots/s1"),
            lambda: s3.get("snapshots/s1", 1, 2),
            lambda: s3.stat("snapshots/s1"),
            lambda: s3.put("snapshots/s2", b"x"),
            lambda: s3.put("snapshots/s3", b"x", create_only=True),
            lambda: list(s3.list()),
            lambda: s3.delete("snapshots/s1"),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as caught:
                call()
            assert caught.value.retryable is True
            assert seaweed.secret_key not in str(caught.value)
    finally:
        seaweed.restart()
    assert s3.get("snapshots/s1") == b"before the crash"
    s3.put("snapshots/s2", b"after")
    assert {info.key for info in s3.list()} == {"snapshots/s1", "snapshots/s2"}


def test_retry_backend_rides_out_a_server_restart(seaweed: SeaweedS3, s3: S3Backend) -> None:
    s3.put("index/i1", b"index body")
    retries: list[str] = []
    backend = RetryBackend(
        s3,
        max_elapsed=30,
        # Bound by time, not attempts: a loaded machine may need several
        # seconds before the restarted server answers reads again.
        max_attempts=10_000,
        base_delay=0.05,
        max_delay=0.3,
        on_retry=lambda verb, key, attempt, err, delay: retries.append(type(err).__name__),
    )
    seaweed.kill()
    restarter = threading.Timer(0.5, seaweed.start)
    restarter.start()
    try:
        assert backend.get("index/i1") == b"index body"
    finally:
        restarter.join()
        if not seaweed.running:
            seaweed.restart()
    assert retries and set(retries) == {"BackendUnavailable"}


def test_no_error_message_reveals_the_credentials(
    seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    messages: list[str] = []
    for backend in (
        make_s3_backend(seaweed, bucket, prefix, secret_key=seaweed.secret_key + "-wrong"),
        make_s3_backend(seaweed, "no-such-bucket-either"),
        make_s3_backend(seaweed, bucket, prefix, endpoint_url="http://127.0.0.1:9"),
    ):
        with pytest.raises(BackendError) as caught:
            backend.get("config")
        messages.append(str(caught.value))
        with pytest.raises(BackendError) as caught:
            backend.put("config", b"x")
        messages.append(str(caught.value))
        messages.append(backend.url)
        backend.close()
    assert len(messages) == 9
    for text in messages:
        assert seaweed.secret_key not in text
        assert seaweed.access_key not in text


def test_a_server_that_cannot_start_fails_loudly_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'listen tcp: address already in use' >&2\nexit 1\n")
    fake.chmod(0o755)
    server = SeaweedS3(tmp_path / "work", weed=fake, start_timeout=5)
    with pytest.raises(RuntimeError) as caught:
        server.start()
    assert "did not start" in str(caught.value)
    assert "address already in use" in str(caught.value)
    assert not server.running
