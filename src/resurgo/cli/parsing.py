"""Command-line grammar shared by every command: global options, help layout, value types.

A *command group* (``resurgo key ...``) or *command* (``resurgo init``) gets its
parser from ``add_command``, which gives it the same global options as the top
level (so ``resurgo init -r X`` and ``resurgo -r X init`` both work) and the
exit-code table as the epilog of its ``--help``.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any

from resurgo.errors import EXIT_CODES

Subparsers = Any  # argparse's _SubParsersAction is private; this is what add_subparsers returns


def exit_codes_epilog() -> str:
    lines = ["exit codes:"]
    lines.extend(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
    return "\n".join(lines)


def wrap_paragraphs(text: str, width: int = 79) -> str:
    """Fill each paragraph of ``text`` to ``width``; indented lines (examples) stay as written.

    Help is printed with ``RawDescriptionHelpFormatter`` so the exit-code table
    keeps its layout; that formatter does not wrap descriptions, so we do.
    """
    out: list[str] = []
    for para in text.strip("\n").split("\n\n"):
        if any(line.startswith((" ", "\t")) for line in para.splitlines()):
            out.append(para)
        else:
            out.append(textwrap.fill(" ".join(para.split()), width))
    return "\n\n".join(out)


# Global options that take a value (main.py skips them when it looks for the command name).
GLOBAL_OPTIONS_WITH_VALUE = (
    "-r", "--repo", "--password-file", "--password-command", "--cache-dir", "-o", "--option",
)


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command accepts. ``suppress``: leave unset values alone.

    Subcommand parsers use ``suppress=True`` so an option given before the
    command name is not reset to its default by the subcommand's parser.
    """

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument(
        "-r", "--repo", metavar="URL", default=d(None),
        help="repository location (default: $RESURGO_REPOSITORY, "
        "else $XDG_DATA_HOME/resurgo/repository)",
    )
    g.add_argument(
        "--password-file", metavar="FILE", default=d(None),
        help="read the password from the first line of FILE (default: $RESURGO_PASSWORD_FILE)",
    )
    g.add_argument(
        "--password-command", metavar="CMD", default=d(None),
        help="run CMD and use the first line of its output as the password "
        "(default: $RESURGO_PASSWORD_COMMAND)",
    )
    g.add_argument(
        "--json", action="store_true", default=d(False),
        help="print JSON lines on stdout, ending with a summary object",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", default=d(False),
        help="print only results, warnings and errors",
    )
    g.add_argument(
        "-v", "--verbose", action="count", default=d(0),
        help="more detail; tracebacks for unexpected errors (repeat for debug logging)",
    )
    g.add_argument(
        "--cache-dir", metavar="DIR", default=d(None),
        help="local cache directory (default: $XDG_CACHE_HOME/resurgo)",
    )
    g.add_argument(
        "--no-cache", action="store_true", default=d(False), help="use no local cache"
    )
    g.add_argument(
        "-o", "--option", metavar="KEY=VALUE", action="append", type=key_value,
        default=d(None), dest="options",
        help="backend option (repeatable), e.g. -o s3.region=eu-west-1",
    )


def add_command(
    subparsers: Subparsers,
    name: str,
    *,
    help: str,
    description: str | None = None,
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """A parser for one command or command group, with global options and the exit codes.

    The parser's ``command`` default is its full name (``"key add"``), used in
    the JSON summary.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        aliases=list(aliases),
        help=help,
        description=wrap_paragraphs(description or help),
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser, suppress=True)
    parser.set_defaults(command=parser.prog.split(" ", 1)[-1])
    return parser


def add_subcommands(parser: argparse.ArgumentParser, *, dest: str) -> Subparsers:
    """Subcommands of a command group (``resurgo key list``); one is required."""
    return parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)


# --- value types ----------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """A byte count: ``4096``, ``512K``, ``16MiB``, ``1.5G`` (binary multiples)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512K, 16MiB)")
    return int(float(m.group(1)) * _FACTORS[m.group(2).lower()])


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value
