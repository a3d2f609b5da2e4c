"""The SFTP backend: objects as files under a directory on an SSH server.

A *key* ``a/b/c`` is the file ``<root>/a/b/c``; directories are created on
demand (``mkdir -p``). One SSH connection carries every request: asyncssh runs
its event loop in a background thread owned by the backend, and the
synchronous methods submit coroutines to it, so calls from many threads become
concurrent SFTP requests on that connection. A lost connection fails the calls
in flight with ``BackendUnavailable`` (retryable); the next call reconnects.

*Atomic put*: the data goes to a hidden temporary file in the target's
directory (``.<name>.resurgo-tmp-<random>``, never listed), is fsynced
(``fsync@openssh.com``, when the server offers it) and renamed into place:
``posix-rename@openssh.com`` replaces an existing object atomically; a
*create-only* put uses the plain SFTP rename, which refuses an existing target
(OpenSSH implements it with ``link(2)``, atomic on POSIX filesystems). SFTP has
no directory fsync, so the rename's durability is the server filesystem's.

*Host keys* are checked against an OpenSSH ``known_hosts`` file (default
``~/.ssh/known_hosts``). An unknown host is refused with
``BackendPermissionError`` unless ``accept_new_host_key`` is set, in which case
its key is appended to the file (trust on first use). A host whose key differs
from the recorded one is always refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from resurgo.backend import ObjectInfo, validate_key
from resurgo.backend.options import as_bool, own_options
from resurgo.errors import (
    BackendError,
    BackendFull,
    BackendPermissionError,
    BackendUnavailable,
    InvalidRange,
    ObjectExists,
    ObjectNotFound,
    UsageError,
)

try:  # asyncssh is the optional "sftp" extra
    import asyncssh
except ImportError:  # pragma: no cover - exercised only without the extra
    asyncssh = None  # type: ignore[assignment]

T = TypeVar("T")

TMP_MARKER = ".resurgo-tmp-"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class _HostKeyPolicy:
    """Decides about host keys asyncssh could not match in known_hosts; remembers why."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new
        self.refusal: str | None = None

    def asyncssh_arg(self) -> str | bytes:
        # b"" = "no trusted keys": asyncssh then asks validate() about every key.
        return str(self.known_hosts) if self.known_hosts.is_file() else b""

    def validate(self, host: str, addr: str, port: int, key: Any) -> bool:
        fingerprint = key.get_fingerprint()
        recorded: list[Any] = []
        if self.known_hosts.is_file():
            recorded = list(
                asyncssh.match_known_hosts(
                    str(self.known_hosts), host, addr, port if port != 22 else None
                )[0]
            )
        if recorded:
            self.refusal = (
                f"host key of {host}:{port} has CHANGED (now {fingerprint}); it does not "
                f"match {self.known_hosts}. This may be an attack. If the server's key was "
                "changed on purpose, remove its old entry from that file."
            )
            return False
        if not self.accept_new:
            self.refusal = (
                f"host {host}:{port} is not in {self.known_hosts} (key {fingerprint}); "
                "add it (ssh-keyscan) or set accept_new_host_key to trust it on first use"
            )
            return False
        entry = host if port == 22 else f"[{host}]:{port}"
        public = key.export_public_key("openssh").decode("ascii").split()[:2]
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.known_hosts, "a", encoding="ascii") as f:
            f.write(f"{entry} {' '.join(public)}\n")
        return True


_ClientBase: Any = asyncssh.SSHClient if asyncssh is not None else object


class _Client(_ClientBase):
    """Connection callbacks: host-key decisions go to the policy; loss is remembered."""

    def __init__(self, policy: _HostKeyPolicy) -> None:
        self.policy = policy
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        return self.policy.validate(host, addr, port, key)


