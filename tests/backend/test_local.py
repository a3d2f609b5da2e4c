"""LocalBackend: the contract suite, plus the directory layout, durability and errno mapping."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from resurgo.backend import local as local_module
from resurgo.backend.local import LocalBackend
from resurgo.errors import (
    BackendError,
    BackendFull,
    BackendPermissionError,
    ObjectExists,
    ObjectNotFound,
)
from resurgo.testing.contract import BackendContract


class TestLocalBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LocalBackend]:
        backend = LocalBackend(tmp_path / "repo")
        yield backend
        backend.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def local(root: Path) -> LocalBackend:
    return LocalBackend(root)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_objects_are_plain_files_at_their_key_path(local: LocalBackend, root: Path) -> None:
    local.put("data/ab/abcdef", b"pack bytes")
    path = root / "data" / "ab" / "abcdef"
    assert path.read_bytes() == b"pack bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "data" / "ab").stat().st_mode) == 0o700


def test_url_is_the_absolute_root_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalBackend("relative/repo").url == str(tmp_path / "relative" / "repo")
    assert LocalBackend(tmp_path / "abs").url == str(tmp_path / "abs")


def test_missing_root_reads_as_empty_and_is_created_by_the_first_put(
    local: LocalBackend, root: Path
) -> None:
    assert not root.exists()
    with pytest.raises(ObjectNotFound):
        local.get("config")
    assert list(local.list()) == []
    assert list(local.list("data/")) == []
    local.put("config", b"cfg")
    assert (root / "config").read_bytes() == b"cfg"


def test_put_leaves_no_temporary_file_behind(local: LocalBackend, root: Path) -> None:
    local.put("keys/k", b"one")
    local.put("keys/k", b"two")
    with pytest.raises(ObjectExists):
        local.put("keys/k", b"three", create_only=True)
    local.put("keys/l", b"four", create_only=True)
    assert temp_files(root) == []
    assert sorted(p.name for p in (root / "keys").iterdir()) == ["k", "l"]


def test_leftover_temporary_files_are_never_listed(local: LocalBackend, root: Path) -> None:
    local.put("data/ab/ab01", b"real")
    (root / "data" / "ab" / ".tmp-0123456789abcdef").write_bytes(b"crash leftover")
    (root / ".tmp-toplevel").write_bytes(b"crash leftover")
    assert [info.key for info in local.list()] == ["data/ab/ab01"]
    assert [info.key for info in local.list("data/ab/")] == ["data/ab/ab01"]
    assert list(local.list(".tmp")) == []


@pytest.mark.parametrize("key", [".tmp-x", "data/.tmp-x", ".tmp-dir/obj"])
def test_keys_named_like_temporary_files_are_rejected(local: LocalBackend, key: str) -> None:
    with pytest.raises(BackendError, match="reserved for temporary files"):
        local.put(key, b"x")
    with pytest.raises(BackendError, match="reserved for temporary files"):
        local.get(key)


def test_put_fsyncs_the_file_then_its_directory(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put("data/ab/first", b"creates the directories")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    local.put("data/ab/second", b"payload")
    directory = str(root / "data" / "ab")
    assert len(synced) == 2
    assert Path(synced[0]).parent == Path(directory)
    assert Path(synced[0]).name.startswith(".tmp-")  # the data, before it gets its name
    assert synced[1] == directory  # the new directory entry


def test_new_directories_are_fsynced_into_their_parents(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    local.put("data/ab/obj", b"x")
    for parent in (root.parent, root, root / "data"):
        assert str(parent) in synced


def test_delete_fsyncs_the_directory(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put("locks/l1", b"x")
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    local.delete("locks/l1")
    assert synced == [str(root / "locks")]
    assert not (root / "locks" / "l1").exists()


def test_a_failed_put_keeps_the_old_object_and_removes_its_temporary_file(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put("index/i1", b"old index")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BackendFull) as caught:
        local.put("index/i1", b"new index")
    assert caught.value.retryable is False
    assert "index/i1" in str(caught.value) and str(root) in str(caught.value)
    monkeypatch.undo()
    assert local.get("index/i1") == b"old index"
    assert temp_files(root) == []


@pytest.mark.parametrize(
    ("code", "error_type", "retryable"),
    [
        (errno.ENOSPC, BackendFull, False),
        (errno.EDQUOT, BackendFull, False),
        (errno.EACCES, BackendPermissionError, False),
        (errno.EPERM, BackendPermissionError, False),
        (errno.EROFS, BackendPermissionError, False),
        (errno.EIO, BackendError, False),
        (errno.EINTR, BackendError, True),
        (errno.EAGAIN, BackendError, True),
        (errno.ETIMEDOUT, BackendError, True),
    ],
    ids=lambda v: errno.errorcode.get(v, "") if isinstance(v, int) else None,
)
def test_write_errors_map_to_backend_errors_by_errno(
    local: LocalBackend,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    error_type: type[BackendError],
    retryable: bool,
) -> None:
    def failing_write(fd: int, data: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local_module, "_write_all", failing_write)
    with pytest.raises(BackendError) as caught:
        local.put("snapshots/s", b"data")
    assert type(caught.value) is error_type
    assert caught.value.retryable is retryable
    assert os.strerror(code) in str(caught.value)
    monkeypatch.undo()
    assert temp_files(root) == []
    assert list(local.list()) == []


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(errno.EIO, BackendError), (errno.EACCES, BackendPermissionError)],
)
def test_read_errors_are_not_mistaken_for_missing_objects(
    local: LocalBackend, monkeypatch: pytest.MonkeyPatch, code: int, error_type: type
) -> None:
    local.put("data/ab/obj", b"content")

    def failing_pread(fd: int, n: int, offset: int) -> bytes:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "pread", failing_pread)
    with pytest.raises(BackendError) as caught:
        local.get("data/ab/obj")
    assert type(caught.value) is error_type
    assert not isinstance(caught.value, ObjectNotFound)


def test_short_reads_are_completed(local: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 40
    local.put("data/ab/obj", data)
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 1000), off))
    assert local.get("data/ab/obj") == data
    assert local.get("data/ab/obj", 500, 5000) == data[500:5500]


def test_put_under_an_existing_object_fails_permanently(local: LocalBackend) -> None:
    local.put("data/ab", b"an object where a directory would go")
    with pytest.raises(BackendError) as caught:
        local.put("data/ab/obj", b"x")
    assert not isinstance(caught.value, ObjectNotFound)
    assert caught.value.retryable is False
    assert local.get("data/ab") == b"an object where a directory would go"


def test_create_only_explains_a_file_system_without_hard_links(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(BackendError, match="hard links"):
        local.put("locks/l", b"x", create_only=True)
    monkeypatch.undo()
    assert temp_files(root) == []
    with pytest.raises(ObjectNotFound):
        local.get("locks/l")


def test_list_scans_only_the_subtree_the_prefix_needs(
    local: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("config", "snapshots/s1", "index/i1", "data/ab/ab01", "data/ac/ac01", "data/ff/f"):
        local.put(key, b"x")
    scanned: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: str) -> object:
        scanned.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert {i.key for i in local.list("data/ab/")} == {"data/ab/ab01"}
    assert scanned == [str(root / "data" / "ab")]
    scanned.clear()
    assert {i.key for i in local.list("data/a")} == {"data/ab/ab01", "data/ac/ac01"}
    assert sorted(scanned) == sorted(str(root / "data" / d) for d in ("", "ab", "ac"))


@pytest.mark.parametrize("prefix", ["/etc", "../", "data/../..", "./"])
def test_list_refuses_prefixes_that_escape_the_root(local: LocalBackend, prefix: str) -> None:
    with pytest.raises(BackendError, match="invalid list prefix"):
        list(local.list(prefix))


def test_symlinked_directories_are_not_followed_when_listing(
    local: LocalBackend, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not part of the repository")
    local.put("data/ab/ab01", b"x")
    (root / "data" / "zz").symlink_to(outside)
    assert {i.key for i in local.list()} == {"data/ab/ab01"}
