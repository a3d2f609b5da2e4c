"""``resurgo plan``: validate a disaster-recovery plan and prove it can run (``check``),
or print it with its next runs (``show``).

Also the CLI-side plan plumbing shared with ``run``, ``daemon`` and ``status``:
where the plan file and the state database are (``plan_path``,
``state_db_path``), and turning a plan's secret *sources* into secrets
(``repository_password``, ``repository_options``, ``notification_password``)
and repositories (``open_plan_repo``). The engine (``resurgo.dr``) never reads
files named in the plan for secrets nor the environment; this module does.

``plan check`` preflight checks, each ``ok``, ``warn`` or ``FAIL``:

* the plan itself (and its warnings, e.g. a job without an offsite copy);
* every repository: its password source gives a password, and the repository
  opens read-only with it ("not initialised" when there is none yet);
* every job's sources: paths exist and are readable, command sources' programs
  are found; every hook's program is found and executable;
* notification targets' password sources;
* the clock: the year is plausible, a fresh file's mtime agrees with the
  clock, and no time in the state database lies in the future;
* the state database is writable (or its directory is, when it does not exist).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from resurgo.cli.context import Context
from resurgo.cli.parsing import Subparsers, add_command, add_subcommands
from resurgo.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ResurgoError, UsageError

if TYPE_CHECKING:
    from resurgo.dr.plan import NotificationSpec, Plan, RepositorySpec
    from resurgo.repo import Repository

PLAN_ENV = "RESURGO_PLAN"
DEFAULT_PLAN = "resurgo.toml"
OK, WARN, FAIL = "ok", "warn", "fail"
MIN_YEAR = 2024  # resurgo did not exist before: an earlier clock is wrong
CLOCK_TOLERANCE = 60.0  # seconds


# --- shared plan plumbing ------------------------------------------------------------


def add_plan_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan", metavar="FILE",
        help=f"the plan file (default: ${PLAN_ENV}, else ./{DEFAULT_PLAN})",
    )


def plan_path(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    """The plan file named by ``--plan``, ``$RESURGO_PLAN`` or ``./resurgo.toml``."""
    return Path(getattr(args, "plan", None) or env.get(PLAN_ENV) or DEFAULT_PLAN)


def default_state_db(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/resurgo/state.db`` (default ``~/.local/state/resurgo/state.db``)."""
    value = env.get("XDG_STATE_HOME", "")
    if value and Path(value).is_absolute():
        base = Path(value)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "state"
    return base / "resurgo" / "state.db"


def state_db_path(plan: Plan, env: Mapping[str, str]) -> Path:
    """The plan's ``settings.state_db`` (relative to the plan file's directory), else the default."""
    if plan.settings.state_db:
        path = Path(plan.settings.state_db).expanduser()
        return path if path.is_absolute() else plan.path.parent / path
    return default_state_db(env)


def _secret_from(env: Mapping[str, str], *, file: str | None, var: str | None,
                 command: list[str] | None, what: str) -> str:
    from resurgo.cli.passwords import read_password_file, run_password_command

    if file:
        value = read_password_file(file)
        source = f"password file {file}"
    elif var:
        if var not in env:
            raise UsageError(f"{what}: environment variable {var} is not set")
        value = env[var]
        source = f"environment variable {var}"
    elif command:
        value = run_password_command(shlex.join(command), env)
        source = f"password command {command[0]}"
    else:
        raise UsageError(f"{what}: no password source")
    if not value:
        raise UsageError(f"{what}: empty password from {source}")
    return value


def repository_password(spec: RepositorySpec, env: Mapping[str, str]) -> str:
    """The password of repository ``spec`` from its file, variable or command."""
    return _secret_from(
        env, file=spec.password_file, var=spec.password_env, command=spec.password_command,
        what=f"repository {spec.name}",
    )


def notification_password(spec: NotificationSpec, env: Mapping[str, str]) -> str | None:
    """The SMTP password of ``spec`` (None when it has no password source)."""
    if not spec.password_file and not spec.password_env:
        return None
    return _secret_from(
        env, file=spec.password_file, var=spec.password_env, command=None,
        what=f"notification {spec.name}",
    )


