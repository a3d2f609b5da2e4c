"""validate_backend against memory, local, S3 (SeaweedFS) and SFTP (sshd) targets, and broken ones."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.backend.s3 import S3Backend
from resurgo.backend.sftp import SFTPBackend
from resurgo.backend.validate import CHECKS, FAIL, OK, WARN, ValidationReport, validate_backend
from resurgo.backend.wrappers import ReadOnlyBackend
from resurgo.progress import RecordingReporter
from resurgo.testing.forwarding import ForwardingBackend
from resurgo.testing.servers import SeaweedS3

SMALL = 1024 * 1024  # large-object size for the local targets: fast, same code path


class _Forwarding(ForwardingBackend):
    """Passes every call to ``inner``; subclasses break one rule on purpose."""

    @property
    def url(self) -> str:
        return "broken+" + self.inner.url


class IgnoresCreateOnly(_Forwarding):
    """Like an S3 server that ignores If-None-Match: create-only puts overwrite."""

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        self.inner.put(key, data)


class ReturnsShortRanges(_Forwarding):
    """Returns whatever bytes exist instead of refusing a range past the end."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key)
        return data[offset:] if length is None else data[offset : offset + length]


def _statuses(report: ValidationReport) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def _assert_all_ok(report: ValidationReport) -> None:
    assert [c.name for c in report.checks] == list(CHECKS)
    bad = [c for c in report.checks if c.status != OK]
    assert bad == [], bad
    assert report.verdict == OK and report.ok


# --- healthy targets -------------------------------------------------------------


def test_memory_target_passes_and_only_its_scratch_prefix_is_touched() -> None:
    backend = MemoryBackend()
    backend.put("config", b"the repository config")
    report = validate_backend(backend, large_size=SMALL)
    _assert_all_ok(report)
    assert report.prefix.startswith("validate-")
    assert [info.key for info in backend.list()] == ["config"]
    assert backend.get("config") == b"the repository config"
    assert "enforced" in report.check("create-only").detail


def test_local_target_passes(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "target")
    report = validate_backend(backend, large_size=SMALL)
    _assert_all_ok(report)
    assert list(backend.list()) == []
    backend.close()


def test_s3_target_passes_with_a_multipart_sized_object(
    s3: S3Backend, seaweed: SeaweedS3, bucket: str, prefix: str
) -> None:
    assert s3.multipart_threshold < 32 * 1024 * 1024
    report = validate_backend(s3)  # default 32 MiB large object
    _assert_all_ok(report)
    assert "32 MiB round trip" in report.check("large-object").detail
    assert list(s3.list()) == []
    client = seaweed.client()
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads")
    client.close()
    assert not uploads


def test_sftp_target_passes(sftp: SFTPBackend, sftp_root: Path) -> None:
    report = validate_backend(sftp)
    _assert_all_ok(report)
    assert list(sftp.list()) == []
    assert [p for p in sftp_root.rglob("*") if p.is_file()] == []


# --- broken or odd targets ----------------------------------------------------------


def test_unenforced_create_only_is_a_warning_not_a_failure() -> None:
    report = validate_backend(IgnoresCreateOnly(MemoryBackend()), large_size=SMALL)
    statuses = _statuses(report)
    assert statuses.pop("create-only") == WARN
    assert set(statuses.values()) == {OK}
    assert report.verdict == WARN and report.ok
    assert "NOT enforced" in report.check("create-only").detail


def test_short_ranges_fail_the_ranged_read_check() -> None:
    report = validate_backend(ReturnsShortRanges(MemoryBackend()), large_size=SMALL)
    assert report.check("ranged-read").status == FAIL
    assert "instead of raising InvalidRange" in report.check("ranged-read").detail
    assert report.verdict == FAIL and not report.ok


def test_clock_skew_beyond_the_limit_is_a_warning() -> None:
    backend = MemoryBackend()
    report = validate_backend(backend, clock=lambda: time.time() - 3600, large_size=SMALL)
    check = report.check("clock-skew")
    assert check.status == WARN
    assert "3600 s ahead of ours" in check.detail
    fine = validate_backend(backend, clock=lambda: time.time() - 5, large_size=SMALL)
    assert fine.check("clock-skew").status == OK


def test_read_only_target_fails_and_the_remaining_checks_do_not_run() -> None:
    report = validate_backend(ReadOnlyBackend(MemoryBackend()), large_size=SMALL)
    statuses = _statuses(report)
    assert statuses["write-read"] == FAIL
    assert "ReadOnlyError" in report.check("write-read").detail
    assert all(statuses[name] == FAIL for name in CHECKS[1:-1])
    assert report.check("overwrite").detail.startswith("not run")
    assert statuses["cleanup"] == OK
    assert report.verdict == FAIL


def test_every_check_is_reported_as_it_finishes() -> None:
    reporter = RecordingReporter()
    report = validate_backend(MemoryBackend(), reporter=reporter, large_size=SMALL)
    events = reporter.of_kind("validate.check")
    assert [e.fields["name"] for e in events] == list(CHECKS)
    assert [e.fields["status"] for e in events] == [c.status for c in report.checks]
    assert reporter.counters == {"checks_done": len(CHECKS), "checks_total": len(CHECKS)}
    as_dict = report.to_dict()
    assert as_dict["verdict"] == OK and len(as_dict["checks"]) == len(CHECKS)


def test_a_non_empty_scratch_prefix_is_refused_and_left_alone() -> None:
    backend = MemoryBackend()
    backend.put("validate-mine/keep", b"user data")
    report = validate_backend(backend, prefix="validate-mine/", large_size=SMALL)
    assert report.check("write-read").status == FAIL
    assert "not empty" in report.check("write-read").detail
    # Cleanup removes only what the validation wrote, never the user's object.
    assert backend.get("validate-mine/keep") == b"user data"


@pytest.mark.parametrize("size", [0, 1])
def test_large_object_size_is_configurable(size: int) -> None:
    report = validate_backend(MemoryBackend(), large_size=size)
    assert report.check("large-object").status == OK
