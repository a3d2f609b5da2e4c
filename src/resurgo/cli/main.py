"""The ``resurgo`` command: argument parsing, dispatch, and the error-to-exit-code rule.

Every command group lives in its own module ``resurgo.cli.cmd_<group>`` that
exposes ``register(subparsers)``; registering a new group is one line in
``COMMANDS`` below (the module and the command names it registers). A
registered parser sets ``func`` to a ``run(args, ctx) -> int`` function (see
``resurgo.cli.context.Context``).

Start-up: a run imports and registers only the module of the command it was
given (``_command_in``); ``--help`` without a command, and anything the scan
cannot tell, gets the full parser. Every command would otherwise pay for
importing and building all the others (~15 ms of CPU; docs/design.md,
"Start-up").

Errors: a ``ResurgoError`` becomes one line ``resurgo: error: <message>`` on
stderr and its ``exit_code``; Ctrl-C (or SIGTERM) exits 130; anything else is a
bug: one line, the traceback only with ``-v``, exit 1. In ``--json`` mode the
final summary object on stdout carries the same exit code and message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType, ModuleType

from resurgo import __version__
from resurgo.cli.context import Context
from resurgo.cli.memory import limit_malloc_arenas
from resurgo.cli.parsing import GLOBAL_OPTIONS_WITH_VALUE, add_global_options, exit_codes_epilog
from resurgo.cli.render import Renderer
from resurgo.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, ResurgoError

# The command groups, in the order `resurgo --help` lists them. One line each:
# the module in resurgo.cli and the top-level commands its register() adds.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cmd_init", ("init",)),
    ("cmd_backup", ("backup",)),
    ("cmd_snapshots", ("snapshots",)),
    ("cmd_browse", ("ls", "diff", "find", "stats")),
    ("cmd_restore", ("restore",)),
    ("cmd_dump", ("dump",)),
    ("cmd_check", ("check",)),
    ("cmd_forget", ("forget",)),
    ("cmd_prune", ("prune",)),
    ("cmd_repair", ("repair",)),
    ("cmd_key", ("key",)),
    ("cmd_copy", ("copy",)),
    ("cmd_backend", ("backend",)),
    ("cmd_plan", ("plan",)),
    ("cmd_run", ("run",)),
    ("cmd_daemon", ("daemon",)),
    ("cmd_status", ("status",)),
)
_MODULE_OF = {name: module for module, names in COMMANDS for name in names}


def command_module(module: str) -> ModuleType:
    return importlib.import_module(f"resurgo.cli.{module}")


def _command_in(argv: Sequence[str]) -> str | None:
    """The command name in ``argv`` (skipping global options and their values), or None.

    None whenever the scan is not sure (an option it does not know, ``--``, a
    word that is no command): the caller then builds the full parser, which
    parses (or rejects) the line exactly as it always did.
    """
    longs = [o for o in GLOBAL_OPTIONS_WITH_VALUE if o.startswith("--")]
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return None
        if token.startswith("--"):
            name, eq, _ = token.partition("=")
            # argparse accepts unambiguous prefixes of long options.
            matches = [o for o in longs if o.startswith(name)]
            if name in longs or len(matches) == 1:
                i += 1 if eq else 2
                continue
            if any(o.startswith(name) for o in ("--help", "--version", "--json", "--quiet",
                                                  "--verbose", "--no-cache")):
                i += 1
                continue
            return None
        if token.startswith("-") and len(token) > 1:
            # A cluster of short options: flags, possibly ending in one that
            # takes a value (-qr URL) or holds it (-rURL).
            for pos, letter in enumerate(token[1:], start=1):
                if f"-{letter}" in GLOBAL_OPTIONS_WITH_VALUE:
                    i += 1 if pos < len(token) - 1 else 2
                    break
                if letter not in "hqv":
                    return None
            else:
                i += 1
            continue
        return token if token in _MODULE_OF else None
    return None

_log = logging.getLogger("resurgo")

_ENVIRONMENT = """\
environment:
  RESURGO_REPOSITORY        repository location, when --repo is not given
  RESURGO_PASSWORD_FILE     file holding the password, when --password-file is not given
  RESURGO_PASSWORD_COMMAND  command printing the password, when --password-command is not given
  RESURGO_PASSWORD          the password itself
  XDG_DATA_HOME             default repository: $XDG_DATA_HOME/resurgo/repository
  XDG_CACHE_HOME            default cache: $XDG_CACHE_HOME/resurgo
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``resurgo`` parser: every command, or with ``command`` only its group's."""
    parser = argparse.ArgumentParser(
        prog="resurgo",
        description="Deduplicating, encrypted backups and disaster recovery.",
        epilog=_ENVIRONMENT + "\n" + exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resurgo {__version__}")
    add_global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    for module, _ in COMMANDS:
        if command is None or _MODULE_OF[command] == module:
            command_module(module).register(subparsers)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _logging(verbose: int) -> Iterator[None]:
    """Engine log records on stderr: warnings by default, info with -v, debug with -vv."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    old_level = _log.level
    _log.addHandler(handler)
    _log.setLevel(level)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(old_level)


def main(argv: list[str] | None = None) -> int:
    """Run one ``resurgo`` command; returns the process exit code."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_in(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's own usage error
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    verbose = args.verbose or 0
    out = Renderer(
        json_mode=bool(args.json),
        quiet=bool(args.quiet),
        verbose=verbose,
        stdout=sys.stdout,
        stderr=sys.stderr,
        command=getattr(args, "command", args.command_name),
    )
    ctx = Context(args, os.environ, out, interactive=_isatty(sys.stdin))
    error: str | None = None
    with _logging(verbose), _sigterm_as_interrupt():
        try:
            try:
                code = int(args.func(args, ctx))
            finally:
                ctx.close()
        except ResurgoError as e:
            error = _one_line(str(e))
            code = e.exit_code
            print(f"resurgo: error: {error}", file=sys.stderr)
        except (KeyboardInterrupt, _Terminated):
            error = "interrupted"
            code = EXIT_INTERRUPTED
            print("resurgo: interrupted", file=sys.stderr)
        except Exception as e:
            error = _one_line(f"{type(e).__name__}: {e}")
            code = EXIT_FAILURE
            print(f"resurgo: unexpected error: {error}", file=sys.stderr)
            if verbose:
                traceback.print_exc(file=sys.stderr)
            else:
                print("resurgo: run with -v for the traceback", file=sys.stderr)
    out.finish(code, error)
    return code


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def entry_point() -> None:
    # Before any worker thread exists (see cli/memory.py for the measurements).
    limit_malloc_arenas()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
