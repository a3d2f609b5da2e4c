"""The local directory backend: one file per object under a root directory.

A key ``a/b/c`` is the file ``<root>/a/b/c``; directories are created on demand.
A *temporary file* is a file whose name starts with ``.tmp-``: every put writes
one in the object's own directory, fsyncs it, and moves it into place, so a
reader sees either the old object, or the whole new one. Temporary files are
never listed, and keys whose parts start with ``.tmp-`` are refused. A crash can
leave a temporary file behind; it is harmless and may be deleted at any time.

Durability steps of ``put`` (each one is needed for the object to survive a
power loss once ``put`` has returned):

1. write the data to ``<dir>/.tmp-<random>`` and ``fsync`` it;
2. ``os.replace`` it over the key (or ``os.link`` it to the key for
   ``create_only``: ``link`` fails with ``EEXIST`` atomically, where a
   check-then-rename would race);
3. ``fsync`` the directory, so the new directory entry is on disk too.
   Directories created on the way are fsynced into their parents.

``OSError`` is mapped to the backend errors by ``errno`` (``_map_oserror``).

*Staging* (``stage``): a temporary file ``<root>/.tmp-<random>`` written at
any offsets, then committed like a put: ``fsync``, ``os.replace`` into the
key's path (creating and fsyncing directories as a put does), ``fsync`` of
that directory. Packs are written this way, straight from the envelopes.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections.abc import Iterator
from pathlib import Path

from resurgo.backend import ObjectInfo, validate_key
from resurgo.backend.memory import resolve_range
from resurgo.errors import (
    BackendError,
    BackendFull,
    BackendPermissionError,
    ObjectExists,
    ObjectNotFound,
)

TEMP_PREFIX = ".tmp-"

_FILE_MODE = 0o600  # repository files are for the owner only (as restic does)
_DIR_MODE = 0o700

_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_TRANSIENT = {errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT}


def _map_oserror(err: OSError, what: str, key: str | None = None) -> BackendError:
    """Turn an ``OSError`` into the matching backend error.

    ``key`` is given only where "no such file" means "no such object" (reads);
    elsewhere a missing path is an unexpected failure of the medium.
    """
    code = err.errno
    reason = err.strerror or str(err)
    if key is not None and code in _NOT_FOUND:
        return ObjectNotFound(key)
    message = f"{what}: {reason}"
    if code in _PERMISSION:
        return BackendPermissionError(message)
    if code in _FULL:
        return BackendFull(message)
    return BackendError(message, retryable=code in _TRANSIENT)


class LocalBackend:
    """Objects as files under ``root`` (created on the first put if missing)."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(os.path.abspath(root))

    @property
    def url(self) -> str:
        return str(self._root)

    @property
    def root(self) -> Path:
        return self._root

    # --- key -> path --------------------------------------------------------

    def _path(self, key: str) -> str:
        validate_key(key)
        if any(part.startswith(TEMP_PREFIX) for part in key.split("/")):
            raise BackendError(
                f"invalid object key {key!r}: names starting with {TEMP_PREFIX!r} "
                "are reserved for temporary files"
            )
        return os.path.join(self._root, *key.split("/"))

    # --- reads --------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise _map_oserror(err, f"cannot read {key} in {self.url}", key) from err
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise ObjectNotFound(key)
            start, end = resolve_range(key, offset, length, st.st_size)
            return _pread_exact(fd, key, start, end - start)
        except OSError as err:
            raise _map_oserror(err, f"cannot read {key} in {self.url}", key) from err
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as err:
            raise _map_oserror(err, f"cannot stat {key} in {self.url}", key) from err
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        # Only the directory that holds the prefix's last part is scanned, then
        # the matching subtrees: listing "data/ab/" never touches "snapshots/".
        dir_part, _, name_part = prefix.rpartition("/")
        start_dir = os.path.join(self._root, *dir_part.split("/")) if dir_part else str(self._root)
        key_base = f"{dir_part}/" if dir_part else ""
        yield from self._walk(start_dir, key_base, name_part)

    def _walk(self, directory: str, key_base: str, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except OSError as err:
            if err.errno in _NOT_FOUND:
                return  # a prefix with no objects: nothing to list
            raise _map_oserror(err, f"cannot list {key_base or '/'} in {self.url}") from err
        for entry in entries:
            name = entry.name
            if not name.startswith(name_prefix) or name.startswith(TEMP_PREFIX):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path, f"{key_base}{name}/", "")
                    continue
                st = entry.stat()
            except OSError as err:
                if err.errno in _NOT_FOUND:
                    continue  # deleted while we were listing
                raise _map_oserror(err, f"cannot list {key_base}{name} in {self.url}") from err
            if stat_mod.S_ISREG(st.st_mode):
                yield ObjectInfo(f"{key_base}{name}", st.st_size, st.st_mtime)

    # --- writes -------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        what = f"cannot write {key} in {self.url}"
        try:
            tmp, fd = self._open_temp(directory)
        except OSError as err:
            raise _map_oserror(err, what) from err
        try:
            try:
                _write_all(fd, memoryview(data).cast("B"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(key) from None
                except OSError as err:
                    if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                        raise BackendError(
                            f"{what}: the file system does not support the hard links "
                            "needed for create-only writes"
                        ) from err
                    raise
                finally:
                    _unlink_quietly(tmp)
            else:
                os.replace(tmp, path)
            _fsync_dir(directory)
        except OSError as err:
            _unlink_quietly(tmp)
            raise _map_oserror(err, what) from err
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def stage(self) -> LocalStaged:
        """A temporary file to write an object into, then commit (see the module docstring)."""
        try:
            tmp, fd = self._open_temp(str(self._root), readable=True)
        except OSError as err:
            raise _map_oserror(err, f"cannot create a temporary file in {self.url}") from err
        return LocalStaged(self, tmp, fd)

    def _open_temp(self, directory: str, *, readable: bool = False) -> tuple[str, int]:
        """Create a fresh temporary file in ``directory``, creating the directory if needed."""
        for _ in range(100):
            # os.urandom, as secrets.token_hex does: importing secrets loads
            # OpenSSL's libcrypto (via hmac), 4 MiB before the key derivation.
            tmp = os.path.join(directory, TEMP_PREFIX + os.urandom(8).hex())
            flags = (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_EXCL
            try:
                return tmp, os.open(tmp, flags, _FILE_MODE)
            except FileNotFoundError:
                self._make_dirs(directory)
                return tmp, os.open(tmp, flags, _FILE_MODE)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)

    def _make_dirs(self, directory: str) -> None:
        """Create ``directory`` and missing parents, fsyncing each new entry into its parent."""
        missing: list[str] = []
        current = directory
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for path in reversed(missing):
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                # Another thread created it and may not have fsynced the parent
                # yet; fsync it here too rather than rely on that thread.
                pass
            _fsync_dir(os.path.dirname(path))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except OSError as err:
            if err.errno in _NOT_FOUND:
                return  # deleting a missing object succeeds (the contract's idempotency)
            raise _map_oserror(err, f"cannot delete {key} in {self.url}") from err
        try:
            _fsync_dir(os.path.dirname(path))
        except OSError as err:
            raise _map_oserror(err, f"cannot delete {key} in {self.url}") from err

    def close(self) -> None:
        # No handles are kept between calls.
        pass


class LocalStaged:
    """A ``.tmp-`` file being written; ``commit`` moves it into place like a put."""

    def __init__(self, backend: LocalBackend, tmp: str, fd: int) -> None:
        self._backend = backend
        self._tmp = tmp
        self._fd = fd
        self._closed = False

    def write_at(self, offset: int, parts: list[bytes | memoryview]) -> None:
        try:
            for i in range(0, len(parts), _IOV_MAX):
                group = parts[i : i + _IOV_MAX]
                want = sum(map(len, group))
                done = os.pwritev(self._fd, group, offset)
                if done < want:  # short write (rare on local disks): finish piece by piece
                    view = memoryview(b"".join(group))[done:]
                    while view:
                        n = os.pwrite(self._fd, view, offset + done)
                        view = view[n:]
                        done += n
                offset += want
        except OSError as err:
            raise _map_oserror(err, f"cannot write a temporary file in {self._backend.url}") from err

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            return _pread_exact(self._fd, self._tmp, offset, length)
        except OSError as err:
            raise _map_oserror(err, f"cannot read a temporary file in {self._backend.url}") from err

    def commit(self, key: str) -> None:
        path = self._backend._path(key)
        directory = os.path.dirname(path)
        what = f"cannot write {key} in {self._backend.url}"
        try:
            try:
                os.fsync(self._fd)
            finally:
                self._close()
            if not os.path.isdir(directory):
                self._backend._make_dirs(directory)
            os.replace(self._tmp, path)
            _fsync_dir(directory)
        except OSError as err:
            _unlink_quietly(self._tmp)
            raise _map_oserror(err, what) from err
        except BaseException:
            _unlink_quietly(self._tmp)
            raise

    def discard(self) -> None:
        self._close()
        _unlink_quietly(self._tmp)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 16


def _validate_prefix(prefix: str) -> None:
    parts = prefix.split("/")
    if prefix.startswith("/") or "\x00" in prefix or any(p in (".", "..") for p in parts):
        raise BackendError(f"invalid list prefix {prefix!r}")


def _pread_exact(fd: int, key: str, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    # A short read: keep reading (large reads, network file systems).
    parts = [data]
    done = len(data)
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            raise BackendError(f"short read of {key}: the file shrank while being read")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
