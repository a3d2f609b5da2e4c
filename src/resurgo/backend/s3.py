"""The S3 backend: objects in a bucket under a prefix, on AWS or any S3-compatible server.

A *key* ``k`` lives at object ``<prefix>/k`` of the bucket. One boto3 client is
shared by all threads (boto3 clients are thread-safe); its connection pool is
``max_pool`` wide. The SDK's own retries are limited to ``max_attempts`` (1 by
default: no SDK retry) so that ``wrappers.RetryBackend`` is the one retry layer.

*Create-only* puts send ``If-None-Match: *``, which AWS S3 (since 2024-08) and
SeaweedFS enforce atomically, also for multipart uploads. A server that ignores
the header would silently overwrite; ``resurgo.backend.validate`` detects that.
With ``conditional_put=False`` the backend checks with HEAD first and then puts:
this is *racy* (two writers can both see "absent" and the later one wins), so use
it only for servers that reject the conditional header.

Objects larger than ``multipart_threshold`` are uploaded in parts of
``part_size`` bytes, at most ``part_concurrency`` at a time; a failed upload is
aborted so no parts linger.

Credentials come from the options (``access_key``/``secret_key``), a named
``profile``, or the standard AWS chain (environment, ``~/.aws``, instance
metadata). They are never part of ``url`` or of any error message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

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

try:  # boto3 is the optional "s3" extra
    import boto3
    import botocore.exceptions as bexc
    from botocore.config import Config
except ImportError:  # pragma: no cover - exercised only without the extra
    boto3 = None

MiB = 1024 * 1024

_PERMISSION_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "InvalidSecurity",
        "403",
        "Forbidden",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "ConditionalRequestConflict",  # a concurrent conditional write; retry decides
        "OperationAborted",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "StorageFull"})


class S3Backend:
    """Objects under ``prefix`` in ``bucket``. See the module docstring.

    ``session`` (a ``boto3.session.Session``) may be shared by several backends
    to save the ~0.1 s a fresh session spends loading service models; by
    default each backend makes its own, so no state is shared between them.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        max_pool: int = 16,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 1,
        multipart_threshold: int = 16 * MiB,
        part_size: int = 8 * MiB,
        part_concurrency: int = 4,
        conditional_put: bool = True,
        verify_tls: bool = True,
        session: Any = None,
    ) -> None:
        if boto3 is None:
            raise BackendError("the S3 backend needs boto3: pip install 'resurgo[s3]'")
        if not bucket:
            raise UsageError("S3 bucket name is empty")
        if (access_key is None) != (secret_key is None):
            raise UsageError("S3 access_key and secret_key must be given together")
        if part_size < 5 * MiB:
            raise UsageError("S3 part_size must be at least 5 MiB (an S3 limit)")
        if multipart_threshold < part_size:
            raise UsageError("S3 multipart_threshold must be at least part_size")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.path_style = path_style
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.part_concurrency = max(1, part_concurrency)
        self.conditional_put = conditional_put
        # Kept only to scrub them from any text that reaches an error message.
        self._secrets = tuple(s for s in (secret_key, session_token) if s)
        self._bucket_checked = False
        self._closed = False
        self._close_lock = threading.Lock()
        try:
            if session is None:
                session = boto3.session.Session(profile_name=profile)
            self._client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=session_token,
                verify=verify_tls,
                config=Config(
                    s3={"addressing_style": "path" if path_style else "auto"},
                    retries={"max_attempts": max(1, max_attempts), "mode": "standard"},
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    max_pool_connections=max_pool,
                ),
            )
        except bexc.ProfileNotFound as exc:
            raise BackendPermissionError(f"AWS profile not found: {exc.kwargs.get('profile')}")
        except (bexc.BotoCoreError, ValueError) as exc:
            raise BackendError(f"cannot configure S3 client: {self._scrub(str(exc))}")

    # --- identity -----------------------------------------------------------

    @property
    def url(self) -> str:
        path = f"/{self.prefix}" if self.prefix else ""
        query = []
        if self.endpoint_url:
            query.append("endpoint=" + quote(_strip_userinfo(self.endpoint_url), safe=":/"))
        if self.region:
            query.append(f"region={quote(self.region)}")
        if self.path_style:
            query.append("path_style=true")
        return f"s3://{self.bucket}{path}" + ("?" + "&".join(query) if query else "")

    def __repr__(self) -> str:
        return f"S3Backend({self.url})"

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- protocol -----------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRange(f"invalid range offset={offset} length={length} for {key}")
        if length == 0:
            # S3 cannot express an empty range; the object must still exist.
            size = self.stat(key).size
            if offset > size:
                raise InvalidRange(_range_msg(key, offset, length, size))
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object_key(key)}
        ranged = offset > 0 or length is not None
        if ranged:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            resp = self._client.get_object(**kwargs)
            data: bytes = resp["Body"].read()
        except bexc.ClientError as exc:
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                size = self.stat(key).size
                if length is None and offset == size:
                    return b""
                raise InvalidRange(_range_msg(key, offset, length, size))
            raise self._map(exc, "get", key)
        except Exception as exc:
            raise self._map(exc, "get", key)
        if not ranged:
            return data
        total = _content_range_total(resp.get("ContentRange"))
        if total is None and resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            # The server ignored Range and sent the whole object.
            total = len(data)
            data = data[offset : None if length is None else offset + length]
        if length is not None and len(data) != length:
            if total is not None and offset + length > total:
                raise InvalidRange(_range_msg(key, offset, length, total))
            raise BackendUnavailable(f"S3 get {key}: short read ({len(data)} of {length} bytes)")
        return data

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        validate_key(key)
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        extra: dict[str, str] = {}
        if create_only:
            if self.conditional_put:
                extra["IfNoneMatch"] = "*"
            elif self._exists(key):
                raise ObjectExists(key)
        try:
            if len(view) > self.multipart_threshold:
                self._put_multipart(key, view, extra)
            else:
                self._client.put_object(
                    Bucket=self.bucket, Key=self._object_key(key), Body=bytes(view), **extra
                )
        except bexc.ClientError as exc:
            if create_only and (_code(exc) == "PreconditionFailed" or _status(exc) == 412):
                raise ObjectExists(key)
            if extra and (_code(exc) == "NotImplemented" or _status(exc) == 501):
                raise BackendError(
                    f"S3 put {key}: the server does not support conditional writes "
                    "(If-None-Match); set the option conditional_put=false, which checks "
                    "before writing and is not safe against concurrent writers"
                )
            raise self._map(exc, "put", key)
        except Exception as exc:
            raise self._map(exc, "put", key)

    def _put_multipart(self, key: str, data: bytes | memoryview, extra: dict[str, str]) -> None:
        obj = self._object_key(key)
        # CRC32 per part, declared up front as AWS documents it; each part's
        # checksum is then listed again on completion.
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=obj, ChecksumAlgorithm="CRC32"
        )["UploadId"]
        view = memoryview(data)

        def upload(number: int, start: int) -> dict[str, Any]:
            # One part in memory per worker: at most part_concurrency * part_size.
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=obj,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(view[start : start + self.part_size]),
                ChecksumAlgorithm="CRC32",
            )
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = resp["ChecksumCRC32"]
            return part

        starts = range(0, len(view), self.part_size)
        pool = ThreadPoolExecutor(
            max_workers=min(self.part_concurrency, len(starts)), thread_name_prefix="s3-part"
        )
        try:
            futures = [pool.submit(upload, n, start) for n, start in enumerate(starts, start=1)]
            parts = [future.result() for future in futures]
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=obj,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException:
            # Parts not yet started are cancelled: no point uploading them.
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=obj, UploadId=upload_id)
            except Exception:
                pass  # best effort: a lifecycle rule should reap what is left
            raise
        finally:
            pool.shutdown(wait=True)

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            raise self._map(exc, "stat", key)
        modified = resp.get("LastModified")
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            mtime=modified.timestamp() if modified is not None else None,
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", ()):
                    name: str = item["Key"][len(base) :]
                    if not name or name.endswith("/"):
                        continue  # directory placeholders made by other tools
                    modified = item.get("LastModified")
                    yield ObjectInfo(
                        key=name,
                        size=int(item["Size"]),
                        mtime=modified.timestamp() if modified is not None else None,
                    )
        except Exception as exc:
            raise self._map(exc, "list", prefix or "/")

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except bexc.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return
            raise self._map(exc, "delete", key)
        except Exception as exc:
            raise self._map(exc, "delete", key)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    # --- helpers ------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _map(self, exc: BaseException, op: str, key: str) -> BackendError:
        """Translate an SDK exception into our error tree (see docs/remote-backends.md)."""
        if isinstance(exc, BackendError):
            return exc
        where = f"S3 {op} {key}"
        if isinstance(exc, bexc.ClientError):
            code, status = _code(exc), _status(exc)
            message = self._scrub(str(exc.response.get("Error", {}).get("Message") or ""))
            detail = f"{code}: {message}" if message and message != code else code
            if code == "NoSuchBucket":
                return BackendError(f"S3 bucket {self.bucket!r} does not exist ({self.url})")
            if code in _NOT_FOUND_CODES or (status == 404 and code not in ("NoSuchUpload",)):
                if op == "stat" and not self._bucket_exists():
                    # HEAD answers a bare 404 for a missing bucket too.
                    return BackendError(f"S3 bucket {self.bucket!r} does not exist ({self.url})")
                return ObjectNotFound(key)
            if code in _PERMISSION_CODES or status in (401, 403):
                return BackendPermissionError(
                    f"{where}: access denied to bucket {self.bucket!r} ({detail}); "
                    "check the credentials and the bucket policy"
                )
            if code == "RequestTimeTooSkewed":
                return BackendError(f"{where}: the local clock differs too much from the server's")
            if code in _FULL_CODES:
                return BackendFull(f"{where}: storage quota exceeded ({detail})")
            if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
                if status == 501 or code == "NotImplemented":
                    return BackendError(f"{where}: not supported by the server ({detail})")
                return BackendUnavailable(f"{where}: server busy or failing ({detail})")
            return BackendError(f"{where}: {detail} (HTTP {status})")
        if isinstance(
            exc,
            bexc.NoCredentialsError
            | bexc.PartialCredentialsError
            | bexc.CredentialRetrievalError
            | bexc.ProfileNotFound,
        ):
            return BackendPermissionError(
                f"{where}: no usable S3 credentials ({type(exc).__name__})"
            )
        if isinstance(exc, bexc.SSLError):
            return BackendError(f"{where}: TLS handshake with {self._endpoint_name()} failed")
        if isinstance(
            exc,
            bexc.HTTPClientError
            | bexc.ConnectionError
            | bexc.ResponseStreamingError
            | bexc.IncompleteReadError
            | bexc.FlexibleChecksumError
            | ConnectionError
            | TimeoutError,
        ):
            return BackendUnavailable(
                f"{where}: cannot reach {self._endpoint_name()} ({type(exc).__name__})"
            )
        if isinstance(exc, bexc.BotoCoreError):
            return BackendError(f"{where}: {self._scrub(str(exc))}")
        if isinstance(exc, OSError):
            return BackendUnavailable(f"{where}: {type(exc).__name__}: {exc.strerror or exc}")
        return BackendError(f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}")

    def _endpoint_name(self) -> str:
        return _strip_userinfo(self.endpoint_url) if self.endpoint_url else "S3"

    def _bucket_exists(self) -> bool:
        if self._bucket_checked:
            return True
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            # Only a 404 proves absence; e.g. a 403 cannot tell, so do not claim it.
            return _status(exc) != 404
        except Exception:
            return True
        self._bucket_checked = True
        return True


