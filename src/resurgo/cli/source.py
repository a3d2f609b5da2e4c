"""The *source repository* of ``copy`` and ``init --copy-chunker-params-from``: options and opening.

A second repository, next to the one the global options name, needs its own
location, password and backend options. Its password comes from the same kind
of sources as the main one, under ``from`` names, in this order:
``--from-password-file``, ``--from-password-command``,
``$RESURGO_FROM_PASSWORD_FILE``, ``$RESURGO_FROM_PASSWORD_COMMAND``,
``$RESURGO_FROM_PASSWORD``, then a prompt on a terminal. The source is always
opened read-only: copying never writes to it.
"""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

from resurgo.cli.context import Context
from resurgo.cli.parsing import key_value
from resurgo.cli.passwords import PasswordSources, resolve_password
from resurgo.errors import UsageError

if TYPE_CHECKING:
    from resurgo.repo import Repository

_MAIN_PASSWORD_VARS = ("RESURGO_PASSWORD", "RESURGO_PASSWORD_FILE", "RESURGO_PASSWORD_COMMAND")

ENVIRONMENT_HELP = """\
source repository environment:
  RESURGO_FROM_REPOSITORY        source location, when --from-repo is not given
  RESURGO_FROM_PASSWORD_FILE     file holding the source password
  RESURGO_FROM_PASSWORD_COMMAND  command printing the source password
  RESURGO_FROM_PASSWORD          the source password itself
"""


def add_source_options(p: argparse.ArgumentParser, *, with_location: bool) -> None:
    """``--from-repo`` (when ``with_location``), the source password and backend options."""
    g = p.add_argument_group("source repository")
    if with_location:
        g.add_argument("--from-repo", metavar="URL",
                       help="the repository to copy from (default: $RESURGO_FROM_REPOSITORY)")
    g.add_argument("--from-password-file", metavar="FILE",
                   help="read the source password from the first line of FILE "
                   "(default: $RESURGO_FROM_PASSWORD_FILE)")
    g.add_argument("--from-password-command", metavar="CMD",
                   help="run CMD and use the first line of its output as the source password "
                   "(default: $RESURGO_FROM_PASSWORD_COMMAND)")
    g.add_argument("--from-option", metavar="KEY=VALUE", action="append", type=key_value,
                   default=[], dest="from_options",
                   help="backend option for the source (repeatable), e.g. "
                   "--from-option s3.region=eu-west-1")


def source_url(args: argparse.Namespace, ctx: Context) -> str:
    url: str | None = getattr(args, "from_repo", None) or ctx.env.get("RESURGO_FROM_REPOSITORY")
    if not url:
        raise UsageError("no source repository: give --from-repo URL or set RESURGO_FROM_REPOSITORY")
    return url


def source_password(args: argparse.Namespace, ctx: Context) -> str:
    # The main repository's variables are hidden and the source's take their
    # names, so the one resolver applies the same order and rules to both (a
    # password command still runs with the rest of the environment).
    env = {k: v for k, v in ctx.env.items() if k not in _MAIN_PASSWORD_VARS}
    for name in _MAIN_PASSWORD_VARS:
        value = ctx.env.get(name.replace("RESURGO_", "RESURGO_FROM_", 1))
        if value is not None:
            env[name] = value
    sources = PasswordSources(
        file=args.from_password_file,
        command=args.from_password_command,
        env=env,
        interactive=ctx.interactive,
        prompt=getpass.getpass,
    )
    return resolve_password(sources, label="source repository password")


def open_source(args: argparse.Namespace, ctx: Context, url: str) -> Repository:
    """The source repository, read-only, with its own cache directory under the shared root."""
    from resurgo.session import open_repo

    password = source_password(args, ctx)
    return open_repo(
        url,
        password,
        cache_dir=ctx.cache_dir,
        options=dict(args.from_options or []),
        read_only=True,
    )