def repository_options(spec: RepositorySpec, env: Mapping[str, str]) -> dict[str, str]:
    """Backend options with secret sources resolved.

    A secret option is given as ``NAME_file`` (first line of that file) or
    ``NAME_env`` (that variable), e.g. ``"s3.secret_key_file"`` becomes
    ``s3.secret_key``; other options (``sftp.identity_file``) pass unchanged.
    """
    from resurgo.cli.passwords import read_password_file
    from resurgo.dr.plan import names_secret

    out: dict[str, str] = {}
    for name, value in spec.options.items():
        stem, _, suffix = name.rpartition("_")
        if stem and suffix in ("file", "env") and names_secret(stem):
            if suffix == "file":
                out[stem] = read_password_file(value)
            elif value in env:
                out[stem] = env[value]
            else:
                raise UsageError(
                    f"repository {spec.name}: option {name}: environment variable {value} is not set"
                )
        else:
            out[name] = value
    return out


def open_plan_repo(
    spec: RepositorySpec,
    env: Mapping[str, str],
    *,
    cache_dir: Path | None,
    read_only: bool,
    fault_spec: str | None = None,
) -> Repository:
    """Open the plan's repository ``spec`` with its own password and options."""
    from resurgo.session import open_repo

    return open_repo(
        spec.url,
        repository_password(spec, env),
        cache_dir=cache_dir,
        options=repository_options(spec, env),
        fault_spec=fault_spec,
        read_only=read_only,
    )


# --- the commands ---------------------------------------------------------------------


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers,
        "plan",
        help="check or show a disaster-recovery plan",
        description="Validate a disaster-recovery plan file (docs/plan.md) and check that "
        "it can run, or print it with its next scheduled runs.",
    )
    sub = add_subcommands(group, dest="plan_command")

    p = add_command(
        sub, "check",
        help="validate the plan and run live preflight checks",
        description="Validate the plan file; errors are printed one per line as "
        "FILE:LINE: field: message and exit with status 2. Then, unless --offline, "
        "check that it can run: every repository reachable and openable with its "
        "password (read-only), every source path present, every command and hook "
        "program found, notification passwords available, the clock sane and the state "
        "database writable. Prints a checklist and a verdict; exits with status 1 when "
        "a check fails. Warnings (such as a job without an offsite repository) do not "
        "fail the check unless --strict is given, which makes them plan errors.",
    )
    add_plan_option(p)
    p.add_argument("--offline", action="store_true",
                   help="only validate the file; contact no repository")
    p.add_argument("--strict", action="store_true",
                   help="treat plan warnings as errors (exit status 2)")
    p.set_defaults(func=run_check)

    p = add_command(
        sub, "show",
        help="print the parsed plan with its next scheduled runs",
        description="Print the plan as resurgo understands it: settings, repositories, "
        "notification targets and jobs, with each job's next scheduled runs (from its "
        "schedule alone; retries and catch-up runs are shown by resurgo status).",
    )
    add_plan_option(p)
    p.add_argument("--runs", type=int, default=3, metavar="N",
                   help="how many upcoming runs to show per job (default: 3)")
    p.set_defaults(func=run_show)


def load_plan_or_report(args: argparse.Namespace, ctx: Context, *, strict: bool) -> Plan | None:
    """The plan, or None after printing its problems (the caller exits with 2)."""
    from resurgo.dr.plan import PlanError, load_plan

    path = plan_path(args, ctx.env)
    try:
        return load_plan(path, strict=strict)
    except PlanError as e:
        out = ctx.out
        for problem in e.problems:
            out.record("error", message=problem)
            if not out.json:
                out.stderr.write(f"error: {problem}\n")
        if not out.json:
            n = len(e.problems)
            out.stderr.write(f"resurgo: the plan {path} is invalid ({n} problem{'s' * (n != 1)})\n")
            out.stderr.flush()
        out.summary(plan=str(path), valid=False, errors=e.problems)
        return None


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str


