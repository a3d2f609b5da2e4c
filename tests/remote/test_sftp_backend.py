"""SFTPBackend against a real OpenSSH sshd: the contract suite, host keys, permissions, faults."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resurgo.backend.registry import open_backend
from resurgo.backend.sftp import TMP_MARKER, SFTPBackend, from_url
from resurgo.backend.wrappers import RetryBackend
from resurgo.errors import (
    BackendError,
    BackendFull,
    BackendPermissionError,
    BackendUnavailable,
    ObjectNotFound,
    UsageError,
)
from resurgo.testing import servers
from resurgo.testing.contract import BackendContract, MiB, payload
from resurgo.testing.servers import LoopMount, SSHServer

from .conftest import make_sftp_backend


class TestSFTPBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, sftp: SFTPBackend) -> SFTPBackend:
        return sftp


def _files_on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --- URLs and layout -------------------------------------------------------------


def test_registry_opens_sftp_urls_and_keys_are_plain_files(
    sshd: SSHServer, sftp_root: Path, known_hosts: Path
) -> None:
    options = {f"sftp.{name}": value for name, value in sshd.options(known_hosts).items()}
    options["s3.region"] = "ignored: meant for another backend"
    backend = open_backend(sshd.url(sftp_root), options)
    try:
        assert isinstance(backend, SFTPBackend)
        assert backend.url == f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{sftp_root}"
        backend.put("data/ab/abcd", b"pack bytes")
        backend.put("config", b"cfg")
        backend.put("config", b"cfg2")
        backend.put("locks/l1", b"lock", create_only=True)
    finally:
        backend.close()
    assert (sftp_root / "data" / "ab" / "abcd").read_bytes() == b"pack bytes"
    assert (sftp_root / "config").read_bytes() == b"cfg2"
    # Temporary files were renamed or removed, none is left behind.
    assert _files_on_disk(sftp_root) == {"data/ab/abcd", "config", "locks/l1"}


@pytest.mark.parametrize(
    ("url", "root", "shown"),
    [
        (
            "sftp://backup@nas.example:2222/srv/repo/",
            "/srv/repo",
            "sftp://backup@nas.example:2222/srv/repo",
        ),
        ("sftp://nas.example/~/repo", "repo", "sftp://nas.example/~/repo"),
        ("sftp://nas.example", "", "sftp://nas.example/~"),
        ("sftp://u@[::1]:22/r", "/r", "sftp://u@[::1]/r"),
    ],
)
def test_url_forms_map_to_a_root_directory(url: str, root: str, shown: str) -> None:
    backend = from_url(url, {})
    try:
        assert backend.root == root
        assert backend.url == shown
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("sftp://user:hunter2@host/path", {}),
        ("sftp://host/path?identity_file=/k", {}),
        ("sftp:///path", {}),
        ("sftp://host/path", {"colour": "blue"}),
        ("sftp://host/path", {"accept_new_host_key": "perhaps"}),
    ],
)
def test_bad_urls_and_options_are_usage_errors(url: str, options: dict[str, str]) -> None:
    with pytest.raises(UsageError) as caught:
        from_url(url, options)
    assert "hunter2" not in str(caught.value)


# --- host keys ---------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_a_clear_message(
    sshd: SSHServer, sftp_root: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    backend = make_sftp_backend(sshd, sftp_root, empty)
    try:
        with pytest.raises(BackendPermissionError) as caught:
            backend.put("config", b"x")
    finally:
        backend.close()
    assert caught.value.retryable is False
    assert "not in" in str(caught.value) and "accept_new_host_key" in str(caught.value)
    assert empty.read_text() == ""
    assert _files_on_disk(sftp_root) == set()


def test_changed_host_key_is_refused_even_when_new_keys_are_accepted(
    sshd: SSHServer, sftp_root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        capture_output=True,
    )
    impostor = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known = sshd.write_known_hosts(tmp_path / "known_hosts", public_key=impostor)
    before = known.read_text()
    backend = make_sftp_backend(sshd, sftp_root, known, accept_new_host_key=True)
    try:
        with pytest.raises(BackendPermissionError) as caught:
            backend.get("config")
    finally:
        backend.close()
    assert caught.value.retryable is False
    assert "CHANGED" in str(caught.value)
    assert known.read_text() == before


def test_accept_new_host_key_records_the_key_and_trusts_it_afterwards(
    sshd: SSHServer, sftp_root: Path, tmp_path: Path
) -> None:
    known = tmp_path / "ssh" / "known_hosts"  # neither the file nor its directory exist
    first = make_sftp_backend(sshd, sftp_root, known, accept_new_host_key=True)
    try:
        first.put("config", b"tofu")
    finally:
        first.close()
    assert known.read_text() == sshd.known_hosts_line()
    second = make_sftp_backend(sshd, sftp_root, known)  # no longer needs the flag
    try:
        assert second.get("config") == b"tofu"
    finally:
        second.close()
    assert known.read_text() == sshd.known_hosts_line()


def test_login_with_an_unauthorised_key_is_a_permission_error(
    sshd: SSHServer, sftp_root: Path, known_hosts: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        capture_output=True,
    )
    backend = make_sftp_backend(sshd, sftp_root, known_hosts, identity_file=stranger)
    try:
        with pytest.raises(BackendPermissionError) as caught:
            backend.stat("config")
    finally:
        backend.close()
    assert caught.value.retryable is False
    assert "login refused" in str(caught.value)


# --- permissions and space ---------------------------------------------------------


def test_read_only_directory_gives_a_permission_error(sftp: SFTPBackend, sftp_root: Path) -> None:
    sftp.put("config", b"readable")
    sftp.put("data/ab/pack", b"pack")
    sftp_root.chmod(0o555)
    (sftp_root / "data" / "ab").chmod(0o555)
    try:
        for key in ("keys/k1", "config", "data/ab/other"):
            with pytest.raises(BackendPermissionError) as caught:
                sftp.put(key, b"new")
            assert caught.value.retryable is False
        assert sftp.get("config") == b"readable"
        (sftp_root / "config").chmod(0o000)
        with pytest.raises(BackendPermissionError):
            sftp.get("config")
    finally:
        sftp_root.chmod(0o755)
        (sftp_root / "data" / "ab").chmod(0o755)
        (sftp_root / "config").chmod(0o644)
    assert _files_on_disk(sftp_root) == {"config", "data/ab/pack"}


@pytest.fixture
def small_disk(sshd: SSHServer) -> Iterator[Path]:
    mount = LoopMount(
        sshd.workdir / "roots" / f"small-{secrets.token_hex(3)}", 8 * MiB, owner=sshd.user
    )
    mount.mount()
    try:
        yield mount.mountpoint
    finally:
        mount.unmount()
        mount.mountpoint.rmdir()


def test_full_disk_is_a_permanent_error_and_leaves_no_partial_objects(
    sshd: SSHServer, small_disk: Path, known_hosts: Path
) -> None:
    backend = make_sftp_backend(sshd, small_disk, known_hosts)
    stored: dict[str, bytes] = {}
    try:
        with pytest.raises(BackendError) as caught:
            for n in range(20):  # 20 MiB into an 8 MiB filesystem
                key = f"data/{n:02x}/pack{n}"
                data = payload(MiB, seed=n)
                backend.put(key, data)
                stored[key] = data
        err = caught.value
        assert isinstance(err, BackendFull), f"{type(err).__name__}: {err}"
        assert err.retryable is False
        assert "no space left" in str(err)
        assert 3 <= len(stored) < 8
        listed = {info.key: info.size for info in backend.list()}
        assert listed == {key: MiB for key in stored}
        for key, data in stored.items():
            assert backend.get(key) == data
    finally:
        backend.close()
    leftovers = [p for p in small_disk.rglob("*") if TMP_MARKER in p.name]
    assert leftovers == []


# --- connection faults ---------------------------------------------------------------


def test_dropped_connection_is_retryable_and_the_next_call_reconnects(
    sshd: SSHServer, sftp: SFTPBackend
) -> None:
    sftp.put("snapshots/s1", b"before")
    assert sshd.kill_sessions() >= 1
    with pytest.raises(BackendUnavailable) as caught:
        sftp.get("snapshots/s1")
    assert caught.value.retryable is True
    assert sftp.get("snapshots/s1") == b"before"
    sftp.put("snapshots/s2", b"after")
    assert {info.key for info in sftp.list()} == {"snapshots/s1", "snapshots/s2"}


def test_killed_server_is_unavailable_until_it_comes_back(
    sshd: SSHServer, sftp: SFTPBackend
) -> None:
    sftp.put("index/i1", b"index")
    sshd.kill()
    try:
        calls = [
            lambda: sftp.get("index/i1"),
            lambda: sftp.stat("index/i1"),
            lambda: sftp.put("index/i2", b"x"),
            lambda: list(sftp.list()),
            lambda: sftp.delete("index/i1"),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as caught:
                call()
            assert caught.value.retryable is True
    finally:
        sshd.start()
    assert sftp.get("index/i1") == b"index"


def test_connection_lost_mid_upload_leaves_no_visible_partial_object(
    sshd: SSHServer, sftp: SFTPBackend
) -> None:
    data = payload(48 * MiB, seed=7)
    outcome: list[BaseException | None] = []
    assert list(sftp.list()) == []  # connected, so the drop hits the upload itself

    def upload() -> None:
        try:
            sftp.put("data/77/big", data)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.05)
    sshd.kill_sessions()
    thread.join(60)
    assert len(outcome) == 1
    if outcome[0] is not None:
        assert isinstance(outcome[0], BackendUnavailable), repr(outcome[0])
    listed = {info.key: info.size for info in sftp.list()}
    if outcome[0] is None:
        assert listed == {"data/77/big": len(data)}
        assert sftp.get("data/77/big") == data
    else:
        # Either the rename never happened, or it did just before the drop;
        # never a partial object.
        assert listed in ({}, {"data/77/big": len(data)})
        if listed:
            assert sftp.get("data/77/big") == data
        else:
            with pytest.raises(ObjectNotFound):
                sftp.get("data/77/big")


def test_retry_backend_rides_out_a_dropped_connection(sshd: SSHServer, sftp: SFTPBackend) -> None:
    sftp.put("keys/k", b"key file")
    retries: list[str] = []
    backend = RetryBackend(
        sftp,
        base_delay=0.01,
        max_delay=0.1,
        on_retry=lambda verb, key, attempt, err, delay: retries.append(type(err).__name__),
    )
    sshd.kill_sessions()
    assert backend.get("keys/k") == b"key file"
    assert retries == ["BackendUnavailable"]


def test_many_threads_share_one_connection(sftp: SFTPBackend, sshd: SSHServer) -> None:
    _wait_for_no_sessions(sshd)  # connections of earlier tests may still be closing

    def worker(i: int) -> None:
        for j in range(5):
            sftp.put(f"data/{i:02x}/p{j}", payload(50_000, seed=i * 10 + j))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(sftp.list("data/"))) == 40
    sessions = _sshd_sessions(sshd)
    assert sessions == 1, f"{sessions} SSH connections for one backend"


def _wait_for_no_sessions(sshd: SSHServer) -> None:
    deadline = time.monotonic() + 5
    while _sshd_sessions(sshd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sshd_sessions(sshd) == 0


def _sshd_sessions(sshd: SSHServer) -> int:
    # Each connection is one direct child of the listener.
    assert sshd._proc is not None
    text = Path(f"/proc/{sshd._proc.pid}/task/{sshd._proc.pid}/children").read_text()
    return len(text.split())


def test_close_disconnects_and_later_calls_fail_cleanly(sftp: SFTPBackend, sshd: SSHServer) -> None:
    sftp.put("config", b"c")
    sftp.close()
    _wait_for_no_sessions(sshd)
    with pytest.raises(BackendError) as caught:
        sftp.get("config")
    assert "closed" in str(caught.value)
    assert os.path.exists(sftp.root)


def test_an_sshd_that_cannot_start_fails_loudly_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "sshd"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = -t ] && exit 0\necho "Bind to port failed" >&2\nexit 255\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(servers, "SSHD", fake)
    server = SSHServer(tmp_path / "work", start_timeout=5)
    with pytest.raises(RuntimeError) as caught:
        server.start()
    assert "did not start" in str(caught.value)
    assert "Bind to port failed" in str(caught.value)
    server.close()
