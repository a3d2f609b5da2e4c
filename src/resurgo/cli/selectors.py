"""Naming snapshots on the command line: ID prefixes, ``latest`` and the filters.

``--host``, ``--path`` and ``--tag`` narrow the set a command looks at; they
apply to ``latest`` and to listings. Commands share these helpers so every
command reads snapshot references the same way.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resurgo.repo import Repository
    from resurgo.snapshot.model import Snapshot


def add_filter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("snapshot filters")
    g.add_argument("--host", action="append", default=[], metavar="HOST",
                   help="only snapshots of this host (repeatable)")
    g.add_argument("--path", action="append", default=[], metavar="PATH", dest="filter_paths",
                   help="only snapshots of exactly these backed-up paths (repeatable)")
    g.add_argument("--tag", action="append", default=[], metavar="TAG", dest="filter_tags",
                   help="only snapshots carrying this tag (repeatable: all must match)")


def resolve(repo: Repository, ref: str, args: argparse.Namespace) -> Snapshot:
    """The snapshot named by ``ref`` (ID prefix or ``latest``) under the filters."""
    from resurgo.snapshot.store import find_snapshot

    return find_snapshot(
        repo, ref, hosts=args.host, paths=args.filter_paths, tags=args.filter_tags
    )


def selected(repo: Repository, args: argparse.Namespace) -> list[Snapshot]:
    from resurgo.snapshot.store import filter_snapshots, list_snapshots

    return filter_snapshots(
        list_snapshots(repo), args.host, args.filter_paths, args.filter_tags
    )


def split_ref(text: str) -> tuple[str, bytes]:
    """``SNAPSHOT[:PATH]`` -> (snapshot ref, path inside it)."""
    ref, _, path = text.partition(":")
    return ref, path.encode("utf-8", "surrogateescape") if path else b""