def _program_check(name: str, argv0: str, env: Mapping[str, str]) -> Check:
    if "/" in argv0:
        if not os.path.exists(argv0):
            return Check(name, FAIL, f"{argv0} does not exist")
        if not os.path.isfile(argv0) or not os.access(argv0, os.X_OK):
            return Check(name, FAIL, f"{argv0} is not an executable file")
        return Check(name, OK, f"{argv0} is executable")
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        return Check(name, FAIL, f"{argv0} not found on PATH")
    return Check(name, OK, f"{argv0} found at {found}")


def _path_check(name: str, path: str) -> Check:
    if not os.path.lexists(path):
        return Check(name, FAIL, "does not exist")
    mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.path.islink(path) and not os.access(path, mode):
        return Check(name, FAIL, "not readable by this user")
    kind = "directory" if os.path.isdir(path) else "symlink" if os.path.islink(path) else "file"
    return Check(name, OK, f"{kind} present")


def _repository_check(spec: RepositorySpec, ctx: Context) -> Check:
    from resurgo.backend.registry import redact_url
    from resurgo.errors import BackendError, RepositoryNotFound, WrongPassword
    from resurgo.session import open_repo

    name = f"repository {spec.name}"
    where = redact_url(spec.url)
    try:
        password = repository_password(spec, ctx.env)
        options = repository_options(spec, ctx.env)
    except ResurgoError as e:
        return Check(name, FAIL, f"no credentials: {e}")
    try:
        repo = open_repo(
            spec.url, password, cache_dir=ctx.cache_dir, options=options,
            fault_spec=ctx.fault_spec, read_only=True,
        )
    except RepositoryNotFound:
        return Check(name, FAIL, f"not initialised: no repository at {where} "
                                 "(create it with resurgo init)")
    except WrongPassword:
        return Check(name, FAIL, f"wrong password for {where}: no key opens with it")
    except BackendError as e:
        return Check(name, FAIL, f"unreachable: {where}: {e}")
    except ResurgoError as e:
        return Check(name, FAIL, f"{where}: {e}")
    except Exception as e:  # a broken backend must not hide the other checks
        return Check(name, FAIL, f"{where}: unexpected {type(e).__name__}: {e}")
    try:
        snapshots = len(repo.list_objects("snapshots"))
        kind = "offsite" if spec.offsite else "onsite"
        return Check(name, OK, f"opened {where} ({kind}, id {repo.config.id[:8]}, "
                               f"{snapshots} snapshot{'s' * (snapshots != 1)})")
    except ResurgoError as e:
        return Check(name, FAIL, f"{where}: opened, but listing snapshots failed: {e}")
    finally:
        repo.close()


def _clock_checks(state_path: Path, now: float) -> list[Check]:
    from resurgo.dr.state import StateDB, StateError

    checks = []
    year = datetime.fromtimestamp(now, UTC).year
    if year < MIN_YEAR:
        checks.append(Check("clock", FAIL, f"the system clock says {year}: set the time (NTP)"))
    else:
        checks.append(Check("clock", OK, f"system time {datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M:%S} UTC"))
    # A fresh file's modification time comes from the file system's idea of
    # "now" (the server's, on a network file system).
    directory = _existing_ancestor(state_path.parent)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".resurgo-clock-") as f:
            f.write(b"x")
            f.flush()
            skew = os.fstat(f.fileno()).st_mtime - now
        if abs(skew) > CLOCK_TOLERANCE:
            checks.append(Check("clock: file system", WARN,
                                f"a new file in {directory} is stamped {skew:+.0f} s from the clock"))
        else:
            checks.append(Check("clock: file system", OK,
                                f"a new file in {directory} is stamped {skew:+.1f} s from the clock"))
    except OSError as e:
        checks.append(Check("clock: file system", WARN, f"cannot write a file in {directory}: {e}"))
    if state_path.exists():
        try:
            with StateDB(state_path, recover=False) as state:
                latest = state.latest_time()
        except (StateError, OSError) as e:
            checks.append(Check("clock: history", WARN, f"cannot read the state database: {e}"))
        else:
            if latest is not None and latest > now + CLOCK_TOLERANCE:
                when = datetime.fromtimestamp(latest, UTC)
                checks.append(Check(
                    "clock: history", FAIL,
                    f"the state database records {when:%Y-%m-%d %H:%M:%S} UTC, after the current "
                    "time: the clock went backwards",
                ))
            else:
                checks.append(Check("clock: history", OK, "no recorded time lies in the future"))
    return checks


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _state_check(path: Path) -> Check:
    from resurgo.dr.state import StateDB, StateError

    name = "state database"
    if path.exists():
        try:
            with StateDB(path, recover=False) as state:
                state.check_writable()
                version = state.schema_version
        except (StateError, OSError) as e:
            return Check(name, FAIL, str(e))
        return Check(name, OK, f"{path} is writable (schema version {version})")
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return Check(name, FAIL, f"{path} cannot be created: {ancestor} is not writable")
    return Check(name, OK, f"{path} will be created on the first run")


def _preflight(plan: Plan, ctx: Context) -> list[Check]:
    checks: list[Check] = []
    env = ctx.env
    for spec in plan.repositories.values():
        checks.append(_repository_check(spec, ctx))
    for job in plan.jobs.values():
        for path in job.paths:
            checks.append(_path_check(f"job {job.name}: path {path}", path))
        for command in job.commands:
            checks.append(_program_check(f"job {job.name}: command {command.name}",
                                         command.command[0], env))
        for phase, hooks in (("pre", job.hooks_pre), ("post", job.hooks_post),
                             ("on_failure", job.hooks_on_failure)):
            for i, hook in enumerate(hooks):
                checks.append(_program_check(f"job {job.name}: {phase} hook {i + 1}",
                                             hook.command[0], env))
    for note in plan.notifications.values():
        if note.password_file or note.password_env:
            name = f"notification {note.name}"
            try:
                notification_password(note, env)
                checks.append(Check(name, OK, "password available (target not contacted)"))
            except ResurgoError as e:
                checks.append(Check(name, FAIL, str(e)))
    state_path = state_db_path(plan, env)
    checks.extend(_clock_checks(state_path, time.time()))
    checks.append(_state_check(state_path))
    return checks


_LABEL = {OK: "ok", WARN: "warn", FAIL: "FAIL"}


