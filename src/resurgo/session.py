"""The session: the one place that assembles a working repository from plain values.

A *session* is the composition root shared by the CLI, the web API and the
scheduler: it turns a repository URL, a password and options into an open
``Repository`` by stacking the storage layers in a fixed order::

    registry.open_backend(url)  ->  [fault injection]  ->  RetryBackend  ->  Repository

Faults sit *below* the retry layer so that injected transient failures are
absorbed exactly as real ones would be (ARCHITECTURE.md, point 12). The
session takes values only: callers read the environment and the command line
and pass what they found, so the engine never touches ``os.environ``.

Opening derives the key before importing the repository facade (``keys.unlock``,
then ``Repository.open_unlocked``), so Argon2id's memory is used and returned
while the process is still small (docs/design.md, "Start-up").

It also owns the *default locations*: the repository and cache directories
used when nothing else is configured, following the XDG base directory spec.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resurgo.backend import Backend, registry, wrappers

if TYPE_CHECKING:
    from resurgo.repo import Repository
    from resurgo.repo.config import RepoParams
    from resurgo.repo.keys import KDFParams

__all__ = [
    "default_cache_dir",
    "default_repository_url",
    "open_backend",
    "open_repo",
]


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    # Without HOME (some service managers) fall back to the password database.
    return Path(home) if home else Path.home()


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")
    # The XDG spec says relative values are invalid and must be ignored.
    if value and Path(value).is_absolute():
        return Path(value)
    return _home(env) / fallback


def default_repository_url(env: Mapping[str, str]) -> str:
    """The repository used when none is named: ``$XDG_DATA_HOME/resurgo/repository``."""
    return str(_xdg(env, "XDG_DATA_HOME", ".local/share") / "resurgo" / "repository")


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """The local cache root: ``$XDG_CACHE_HOME/resurgo`` (default ``~/.cache/resurgo``)."""
    return _xdg(env, "XDG_CACHE_HOME", ".cache") / "resurgo"


def open_backend(
    url: str,
    *,
    options: Mapping[str, str] | None = None,
    fault_spec: str | None = None,
    retry: bool = True,
    read_only: bool = False,
) -> Backend:
    """The storage stack for ``url``: backend, optional faults, retries, read-only guard."""
    backend: Backend = registry.open_backend(url, dict(options or {}))
    try:
        if fault_spec:
            from resurgo.backend import faults

            backend = faults.wrap_with_faults(backend, fault_spec)
        if retry:
            backend = wrappers.RetryBackend(backend)
        if read_only:
            backend = wrappers.ReadOnlyBackend(backend)
    except BaseException:
        backend.close()
        raise
    return backend


def _import_in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` in a thread while the caller derives the key.

    Argon2id releases the GIL and uses ~1.5 of 2 cores; the imports wait on
    a cold disk for much of their time, so the two overlap. A failure is not
    reported here: the caller imports the module again and gets the error
    itself.
    """

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:
                return

    thread = threading.Thread(target=run, name="resurgo-import", daemon=True)
    thread.start()
    return thread


# Extension modules every command that opens a repository loads once the key
# is derived (zstd): large shared objects (12 MB) whose pages a cold start
# would read from the disk one fault at a time, the interpreter waiting.
# (cryptography's, 14 MB, is loaded only where the native AEAD is not built:
# repo/aead.py.)
_EXTENSIONS_AFTER_KEY = ("zstandard.backend_c",)


def _code_files() -> list[str]:
    """The files of code a command imports after the key is derived: this
    package's compiled modules (or sources, where none were compiled) and
    extensions, and ``_EXTENSIONS_AFTER_KEY``.

    Found without importing anything: a top-level package's spec names its
    directory without running it."""
    files: list[str] = []
    for base, dirs, names in os.walk(os.path.dirname(os.path.abspath(__file__))):
        if os.path.basename(base) == "__pycache__":
            files += [os.path.join(base, n) for n in names if n.endswith(".pyc")]
            continue
        # The sources are read only where nothing was compiled (no __pycache__).
        kinds = (".so",) if "__pycache__" in dirs else (".so", ".py")
        files += [os.path.join(base, n) for n in names if n.endswith(kinds)]
    for name in _EXTENSIONS_AFTER_KEY:
        top, _, rest = name.partition(".")
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        stem = os.path.join(next(iter(spec.submodule_search_locations)), *rest.split("."))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.isfile(stem + suffix):
                files.append(stem + suffix)
                break
    return files


