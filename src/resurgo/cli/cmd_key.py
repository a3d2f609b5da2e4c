"""``resurgo key``: list, add and remove the key files that open a repository, or change
the password of the current one.

Every key file wraps the same master key, so these commands never re-encrypt data.
"""

from __future__ import annotations

import argparse
from typing import Any

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command, add_subcommands
from resurgo.cli.render import Column, format_time
from resurgo.errors import EXIT_OK

_SHORT_ID = 8


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers,
        "key",
        help="manage the keys (passwords) of a repository",
        description="List, add and remove the keys of a repository, or change the password "
        "of the key in use. Each key is one password that opens the repository.",
    )
    sub = add_subcommands(group, dest="key_command")

    p = add_command(sub, "list", help="list the keys of the repository")
    p.set_defaults(func=run_list)

    p = add_command(
        sub, "add",
        help="add a key with a new password",
        description="Add a key with a new password. The new password comes from "
        "--new-password-file, or is asked for twice on a terminal.",
    )
    _new_password_option(p)
    p.add_argument("--hostname", help="host name recorded in the key (default: this host)")
    p.add_argument("--username", help="user name recorded in the key (default: this user)")
    p.set_defaults(func=run_add)

    p = add_command(
        sub, "remove",
        help="remove a key",
        description="Remove the key whose ID starts with KEY_ID. The key in use (the one "
        "the given password opens) cannot be removed.",
    )
    p.add_argument("key_id", metavar="KEY_ID", help="key ID or unique prefix")
    p.set_defaults(func=run_remove)

    p = add_command(
        sub, "passwd",
        help="change the password of the key in use",
        description="Change the password of the key in use: a new key is written with the "
        "new password, then the old one is removed. The new password comes from "
        "--new-password-file, or is asked for twice on a terminal.",
    )
    _new_password_option(p)
    p.set_defaults(func=run_passwd)


def _new_password_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--new-password-file", metavar="FILE",
        help="read the new password from the first line of FILE",
    )


def _short(key_id: str) -> str:
    return key_id[:_SHORT_ID]


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=False)
    keys = sorted(repo.list_keys(), key=lambda k: (k.created, k.id))
    records: list[dict[str, Any]] = [
        {
            "id": k.id,
            "current": k.current,
            "username": k.username,
            "hostname": k.hostname,
            "created": k.created,
        }
        for k in keys
    ]
    ctx.out.listing(
        "key",
        records,
        [
            Column(" ", "current", lambda c: "*" if c else ""),
            Column("ID", "id", _short),
            Column("User", "username"),
            Column("Host", "hostname"),
            Column("Created", "created", format_time),
        ],
    )
    ctx.out.summary(keys=len(records))
    return EXIT_OK


def run_add(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=True)
    new_password = ctx.new_password(args.new_password_file)
    key_id = repo.add_key(
        new_password, kdf=ctx.kdf(), hostname=args.hostname, username=args.username
    )
    ctx.out.message(f"added key {_short(key_id)}")
    ctx.out.summary(key_id=key_id)
    return EXIT_OK


def run_remove(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=True)
    key_id = repo.remove_key(args.key_id)
    ctx.out.message(f"removed key {_short(key_id)}")
    ctx.out.summary(key_id=key_id)
    return EXIT_OK


def run_passwd(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo(write=True)
    new_password = ctx.new_password(args.new_password_file)
    key_id = repo.change_password(new_password, kdf=ctx.kdf())
    ctx.out.message(f"changed the password; the key in use is now {_short(key_id)}")
    ctx.out.summary(key_id=key_id)
    return EXIT_OK
