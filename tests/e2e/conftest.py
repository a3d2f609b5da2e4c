"""Fixtures for end-to-end tests: a real repository on disk and the real ``resurgo``
command, run as a child process (``python -m resurgo``) with its environment in tmp.

``cli(*args, expect=0)`` runs one command and checks its exit code (``expect=None``
accepts any); ``cli.json(*args)`` adds ``--json`` and returns the final summary
object as well; ``cli.popen(*args)`` starts one without waiting (to kill it).
Arguments may be ``str`` or ``bytes`` (non-UTF-8 file names).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PASSWORD = "end-to-end password"


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class CLI:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def _argv(self, args: tuple[str | bytes | os.PathLike[str], ...]) -> list[str | bytes]:
        return [sys.executable, "-m", "resurgo",
                *(a if isinstance(a, str | bytes) else os.fspath(a) for a in args)]

    def __call__(self, *args: str | bytes | os.PathLike[str], expect: int | None = 0,
                 env: dict[str, str] | None = None, timeout: float = 600) -> Result:
        proc = subprocess.run(
            self._argv(args), capture_output=True, env={**self.env, **(env or {})},
            timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))
        if expect is not None:
            assert result.code == expect, (
                f"resurgo {args!r} exited {result.code}, expected {expect}\n"
                f"stdout: {result.out[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def json(self, *args: str | bytes | os.PathLike[str], expect: int | None = 0,
             env: dict[str, str] | None = None, timeout: float = 600
             ) -> tuple[Result, dict[str, Any]]:
        """Run with ``--json``; returns the result and the final summary object."""
        result = self("--json", *args, expect=expect, env=env, timeout=timeout)
        lines = [json.loads(line) for line in result.out.splitlines() if line.strip()]
        assert lines and lines[-1]["type"] == "summary", result.out
        return result, lines[-1]

    def popen(self, *args: str | bytes | os.PathLike[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._argv(args), env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def backup(self, *paths: str | bytes | os.PathLike[str]) -> str:
        """Back up ``paths``; returns the new snapshot's ID."""
        _, summary = self.json("backup", *paths)
        assert summary["ok"] and summary["snapshot_id"], summary
        return str(summary["snapshot_id"])


@pytest.fixture
def e2e_env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: repository, password and XDG dirs all in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESURGO_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        RESURGO_REPOSITORY=str(tmp_path / "repo"),
        RESURGO_PASSWORD=PASSWORD,
        RESURGO_TEST_WEAK_KDF="1",
        HOME=str(home),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


@pytest.fixture
def cli(e2e_env: dict[str, str]) -> CLI:
    return CLI(e2e_env)


@pytest.fixture
def repo_dir(cli: CLI, tmp_path: Path) -> Path:
    """An initialised repository (4 MiB packs, so modest data spans several packs)."""
    cli("init", "--pack-size", "4MiB")
    return tmp_path / "repo"


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[list[Path]]:
    """Directories too deep for recursive removal: removed with ``rm -rf`` afterwards."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        subprocess.run(["rm", "-rf", "--", str(p)], check=False)
