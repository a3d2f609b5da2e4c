"""Backend URLs: scheme dispatch, lazy remote imports, and secret redaction."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend import Backend, registry
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.backend.registry import RemoteScheme, open_backend, redact_url
from resurgo.errors import BackendError, UsageError

# --- open_backend --------------------------------------------------------------------


def test_plain_absolute_path_opens_a_local_backend(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    assert isinstance(backend, LocalBackend)
    assert backend.url == str(tmp_path / "repo")


def test_relative_path_opens_a_local_backend_at_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("repo")
    assert isinstance(backend, LocalBackend)
    assert backend.url == str(tmp_path / "repo")


@pytest.mark.parametrize("name", ["repo:2024", "c:stuff", "a b:c"])
def test_paths_with_a_colon_are_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend(name)
    assert isinstance(backend, LocalBackend)
    assert backend.url == str(tmp_path / name)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///srv/backup", "/srv/backup"),
        ("file://localhost/srv/backup", "/srv/backup"),
        ("file:/srv/backup", "/srv/backup"),
        ("file:///srv/with%20space", "/srv/with space"),
        ("FILE:///srv/upper", "/srv/upper"),
    ],
)
def test_file_urls_open_a_local_backend(url: str, path: str) -> None:
    backend = open_backend(url)
    assert isinstance(backend, LocalBackend)
    assert backend.url == path


def test_file_url_round_trips_through_the_local_backend(tmp_path: Path) -> None:
    open_backend(f"file://{tmp_path}/repo").put("config", b"cfg")
    assert (tmp_path / "repo" / "config").read_bytes() == b"cfg"


@pytest.mark.parametrize("url", ["file://otherhost/srv/backup", "file:///srv/x?mode=1", "file://"])
def test_file_urls_that_are_not_local_paths_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="file URL"):
        open_backend(url)


def test_memory_url_opens_a_fresh_memory_backend_each_time() -> None:
    first = open_backend("memory://")
    second = open_backend("memory://shared-name")
    assert isinstance(first, MemoryBackend) and isinstance(second, MemoryBackend)
    first.put("config", b"x")
    assert list(second.list()) == []
    assert list(open_backend("memory://").list()) == []


def test_unknown_scheme_is_a_usage_error_listing_the_supported_ones() -> None:
    with pytest.raises(UsageError) as caught:
        open_backend("ftp://admin:hunter2@example.org/backups")
    message = str(caught.value)
    assert "'ftp'" in message
    assert "file, memory, s3, sftp" in message
    assert "hunter2" not in message
    assert "ftp://admin:***@example.org/backups" in message


@pytest.mark.parametrize("url", ["s3:bucket/prefix", "sftp:host/path", "memory:x"])
def test_known_scheme_without_slashes_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="malformed URL"):
        open_backend(url)


@pytest.mark.parametrize("url", ["/srv/backup", "memory://"])
def test_local_backends_refuse_options(url: str) -> None:
    with pytest.raises(UsageError, match="takes no options, got: region"):
        open_backend(url, {"region": "eu"})


def test_remote_schemes_dispatch_to_their_module_function_with_url_and_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received: list[tuple[str, dict[str, str]]] = []
    made = MemoryBackend()

    def from_url(url: str, options: Mapping[str, str]) -> Backend:
        received.append((url, dict(options)))
        return made

    fake = types.ModuleType("fake_s3_backend")
    fake.from_url = from_url  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_s3_backend", fake)
    monkeypatch.setitem(
        registry.REMOTE_SCHEMES, "s3", RemoteScheme("fake_s3_backend:from_url", "s3")
    )
    assert open_backend("s3://key:secret@host/bucket", {"region": "eu"}) is made
    assert received == [("s3://key:secret@host/bucket", {"region": "eu"})]


def test_missing_optional_dependency_names_the_pip_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_dep.py").write_text(
        "import resurgo_no_such_dependency_xyz\n\ndef from_url(url, options):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        registry.REMOTE_SCHEMES, "sftp", RemoteScheme("needs_missing_dep:from_url", "sftp")
    )
    with pytest.raises(BackendError) as caught:
        open_backend("sftp://user:pw@host/repo")
    message = str(caught.value)
    assert "pip install 'resurgo[sftp]'" in message
    assert "resurgo_no_such_dependency_xyz" in message
    assert caught.value.retryable is False


def test_missing_backend_module_says_the_backend_is_not_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        registry.REMOTE_SCHEMES, "s3", RemoteScheme("resurgo_no_such_module_xyz:from_url", "s3")
    )
    with pytest.raises(BackendError, match="s3 backend is not available"):
        open_backend("s3://bucket/prefix")


def test_importing_the_registry_does_not_import_remote_backends() -> None:
    code = textwrap.dedent(
        """
        import sys
        import resurgo.backend.registry
        loaded = [m for m in ("resurgo.backend.s3", "resurgo.backend.sftp", "boto3", "asyncssh")
                  if m in sys.modules]
        print(",".join(loaded))
        """
    )
    src = str(Path(registry.__file__).parents[2])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == ""


# --- redact_url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("sftp://user:pw@host/path", "sftp://user:***@host/path"),
        ("sftp://user@host:2222/path", "sftp://user@host:2222/path"),
        ("sftp://user:p@ss@host/path", "sftp://user:***@host/path"),
        ("s3://AKIA:ab/cd+ef@host:9000/bucket", "s3://AKIA:***@host:9000/bucket"),
        ("s3://AKIA:12/34@host/bucket", "s3://AKIA:***@host/bucket"),
        ("s3://u:pa#ss@host/b", "s3://u:***@host/b"),
        (
            "s3://host/bucket?region=eu&secret_key=abc&token=t&x=1#frag",
            "s3://host/bucket?region=eu&secret_key=***&token=***&x=1#frag",
        ),
        (
            "s3://host/b?AWS_SECRET_ACCESS_KEY=abc&Password=p&sig=s&api-key=k&other=o",
            "s3://host/b?AWS_SECRET_ACCESS_KEY=***&Password=***&sig=***&api-key=***&other=o",
        ),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("/srv/backup", "/srv/backup"),
        ("relative:path", "relative:path"),
        ("memory://", "memory://"),
        ("file:///srv/x", "file:///srv/x"),
        ("", ""),
    ],
)
def test_redact_url_masks_passwords_and_secret_parameters(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


@given(
    scheme=st.sampled_from(["s3", "sftp", "https", "ftp"]),
    user=alnum,
    secret=st.text(
        st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=0, max_size=20
    ),
    host=alnum,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.text("abcdefghij/._-", max_size=20),
)
def test_redacted_urls_never_contain_the_password(
    scheme: str, user: str, secret: str, host: str, port: int | None, path: str
) -> None:
    password = f"PW{secret}"
    authority = f"{host}:{port}" if port is not None else host
    url = f"{scheme}://{user}:{password}@{authority}/{path}"
    redacted = redact_url(url)
    assert password not in redacted
    assert redacted.startswith(f"{scheme}://{user}:***@")


@given(
    name=st.sampled_from(["secret", "access_key", "token", "password", "X-Amz-Signature"]),
    value=alnum,
)
def test_redacted_urls_never_contain_secret_parameter_values(name: str, value: str) -> None:
    marked = f"VAL{value}"
    redacted = redact_url(f"s3://host/bucket?region=eu&{name}={marked}")
    assert marked not in redacted
    assert f"{name}=***" in redacted
