"""Tool adapters: how to drive resurgo, restic and borg through the same steps.

Each adapter turns a *step* (``init``, ``backup``, ``restore``, ``check``,
``check_read_data``) into a command line plus environment, for a tool working on
its own fresh repository, password file and state directory (HOME, XDG dirs and
borg's base dir all point there, so caches never leak between tools or runs).
Encryption is always on and compression is left at each tool's default.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent


@dataclass
class Workspace:
    """One tool's private directories for one benchmark run."""

    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def restore(self) -> Path:
        return self.root / "restore"

    def create(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.state.mkdir(parents=True)
        self.password_file.write_text("correct horse battery staple benchmark\n")
        self.password_file.chmod(0o600)

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RESTIC_", "BORG_", "RESURGO_", "XDG_"))
        }
        env.update(
            HOME=str(self.state),
            XDG_CACHE_HOME=str(self.state / "cache"),
            XDG_CONFIG_HOME=str(self.state / "config"),
            XDG_DATA_HOME=str(self.state / "data"),
            LC_ALL="C.UTF-8",
        )
        return env


@dataclass
class Command:
    argv: list[str]
    cwd: Path | None = None
    precreate_cwd: bool = False


@dataclass
class Tool:
    name: str
    executable: list[str] = field(default_factory=list)
    version: str = ""
    config: str = ""
    problem: str = ""  # non-empty: the tool cannot run; the reason

    def env(self, ws: Workspace) -> dict[str, str]:
        raise NotImplementedError

    def command(self, step: str, ws: Workspace, *, paths: list[Path], label: str) -> Command:
        raise NotImplementedError

    # Restore: commands that write into the target itself must not find it pre-created
    # (resurgo refuses an existing target; borg extracts into its working directory).
    def restore_target(self, ws: Workspace) -> Path:
        return ws.restore


