"""``resurgo backend validate``: prove a storage target keeps the backend contract.

The checks run in a fresh scratch prefix of the target and remove what they
wrote (``resurgo.backend.validate``), so validating the location of an
existing repository is safe. Each check is printed as it finishes, then the
verdict: ``ok``, ``warn`` (usable, with a caveat the user should read) or
``fail`` (do not keep a repository there).
"""

from __future__ import annotations

import argparse
from typing import Any

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command, add_subcommands, size
from resurgo.errors import EXIT_BACKEND, EXIT_OK

_EXIT_HELP = f"""\
validate exits with {EXIT_OK} when every check passed or only warned (with
--strict: every check passed) and with {EXIT_BACKEND} when a check failed.
"""


def register(subparsers: Subparsers) -> None:
    group = add_command(subparsers, "backend", help="storage backend tools",
                        description="Tools that work on a storage target itself.")
    commands = add_subcommands(group, dest="backend_command")
    p = add_command(
        commands,
        "validate",
        help="check that a storage target can hold a repository",
        description="Run non-destructive checks against URL (default: the repository "
        "location): read-after-write, atomic overwrite, create-only semantics, listing, "
        "ranged reads, a large object, delete, and clock skew against the server. Everything "
        "happens under a fresh validate-<random>/ prefix that is removed afterwards. Backend "
        "options (-o) apply as for a repository. See docs/remote-ops.md.",
    )
    p.epilog = _EXIT_HELP + "\n" + (p.epilog or "")
    p.add_argument("url", nargs="?", metavar="URL",
                   help="the target to validate (default: the repository URL)")
    p.add_argument("--large-size", type=size, default=32 << 20, metavar="SIZE",
                   help="size of the large-object check (default: 32MiB)")
    p.add_argument("--max-clock-skew", type=float, default=60.0, metavar="SECONDS",
                   help="server clock difference that is still fine (default: 60)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit code 15) on warnings too")
    p.set_defaults(func=run_validate)


class _CheckPrinter:
    """A Reporter that shows each check as soon as it finishes."""

    def __init__(self, ctx: Context, width: int) -> None:
        self.ctx = ctx
        self.width = width

    def event(self, kind: str, /, **fields: Any) -> None:
        if kind != "validate.check":
            return
        out = self.ctx.out
        if out.json:
            out.record("check", name=fields["name"], status=fields["status"],
                       detail=fields["detail"])
        else:
            out.result(f"{fields['status']:<5} {fields['name']:<{self.width}} {fields['detail']}")

    def progress(self, /, **counters: Any) -> None:
        pass


def run_validate(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.backend.registry import redact_url
    from resurgo.backend.validate import CHECKS, FAIL, OK, validate_backend
    from resurgo.session import open_backend

    url = args.url or ctx.repo_url
    out = ctx.out
    out.message(f"validating {redact_url(url)}")
    backend = open_backend(url, options=ctx.backend_options, fault_spec=ctx.fault_spec)
    try:
        report = validate_backend(
            backend,
            reporter=_CheckPrinter(ctx, max(len(name) for name in CHECKS)),
            large_size=args.large_size,
            max_clock_skew=args.max_clock_skew,
        )
    finally:
        backend.close()
    verdict = report.verdict
    failed = verdict == FAIL or (args.strict and verdict != OK)
    out.summary(url=redact_url(url), verdict=verdict, scratch_prefix=report.prefix,
                checks=report.to_dict()["checks"])
    if verdict == OK:
        out.result("verdict: ok: the target keeps the backend contract")
    elif verdict == FAIL:
        bad = ", ".join(c.name for c in report.checks if c.status == FAIL)
        out.result(f"verdict: fail ({bad}): do not keep a repository on this target")
    else:
        caveats = ", ".join(c.name for c in report.checks if c.status != OK)
        out.result(f"verdict: warn ({caveats}): usable, read the warnings above")
    return EXIT_BACKEND if failed else EXIT_OK
