"""``resurgo init``: create a new, empty repository at the configured location."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command, size
from resurgo.cli.source import add_source_options, open_source
from resurgo.errors import EXIT_OK

if TYPE_CHECKING:
    from resurgo.repo import Repository


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "init",
        help="create a new repository",
        description="Create a new, empty, encrypted repository at --repo (or the default "
        "location) protected by the password from the usual sources; on a terminal the "
        "password is asked for twice.",
    )
    p.add_argument(
        "--pack-size", type=size, metavar="SIZE",
        help="target size of pack files, e.g. 16MiB (default: 32MiB)",
    )
    p.add_argument(
        "--compression", type=int, metavar="LEVEL",
        help="zstd compression level, 0 (off) to 22 (default: 3)",
    )
    p.add_argument(
        "--copy-chunker-params-from", metavar="URL",
        help="share the chunker parameters and blob-ID key of the repository at URL (its "
        "password from --from-password-file and friends), so 'copy' between the two moves "
        "only missing blobs without re-hashing; the encryption key and password stay "
        "separate. See docs/design.md for what this shares.",
    )
    add_source_options(p, with_location=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.repo.config import RepoParams

    params = RepoParams()
    if args.pack_size is not None:
        params = dataclasses.replace(params, pack_size=args.pack_size)
    if args.compression is not None:
        params = dataclasses.replace(params, compression_level=args.compression)
    params.validate()  # before asking for a password

    if args.copy_chunker_params_from:
        repo = _create_sharing_ids(args, ctx)
        try:
            return _report(args, ctx, repo)
        finally:
            repo.close()
    repo = ctx.create_repo(params)
    return _report(args, ctx, repo)


def _create_sharing_ids(args: argparse.Namespace, ctx: Context) -> Repository:
    """A new repository sharing the source's chunker and blob-ID key (``--copy-chunker-params-from``)."""
    from resurgo.repo import Repository
    from resurgo.session import open_backend

    src = open_source(args, ctx, args.copy_chunker_params_from)
    try:
        params = src.config.params  # pack size and compression too, unless given
        if args.pack_size is not None:
            params = dataclasses.replace(params, pack_size=args.pack_size)
        if args.compression is not None:
            params = dataclasses.replace(params, compression_level=args.compression)
        password = ctx.password(confirm=True)
        backend = open_backend(
            ctx.repo_url, options=ctx.backend_options, fault_spec=ctx.fault_spec
        )
        try:
            return Repository.init(
                backend, password, params=params, kdf=ctx.kdf(), cache_dir=ctx.cache_dir,
                chunker_params_from=src,
            )
        except BaseException:
            backend.close()
            raise
    finally:
        src.close()


def _report(args: argparse.Namespace, ctx: Context, repo: Repository) -> int:
    from resurgo.backend.registry import redact_url

    where = redact_url(ctx.repo_url)
    ctx.out.message(f"created repository {repo.config.id} at {where}")
    ctx.out.message(
        "keep the password safe: without it the data in this repository cannot be recovered"
    )
    ctx.out.summary(repository_id=repo.config.id, repository=where)
    return EXIT_OK