def _run_version(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return (
        text[0]
        if text and out.returncode == 0
        else f"error (exit {out.returncode}): {' '.join(text)[-300:]}"
    )


class Restic(Tool):
    def __init__(self) -> None:
        super().__init__("restic")
        exe = os.environ.get("RESTIC_BIN") or shutil.which("restic")
        if not exe:
            self.problem = "restic not found (apt-get install restic)"
            return
        self.executable = [exe]
        self.version = _run_version([exe, "version"])
        self.config = (
            "repository format v2, compression auto (zstd), AES-256-CTR + Poly1305-AES, "
            "default chunker (512 KiB-8 MiB, avg 1 MiB), default parallelism (GOMAXPROCS = nproc)"
        )

    def env(self, ws: Workspace) -> dict[str, str]:
        env = ws.base_env()
        env.update(RESTIC_REPOSITORY=str(ws.repo), RESTIC_PASSWORD_FILE=str(ws.password_file))
        return env

    def command(self, step: str, ws: Workspace, *, paths: list[Path], label: str) -> Command:
        x = self.executable
        if step == "init":
            return Command([*x, "init", "--repository-version", "2"])
        if step == "backup":
            return Command([*x, "--json", "--quiet", "backup", *map(str, paths)])
        if step == "restore":
            return Command([*x, "restore", "latest", "--target", str(self.restore_target(ws))])
        if step == "check":
            return Command([*x, "check"])
        if step == "check_read_data":
            return Command([*x, "check", "--read-data"])
        raise ValueError(step)


class Borg(Tool):
    def __init__(self) -> None:
        super().__init__("borg")
        venv_borg = BENCH_DIR / "work" / "borg-venv" / "bin" / "borg"
        exe = os.environ.get("BORG_BIN") or (str(venv_borg) if venv_borg.exists() else None)
        exe = exe or shutil.which("borg")
        if not exe:
            self.problem = "borg not found (make -C benchmarks peers)"
            return
        self.executable = [exe]
        self.version = _run_version([exe, "--version"])
        m = re.search(r"(\d+)\.(\d+)", self.version)
        self.major = int(m.group(1)) if m else 1
        origin = "PyPI, benchmarks/work/borg-venv" if exe == str(venv_borg) else exe
        if self.major >= 2:
            enc = "repokey-blake2-aes-ocb"
        else:
            enc = "repokey-blake2 (AES-256-CTR + BLAKE2b)"
        self.config = (
            f"{enc}, default compression lz4, default chunker (buzhash, 512 KiB-8 MiB, "
            f"avg 2 MiB), single-threaded; binary: {origin}"
        )

    def env(self, ws: Workspace) -> dict[str, str]:
        env = ws.base_env()
        env.update(
            BORG_REPO=str(ws.repo),
            BORG_PASSPHRASE=ws.password_file.read_text().strip(),
            BORG_BASE_DIR=str(ws.state),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return env

    def command(self, step: str, ws: Workspace, *, paths: list[Path], label: str) -> Command:
        x = self.executable
        two = self.major >= 2
        archive = label if two else f"::{label}"
        if step == "init":
            if two:
                return Command([*x, "repo-create", "-e", "repokey-blake2-aes-ocb"])
            return Command([*x, "init", "-e", "repokey-blake2"])
        if step == "backup":
            return Command([*x, "create", "--json", archive, *map(str, paths)])
        if step == "restore":
            return Command([*x, "extract", archive], cwd=ws.restore, precreate_cwd=True)
        if step == "check":
            return Command([*x, "check"])
        if step == "check_read_data":
            return Command([*x, "check", "--verify-data"])
        raise ValueError(step)


class Resurgo(Tool):
    """resurgo's restic-like CLI: RESURGO_REPOSITORY / RESURGO_PASSWORD_FILE,
    ``init``, ``backup PATH...``, ``restore latest --target DIR``, ``check
    [--read-data]``. The command defaults to the project's virtualenv running
    ``python -m resurgo.cli.main`` on ``src/``; RESURGO_CMD overrides it
    (e.g. ``RESURGO_CMD=resurgo`` for an installed entry point)."""

    def __init__(self, cmd: str | None = None) -> None:
        super().__init__("resurgo")
        cmd = cmd or os.environ.get("RESURGO_CMD")
        if cmd:
            self.executable = shlex.split(cmd)
            self.pythonpath = ""
        else:
            py = PROJECT_DIR / ".venv" / "bin" / "python"
            self.executable = [str(py), "-m", "resurgo.cli.main"]
            self.pythonpath = str(PROJECT_DIR / "src")
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
            # Bytecode compiled once, before the steps, as `pip install` does: with
            # PYTHONDONTWRITEBYTECODE set (common in development shells) every step
            # would otherwise compile resurgo's ~40 modules again (~50 ms of CPU).
            # (__pycache__/ is ignored by git.)
            subprocess.run(
                [str(py), "-m", "compileall", "-q", str(PROJECT_DIR / "src" / "resurgo")],
                capture_output=True, timeout=300, check=False,
            )
        self.version = _run_version([*self.executable, "--version"], env)
        if self.version.startswith("error"):
            self.problem = f"resurgo CLI not runnable: {self.version}"
            return
        # The CLI may exist before every command does: ask each one for --help.
        missing = []
        for sub in ("init", "backup", "restore", "check"):
            r = subprocess.run(
                [*self.executable, sub, "--help"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            if r.returncode != 0:
                missing.append(sub)
        if missing:
            self.problem = f"resurgo CLI lacks commands: {', '.join(missing)}"
        self.config = "defaults of `resurgo init` (see docs/design.md)"

    def env(self, ws: Workspace) -> dict[str, str]:
        env = ws.base_env()
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        env.update(RESURGO_REPOSITORY=str(ws.repo), RESURGO_PASSWORD_FILE=str(ws.password_file))
        return env

    def command(self, step: str, ws: Workspace, *, paths: list[Path], label: str) -> Command:
        x = [*self.executable, "--json", "--quiet"]
        if step == "init":
            return Command([*x, "init"])
        if step == "backup":
            return Command([*x, "backup", *map(str, paths)])
        if step == "restore":
            return Command([*x, "restore", "latest", "--target", str(self.restore_target(ws))])
        if step == "check":
            return Command([*x, "check"])
        if step == "check_read_data":
            return Command([*x, "check", "--read-data"])
        raise ValueError(step)


def make_tool(name: str, resurgo_cmd: str | None = None) -> Tool:
    if name == "restic":
        return Restic()
    if name == "borg":
        return Borg()
    if name == "resurgo":
        return Resurgo(resurgo_cmd)
    raise SystemExit(f"unknown tool {name!r} (choose from resurgo, restic, borg)")