def warm_code(stop: threading.Event) -> int:
    """Ask the kernel to read the code files a command imports next into the
    page cache (``POSIX_FADV_WILLNEED``, which starts the reads without
    waiting for them), until ``stop`` is set; the files asked for.

    Run while the key is derived, when the disk is otherwise idle: after it,
    a cold start spent ~40 ms importing ``cryptography`` alone (strace of an
    incremental backup). A hint: every error is ignored."""
    asked = 0
    for path in _code_files():
        if stop.is_set():
            break
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            asked += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked


def _warm_in_background(task: Callable[[threading.Event], object], stop: threading.Event) -> threading.Thread:
    """Run ``task(stop)`` in a thread while the caller derives the key (the
    caller sets ``stop`` when it is derived). A warm-up is a hint: its errors
    are dropped."""

    def run() -> None:
        try:
            task(stop)
        except Exception:
            return

    thread = threading.Thread(target=run, name="resurgo-warm", daemon=True)
    thread.start()
    return thread


def open_repo(
    url: str,
    password: str,
    *,
    cache_dir: Path | None = None,
    options: Mapping[str, str] | None = None,
    fault_spec: str | None = None,
    retry: bool = True,
    create: bool = False,
    params: RepoParams | None = None,
    kdf: KDFParams | None = None,
    read_only: bool = False,
    preload: Sequence[str] = (),
    warm: Sequence[Callable[[threading.Event], object]] = (),
) -> Repository:
    """Open (or with ``create=True``, initialise) the repository at ``url``.

    Raises ``RepositoryNotFound`` / ``WrongPassword`` on open and
    ``RepositoryExists`` on create, as ``Repository`` does; the backend is
    closed again whenever no repository is returned. ``params`` and ``kdf``
    only apply to ``create``. ``read_only`` makes every write through this
    repository fail with ``ReadOnlyError``: commands that only read declare it,
    so a read path can never mutate the repository by mistake.

    While the key is derived, the disk is otherwise idle: the code imported
    next (``warm_code``) and the files of the cache directory
    (``cache.warm_cache``) are read ahead, and each ``warm``
    task (a backup's ``snapshot.warm.warm_tree``) runs in a thread of its own,
    told to stop once the key is derived (docs/design.md, "Start-up").
    """
    if create and read_only:
        raise ValueError("cannot create a repository read-only")
    backend = open_backend(
        url, options=options, fault_spec=fault_spec, retry=retry, read_only=read_only
    )
    try:
        if create:
            from resurgo.repo.keys import KDFParams, new_key

            if not password:
                from resurgo.errors import UsageError

                raise UsageError("an empty password is not allowed")
            key = new_key(password, kdf or KDFParams())
            from resurgo.repo.repository import Repository

            return Repository.init(backend, password, params=params, cache_dir=cache_dir, key=key)
        from resurgo.repo.keys import unlock

        tasks = [warm_code, *warm]
        if cache_dir is not None:
            from resurgo.repo.cache import warm_cache

            tasks.append(lambda stop: warm_cache(cache_dir, stop))
        stop = threading.Event()
        background = [_warm_in_background(task, stop) for task in tasks]
        if preload:
            background.append(_import_in_background("resurgo.repo.repository", *preload))
        try:
            unlocked = unlock(backend, password)
        finally:
            stop.set()
            for thread in background:
                thread.join()
        from resurgo.repo.repository import Repository

        return Repository.open_unlocked(backend, unlocked, cache_dir=cache_dir)
    except BaseException:
        backend.close()
        raise
