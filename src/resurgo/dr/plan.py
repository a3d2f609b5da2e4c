"""The plan file: a declarative disaster-recovery plan in TOML, loaded and validated.

Vocabulary: a *plan* has ``settings``, named *repositories* (where copies
live; a repository is *offsite* when it survives the loss of the site),
named *notification targets* and named *jobs*. A job backs up *sources*
(paths, and *command sources* whose output is stored as a file) into its
first repository, the *primary*, then copies to the others; it runs on a
*schedule*, keeps snapshots per a *retention* policy per repository, and is
measured against its *RPO* (the maximum acceptable age of the newest snapshot
present in every repository of the job) and *RTO*. *Hooks* run before, after
and on failure. docs/plan.md is the reference for every field.

Validation collects every problem and raises one ``PlanError`` listing them,
each as ``FILE:LINE: field.path: message``. tomllib reports no positions for
keys, so ``_Locator`` scans the source text once: it follows table headers,
array-of-table indices, dotted keys, inline tables and arrays, and records the
line where each key path is first written; a problem with a missing or nested
value is reported at the nearest enclosing path that has a line.

Secrets are never inline: a key that names a secret (``password``, ``secret``,
``token``, ...) is refused wherever it appears unless it names where the
secret comes from (``*_file``, ``*_env``, ``*_command``), and URLs must not
carry credentials. *Warnings* (``plan_warnings``) are legal but risky choices,
above all a job with no offsite repository ("always an offsite copy"); strict
loading turns them into errors.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from resurgo.backend.registry import redact_url, supported_schemes
from resurgo.dr.schedule import (
    Schedule,
    ScheduleError,
    format_duration,
    local_zone,
    parse_duration,
    parse_schedule,
    zone,
)
from resurgo.errors import UsageError
from resurgo.ops.excludes import Excluder
from resurgo.ops.retention import Duration as RetentionDuration
from resurgo.ops.retention import RetentionPolicy

__all__ = [
    "CATCH_UP_MODES",
    "NOTIFY_EVENTS",
    "RETENTION_COUNTS",
    "RETENTION_DURATIONS",
    "CommandSource",
    "HookSpec",
    "JobSpec",
    "NotificationSpec",
    "Plan",
    "PlanError",
    "RepositorySpec",
    "RetryPolicy",
    "Settings",
    "dotted",
    "format_duration",
    "load_plan",
    "loads_plan",
    "names_secret",
    "parse_duration",
    "plan_warnings",
    "retention_policy",
]

CATCH_UP_MODES = ("once", "none")
NOTIFY_EVENTS = ("failure", "rpo_breach", "recovery", "success")
DEFAULT_NOTIFY_EVENTS = ("failure", "rpo_breach", "recovery")
RETENTION_COUNTS = (
    "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
)
RETENTION_DURATIONS = (
    "keep_within", "keep_within_hourly", "keep_within_daily", "keep_within_weekly",
    "keep_within_monthly", "keep_within_yearly",
)
DEFAULT_HOOK_TIMEOUT = 600.0  # seconds
OFFSITE_SCHEMES = ("s3", "sftp")

PathKey = tuple[str | int, ...]


class PlanError(UsageError):
    """The plan file is invalid. ``problems`` holds one ``FILE:LINE: field: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        first = problems[0] if problems else "invalid plan"
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(first + more)
        self.problems = problems


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a failed run: ``attempts`` retries, waiting ``backoff`` doubling up to ``max_backoff``."""

    attempts: int = 3
    backoff: float = 60.0
    max_backoff: float = 1800.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        return float(min(self.backoff * (2 ** max(0, retry - 1)), self.max_backoff))


@dataclass(frozen=True)
class Settings:
    state_db: str | None = None
    catch_up: str = "once"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrent_jobs: int = 1


@dataclass(frozen=True)
class RepositorySpec:
    name: str
    url: str
    password_file: str | None = None
    password_env: str | None = None
    password_command: list[str] | None = None
    offsite: bool = False
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NotificationSpec:
    name: str
    type: str  # "webhook" | "email"
    on: set[str] = field(default_factory=lambda: set(DEFAULT_NOTIFY_EVENTS))
    url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    starttls: bool = True
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    sender: str | None = None
    to: list[str] = field(default_factory=list)
    timeout: float | None = None  # per delivery attempt
    tls_verify: bool = True
    ca_file: str | None = None  # trust only this CA bundle (a private CA)


@dataclass(frozen=True)
class HookSpec:
    command: list[str]
    timeout: float = DEFAULT_HOOK_TIMEOUT


@dataclass(frozen=True)
class CommandSource:
    name: str
    command: list[str]
    timeout: float | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    paths: list[str]
    exclude: list[str]
    exclude_caches: bool
    commands: list[CommandSource]
    repositories: list[str]
    schedule: Schedule
    timezone: str | None
    rpo: float | None
    rto: float | None
    tags: list[str]
    retention: dict[str, dict[str, int | str]]
    maintenance: Schedule | None
    notify: list[str]
    hooks_pre: list[HookSpec] = field(default_factory=list)
    hooks_post: list[HookSpec] = field(default_factory=list)
    hooks_on_failure: list[HookSpec] = field(default_factory=list)

    @property
    def primary(self) -> str:
        """The repository backed up into; the others receive copies."""
        return self.repositories[0]

    @property
    def copies(self) -> list[str]:
        return self.repositories[1:]


@dataclass(frozen=True)
class Plan:
    settings: Settings
    repositories: dict[str, RepositorySpec]
    notifications: dict[str, NotificationSpec]
    jobs: dict[str, JobSpec]
    path: Path
    lines: Mapping[PathKey, int] = field(default_factory=dict, repr=False, compare=False)

    def where(self, key: PathKey) -> str:
        """``FILE:LINE: dotted.path`` for messages about the value at ``key``."""
        return f"{_at(self.path, self.lines, key)}: {dotted(key)}"


# --- locating keys in the source text ---------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BARE_FULL = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(key: PathKey) -> str:
    """``("jobs", "home", "hooks", "pre", 0, "timeout")`` -> ``jobs.home.hooks.pre[0].timeout``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_FULL.match(part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out


def _at(path: Path, lines: Mapping[PathKey, int], key: PathKey) -> str:
    k = tuple(key)
    while k:
        if k in lines:
            return f"{path}:{lines[k]}"
        k = k[:-1]
    return f"{path}:1"


class _Locator:
    """Line numbers of the key paths of a TOML text that tomllib has already accepted."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[PathKey, int] = {}
        self.aot: dict[PathKey, int] = {}
        try:
            self._document()
        except (IndexError, ValueError, tomllib.TOMLDecodeError):
            pass  # positions are a courtesy; a confused scan must not hide the real error

    def _record(self, key: PathKey) -> None:
        for n in range(1, len(key) + 1):
            self.lines.setdefault(key[:n], self.line)

    def _peek(self, k: int = 1) -> str:
        return self.s[self.i:self.i + k]

    def _advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _skip_space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._advance((len(self.s) if end < 0 else end) - self.i)
            else:
                return

    def _document(self) -> None:
        table: PathKey = ()
        while True:
            self._skip_space(newlines=True)
            if self.i >= len(self.s):
                return
            if self._peek(2) == "[[":
                self._advance(2)
                name = self._key()
                self._skip_space(False)
                self._advance(2)  # ]]
                index = self.aot.get(name, 0)
                self.aot[name] = index + 1
                table = (*name, index)
                self._record(table)
            elif self._peek() == "[":
                self._advance()
                name = self._key()
                self._skip_space(False)
                self._advance()  # ]
                table = name
                self._record(table)
            else:
                self._keyval(table)

    def _key(self) -> PathKey:
        parts: list[str] = []
        while True:
            self._skip_space(False)
            c = self._peek()
            if c == '"' or c == "'":
                start = self.i
                self._string()
                parts.append(tomllib.loads("k = " + self.s[start:self.i])["k"])
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("key expected")
                parts.append(m.group())
                self._advance(m.end() - self.i)
            self._skip_space(False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _keyval(self, table: PathKey) -> None:
        key = (*table, *self._key())
        self._skip_space(False)
        self._advance()  # =
        self._skip_space(False)
        self._record(key)
        self._value(key)

    def _string(self) -> None:
        q = self._peek()
        if self._peek(3) == q * 3:
            end = self.s.find(q * 3, self.i + 3)
            if end < 0:
                raise ValueError("unterminated string")
            while self.s[end + 3:end + 4] == q:  # up to two quotes may close the content
                end += 1
            self._advance(end + 3 - self.i)
            return
        j = self.i + 1
        while self.s[j] != q:
            if q == '"' and self.s[j] == "\\":
                j += 1
            j += 1
        self._advance(j + 1 - self.i)

    def _value(self, key: PathKey) -> None:
        c = self._peek()
        if c in "\"'":
            self._string()
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._skip_space(True)
                if self._peek() == "]":
                    self._advance()
                    return
                self._record((*key, index))
                self._value((*key, index))
                self._skip_space(True)
                if self._peek() == ",":
                    self._advance()
                    index += 1
        elif c == "{":
            self._advance()
            while True:
                self._skip_space(False)
                if self._peek() == "}":
                    self._advance()
                    return
                self._keyval(key)
                self._skip_space(False)
                if self._peek() == ",":
                    self._advance()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            assert m is not None
            self._advance(m.end() - self.i)


# --- validation ----------------------------------------------------------------------------

_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "secret", "token", "credential", "credentials",
    "apikey", "api_key",
})
_SECRET_SOURCES = ("_file", "_env", "_command")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def names_secret(key: str) -> bool:
    """Whether a field or option called ``key`` would hold a secret itself (not where it comes from)."""
    low = key.lower()
    if low.endswith(_SECRET_SOURCES):
        return False
    words = set(re.split(r"[^a-z0-9]+", low))
    return bool(words & _SECRET_WORDS) or low in _SECRET_WORDS


class _Missing:
    pass


_MISSING = _Missing()


class _Validator:
    def __init__(self, path: Path, lines: Mapping[PathKey, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[tuple[PathKey, str]] = []

    def error(self, key: PathKey, message: str) -> None:
        self.problems.append((key, message))

    def formatted(self) -> list[str]:
        def sort_key(p: tuple[PathKey, str]) -> int:
            k = p[0]
            while k and k not in self.lines:
                k = k[:-1]
            return self.lines.get(k, 1)

        return [
            f"{_at(self.path, self.lines, k)}: {dotted(k) or '(top level)'}: {m}"
            for k, m in sorted(self.problems, key=sort_key)
        ]

    # -- typed getters; each records a problem and returns a fallback on a bad value --

    def table(self, key: PathKey, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.error(key, f"expected a table, got {_kind(value)}")
        return {}

    def known(self, key: PathKey, value: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for name in value:
            if name not in allowed and not names_secret(name):
                self.error((*key, name), f"unknown field; expected one of {', '.join(allowed)}")

    def string(self, key: PathKey, value: Any, *, required: bool = False) -> str | None:
        if isinstance(value, _Missing):
            if required:
                self.error(key, "missing (required)")
            return None
        if isinstance(value, str) and value.strip():
            return value
        self.error(key, f"expected a non-empty string, got {_kind(value)}")
        return None

    def boolean(self, key: PathKey, value: Any, default: bool) -> bool:
        if isinstance(value, _Missing):
            return default
        if isinstance(value, bool):
            return value
        self.error(key, f"expected true or false, got {_kind(value)}")
        return default

    def integer(self, key: PathKey, value: Any, default: int, *, minimum: int = 0) -> int:
        if isinstance(value, _Missing):
            return default
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.error(key, f"expected an integer >= {minimum}, got {_kind(value)}")
        return default

    def strings(self, key: PathKey, value: Any, *, nonempty: bool = False) -> list[str]:
        if isinstance(value, _Missing):
            if nonempty:
                self.error(key, "missing (required)")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"expected a list of strings, got {_kind(value)}")
            return []
        if nonempty and not value:
            self.error(key, "must not be empty")
        return list(value)

    def command(self, key: PathKey, value: Any) -> list[str]:
        if isinstance(value, _Missing):
            self.error(key, "missing (required)")
            return []
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) for v in value)
            or not value[0]
        ):
            self.error(
                key,
                f"expected a command as a non-empty list of strings such as "
                f"[\"pg_dump\", \"-Fc\", \"app\"], got {_kind(value)}",
            )
            return []
        return list(value)

    def duration(self, key: PathKey, value: Any, *, positive: bool = True) -> float | None:
        if isinstance(value, _Missing):
            return None
        try:
            seconds = parse_duration(value)
        except UsageError as e:
            self.error(key, str(e))
            return None
        if positive and seconds <= 0:
            self.error(key, "must be longer than zero")
            return None
        return seconds

    def schedule(self, key: PathKey, value: Any, tz: Any) -> Schedule | None:
        try:
            return parse_schedule(value, tz)
        except ScheduleError as e:
            self.error(key, str(e))
            return None

    # -- secrets and URLs -----------------------------------------------------------------

    def no_inline_secrets(self, key: PathKey, value: Any) -> None:
        if isinstance(value, dict):
            for name, v in value.items():
                if names_secret(name):
                    self.error(
                        (*key, name),
                        "secrets are never written in the plan: name where the secret comes "
                        "from instead (password_file, password_env or password_command)",
                    )
                else:
                    self.no_inline_secrets((*key, name), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.no_inline_secrets((*key, i), v)

    def url_without_secrets(self, key: PathKey, url: str) -> None:
        if redact_url(url) != url:
            self.error(
                key,
                "the URL carries a credential; keep secrets out of the plan (use "
                "password_file / password_env, or backend options naming a file)",
            )


def _kind(value: Any) -> str:
    if isinstance(value, _Missing):
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _get(table: dict[str, Any], name: str) -> Any:
    return table.get(name, _MISSING)


_TOP = ("settings", "repositories", "notifications", "jobs")
_SETTINGS = ("state_db", "catch_up", "retry", "max_concurrent_jobs")
_RETRY = ("attempts", "backoff", "max_backoff")
_REPOSITORY = ("url", "password_file", "password_env", "password_command", "offsite", "options")
_NOTIFICATION = (
    "type", "on", "url", "smtp_host", "smtp_port", "starttls", "username", "password_file",
    "password_env", "from", "to", "timeout", "tls_verify", "ca_file",
)
_JOB = (
    "paths", "exclude", "exclude_caches", "commands", "repositories", "schedule", "timezone",
    "rpo", "rto", "tags", "retention", "maintenance", "notify", "hooks",
)
_COMMAND = ("name", "command", "timeout")
_HOOK = ("command", "timeout")
_HOOK_PHASES = ("pre", "post", "on_failure")


def _settings(v: _Validator, raw: Any) -> Settings:
    key: PathKey = ("settings",)
    t = v.table(key, raw) if not isinstance(raw, _Missing) else {}
    v.known(key, t, _SETTINGS)
    state_db = v.string((*key, "state_db"), _get(t, "state_db"))
    catch_up = _get(t, "catch_up")
    if isinstance(catch_up, _Missing):
        catch_up = "once"
    elif catch_up not in CATCH_UP_MODES:
        v.error((*key, "catch_up"), f"expected \"once\" or \"none\", got {_kind(catch_up)}")
        catch_up = "once"
    retry = RetryPolicy()
    raw_retry = _get(t, "retry")
    if not isinstance(raw_retry, _Missing):
        rk = (*key, "retry")
        rt = v.table(rk, raw_retry)
        v.known(rk, rt, _RETRY)
        attempts = v.integer((*rk, "attempts"), _get(rt, "attempts"), retry.attempts)
        backoff = v.duration((*rk, "backoff"), _get(rt, "backoff"))
        max_backoff = v.duration((*rk, "max_backoff"), _get(rt, "max_backoff"))
        backoff = retry.backoff if backoff is None else backoff
        max_backoff = retry.max_backoff if max_backoff is None else max_backoff
        if max_backoff < backoff:
            v.error((*rk, "max_backoff"), "must not be shorter than backoff")
        retry = RetryPolicy(attempts, backoff, max_backoff)
    concurrency = v.integer(
        (*key, "max_concurrent_jobs"), _get(t, "max_concurrent_jobs"), 1, minimum=1
    )
    return Settings(state_db, catch_up, retry, concurrency)


def _scheme(url: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", url)
    # "C:" style drive letters do not occur on the platforms we run on; a
    # scheme is what precedes "://" or "file:"/"memory:".
    return m.group(1).lower() if m and "://" in url else None


def _repository(v: _Validator, name: str, raw: Any) -> RepositorySpec | None:
    key: PathKey = ("repositories", name)
    if not _PLAIN_NAME.match(name):
        v.error(key, "repository names use letters, digits, '.', '_' and '-'")
    t = v.table(key, raw)
    v.known(key, t, _REPOSITORY)
    url = v.string((*key, "url"), _get(t, "url"), required=True)
    scheme = None
    if url is not None:
        v.url_without_secrets((*key, "url"), url)
        scheme = _scheme(url)
        if scheme is not None and scheme not in supported_schemes():
            v.error(
                (*key, "url"),
                f"unknown scheme {scheme!r}; supported: {', '.join(supported_schemes())}",
            )
    pw_file = v.string((*key, "password_file"), _get(t, "password_file"))
    pw_env = v.string((*key, "password_env"), _get(t, "password_env"))
    pw_cmd = None
    if "password_command" in t:
        pw_cmd = v.command((*key, "password_command"), t["password_command"]) or None
    given = [n for n in ("password_file", "password_env", "password_command") if n in t]
    inline = any(names_secret(n) for n in t)  # already reported as an inline secret
    if len(given) > 1 or (not given and not inline):
        v.error(
            key,
            "give exactly one of password_file, password_env or password_command "
            + (f"(got {', '.join(given)})" if given else "(none given)"),
        )
    offsite = v.boolean((*key, "offsite"), _get(t, "offsite"), scheme in OFFSITE_SCHEMES)
    options: dict[str, str] = {}
    raw_options = _get(t, "options")
    if not isinstance(raw_options, _Missing):
        ok = v.table((*key, "options"), raw_options)
        for opt, value in ok.items():
            if not isinstance(value, str):
                v.error((*key, "options", opt), f"expected a string, got {_kind(value)}")
            elif not names_secret(opt):
                options[opt] = value
    if url is None:
        return None
    return RepositorySpec(name, url, pw_file, pw_env, pw_cmd, offsite, options)


def _notification(v: _Validator, name: str, raw: Any) -> NotificationSpec | None:
    key: PathKey = ("notifications", name)
    if not _PLAIN_NAME.match(name):
        v.error(key, "notification names use letters, digits, '.', '_' and '-'")
    t = v.table(key, raw)
    v.known(key, t, _NOTIFICATION)
    kind = _get(t, "type")
    if kind not in ("webhook", "email"):
        v.error((*key, "type"), f"expected \"webhook\" or \"email\", got {_kind(kind)}")
        return None
    on_list = _get(t, "on")
    events = set(DEFAULT_NOTIFY_EVENTS)
    if not isinstance(on_list, _Missing):
        events = set(v.strings((*key, "on"), on_list, nonempty=True))
        for i, event in enumerate(on_list if isinstance(on_list, list) else []):
            if event not in NOTIFY_EVENTS:
                v.error((*key, "on", i), f"unknown event {event!r}; expected one of "
                        f"{', '.join(NOTIFY_EVENTS)}")
    pw_file = v.string((*key, "password_file"), _get(t, "password_file"))
    pw_env = v.string((*key, "password_env"), _get(t, "password_env"))
    if pw_file and pw_env:
        v.error(key, "give at most one of password_file and password_env")
    common: dict[str, Any] = {
        "timeout": v.duration((*key, "timeout"), _get(t, "timeout")),
        "tls_verify": v.boolean((*key, "tls_verify"), _get(t, "tls_verify"), True),
        "ca_file": v.string((*key, "ca_file"), _get(t, "ca_file")),
    }
    if kind == "webhook":
        for extra in ("smtp_host", "smtp_port", "starttls", "username", "from", "to",
                      "password_file", "password_env"):
            if extra in t:
                v.error((*key, extra), "only for type = \"email\"")
        url = v.string((*key, "url"), _get(t, "url"), required=True)
        if url is not None:
            v.url_without_secrets((*key, "url"), url)
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
                v.error((*key, "url"), "expected an http:// or https:// URL")
        return NotificationSpec(name, "webhook", events, url=url, **common)
    if "url" in t:
        v.error((*key, "url"), "only for type = \"webhook\"")
    host = v.string((*key, "smtp_host"), _get(t, "smtp_host"), required=True)
    port = v.integer((*key, "smtp_port"), _get(t, "smtp_port"), 587, minimum=1)
    if port > 65535:
        v.error((*key, "smtp_port"), "expected a port number from 1 to 65535")
    starttls = v.boolean((*key, "starttls"), _get(t, "starttls"), True)
    username = v.string((*key, "username"), _get(t, "username"))
    if username and not (pw_file or pw_env) and not any(names_secret(n) for n in t):
        v.error(key, "username given without password_file or password_env")
    sender = v.string((*key, "from"), _get(t, "from"), required=True)
    to = v.strings((*key, "to"), _get(t, "to"), nonempty=True)
    for i, address in enumerate(to):
        if "@" not in address:
            v.error((*key, "to", i), f"not an e-mail address: {address!r}")
    if sender is not None and "@" not in sender:
        v.error((*key, "from"), f"not an e-mail address: {sender!r}")
    return NotificationSpec(
        name, "email", events, smtp_host=host, smtp_port=port, starttls=starttls,
        username=username, password_file=pw_file, password_env=pw_env, sender=sender, to=to,
        **common,
    )


def _hooks(v: _Validator, key: PathKey, raw: Any) -> list[HookSpec]:
    if isinstance(raw, _Missing):
        return []
    if not isinstance(raw, list):
        v.error(key, "expected an array of tables ([[...]] sections)")
        return []
    hooks = []
    for i, item in enumerate(raw):
        hk = (*key, i)
        t = v.table(hk, item)
        v.known(hk, t, _HOOK)
        command = v.command((*hk, "command"), _get(t, "command"))
        timeout = v.duration((*hk, "timeout"), _get(t, "timeout"))
        if command:
            hooks.append(HookSpec(command, DEFAULT_HOOK_TIMEOUT if timeout is None else timeout))
    return hooks


def _job(
    v: _Validator,
    name: str,
    raw: Any,
    repositories: Mapping[str, Any],
    notifications: Mapping[str, Any],
) -> JobSpec | None:
    key: PathKey = ("jobs", name)
    if not _PLAIN_NAME.match(name):
        v.error(key, "job names use letters, digits, '.', '_' and '-'")
    t = v.table(key, raw)
    v.known(key, t, _JOB)

    paths = v.strings((*key, "paths"), _get(t, "paths"))
    for i, p in enumerate(paths):
        if not p.startswith("/"):
            v.error((*key, "paths", i), f"paths must be absolute, got {p!r}")
    exclude = v.strings((*key, "exclude"), _get(t, "exclude"))
    if exclude:
        try:
            Excluder(exclude=exclude)
        except UsageError as e:
            v.error((*key, "exclude"), str(e))
    exclude_caches = v.boolean((*key, "exclude_caches"), _get(t, "exclude_caches"), False)

    commands: list[CommandSource] = []
    raw_commands = _get(t, "commands")
    if not isinstance(raw_commands, _Missing):
        if not isinstance(raw_commands, list):
            v.error((*key, "commands"), "expected a list of tables {name = ..., command = [...]}")
        else:
            seen: set[str] = set()
            for i, item in enumerate(raw_commands):
                ck = (*key, "commands", i)
                ct = v.table(ck, item)
                v.known(ck, ct, _COMMAND)
                cname = v.string((*ck, "name"), _get(ct, "name"), required=True)
                if cname is not None:
                    if "/" in cname or cname in (".", "..") or "\0" in cname:
                        v.error((*ck, "name"), f"expected a plain file name, got {cname!r}")
                    elif cname in seen:
                        v.error((*ck, "name"), f"duplicate command name {cname!r}")
                    seen.add(cname)
                command = v.command((*ck, "command"), _get(ct, "command"))
                timeout = v.duration((*ck, "timeout"), _get(ct, "timeout"))
                if cname is not None and command:
                    commands.append(CommandSource(cname, command, timeout))
    if _absent_or_empty(_get(t, "paths")) and _absent_or_empty(raw_commands):
        v.error(key, "nothing to back up: give paths, commands, or both")

    repos = v.strings((*key, "repositories"), _get(t, "repositories"), nonempty=True)
    for i, r in enumerate(repos):
        if r not in repositories:
            known = ", ".join(repositories) or "none are defined"
            v.error((*key, "repositories", i), f"no repository {r!r} (defined: {known})")
        if r in repos[:i]:
            v.error((*key, "repositories", i), f"repository {r!r} listed twice")

    tz_name = v.string((*key, "timezone"), _get(t, "timezone"))
    tz = None
    if tz_name is not None:
        try:
            tz = zone(tz_name)
        except ScheduleError as e:
            v.error((*key, "timezone"), str(e))
    job_zone = tz or local_zone()
    schedule = None
    if "schedule" not in t:
        v.error((*key, "schedule"), "missing (required)")
    else:
        schedule = v.schedule((*key, "schedule"), t["schedule"], job_zone)
    maintenance = None
    if "maintenance" in t:
        maintenance = v.schedule((*key, "maintenance"), t["maintenance"], job_zone)

    rpo = v.duration((*key, "rpo"), _get(t, "rpo"))
    rto = v.duration((*key, "rto"), _get(t, "rto"))
    tags = v.strings((*key, "tags"), _get(t, "tags"))

    retention: dict[str, dict[str, int | str]] = {}
    raw_retention = _get(t, "retention")
    if not isinstance(raw_retention, _Missing):
        rk = (*key, "retention")
        for repo_name, policy in v.table(rk, raw_retention).items():
            pk = (*rk, repo_name)
            if repo_name not in repos:
                v.error(pk, f"{repo_name!r} is not one of this job's repositories "
                        f"({', '.join(repos) or 'none'})")
            pt = v.table(pk, policy)
            v.known(pk, pt, RETENTION_COUNTS + RETENTION_DURATIONS)
            rules: dict[str, int | str] = {}
            for rule, value in pt.items():
                if rule in RETENTION_COUNTS:
                    rules[rule] = v.integer((*pk, rule), value, 0, minimum=-1)
                elif rule in RETENTION_DURATIONS:
                    try:
                        RetentionDuration.parse(value if isinstance(value, str) else "")
                        rules[rule] = value
                    except UsageError as e:
                        v.error((*pk, rule), str(e))
            if not rules and not pt:
                v.error(pk, "empty retention policy: give at least one keep_* rule")
            retention[repo_name] = rules

    notify = v.strings((*key, "notify"), _get(t, "notify"))
    for i, n in enumerate(notify):
        if n not in notifications:
            known = ", ".join(notifications) or "none are defined"
            v.error((*key, "notify", i), f"no notification target {n!r} (defined: {known})")

    hooks_pre: list[HookSpec] = []
    hooks_post: list[HookSpec] = []
    hooks_fail: list[HookSpec] = []
    raw_hooks = _get(t, "hooks")
    if not isinstance(raw_hooks, _Missing):
        hk = (*key, "hooks")
        ht = v.table(hk, raw_hooks)
        v.known(hk, ht, _HOOK_PHASES)
        hooks_pre = _hooks(v, (*hk, "pre"), _get(ht, "pre"))
        hooks_post = _hooks(v, (*hk, "post"), _get(ht, "post"))
        hooks_fail = _hooks(v, (*hk, "on_failure"), _get(ht, "on_failure"))

    if schedule is None:
        return None
    return JobSpec(
        name=name, paths=paths, exclude=exclude, exclude_caches=exclude_caches,
        commands=commands, repositories=repos, schedule=schedule, timezone=tz_name, rpo=rpo,
        rto=rto, tags=tags, retention=retention, maintenance=maintenance, notify=notify,
        hooks_pre=hooks_pre, hooks_post=hooks_post, hooks_on_failure=hooks_fail,
    )


def _absent_or_empty(value: Any) -> bool:
    return isinstance(value, _Missing) or value == []


def _section(v: _Validator, doc: dict[str, Any], name: str) -> dict[str, Any]:
    raw = _get(doc, name)
    if isinstance(raw, _Missing):
        return {}
    return v.table((name,), raw)


def loads_plan(text: str, path: str | Path = "resurgo.toml", *, strict: bool = False) -> Plan:
    """The plan in ``text`` (``path`` names it in messages); raises ``PlanError``.

    ``strict``: the warnings of ``plan_warnings`` are errors too.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{path}:{m.group(1)}" if m else f"{path}"
        detail = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        column = f" (column {m.group(2)})" if m else ""
        raise PlanError([f"{where}: not valid TOML: {detail}{column}"])
    lines = _Locator(text).lines
    v = _Validator(path, lines)
    v.no_inline_secrets((), doc)
    v.known((), doc, _TOP)
    settings = _settings(v, _get(doc, "settings"))

    repositories: dict[str, RepositorySpec] = {}
    raw_repos = _section(v, doc, "repositories")
    for name, raw in raw_repos.items():
        spec = _repository(v, name, raw)
        if spec is not None:
            repositories[name] = spec
    notifications: dict[str, NotificationSpec] = {}
    raw_notes = _section(v, doc, "notifications")
    for name, raw in raw_notes.items():
        note = _notification(v, name, raw)
        if note is not None:
            notifications[name] = note
    jobs: dict[str, JobSpec] = {}
    raw_jobs = _section(v, doc, "jobs")
    if not raw_jobs:
        v.error(("jobs",), "the plan defines no jobs: add a [jobs.NAME] table")
    for name, raw in raw_jobs.items():
        job = _job(v, name, raw, raw_repos, raw_notes)
        if job is not None:
            jobs[name] = job

    plan = Plan(settings, repositories, notifications, jobs, path, lines)
    if strict and not v.problems:
        for key, message in _warnings(plan):
            v.error(key, message)
    if v.problems:
        raise PlanError(v.formatted())
    return plan


def load_plan(path: str | Path, *, strict: bool = False) -> Plan:
    """Read and validate the plan file at ``path``; raises ``PlanError`` (exit code 2)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PlanError([f"{path}: no such plan file"])
    except OSError as e:
        raise PlanError([f"{path}: cannot read the plan file: {e.strerror or e}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PlanError([f"{path}:{line}: the plan file is not UTF-8 text"])
    return loads_plan(text, path, strict=strict)


def retention_policy(rules: Mapping[str, int | str]) -> RetentionPolicy:
    """The ``RetentionPolicy`` of a job's validated retention table for one repository."""
    counts = {k.removeprefix("keep_"): int(v) for k, v in rules.items() if k in RETENTION_COUNTS}
    spans = {
        k.removeprefix("keep_"): RetentionDuration.parse(str(v))
        for k, v in rules.items()
        if k in RETENTION_DURATIONS
    }
    return RetentionPolicy(**counts, **spans)  # type: ignore[arg-type]


# --- warnings ------------------------------------------------------------------------------


def _warnings(plan: Plan) -> Iterator[tuple[PathKey, str]]:
    for name, job in plan.jobs.items():
        key: PathKey = ("jobs", name)
        specs = [plan.repositories[r] for r in job.repositories if r in plan.repositories]
        if specs and not any(s.offsite for s in specs):
            yield (
                (*key, "repositories"),
                "no offsite repository: a fire, flood or theft at this site would take every "
                "copy; add one (s3:// and sftp:// are offsite by default, or set offsite = true)",
            )
        if job.rpo is not None:
            gap = job.schedule.max_gap()
            if gap >= job.rpo:
                yield (
                    (*key, "rpo"),
                    f"the schedule {job.schedule.text!r} leaves up to {format_duration(gap)} "
                    f"between runs, not less than the RPO of {format_duration(job.rpo)}: the "
                    "RPO will be breached before every run",
                )


def plan_warnings(plan: Plan) -> list[str]:
    """Risky but legal choices, as ``FILE:LINE: field: message`` lines (errors under --strict)."""
    return [f"{plan.where(key)}: {message}" for key, message in _warnings(plan)]

