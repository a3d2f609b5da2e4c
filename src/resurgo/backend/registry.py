"""Backend URLs: choosing a backend from a URL, and redacting secrets from URLs.

A *repository URL* names where a repository lives:

    /srv/backup, ./repo, file:///srv/backup   a local directory (LocalBackend)
    memory://                                 a fresh, empty in-memory backend
    s3://...                                  resurgo.backend.s3 (pip extra "s3")
    sftp://...                                resurgo.backend.sftp (pip extra "sftp")

Remote backends are imported only when their scheme is used, through the
``module:function`` table ``REMOTE_SCHEMES``, so a missing optional dependency
costs nothing until it is needed, and then fails with a message naming the pip
extra to install.

``redact_url`` masks passwords and secret query parameters; every message that
shows a URL passes it through ``redact_url`` first.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from resurgo.backend import Backend
from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import BackendError, UsageError


@dataclass(frozen=True)
class RemoteScheme:
    """Where a remote backend's ``from_url(url, options)`` lives, and its pip extra."""

    target: str  # "package.module:function"
    extra: str


REMOTE_SCHEMES: dict[str, RemoteScheme] = {
    "s3": RemoteScheme("resurgo.backend.s3:from_url", "s3"),
    "sftp": RemoteScheme("resurgo.backend.sftp:from_url", "sftp"),
}

LOCAL_SCHEMES = ("file", "memory")

_URL_START = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")

# Query parameters whose values are masked: any name containing one of these.
_SECRET_WORDS = (
    "secret",
    "key",
    "token",
    "password",
    "passwd",
    "pass",
    "pwd",
    "sig",
    "credential",
    "auth",
)


def supported_schemes() -> list[str]:
    return sorted({*LOCAL_SCHEMES, *REMOTE_SCHEMES})


def open_backend(url: str, options: Mapping[str, str] | None = None) -> Backend:
    """Open the backend ``url`` names; ``options`` are backend-specific settings.

    Raises ``UsageError`` for an unknown scheme, a malformed URL or options the
    backend does not take, and ``BackendError`` when the backend's optional
    dependencies are not installed.
    """
    options = dict(options or {})
    scheme = _scheme_of(url)
    if scheme is None:
        _no_options("local", url, options)
        return LocalBackend(Path(url))
    if scheme == "file":
        _no_options("local", url, options)
        return LocalBackend(_file_url_path(url))
    if scheme == "memory":
        _no_options("memory", url, options)
        # Always a new store: a process-wide registry of named stores would be
        # global state shared by unrelated callers.
        return MemoryBackend()
    remote = REMOTE_SCHEMES.get(scheme)
    if remote is None:
        raise UsageError(
            f"unknown backend scheme {scheme!r} in {redact_url(url)}: "
            f"supported schemes are {', '.join(supported_schemes())}"
        )
    factory = _load_factory(scheme, remote)
    return factory(url, options)


def _scheme_of(url: str) -> str | None:
    """The URL's scheme (lower case), or None for a plain path.

    ``name:rest`` without ``//`` is a plain path (file names may contain ":"),
    unless ``name`` is a known scheme, which is then reported as malformed
    rather than silently creating a directory called "s3:bucket".
    """
    match = _URL_START.match(url)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if match.group(2):
        return scheme
    if scheme == "file":
        return scheme  # file:/abs/path is a valid file URL
    if scheme in LOCAL_SCHEMES or scheme in REMOTE_SCHEMES:
        raise UsageError(f"malformed URL {redact_url(url)}: expected {scheme}://...")
    return None


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"file URL {redact_url(url)} names host {parts.netloc!r}: only local paths "
            "(file:///path) are supported"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"file URL {redact_url(url)} must not have a query or fragment")
    path = unquote(parts.path)
    if not path:
        raise UsageError(f"file URL {redact_url(url)} has no path")
    return Path(path)


def _no_options(kind: str, url: str, options: Mapping[str, str]) -> None:
    if options:
        raise UsageError(
            f"the {kind} backend ({redact_url(url)}) takes no options, got: "
            + ", ".join(sorted(options))
        )


def _load_factory(scheme: str, remote: RemoteScheme) -> Callable[[str, Mapping[str, str]], Backend]:
    module_name, _, function_name = remote.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        missing = err.name or "an optional dependency"
        if missing == module_name:
            raise BackendError(f"the {scheme} backend is not available in this installation")
        raise BackendError(
            f"the {scheme} backend needs packages that are not installed (missing {missing}): "
            f"pip install 'resurgo[{remote.extra}]'"
        ) from err
    factory: Callable[[str, Mapping[str, str]], Backend] = getattr(module, function_name)
    return factory


def redact_url(url: str) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``.

    ``user:pass@host`` becomes ``user:***@host`` (the user name is kept: it
    helps find the right account and is not a secret); query parameters whose
    name contains secret, key, token, password (and similar) get ``***`` as
    value. Plain paths come back unchanged. Works on malformed URLs too, since
    it is used on the text of errors.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", url, re.DOTALL)
    if match is None:
        return url
    prefix, rest = match.groups()
    # The authority ends at the first "/", "?" or "#"; the user info ends at its
    # last "@" (an unencoded "@" in a password stays inside the user info).
    end = _first_of(rest, "/?#", 0)
    authority = rest[:end]
    if "@" not in authority and ":" in authority:
        # An unencoded "/", "?" or "#" in a password (S3 secret keys often hold
        # "/") ends the authority early: "user:12/ab@host" must not leak "12".
        # It cannot be told apart from "host:22/path@x", so both are masked up
        # to the last "@": masking too much is the safe mistake.
        last_at = rest.rfind("@")
        if last_at != -1:
            end = _first_of(rest, "/?#", last_at)
            authority = rest[:end]
    tail = rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        authority = f"{user}:***@{host}"
    return prefix + authority + _redact_query(tail)


def _first_of(text: str, separators: str, start: int) -> int:
    """Index of the first of ``separators`` in ``text`` at or after ``start``, else ``len(text)``."""
    found = [pos for sep in separators if (pos := text.find(sep, start)) != -1]
    return min(found, default=len(text))


def _redact_query(tail: str) -> str:
    path, question, rest = tail.partition("?")
    if not question:
        return tail
    query, hash_, fragment = rest.partition("#")
    fields = []
    for field in query.split("&"):
        name, eq, _value = field.partition("=")
        lowered = unquote(name).lower()
        if eq and any(word in lowered for word in _SECRET_WORDS):
            fields.append(f"{name}=***")
        else:
            fields.append(field)
    return f"{path}?{'&'.join(fields)}{hash_}{fragment}"