class SFTPBackend:
    """Objects under ``root`` on an SFTP server. See the module docstring."""

    def __init__(
        self,
        host: str,
        root: str,
        *,
        port: int = 22,
        user: str | None = None,
        identity_file: str | Path | None = None,
        known_hosts: str | Path | None = None,
        accept_new_host_key: bool = False,
        password: str | None = None,
        connect_timeout: float = 15.0,
        op_timeout: float = 300.0,
        keepalive_interval: float = 15.0,
    ) -> None:
        if asyncssh is None:
            raise BackendError("the SFTP backend needs asyncssh: pip install 'resurgo[sftp]'")
        if not host:
            raise UsageError("SFTP host is empty")
        self.host = host
        self.port = port
        self.user = user
        self.root = root
        self.identity_file = Path(identity_file).expanduser() if identity_file else None
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self.keepalive_interval = keepalive_interval
        self._password = password
        self._policy = _HostKeyPolicy(
            Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser(), accept_new_host_key
        )
        self._conn: Any = None
        self._client: Any = None
        self._sftp: Any = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._connect_lock = asyncio.Lock()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"sftp-{host}", daemon=True
        )
        self._thread.start()

    # --- identity -----------------------------------------------------------

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.root.startswith("/"):
            path = self.root
        else:
            path = "/~" + (f"/{self.root}" if self.root else "")
        return f"sftp://{user}{host}{port}{path}"

    def __repr__(self) -> str:
        return f"SFTPBackend({self.url})"

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, key) if self.root else key

    # --- protocol -----------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRange(f"invalid range offset={offset} length={length} for {key}")
        path = self._path(key)

        async def op(sftp: Any) -> bytes:
            async with sftp.open(path, "rb") as f:
                attrs = await f.stat()
                if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                    raise ObjectNotFound(key)  # a prefix of keys, not an object
                size = int(attrs.size or 0)
                end = size if length is None else offset + length
                if offset > size or end > size:
                    want = f"bytes {offset}-" + ("end" if length is None else str(end))
                    raise InvalidRange(f"range {want} is past the end of {key} ({size} bytes)")
                if end == offset:
                    return b""
                data: bytes = await f.read(end - offset, offset)
            if len(data) != end - offset:
                raise BackendUnavailable(
                    f"SFTP get {key}: short read ({len(data)} of {end - offset} bytes)"
                )
            return data

        return self._call("get", key, op)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        validate_key(key)
        payload = data if isinstance(data, bytes) else bytes(data)
        path = self._path(key)
        parent, name = posixpath.split(path)

        async def op(sftp: Any) -> None:
            tmp = posixpath.join(parent, f".{name}{TMP_MARKER}{secrets.token_hex(8)}")
            try:
                try:
                    f = await sftp.open(tmp, "xb")
                except asyncssh.SFTPNoSuchFile:
                    # Directories are made on demand: one round trip only when missing.
                    await self._ensure_dir(sftp, parent)
                    f = await sftp.open(tmp, "xb")
                try:
                    await f.write(payload, 0)
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                        await f.fsync()
                    await f.close()
                except asyncssh.SFTPFailure as exc:
                    raise await self._write_failure(sftp, parent, key, len(payload), exc)
                finally:
                    with contextlib.suppress(Exception):
                        await f.close()
                if create_only:
                    try:
                        await sftp.rename(tmp, path)
                    except asyncssh.SFTPError:
                        if await sftp.exists(path):
                            raise ObjectExists(key)
                        raise
                else:
                    await sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sftp.remove(tmp))
                raise

        self._call("put", key, op)

    async def _ensure_dir(self, sftp: Any, path: str) -> None:
        """``mkdir -p path``, from the deepest existing ancestor down."""
        if path in ("", "/", "."):
            return
        try:
            await sftp.mkdir(path)
            return
        except asyncssh.SFTPNoSuchFile:
            pass
        except (
            asyncssh.SFTPFailure,
            asyncssh.SFTPFileAlreadyExists,
            asyncssh.SFTPPermissionDenied,
        ):
            if await sftp.isdir(path):
                return  # exists (possibly made by a concurrent put)
            raise
        await self._ensure_dir(sftp, posixpath.dirname(path))
        try:
            await sftp.mkdir(path)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            if not await sftp.isdir(path):
                raise

    async def _write_failure(
        self, sftp: Any, parent: str, key: str, size: int, exc: Any
    ) -> BackendError:
        # SFTP v3 reports ENOSPC as a bare SSH_FX_FAILURE; ask the filesystem.
        try:
            vfs = await sftp.statvfs(parent or ".")
            free = int(vfs.bavail) * int(vfs.frsize or vfs.bsize)
        except Exception:
            free = None
        if free is not None and free < size:
            return BackendFull(
                f"SFTP put {key}: no space left on {self.host} ({free} bytes free, {size} needed)"
            )
        return BackendError(f"SFTP put {key}: the server failed the write ({exc.reason})")

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        path = self._path(key)

        async def op(sftp: Any) -> ObjectInfo:
            attrs = await sftp.stat(path)
            if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                raise ObjectNotFound(key)
            return ObjectInfo(key=key, size=int(attrs.size or 0), mtime=_mtime(attrs))

        return self._call("stat", key, op)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""

        async def op(sftp: Any) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            gate = asyncio.Semaphore(16)  # bounded directory reads in flight

            async def walk(rel: str) -> None:
                try:
                    async with gate:
                        entries = await sftp.readdir(self._path(rel) if rel else self.root or ".")
                except asyncssh.SFTPNoSuchFile:
                    return
                subdirs = []
                for entry in entries:
                    name = entry.filename
                    if name in (".", "..") or TMP_MARKER in name:
                        continue
                    child = f"{rel}/{name}" if rel else name
                    kind = entry.attrs.type
                    if kind == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        if child.startswith(prefix) or prefix.startswith(child + "/"):
                            subdirs.append(child)
                    elif kind == asyncssh.FILEXFER_TYPE_REGULAR and child.startswith(prefix):
                        found.append(
                            ObjectInfo(
                                key=child,
                                size=int(entry.attrs.size or 0),
                                mtime=_mtime(entry.attrs),
                            )
                        )
                await asyncio.gather(*(walk(d) for d in subdirs))

            await walk(start)
            return found

        yield from self._call("list", prefix or "/", op)

    def delete(self, key: str) -> None:
        validate_key(key)
        path = self._path(key)

        async def op(sftp: Any) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

        self._call("delete", key, op)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- connection ---------------------------------------------------------

    def _call(self, op: str, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        if self._closed:
            raise BackendError(f"SFTP {op} {key}: backend is closed")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(self._guarded(op, key, fn), self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def _guarded(self, op: str, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        sftp = await self._session()
        try:
            return await asyncio.wait_for(fn(sftp), self.op_timeout)
        except BackendError:
            raise
        except TimeoutError:
            await self._drop(sftp)
            raise BackendUnavailable(
                f"SFTP {op} {key}: no answer from {self.host} within {self.op_timeout:.0f} s"
            )
        except Exception as exc:
            mapped = self._map(exc, op, key)
            if mapped.retryable:
                await self._drop(sftp)
            raise mapped

    async def _session(self) -> Any:
        async with self._connect_lock:
            if self._sftp is not None and not self._client.lost:
                return self._sftp
            await self._disconnect()
            where = f"SFTP {self._who()}"
            keys = None
            if self.identity_file is not None:
                try:
                    keys = [asyncssh.read_private_key(str(self.identity_file))]
                except (OSError, asyncssh.KeyImportError) as exc:
                    raise BackendPermissionError(
                        f"{where}: cannot load identity file {self.identity_file}: {exc}"
                    )
            client = _Client(self._policy)
            self._policy.refusal = None
            options: dict[str, Any] = {
                "known_hosts": self._policy.asyncssh_arg(),
                "client_factory": lambda: client,
                "connect_timeout": self.connect_timeout,
                "keepalive_interval": self.keepalive_interval,
                "keepalive_count_max": 3,
            }
            if self.user:
                options["username"] = self.user
            if keys is not None:
                options["client_keys"] = keys
            if self._password is not None:
                options["password"] = self._password
            conn = None
            try:
                conn = await asyncssh.connect(self.host, self.port, **options)
                sftp = await conn.start_sftp_client()
            except asyncssh.HostKeyNotVerifiable as exc:
                reason = self._policy.refusal or f"host key not trusted ({exc.reason})"
                raise BackendPermissionError(f"{where}: {reason}")
            except asyncssh.PermissionDenied:
                raise BackendPermissionError(
                    f"{where}: login refused (no accepted key or password)"
                )
            except asyncssh.KeyExchangeFailed as exc:
                raise BackendError(f"{where}: SSH key exchange failed ({exc.reason})")
            except TimeoutError:
                raise BackendUnavailable(f"{where}: connection timed out")
            except (OSError, asyncssh.Error) as exc:
                if conn is not None:
                    conn.abort()
                raise BackendUnavailable(f"{where}: cannot connect ({_describe(exc)})")
            self._conn, self._client, self._sftp = conn, client, sftp
            return sftp

    async def _drop(self, sftp: Any) -> None:
        # Only the connection that failed is dropped; a concurrent call may
        # already have replaced it.
        async with self._connect_lock:
            if self._sftp is sftp:
                await self._disconnect()

    async def _disconnect(self) -> None:
        conn, self._conn, self._client, self._sftp = self._conn, None, None, None
        if conn is not None:
            conn.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    def _who(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"

    def _map(self, exc: BaseException, op: str, key: str) -> BackendError:
        """Translate asyncssh/OS exceptions into our error tree (docs/remote-backends.md)."""
        where = f"SFTP {op} {key}"
        if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath):
            if op in ("get", "stat"):
                return ObjectNotFound(key)
            return BackendError(f"{where}: no such file or directory on {self.host}")
        if isinstance(exc, asyncssh.SFTPPermissionDenied | asyncssh.SFTPWriteProtect):
            return BackendPermissionError(f"{where}: permission denied on {self.host}")
        if isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem | asyncssh.SFTPQuotaExceeded):
            return BackendFull(f"{where}: no space left on {self.host}")
        if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
            return BackendUnavailable(f"{where}: connection to {self.host} lost")
        if isinstance(exc, asyncssh.SFTPError):
            return BackendError(f"{where}: server error: {exc.reason}")
        if isinstance(exc, asyncssh.Error | OSError | EOFError):
            return BackendUnavailable(f"{where}: connection to {self.host} lost ({_describe(exc)})")
        return BackendError(f"{where}: {type(exc).__name__}: {exc}")


def _mtime(attrs: Any) -> float | None:
    if attrs.mtime is None:
        return None
    if attrs.mtime_ns is not None:
        return float(attrs.mtime_ns) / 1e9
    return float(attrs.mtime)


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


# --- URL form ---------------------------------------------------------------

_BOOL_OPTIONS = {"accept_new_host_key"}
_FLOAT_OPTIONS = {"connect_timeout", "op_timeout", "keepalive_interval"}
_STR_OPTIONS = {"identity_file", "known_hosts", "user", "password"}
_INT_OPTIONS = {"port"}


def from_url(url: str, options: Mapping[str, Any] | None = None) -> SFTPBackend:
    """``sftp://[user@]host[:port]/abs/path`` or ``.../~/path-in-home`` -> ``SFTPBackend``.

    ``options``: ``identity_file``, ``known_hosts``, ``accept_new_host_key``,
    ``user``, ``port``, ``password``, ``connect_timeout``, ``op_timeout``,
    ``keepalive_interval``; also as ``sftp.<name>``, while names for another
    scheme (``s3.region``) are ignored. A password is refused in the URL itself.
    """
    parts = urlsplit(url)
    if parts.scheme != "sftp":
        raise UsageError(f"not an SFTP URL: {parts.scheme}://…")
    if parts.password:
        raise UsageError("a password does not belong in the URL; pass it as an option")
    if parts.query or parts.fragment:
        raise UsageError("SFTP URLs take no query; pass settings as options")
    host = parts.hostname
    if not host:
        raise UsageError("SFTP URL lacks a host: sftp://[user@]host[:port]/path")
    try:
        url_port = parts.port
    except ValueError:
        raise UsageError(f"bad port in SFTP URL {url!r}")
    path = unquote(parts.path)
    if path in ("", "/~", "/~/"):
        root = ""
    elif path.startswith("/~/"):
        root = path[3:].rstrip("/")
    else:
        root = path.rstrip("/") or "/"
    kwargs: dict[str, Any] = {"user": unquote(parts.username) if parts.username else None}
    if url_port is not None:
        kwargs["port"] = url_port
    for name, value in own_options(options, "sftp").items():
        if name in _BOOL_OPTIONS:
            kwargs[name] = as_bool(name, value)
        elif name in _FLOAT_OPTIONS:
            kwargs[name] = _as_number(name, value, float)
        elif name in _INT_OPTIONS:
            kwargs[name] = int(_as_number(name, value, int))
        elif name in _STR_OPTIONS:
            kwargs[name] = None if value in (None, "") else str(value)
        else:
            known = sorted(_BOOL_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS | _INT_OPTIONS)
            raise UsageError(f"unknown SFTP option {name!r} (known: {', '.join(known)})")
    return SFTPBackend(host, root, **kwargs)


def _as_number(name: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"option {name} expects a number, not {value!r}")
