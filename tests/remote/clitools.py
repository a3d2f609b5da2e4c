"""Running ``resurgo`` against the test servers: environments, in-process and child-process runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import resurgo
from resurgo.cli.main import main
from resurgo.testing.servers import SeaweedS3, SSHServer

SRC = Path(resurgo.__file__).resolve().parents[1]

# Nothing from the outside may point a test at a real repository or account.
_DROP = (
    "RESURGO_REPOSITORY", "RESURGO_PASSWORD", "RESURGO_PASSWORD_FILE", "RESURGO_PASSWORD_COMMAND",
    "RESURGO_FROM_REPOSITORY", "RESURGO_FROM_PASSWORD", "RESURGO_FROM_PASSWORD_FILE",
    "RESURGO_FROM_PASSWORD_COMMAND", "RESURGO_TEST_FAULTS", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
)


class Result(NamedTuple):
    code: int
    out: str
    err: str


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: own HOME and cache, no AWS files, the weak test KDF."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        RESURGO_TEST_WEAK_KDF="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def s3_env(server: SeaweedS3, bucket: str, prefix: str, home: Path, **extra: str) -> dict[str, str]:
    """The repository in ``bucket``/``prefix``, credentials from the standard AWS variables."""
    settings = {
        "RESURGO_REPOSITORY": server.url(bucket, prefix),
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    return base_env(home, **(settings | extra))


def sftp_args(server: SSHServer, known_hosts: Path, prefix: str = "") -> list[str]:
    """``-o`` options for an SFTP repository (``prefix``: ``from-`` style for a copy source)."""
    flag = "--from-option" if prefix else "-o"
    return [flag, f"identity_file={server.client_key}", flag, f"known_hosts={known_hosts}"]


def run(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 300) -> Result:
    """``python -m resurgo args`` in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "resurgo", *args], env=dict(env), capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def spawn(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "resurgo", *args], env=dict(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, clear=True):
        os.environ.update(env)
        yield


def run_here(args: Sequence[str], env: Mapping[str, str]) -> Result:
    """``resurgo args`` in this process (faster; same code path as the child)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        _environ(env),
        mock.patch.object(sys, "stdin", io.StringIO("")),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(list(args))
    return Result(code, out.getvalue(), err.getvalue())


def one_error_line(err: str) -> str:
    """The single ``resurgo: error:`` line a failed command prints (and nothing else)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("resurgo: error: "), err
    assert "Traceback" not in err
    return lines[0]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative path -> content)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }
