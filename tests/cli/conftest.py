"""Fixtures for CLI tests: an isolated environment and helpers that run ``resurgo``.

Every test gets its own HOME and XDG directories under ``tmp_path``, no
repository or password settings from the outside, and the weak test KDF, so
the default repository location is safe to use and key files are cheap.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import pytest

from resurgo.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"
PASSWORD = "correct horse battery staple"
_CLEARED = (
    "RESURGO_REPOSITORY",
    "RESURGO_PASSWORD",
    "RESURGO_PASSWORD_FILE",
    "RESURGO_PASSWORD_COMMAND",
    "RESURGO_TEST_FAULTS",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
)


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """HOME and XDG dirs in tmp, nothing inherited that points at a real repository."""
    home = tmp_path / "home"
    home.mkdir()
    dirs = {
        "HOME": home,
        "XDG_DATA_HOME": tmp_path / "xdg-data",
        "XDG_CACHE_HOME": tmp_path / "xdg-cache",
    }
    for name, path in dirs.items():
        monkeypatch.setenv(name, str(path))
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESURGO_TEST_WEAK_KDF", "1")
    return dirs


class _TTYInput(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def _environment(env: Mapping[str, str | None] | None) -> Iterator[None]:
    """Apply ``env`` on top of os.environ for one run (``None`` removes a variable)."""
    with mock.patch.dict(os.environ):
        for name, value in (env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield


def run_cli(
    *args: str,
    input: str | None = None,
    env: Mapping[str, str | None] | None = None,
    prompts: Sequence[str] | None = None,
) -> Result:
    """Run ``main(args)`` in-process; returns (exit code, stdout, stderr).

    ``env`` overrides environment variables for this run. ``prompts`` makes
    stdin look like a terminal and answers password prompts in order; a run
    that asks more often than there are answers fails the test.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin: io.StringIO = _TTYInput(input or "") if prompts is not None else io.StringIO(input or "")
    answers = list(prompts or [])

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        assert answers, f"unexpected password prompt {prompt!r}"
        return answers.pop(0)

    with (
        _environment(env),
        mock.patch.object(sys, "stdin", stdin),
        mock.patch.object(getpass, "getpass", fake_getpass),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        code = main(list(args))
    return Result(code, stdout.getvalue(), stderr.getvalue())


def run_cli_subprocess(
    *args: str,
    input: str | None = None,
    env: Mapping[str, str | None] | None = None,
    module: str = "resurgo",
    timeout: float = 60,
) -> Result:
    """Run ``python -m resurgo args`` in a child process with the current environment."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC), child_env.get("PYTHONPATH", "")) if p
    )
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=input or "",
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def password_env() -> dict[str, str | None]:
    return {"RESURGO_PASSWORD": PASSWORD}


@pytest.fixture
def initialized_repo(repo_path: Path, password_env: dict[str, str | None]) -> Path:
    """A fresh repository at ``repo_path`` with password ``PASSWORD``."""
    result = run_cli("-r", str(repo_path), "init", env=password_env)
    assert result.code == 0, result
    return repo_path
