"""Password sources: where the CLI finds the repository password, in a fixed order.

1. ``--password-file FILE``         first line of FILE
2. ``--password-command CMD``       first line of CMD's stdout (run without a shell)
3. ``$RESURGO_PASSWORD_FILE``
4. ``$RESURGO_PASSWORD_COMMAND``
5. ``$RESURGO_PASSWORD``
6. an interactive prompt, when stdin is a terminal (twice when a new password
   is being set, to catch typos)

Nothing else: without any of these and without a terminal the command fails
with a usage error rather than blocking. Passwords are never echoed, logged or
put into error messages.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from resurgo.errors import ResurgoError, UsageError

PromptFn = Callable[[str], str]
_COMMAND_TIMEOUT = 120.0  # seconds; a password manager may wait for a hardware token


class PasswordCommandFailed(ResurgoError):
    """The configured password command could not be run or exited non-zero."""


@dataclass(frozen=True)
class PasswordSources:
    file: str | None = None
    command: str | None = None
    env: Mapping[str, str] | None = None
    interactive: bool = False
    prompt: PromptFn = getpass.getpass


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


def read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return first_line(f.read())
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror or e}")
    except UnicodeDecodeError:
        raise UsageError(f"password file {path} is not UTF-8 text")


def run_password_command(command: str, env: Mapping[str, str] | None = None) -> str:
    # Imported here: most runs read a file or a variable (docs/design.md, "Start-up").
    import shlex
    import subprocess

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"cannot parse password command: {e}")
    if not argv:
        raise UsageError("the password command is empty")
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(env) if env is not None else None,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise PasswordCommandFailed(f"password command not found: {argv[0]}")
    except subprocess.TimeoutExpired:
        raise PasswordCommandFailed(f"password command timed out after {_COMMAND_TIMEOUT:.0f}s")
    except OSError as e:
        raise PasswordCommandFailed(f"cannot run password command {argv[0]}: {e.strerror or e}")
    if proc.returncode != 0:
        # The command's stderr may be useful ("vault is sealed"); its stdout may be a secret.
        hint = first_line(proc.stderr.decode("utf-8", "replace").strip())
        detail = f": {hint}" if hint else ""
        raise PasswordCommandFailed(
            f"password command {argv[0]} exited with status {proc.returncode}{detail}"
        )
    try:
        return first_line(proc.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise PasswordCommandFailed("password command printed something that is not UTF-8")


def prompt_password(prompt: PromptFn, label: str, *, confirm: bool) -> str:
    password = prompt(f"{label}: ")
    if confirm and prompt(f"{label} (again): ") != password:
        raise UsageError("the passwords do not match")
    return password


def _nonempty(password: str, source: str) -> str:
    if not password:
        raise UsageError(f"empty password from {source}")
    return password


def resolve_password(src: PasswordSources, *, label: str, confirm: bool = False) -> str:
    """The repository password from the first configured source (see module docstring)."""
    env = src.env or {}
    if src.file and src.command:
        raise UsageError("give either --password-file or --password-command, not both")
    if src.file:
        return _nonempty(read_password_file(src.file), "--password-file")
    if src.command:
        return _nonempty(run_password_command(src.command, src.env), "--password-command")
    if env.get("RESURGO_PASSWORD_FILE"):
        return _nonempty(read_password_file(env["RESURGO_PASSWORD_FILE"]), "RESURGO_PASSWORD_FILE")
    if env.get("RESURGO_PASSWORD_COMMAND"):
        return _nonempty(
            run_password_command(env["RESURGO_PASSWORD_COMMAND"], src.env),
            "RESURGO_PASSWORD_COMMAND",
        )
    if "RESURGO_PASSWORD" in env:
        return _nonempty(env["RESURGO_PASSWORD"], "RESURGO_PASSWORD")
    if src.interactive:
        return _nonempty(prompt_password(src.prompt, label, confirm=confirm), "the prompt")
    raise UsageError(
        "no password given: use --password-file, --password-command, RESURGO_PASSWORD_FILE, "
        "RESURGO_PASSWORD_COMMAND or RESURGO_PASSWORD, or run on a terminal"
    )


def resolve_new_password(src: PasswordSources, *, new_password_file: str | None) -> str:
    """A password being set (``key add``, ``key passwd``): a file, or the prompt twice."""
    if new_password_file:
        return _nonempty(read_password_file(new_password_file), "--new-password-file")
    if src.interactive:
        return _nonempty(
            prompt_password(src.prompt, "new password", confirm=True), "the prompt"
        )
    raise UsageError("no new password given: use --new-password-file or run on a terminal")