def run_check(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.dr.plan import plan_warnings

    plan = load_plan_or_report(args, ctx, strict=bool(args.strict))
    if plan is None:
        return EXIT_USAGE
    out = ctx.out
    checks = [Check("plan", OK, _describe_plan(plan))]
    checks += [Check("plan", WARN, w) for w in plan_warnings(plan)]
    if not args.offline:
        checks += _preflight(plan, ctx)
    out.message(f"checking plan {plan.path}" + (" (offline)" if args.offline else ""))
    for c in checks:
        out.record("check", name=c.name, status=c.status, detail=c.detail)
        out.result(f"  {_LABEL[c.status]:<5} {c.name}: {c.detail}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    verdict = FAIL if failed else WARN if warned else OK
    words = {
        OK: "ok: the plan can run",
        WARN: f"ok with {warned} warning{'s' * (warned != 1)}",
        FAIL: f"FAILED: {failed} of {len(checks)} checks failed",
    }
    out.result(f"verdict: {words[verdict]}")
    out.summary(plan=str(plan.path), valid=True, verdict=verdict, checks=len(checks),
                failed=failed, warnings=warned, offline=bool(args.offline))
    return EXIT_FAILURE if failed else EXIT_OK


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _describe_plan(plan: Plan) -> str:
    return (
        f"valid: {_plural(len(plan.jobs), 'job', 'jobs')}, "
        f"{_plural(len(plan.repositories), 'repository', 'repositories')}, "
        f"{_plural(len(plan.notifications), 'notification target', 'notification targets')}"
    )


def run_show(args: argparse.Namespace, ctx: Context) -> int:
    from resurgo.backend.registry import redact_url
    from resurgo.dr.schedule import format_duration

    plan = load_plan_or_report(args, ctx, strict=False)
    if plan is None:
        return EXIT_USAGE
    out = ctx.out
    env = ctx.env
    count = max(0, int(args.runs))
    s = plan.settings
    retry = s.retry
    lines = [
        f"plan {plan.path}",
        f"state database: {state_db_path(plan, env)}",
        f"catch-up: {s.catch_up}; retries: {retry.attempts}, after {format_duration(retry.backoff)} "
        f"doubling up to {format_duration(retry.max_backoff)}; "
        f"jobs at once: {s.max_concurrent_jobs}",
    ]
    out.record("settings", state_db=str(state_db_path(plan, env)), catch_up=s.catch_up,
               retry_attempts=retry.attempts, retry_backoff=retry.backoff,
               retry_max_backoff=retry.max_backoff, max_concurrent_jobs=s.max_concurrent_jobs)
    lines.append("repositories:")
    for r in plan.repositories.values():
        source = ("file " + r.password_file if r.password_file else
                  "variable " + r.password_env if r.password_env else
                  "command " + (r.password_command or ["?"])[0])
        where = "offsite" if r.offsite else "onsite"
        lines.append(f"  {r.name}: {redact_url(r.url)} ({where}; password from {source})")
        out.record("repository", name=r.name, url=redact_url(r.url), offsite=r.offsite,
                   options=sorted(r.options))
    if plan.notifications:
        lines.append("notifications:")
    for note in plan.notifications.values():
        target = redact_url(note.url or "") if note.type == "webhook" else ", ".join(note.to)
        events = ", ".join(sorted(note.on))
        lines.append(f"  {note.name}: {note.type} to {target} on {events}")
        out.record("notification", name=note.name, kind=note.type, target=target,
                   on=sorted(note.on))
    lines.append("jobs:")
    now = datetime.now(UTC)
    for job in plan.jobs.values():
        zone_name = job.timezone or "local time"
        upcoming: list[datetime] = []
        t = now
        for _ in range(count):
            t = job.schedule.next_after(t)
            upcoming.append(t)
        lines.append(f"  {job.name}:")
        sources = list(job.paths) + [f"{c.name} (from {shlex.join(c.command)})"
                                     for c in job.commands]
        lines.append(f"    sources: {', '.join(sources)}")
        if job.exclude or job.exclude_caches:
            rules = list(job.exclude) + (["cache directories"] if job.exclude_caches else [])
            lines.append(f"    excluding: {', '.join(rules)}")
        copies = f"; copies to {', '.join(job.copies)}" if job.copies else ""
        lines.append(f"    into: {job.primary}{copies}")
        lines.append(f"    schedule: {job.schedule.text} ({zone_name})")
        if upcoming:
            lines.append("    next runs: " + ", ".join(_when(u) for u in upcoming))
        if job.maintenance is not None:
            lines.append(f"    maintenance: {job.maintenance.text}")
        objectives = [f"{label} {format_duration(v)}" for label, v in
                      (("RPO", job.rpo), ("RTO", job.rto)) if v is not None]
        if objectives:
            lines.append(f"    objectives: {', '.join(objectives)}")
        for repo_name, policy in job.retention.items():
            text = ", ".join(f"{k}={v}" for k, v in policy.items())
            lines.append(f"    retention in {repo_name}: {text}")
        for phase, hooks in (("pre", job.hooks_pre), ("post", job.hooks_post),
                             ("on failure", job.hooks_on_failure)):
            for hook in hooks:
                lines.append(f"    {phase} hook: {shlex.join(hook.command)} "
                             f"(timeout {format_duration(hook.timeout)})")
        if job.notify:
            lines.append(f"    notify: {', '.join(job.notify)}")
        if job.tags:
            lines.append(f"    tags: {', '.join(job.tags)}")
        out.record(
            "job", name=job.name, paths=job.paths, commands=[c.name for c in job.commands],
            repositories=job.repositories, schedule=job.schedule.text, timezone=job.timezone,
            next_runs=upcoming, rpo=job.rpo, rto=job.rto, retention=job.retention,
            notify=job.notify, tags=job.tags,
        )
    from resurgo.dr.plan import plan_warnings

    for w in plan_warnings(plan):
        out.warning(w)
    out.result("\n".join(lines))
    out.summary(plan=str(plan.path), jobs=len(plan.jobs))
    return EXIT_OK


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M %Z")