# --- URL form ---------------------------------------------------------------

_BOOL_OPTIONS = {"path_style", "conditional_put", "verify_tls"}
_INT_OPTIONS = {"max_pool", "max_attempts", "multipart_threshold", "part_size", "part_concurrency"}
_FLOAT_OPTIONS = {"connect_timeout", "read_timeout"}
_STR_OPTIONS = {"endpoint_url", "region", "access_key", "secret_key", "session_token", "profile"}
_ALIASES = {"endpoint": "endpoint_url"}
_SECRET_OPTIONS = {"secret_key", "session_token"}


def from_url(url: str, options: Mapping[str, Any] | None = None) -> S3Backend:
    """``s3://bucket[/prefix][?endpoint=URL&region=R&path_style=true]`` -> ``S3Backend``.

    ``options`` (from the configuration or the command line) take precedence
    over query parameters and may also carry credentials. Names may carry the
    scheme (``s3.region`` = ``region``); names for another scheme
    (``sftp.user``) are ignored. Secrets are refused in the URL itself, because
    URLs end up in logs and shell history.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise UsageError(f"not an S3 URL: {parts.scheme}://…")
    if parts.username or parts.password:
        raise UsageError(
            "credentials do not belong in an S3 URL; use the access_key/secret_key "
            "options or the AWS environment"
        )
    bucket = parts.hostname or ""
    if not bucket:
        raise UsageError("S3 URL lacks a bucket: s3://BUCKET[/prefix]")
    merged: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        name = _ALIASES.get(name, name)
        if name in _SECRET_OPTIONS:
            raise UsageError(f"{name} does not belong in the URL; pass it as an option")
        merged[name] = value
    for name, value in own_options(options, "s3").items():
        merged[_ALIASES.get(name, name)] = value
    kwargs: dict[str, Any] = {}
    for name, value in merged.items():
        if name in _BOOL_OPTIONS:
            kwargs[name] = as_bool(name, value)
        elif name in _INT_OPTIONS:
            kwargs[name] = _as_size(name, value)
        elif name in _FLOAT_OPTIONS:
            kwargs[name] = _as_float(name, value)
        elif name in _STR_OPTIONS:
            kwargs[name] = None if value in (None, "") else str(value)
        else:
            known = sorted(_BOOL_OPTIONS | _INT_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS)
            raise UsageError(f"unknown S3 option {name!r} (known: {', '.join(known)})")
    return S3Backend(bucket, parts.path.strip("/"), **kwargs)


def _as_size(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    for suffix, factor in (("KiB", 1024), ("MiB", MiB), ("GiB", 1024 * MiB)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    else:
        scale = 1
    try:
        return int(text) * scale
    except ValueError:
        raise UsageError(f"option {name} expects a whole number, not {value!r}")


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"option {name} expects a number, not {value!r}")


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _content_range_total(value: str | None) -> int | None:
    # "bytes 0-4/5" -> 5; "bytes */5" -> 5; unknown total "*" -> None
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _range_msg(key: str, offset: int, length: int | None, size: int) -> str:
    want = f"bytes {offset}-" + ("end" if length is None else str(offset + length))
    return f"range {want} is past the end of {key} ({size} bytes)"
