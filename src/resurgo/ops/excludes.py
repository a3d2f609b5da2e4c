"""What a backup leaves out: exclude patterns, marker files, cache directories.

Vocabulary: a *pattern* is a gitignore-style glob; *rules* are patterns in the
order given; a *marker* is a file whose presence excludes its directory
(``--exclude-if-present``); a *cache directory* holds a valid ``CACHEDIR.TAG``.

Pattern semantics (gitignore, applied to the absolute path as if "/" were the
repository root; the walker passes absolute paths):

* ``*.log`` -- no slash except at the end: matches that name at any depth,
  files and directories alike (``/var/x.log``, ``/a/b.log/``).
* ``/home/*/cache`` or ``home/*/cache`` -- a slash at the start or in the
  middle anchors the pattern at "/": matches ``/home/ann/cache`` only.
  ``*`` and ``?`` never match ``/``; ``**`` matches any number of components
  (``/srv/**/tmp``, ``**/build``); ``[a-z]`` classes as in fnmatch.
* ``node_modules/`` -- a trailing slash matches directories only.
* ``!pattern`` re-includes what an earlier pattern excluded: the last matching
  rule wins. As in git, an excluded directory is never entered, so nothing
  below it can be re-included.
* Matching a directory excludes everything below it.
* ``--exclude`` / ``--exclude-file`` patterns are case-sensitive,
  ``--iexclude`` / ``--iexclude-file`` ones case-insensitive (Unicode case
  folding); the two lists are evaluated separately and either can exclude.
* Exclude files hold one pattern per line; surrounding whitespace is
  stripped, blank lines and lines starting with ``#`` are skipped (``\\#``
  matches a literal ``#``).
* Non-UTF-8 path bytes never match a literal character, but ``*``/``?`` match them.

``exclude_if_present`` entries are ``NAME`` or ``NAME:HEADER``: a directory
containing a file ``NAME`` (whose content starts with ``HEADER``, if given)
is excluded as a whole, marker included. ``exclude_caches`` does the same for
``CACHEDIR.TAG`` files starting with the standard signature
(https://bford.info/cachedir/). ``one_file_system`` is only carried here; the
walker applies it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from resurgo.errors import UsageError
from resurgo.snapshot.fsmeta import open_noatime

try:  # pathspec >= 1.0
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern as _GitPattern
except ImportError:  # pathspec 0.12
    from pathspec.patterns.gitwildmatch import GitWildMatchPattern as _GitPattern

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"

_to_regex: Callable[[str], tuple[str | None, bool | None]] = _GitPattern.pattern_to_regex


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    exclude: bool  # False for a "!" negation


def _compile(pattern: str, *, ignore_case: bool, origin: str) -> _Rule:
    where = f" ({origin})" if origin else ""
    try:
        source, include = _to_regex(pattern)
        if source is None or include is None:
            raise ValueError("it matches nothing")
        regex = re.compile(source, re.IGNORECASE if ignore_case else 0)
    except (ValueError, re.error) as exc:
        raise UsageError(f"invalid exclude pattern {pattern!r}{where}: {exc}") from None
    return _Rule(pattern, regex, include)


def read_pattern_file(path: str | os.PathLike[str]) -> list[str]:
    """The patterns of an exclude file (comments and blank lines dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read exclude file {os.fspath(path)}: {exc.strerror}") from None
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _has_header(path: bytes, header: bytes) -> bool:
    """Whether the regular file ``path`` starts with ``header`` (no symlinks, no blocking)."""
    try:
        # Without O_NOATIME, reading the marker would set its atime, which its
        # node records: the next backup would see the directory changed.
        fd = open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        data = b""
        while len(data) < len(header):
            chunk = os.read(fd, len(header) - len(data))
            if not chunk:
                break
            data += chunk
        return data == header
    except OSError:
        return False
    finally:
        os.close(fd)


class Excluder:
    """Decides which paths a backup skips. Immutable once built; thread-safe."""

    def __init__(
        self,
        *,
        exclude: Iterable[str] = (),
        iexclude: Iterable[str] = (),
        exclude_files: Iterable[str | os.PathLike[str]] = (),
        iexclude_files: Iterable[str | os.PathLike[str]] = (),
        exclude_if_present: Iterable[str] = (),
        exclude_caches: bool = False,
        one_file_system: bool = False,
    ) -> None:
        self._rules = [_compile(p, ignore_case=False, origin="") for p in exclude]
        for path in exclude_files:
            origin = f"from {os.fspath(path)}"
            self._rules += [_compile(p, ignore_case=False, origin=origin)
                            for p in read_pattern_file(path)]
        self._irules = [_compile(p, ignore_case=True, origin="") for p in iexclude]
        for path in iexclude_files:
            origin = f"from {os.fspath(path)}"
            self._irules += [_compile(p, ignore_case=True, origin=origin)
                             for p in read_pattern_file(path)]
        self._markers: list[tuple[bytes, bytes | None]] = []
        for entry in exclude_if_present:
            name, sep, header = entry.partition(":")
            if not name or "/" in name or "\0" in name or name in (".", ".."):
                raise UsageError(f"invalid --exclude-if-present file name {entry!r}")
            self._markers.append((os.fsencode(name), os.fsencode(header) if sep else None))
        self.exclude_caches = exclude_caches
        self.one_file_system = one_file_system

    @property
    def active(self) -> bool:
        """Whether any rule could exclude anything (the walker may skip calls otherwise)."""
        return bool(self._rules or self._irules or self._markers or self.exclude_caches)

    def describe(self) -> list[str]:
        """The rules as stored in a snapshot's ``excludes`` field, in order."""
        out = [r.pattern for r in self._rules]
        out += [f"iexclude:{r.pattern}" for r in self._irules]
        for name, header in self._markers:
            marker = os.fsdecode(name) + (f":{os.fsdecode(header)}" if header is not None else "")
            out.append(f"if-present:{marker}")
        if self.exclude_caches:
            out.append("exclude-caches")
        return out

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """Whether the absolute ``path`` matches the exclude patterns. ``/`` itself never does."""
        rel = path.lstrip(b"/").decode("utf-8", "surrogateescape")
        if not rel:
            return False
        if is_dir:
            rel += "/"
        return _last_match_excludes(self._rules, rel) or _last_match_excludes(self._irules, rel)

    def dir_excluded_by_content(self, dirpath: bytes, names: set[bytes]) -> bool:
        """Whether the directory ``dirpath``, whose entries are ``names``, holds a
        marker file or a valid CACHEDIR.TAG (and so is skipped entirely)."""
        for name, header in self._markers:
            if name in names and (
                header is None or _has_header(os.path.join(dirpath, name), header)
            ):
                return True
        return (
            self.exclude_caches
            and CACHEDIR_TAG in names
            and _has_header(os.path.join(dirpath, CACHEDIR_TAG), CACHEDIR_SIGNATURE)
        )


def _last_match_excludes(rules: list[_Rule], rel: str) -> bool:
    for rule in reversed(rules):
        if rule.regex.match(rel):
            return rule.exclude
    return False
